"""A task is stale when anything it reads changed: one test a rule. Each changes one thing in a copy of a built
project, runs the real `mlops-nb run`, and checks that exactly the right tasks ran (the closing table and the
newest run record agree), and no others.

Rules (mlops_nb/run/plan.py): a task's fingerprint covers its notebook, its parameters (the settings it uses),
the files its parameters name (data sources and any other file), the mlops_nb code it imports and the versions
of the libraries that shape results; its products must still be the bytes it wrote; a task using the warehouse
runs when the warehouse is gone; everything downstream of a stale task runs too.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import (ALL_TASKS, PRODUCTS, WAREHOUSE, assert_up_to_date, build, copy_of, last_run, make_project,
                      model_store, run_ok)

pytestmark = pytest.mark.slow

STATE = PRODUCTS / ".mlops-nb-state.json"


def ran(project: Path, result, env: dict | None = None) -> set[str]:
    """The tasks a run ran: from its closing table, checked against the newest run record."""
    table = result.task_table()
    assert table, f"no task table in the output:\n{result}"
    from_table = {t for t, s in table.items() if s == "ran"}
    rows = run_ok(project, "runs", "--json", "--limit", "1", env=env).json()
    record = rows[0]
    assert record["status"] == ("up-to-date" if not from_table else "succeeded"), record
    from_record = {t["task"] for t in record["tasks"] if t["status"] == "ran"}
    assert from_table == from_record, (table, record["tasks"])
    assert set(table) == {t["task"] for t in record["tasks"]}
    return from_table


def run_and_get_ran(project: Path, *args, env: dict | None = None) -> set[str]:
    return ran(project, run_ok(project, "run", "--quiet", *args, env=env), env=env)


def assert_nothing_to_do(project: Path, *args) -> None:
    result = assert_up_to_date(project, *args)
    assert ran(project, result) == set()
    assert set(result.task_table().values()) == {"skipped"}, str(result)


def settings_of(project: Path):
    from mlops_nb import config

    return config.load(project / "settings.ini", environ={})


def plan_and_stale(project: Path):
    from mlops_nb.run import plan as spec

    settings = settings_of(project)
    state = spec.read_state(settings)
    plan = spec.load_plan(settings, state=state)
    return plan, spec.stale_tasks(plan, state, settings.path("warehouse").exists())


# --------------------------------------------------------------------------------------------------
# 7. nothing changed: nothing runs


def test_nothing_changed_runs_nothing(project):
    assert_nothing_to_do(project)
    # a touched file whose bytes are the same: a product, an input file, a notebook
    for f in (project / PRODUCTS / "model.joblib", project / "inputs" / "flights.csv",
              project / "notebooks" / "tasks" / "train.py"):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns + 5_000_000_000, st.st_mtime_ns + 5_000_000_000))
    assert_nothing_to_do(project)


# --------------------------------------------------------------------------------------------------
# 1. a task notebook edited


def test_edited_notebook_runs_it_and_downstream_only(project):
    nb = project / "notebooks" / "tasks" / "evaluate.py"
    nb.write_text(nb.read_text(encoding="utf-8") + "\n# %%\n# a comment cell added by hand\n", encoding="utf-8")
    assert run_and_get_ran(project) == {"evaluate", "gate"}
    assert_nothing_to_do(project)


# --------------------------------------------------------------------------------------------------
# 2. and 3. settings, passed to tasks as parameters


def test_model_seed_runs_train_and_downstream(project):
    assert run_and_get_ran(project, "-p", "model.seed=7") == {"train", "evaluate", "gate"}


def test_registry_model_name_runs_only_the_gate(project):
    assert run_and_get_ran(project, "-p", "registry.model_name=other") == {"gate"}
    # the gate saved the model under the new name, in the project's own store
    assert any(model_store(project, "other").iterdir())


def test_new_warehouse_path_runs_every_task_using_it(project):
    env = {"MLOPS_NB_PATHS__WAREHOUSE": "data/other.duckdb"}
    before = (project / WAREHOUSE).read_bytes()
    assert run_and_get_ran(project, env=env) == ALL_TASKS
    assert (project / "data" / "other.duckdb").is_file()
    assert (project / WAREHOUSE).read_bytes() == before  # the old warehouse is not written
    # the same setting given with -p is the same run: up to date now
    assert_up_to_date(project, "-p", "paths.warehouse=data/other.duckdb")


# --------------------------------------------------------------------------------------------------
# 4. input files: of a task that reads data (whatever its name), and a file any parameter names


@pytest.fixture(scope="module")
def renamed(tmp_path_factory, small_data) -> Path:
    """A built project whose ingest task is called `load`, reading a CSV folder (inputs/), and whose features
    task takes a parameter naming a file (notes: notes.txt)."""
    root = tmp_path_factory.mktemp("renamed") / "project"
    shutil.copytree(small_data, root / "inputs")
    make_project(root, "inputs", pipeline__reports="false")
    spec = yaml.safe_load((root / "pipeline.yaml").read_text(encoding="utf-8"))
    by_source = {Path(t["source"]).stem: t for t in spec["tasks"]}
    by_source["ingest"]["name"] = "load"
    by_source["features"]["params"]["notes"] = "notes.txt"
    (root / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    tasks = root / "notebooks" / "tasks"
    for nb in tasks.glob("*.py"):
        text = nb.read_text(encoding="utf-8")
        new = text.replace('upstream = ["ingest"]', 'upstream = ["load"]').replace('upstream["ingest"]',
                                                                                     'upstream["load"]')
        if new != text:
            nb.write_text(new, encoding="utf-8")
    features = tasks / "features.py"
    text = features.read_text(encoding="utf-8")
    assert 'warehouse_file = "data/warehouse.duckdb"\n' in text
    features.write_text(text.replace('warehouse_file = "data/warehouse.duckdb"\n',
                                     'warehouse_file = "data/warehouse.duckdb"\nnotes = ""\n', 1), encoding="utf-8")
    (root / "notes.txt").write_text("first notes\n", encoding="utf-8")
    result = build(root)
    assert result.tasks_with("ran") == {"load", "validate", "features", "train", "evaluate", "gate"}, str(result)
    return root


@pytest.fixture
def renamed_copy(renamed, tmp_path) -> Path:
    return copy_of(renamed, tmp_path)


def test_changed_byte_of_data_runs_the_task_reading_it_and_downstream(renamed_copy):
    project = renamed_copy
    tasks = {"load", "validate", "features", "train", "evaluate", "gate"}
    assert_nothing_to_do(project)  # a copied project is up to date
    snapshot = last_run(project)["snapshot_id"]

    flights = project / "inputs" / "flights.csv"
    data = flights.read_bytes()
    header_end = data.index(b"\n")
    at = data.index(b",UA,", header_end)
    flights.write_bytes(data[:at + 1] + b"A" + data[at + 2:])  # one carrier UA -> AA: one byte, same size
    assert flights.stat().st_size == len(data)

    stale = plan_and_stale(project)[1]
    assert set(stale) == tasks, stale
    assert "never built" not in " ".join(stale.values()), stale
    assert run_and_get_ran(project) == tasks
    record = last_run(project)
    assert record["snapshot_id"] != snapshot
    assert_nothing_to_do(project)


def test_file_named_by_a_parameter_makes_its_task_stale(renamed_copy):
    project = renamed_copy
    plan, stale = plan_and_stale(project)
    assert stale == {}, stale
    assert "notes" in plan.tasks["features"].inputs
    assert all("notes" not in t.inputs for n, t in plan.tasks.items() if n != "features")

    (project / "notes.txt").write_text("other notes, longer than the first\n", encoding="utf-8")
    plan2, stale = plan_and_stale(project)
    assert plan2.tasks["features"].inputs["notes"] != plan.tasks["features"].inputs["notes"]
    assert set(stale) == {"features", "train", "evaluate", "gate"}, stale
    assert "input data" in stale["features"], stale
    for name in ("load", "validate"):
        assert plan2.tasks[name].fingerprint == plan.tasks[name].fingerprint

    # the same bytes again: up to date again
    (project / "notes.txt").write_text("first notes\n", encoding="utf-8")
    assert plan_and_stale(project)[1] == {}


# --------------------------------------------------------------------------------------------------
# 5. library versions


def test_new_library_version_makes_every_task_stale(project, monkeypatch):
    from mlops_nb.run import plan as spec

    assert plan_and_stale(project)[1] == {}
    real = spec.result_library_versions()
    assert real.get("scikit-learn")
    monkeypatch.setattr(spec, "result_library_versions", lambda: {**real, "scikit-learn": "0.0.1"})
    stale = plan_and_stale(project)[1]
    assert set(stale) == ALL_TASKS, stale
    for name, why in stale.items():
        assert "library versions" in why, (name, why)


# --------------------------------------------------------------------------------------------------
# 6. products' contents, the state file, the warehouse


def _append_byte(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"\0")


def _rewrite_json(p: Path) -> None:
    data = json.loads(p.read_text(encoding="utf-8"))
    data["edited_by_hand"] = True
    p.write_text(json.dumps(data), encoding="utf-8")


@pytest.mark.parametrize("product, change", [
    ("model.joblib", _append_byte),
    ("train.json", _rewrite_json),
    ("model.joblib", Path.unlink),
], ids=["model-byte-appended", "train-json-rewritten", "model-deleted"])
def test_changed_or_missing_product_runs_its_task_and_downstream(built, project, product, change):
    path = project / PRODUCTS / product
    pristine = built.pristine / PRODUCTS / product
    change(path)
    assert run_and_get_ran(project) == {"train", "evaluate", "gate"}
    # the product is again what the task writes
    if product == "model.joblib":
        assert path.read_bytes() == pristine.read_bytes()
    else:
        now, was = json.loads(path.read_text(encoding="utf-8")), json.loads(pristine.read_text(encoding="utf-8"))
        assert "edited_by_hand" not in now
        assert now["model_sha256"] == was["model_sha256"]
        assert now["feature_set_id"] == was["feature_set_id"]
    assert_nothing_to_do(project)


def test_deleted_state_file_runs_everything(project):
    (project / STATE).unlink()
    assert run_and_get_ran(project) == ALL_TASKS
    assert (project / STATE).is_file()
    assert_nothing_to_do(project)


def test_missing_warehouse_runs_every_task_using_it(project):
    (project / WAREHOUSE).unlink()
    plan, stale = plan_and_stale(project)
    using = {n for n, t in plan.tasks.items() if t.uses_warehouse}
    assert using == ALL_TASKS
    assert set(stale) == using and all("warehouse is missing" in why for why in stale.values()), stale
    assert run_and_get_ran(project) == using
    assert (project / WAREHOUSE).is_file()
    assert_nothing_to_do(project)
