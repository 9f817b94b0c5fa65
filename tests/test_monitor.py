"""`mlops-nb monitor` and the monitoring store, over log files written here in the documented formats
(``data.logs``) and a real DuckDB store: incrementality, late and duplicate feedback, corrupt and truncated
files, the empty case, a SIGKILL in the middle of a call, and the lock.

Most tests call ``monitoring.monitor.monitor`` in-process with the version's reference replaced by a
synthetic one (``estimate.reference`` is the one seam: the versions here are not in a model store); the CLI
tests run the real `mlops-nb monitor` in a subprocess (the versions are then unknown to the project: drift
says so, the rest is computed)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import CLI, cli_env, make_project, run_cli

pytest_plugins = ["served_project"]  # the end-to-end test's session project and server

from mlops_nb import config
from mlops_nb.data import logs
from mlops_nb.errors import NotFoundError, RunLockedError
from mlops_nb.lib.record import RECORD
from mlops_nb.monitoring import estimate, monitor, store

BASE = datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()  # a Monday, 00:00 UTC
HOUR = 3600


# --------------------------------------------------------------------------------------------------
# log files in the documented formats


def inputs(rng: random.Random, shift: float = 0.0) -> dict:
    return {"year": 2013, "month": 1, "day": 5, "sched_dep_time": 900, "sched_arr_time": 1130,
            "carrier": rng.choice(["UA", "AA", "B6"]), "origin": rng.choice(["JFK", "LGA"]), "dest": "LAX",
            "distance": rng.uniform(200, 2500) + shift, "plane_year": None, "plane_seats": 150,
            "temp": rng.uniform(20, 60), "dewp": 20.0, "humid": 60.0, "wind_dir": 200.0, "wind_speed": 10.0,
            "wind_gust": None, "precip": 0.0, "pressure": 1012.0, "visib": 10.0}


def rid(hour: int, i: int) -> str:
    return f"{hour:04x}{i:012x}"


class Logs:
    """Writes a serving dir as the service and `mlops-nb feedback` do."""

    def __init__(self, serving: Path, seed: int = 0):
        self.dir = serving
        self.rng = random.Random(seed)
        self.p: dict[str, float] = {}

    def window(self, hour: int, n: int = 60, version: str = "v1", arm: str = "champion", shift: float = 0.0,
               refused: int = 1, worker: str = "w1", keys: bool = False) -> Path:
        """n one-row requests in hour ``hour`` after BASE, their request-log lines, ``refused`` 422s."""
        start = BASE + hour * HOUR
        preds, reqs = [], []
        for i in range(n):
            at = logs.now_iso(start + i * (HOUR - 1) / n)
            p = self.rng.random()
            self.p[rid(hour, i)] = p
            preds.append(json.dumps({
                "request_id": rid(hour, i), "key": f"k{hour}-{i}" if keys else None, "at": at,
                "model_version": version, "arm": arm, "row": 0, "inputs": inputs(self.rng, shift), "p_late": p,
                "latency_ms": self.rng.uniform(1, 30), "shadow": None}) + "\n")
            reqs.append(json.dumps({"request_id": rid(hour, i), "at": at, "route": "/predict", "status": 200,
                                    "latency_ms": 5.0, "rows": 1}) + "\n")
        for j in range(refused):
            reqs.append(json.dumps({"request_id": None, "at": logs.now_iso(start + 60 + j), "route": "/predict",
                                    "status": 422, "latency_ms": 1.0, "rows": 0}) + "\n")
        path = logs.window_path(self.dir, logs.PREDICTIONS, start, worker, ".jsonl")
        logs.append(path, preds)
        logs.append(logs.window_path(self.dir, logs.REQUESTS, start, worker, ".jsonl"), reqs)
        return path

    def feedback(self, labels: list[tuple], name: str = "20260105-http.jsonl", at: float | None = None) -> Path:
        """labels: (request_id or None, key or None, late) each; received in order, a second apart."""
        at = at or time.time()
        lines = [json.dumps({"request_id": r, "key": k, "late": bool(late), "arr_delay": None,
                             "received_at": logs.now_iso(at + i), "source": "http"}) + "\n"
                 for i, (r, k, late) in enumerate(labels)]
        path = self.dir / logs.FEEDBACK / name
        logs.append(path, lines)
        return path

    def labels_for(self, hour: int, n: int, seed: int = 1) -> list[tuple]:
        """A plausible label a request of that hour: late with probability p."""
        rng = random.Random(seed + hour)
        return [(rid(hour, i), None, rng.random() < self.p[rid(hour, i)]) for i in range(n)]


def fake_reference(version, settings=None):
    if version not in ("v1", "v2"):
        raise NotFoundError(f"Model version {version} is not in the model store.")
    rng = np.random.default_rng(0)
    n = 3000
    train = pd.DataFrame({
        "year": 2013.0, "month": 1.0, "day": 5.0, "sched_dep_time": 900.0, "sched_arr_time": 1130.0,
        "carrier": rng.choice(["UA", "AA", "B6"], n), "origin": rng.choice(["JFK", "LGA"], n), "dest": "LAX",
        "distance": rng.uniform(200, 2500, n), "plane_year": np.nan, "plane_seats": 150.0,
        "temp": rng.uniform(20, 60, n), "dewp": 20.0, "humid": 60.0, "wind_dir": 200.0, "wind_speed": 10.0,
        "wind_gust": np.nan, "precip": 0.0, "pressure": 1012.0, "visib": 10.0}, index=range(n))
    return {"train_sample": train.reindex(columns=list(RECORD)), "calibration": None, "threshold": 0.5, "metrics": {"roc_auc": 0.7},
            "test_predictions": pd.DataFrame({"p_late": rng.random(n), "late": rng.random(n) < 0.3, "month": 11})}


@pytest.fixture
def proj(tmp_path, monkeypatch):
    """A project (settings.ini only matters) with small monitor thresholds; the reference is synthetic."""
    folder = make_project(tmp_path / "p", monitor__min_rows="20", monitor__min_labelled="10")
    monkeypatch.setattr(estimate, "reference", fake_reference)
    settings = config.load(folder / "settings.ini")
    return settings, Logs(config.serving_dir(settings, in_bento=False))


def windows_of(report, version="v1"):
    return {w["window_start"]: w for w in report.windows if w["model_version"] == version}


def stored(settings, sql, params=None):
    con = duckdb.connect(str(store.store_path(settings)), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def hour_start(hour: int) -> datetime:
    return datetime.fromtimestamp(BASE + hour * HOUR, timezone.utc).replace(tzinfo=None)


# --------------------------------------------------------------------------------------------------
# incrementality and windows


def test_windows_and_incrementality(proj):
    settings, lg = proj
    lg.window(0, n=60)
    lg.window(1, n=60, shift=3000.0)  # distance far outside the training range: drifts
    r1 = monitor.monitor(settings)
    assert r1.read["predictions"] == 120 and r1.read["requests"] == 122 and r1.read["files_read"] == 4
    w = windows_of(r1)
    assert sorted(w) == [hour_start(0), hour_start(1)]
    w0, w1 = w[hour_start(0)], w[hour_start(1)]
    assert (w0["requests"], w0["rows"], w0["errors"], w0["arm"]) == (60, 60, 0, "champion")
    assert w0["latency_p50_ms"] < w0["latency_p99_ms"] <= 30
    assert sum(w0["p_histogram"]) == 60 and 0 <= w0["p_p10"] <= w0["p_p50"] <= w0["p_p90"] <= 1
    stat = {(ws, d["column"]): d for ws, x in w.items() for d in x["drift"]}
    assert stat[hour_start(1), "distance"]["statistic"] == 1.0 and "distance" in w1["drifted"]
    assert stat[hour_start(0), "distance"]["statistic"] < 0.3  # 60 rows of the same distribution
    assert stat[hour_start(0), "carrier"]["method"] == "chi2" and stat[hour_start(0), "year"]["basis"] == "exact"
    assert {d["column"] for d in w1["drift"]} == set(RECORD) | {"p_late"}
    assert w0["roc_auc"] is None and "min_labelled" in w0["realized_note"] and w0["labelled"] == 0
    assert w0["estimated_roc_auc"] is not None and w0["estimate_method"] == "CBPE"
    service = [x for x in r1.windows if x["model_version"] == store.ALL]
    assert [(x["requests"], x["errors"]) for x in service] == [(61, 1), (61, 1)]  # the refusal has no version

    r2 = monitor.monitor(settings)  # nothing new: nothing read, nothing recomputed
    assert (r2.read["files_read"], r2.read["bytes"], r2.read["lines"], r2.windows) == (0, 0, 0, [])

    before = {p: p.stat().st_size for p in lg.dir.rglob("*.jsonl")}
    new_file = lg.window(2, n=30)
    new_bytes = sum(p.stat().st_size - before.get(p, 0) for p in lg.dir.rglob("*.jsonl"))
    r3 = monitor.monitor(settings)
    assert r3.read["files_read"] == 2 and r3.read["new_files"] == 2 and r3.read["bytes"] == new_bytes
    assert r3.read["predictions"] == 30 and r3.read["requests"] == 31
    assert {x["window_start"] for x in r3.windows} == {hour_start(2)}  # exactly the new window
    assert stored(settings, "SELECT count(*) FROM predictions")[0][0] == 150
    # the earlier windows stay as computed by the first call
    assert stored(settings, "SELECT window_start, computed_seq FROM windows WHERE model_version = 'v1' "
                            "AND window_length = '1h' ORDER BY 1") == [
        (hour_start(0), 1), (hour_start(1), 1), (hour_start(2), 3)]
    assert new_file.name in {Path(p).name for (p,) in stored(settings, "SELECT path FROM ingested_files")}

    # the other length is kept separately: a 1d call computes the day from everything read so far
    rd = monitor.monitor(settings, window="1d")
    assert rd.read["bytes"] == 0
    day = windows_of(rd)[hour_start(0)]
    assert (day["window_length"], day["rows"]) == ("1d", 150)
    assert stored(settings, "SELECT count(*) FROM windows WHERE window_length = '1h'")[0][0] == 6


NEW_INPUTS = ("origin_dep_delay_2h", "origin_departures_2h", "origin_late_share_2h", "carrier_origin_dep_delay_6h")


def old_store(settings) -> None:
    """A monitoring store as an mlops-nb before the point-in-time features made it (the record without their
    fields, no ``features`` nor ``feature_nan`` column), holding one prediction of an older log."""
    drop = (*NEW_INPUTS, "features", "feature_nan")
    ddl = "\n".join(line for line in store.DDL.splitlines()
                    if not any(line.strip().startswith((f'"{c}" ', f"{c} ")) for c in drop))
    path = store.store_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    try:
        con.execute(ddl)
        con.execute("INSERT INTO store_meta VALUES ('schema_version', ?)", [str(store.SCHEMA_VERSION)])
        have = [r[0] for r in con.execute("DESCRIBE predictions").fetchall()]
        assert not set(drop) & set(have) and "temp" in have
        con.execute("INSERT INTO predictions BY NAME SELECT 0 AS seq, 'predictions/old.jsonl' AS file, 1 AS line, "
                    "'00000000000000aa' AS request_id, TIMESTAMP '2026-01-04 12:00' AS \"at\", 'v1' AS model_version, "
                    "'champion' AS arm, 0 AS \"row\", 0.25 AS p_late, 41.0 AS temp, 'EWR' AS origin")
    finally:
        con.close()


def test_an_old_store_gains_the_new_columns_and_monitors_them(proj):
    """A store without the record's new fields is migrated in place (its rows kept, NULL in the new columns);
    new log lines, with the store-provided fields among the inputs and where each came from, land by column
    name; the windows count the NaN of each store-provided field, and its drift is measured like any input's."""
    settings, lg = proj
    old_store(settings)
    path = lg.window(0, n=40)
    rng = random.Random(5)
    lines = []
    for i, line in enumerate(path.read_text().splitlines()):
        row = json.loads(line)
        row["inputs"].update({c: rng.uniform(0, 30) for c in NEW_INPUTS})
        row["inputs"]["origin_dep_delay_2h"] = None if i % 4 == 0 else row["inputs"]["origin_dep_delay_2h"]
        row["features"] = {"store": [c for c in NEW_INPUTS if c != "origin_dep_delay_2h" or i % 4],
                           "sent": ["temp"], "missing": ["origin_dep_delay_2h"] if i % 4 == 0 else [],
                           "stale": []}
        lines.append(json.dumps(row) + "\n")
    path.write_text("".join(lines))
    report = monitor.monitor(settings)
    assert report.read["predictions"] == 40 and report.warnings == []
    columns = {r[0]: r[1] for r in stored(settings, "DESCRIBE predictions")}
    assert all(c in columns for c in NEW_INPUTS) and columns["features"].startswith("STRUCT")
    assert stored(settings, "SELECT temp, origin, origin_dep_delay_2h, features FROM predictions "
                            "WHERE request_id = '00000000000000aa'") == [(41.0, "EWR", None, None)]
    got = stored(settings, "SELECT count(origin_dep_delay_2h), count(carrier_origin_dep_delay_6h), "
                           "sum(len(features.missing)), min(features.sent[1]) FROM predictions WHERE seq > 0")
    assert got == [(30, 40, 10, "temp")]
    w = windows_of(report)[hour_start(0)]
    assert w["feature_nan"] == {"origin_dep_delay_2h": {"missing": 10, "stale": 0}}
    assert stored(settings, "SELECT feature_nan FROM windows WHERE model_version = 'v1'") == [
        (json.dumps({"origin_dep_delay_2h": {"missing": 10, "stale": 0}}),)]
    drift = {d["column"]: d for d in w["drift"]}
    assert set(NEW_INPUTS) <= set(drift)  # measured like any input: here against a reference without them
    con = duckdb.connect(str(store.store_path(settings)))
    try:
        assert store.migrate(con) == []  # migrated: nothing more to add
    finally:
        con.close()
    assert monitor.monitor(settings).read["bytes"] == 0


def test_appended_lines_read_from_the_offset(proj):
    settings, lg = proj
    path = lg.window(0, n=40)
    monitor.monitor(settings)
    size = path.stat().st_size
    line = json.dumps({"request_id": "ffff000000000001", "key": None, "at": logs.now_iso(BASE + 3000),
                       "model_version": "v1", "arm": "champion", "row": 0, "inputs": inputs(random.Random(3)),
                       "p_late": 0.9, "latency_ms": 2.0, "shadow": None}) + "\n"
    logs.append(path, [line, line[:40]])  # one whole line and one still being written
    r = monitor.monitor(settings)
    assert (r.read["bytes"], r.read["predictions"], r.warnings) == (len(line), 1, [])
    assert windows_of(r)[hour_start(0)]["rows"] == 41
    assert stored(settings, "SELECT bytes_read FROM ingested_files WHERE path = ?",
                  [f"predictions/{path.name}"])[0][0] == size + len(line)


# --------------------------------------------------------------------------------------------------
# feedback


def test_late_feedback_updates_old_windows_only(proj):
    settings, lg = proj
    lg.window(0, n=60)
    lg.window(1, n=60)
    r1 = monitor.monitor(settings)
    assert all(w["roc_auc"] is None for w in windows_of(r1).values())

    labels = lg.labels_for(0, 50)  # labels of the first hour arrive later
    if len({late for *_, late in labels}) < 2:
        labels[0] = (labels[0][0], None, not labels[0][2])
    lg.feedback(labels)
    r2 = monitor.monitor(settings)
    assert r2.read["feedback"] == 50 and r2.read["labels_changed"] == 50
    assert {x["window_start"] for x in r2.windows} == {hour_start(0)}  # only the window the labels touch
    w0 = windows_of(r2)[hour_start(0)]
    y = np.array([late for *_, late in labels])
    p = np.array([lg.p[r] for r, *_ in labels])
    assert (w0["labelled"], w0["label_coverage"]) == (50, pytest.approx(50 / 60))
    assert w0["roc_auc"] == pytest.approx(roc_auc_score(y, p))
    assert w0["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert w0["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
    assert stored(settings, "SELECT roc_auc FROM windows WHERE window_start = ? AND model_version = 'v1' "
                            "AND window_length = '1h'", [hour_start(0)])[0][0] == pytest.approx(w0["roc_auc"])

    # a correction (received later) wins; a repeat of the same label is a duplicate that changes nothing
    first = labels[0]
    lg.feedback([(first[0], None, not first[2])], name="20260106-http.jsonl", at=time.time() + 100)
    lg.feedback([labels[1]], name="20260106-http.jsonl", at=time.time() + 200)
    r3 = monitor.monitor(settings)
    assert (r3.read["feedback"], r3.read["duplicates"], r3.read["labels_changed"]) == (2, 2, 1)
    assert {x["window_start"] for x in r3.windows} == {hour_start(0)}
    y2 = y.copy()
    y2[0] = not y2[0]
    assert windows_of(r3)[hour_start(0)]["roc_auc"] == pytest.approx(roc_auc_score(y2, p))
    # a repeat only: nothing to recompute
    lg.feedback([labels[2]], name="20260107-http.jsonl", at=time.time() + 300)
    r4 = monitor.monitor(settings)
    assert (r4.read["duplicates"], r4.read["labels_changed"], r4.windows) == (1, 0, [])
    assert r4.read["duplicates_total"] == 3


def test_unknown_feedback_is_kept_and_matched_when_the_prediction_arrives(proj):
    settings, lg = proj
    lg.window(0, n=30)
    lg.feedback([(rid(5, 0), None, True), (rid(5, 1), None, False), (None, "k5-2", True),
                 (rid(0, 0), None, True)])
    r1 = monitor.monitor(settings)
    assert r1.read["unknown_labels"] == 3
    assert windows_of(r1)[hour_start(0)]["labelled"] == 1
    lg.window(5, n=30, keys=True)  # the predictions come later (a delayed log, another worker)
    r2 = monitor.monitor(settings)
    assert r2.read["unknown_labels"] == 0
    assert {x["window_start"] for x in r2.windows} == {hour_start(5)}
    assert windows_of(r2)[hour_start(5)]["labelled"] == 3  # two by request id, one by key



def test_unknown_and_duplicate_counts_follow_the_new_rows(proj):
    """A call updates the counts of duplicate feedback lines and of labels that match no prediction from its
    new rows (the last call's counts, not the whole tables read again): after every call they are what
    counting the whole store gives."""
    settings, lg = proj

    def recount():  # the full count a call makes when it cannot update
        return stored(settings, monitor.FEEDBACK_COUNTS_SQL)[0]

    steps = [
        lambda: lg.window(0, n=20, keys=True),
        lambda: lg.feedback([(rid(0, 0), None, True), (rid(3, 0), None, False), (None, "k3-1", True),
                             (None, "k0-2", False), (None, "no-such-key", True)], name="a.jsonl"),
        lambda: (lg.window(3, n=10, keys=True),  # matches earlier feedback by id and by key
                 lg.feedback([(rid(0, 0), None, False), (rid(4, 0), None, True), (rid(4, 0), None, True)],
                             name="b.jsonl")),
        lambda: lg.feedback([(None, "k3-1", False), (rid(3, 2), None, True)], name="a.jsonl"),
        lambda: lg.window(4, n=5),
        lambda: None,  # nothing new
    ]
    counts = []
    for step in steps:
        step()
        r = monitor.monitor(settings)
        counts.append((r.read["duplicates_total"], r.read["unknown_labels"]))
        assert counts[-1] == recount()
    assert counts == [(0, 0), (0, 3), (2, 2), (3, 2), (3, 1), (3, 1)]

def test_minimum_labels_and_one_class(proj):
    settings, lg = proj
    lg.window(0, n=40)
    lg.feedback([(rid(0, i), None, True) for i in range(15)])
    r = monitor.monitor(settings)
    w = windows_of(r)[hour_start(0)]
    assert w["roc_auc"] is None and "one class" in w["realized_note"] and w["labelled"] == 15


# --------------------------------------------------------------------------------------------------
# bad input


def test_corrupt_line_and_truncated_file_skipped_with_named_warnings(proj):
    settings, lg = proj
    good = lg.window(0, n=30)
    text = good.read_text().splitlines(keepends=True)
    text.insert(5, '{"request_id": "broken", "at": \n')
    text.insert(9, '["not", "an", "object"]\n')
    text.insert(12, json.dumps({"request_id": "x", "at": "yesterday", "model_version": "v1"}) + "\n")
    good.write_text("".join(text))
    truncated = lg.window(1, n=20, worker="w2")
    with open(truncated, "a") as f:
        f.write('{"request_id": "0001000000000099", "at": "2026-01-05T01:5')  # the writer died mid-line
    old = time.time() - 2 * monitor.TAIL_GRACE
    os.utime(truncated, (old, old))
    r = monitor.monitor(settings)
    kinds = {(w["kind"], w["file"]): w for w in r.warnings}
    corrupt = kinds[("corrupt-line", f"predictions/{good.name}")]
    assert corrupt["count"] == 2 and "line 6, 10" in corrupt["message"] and good.name in corrupt["message"]
    invalid = kinds[("invalid-line", f"predictions/{good.name}")]
    assert invalid["count"] == 1 and "13" in invalid["message"]
    trunc = kinds[("truncated-file", f"predictions/{truncated.name}")]
    assert truncated.name in trunc["message"] and "incomplete" in trunc["message"]
    assert r.read["predictions"] == 50 and r.read["skipped_lines"] == 4
    assert r.read["warnings_by_kind"] == {"corrupt-line": 2, "invalid-line": 1, "truncated-file": 1}
    assert stored(settings, "SELECT sum(warnings) FROM ingested_files")[0][0] == 4
    again = monitor.monitor(settings)  # skipped once, not again
    assert (again.warnings, again.read["bytes"]) == ([], 0)


def test_a_replaced_file_is_read_again(proj):
    settings, lg = proj
    path = lg.window(0, n=30)
    monitor.monitor(settings)
    lines = path.read_text().splitlines(keepends=True)[:10]
    path.write_text("".join(lines))
    r = monitor.monitor(settings)
    assert [w["kind"] for w in r.warnings] == ["shrunk-file"]
    assert windows_of(r)[hour_start(0)]["rows"] == 10
    assert stored(settings, "SELECT count(*) FROM predictions")[0][0] == 10


def test_lock_one_writer(proj, monkeypatch):
    settings, lg = proj
    lg.window(0, n=10)
    with store.lock(settings):
        with pytest.raises(RunLockedError, match="Another mlops-nb monitor"):
            with store.lock(settings, wait=0.3):
                pass
    monitor.monitor(settings)  # released


# --------------------------------------------------------------------------------------------------
# the command


def cli_project(tmp_path, **settings) -> tuple[Path, Logs]:
    folder = make_project(tmp_path / "cli", monitor__min_rows="20", monitor__min_labelled="10", **settings)
    settings = config.load(folder / "settings.ini")
    return folder, Logs(config.serving_dir(settings, in_bento=False))


def test_cli_empty_logs(tmp_path):
    folder, _ = cli_project(tmp_path)
    r = run_cli(folder, "monitor")
    assert r.returncode == 0, str(r)
    assert "no prediction logs in" in r.stdout and "mlops-nb serve" in r.stdout


def test_cli_text_and_json(tmp_path):
    folder, lg = cli_project(tmp_path)
    lg.window(0, n=40)
    lg.feedback(lg.labels_for(0, 20) + [(rid(0, 0), None, True), (rid(9, 9), None, False)])
    r = run_cli(folder, "monitor")
    assert r.returncode == 0, str(r)
    assert "40 prediction(s)" in r.stdout and "1 label(s) match no prediction" in r.stdout
    assert "v1 champion: 40 req" in r.stdout and "service (all routes): 41 req" in r.stdout
    assert "no training reference" in r.stdout  # the version is not in this project's model store
    lg.window(1, n=40)
    data = run_cli(folder, "monitor", "--json", "--window", "1d").json()
    assert data["window"] == "1d" and data["read"]["predictions"] == 40
    day = [w for w in data["windows"] if w["model_version"] == "v1"]
    assert len(day) == 1 and day[0]["rows"] == 80 and len(day[0]["drift"]) == len(RECORD) + 1


def _tables(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for (name,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall():
            out[name] = sorted(map(repr, con.execute(f'SELECT * FROM "{name}"').fetchall()))
        return out
    finally:
        con.close()


def test_sigkill_mid_call_leaves_the_store_as_before(tmp_path):
    folder, lg = cli_project(tmp_path)
    lg.window(0, n=40)
    assert run_cli(folder, "monitor").returncode == 0
    db = folder / "data" / "monitoring" / store.STORE_FILE
    before = _tables(db)
    lg.window(1, n=40)
    lg.feedback(lg.labels_for(0, 30))
    for point in ("ingested", "before-commit"):
        proc = subprocess.run([str(CLI), "monitor"], cwd=folder, capture_output=True, text=True, timeout=300,
                              env=cli_env({"MLOPS_NB_CRASH_AT": f"monitor:{point}"}))
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert _tables(db) == before, point
    r = run_cli(folder, "monitor", "--json").json()  # reads exactly what the killed calls had read
    assert (r["read"]["predictions"], r["read"]["feedback"]) == (40, 30)
    assert {w["window_start"][:13] for w in r["windows"]} == {"2026-01-05T00", "2026-01-05T01"}
    assert not (folder / "data" / "monitoring" / store.INCOMING_DIR).exists()


# --------------------------------------------------------------------------------------------------
# realized metrics and whylogs profiles


def test_roc_auc_is_sklearns_with_ties():
    rng = np.random.default_rng(3)
    y = rng.random(5000) < 0.3
    p = np.round(rng.random(5000) * 0.6 + 0.4 * y, 2)  # many tied scores
    assert monitor.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_windows_with_profiles_but_no_logged_rows_get_sketch_drift(proj):
    """A window whose prediction log is gone (rotated before the monitor ran) but whose whylogs profile
    is there: drift from the sketch (basis 'sketch') against the version that served before it; an
    unreadable profile is skipped with a named warning."""
    from mlops_nb.data import profiles

    settings, lg = proj
    lg.window(0, n=30)
    rng = random.Random(9)
    frame = pd.DataFrame([{**inputs(rng, shift=3000.0 if i % 2 else 0.0), "p_late": rng.random(),
                           "arm": "champion"} for i in range(400)])
    frame["plane_year"] = frame["plane_year"].astype(float)
    frame["wind_gust"] = frame["wind_gust"].astype(float)
    good = logs.window_path(lg.dir, logs.PROFILES, BASE + 3 * HOUR, "w1", ".bin")
    profiles.write(profiles.profile(frame), good)
    bad = logs.window_path(lg.dir, logs.PROFILES, BASE + 4 * HOUR, "w1", ".bin")
    bad.write_bytes(good.read_bytes()[:200])
    r = monitor.monitor(settings)
    w = {(x["window_start"], x["arm"]): x for x in r.windows}
    sketch = w[hour_start(3), "profile"]
    assert (sketch["model_version"], sketch["rows"]) == ("v1", 400)
    by_column = {d["column"]: d for d in sketch["drift"]}
    assert by_column["distance"]["basis"] == "sketch" and by_column["distance"]["drifted"]
    assert by_column["carrier"]["drifted"] is False and by_column["p_late"]["statistic"] is not None
    assert [x["kind"] for x in r.warnings] == ["unreadable-profile"] and bad.name in r.warnings[0]["message"]
    assert (hour_start(4), "profile") not in w
    # the windows with logged rows keep exact drift from their rows
    assert {d["basis"] for d in w[hour_start(0), "champion"]["drift"]} == {"exact"}


# --------------------------------------------------------------------------------------------------
# end to end: the real service over HTTP


@pytest.mark.slow
def test_end_to_end_with_the_real_service(request, tmp_path):
    """`mlops-nb serve` of a built project answers requests over HTTP and takes feedback; `mlops-nb
    monitor` turns its logs into a window of the champion with drift against its real reference."""
    import served_project

    served = request.getfixturevalue("served")
    project = served.copy(tmp_path / "project")
    server = served_project.serve(project, tmp_path, "monitor")
    try:
        server.wait_ready()
        rows = served_project.as_records(served_project.sample_rows(project, 80))
        with served_project.client(server) as http:
            ids = []
            for i, row in enumerate(rows[:60]):
                r = http.post("/predict", json={"flights": [row], "key": f"flight-{i}"})
                assert r.status_code == 200, r.text
                ids.append(r.json()["request_id"])
            r = http.post("/predict", json={"flights": rows[60:80]})
            assert r.status_code == 200, r.text
            assert http.post("/predict", json={"flights": [{"year": 2013}]}).status_code in (400, 422)
            outcomes = [{"request_id": rid, "late": i % 3 == 0} for i, rid in enumerate(ids[:40])]
            outcomes += [{"key": f"flight-{i}", "late": i % 2 == 0} for i in range(40, 50)]
            outcomes += [{"request_id": "0123456789abcdef", "late": True}]  # no such request
            assert http.post("/feedback", json={"outcomes": outcomes}).status_code == 200
        serving = project / "data" / "serving"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the recorder writes every 2 s
            lines = [f.read_text().count("\n") for f in (serving / logs.PREDICTIONS).glob("*.jsonl")]
            reqs = [f.read_text().count("\n") for f in (serving / logs.REQUESTS).glob("*.jsonl")]
            if sum(lines) >= 80 and sum(reqs) >= 63:
                break
            time.sleep(0.5)
    finally:
        server.stop()  # the recorder's process writes the window's last profile at shutdown
    data = run_cli(project, "monitor", "--json", "--window", "1d").json()
    read = data["read"]
    assert (read["predictions"], read["feedback"], read["unknown_labels"]) == (80, 51, 1)
    assert read["requests"] >= 63 and read["warnings"] == 0
    champs = [w for w in data["windows"] if w["model_version"] == served.v1 and w["arm"] == "champion"]
    assert {w["model_version"] for w in data["windows"]} == {served.v1, store.ALL}
    assert [sum(w[k] for w in champs) for k in ("requests", "rows", "labelled")] == [61, 80, 50]
    champ = max(champs, key=lambda w: w["rows"])  # one window, unless the test ran across midnight
    assert champ["latency_p99_ms"] > 0 and champ["estimated_roc_auc"] is not None
    drift = {d["column"]: d for d in champ["drift"]}
    assert set(drift) == set(RECORD) | {"p_late"}
    assert drift["distance"]["basis"] == "exact" and drift["distance"]["n_reference"] > 1000
    assert drift["p_late"]["statistic"] is not None
    service = [w for w in data["windows"] if w["model_version"] == store.ALL]
    assert sum(w["errors"] for w in service) >= 1 and sum(w["requests"] for w in service) >= 63
    again = run_cli(project, "monitor", "--json", "--window", "1d").json()
    assert (again["read"]["bytes"], again["windows"]) == (0, [])


def test_alerts_are_raised_once_per_window_and_rule(tmp_path, monkeypatch):
    folder = make_project(tmp_path / "alerting", monitor__min_rows="20", monitor__min_labelled="10",
                          monitor__max_latency_p99_ms="2", monitor__max_error_rate="0.01",
                          monitor__prediction_drift="false")
    monkeypatch.setattr(estimate, "reference", fake_reference)
    settings = config.load(folder / "settings.ini")
    lg = Logs(config.serving_dir(settings, in_bento=False))
    lg.window(0, n=40)
    r1 = monitor.monitor(settings)
    rules = sorted((a["model_version"], a["rule"]) for a in r1.alerts)
    assert rules == [("*", "error_rate"), ("*", "latency_p99"), ("v1", "latency_p99")]
    assert len(r1.alert_log) == 3 and all(line.startswith("ALERT ") for line in r1.alert_log)
    assert (folder / "data" / "monitoring" / "alerts.jsonl").read_text().count("\n") == 3
    lg.feedback(lg.labels_for(0, 30))  # the window is recomputed: its alerts are not raised again
    r2 = monitor.monitor(settings)
    assert r2.windows and r2.alerts == []
    assert stored(settings, "SELECT count(*) FROM alerts")[0][0] == 3


def test_cli_check_exit_code_webhook_down_and_report(tmp_path):
    """`monitor --check` exits 3 while an alert is open and 0 once it is acknowledged; a webhook that is
    down is retried, the alert kept as failed, and the exit code (7) says so; the report is written."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder, lg = cli_project(tmp_path, monitor__max_latency_p99_ms="2", monitor__prediction_drift="false",
                             monitor__webhook_url=f"http://127.0.0.1:{port}/alerts", monitor__webhook_timeout="1",
                             monitor__webhook_retries="1")
    lg.window(0, n=40)
    first = run_cli(folder, "monitor", "--check")
    assert first.returncode == 3, str(first)  # open alerts win over the failed delivery
    assert "not delivered" in first.stderr and "2 attempt(s)" in first.stderr and "Traceback" not in first.stderr
    page = folder / "reports" / "monitoring.html"
    assert page.exists() and "latency_p99" in page.read_text(encoding="utf-8")
    listed = run_cli(folder, "alerts", "--json").json()
    assert listed and {a["webhook"] for a in listed} == {"failed"}
    again = run_cli(folder, "monitor")
    assert again.returncode == 7, str(again)  # nothing new, but the kept alerts are retried and fail again
    for a in listed:
        run_cli(folder, "alerts", "ack", a["alert_id"])
    closed = run_cli(folder, "monitor", "--check", "--json")
    assert closed.returncode == 7, str(closed)  # no open alert; the delivery still failed
    assert json.loads(closed.stdout)["window"] == "1h"
