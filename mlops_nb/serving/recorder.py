"""Request profiling and the prediction log, off the hot path and out of the server's process.

A request only appends its rows to a queue (microseconds); the request-log middleware (``access.py``)
appends a tuple a request to another. A thread drains the queues every 2 s: it scores the rows with the
shadow model when there is one and hands everything, pickled, to the recorder's process (``writer.py``),
which writes the prediction log (request id, key, time, model version, arm, inputs, output, latency) and
the request log (``data.logs`` PREDICTION_FIELDS, REQUEST_FIELDS) as JSON lines, and profiles the rows
with whylogs. Formatting and writing never hold the server's GIL. Each half has its switch:
``serving.log_predictions`` (the two logs, which the monitor reads) and ``serving.profile_requests`` (the
profiles); with both off there is no process and no thread.

    <serving_dir>/profiles/<window start>-<worker>.bin
    <serving_dir>/predictions/<window start>-<worker>[.<part>].jsonl
    <serving_dir>/requests/<window start>-<worker>[.<part>].jsonl

Bounded, so that a slow disk or a burst cannot take the server's memory (``limits``, from [serving]):

- queue: at most ``recorder_queue_max`` rows wait to be handed over (a 10,000-row request is 10,000), and
  as many request-log lines. A request that does not fit is answered as usual; its rows are neither logged
  nor profiled (its request-log line says ``rows: null``), but counted (``dropped_rows``,
  ``dropped_requests``, and the request log's own), published to /metrics (``metrics.dropped``) and told
  in one printed line at most every DROP_WARN_SECONDS. A row leaves the bound once handed over: the pipe
  to the process is small, so a process that falls behind stops the hand-over and the queue fills.
- size: a window's prediction or request file past ``log_max_mb`` (MiB) is closed and the window goes on
  in ``<window start>-<worker>.1.jsonl``, ``.2``... (``writer.py``).
- age: every RETENTION_CHECK_SECONDS (and at start) the thread deletes prediction, request and profile
  files of any worker not modified for ``log_max_age_days`` (0: keep forever): run the monitor more often
  than that, or it never reads them. Feedback files are never deleted: labels cannot be had again.

A process that dies is started again at the next hand-over (at most once every RESTART_SECONDS): the rows
it had not written are lost; those of a hand-over that failed are counted in /metrics as dropped and told.
"""
from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .. import config
from ..data.logs import PREDICTIONS, PROFILES, REQUESTS, expire, worker_name
from . import metrics
from .writer import frame, send

DRAIN_SECONDS = 2.0       # how often queued rows are handed to the recorder's process
DROP_WARN_SECONDS = 60.0  # at most one printed line about dropped rows this often
RESTART_SECONDS = 60.0    # at most one start of a dead recorder process this often
RETENTION_CHECK_SECONDS = 3600.0
QUEUE_MAX_ROWS, LOG_MAX_MB, LOG_MAX_AGE_DAYS = 100_000, 256, 30  # the defaults of the [serving] keys
SMALL = 64                # a prediction array this short is sent as a list (pickling a list is ~3x faster)
CHUNK_ROWS = 1000         # rows pickled in one call (about 2 ms)


def limits(settings: config.Settings) -> dict:
    """The Recorder's bounds from [serving]: recorder_queue_max, log_max_mb, log_max_age_days."""
    serving = settings.serving
    return {"queue_max_rows": serving.recorder_queue_max, "log_max_mb": serving.log_max_mb,
            "log_max_age_days": serving.log_max_age_days}


class Recorder:
    def __init__(self, serving_dir: Path, window_minutes: int, shadow=None, *, log: bool = True,
                 profile: bool = True, queue_max_rows: int = QUEUE_MAX_ROWS, log_max_mb: float = LOG_MAX_MB,
                 log_max_age_days: float = LOG_MAX_AGE_DAYS):
        """``log``: write the prediction and request logs (serving.log_predictions); ``profile``: profile the
        rows with whylogs (serving.profile_requests)."""
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
        self.worker = worker_name()
        self.queue_max_rows = int(queue_max_rows)
        self.log_max_bytes = int(log_max_mb * 2**20)
        self.log_max_age_seconds = log_max_age_days * 86400.0
        self._bound = threading.Lock()  # the counts below change on the hot path and in the thread
        self._queued_rows = self._queued_lines = 0
        self.dropped_rows = self.dropped_requests = self.dropped_request_lines = 0
        self._published = self._told = (0, 0, 0)  # the drop counts already published; already printed
        self._told_at = -DROP_WARN_SECONDS
        self._expire_at = 0.0           # monotonic time of the next retention check
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()  # (at, request_id, route, status, latency_ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlops-nb-recorder", daemon=True)
        self._process: subprocess.Popen | None = None
        self._started_at = -RESTART_SECONDS

    def start(self) -> "Recorder":
        if not (self.log or self.profile):
            return self
        for folder in ([PROFILES] if self.profile else []) + ([PREDICTIONS, REQUESTS] if self.log else []):
            (self.dir / folder).mkdir(parents=True, exist_ok=True)
        self._process = self._spawn()
        self._thread.start()
        return self

    def _spawn(self) -> subprocess.Popen:
        package_root = str(Path(__file__).resolve().parents[2])  # importable from a Bento's source too
        env = config.child_environment(python_path=package_root)
        flags = (["--log"] if self.log else []) + (["--profile"] if self.profile else [])
        self._started_at = time.monotonic()
        return subprocess.Popen([sys.executable, "-m", "mlops_nb.serving.writer", str(self.dir), self.worker,
                                 repr(float(self.window_seconds)), str(self.log_max_bytes), *flags],
                                stdin=subprocess.PIPE, env=env)

    def record(self, request_id: str, version: str, arm: str, rows: "pd.DataFrame | list[dict]",
               p: np.ndarray, key: str | None = None, latency_ms: float | None = None,
               at: float | None = None, features: tuple | None = None) -> None:
        """The hot path: hand the rows over, nothing else. ``rows`` is the request's frame, or its records
        as dicts: one frame from the records of a thousand requests costs 1% of concatenating their frames.
        ``at``: the time to log (serving.clock = flight), else now. ``features``: (names, the bytes of the
        codes, rows x names int8) of the fields the online store provides (``lookup.Used``), or None: bytes
        pickle in a microsecond, an array in ten. A full queue drops the rows, counted: it never blocks."""
        n = len(rows)
        with self._bound:
            if self._queued_rows + n > self.queue_max_rows:
                self.dropped_rows += n
                self.dropped_requests += 1
                return
            self._queued_rows += n
        self._queue.put((time.time() if at is None else at, request_id, version, arm, rows, p, key, latency_ms,
                         features))

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
        """Hand over what is queued, then let the process write its last lines and profile and exit."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._process is not None and self._process.poll() is None:
            try:
                self._process.stdin.close()
            except OSError:
                pass
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._expire()
            self._stop.wait(DRAIN_SECONDS)
            self._drain()
        self._drain()

    def _drain(self) -> None:
        requests = _take(self._requests)
        batch = _take(self._queue)
        rows = sum(len(b[4]) for b in batch)
        try:
            if batch or (requests and self.log):
                self._hand_over(batch, requests if self.log else [])
        except Exception as e:  # never let logging take the service down; count and report
            try:
                metrics.dropped(PREDICTIONS, rows, len(batch))
                metrics.dropped(REQUESTS, len(requests), len(requests))
            except Exception:  # metrics must not stop the logging
                pass
            print(f"mlops-nb recorder: could not hand {len(batch)} request(s) and {len(requests)} request-log "
                  f"line(s) to the recorder's process: {e!r}; they are not logged", flush=True)
        finally:
            with self._bound:
                self._queued_rows -= rows
                self._queued_lines -= len(requests)
        self._tell_drops()

    def _hand_over(self, batch: list, requests: list) -> None:
        shadow = None
        if batch and self.shadow is not None and self.log:
            version, predict = self.shadow
            sizes = np.cumsum([len(b[4]) for b in batch])[:-1]
            shadow = (version, np.split(np.asarray(predict(frame([b[4] for b in batch]))), sizes))
        batch = [b if len(b[5]) > SMALL else (*b[:5], b[5].tolist(), *b[6:]) for b in batch]
        if self._process.poll() is not None:
            if time.monotonic() - self._started_at < RESTART_SECONDS:
                raise RuntimeError(f"the recorder's process exited ({self._process.returncode}) less than "
                                   f"{RESTART_SECONDS:g} s after it started")
            print(f"mlops-nb recorder: the recorder's process exited ({self._process.returncode}); starting "
                  "it again", flush=True)
            self._process = self._spawn()
        # in pieces of about CHUNK_ROWS rows: pickling is one call that holds the GIL, so a drain's thousands
        # of rows at once would stall the event loop for tens of ms; the request lines go last
        start = rows = 0
        for i, b in enumerate(batch):
            rows += len(b[4])
            if rows >= CHUNK_ROWS and i + 1 < len(batch):
                piece = None if shadow is None else (shadow[0], shadow[1][start:i + 1])
                send(self._process.stdin, (batch[start:i + 1], [], piece))
                start, rows = i + 1, 0
        piece = None if shadow is None else (shadow[0], shadow[1][start:])
        send(self._process.stdin, (batch[start:], requests, piece))

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
            print(f"mlops-nb recorder: could not delete logs older than {self.log_max_age_seconds / 86400:g} "
                  f"day(s) under {self.dir}: {e!r}; retried in an hour", flush=True)


def _take(q: queue.SimpleQueue) -> list:
    items = []
    while True:
        try:
            items.append(q.get_nowait())
        except queue.Empty:
            return items
