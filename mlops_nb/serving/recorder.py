"""Request profiling and the prediction log, off the hot path.

A request only appends its rows to a queue (microseconds); the request-log middleware (``access.py``)
appends a tuple a request to another. A thread drains the queues every 2 s: it scores the rows with the
shadow model when there is one, appends the prediction log (request id, key, time, model version, arm,
inputs, output, latency) and the request log (``data.logs`` PREDICTION_FIELDS, REQUEST_FIELDS) as JSON
lines, and hands the rows to a profiler process. whylogs runs there, not in the serving process, so its
work never holds the server's GIL: one rolling profile a worker and time window, rewritten as it grows and
final when the window ends or the worker shuts down.

    <serving_dir>/profiles/<window start>-<worker>.bin
    <serving_dir>/predictions/<window start>-<worker>.jsonl
    <serving_dir>/requests/<window start>-<worker>.jsonl
"""
from __future__ import annotations

import json
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
from ..data.logs import PREDICTIONS, REQUESTS, append, window_path
from .profiler import send

DRAIN_SECONDS = 2.0       # how often queued rows are written to the prediction log
PROFILE_SECONDS = 10.0    # how often they go to the profiler (whylogs has a cost a call, whatever the rows)


class Recorder:
    def __init__(self, serving_dir: Path, window_minutes: int, shadow=None):
        self.dir = Path(serving_dir)
        self.window_seconds = window_minutes * 60
        self.shadow = shadow            # (version, predict) of the silent challenger, or None
        self.worker = f"{os.getpid()}"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # (at, request_id, route, status, latency_ms)
        self._rows_of: dict[str, int] = {}       # request id -> rows predicted, of this drain and the last
        self._rows_before: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-nb-recorder", daemon=True)
        self._process: subprocess.Popen | None = None
        self._pending: dict[float, list[pd.DataFrame]] = {}  # window start -> rows not yet profiled
        self._sent_at = time.monotonic()
        self.rows_logged = 0
        self.errors = 0

    def start(self) -> "Recorder":
        (self.dir / "profiles").mkdir(parents=True, exist_ok=True)
        (self.dir / PREDICTIONS).mkdir(parents=True, exist_ok=True)
        (self.dir / REQUESTS).mkdir(parents=True, exist_ok=True)
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
        ``at``: the time to log (serving.clock = flight), else now."""
        self._queue.put((time.time() if at is None else at, request_id, version, arm, rows, p, key, latency_ms))

    def request(self, at: float, request_id: str | None, route: str, status: int, latency_ms: float) -> None:
        """The request log's hot path (the middleware's, after the answer is out): a tuple on a queue."""
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
            self._stop.wait(DRAIN_SECONDS)
            self._drain()
            if time.monotonic() - self._sent_at >= PROFILE_SECONDS:
                self._to_profiler()
        self._drain()
        self._to_profiler()

    def _to_profiler(self) -> None:
        pending, self._pending, self._sent_at = self._pending, {}, time.monotonic()
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
        if requests:
            try:
                self._log_requests(requests)
            except Exception as e:
                self.errors += 1
                print(f"mlops-nb recorder: could not write {len(requests)} line(s) of the request log: {e!r}",
                      flush=True)

    def _log_requests(self, requests) -> None:
        by_window: dict[float, list[str]] = {}
        for at, request_id, route, status, latency_ms in requests:
            if request_id is not None:
                rows = self._rows_of.get(request_id, self._rows_before.get(request_id))
            else:
                rows = 0
            stamp = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")
            by_window.setdefault(self._window_of(at), []).append(json.dumps(
                {"request_id": request_id, "at": stamp, "route": route, "status": status,
                 "latency_ms": round(latency_ms, 3), "rows": rows}) + "\n")
        for start, lines in sorted(by_window.items()):
            append(window_path(self.dir, REQUESTS, start, self.worker, ".jsonl"), lines)

    def _log(self, batch) -> None:
        for start in sorted({self._window_of(b[0]) for b in batch}):
            part = [b for b in batch if self._window_of(b[0]) == start]
            inputs = _frame([b[4] for b in part])
            sizes = [len(b[4]) for b in part]
            p_late = np.concatenate([b[5] for b in part])
            arms = np.repeat([b[3] for b in part], sizes)
            shadow = None
            if self.shadow is not None:
                shadow_version, predict = self.shadow
                shadow = predict(inputs)
            # one vectorised JSON encoding of all inputs (NaN -> null), then a line a row
            encoded = inputs.to_json(orient="records", lines=True, double_precision=15).splitlines()
            lines, i = [], 0
            for (at, request_id, version, arm, _, p, key, latency_ms), n in zip(part, sizes):
                self._rows_of[request_id] = n
                stamp = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")
                # PREDICTION_FIELDS order: request_id, key, at, model_version, arm, row, inputs, p_late,
                # latency_ms, shadow
                head = json.dumps({"request_id": request_id, "key": key, "at": stamp, "model_version": version,
                                   "arm": arm})[:-1]
                latency = json.dumps(None if latency_ms is None else round(latency_ms, 3))
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
            path = window_path(self.dir, PREDICTIONS, start, self.worker, ".jsonl")
            with open(path, "a", encoding="utf-8") as f:
                f.writelines(lines)
            self.rows_logged += len(inputs)
            self._pending.setdefault(start, []).append(inputs.assign(p_late=p_late, arm=arms))

    def _window_of(self, at: float) -> float:
        return at - (at % self.window_seconds)


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
