"""`mlops-nb simulate`: a small simulation, for real (the pipeline, `bentoml serve` on a free port, HTTP,
feedback, the monitor, retraining), checked from the outside: its JSON, the scratch project it leaves, the
service's logs, and that no server is left running.

Small by settings, not by flags: the project's data.months (1-7: the first champion on 1-3, months 4-7
replayed), 30 boosting rounds, and monitor thresholds for a 3% sample (monitor.min_rows, min_labelled).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import conftest
from conftest import run_cli

SMALL = {"data__months": "1-7", "model__max_iter": "30", "monitor__min_rows": "20", "monitor__min_labelled": "30"}
SAMPLE = "0.03"
REPLAYED = ["2013-04", "2013-05", "2013-06", "2013-07"]
TOP_KEYS = {"champion_start", "champion_end", "windows", "comparisons"}
WINDOW_KEYS = {"window", "requests", "labelled", "drifted_features", "alerts", "actions", "arms"}
ARM_KEYS = {"requests", "labelled", "roc_auc", "estimated_roc_auc"}
COMPARISON_KEYS = {"window", "new", "old", "rows", "new_roc_auc", "old_roc_auc"}
ACTIONS = {"retrain", "promote_challenger", "promote_champion", "rollback"}


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


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulate")
    project = conftest.make_project(root / "project", **SMALL)
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
    project = conftest.make_project(tmp_path / "project", data__months="1-7")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli(project, "simulate", "--out", out)
    assert result.returncode == 8, str(result)
    assert "not empty" in result.stderr and "Traceback" not in result.stderr
    assert (out / "keep.txt").read_text() == "mine"
    few = run_cli(conftest.make_project(tmp_path / "few"), "simulate", "--out", tmp_path / "x")  # months 1-3
    assert few.returncode == 8 and "at least 4 months" in few.stderr, str(few)


@pytest.mark.slow
def test_a_killed_simulation_takes_its_server_with_it(tmp_path):
    """SIGKILL of `mlops-nb simulate` while its server runs: the server (its own process group, so no
    signal to ours reaches it) gets the parent-death signal and stops."""
    import signal
    import subprocess
    import time

    project = conftest.make_project(tmp_path / "project", **SMALL)
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
