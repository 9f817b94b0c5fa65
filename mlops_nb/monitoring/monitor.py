"""`monitor(settings, window)`: the service's logs and the feedback, read incrementally into the monitoring
store (``monitoring.store``), and the windows they touched recomputed.

A call, under the store's lock:

1. scan and parse (before the transaction, into temporary tables): for each log file under the serving dir
   (``data.logs``: predictions/, requests/, feedback/), the bytes after its stored offset up to its last
   complete line (a whole file ending in a newline is read in place, else the new bytes are copied aside),
   parsed by DuckDB in one statement a file (``read_csv`` of whole lines numbered in file order,
   ``from_json`` into the format's fields). A line that is not a JSON object, or lacks a field a row needs,
   is skipped with a warning naming the file and line; a file whose last line stays incomplete (its writer
   died mid-line: unchanged for ``TAIL_GRACE`` seconds) has that tail skipped with a warning; a file shorter
   than its offset was replaced: its rows are dropped and it is read again. whylogs profiles
   (profiles/*.bin) are registered; they are read (``data.profiles``, the only whylogs module) for
   sketch-based drift of a window only when no logged row of that window is in the store.
2. ONE DuckDB transaction: the parsed rows and the files' new offsets; the stale windows, those (of both
   lengths) of the new prediction and request rows and of every prediction whose resolved label changed
   (late feedback: the last line by received_at wins; a label for a request id or key that no prediction
   has is kept, counted as unknown, and matched when the prediction arrives); the stale windows of the
   length asked for, recomputed per window, model version and arm (in shadow mode the silent challenger's
   scores are rows of arm 'shadow'; the row of model_version '*' and arm '*' is the whole service in that
   window, from the request log: every route, and refusals, which have no version); the alerts they raise
   (``monitoring.alerts``); the call's row in ``calls``. Then COMMIT.
3. after the commit: the alerts' sinks (log lines, alerts.jsonl, webhook).

Labels: feedback names a request by request id (the label applies to every row of that request) or by key
(to every prediction made with that key that has no label by request id).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import config
from ..data import logs
from . import store

TAIL_GRACE = 60.0   # seconds a file's incomplete last line may stay so before it counts as truncated
COPY_BLOCK = 16 << 20
MEMORY_LIMIT = "700MB"  # DuckDB's buffer; beyond it, it spills to <store>.tmp (1M predictions: 1.5 GB peak in all)
EXAMPLES = 3        # skipped lines named a file and reason (the rest are counted)

PREDICTION_JSON = {
    "request_id": "VARCHAR", "key": "VARCHAR", "at": "VARCHAR", "model_version": "VARCHAR", "arm": "VARCHAR",
    "row": "BIGINT", "p_late": "DOUBLE", "latency_ms": "DOUBLE",
    "inputs": dict(store.INPUT_COLUMNS),
    "features": {source: ["VARCHAR"] for source in logs.FEATURE_SOURCES},
    "shadow": {"arm": "VARCHAR", "model_version": "VARCHAR", "p_late": "DOUBLE"},
}
REQUEST_JSON = {"request_id": "VARCHAR", "at": "VARCHAR", "route": "VARCHAR", "status": "BIGINT",
                "latency_ms": "DOUBLE", "rows": "BIGINT"}
FEEDBACK_JSON = {"request_id": "VARCHAR", "key": "VARCHAR", "late": "BOOLEAN", "arr_delay": "DOUBLE",
                 "received_at": "VARCHAR", "source": "VARCHAR"}


def _ts(expr: str) -> str:
    """An ISO 8601 text as a naive UTC TIMESTAMP (NULL when unparseable); the connection is in UTC."""
    return f"try_cast(try_cast({expr} AS TIMESTAMPTZ) AS TIMESTAMP)"


# each field named as its table's column: a line's fields are inserted by name (a migrated store's new columns
# come last, a new store's in the record's order)
_inputs_sel = ", ".join(f'j.inputs."{c}" AS "{c}"' for c in store.INPUT_COLUMNS)
SELECT = {
    logs.PREDICTIONS: (
        f"j.request_id AS request_id, j.key AS key, {_ts('j.at')} AS \"at\", j.model_version AS model_version, "
        f"j.arm AS arm, j.row AS \"row\", j.p_late AS p_late, j.latency_ms AS latency_ms, {_inputs_sel}, "
        "j.features AS features, j.shadow.arm AS shadow_arm, j.shadow.model_version AS shadow_version, "
        "j.shadow.p_late AS shadow_p_late",
        f"{_ts('j.at')} IS NOT NULL AND j.model_version IS NOT NULL AND j.arm IS NOT NULL AND "
        "j.p_late BETWEEN 0 AND 1",
        "at, model_version, arm or p_late (in [0, 1])"),
    logs.REQUESTS: (
        f"j.request_id AS request_id, {_ts('j.at')} AS \"at\", j.route AS route, j.status AS status, "
        "j.latency_ms AS latency_ms, j.rows AS \"rows\"",
        f"{_ts('j.at')} IS NOT NULL AND j.status IS NOT NULL",
        "at or status"),
    logs.FEEDBACK: (
        f"j.request_id AS request_id, j.key AS key, j.late AS late, j.arr_delay AS arr_delay, "
        f"{_ts('j.received_at')} AS received_at, j.source AS source",
        f"(j.request_id IS NOT NULL OR j.key IS NOT NULL) AND j.late IS NOT NULL AND "
        f"{_ts('j.received_at')} IS NOT NULL",
        "request_id or key, late, received_at"),
}
STRUCTS = {logs.PREDICTIONS: PREDICTION_JSON, logs.REQUESTS: REQUEST_JSON, logs.FEEDBACK: FEEDBACK_JSON}
LOG_KINDS = (logs.PREDICTIONS, logs.REQUESTS, logs.FEEDBACK)


@dataclass
class Report:
    serving_dir: Path
    store: Path
    window: str
    seq: int = 0
    read: dict = field(default_factory=dict)
    warnings: list[dict] = field(default_factory=list)
    windows: list[dict] = field(default_factory=list)
    empty: bool = False
    seconds: float = 0.0
    timings: dict = field(default_factory=dict)  # phase -> seconds: scan, parse, ingest, windows, drift, commit
    alerts: list[dict] = field(default_factory=list)      # the alerts this call raised (new ones only)
    alert_log: list[str] = field(default_factory=list)    # their log lines
    alert_failures: list[str] = field(default_factory=list)  # webhook deliveries that failed

    def as_dict(self) -> dict:
        return {"serving_dir": str(self.serving_dir), "store": str(self.store), "window": self.window,
                "call": self.seq, "empty": self.empty, "seconds": round(self.seconds, 3),
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "read": {**self.read, "warnings": len(self.warnings)}, "warnings": self.warnings,
                "windows": [_jsonable(w) for w in self.windows], "alerts": _jsonable(self.alerts),
                "alert_failures": self.alert_failures}


def _jsonable(obj):
    import math

    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.replace(tzinfo=timezone.utc).isoformat() if obj.tzinfo is None else obj.isoformat()
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalars
        obj = obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def crash_point(name: str) -> None:
    """Where the crash tests kill a monitor call for real (``MLOPS_NB_CRASH_AT=monitor:<name>``)."""
    if config.crash_at() == f"monitor:{name}":
        os.kill(os.getpid(), signal.SIGKILL)


def _warm_imports() -> None:
    """The windows need pandas, and drift scipy.special (together about 0.4 s to import): imported in a
    thread while DuckDB, which releases the GIL, reads the logs. A failure here is raised where they are
    used."""
    try:
        import pandas  # noqa: F401
        import scipy.special  # noqa: F401

        from . import drift, estimate  # noqa: F401
    except Exception:
        pass


def monitor(settings, window: str | None = None) -> Report:
    """Read what is new in the service's logs into the store and recompute the windows it touched."""
    start = time.monotonic()
    length = window or settings.monitor.window
    if length not in store.WINDOW_UNITS:
        from ..errors import SettingsError

        raise SettingsError(f"The window must be one of '1h', '1d'; got {length!r} instead.")
    serving = config.serving_dir(settings, in_bento=False)
    report = Report(serving, store.store_path(settings), length)
    import duckdb  # noqa: F401  (before the thread: two imports at once take turns on the GIL)

    threading.Thread(target=_warm_imports, name="mlops-nb-monitor-imports", daemon=True).start()
    with store.lock(settings):
        incoming = settings.path("monitoring_dir") / store.INCOMING_DIR
        shutil.rmtree(incoming, ignore_errors=True)  # a killed call's copies
        incoming.mkdir(parents=True)
        try:
            with store.connect(settings, memory_limit=MEMORY_LIMIT) as con:
                _call(con, settings, serving, incoming, length, report)
        finally:
            shutil.rmtree(incoming, ignore_errors=True)
    report.seconds = time.monotonic() - start
    return report


def _call(con, settings, serving: Path, incoming: Path, length: str, report: Report) -> None:
    started = datetime.now(timezone.utc).replace(tzinfo=None)
    seq = report.seq = store.next_seq(con)
    clock = _Clock(report.timings)
    plan = _plan(con, serving, incoming, report)
    clock("scan")
    _stage(con, plan, report)
    clock("parse")
    has_predictions = con.execute("SELECT count(*) > 0 FROM predictions").fetchone()[0]
    if not has_predictions and not any(p["kind"] == logs.PREDICTIONS for p in plan["files"]):
        report.empty = True
    con.execute("BEGIN TRANSACTION")
    try:
        read = _ingest(con, plan, seq, report)
        clock("ingest")
        crash_point("ingested")
        report.windows = recompute(con, settings, length, seq, serving, report, clock)
        read["windows_recomputed"] = len(report.windows)
        report.read = read
        new_alerts = _alerts(con, settings, report.windows)
        con.execute("INSERT INTO calls VALUES (?, ?, ?, ?, ?)",
                    [seq, started, datetime.now(timezone.utc).replace(tzinfo=None), length,
                     json.dumps(_jsonable({**read, "warnings": report.warnings}))])
        crash_point("before-commit")
        clock()
        con.execute("COMMIT")
        clock("commit")
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except Exception:
            pass
        raise
    # the sinks, once the alerts are stored (a webhook that fails is retried by the next call)
    from . import alerts

    report.alert_failures = alerts.deliver(con, new_alerts, settings, log=report.alert_log.append)
    report.alerts = [a.as_dict() for a in new_alerts]
    clock("alerts")


def _alerts(con, settings, windows: list[dict]) -> list:
    """The alerts the recomputed windows raise (``monitoring.alerts`` rules), stored in this transaction;
    returns the new ones (an alert of a window and rule is stored once, however often it is recomputed)."""
    from . import alerts

    found = []
    for w in windows:
        found += alerts.evaluate(w, w.get("drift") or [], w.get("reference_roc_auc"), settings)
    return alerts.record(con, found, settings)


class _Clock:
    """Adds the seconds since its last call to ``timings[phase]`` (no phase: only restarts)."""

    def __init__(self, timings: dict):
        self.timings, self.last = timings, time.monotonic()

    def __call__(self, phase: str | None = None) -> None:
        now = time.monotonic()
        if phase:
            self.timings[phase] = self.timings.get(phase, 0.0) + now - self.last
        self.last = now


# --------------------------------------------------------------------------------------------------
# ingest


def _warn(report: Report, kind: str, file: str, message: str, count: int = 1) -> None:
    report.warnings.append({"kind": kind, "file": file, "count": count, "message": f"{file}: {message}"})


def _last_newline(path: Path, start: int, end: int) -> int:
    """The offset just after the last b'\\n' in [start, end) of the file, or ``start`` when there is none."""
    with open(path, "rb") as f:
        pos = end
        while pos > start:
            lo = max(start, pos - (1 << 16))
            f.seek(lo)
            block = f.read(pos - lo)
            i = block.rfind(b"\n")
            if i >= 0:
                return lo + i + 1
            pos = lo
    return start


def _copy_range(src: Path, dst: Path, start: int, end: int) -> int:
    """Copy bytes [start, end) of ``src`` to ``dst``; returns the number of lines (newlines) copied."""
    lines = 0
    with open(src, "rb") as f, open(dst, "wb") as out:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(COPY_BLOCK, left))
            if not block:
                break
            out.write(block)
            lines += block.count(b"\n")
            left -= len(block)
    return lines


def _plan(con, serving: Path, incoming: Path, report: Report) -> dict:
    """Which bytes of which files to read (copied into ``incoming``), before the transaction starts."""
    known = {r[0]: dict(zip(("bytes_read", "size", "mtime", "lines", "warnings"), r[1:]))
             for r in con.execute("SELECT path, bytes_read, size, mtime, lines, warnings FROM ingested_files"
                                  ).fetchall()}
    files, seen = [], 0
    now = time.time()
    for kind, pattern in [(k, "*.jsonl") for k in LOG_KINDS] + [(logs.PROFILES, "*.bin")]:
        folder = serving / kind
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob(pattern)):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            seen += 1
            rel = f"{kind}/{path.name}"
            old = known.get(rel)
            entry = {"kind": kind, "rel": rel, "path": path, "size": st.st_size, "mtime": st.st_mtime,
                     "offset": old["bytes_read"] if old else 0, "new": old is None, "reset": False,
                     "chunk": None, "end": None, "skipped_tail": 0, "direct": False}
            if kind == logs.PROFILES:
                if old is None or (old["size"], old["mtime"]) != (st.st_size, st.st_mtime):
                    entry["end"] = st.st_size
                    files.append(entry)
                continue
            if old is not None and old["size"] == st.st_size and old["bytes_read"] == st.st_size \
                    and old["mtime"] == st.st_mtime:
                continue  # nothing new: not opened
            offset = entry["offset"]
            if st.st_size < offset:
                _warn(report, "shrunk-file", rel, f"shorter than when last read ({st.st_size} < {offset} bytes): "
                      "replaced or truncated; its rows are dropped and it is read again from its start")
                entry["reset"] = True
                entry["offset"] = offset = 0
            end = _last_newline(path, offset, st.st_size)
            if end < st.st_size and now - st.st_mtime > TAIL_GRACE:
                # a writer appends whole lines in one write: a tail without its newline this old is a dead
                # writer's (truncated file); later appends would start after it
                entry["skipped_tail"] = st.st_size - end
                _warn(report, "truncated-file", rel, f"its last line is incomplete ({st.st_size - end} bytes after "
                      f"byte {end}, unchanged for {now - st.st_mtime:.0f} s): the file was truncated; skipped")
            entry["end"] = end
            if end > offset and offset == 0 and end == st.st_size:
                # the whole file, ending in a newline: DuckDB reads it in place (``_stage`` checks that it
                # did not grow meanwhile, else reads a copy of its first ``end`` bytes)
                entry["chunk"], entry["direct"] = path, True
                entry["newlines"] = None  # counted only if DuckDB leaves bytes of it unread (``_stage``)
            elif end > offset:
                entry["chunk"] = incoming / f"{len(files):05d}-{path.name}"
                entry["newlines"] = _copy_range(path, entry["chunk"], offset, end)
            files.append(entry)
    return {"files": files, "seen": seen, "incoming": incoming}


def _ingest(con, plan: dict, seq: int, report: Report) -> dict:
    read = {"files": plan["seen"], "files_read": 0, "new_files": 0, "bytes": 0, "lines": 0, "skipped_lines": 0,
            "predictions": 0, "requests": 0, "feedback": 0, "duplicates": 0, "profiles": 0}
    feedback_changes = any(f["kind"] == logs.FEEDBACK and (f["chunk"] or f["reset"]) for f in plan["files"])
    if feedback_changes:
        # the identifiers whose label may change: those of the new lines and of the replaced files' lines;
        # their labels before, to compare with after (only they are read, not the whole feedback table)
        resets = [f["rel"] for f in plan["files"] if f["kind"] == logs.FEEDBACK and f["reset"]]
        con.execute("CREATE OR REPLACE TEMP TABLE aff_id AS SELECT DISTINCT request_id FROM ("
                    "SELECT request_id FROM stage_feedback WHERE ok UNION ALL "
                    "SELECT request_id FROM feedback WHERE list_contains(?, file)) WHERE request_id IS NOT NULL",
                    [resets])
        con.execute("CREATE OR REPLACE TEMP TABLE aff_key AS SELECT DISTINCT key FROM ("
                    "SELECT request_id, key FROM stage_feedback WHERE ok UNION ALL "
                    "SELECT request_id, key FROM feedback WHERE list_contains(?, file)) "
                    "WHERE request_id IS NULL AND key IS NOT NULL", [resets])
        con.execute(f"CREATE OR REPLACE TEMP TABLE labels_before AS {_AFFECTED_LABELS_SQL}")
    for f in plan["files"]:
        kind, rel = f["kind"], f["rel"]
        read["new_files"] += f["new"]
        lines = warned = 0
        if kind == logs.PROFILES:
            read["profiles"] += 1
            start = _profile_start(f["path"].name)
            if start is not None:  # its window may have no logged rows: sketch drift
                _mark_stale(con, "SELECT ?::TIMESTAMP AS \"at\"", [start])
        else:
            if f["reset"]:
                if kind != logs.FEEDBACK:  # their windows lose rows: recompute them
                    _mark_stale(con, f"SELECT \"at\" FROM {kind} WHERE file = ?", [rel])
                con.execute(f"DELETE FROM {kind} WHERE file = ?", [rel])
            if f["chunk"] is not None:
                lines, kept, warned = f["lines"], f["kept"], f["skipped"]
                read["files_read"] += 1
                read["bytes"] += f["end"] - f["offset"]
                read["lines"] += lines
                read[kind] += kept
                read["skipped_lines"] += warned
            if f["skipped_tail"]:
                warned += 1
                read["skipped_lines"] += 1
        con.execute(
            "INSERT INTO ingested_files VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (path) DO UPDATE SET "
            "bytes_read = excluded.bytes_read, size = excluded.size, mtime = excluded.mtime, "
            "lines = CASE WHEN ? THEN excluded.lines ELSE ingested_files.lines + excluded.lines END, "
            "warnings = ingested_files.warnings + excluded.warnings, last_seq = excluded.last_seq",
            [rel, kind, (f["end"] + f["skipped_tail"]) if f["end"] is not None else 0, f["size"], f["mtime"],
             lines, warned, seq, f["reset"]])
    fresh_ids = fresh_keys = 0
    if feedback_changes:  # the identifiers of the new lines that have no feedback yet (the rest are duplicates)
        con.execute("""CREATE OR REPLACE TEMP TABLE fresh_id AS SELECT DISTINCT request_id FROM stage_feedback
            WHERE ok AND request_id IS NOT NULL AND request_id NOT IN (
                SELECT request_id FROM feedback WHERE request_id IN (SELECT request_id FROM aff_id))""")
        con.execute("""CREATE OR REPLACE TEMP TABLE fresh_key AS SELECT DISTINCT key FROM stage_feedback
            WHERE ok AND request_id IS NULL AND key IS NOT NULL AND key NOT IN (
                SELECT key FROM feedback WHERE request_id IS NULL AND key IN (SELECT key FROM aff_key))""")
        fresh_ids, fresh_keys = con.execute(
            "SELECT (SELECT count(*) FROM fresh_id), (SELECT count(*) FROM fresh_key)").fetchone()
    for kind in LOG_KINDS:  # the parsed lines, staged before the transaction
        con.execute(f"INSERT INTO {kind} SELECT ?, * EXCLUDE (ok, corrupt, nbytes) FROM stage_{kind} WHERE ok",
                    [seq])
    # windows touched by new rows, and by the predictions whose label changed
    stale_at = ["SELECT \"at\" FROM predictions WHERE seq = $seq", "SELECT \"at\" FROM requests WHERE seq = $seq"]
    read["duplicates"] = read["feedback"] - fresh_ids - fresh_keys
    read["labels_changed"] = 0
    if feedback_changes:
        con.execute(f"CREATE OR REPLACE TEMP TABLE labels_after AS {_AFFECTED_LABELS_SQL}")
        con.execute("""CREATE OR REPLACE TEMP TABLE labels_changed AS
            SELECT coalesce(a.ident, b.ident) AS ident FROM labels_after a FULL OUTER JOIN labels_before b
            ON a.ident = b.ident WHERE a.late IS DISTINCT FROM b.late""")
        read["labels_changed"] = con.execute("SELECT count(*) FROM labels_changed").fetchone()[0]
    if read["labels_changed"]:
        stale_at.append("""SELECT p."at" FROM predictions p WHERE p.request_id IN (
                              SELECT substr(ident, 4) FROM labels_changed WHERE starts_with(ident, 'id:'))
                          OR p.key IN (SELECT substr(ident, 5) FROM labels_changed WHERE starts_with(ident, 'key:'))""")
    _mark_stale(con, " UNION ALL ".join(stale_at), {"seq": seq})
    resets = any(f["reset"] for f in plan["files"])
    changed = read["predictions"] or read["feedback"] or resets
    last = con.execute("SELECT summary FROM calls ORDER BY seq DESC LIMIT 1").fetchone()
    last = json.loads(last[0]) if last else {}
    if not changed and "unknown_labels" in last:  # nothing that could change them: as the last call said
        read["duplicates_total"], read["unknown_labels"] = last["duplicates_total"], last["unknown_labels"]
    elif not resets and "unknown_labels" in last:  # rows were only added: the last call's counts, updated
        read["duplicates_total"] = last["duplicates_total"] + read["duplicates"]
        read["unknown_labels"] = last["unknown_labels"] + _unknown_change(con, seq, fresh_ids, fresh_keys,
                                                                          bool(read["predictions"]))
    else:
        read["duplicates_total"], read["unknown_labels"] = con.execute(FEEDBACK_COUNTS_SQL).fetchone()
    read["warnings_by_kind"] = {}
    for w in report.warnings:
        read["warnings_by_kind"][w["kind"]] = read["warnings_by_kind"].get(w["kind"], 0) + w["count"]
    return read


# the label of each affected identifier (aff_id, aff_key): its last feedback by received_at (then by arrival)
# duplicate feedback lines, and feedback identifiers that no prediction has, counted over the whole store
FEEDBACK_COUNTS_SQL = """
    WITH ids AS (SELECT DISTINCT request_id FROM feedback WHERE request_id IS NOT NULL),
         keys AS (SELECT DISTINCT key FROM feedback WHERE request_id IS NULL AND key IS NOT NULL)
    SELECT (SELECT count(*) FROM feedback) - (SELECT count(*) FROM ids) - (SELECT count(*) FROM keys),
           (SELECT count(*) FROM ids WHERE request_id NOT IN (
                SELECT request_id FROM predictions WHERE request_id IS NOT NULL))
         + (SELECT count(*) FROM keys WHERE key NOT IN (SELECT key FROM predictions WHERE key IS NOT NULL))"""
_AFFECTED_LABELS_SQL = """
    SELECT 'id:' || request_id AS ident, arg_max(late, (received_at, seq, file, line)) AS late FROM feedback
    WHERE request_id IN (SELECT request_id FROM aff_id) GROUP BY request_id
    UNION ALL
    SELECT 'key:' || key AS ident, arg_max(late, (received_at, seq, file, line)) AS late FROM feedback
    WHERE request_id IS NULL AND key IN (SELECT key FROM aff_key) GROUP BY key"""


def _unknown_change(con, seq: int, fresh_ids: int, fresh_keys: int, predictions: bool) -> int:
    """How this call's rows change the count of feedback identifiers that no prediction has, when no rows
    were dropped: plus its new identifiers (``fresh_id``, ``fresh_key``) that no prediction has, minus the
    earlier feedback's identifiers whose first prediction came now. Only the new rows' identifiers are looked
    up, where counting them all again reads the whole feedback and predictions tables."""
    change = 0
    if fresh_ids or fresh_keys:
        change += fresh_ids + fresh_keys - con.execute("""
            SELECT (SELECT count(DISTINCT request_id) FROM predictions WHERE request_id IN (
                        SELECT request_id FROM fresh_id))
                 + (SELECT count(DISTINCT key) FROM predictions WHERE key IN (SELECT key FROM fresh_key))
            """).fetchone()[0]
    if predictions:
        change -= con.execute("""
            WITH ids AS (SELECT DISTINCT request_id FROM feedback WHERE seq < $seq AND request_id IN (
                             SELECT request_id FROM stage_predictions WHERE ok)),
                 keys AS (SELECT DISTINCT key FROM feedback WHERE seq < $seq AND request_id IS NULL AND key IN (
                             SELECT key FROM stage_predictions WHERE ok))
            SELECT (SELECT count(*) FROM ids WHERE request_id NOT IN (SELECT request_id FROM predictions
                        WHERE seq < $seq AND request_id IN (SELECT request_id FROM ids)))
                 + (SELECT count(*) FROM keys WHERE key NOT IN (SELECT key FROM predictions
                        WHERE seq < $seq AND key IN (SELECT key FROM keys)))""", {"seq": seq}).fetchone()[0]
    return change


def _mark_stale(con, at_sql: str, params) -> None:
    """Marks the windows (of both lengths) of the times ``at_sql`` selects; it runs once."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE stale_hours AS SELECT DISTINCT date_trunc('hour', \"at\") AS h "
                f"FROM ({at_sql}) WHERE \"at\" IS NOT NULL", params)
    for length, unit in store.WINDOW_UNITS.items():
        con.execute(f"INSERT OR IGNORE INTO stale_windows SELECT DISTINCT '{length}', date_trunc('{unit}', h) "
                    "FROM stale_hours")


def _stage_chunk(con, f: dict, chunk: Path) -> None:
    kind, rel = f["kind"], f["rel"]
    fields, valid, _ = SELECT[kind]
    con.execute(f"""INSERT INTO stage_{kind} BY NAME
        SELECT $file AS file, n AS line, {fields}, j IS NOT NULL AND {valid} AS ok,
               CASE WHEN NOT blank THEN j IS NULL END AS corrupt, nbytes FROM (
            SELECT n, CASE WHEN line IS NULL THEN true WHEN starts_with(line, '{{') THEN false
                           ELSE trim(line) = '' END AS blank, coalesce(strlen(line), 0) + 1 AS nbytes,
                   -- one parse a line: try() is NULL for text that is not JSON; an array or a number
                   -- gives a struct of NULLs, so an object must also start with '{{' (CASE: the costlier
                   -- tests run only on the rows the cheap ones leave)
                   CASE WHEN starts_with(line, '{{') THEN try(from_json(line, $struct))
                        WHEN starts_with(ltrim(line), '{{') THEN try(from_json(line, $struct)) END AS j
            FROM (SELECT row_number() OVER () AS n, line FROM read_csv($chunk, columns = {{'line': 'VARCHAR'}},
                  header = false, delim = '\\x01', quote = '', escape = '', auto_detect = false,
                  new_line = '\\n', ignore_errors = true)))""",
                {"file": rel, "struct": json.dumps(STRUCTS[kind]), "chunk": str(chunk)})


def _count_newlines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        while block := f.read(COPY_BLOCK):
            n += block.count(b"\n")
    return n


def _stage(con, plan: dict, report: Report) -> None:
    """Parse every chunk into ``stage_<kind>`` (temporary tables, before the transaction: nothing of it
    persists), one DuckDB statement a chunk: whole lines (``read_csv`` of one text column, numbered in file
    order), ``from_json`` into the format's fields; a row keeps ``ok`` (a JSON object with the fields a row
    needs) and ``corrupt`` (not a JSON object), and ``nbytes`` (the line's, with its newline: when a file's add
    up to its bytes, every line was read, and a file read in place need not be read again to count its
    lines). Sets each chunk's lines, kept and skipped, with warnings."""
    for kind in LOG_KINDS:
        con.execute(f"CREATE OR REPLACE TEMP TABLE stage_{kind} AS SELECT * EXCLUDE (seq), TRUE AS ok, "
                    f"TRUE AS corrupt, 0::BIGINT AS nbytes FROM {kind} LIMIT 0")
    for f in plan["files"]:
        if f["kind"] == logs.PROFILES or f["chunk"] is None:
            continue
        _stage_chunk(con, f, f["chunk"])
        if f["direct"] and f["path"].stat().st_size != f["size"]:  # appended while DuckDB read it
            con.execute(f"DELETE FROM stage_{f['kind']} WHERE file = ?", [f["rel"]])
            f["chunk"] = plan["incoming"] / f"{f['rel'].replace('/', '-')}"
            f["newlines"] = _copy_range(f["path"], f["chunk"], 0, f["end"])
            f["direct"] = False
            _stage_chunk(con, f, f["chunk"])
        if not f["direct"]:
            f["chunk"].unlink()
    for kind in LOG_KINDS:
        counts = {r[0]: r[1:] for r in con.execute(
            f"SELECT file, count(*), count(*) FILTER (WHERE ok), count(*) FILTER (WHERE corrupt), "
            f"count(*) FILTER (WHERE corrupt IS NULL), sum(nbytes) FROM stage_{kind} GROUP BY file").fetchall()}
        for f in plan["files"]:
            if f["kind"] != kind or f["chunk"] is None:
                continue
            rel = f["rel"]
            total, kept, corrupt, blank, nbytes = counts.get(rel, (0, 0, 0, 0, 0))
            if f["newlines"] is None:
                f["newlines"] = total if nbytes == f["end"] - f["offset"] else _count_newlines(f["path"])
            lines = total - blank  # blank lines are neither read nor warned about
            unreadable = max(0, f["newlines"] - total)  # lines read_csv could not read at all (not UTF-8)
            f["lines"], f["kept"], f["skipped"] = lines + unreadable, kept, lines - kept + unreadable
            where = f"after byte {f['offset']}" if f["offset"] else "of the file"
            _, _, needed = SELECT[kind]
            for label, count, condition, what in (
                    ("corrupt-line", corrupt, "corrupt", "are not JSON objects"),
                    ("invalid-line", lines - kept - corrupt, "NOT ok AND corrupt = false", f"lack a valid {needed}")):
                if count:
                    first = [n for (n,) in con.execute(
                        f"SELECT line FROM stage_{kind} WHERE file = ? AND {condition} ORDER BY line "
                        f"LIMIT {EXAMPLES}", [rel]).fetchall()]
                    names = ", ".join(map(str, first)) + (", ..." if count > len(first) else "")
                    _warn(report, label, rel, f"{count} line(s) {where} {what} (line {names}); skipped", count)
            if unreadable:
                _warn(report, "corrupt-line", rel, f"{unreadable} line(s) {where} could not be read as text "
                      "(not UTF-8; the line numbers after them count without them); skipped", unreadable)


# --------------------------------------------------------------------------------------------------
# windows


def recompute(con, settings, length: str, seq: int, serving: Path, report: Report, clock: _Clock) -> list[dict]:
    """Recompute the stale windows of ``length`` (inside the caller's transaction); returns them, newest
    last, each with its drift rows."""
    unit = store.WINDOW_UNITS[length]
    con.execute("CREATE OR REPLACE TEMP TABLE touched AS SELECT window_start FROM stale_windows "
                "WHERE window_length = ?", [length])
    if not con.execute("SELECT count(*) FROM touched").fetchone()[0]:
        return []
    cols = ", ".join(f'p."{c}"' for c in store.INPUT_COLUMNS)
    # the touched windows' rows; the range test lets DuckDB skip row groups by their min/max of "at"
    lo, hi = con.execute(f"SELECT min(window_start), max(window_start) + INTERVAL 1 {unit} FROM touched").fetchone()
    in_range = f"""p."at" >= TIMESTAMP '{lo}' AND p."at" < TIMESTAMP '{hi}'"""
    in_touched = (f"""SELECT {{}} FROM predictions p JOIN touched t ON date_trunc('{unit}', p."at") = t.window_start
                      WHERE {in_range}""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE lab_id AS SELECT request_id, arg_max(late, (received_at, seq,
                    file, line)) AS late FROM feedback
                    WHERE request_id IN ({in_touched.format('p.request_id')}) GROUP BY request_id""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE lab_key AS SELECT key, arg_max(late, (received_at, seq, file,
                    line)) AS late FROM feedback WHERE request_id IS NULL
                    AND key IN ({in_touched.format('p.key')}) GROUP BY key""")
    base = f"""SELECT date_trunc('{unit}', p.at) AS window_start, p.request_id, p.key, p.latency_ms,
                      p.model_version, p.arm, p.p_late, p.shadow_version, p.shadow_p_late, p.features, {cols}
               FROM predictions p JOIN touched t ON date_trunc('{unit}', p.at) = t.window_start
               WHERE {in_range}"""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE wrows AS
        WITH b AS ({base}),
        scored AS (
            SELECT * EXCLUDE (shadow_version, shadow_p_late) FROM b
            UNION ALL BY NAME
            SELECT * EXCLUDE (shadow_version, shadow_p_late, model_version, arm, p_late, latency_ms),
                   NULL::DOUBLE AS latency_ms, shadow_version AS model_version, 'shadow' AS arm,
                   shadow_p_late AS p_late
            FROM b WHERE shadow_version IS NOT NULL AND shadow_p_late IS NOT NULL)
        SELECT s.*, coalesce(li.late, lk.late) AS late
        FROM scored s LEFT JOIN lab_id li ON s.request_id = li.request_id
                      LEFT JOIN lab_key lk ON s.key = lk.key""")
    bins = settings.monitor.bins
    agg = con.execute(f"""
        WITH per_request AS (
            SELECT window_start, model_version, arm, request_id, any_value(latency_ms) AS latency_ms
            FROM wrows GROUP BY ALL),
        lat AS (
            SELECT window_start, model_version, arm, count(*) AS requests,
                   quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.99) AS p99
            FROM per_request GROUP BY ALL),
        errs AS (
            SELECT q.window_start, q.model_version, q.arm, count(DISTINCT r.request_id) AS errors
            FROM per_request q JOIN requests r ON r.request_id = q.request_id WHERE r.status >= 400 GROUP BY ALL),
        dist AS (
            SELECT window_start, model_version, arm, count(*) AS n_rows, avg(p_late) AS p_mean,
                   quantile_cont(p_late, [0.1, 0.5, 0.9]) AS q, count(late) AS labelled,
                   histogram(least(floor(p_late * {bins}), {bins - 1})::INTEGER) AS hist
            FROM wrows GROUP BY ALL)
        SELECT d.window_start, d.model_version, d.arm, l.requests, d.n_rows, coalesce(e.errors, 0),
               l.p50, l.p99, d.p_mean, d.q[1], d.q[2], d.q[3], d.hist, d.labelled
        FROM dist d JOIN lat l USING (window_start, model_version, arm)
             LEFT JOIN errs e USING (window_start, model_version, arm)
        ORDER BY d.window_start, d.model_version, d.arm""").fetchall()
    service = con.execute(f"""
        SELECT date_trunc('{unit}', r.at) AS window_start, count(*), coalesce(sum(r.rows), 0),
               count(*) FILTER (WHERE r.status >= 400),
               quantile_cont(r.latency_ms, 0.5), quantile_cont(r.latency_ms, 0.99)
        FROM requests r JOIN touched t ON date_trunc('{unit}', r.at) = t.window_start
        WHERE {in_range.replace('p."at"', 'r."at"')}
        GROUP BY 1 ORDER BY 1""").fetchall()

    feature_nan = _feature_nan(con)
    clock("windows")
    # the rows the metrics and drift need, in the groups' order (the aggregates' ORDER BY): each group is
    # a slice; no strings but the category inputs cross into Python
    inputs = ", ".join(_q(c) for c in store.INPUT_COLUMNS)
    frame = con.execute(f"SELECT p_late, late::DOUBLE AS late, {inputs} FROM wrows "
                        "ORDER BY window_start, model_version, arm").df()
    clock("fetch")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    refs: dict[str, dict | None] = {}
    out, drift_rows = [], []
    first = 0
    for (ws, version, arm, requests, n_rows, errors, p50, p99, p_mean, p10, p_50, p90, hist, labelled) in agg:
        ws = _naive(ws)
        rows = frame.iloc[first:first + n_rows]
        first += n_rows
        ref = refs[version] if version in refs else refs.setdefault(version, _reference(version, settings))
        threshold = _threshold(ref, settings)
        histogram = [int((hist or {}).get(i, 0)) for i in range(bins)]
        p = rows["p_late"].to_numpy(dtype=float)
        w = {"window_length": length, "window_start": ws, "model_version": version, "arm": arm,
             "requests": int(requests), "rows": int(n_rows), "errors": int(errors),
             "latency_p50_ms": p50, "latency_p99_ms": p99, "p_mean": p_mean, "p_p10": p10, "p_p50": p_50,
             "p_p90": p90, "p_histogram": histogram, "labelled": int(labelled),
             "label_coverage": labelled / n_rows if n_rows else None, "threshold": threshold}
        w.update(_realized(rows, threshold, settings))
        w.update(_estimated(p, threshold, ref))
        clock("windows")
        drift = _drift(rows, ref, settings, version)
        clock("drift")
        w["drifted"] = [d["column"] for d in drift if d["drifted"]]
        w["feature_nan"] = feature_nan.get((ws, version, arm))
        w["computed_at"], w["computed_seq"] = now, seq
        w["drift"] = drift
        w["reference_roc_auc"] = _num(((ref or {}).get("metrics") or {}).get("roc_auc"))
        out.append(w)
        drift_rows += [{"window_length": length, "window_start": ws, "model_version": version, "arm": arm, **d}
                       for d in drift]
    for ws, requests, n_rows, errors, p50, p99 in service:
        out.append({"window_length": length, "window_start": _naive(ws), "model_version": store.ALL,
                    "arm": store.ALL, "requests": int(requests), "rows": int(n_rows), "errors": int(errors),
                    "latency_p50_ms": p50, "latency_p99_ms": p99, "p_mean": None, "p_p10": None, "p_p50": None,
                    "p_p90": None, "p_histogram": None, "labelled": 0, "label_coverage": None, "threshold": None,
                    "roc_auc": None, "brier": None, "accuracy": None,
                    "realized_note": "the whole service (request log): no predictions of its own",
                    "estimated_roc_auc": None, "estimated_accuracy": None, "estimate_method": None,
                    "drifted": [], "computed_at": now, "computed_seq": seq, "drift": []})
    with_rows = {w["window_start"] for w in out if w["model_version"] != store.ALL}
    for w in _sketch_windows(con, settings, length, serving, with_rows, report):
        w["computed_at"], w["computed_seq"] = now, seq
        out.append(w)
        drift_rows += [{"window_length": length, "window_start": w["window_start"],
                        "model_version": w["model_version"], "arm": w["arm"], **d} for d in w["drift"]]
    out.sort(key=lambda w: (w["window_start"], w["model_version"] == store.ALL, w["model_version"], w["arm"]))
    _write(con, length, out, drift_rows)
    clock("windows")
    return out


def _feature_nan(con) -> dict:
    """(window start, version, arm) -> {store-provided input: {missing, stale}}: the rows of ``wrows`` in which
    each was NaN for the model, and why ({} when the service read the store and every value was there); groups
    whose rows carry no ``features`` (a service without a store, or before it had one) are left out."""
    out: dict = {}
    for ws, version, arm, name, reason, count in con.execute("""
            WITH f AS (SELECT window_start, model_version, arm, features FROM wrows WHERE features IS NOT NULL)
            SELECT window_start, model_version, arm, name, reason, count(*) FROM (
                SELECT window_start, model_version, arm, unnest(features.missing) AS name, 'missing' AS reason FROM f
                UNION ALL SELECT window_start, model_version, arm, unnest(features.stale), 'stale' FROM f
                UNION ALL SELECT DISTINCT window_start, model_version, arm, NULL, NULL FROM f)
            GROUP BY ALL""").fetchall():
        group = out.setdefault((_naive(ws), version, arm), {})
        if name is not None:
            group.setdefault(name, {"missing": 0, "stale": 0})[reason] = int(count)
    return out


def _profile_start(name: str):
    """The window start a profile's file name carries (``<YYYYmmddTHHMM>-<worker>.bin``), or None."""
    try:
        return datetime.strptime(name[:13], logs.WINDOW_STAMP)
    except ValueError:
        return None


def _floor(moment: datetime, length: str) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0, **({"hour": 0} if length == "1d" else {}))


def _sketch_windows(con, settings, length: str, serving: Path, with_rows: set, report: Report) -> list[dict]:
    """Windows that have whylogs profiles but no logged row in the store (the log was rotated away, or
    never kept): drift from the profiles' sketches (basis 'sketch') against the training reference of the
    version that last served the champion arm before the window; rows and the prediction's quantiles from
    the sketch. A profile that cannot be read is skipped with a warning. Profiles mix the arms."""
    touched = {_naive(r[0]) for r in con.execute("SELECT window_start FROM touched").fetchall()}
    files: dict[datetime, list[str]] = {}
    for (rel,) in con.execute("SELECT path FROM ingested_files WHERE kind = 'profiles' ORDER BY path").fetchall():
        start = _profile_start(Path(rel).name)
        if start is None:
            continue
        ws = _floor(start, length)
        if ws in touched and ws not in with_rows:
            files.setdefault(ws, []).append(rel)
    out = []
    for ws, rels in sorted(files.items()):
        from ..data import profiles

        view = None
        for rel in rels:
            try:
                view = profiles.merge(view, profiles.read(serving / rel))
            except Exception as e:  # whylogs raises assorted errors on a truncated or foreign file
                _warn(report, "unreadable-profile", rel, f"not a readable whylogs profile "
                      f"({type(e).__name__}: {str(e)[:120]}); skipped")
        if view is None:
            continue
        summaries = profiles.summaries(view)
        row = con.execute("SELECT model_version FROM predictions WHERE arm = 'champion' AND \"at\" < ? "
                          "ORDER BY \"at\" DESC LIMIT 1", [ws]).fetchone()
        version = row[0] if row else "?"
        ref = _reference(version, settings) if row else None
        p = summaries.get("p_late") or {}
        n = int(p.get("n", 0) or max((c.get("n", 0) for c in summaries.values()), default=0))
        q = p.get("quantiles")
        quantile = (lambda x: float(q[min(len(q) - 1, max(0, int(round(x * len(q))) - 1))])) if q else (lambda x: None)
        out.append({"window_length": length, "window_start": ws, "model_version": version, "arm": "profile",
                    "requests": 0, "rows": n, "errors": 0, "latency_p50_ms": None, "latency_p99_ms": None,
                    "p_mean": None, "p_p10": quantile(0.1), "p_p50": quantile(0.5), "p_p90": quantile(0.9),
                    "p_histogram": None, "labelled": 0, "label_coverage": None, "threshold": None,
                    "roc_auc": None, "brier": None, "accuracy": None,
                    "realized_note": "no logged rows for this window (whylogs profiles only)",
                    "estimated_roc_auc": None, "estimated_accuracy": None, "estimate_method": None,
                    "drift": _drift(summaries, ref, settings, version, n=n)})
        out[-1]["drifted"] = [d["column"] for d in out[-1]["drift"] if d["drifted"]]
    return out


def _naive(ws):
    if hasattr(ws, "to_pydatetime"):
        ws = ws.to_pydatetime()
    return ws.replace(tzinfo=None) if getattr(ws, "tzinfo", None) else ws


def _write(con, length: str, out: list[dict], drift_rows: list[dict]) -> None:
    import pandas as pd

    for table in ("windows", "drift"):
        con.execute(f"DELETE FROM {table} WHERE window_length = ? AND window_start IN (SELECT window_start "
                    "FROM touched)", [length])
    con.execute("DELETE FROM stale_windows WHERE window_length = ?", [length])
    window_cols = [r[0] for r in con.execute("DESCRIBE windows").fetchall()]
    if out:
        wf = pd.DataFrame([{c: (json.dumps(_jsonable(w[c])) if c in JSON_COLUMNS and w.get(c) is not None
                                else w.get(c)) for c in window_cols} for w in out], columns=window_cols)
        con.register("new_windows", wf)
        con.execute(f"INSERT INTO windows SELECT {', '.join(_q(c) for c in window_cols)} FROM new_windows")
        con.unregister("new_windows")
    drift_cols = [r[0] for r in con.execute("DESCRIBE drift").fetchall()]
    if drift_rows:
        df = pd.DataFrame([{c: d.get(c) for c in drift_cols} for d in drift_rows], columns=drift_cols)
        df = df.astype({"statistic": float, "p_value": float, "threshold": float})
        con.register("new_drift", df)
        con.execute(f"INSERT INTO drift SELECT {', '.join(_q(c) for c in drift_cols)} FROM new_drift")
        con.unregister("new_drift")


JSON_COLUMNS = ("p_histogram", "drifted", "feature_nan")  # windows' columns written as JSON text


def _q(name: str) -> str:
    return f'"{name}"'


def _reference(version: str, settings) -> dict | None:
    """The version's reference (training sample, test predictions, calibration, metrics), None when this
    project does not know the version."""
    from ..errors import MlopsNbError
    from . import estimate

    try:
        return dict(estimate.reference(version, settings))  # a copy: the module caches its dicts
    except (MlopsNbError, FileNotFoundError, LookupError):
        return None


def _threshold(ref: dict | None, settings) -> float:
    for source in (ref or {}, (ref or {}).get("metrics") or {}):
        value = source.get("threshold")
        if value is not None:
            return float(value)
    return float(settings.model.threshold)


def _realized(rows, threshold: float, settings) -> dict:
    """Realized ROC AUC, Brier score and accuracy at the version's threshold of the labelled rows, as
    ``sklearn.metrics`` computes them; None, with the reason, below monitor.min_labelled or for one class."""
    import numpy as np

    empty = {"roc_auc": None, "brier": None, "accuracy": None}
    labelled = rows[rows["late"].notna()]
    n, need = len(labelled), settings.monitor.min_labelled
    if n < need:
        return {**empty, "realized_note": f"{n} labelled row(s), fewer than monitor.min_labelled={need}"}
    y = labelled["late"].astype(bool).to_numpy()
    p = labelled["p_late"].to_numpy(dtype=float)
    if y.all() or not y.any():
        return {**empty, "realized_note": f"all {n} labelled rows are of one class (late={bool(y[0])}): ROC AUC "
                                          "is undefined"}
    return {"roc_auc": roc_auc(y, p), "brier": float(np.mean((p - y) ** 2)),
            "accuracy": float(np.mean((p >= threshold) == y)), "realized_note": None}


def roc_auc(y, p) -> float:
    """ROC AUC of scores ``p`` for labels ``y`` (both classes present): ``registry.gate.roc_auc``, the value
    of ``sklearn.metrics.roc_auc_score`` without importing scikit-learn (over a second of a call's time)."""
    from ..registry import gate

    return gate.roc_auc(y, p)


def _estimated(p, threshold: float, ref: dict | None) -> dict:
    from . import estimate

    if not len(p):
        return {"estimated_roc_auc": None, "estimated_accuracy": None, "estimate_method": None}
    e = estimate.expected_metrics(p, threshold, (ref or {}).get("calibration"))
    return {"estimated_roc_auc": _num(e.get("roc_auc")), "estimated_accuracy": _num(e.get("accuracy")),
            "estimate_method": e.get("method")}


def _num(v):
    import math

    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


DRIFT_FIELDS = ("method", "statistic", "p_value", "threshold", "drifted", "basis", "n_reference", "n_analysis",
                "note")


def _drift(rows, ref: dict | None, settings, version: str, n: int | None = None) -> list[dict]:
    """Drift of each input feature against the version's training sample and of p_late against its test
    predictions (exact, from the logged rows; or sketch, when ``rows`` are a profile's summaries); judged
    on windows of monitor.min_rows rows or more."""
    columns = list(store.INPUT_COLUMNS) + ["p_late"]
    sketch = isinstance(rows, dict)
    n, need = (len(rows) if n is None else n), settings.monitor.min_rows

    def blank(column, note):
        return {"column": column, **{k: None for k in DRIFT_FIELDS}, "basis": "sketch" if sketch else "exact",
                "n_analysis": n, "note": note}

    if n < need:
        return [blank(c, f"too few rows ({n} < monitor.min_rows={need})") for c in columns]
    out = []
    train = (ref or {}).get("train_sample")
    if train is None:
        out += [blank(c, f"no training reference for version {version}") for c in store.INPUT_COLUMNS]
    else:
        have = rows if sketch else rows.columns
        inputs = [c for c in store.INPUT_COLUMNS if c in train.columns and c in have]
        out += _compare(ref, "train_sample", inputs, rows, settings, blank)
        out += [blank(c, "not in the training reference" if c not in train.columns else "not in the profile")
                for c in store.INPUT_COLUMNS if c not in inputs]
    test = (ref or {}).get("test_predictions")
    if test is None or "p_late" not in getattr(test, "columns", ()) or "p_late" not in (
            rows if sketch else rows.columns):
        out.append(blank("p_late", f"no test predictions for version {version}" if test is None
                         else "no p_late in the analysis"))
    else:
        out += _compare(ref, "test_predictions", ["p_late"], rows, settings, blank)
    return out


def _compare(ref: dict, part: str, columns: list[str], rows, settings, blank) -> list[dict]:
    """``drift.Comparison`` of the reference's part, prepared once a call and version, against the rows."""
    from ..errors import DataError
    from . import drift

    prepared = ref.setdefault("_monitor_comparisons", {})
    key = (part, tuple(columns))
    try:
        if key not in prepared:
            prepared[key] = drift.Comparison(ref[part][columns], columns, settings.monitor.method, settings,
                                             analysis_columns=columns)
        analysis = {c: rows[c] for c in columns} if isinstance(rows, dict) else rows[columns]
        return [_row(r) for r in prepared[key].against(analysis)]
    except DataError as e:
        return [blank(c, f"not comparable: {e}") for c in columns]


def _row(result) -> dict:
    d = result if isinstance(result, dict) else {k: getattr(result, k, None) for k in ("column",) + DRIFT_FIELDS}
    out = {k: d.get(k) for k in ("column",) + DRIFT_FIELDS}
    out["drifted"] = None if out["drifted"] is None else bool(out["drifted"])
    for k in ("statistic", "p_value", "threshold"):
        out[k] = _num(out[k])
    for k in ("n_reference", "n_analysis"):
        out[k] = None if out[k] is None else int(out[k])
    return out
