"""The recorder's process: it writes the prediction and request logs and profiles the requests with
whylogs, so that none of that work holds the server's GIL.

Measured in the server, a drain that formatted and wrote the logs cost ~15 us a row and held the GIL in
bursts of tens of ms: at 16 concurrent that took ~19% of the requests/s and put p99 at 50-90 ms. The
server now only pickles what it queued (~2 us a row) down a pipe; everything else happens here.

It reads length-prefixed pickled items from stdin: ``(batch, requests, shadow)`` with the server's
queued rows and request-log tuples (``recorder.Recorder``), and writes (formats in ``data.logs``):

    <serving_dir>/predictions/<window start>-<worker>[.<part>].jsonl   (--log)
    <serving_dir>/requests/<window start>-<worker>[.<part>].jsonl      (--log)
    <serving_dir>/profiles/<window start>-<worker>.bin                 (--profile)

A window's log past ``log_max_bytes`` goes on in the next part (a batch's lines are never split, no file
is ever rewritten: the monitor reads each by its offset). Rows are profiled every PROFILE_SECONDS (whylogs
costs a call whatever the rows), one rolling profile a window, rewritten every WRITE_SECONDS and final when
the window ends or the input does. The clock runs without input too (a thread reads the pipe): the rows of
the last requests before a quiet spell are profiled within PROFILE_SECONDS and on disk within
WRITE_SECONDS, not when the next request comes.

    python -m mlops_nb.serving.writer SERVING_DIR WORKER WINDOW_SECONDS LOG_MAX_BYTES [--log] [--profile]
"""
from __future__ import annotations

import json
import math
import os
import pickle
import queue
import struct
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from ..data.logs import FEATURE_SOURCES, PREDICTIONS, PROFILES, REQUESTS, append, window_path

PROFILE_SECONDS = 10.0    # how often queued rows are profiled
WRITE_SECONDS = 60.0      # how often the growing window profile (~0.5 MB) is rewritten
KEEP_PARTS = 64           # (kind, window) -> current part remembered; more are forgotten (found again by size)
KEEP_FEATURES = 4096      # distinct rows' "features" texts remembered (a row's codes -> its JSON)
TICK_SECONDS = 1.0        # how often the clock is looked at when no input comes
INBOX_ITEMS = 64          # items read ahead of the writing (each up to recorder.CHUNK_ROWS rows); then the pipe fills
HEADER = struct.Struct("!Q")


def send(stream, item) -> None:
    data = pickle.dumps(item, protocol=5)
    stream.write(HEADER.pack(len(data)) + data)
    stream.flush()


def items(stream):
    while True:
        header = stream.read(HEADER.size)
        if len(header) < HEADER.size:
            return
        (size,) = HEADER.unpack(header)
        data = stream.read(size)
        if len(data) < size:  # the server died mid-item
            return
        yield pickle.loads(data)


class Writer:
    def __init__(self, folder: Path, worker: str, window_seconds: float, log_max_bytes: int, log: bool,
                 profile: bool):
        self.dir, self.worker = Path(folder), worker
        self.window_seconds, self.log_max_bytes = window_seconds, log_max_bytes
        self.log, self.profile = log, profile
        self._parts: dict[tuple, int] = {}
        self._rows_of: dict[str, int] = {}       # request id -> rows, of this drain and the last
        self._rows_before: dict[str, int] = {}
        self._stamp_second, self._stamp_prefix = None, ""
        self._pending: dict[float, tuple] = {}    # window start -> (rows, p_late, arms) not yet profiled
        self._profiled_at = time.monotonic()
        self._profile, self._window, self._written_at = None, None, time.monotonic()
        self._unwritten = False                   # the rolling profile has rows the file lacks
        self._features: dict[tuple, str] = {}     # (names, a row's codes) -> the line's "features" JSON

    def take(self, batch: list, requests: list, shadow) -> None:
        """A piece of one drain of the server: rows, and with its last piece the drain's request lines (a
        request's line is queued after its rows, so its rows are in this drain or the one before, and its
        row count is known)."""
        if batch:
            try:
                self._rows(batch, shadow)
            except Exception as e:  # a bad batch or a full disk must not stop the next ones
                print(f"mlops-nb recorder: could not log {len(batch)} request(s): {e!r}", flush=True)
        if requests and self.log:
            try:
                self._requests(requests)
            except Exception as e:
                print(f"mlops-nb recorder: could not write {len(requests)} line(s) of the request log: {e!r}",
                      flush=True)
            self._rows_before, self._rows_of = self._rows_of, {}
        self.tick()

    def tick(self) -> None:
        """Profile what is pending and rewrite the window's profile when they are due."""
        if not self.profile:
            return
        if self._pending and time.monotonic() - self._profiled_at >= PROFILE_SECONDS:
            self.profile_pending()
        if self._unwritten and time.monotonic() - self._written_at > WRITE_SECONDS:
            self.write_profile()

    def _rows(self, batch: list, shadow) -> None:
        import numpy as np

        starts = [self._window_of(b[0]) for b in batch]
        for start in sorted(set(starts)):
            part = [b for b, s in zip(batch, starts) if s == start]
            inputs = None
            if self.log:
                inputs = frame([b[4] for b in part])
                rows_shadow = None
                if shadow is not None:
                    version, p = shadow
                    at = [i for i, s in enumerate(starts) if s == start]
                    rows_shadow = (version, np.concatenate([p[i] for i in at]))
                self._predictions(start, part, inputs, rows_shadow)
            if self.profile:
                # the rows kept as the log's frame of this piece (up to recorder.CHUNK_ROWS rows: a few frames a
                # profile to concatenate), else as they came (lists of records, frames; a frame a request,
                # concatenated, cost more than the profiling itself); P(late) as one array; the arms as runs
                pending = self._pending.setdefault(start, ([], [], []))
                if inputs is not None:
                    pending[0].append(inputs)
                else:
                    pending[0].extend(b[4] for b in part)
                pending[1].append(numbers([b[5] for b in part]))
                runs = pending[2]
                for b in part:
                    if runs and runs[-1][0] == b[3]:
                        runs[-1][1] += len(b[4])
                    else:
                        runs.append([b[3], len(b[4])])

    def _predictions(self, start: float, part: list, inputs, shadow) -> None:
        # one vectorised JSON encoding of all inputs (NaN -> null), then a line a row
        encoded = inputs.to_json(orient="records", lines=True, double_precision=15).splitlines()
        lines, i = [], 0
        for at, request_id, version, arm, rows, p, key, latency_ms, features in part:
            n = len(rows)
            self._rows_of[request_id] = n
            # PREDICTION_FIELDS order: request_id, key, at, model_version, arm, row, inputs, features, p_late,
            # latency_ms, shadow. The request id (hex), version (a tag's hex) and arm need no escaping;
            # the client's key does
            head = (f'{{"request_id": "{request_id}", "key": {"null" if key is None else json.dumps(key)}, '
                    f'"at": "{self._stamp(at)}", "model_version": "{version}", "arm": "{arm}"')
            latency = "null" if latency_ms is None else repr(round(latency_ms, 3))
            names, codes = features if features is not None else ((), None)
            width = len(names)
            for row in range(n):
                used = "null" if codes is None else self._features_text(names, codes[row * width:(row + 1) * width])
                tail = (f', "row": {row}, "inputs": {encoded[i]}, "features": {used}, "p_late": {float(p[row])!r}, '
                        f'"latency_ms": {latency}, "shadow": ')
                if shadow is not None:
                    tail += (f'{{"arm": "challenger", "model_version": "{shadow[0]}", '
                             f'"p_late": {float(shadow[1][i])!r}}}')
                else:
                    tail += "null"
                lines.append(head + tail + "}\n")
                i += 1
        append(self._path(PREDICTIONS, start), lines)

    def _features_text(self, names: tuple, codes: bytes) -> str:
        """A row's "features": {store: [...], sent: [...], missing: [...], stale: [...]} from its codes (a byte
        a field, an index into FEATURE_SOURCES); rows of a request mostly share a few, so each is made once."""
        key = (names, codes)
        text = self._features.get(key)
        if text is None:
            groups = {source: [] for source in FEATURE_SOURCES}
            for name, code in zip(names, codes):
                groups[FEATURE_SOURCES[code]].append(name)
            text = json.dumps(groups)
            if len(self._features) >= KEEP_FEATURES:
                self._features.clear()
            self._features[key] = text
        return text

    def _requests(self, requests: list) -> None:
        by_window: dict[float, list[str]] = {}
        for at, request_id, route, status, latency_ms in requests:
            rows = 0 if request_id is None else self._rows_of.get(request_id, self._rows_before.get(request_id))
            # REQUEST_FIELDS order; the route is one of the service's, the request id hex: no escaping needed
            rid = "null" if request_id is None else f'"{request_id}"'
            by_window.setdefault(self._window_of(at), []).append(
                f'{{"request_id": {rid}, "at": "{self._stamp(at)}", "route": "{route}", "status": {status}, '
                f'"latency_ms": {round(latency_ms, 3)!r}, "rows": {"null" if rows is None else rows}}}\n')
        for start, lines in sorted(by_window.items()):
            append(self._path(REQUESTS, start), lines)

    def profile_pending(self) -> None:
        import numpy as np

        from ..data import profiles

        pending, self._pending, self._profiled_at = self._pending, {}, time.monotonic()
        for start in sorted(pending):
            if self._window is not None and start != self._window:
                self.write_profile()
                self._profile = None
            self._window = start
            parts, p_late, arms = pending[start]
            names, counts = zip(*arms)
            rows = numbers_as_floats(frame(parts)).assign(p_late=np.concatenate(p_late),
                                                          arm=np.repeat(np.array(names, dtype=object), counts))
            if self._profile is None:
                self._profile = profiles.Rolling()
            self._profile.track(rows)
            self._unwritten = True

    def write_profile(self) -> None:
        from ..data import profiles

        self._written_at, self._unwritten = time.monotonic(), False
        if self._profile is not None:
            path = window_path(self.dir, PROFILES, self._window, self.worker, ".bin")
            tmp = path.with_name("." + path.name + ".tmp")
            profiles.write(self._profile.view(), tmp)
            os.replace(tmp, path)

    def close(self) -> None:
        if self.profile:
            self.profile_pending()
            self.write_profile()

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


def frame(parts: list):
    """The requests' rows in order, as one frame: consecutive lists of records (dicts, all with the
    request schema's fields in its order) become one frame each."""
    import pandas as pd

    frames, records = [], []
    for part in parts:
        if isinstance(part, list):
            records.extend(part)
            continue
        if records:
            frames.append(pd.DataFrame.from_records(records, columns=list(records[0])))
            records = []
        frames.append(part)
    if records:
        frames.append(pd.DataFrame.from_records(records, columns=list(records[0])))
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)


def numbers(parts: list):
    """One float64 array of P(late) parts, each a list (a short request's, as the server sends it) or an array:
    the lists joined first (an array a one-row request, concatenated, cost more than a microsecond a row)."""
    import numpy as np

    if all(isinstance(p, list) for p in parts):
        return np.array([x for p in parts for x in p], dtype=np.float64)
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts]) if parts else np.empty(0)


def numbers_as_floats(df):
    """The record's number fields as float64: a field no request sent is a column of None (object), which
    whylogs tracks value by value as objects, ~2.5x the cost of the whole frame's floats (measured: 3.4 against
    1.4 us a row for the flight record's columns)."""
    from ..lib.record import RECORD

    for name in df.columns:
        if df[name].dtype == object and RECORD.get(name, ("category",))[0] == "number":
            df[name] = df[name].astype("float64")
    return df


def main(argv: list[str]) -> int:
    import signal

    folder, worker, window_seconds, log_max_bytes, *flags = argv
    # A stop signal to the server's process group reaches us too: finish on end of input instead, after
    # the server's last rows, which it sends when it stops.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(10)  # background work: when the CPUs are busy, requests go first
    import pandas  # noqa: F401  (at start, not under the first batch)
    writer = Writer(Path(folder), worker, float(window_seconds), int(log_max_bytes), "--log" in flags,
                    "--profile" in flags)
    if writer.profile:
        from ..data import profiles

        profiles.load()
    inbox: queue.Queue = queue.Queue(INBOX_ITEMS)

    def read() -> None:
        try:
            for item in items(sys.stdin.buffer):
                inbox.put(item)
        finally:
            inbox.put(None)

    threading.Thread(target=read, name="mlops-nb-writer-input", daemon=True).start()
    while True:
        try:
            item = inbox.get(timeout=TICK_SECONDS)
        except queue.Empty:
            writer.tick()
            continue
        if item is None:
            break
        writer.take(*item)
    writer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
