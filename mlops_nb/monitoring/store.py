"""The monitoring store: its own DuckDB file, ``<paths.monitoring_dir>/monitoring.duckdb``, never the warehouse.

Runs hold the warehouse's lock and transaction for minutes; the service and the monitor write while runs go
on, so what the monitor derives from the service's logs lives in a file of its own. Everything in it is
derived from the logs under the serving dir (``data.logs``), except the alerts and their acknowledgements:
deleting the file loses nothing else the logs still hold (the next ``mlops-nb monitor`` reads them all again).

Consistency:

- one writer at a time: ``lock`` takes an exclusive ``flock`` on ``<monitoring_dir>/.monitor.lock`` (the OS
  drops it when its process dies, however it dies); a second monitor waits up to ``LOCK_WAIT`` seconds, then
  says another one is running;
- one DuckDB transaction a call: the new lines of every log file, the files' new read offsets and the
  recomputed windows are committed together, so a call killed at any point leaves the store as it was
  before the call (the offsets advance only with the rows they describe), and the next call reads the same
  bytes again;
- the logs are append-only and read by byte offset up to their last complete line, so reading again after a
  crash is idempotent; a file that became shorter than its offset was replaced: its rows are dropped and it
  is read again from its start.

The alerts the windows raise (``monitoring.alerts``: its own ``alerts`` table) live in this file too, stored
in the call's transaction; their sinks run after the commit.

Migration: a store made before the record gained fields (the point-in-time features of issue #12) lacks their
columns in ``predictions``, the ``features`` column (where each store-provided field came from) and the
windows' ``feature_nan``; ``connect`` adds them (``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``, NULL for the
rows already there) before anything else, so an old store is kept, not rebuilt; a log line's fields are
staged by column name (a migrated table's new columns come last). A reader that opens an unmigrated store
read-only, before any monitor call, fails on the columns it lacks.

Incrementality: ``ingested_files`` holds, for each log file (path relative to the serving dir), how many
bytes were read, its size and mtime when last read; a file whose size did not change is not opened. Each
call adds its rows with its call number (``seq``), marks the windows they touch (of both lengths) in
``stale_windows``, also the windows of every prediction whose resolved label changed (late feedback), and
recomputes exactly the stale windows of the length asked for (the other length's stay marked until a call
asks for it).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from ..errors import DataError, RunLockedError
from ..lib.record import RECORD

SCHEMA_VERSION = 1
STORE_FILE = "monitoring.duckdb"
LOCK_FILE = ".monitor.lock"
INCOMING_DIR = ".incoming"  # the bytes of one call's new lines, copied for DuckDB; deleted after the call
CHECKPOINT_THRESHOLD = "256MB"
LOCK_WAIT = 10.0  # seconds a second monitor waits for the first one

# input column -> DuckDB type (the flight record, flattened)
INPUT_COLUMNS = {name: ("VARCHAR" if spec[0] == "category" else "DOUBLE") for name, spec in RECORD.items()}
# a logged row's "features" (data.logs.FEATURE_SOURCES): the store-provided fields by where each came from
FEATURES_TYPE = "STRUCT(store VARCHAR[], sent VARCHAR[], missing VARCHAR[], stale VARCHAR[])"
# columns a store of this schema version may lack, added by ``migrate``: table -> column -> type
ADDED_COLUMNS = {"predictions": {**INPUT_COLUMNS, "features": FEATURES_TYPE}, "windows": {"feature_nan": "JSON"}}
WINDOW_UNITS = {"1h": "hour", "1d": "day"}
ALL = "*"  # model_version and arm of a window row that describes the whole service (the request log)

_inputs_ddl = ",\n    ".join(f'"{c}" {t}' for c, t in INPUT_COLUMNS.items())

DDL = f"""
CREATE TABLE IF NOT EXISTS store_meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
CREATE TABLE IF NOT EXISTS calls (           -- one row a committed monitor call
    seq         BIGINT PRIMARY KEY,
    started_at  TIMESTAMP NOT NULL,
    finished_at TIMESTAMP NOT NULL,
    window_length VARCHAR NOT NULL,
    summary     JSON NOT NULL
);
CREATE TABLE IF NOT EXISTS ingested_files (  -- how far each log file was read
    path       VARCHAR PRIMARY KEY,          -- relative to the serving dir, e.g. predictions/20260101T0000-w1.jsonl
    kind       VARCHAR NOT NULL,             -- predictions | requests | feedback | profiles
    bytes_read BIGINT NOT NULL,              -- offset of the first byte not yet read (after the last whole line)
    size       BIGINT NOT NULL,              -- size and mtime when last read
    mtime      DOUBLE NOT NULL,
    lines      BIGINT NOT NULL,              -- lines read so far (kept or skipped)
    warnings   BIGINT NOT NULL,              -- lines or parts skipped so far
    last_seq   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS predictions (     -- one row a predicted row of the prediction log
    seq BIGINT NOT NULL, file VARCHAR NOT NULL, line BIGINT NOT NULL,
    request_id VARCHAR, key VARCHAR, "at" TIMESTAMP NOT NULL, model_version VARCHAR NOT NULL,
    arm VARCHAR NOT NULL, "row" BIGINT, p_late DOUBLE NOT NULL, latency_ms DOUBLE,
    {_inputs_ddl},
    features {FEATURES_TYPE},                -- where the store-provided inputs came from (null: no store)
    shadow_arm VARCHAR, shadow_version VARCHAR, shadow_p_late DOUBLE
);
CREATE TABLE IF NOT EXISTS requests (        -- one row an API request, answered or refused
    seq BIGINT NOT NULL, file VARCHAR NOT NULL, line BIGINT NOT NULL,
    request_id VARCHAR, "at" TIMESTAMP NOT NULL, route VARCHAR, status INTEGER NOT NULL, latency_ms DOUBLE,
    "rows" BIGINT
);
CREATE TABLE IF NOT EXISTS feedback (        -- every feedback line, duplicates included (the last one wins)
    seq BIGINT NOT NULL, file VARCHAR NOT NULL, line BIGINT NOT NULL,
    request_id VARCHAR, key VARCHAR, late BOOLEAN NOT NULL, arr_delay DOUBLE, received_at TIMESTAMP NOT NULL,
    source VARCHAR
);
CREATE TABLE IF NOT EXISTS stale_windows (   -- windows whose rows or labels changed since last computed
    window_length VARCHAR NOT NULL, window_start TIMESTAMP NOT NULL,
    PRIMARY KEY (window_length, window_start)
);
CREATE TABLE IF NOT EXISTS windows (
    window_length VARCHAR NOT NULL,          -- 1h | 1d
    window_start  TIMESTAMP NOT NULL,        -- UTC, aligned
    model_version VARCHAR NOT NULL,          -- '*': the whole service, from the request log
    arm           VARCHAR NOT NULL,          -- champion | challenger | shadow | '*'
    requests      BIGINT NOT NULL,
    "rows"        BIGINT NOT NULL,
    errors        BIGINT NOT NULL,           -- requests answered with status >= 400
    latency_p50_ms DOUBLE, latency_p99_ms DOUBLE,
    p_mean DOUBLE, p_p10 DOUBLE, p_p50 DOUBLE, p_p90 DOUBLE,
    p_histogram   JSON,                      -- counts of p_late in monitor.bins equal bins of [0, 1]
    labelled      BIGINT NOT NULL,
    label_coverage DOUBLE,
    roc_auc DOUBLE, brier DOUBLE, accuracy DOUBLE,
    realized_note VARCHAR,                   -- why the realized metrics are missing
    threshold     DOUBLE,
    estimated_roc_auc DOUBLE, estimated_accuracy DOUBLE, estimate_method VARCHAR,
    drifted       JSON,                      -- names of the drifted columns
    feature_nan   JSON,                      -- store-provided input -> its rows NaN as missing, as stale
    computed_at   TIMESTAMP NOT NULL,
    computed_seq  BIGINT NOT NULL,
    PRIMARY KEY (window_length, window_start, model_version, arm)
);
CREATE TABLE IF NOT EXISTS drift (
    window_length VARCHAR NOT NULL, window_start TIMESTAMP NOT NULL,
    model_version VARCHAR NOT NULL, arm VARCHAR NOT NULL,
    "column" VARCHAR NOT NULL,               -- an input feature, or p_late
    method VARCHAR, statistic DOUBLE, p_value DOUBLE, threshold DOUBLE, drifted BOOLEAN,
    basis VARCHAR,                           -- exact (logged rows) | sketch (whylogs profiles)
    n_reference BIGINT, n_analysis BIGINT, note VARCHAR,
    PRIMARY KEY (window_length, window_start, model_version, arm, "column")
);
"""


def store_path(settings) -> Path:
    return settings.path("monitoring_dir") / STORE_FILE


@contextlib.contextmanager
def lock(settings, wait: float = LOCK_WAIT) -> Iterator[None]:
    """One monitor writes at a time: an exclusive flock on ``<monitoring_dir>/.monitor.lock``."""
    path = settings.path("monitoring_dir") / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(encoding="utf-8").strip() or "unknown"
                    raise RunLockedError(
                        f"Another mlops-nb monitor is writing the monitoring store {store_path(settings)} "
                        f"({holder}); waited {wait:g} s. Run it again when that one has finished: the lock is "
                        "released as soon as that process ends.") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def connect(settings, read_only: bool = False, memory_limit: str | None = None):
    """A short-lived connection to the store (created with its schema on first use), in UTC. Readers open it
    read-only; DuckDB lets one process write at a time, so hold it only for one call."""
    import duckdb

    path = store_path(settings)
    if read_only and not path.exists():
        raise DataError(f"The monitoring store {path} does not exist yet; run `mlops-nb monitor` first.")
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path), read_only=read_only)
    try:
        con.execute("SET TimeZone = 'UTC'")
        if memory_limit:  # DuckDB's buffer (it spills to <store>.tmp beyond it); its default is 80% of RAM
            con.execute(f"SET memory_limit = '{memory_limit}'")
        if not read_only:  # a call's commit appends to the WAL; the file is rewritten when the WAL passes this
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            _ensure_schema(con, path)
        yield con
    finally:
        con.close()


def _ensure_schema(con, path: Path) -> None:
    has_meta = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'store_meta'"
                           ).fetchone()[0]
    if has_meta:
        row = con.execute("SELECT value FROM store_meta WHERE key = 'schema_version'").fetchone()
        found = int(row[0]) if row else None
        if found == SCHEMA_VERSION:
            migrate(con)
            return
        raise DataError(f"The monitoring store {path} has schema version {found}; this mlops-nb expects "
                        f"{SCHEMA_VERSION}. Delete the file: the next `mlops-nb monitor` rebuilds it from the "
                        "service's logs.")
    con.execute("BEGIN")
    con.execute(DDL)
    con.execute("INSERT INTO store_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    con.execute("COMMIT")


def migrate(con) -> list[str]:
    """Add the columns of ``ADDED_COLUMNS`` that the store's tables lack (NULL in the rows already there), in
    one transaction; returns them as ``table.column``."""
    have = {(t, c) for t, c in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                           "WHERE table_schema = 'main'").fetchall()}
    missing = [(t, c, kind) for t, columns in ADDED_COLUMNS.items() for c, kind in columns.items()
               if (t, c) not in have]
    if missing:
        con.execute("BEGIN")
        for table, column, kind in missing:
            con.execute(f'ALTER TABLE {table} ADD COLUMN IF NOT EXISTS "{column}" {kind}')
        con.execute("COMMIT")
    return [f"{t}.{c}" for t, c, _ in missing]


def next_seq(con) -> int:
    return con.execute("SELECT coalesce(max(seq), 0) + 1 FROM calls").fetchone()[0]
