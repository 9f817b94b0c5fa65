"""Request profiling and the prediction log, off the hot path.

A request only appends its rows to a queue (microseconds); the request-log middleware (``access.py``)
appends a tuple a request to another. A thread drains the queues every 2 s: it scores the rows with the
shadow model when there is one, appends the prediction log (request id, key, time, model version, arm,
inputs, output, latency) and the request log (``data.logs`` PREDICTION_FIELDS, REQUEST_FIELDS) as JSON
lines, and hands the rows to a profiler process. whylogs runs there, not in the serving process, so its
work never holds the server's GIL: one rolling profile a worker and time window, rewritten as it grows and
final when the window ends or the worker shuts down. Each half has its switch: ``serving.log_predictions``
(the two logs, which the monitor reads) and ``serving.profile_requests`` (the profiles).

    <serving_dir>/profiles/<window start>-<worker>.bin
    <serving_dir>/predictions/<window start>-<worker>[.<part>].jsonl
    <serving_dir>/requests/<window start>-<worker>[.<part>].jsonl

Bounded, so that a slow disk or a burst cannot take the server's memory (``limits``, from [serving]):

- queue: at most ``recorder_queue_max`` rows wait to be logged (a 10,000-row request is 10,000), and as
  many request-log lines. A request that does not fit is answered as usual; its rows are neither logged
  nor profiled (its request-log line says ``rows: null``), but counted (``dropped_rows``,
  ``dropped_requests``, and the request log's own), published to /metrics (``metrics.dropped``) and told
  in one printed line at most every DROP_WARN_SECONDS. A row leaves the bound once written, not once
  taken: rows being written count too.
- size: a window's prediction or request file past ``log_max_mb`` (MiB) is closed and the window goes on
  in ``<window start>-<worker>.1.jsonl``, ``.2``...: a drain's lines are never split, so a file ends a
  little past the limit; no file is ever rewritten (the monitor reads each by its offset).
- age: every RETENTION_CHECK_SECONDS (and at start) the thread deletes prediction, request and profile
  files of any worker not modified for ``log_max_age_days`` (0: keep forever): run the monitor more often
  than that, or it never reads them. Feedback files are never deleted: labels cannot be had again.
"""
from __future__ import annotations

import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .. import config
from ..lib.record import RECORD
from ..data.logs import PREDICTIONS, REQUESTS, append, expire, window_path
from . import metrics
from .profiler import send

DRAIN_SECONDS = 2.0       # how often queued rows are written to the prediction log
PROFILE_SECONDS = 10.0    # how often they go to the profiler (whylogs has a cost a call, whatever the rows)
DROP_WARN_SECONDS = 60.0  # at most one printed line about dropped rows this often
RETENTION_CHECK_SECONDS = 3600.0
QUEUE_MAX_ROWS, LOG_MAX_MB, LOG_MAX_AGE_DAYS = 100_000, 256, 30  # the defaults of the [serving] keys
KEEP_PARTS = 64           # (kind, window) -> current part remembered; more are forgotten (found again by size)


def limits(settings: config.Settings) -> dict:
    """The Recorder's bounds from [serving]: recorder_queue_max, log_max_mb, log_max_age_days."""
    serving = settings.serving
    return {"queue_max_rows": serving.recorder_queue_max, "log_max_mb": serving.log_max_mb,
            "log_max_age_days": serving.log_max_age_days}


class Recorder:
    def __init__(self, serving_dir: Path, window_minutes: int, shadow=None, *, log: bool = True,
                 profile: bool = True, queue_max_rows: int = QUEUE_MAX_ROWS, log_max_mb: float = LOG_MAX_MB,
                 log_max_age_days: float = LOG_MAX_AGE_DAYS):
        """``log``: write the prediction and request logs (serving.log_predictions); ``profile``: hand the rows
        to the whylogs profiler process (serving.profile_requests)."""
        problems = [f"{name} must be {rule}, got {value!r}" for name, value, ok, rule in (
            ("queue_max_rows", queue_max_rows, queue_max_rows >= 1, "an integer >= 1"),
            ("log_max_mb", log_max_mb, log_max_mb > 0, "a number of MiB > 0"),
            ("log_max_age_days", log_max_age_days, log_max_age_days >= 0, "a number of days >= 0 (0: keep forever)"),
        ) if not ok]
        if problems:
            raise ValueError(f"Recorder: {'; '.join(problems)}. Fix the [serving] settings recorder_queue_max, "
                             "log_max_mb and log_max_age_days.")
        self.dir = Path(serving_dir)
        self.window_seconds = window_minutes * 60
        self.shadow = shadow            # (version, predict) of the silent challenger, or None
        self.log, self.profile = log, profile
        self.worker = f"{os.getpid()}"
        self.queue_max_rows = int(queue_max_rows)
        self.log_max_bytes = int(log_max_mb * 2**20)
        self.log_max_age_seconds = log_max_age_days * 86400.0
        self._bound = threading.Lock()  # the counts below change on the hot path and in the thread
        self._queued_rows = self._queued_lines = 0
        self.dropped_rows = self.dropped_requests = self.dropped_request_lines = 0
        self._published = self._told = (0, 0, 0)  # the drop counts already published; already printed
        self._told_at = -DROP_WARN_SECONDS
        self._expire_at = 0.0           # monotonic time of the next retention check
        self._parts: dict[tuple, int] = {}
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # (at, request_id, route, status, latency_ms)
        self._rows_of: dict[str, int] = {}       # request id -> rows predicted, of this drain and the last
        self._rows_before: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-nb-recorder", daemon=True)
        self._process: subprocess.Popen | None = None
        self._pending: dict[float, list[pd.DataFrame]] = {}  # window start -> rows not yet profiled
        self._sent_at = time.monotonic()
        self._stamp_second, self._stamp_prefix = None, ""
        self.rows_logged = 0
        self.errors = 0

    def start(self) -> "Recorder":
        for folder in (["profiles"] if self.profile else []) + ([PREDICTIONS, REQUESTS] if self.log else []):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        if self.profile:
            package_root = str(Path(__file__).resolve().parents[2])  # importable from a Bento's source too
            env = config.child_environment(python_path=package_root)
            self._process = subprocess.Popen([sys.executable, "-m", "mlops_nb.serving.profiler", str(self.dir),
                                              self.worker], stdin=subprocess.PIPE, env=env)
        self._thread.start()
        return self

    def record(self, request_id: str, version: str, arm: str, rows: "pd.DataFrame | list[dict]",
               p: np.ndarray, key: str | None = None, latency_ms: float | None = None,
               at: float | None = None) -> None:
        """The hot path: hand the rows over, nothing else. ``rows`` is the request's frame, or its records
        as dicts: one frame from the records of a thousand requests costs 1% of concatenating their frames.
        ``at``: the time to log (serving.clock = flight), else now. A full queue drops the rows, counted:
        it never blocks."""
        n = len(rows)
        with self._bound:
            if self._queued_rows + n > self.queue_max_rows:
                self.dropped_rows += n
                self.dropped_requests += 1
                return
            self._queued_rows += n
        self._queue.put((time.time() if at is None else at, request_id, version, arm, rows, p, key, latency_ms))

    def request(self, at: float, request_id: str | None, route: str, status: int, latency_ms: float) -> None:
        """The request log's hot path (the middleware's, after the answer is out): a tuple on a queue, or
        a count when as many lines as ``queue_max_rows`` wait already."""
        with self._bound:
            if self._queued_lines >= self.queue_max_rows:
                self.dropped_request_lines += 1
                return
            self._queued_lines += 1
        self._requests.put((at, request_id, route, status, latency_ms))

    def close(self, timeout: float = 30.0) -> None:
        """Log what is queued, then let the profiler write its last profile and exit."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._expire()
            self._stop.wait(DRAIN_SECONDS)
            self._drain()
            if time.monotonic() - self._sent_at >= PROFILE_SECONDS:
                self._to_profiler()
        self._drain()
        self._to_profiler()

    def _to_profiler(self) -> None:
        pending, self._pending, self._sent_at = self._pending, {}, time.monotonic()
        if not pending:
            return
        try:
            for start in sorted(pending):
                send(self._process.stdin, (start, pd.concat(pending[start], ignore_index=True)))
        except (OSError, ValueError) as e:  # the profiler is gone: keep serving and logging
            self.errors += 1
            print(f"mlops-nb recorder: the profiler stopped ({e!r}); request profiles are incomplete", flush=True)

    def _drain(self) -> None:
        # requests first: a request's line is queued after its rows, so its rows are in this drain or an
        # earlier one, and its row count is known
        requests = _take(self._requests)
        batch = _take(self._queue)
        self._rows_before, self._rows_of = self._rows_of, {}
        if batch:
            try:
                self._log(batch)
            except Exception as e:  # never let logging take the service down; count and report
                self.errors += 1
                print(f"mlops-nb recorder: could not log {len(batch)} request(s): {e!r}", flush=True)
            finally:
                rows = sum(len(b[4]) for b in batch)
                with self._bound:
                    self._queued_rows -= rows
        if requests:
            try:
                if self.log:
                    self._log_requests(requests)
            except Exception as e:
                self.errors += 1
                print(f"mlops-nb recorder: could not write {len(requests)} line(s) of the request log: {e!r}",
                      flush=True)
            finally:
                with self._bound:
                    self._queued_lines -= len(requests)
        self._tell_drops()

    def _tell_drops(self) -> None:
        """New drops to /metrics at once; a printed line at most every DROP_WARN_SECONDS."""
        with self._bound:
            now = (self.dropped_rows, self.dropped_requests, self.dropped_request_lines)
        rows, requests, lines = (a - b for a, b in zip(now, self._published))
        if not (rows or lines):
            return
        try:
            if rows:
                metrics.dropped(PREDICTIONS, rows, requests)
            if lines:
                metrics.dropped(REQUESTS, lines, lines)
        except Exception as e:  # metrics must not stop the logging
            self.errors += 1
            print(f"mlops-nb recorder: could not publish dropped-row metrics: {e!r}", flush=True)
        if time.monotonic() - self._told_at >= DROP_WARN_SECONDS:
            told = self._told
            print(f"mlops-nb recorder: queue full ({self.queue_max_rows} rows max): not logged since the last "
                  f"such line: {now[0] - told[0]} row(s) of {now[1] - told[1]} request(s), {now[2] - told[2]} "
                  f"request-log line(s) (in all {now[0]} rows, {now[2]} lines). The answers were sent. Raise "
                  "serving.recorder_queue_max, or give the service a faster disk or fewer rows.", flush=True)
            self._told, self._told_at = now, time.monotonic()
        self._published = now

    def _expire(self) -> None:
        """Delete old logs (see the module's docstring), at most every RETENTION_CHECK_SECONDS."""
        if not self.log_max_age_seconds or time.monotonic() < self._expire_at:
            return
        self._expire_at = time.monotonic() + RETENTION_CHECK_SECONDS
        try:
            expire(self.dir, self.log_max_age_seconds)
        except OSError as e:
            self.errors += 1
            print(f"mlops-nb recorder: could not delete logs older than {self.log_max_age_seconds / 86400:g} "
                  f"day(s) under {self.dir}: {e!r}; retried in an hour", flush=True)

    def _path(self, kind: str, start: float) -> Path:
        """The file of a window to append to: its current part, or the next once past ``log_max_bytes``."""
        part = self._parts.get((kind, start), 0)
        while True:
            path = window_path(self.dir, kind, start, self.worker, ".jsonl", part)
            try:
                if path.stat().st_size < self.log_max_bytes:
                    break
            except FileNotFoundError:
                break
            part += 1
        if len(self._parts) >= KEEP_PARTS:
            self._parts.clear()
        self._parts[(kind, start)] = part
        return path

    def _log_requests(self, requests) -> None:
        by_window: dict[float, list[str]] = {}
        for at, request_id, route, status, latency_ms in requests:
            if request_id is not None:
                rows = self._rows_of.get(request_id, self._rows_before.get(request_id))
            else:
                rows = 0
            # REQUEST_FIELDS order; the route is one of the service's, the request id hex: no escaping needed
            rid = "null" if request_id is None else f'"{request_id}"'
            by_window.setdefault(self._window_of(at), []).append(
                f'{{"request_id": {rid}, "at": "{self._stamp(at)}", "route": "{route}", "status": {status}, '
                f'"latency_ms": {round(latency_ms, 3)!r}, "rows": {"null" if rows is None else rows}}}\n')
        for start, lines in sorted(by_window.items()):
            append(self._path(REQUESTS, start), lines)

    def _log(self, batch) -> None:
        for start in sorted({self._window_of(b[0]) for b in batch}):
            part = [b for b in batch if self._window_of(b[0]) == start]
            inputs = _frame([b[4] for b in part])
            if self.log:
                self._write_predictions(start, part, inputs)
            if self.profile:
                sizes = [len(b[4]) for b in part]
                self._pending.setdefault(start, []).append(
                    inputs.assign(p_late=np.concatenate([b[5] for b in part]),
                                  arm=np.repeat([b[3] for b in part], sizes)))

    def _write_predictions(self, start: float, part: list, inputs: pd.DataFrame) -> None:
        shadow = None
        if self.shadow is not None:
            shadow_version, predict = self.shadow
            shadow = predict(inputs)
        # one vectorised JSON encoding of all inputs (NaN -> null), then a line a row
        encoded = inputs.to_json(orient="records", lines=True, double_precision=15).splitlines()
        lines, i = [], 0
        for at, request_id, version, arm, rows, p, key, latency_ms in part:
            n = len(rows)
            self._rows_of[request_id] = n
            # PREDICTION_FIELDS order: request_id, key, at, model_version, arm, row, inputs, p_late,
            # latency_ms, shadow. The request id (hex), version (a tag's hex) and arm need no escaping;
            # the client's key does (json.dumps would cost 3 us a line, a fifth of the drain)
            head = (f'{{"request_id": "{request_id}", "key": {"null" if key is None else json.dumps(key)}, '
                    f'"at": "{self._stamp(at)}", "model_version": "{version}", "arm": "{arm}"')
            latency = "null" if latency_ms is None else repr(round(latency_ms, 3))
            for row in range(n):
                tail = (f', "row": {row}, "inputs": {encoded[i]}, "p_late": {float(p[row])!r}, '
                        f'"latency_ms": {latency}, "shadow": ')
                if shadow is not None:
                    tail += (f'{{"arm": "challenger", "model_version": "{shadow_version}", '
                             f'"p_late": {float(shadow[i])!r}}}')
                else:
                    tail += "null"
                lines.append(head + tail + "}\n")
                i += 1
        with open(self._path(PREDICTIONS, start), "a", encoding="utf-8") as f:
            f.writelines(lines)
        self.rows_logged += len(inputs)

    def _window_of(self, at: float) -> float:
        return at - (at % self.window_seconds)

    def _stamp(self, at: float) -> str:
        """``datetime.fromtimestamp(at, utc).isoformat(timespec="milliseconds")``, its date and time formatted
        once a second (the same rounding: microseconds half to even, then cut to milliseconds)."""
        frac, second = math.modf(at)
        micro = round(frac * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp_prefix = datetime.fromtimestamp(second, timezone.utc).isoformat()[:19]
        return f"{self._stamp_prefix}.{micro // 1000:03d}+00:00"


def _take(q: queue.SimpleQueue) -> list:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items


def _frame(parts: list) -> pd.DataFrame:
    """The requests' rows in order, as one frame: consecutive lists of records become one frame each."""
    frames, records = [], []
    for part in parts:
        if isinstance(part, list):
            records.extend(part)
            continue
        if records:
            frames.append(pd.DataFrame.from_records(records, columns=list(RECORD)))
            records = []
        frames.append(part)
    if records:
        frames.append(pd.DataFrame.from_records(records, columns=list(RECORD)))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
