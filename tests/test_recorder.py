"""The recorder's bounds (issue #9): a full queue drops rows without blocking and counts them; a window's
log rolls to a new file past its size limit, and the real monitor reads every row of every part; old
logs are deleted, the feedback log never; a recorder process that dies is started again. A real Recorder
(its thread and its process) on a project's serving folder."""
from __future__ import annotations

import json
import os
import random
import time
from datetime import datetime, timezone

import numpy as np
import pytest
from prometheus_client import REGISTRY

from conftest import make_project
from mlops_nb import config
from mlops_nb.data import logs
from mlops_nb.monitoring import monitor
from mlops_nb.serving import recorder as recorder_module
from mlops_nb.serving.recorder import Recorder, limits

BASE = datetime(2026, 1, 5, tzinfo=timezone.utc).timestamp()
DAY = 86400
LIMIT = 2048  # bytes: a rotation test's log_max_mb


def record(rng: random.Random) -> dict:
    return {"year": 2013, "month": 1, "day": 5, "sched_dep_time": 900, "sched_arr_time": 1130,
            "carrier": rng.choice(["UA", "AA", "B6"]), "origin": rng.choice(["JFK", "LGA"]), "dest": "LAX",
            "distance": rng.uniform(200, 2500), "plane_year": None, "plane_seats": 150,
            "temp": rng.uniform(20, 60), "dewp": 20.0, "humid": 60.0, "wind_dir": 200.0, "wind_speed": 10.0,
            "wind_gust": None, "precip": 0.0, "pressure": 1012.0, "visib": 10.0}


@pytest.fixture
def settings(tmp_path):
    return config.load(make_project(tmp_path / "p") / "settings.ini")


@pytest.fixture
def fast(monkeypatch):
    """The recorder thread drains every 0.1 s instead of 2 s."""
    monkeypatch.setattr(recorder_module, "DRAIN_SECONDS", 0.1)


def wait_for(condition, timeout: float = 20.0, what: str = "the recorder"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not done after {timeout} s")


def lines(folder) -> list[dict]:
    return [json.loads(x) for p in sorted(folder.glob("*.jsonl")) for x in p.read_text().splitlines()]


def dropped_metric(log: str, what: str = "rows") -> float:
    return REGISTRY.get_sample_value(f"mlops_nb_recorder_dropped_{what}_total", {"log": log}) or 0.0


def test_limits_come_from_the_settings(tmp_path):
    from conftest import write_settings
    from mlops_nb.errors import SettingsError

    write_settings(tmp_path / "settings.ini", {"serving.recorder_queue_max": "7", "serving.log_max_mb": "0.5",
                                               "serving.log_max_age_days": "0"})
    loaded = config.load(tmp_path / "settings.ini", environ={"MLOPS_NB_SERVING__RECORDER_QUEUE_MAX": "9"})
    assert limits(loaded) == {"queue_max_rows": 9, "log_max_mb": 0.5, "log_max_age_days": 0.0}
    with pytest.raises(SettingsError, match="log_max_age_days"):
        config.load(tmp_path / "settings.ini", environ={"MLOPS_NB_SERVING__LOG_MAX_AGE_DAYS": "-1"})
    with pytest.raises(ValueError, match="queue_max_rows must be an integer >= 1, got 0"):
        Recorder(tmp_path, 60, queue_max_rows=0)


def test_full_queue_drops_without_blocking(settings, fast, capfd):
    serving = config.serving_dir(settings, in_bento=False)
    rec = Recorder(serving, 60, queue_max_rows=10, log_max_age_days=0)  # not started: nothing drains
    rng = random.Random(0)
    before = dropped_metric("predictions"), dropped_metric("predictions", "requests"), dropped_metric("requests")
    sizes = [3, 3, 3, 3, 1, 5, 1]  # 9 rows queue; then 3 do not fit, 1 does (10), the rest do not
    took = []
    for i, n in enumerate(sizes):
        started = time.perf_counter()
        rec.record(f"{i:016x}", "v1", "champion", [record(rng) for _ in range(n)], np.full(n, 0.25), at=BASE)
        took.append(time.perf_counter() - started)
    for i in range(12):
        rec.request(BASE, f"{i:016x}", "/predict", 200, 1.0)
    assert max(took) < 0.05, took
    assert (rec.dropped_rows, rec.dropped_requests, rec.dropped_request_lines) == (3 + 5 + 1, 3, 2)

    rec.start()  # the queued rows and lines are written; the drops published and told
    rec.close()
    written = lines(serving / logs.PREDICTIONS)
    assert sorted({x["request_id"] for x in written}) == [f"{i:016x}" for i in (0, 1, 2, 4)]
    assert len(written) == 10 and len(lines(serving / logs.REQUESTS)) == 10
    assert dropped_metric("predictions") - before[0] == 9
    assert dropped_metric("predictions", "requests") - before[1] == 3
    assert dropped_metric("requests") - before[2] == 2
    out = capfd.readouterr().out
    assert out.count("queue full (10 rows max)") == 1, out
    assert "9 row(s) of 3 request(s), 2 request-log line(s)" in out and "recorder_queue_max" in out

    # written rows leave the bound: the queue takes rows again
    rec2 = Recorder(serving, 60, queue_max_rows=10, log_max_age_days=0).start()
    try:
        for i in range(5):
            rec2.record(f"{100 + i:016x}", "v1", "champion", [record(rng) for _ in range(4)], np.full(4, 0.5),
                        at=BASE)
            wait_for(lambda: rec2._queued_rows == 0)
        assert rec2.dropped_rows == 0
    finally:
        rec2.close()


def test_rotation_keeps_every_row_for_the_monitor(settings, fast, monkeypatch):
    monkeypatch.setattr(recorder_module, "CHUNK_ROWS", 4)  # a drain reaches the process in pieces
    serving = config.serving_dir(settings, in_bento=False)
    rec = Recorder(serving, 60, log_max_mb=LIMIT / 2**20, log_max_age_days=0).start()
    rng = random.Random(1)
    written = 0
    try:
        for batch in range(6):  # a drain each: a file is checked before each append
            for i in range(5):
                rid, at = f"{batch:08x}{i:08x}", BASE + 60 * batch + i
                n = 1 + i % 3
                rec.record(rid, "v1", "champion", [record(rng) for _ in range(n)], np.linspace(0, 1, n), at=at,
                           latency_ms=1.5)
                rec.request(at, rid, "/predict", 200, 2.0)
                written += n
            wait_for(lambda: len(lines(serving / logs.PREDICTIONS)) == written
                     and len(lines(serving / logs.REQUESTS)) == 5 * (batch + 1))
    finally:
        rec.close()
    parts = sorted(p.name for p in (serving / logs.PREDICTIONS).glob("*.jsonl"))
    stamp = datetime.fromtimestamp(BASE, timezone.utc).strftime(logs.WINDOW_STAMP)
    assert len(parts) >= 3 and parts[0] == f"{stamp}-{rec.worker}.1.jsonl", parts
    assert f"{stamp}-{rec.worker}.jsonl" in parts and f"{stamp}-{rec.worker}.2.jsonl" in parts
    for name in parts:  # a window's file name still opens with its window's start
        assert datetime.strptime(name[:13], logs.WINDOW_STAMP).replace(tzinfo=timezone.utc).timestamp() == BASE
    for kind in (logs.PREDICTIONS, logs.REQUESTS):  # a part is closed once past the limit, not before
        sizes = [logs.window_path(serving, kind, BASE, rec.worker, ".jsonl", part).stat().st_size
                 for part in range(len(list((serving / kind).glob("*.jsonl"))))]
        assert len(sizes) >= 2 and all(size >= LIMIT for size in sizes[:-1]), (kind, sizes)

    counts = {}
    for x in lines(serving / logs.PREDICTIONS):
        counts[x["request_id"]] = counts.get(x["request_id"], 0) + 1
    assert {x["request_id"]: x["rows"] for x in lines(serving / logs.REQUESTS)} == counts  # across pieces

    report = monitor.monitor(settings)
    assert report.read["predictions"] == written == len(lines(serving / logs.PREDICTIONS))
    assert report.read["requests"] == 30 and report.read["files_read"] == len(parts) + len(
        list((serving / logs.REQUESTS).glob("*.jsonl")))
    window = [w for w in report.windows if w["model_version"] == "v1"]
    assert [(w["rows"], w["requests"]) for w in window] == [(written, 30)]


def test_old_logs_are_deleted_feedback_never(settings, fast):
    serving = config.serving_dir(settings, in_bento=False)
    old, fresh = time.time() - 40 * DAY, time.time() - 20 * DAY
    files = {}
    for kind, suffix in [(logs.PREDICTIONS, ".jsonl"), (logs.REQUESTS, ".jsonl"), (logs.PROFILES, ".bin")]:
        for age, when in [("old", old), ("fresh", fresh)]:
            path = logs.window_path(serving, kind, BASE, f"w-{age}", suffix, part=1 if kind != logs.PROFILES else 0)
            logs.append(path, ["{}\n"])
            os.utime(path, (when, when))
            files[kind, age] = path
    label = logs.day_path(serving, logs.FEEDBACK, BASE, "http")
    logs.append(label, [logs.feedback_line("0" * 16, None, True, 20.0, logs.now_iso(BASE), "http")])
    os.utime(label, (old, old))

    keep_all = Recorder(serving, 60, log_max_age_days=0)  # 0: keep forever
    keep_all._expire()
    assert all(p.exists() for p in files.values())

    rec = Recorder(serving, 60, log_max_age_days=30).start()  # checks at start, then hourly
    try:
        wait_for(lambda: not files[logs.PROFILES, "old"].exists())
    finally:
        rec.close()
    assert {k: p.exists() for k, p in files.items()} == {k: k[1] == "fresh" for k in files}
    assert label.exists()
    assert rec._expire_at > time.monotonic() + recorder_module.RETENTION_CHECK_SECONDS - 60


@pytest.mark.parametrize("log, profile", [(True, False), (False, True)])
def test_logs_and_profiles_switch_apart(settings, fast, log, profile):
    """serving.log_predictions and serving.profile_requests: the logs without profiles, or the profiles
    without the logs."""
    serving = config.serving_dir(settings, in_bento=False)
    rec = Recorder(serving, 60, log=log, profile=profile, log_max_age_days=0).start()
    rng = random.Random(2)
    try:
        for i in range(4):
            rec.record(f"{i:016x}", "v1", "champion", [record(rng)], np.array([0.25]), at=BASE + i)
            rec.request(BASE + i, f"{i:016x}", "/predict", 200, 1.0)
        wait_for(lambda: rec._queued_rows == 0 and rec._queued_lines == 0)
    finally:
        rec.close()
    assert len(lines(serving / logs.PREDICTIONS)) == (4 if log else 0)
    assert len(lines(serving / logs.REQUESTS)) == (4 if log else 0)
    assert len(list((serving / "profiles").glob("*.bin"))) == (1 if profile else 0)


def test_a_dead_recorder_process_is_started_again(settings, fast, monkeypatch, capfd):
    """SIGKILL of the recorder's process: the rows handed over after it are logged by a new one."""
    import signal

    monkeypatch.setattr(recorder_module, "RESTART_SECONDS", 0.0)
    serving = config.serving_dir(settings, in_bento=False)
    rec = Recorder(serving, 60, profile=False, log_max_age_days=0).start()
    rng = random.Random(3)
    try:
        rec.record(f"{0:016x}", "v1", "champion", [record(rng)], np.array([0.25]), at=BASE)
        wait_for(lambda: len(lines(serving / logs.PREDICTIONS)) == 1)
        first = rec._process
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        for i in range(1, 4):
            rec.record(f"{i:016x}", "v1", "champion", [record(rng)], np.array([0.5]), at=BASE + i)
        wait_for(lambda: len(lines(serving / logs.PREDICTIONS)) == 4)
        assert rec._process.pid != first.pid
    finally:
        rec.close()
    assert [x["request_id"] for x in lines(serving / logs.PREDICTIONS)] == [f"{i:016x}" for i in range(4)]
    assert "the recorder's process exited (-9); starting it again" in capfd.readouterr().out


def test_the_writer_profiles_on_its_clock_when_no_input_comes(tmp_path):
    """The recorder's process, as the server starts it: the rows of the last requests before a quiet spell
    reach the window's profile on disk while the pipe stays open (no next request, no shutdown)."""
    import subprocess
    import sys

    from mlops_nb.data import profiles
    from mlops_nb.serving import writer

    # a profile every 2 s, written 0.5 s after: the second batch comes right after the first is profiled
    clock = ("import sys, mlops_nb.serving.writer as w; w.PROFILE_SECONDS, w.WRITE_SECONDS = 2.0, 0.5; "
             "sys.exit(w.main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", clock, str(tmp_path), "w0", "60.0", "1000000", "--profile"],
                            stdin=subprocess.PIPE, env=config.child_environment())
    rng = random.Random(4)

    def rows_in_profile() -> int:
        found = list((tmp_path / logs.PROFILES).glob("*.bin"))
        return profiles.summaries(found[0])["p_late"]["n"] if found else 0

    total = 0
    try:
        for count in (3, 2):
            batch = [(BASE + i, f"{i:016x}", "v1", "champion", [record(rng)], [0.25], None, 1.0)
                     for i in range(total, total + count)]
            writer.send(proc.stdin, (batch, [], None))
            total += count
            wait_for(lambda: rows_in_profile() == total, timeout=30, what="the writer's profile")
            assert proc.poll() is None
    finally:
        proc.stdin.close()
        assert proc.wait(30) == 0
    assert len(list((tmp_path / logs.PROFILES).glob("*.bin"))) == 1
