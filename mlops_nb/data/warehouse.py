"""DuckDB warehouse: short-lived connections, the bookkeeping tables, and nothing else.

DuckDB allows one writing process per file, so no connection outlives the block that opened it and
readers open the file read-only. Every schema change and insert of a task happens in one transaction.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

import duckdb

from .. import config
from ..errors import MlopsNbError, NotFoundError

BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS snapshots (
    snapshot_id VARCHAR PRIMARY KEY,  -- sha256 of the input files' bytes and the ingest options
    schema_name VARCHAR NOT NULL,     -- where its tables live: snap_<first 12 hex>
    source      VARCHAR NOT NULL,
    inputs      JSON NOT NULL,        -- table -> {file, sha256, bytes}
    options     JSON NOT NULL,
    row_counts  JSON NOT NULL,
    created_at  TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS feature_sets (
    feature_set_id VARCHAR PRIMARY KEY,  -- sha256 of snapshot, feature SQL and split months
    table_name     VARCHAR NOT NULL,
    snapshot_id    VARCHAR NOT NULL,
    sql_sha256     VARCHAR NOT NULL,
    options        JSON NOT NULL,
    row_counts     JSON NOT NULL,
    created_at     TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id      VARCHAR PRIMARY KEY,
    started_at  TIMESTAMP NOT NULL,
    ended_at    TIMESTAMP,
    status      VARCHAR NOT NULL,    -- succeeded | failed | up-to-date
    git_commit  VARCHAR,
    git_dirty   BOOLEAN,
    params      JSON NOT NULL,
    snapshot_id VARCHAR,
    versions    JSON NOT NULL,
    metrics     JSON,
    model_version VARCHAR,           -- what the gate registered
    gate        JSON,                -- its decision: promoted or not, and why
    error       VARCHAR
);
CREATE TABLE IF NOT EXISTS model_versions (
    version    VARCHAR PRIMARY KEY,  -- first 16 hex of the model file's sha256
    tag        VARCHAR NOT NULL,     -- BentoML tag name:version
    created_at TIMESTAMP NOT NULL,
    run_id     VARCHAR,
    metrics    JSON NOT NULL,
    lineage    JSON NOT NULL,
    gate       JSON                  -- the gate's decision and reasons
);
CREATE TABLE IF NOT EXISTS model_aliases (
    alias      VARCHAR PRIMARY KEY,  -- champion | challenger
    version    VARCHAR NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS alias_audit_seq;
CREATE TABLE IF NOT EXISTS alias_audit (  -- append-only
    seq          BIGINT PRIMARY KEY,
    changed_at   TIMESTAMP NOT NULL,
    alias        VARCHAR NOT NULL,
    from_version VARCHAR,
    to_version   VARCHAR,
    reason       VARCHAR NOT NULL,
    actor        VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS run_tasks (
    run_id  VARCHAR NOT NULL,
    task    VARCHAR NOT NULL,
    status  VARCHAR NOT NULL,        -- ran | skipped | failed | not-run
    seconds DOUBLE,
    PRIMARY KEY (run_id, task)
);
"""


class WarehouseError(MlopsNbError):
    """The warehouse file cannot be opened (missing, locked by another process, corrupt)."""


def warehouse_path(settings: config.Settings | None = None) -> Path:
    return (settings or config.get_settings()).path("warehouse")


@contextlib.contextmanager
def connect(write: bool = False, settings: config.Settings | None = None,
            path: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is closed when the block ends; read-only unless ``write``."""
    path = Path(path) if path else warehouse_path(settings)
    if not write and not path.exists():
        raise NotFoundError(f"No warehouse at {path}: run the pipeline first (`mlops-nb run`).")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only=not write)
    try:
        if write:
            con.execute(BOOKKEEPING)
        yield con
    finally:
        con.close()


def _open(path: Path, read_only: bool, attempts: int = 20) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting briefly for another process's short write to end."""
    for i in range(attempts):
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or i == attempts - 1:
                raise WarehouseError(
                    f"Cannot open the warehouse {path}: {str(e).splitlines()[0]}. Another process holds "
                    "it; wait for it to finish (connections are short) or stop it.") from None
            time.sleep(0.1 * (i + 1))
        except duckdb.Error as e:
            raise WarehouseError(f"Cannot open the warehouse {path}: {str(e).splitlines()[0]}") from None
    raise AssertionError("unreachable")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def has_table(con, name: str, schema: str = "main") -> bool:
    return bool(con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name]).fetchone()[0])


def records(con, sql: str, params=None) -> list[dict]:
    """Rows as dicts, JSON columns decoded: what the CLI's --json prints."""
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    types = [str(d[1]) for d in cur.description]
    out = []
    for row in cur.fetchall():
        rec = {}
        for n, t, v in zip(names, types, row):
            if t == "JSON" and isinstance(v, str):
                v = json.loads(v)
            rec[n] = v
        out.append(rec)
    return out


def fingerprint_tables(path: Path) -> dict:
    """Every table's row count and content hash: what tests compare to prove nothing changed."""
    with connect(path=path) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                             "ORDER BY 1, 2").fetchall()
        out = {}
        for schema, name in tables:
            q = f'"{schema}"."{name}"'
            n, h = con.execute(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM {q} AS t").fetchone()
            out[f"{schema}.{name}"] = (n, int(h))
        return out
