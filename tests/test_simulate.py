"""`mlops-nb simulate`: a small simulation, for real (the pipeline, `bentoml serve` on a free port, HTTP,
feedback, the monitor, retraining, the live feature store), checked from the outside: its JSON, the scratch
project it leaves (its feature store's events and materializations), the service's logs, and that no server
is left running.

Small by settings, not by flags: the project's data.months (1-7: the first champion on 1-3, months 4-7
replayed), 30 boosting rounds, monitor thresholds for a 3% sample (monitor.min_rows, min_labelled), and the
repository's feature definitions with every view's ttl 6h instead of 1h or 3h: the simulation materializes the
store whenever a prediction time is more than the shortest ttl past its last materialization, some 90 times a
replayed month at 3% instead of some 310 (about 0.35 s each, with the pushes before it; the module's simulation
then takes 2.5 to 3.5 minutes on 2 shared cores instead of some 10). Served values are then up to 6h older than
the training's point-in-time values of the same flight, never stale under these definitions; the checks
(events pushed in time order, each row's logged values equal to the offline join as of the time the store had
been materialized to) are the same for any ttl.
"""
from __future__ import annotations

import json
import math
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import conftest
from conftest import run_cli

SMALL = {"data__months": "1-7", "model__max_iter": "30", "monitor__min_rows": "20", "monitor__min_labelled": "30"}
SAMPLE = "0.03"
REPLAYED = ["2013-04", "2013-05", "2013-06", "2013-07"]
TOP_KEYS = {"champion_start", "champion_end", "windows", "comparisons"}
WINDOW_KEYS = {"window", "requests", "labelled", "drifted_features", "compared_features", "alerts", "actions", "arms"}
ARM_KEYS = {"requests", "labelled", "roc_auc", "estimated_roc_auc"}
COMPARISON_KEYS = {"window", "new", "old", "rows", "new_roc_auc", "old_roc_auc"}
ACTIONS = {"retrain", "promote_challenger", "promote_champion", "rollback"}
LEAD = timedelta(hours=2)   # features.lead, as the settings have it by default
TTL = timedelta(hours=6)    # every view's ttl in the test's definitions: the store's step (see the module docstring)
# the record's fields the feature store provides (features.yaml's views): never sent, looked up by the service
STORE_FIELDS = ["origin_dep_delay_2h", "origin_departures_2h", "origin_late_share_2h", "carrier_origin_dep_delay_6h",
                "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


def _processes_in(folder: Path) -> list[str]:
    """Processes whose working folder is ``folder`` or below it (the server runs in the scratch project)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            found.append(f"{entry.name}: {cmd}")
    return found


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()
            if line.strip()]


def _project(folder: Path, **settings) -> Path:
    """A sample project with the repository's feature definitions (the simulation replays their events), every
    view's ttl set to TTL (see the module docstring)."""
    import yaml

    project = conftest.make_project(folder, **settings)
    data = yaml.safe_load((conftest.REPO / "features.yaml").read_text())
    for view in data["views"].values():
        view["ttl"] = f"{TTL.seconds // 3600}h"
    (project / "features.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return project


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate")
    project = _project(root / "project", **SMALL)
    scratch = root / "scratch"
    result = run_cli(project, "simulate", "--sample", SAMPLE, "--out", scratch, "--seed", "1", "--json")
    assert result.returncode == 0, str(result)
    return project, scratch, result, json.loads(result.stdout)


@pytest.mark.slow
def test_the_json_has_exactly_the_promised_keys(simulated):
    _, _, _, out = simulated
    assert set(out) == TOP_KEYS
    assert [w["window"] for w in out["windows"]] == REPLAYED, "one window a replayed month, in time order"
    for w in out["windows"]:
        assert set(w) == WINDOW_KEYS, w["window"]
        assert isinstance(w["alerts"], list) and isinstance(w["drifted_features"], list)
        assert set(w["actions"]) <= ACTIONS, w["actions"]
        assert w["arms"], f"{w['window']}: no version served"
        for version, arm in w["arms"].items():
            assert set(arm) == ARM_KEYS, (w["window"], version)
    for c in out["comparisons"]:
        assert set(c) == COMPARISON_KEYS, c


@pytest.mark.slow
def test_requests_were_served_over_http_and_labelled(simulated):
    _, scratch, _, out = simulated
    total = 0
    for w in out["windows"]:
        assert w["requests"] > 0 and w["labelled"] > 0, w
        assert sum(a["requests"] for a in w["arms"].values()) == w["requests"], w
        assert sum(a["labelled"] for a in w["arms"].values()) == w["labelled"], w
        for version, arm in w["arms"].items():
            assert arm["labelled"] == 0 or arm["roc_auc"] is None or 0 <= arm["roc_auc"] <= 1
            assert arm["estimated_roc_auc"] is None or 0 <= arm["estimated_roc_auc"] <= 1
        assert all(a["roc_auc"] is not None for a in w["arms"].values() if a["labelled"] >= 100), w
        total += w["requests"]
    serving = scratch / "data" / "serving"
    requests = _lines(serving / "requests")
    predicted = [r for r in requests if r["route"] == "/predict"]
    assert len(predicted) == total and all(r["status"] == 200 for r in predicted), \
        "every window's request is a /predict answered by the service"
    assert any(r["route"] == "/feedback" for r in requests), "labels went to POST /feedback"
    feedback = _lines(serving / "feedback")
    assert {f["request_id"] for f in feedback} == {r["request_id"] for r in predicted}
    assert all(f["source"] == "http" for f in feedback)
    predictions = _lines(serving / "predictions")
    assert len({p["at"][:7] for p in predictions}) == len(REPLAYED), "serving.clock = flight: logged in the months"


@pytest.mark.slow
def test_drift_a_retrain_and_its_comparison_on_the_same_rows(simulated):
    _, _, result, out = simulated
    assert any(w["drifted_features"] for w in out["windows"]), "the months after training moved the inputs"
    assert "month" in out["windows"][0]["drifted_features"], "months 4-7 against a champion trained on January"
    retrained = [w["window"] for w in out["windows"] if "retrain" in w["actions"]]
    assert retrained, f"no retrain happened:\n{result.stderr[-3000:]}"
    assert out["comparisons"], "a retrain before the last window is compared on the next one"
    labelled = {w["window"]: w["labelled"] for w in out["windows"]}
    for c in out["comparisons"]:
        assert REPLAYED.index(c["window"]) - 1 in [REPLAYED.index(r) for r in retrained], c
        assert c["rows"] == labelled[c["window"]], "both models scored on the window's labelled rows"
        assert c["new"] != c["old"]
        assert 0 < c["new_roc_auc"] < 1 and 0 < c["old_roc_auc"] < 1
    assert out["champion_start"] is not None and out["champion_end"] is not None


def _served_from(predictions: list[dict], lead: timedelta, ttl: timedelta) -> list[datetime]:
    """For each logged row, the time the store had been materialized to when it was served, as the simulation
    promises it: rows in time order of their prediction time (the scheduled departure less the lead); the
    store is brought to a row's prediction time when that is more than a ttl past the last time it was brought to."""
    def prediction_time(inputs: dict) -> datetime:
        hhmm = int(inputs["sched_dep_time"])
        return datetime(int(inputs["year"]), int(inputs["month"]), int(inputs["day"]), hhmm // 100, hhmm % 100) - lead

    times = [prediction_time(p["inputs"]) for p in predictions]
    state, at = {}, None
    for t in sorted(set(times)):
        if at is None or t - at > ttl:
            at = t
        state[t] = at
    return [state[t] for t in times]


@pytest.mark.slow
def test_the_store_was_pushed_in_time_order_and_materialized_as_time_advanced(simulated):
    """The replayed sources became push sources (same views); the events store holds exactly the snapshot's
    events up to the last one pushed (in the last replayed month), each once; the store was materialized
    whenever a prediction time was more than a ttl past the time it had been materialized to, and only then."""
    import duckdb
    import yaml

    from mlops_nb.featurestore import definitions, offline

    project, scratch, result, _ = simulated
    written = yaml.safe_load((scratch / "features.yaml").read_text())
    assert written["views"] == yaml.safe_load((project / "features.yaml").read_text())["views"]
    sources = definitions.load(project / "features.yaml").sources
    for name in ("departures", "weather"):
        assert written["sources"][name]["push"] is True and set(written["sources"][name]) >= {"columns", "timestamp"}
    store = scratch / "data" / "featurestore"
    con = duckdb.connect()
    con.execute(f"ATTACH '{scratch / 'data' / 'warehouse.duckdb'}' AS wh (READ_ONLY)")
    con.execute(f"ATTACH '{store / 'events.duckdb'}' AS ev (READ_ONLY)")
    con.execute("USE wh")
    # the first run's snapshot, of every month (a retrain's holds its own months only)
    schema = con.execute("SELECT schema_name FROM snapshots ORDER BY created_at LIMIT 1").fetchone()[0]
    for name in ("departures", "weather"):
        ts = sources[name].timestamp
        pushed = f'ev.main."{name}"'
        last = con.execute(f'SELECT max("{ts}") FROM {pushed}').fetchone()[0]
        assert last.strftime("%Y-%m") == REPLAYED[-1], f"{name}: pushed up to {last}, into the last replayed month"
        truth = f'(SELECT * FROM {offline.source_sql(sources[name], snapshot=schema)} WHERE "{ts}" <= TIMESTAMP \'{last}\')'
        assert con.execute(f"SELECT count(*) FROM {pushed}").fetchone()[0] > 1000
        for a, b in ((pushed, truth), (truth, pushed)):
            extra = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchone()[0]
            assert extra == 0, f"{name}: the pushed events are the snapshot's up to the last one pushed, each once"
    online = duckdb.connect(str(store / "online.duckdb"), read_only=True)
    as_of = {v: t for v, t in online.execute("SELECT view, as_of FROM views").fetchall()}
    assert set(as_of) == {"origin_departures", "carrier_origin_departures", "origin_weather"}
    assert len(set(as_of.values())) == 1 and next(iter(as_of.values())).strftime("%Y-%m") == REPLAYED[-1]
    predictions = _lines(scratch / "data" / "serving" / "predictions")
    states = set(_served_from(predictions, LEAD, TTL))
    assert f"feature store: {len(states)} materializations" in result.stderr, \
        "the store materialized exactly when a prediction time was more than a ttl past the last materialization"


@pytest.mark.slow
def test_served_predictions_used_the_stores_values(simulated, tmp_path):
    """Requests carried the flight alone; the service looked the store's fields up: the logged values are
    not all missing, and each equals the offline join for the row's keys as of the time the store had been
    materialized to when it was served (at or before its prediction time, less than a ttl before: fresh)."""
    import pandas as pd

    _, scratch, _, _ = simulated
    predictions = _lines(scratch / "data" / "serving" / "predictions")
    spine = pd.DataFrame({"origin": [p["inputs"]["origin"] for p in predictions],
                          "carrier": [p["inputs"]["carrier"] for p in predictions],
                          "event_timestamp": _served_from(predictions, LEAD, TTL)})
    spine.to_csv(tmp_path / "spine.csv", index=False)
    conftest.run_ok(scratch, "features", "historical", tmp_path / "spine.csv", "--out", tmp_path / "joined.parquet")
    joined = pd.read_parquet(tmp_path / "joined.parquet")
    for field in STORE_FIELDS:
        logged = [p["inputs"].get(field) for p in predictions]
        assert any(v is not None for v in logged), f"{field}: no logged value (the service did not look it up)"
        expected = [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in joined[field]]
        wrong = [(i, a, b) for i, (a, b) in enumerate(zip(logged, expected))  # the log keeps 15 digits
                 if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-12))]
        assert not wrong, f"{field}: {len(wrong)} of {len(logged)} logged values differ from the store's, e.g. {wrong[:3]}"


@pytest.mark.slow
def test_the_stores_fields_are_monitored_for_drift(simulated):
    """The window records compare the store's fields like any input, and so do the monitor's windows."""
    import duckdb

    _, scratch, _, out = simulated
    compared = set().union(*(w["compared_features"] for w in out["windows"]))
    assert set(STORE_FIELDS) <= compared, sorted(set(STORE_FIELDS) - compared)
    con = duckdb.connect(str(scratch / "data" / "monitoring" / "monitoring.duckdb"), read_only=True)
    monitored = {r[0] for r in con.execute('SELECT DISTINCT "column" FROM drift WHERE statistic IS NOT NULL').fetchall()}
    assert set(STORE_FIELDS) <= monitored, sorted(set(STORE_FIELDS) - monitored)


def test_a_request_holds_flights_of_one_store_state_and_no_store_field():
    """Requests group consecutive flights of one outcome served by one state of the store, and a request's
    records leave out the store's fields (the service looks them up)."""
    import pandas as pd

    from mlops_nb.monitoring import simulate

    frame = pd.DataFrame({"late": [1, 1, 0, 1, 1, 1, 0], "origin": ["EWR"] * 7, "temp": [50.0] * 7,
                          "year": [2013] * 7, "month": [4] * 7, "day": [1] * 7, "sched_dep_time": [600] * 7})
    states = [0, 0, 0, 1, 1, 1, 1]
    assert simulate.requests_of(frame, 2, states) == [[0, 1], [2], [3, 4], [5], [6]]
    assert simulate.requests_of(frame, 5) == [[0, 1, 3, 4, 5], [2, 6]]
    records = simulate.as_records(frame, omit=["temp"])
    assert records[0] == {"year": 2013, "month": 4, "day": 1, "sched_dep_time": 600, "origin": "EWR"}


@pytest.mark.slow
def test_the_scratch_project_is_apart_and_the_server_is_gone(simulated):
    project, scratch, _, out = simulated
    assert not (project / "data").exists() and not (project / "reports").exists(), \
        "the simulation never writes into the project it was started from"
    assert (scratch / ".mlops-nb-simulation").is_file()
    for path in ("data/warehouse.duckdb", "data/monitoring/monitoring.duckdb", "reports/monitoring.html",
                 "settings.ini", "pipeline.yaml"):
        assert (scratch / path).exists(), path
    assert (scratch / "data" / "bentoml" / "models").is_dir(), "the model store is the scratch project's"
    text = (scratch / "settings.ini").read_text()
    assert "clock = flight" in text and "on_alert = retrain" in text
    assert _processes_in(scratch) == [], "the service of the simulation is still running"
    assert _processes_in(project) == []


def test_a_non_empty_out_that_is_no_simulation_is_refused(tmp_path):
    project = _project(tmp_path / "project", data__months="1-7")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(project, "simulate", "--out", out)
    assert result.returncode == 8, str(result)
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    few = run_cli(_project(tmp_path / "few"), "simulate", "--out", tmp_path / "x")  # months 1-3
    assert few.returncode == 8 and "at least 4 months" in few.stderr, str(few)
    bare = conftest.make_project(tmp_path / "bare", data__months="1-7")
    (bare / "features.yaml").unlink(missing_ok=True)
    none = run_cli(bare, "simulate", "--out", tmp_path / "y")
    assert none.returncode == 8 and "No feature definitions" in none.stderr and "Traceback" not in none.stderr, str(none)


@pytest.mark.slow
def test_a_killed_simulation_takes_its_server_with_it(tmp_path):
    """SIGKILL of `mlops-nb simulate` while its server runs: the server (its own process group, so no
    signal to ours reaches it) gets the parent-death signal and stops."""
    import signal
    import subprocess
    import time

    project = _project(tmp_path / "project", **SMALL)
    scratch = tmp_path / "scratch"
    proc = subprocess.Popen([str(conftest.CLI), "simulate", "--sample", SAMPLE, "--out", str(scratch)], cwd=project,
                            env=conftest.cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any("serve" in p for p in _processes_in(scratch)):
            assert proc.poll() is None, "the simulation ended before its server started"
            time.sleep(0.5)
        assert any("serve" in p for p in _processes_in(scratch)), "no server started"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _processes_in(scratch):
        time.sleep(0.5)
    assert _processes_in(scratch) == []
