"""The service's logs: what the service writes and the monitor reads, the one contract between them.

The service never imports the monitor, nor the monitor the service: both import this module (its formats
are written down in ARCHITECTURE.md, "Service logs"). Under ``paths.serving_dir`` (a Bento's:
$BENTOML_HOME/serving):

    predictions/<window start>-<worker>.jsonl   a line a predicted row (PREDICTION_FIELDS)
    requests/<window start>-<worker>.jsonl      a line an API request, answered or refused (REQUEST_FIELDS)
    feedback/<day>-<writer>.jsonl               a line an observed outcome (FEEDBACK_FIELDS)
    profiles/<window start>-<worker>.bin        the whylogs profile of a window's rows (inputs, p_late, arm)

Files are only appended to, a batch of whole lines a write. A reader takes complete lines only (a line
still being written is read the next time) and remembers how far it read each file (the monitor keeps
the offsets in its store: ``monitoring.store``).
Times are ISO 8601 in UTC with milliseconds; an input's number to 15 decimal places.

Rotation: a window's prediction or request file that has grown past the writer's size limit is left as
it is and the window goes on in ``<window start>-<worker>.<part>.jsonl`` (part 1, 2, ...): a new file, so
no file a reader has partly read is ever rewritten; a reader takes every ``*.jsonl`` of a folder, and the
line's own ``at`` says its time. Files of EXPIRING kinds untouched for the writer's age limit are deleted
(``expire``); the feedback log never is: its labels cannot be had again.
"""
from __future__ import annotations

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

PREDICTIONS, REQUESTS, FEEDBACK, PROFILES = "predictions", "requests", "feedback", "profiles"

# field -> what it holds; every line has every field (null where it does not apply)
PREDICTION_FIELDS = {
    "request_id": "the answer's request id (16 hex digits)",
    "key": "the request's key, or null (feedback may name the request by it)",
    "at": "when the request was answered",
    "model_version": "the version that answered",
    "arm": "champion or challenger",
    "row": "the row's index in its request (0-based)",
    "inputs": "the row's flight record as the model took it (lib.record.RECORD fields; null for a missing value): "
              "as sent, with the fields the online feature store provides filled in where the row left them out",
    "features": "where the fields the online feature store provides came from, each named in one list: "
                "{store, sent, missing, stale} (FEATURE_SOURCES); null when the service reads no feature store",
    "p_late": "the answered probability",
    "latency_ms": "the request's time in the service, validation to answer, in milliseconds",
    "shadow": "in shadow mode {arm, model_version, p_late} of the silent challenger, else null",
}
# a store-provided field's value: the store's (store), the request's (sent), or NaN because the store gave no
# number (missing) or its view's values were past their ttl at the row's prediction time (stale)
FEATURE_SOURCES = ("store", "sent", "missing", "stale")

REQUEST_FIELDS = {
    "request_id": "the answer's request id, or null for a refused request",
    "at": "when the answer (or refusal) was sent",
    "route": "/predict, /predict_batch or /feedback",
    "status": "the HTTP status",
    "latency_ms": "from the request's first byte in to its answer out, in milliseconds",
    "rows": "rows predicted (0 for a refusal or feedback)",
}
FEEDBACK_FIELDS = {
    "request_id": "the request the outcome belongs to, or null when given by key",
    "key": "the request's key, or null when given by request id",
    "late": "the observed outcome (true: arrived more than 15 minutes late, arr_delay > 15, as the training label)",
    "arr_delay": "the observed arrival delay in minutes, or null",
    "received_at": "when the outcome arrived",
    "source": "http, or file:<name> for `mlops-nb feedback FILE`",
}


def now_iso(at: float | None = None) -> str:
    moment = datetime.now(timezone.utc) if at is None else datetime.fromtimestamp(at, timezone.utc)
    return moment.isoformat(timespec="milliseconds")


WINDOW_STAMP = "%Y%m%dT%H%M"  # a window file's name starts with its window's start (UTC) so written


def worker_name() -> str:
    """This process's name in the files it writes: host and pid, so that replicas (containers, whose pids are
    alike) writing to one shared folder never write the same file."""
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def window_path(folder: Path, kind: str, window_start: float, worker: str, suffix: str, part: int = 0) -> Path:
    """<folder>/<kind>/<window start as YYYYmmddTHHMM>-<worker><suffix>, or for a rotated ``part`` > 0
    <window start>-<worker>.<part><suffix>: the name still opens with the window's start."""
    stamp = datetime.fromtimestamp(window_start, timezone.utc).strftime(WINDOW_STAMP)
    return Path(folder) / kind / f"{stamp}-{worker}{f'.{part}' if part else ''}{suffix}"


EXPIRING = {PREDICTIONS: "*.jsonl", REQUESTS: "*.jsonl", PROFILES: "*.bin"}  # never FEEDBACK


def expire(folder: Path, max_age_seconds: float, now: float | None = None) -> list[Path]:
    """Delete the files of EXPIRING kinds under ``folder`` last modified more than ``max_age_seconds``
    before ``now``; returns them. By modification time, not by the window in the name: a replay of past
    traffic (serving.clock = flight) writes windows years old that are not old files. Another worker may
    delete the same file at the same moment: a file already gone is not an error."""
    limit = (time.time() if now is None else now) - max_age_seconds
    gone = []
    for kind, pattern in EXPIRING.items():
        for path in (Path(folder) / kind).glob(pattern):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
                    gone.append(path)
            except FileNotFoundError:
                continue
    return gone


def append(path: Path, lines: list[str], durable: bool = False) -> None:
    """Append whole lines (each ending in a newline) in one write; ``durable``: on disk before returning
    (fsync of the file, and of its folder when the file is new)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(lines))
        f.flush()
        if durable:
            os.fsync(f.fileno())
    if durable and new:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """A folder's entries on disk (a new or renamed file survives a power loss)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# the feedback log's files and lines, shared by the service (POST /feedback) and `mlops-nb feedback FILE`

REQUEST_ID_PATTERN = r"^[0-9a-f]{16}$"   # a request id as the service makes it (os.urandom(8).hex())
KEY_MAX_CHARS = 200                      # a request's key, as the request schemas bound it


def day_path(folder: Path, kind: str, at: float, writer: str, suffix: str = ".jsonl") -> Path:
    """<folder>/<kind>/<UTC day of ``at`` as YYYYmmdd>-<writer><suffix>: the feedback log's files."""
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%d")
    return Path(folder) / kind / f"{stamp}-{writer}{suffix}"


def feedback_line(request_id: str | None, key: str | None, late: bool, arr_delay: float | None,
                  received_at: str, source: str) -> str:
    """One line of the feedback log, its fields in FEEDBACK_FIELDS order."""
    return json.dumps({"request_id": request_id, "key": key, "late": bool(late),
                       "arr_delay": None if arr_delay is None else float(arr_delay),
                       "received_at": received_at, "source": source}) + "\n"
