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
CREATE TABLE IF NOT EXISTS model_versions (  -- one trained artifact; written once, never rewritten
    version    VARCHAR PRIMARY KEY,  -- first 16 hex of the model file's sha256
    tag        VARCHAR NOT NULL,     -- BentoML tag name:version
    created_at TIMESTAMP NOT NULL,
    run_id     VARCHAR,              -- the run that first registered it
    metrics    JSON NOT NULL,
    lineage    JSON NOT NULL,
    gate       JSON                  -- the first registration's decision (each run's is in model_registrations)
);
CREATE TABLE IF NOT EXISTS model_registrations (  -- one row a run that registered a version
    version       VARCHAR NOT NULL,
    run_id        VARCHAR NOT NULL,
    registered_at TIMESTAMP NOT NULL,
    metrics       JSON NOT NULL,
    gate          JSON,
    promoted      BOOLEAN NOT NULL,
    PRIMARY KEY (version, run_id)
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
# Columns added after the first release; a warehouse made before them gains them on its next write.
MIGRATIONS = """
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS sha256 VARCHAR;
ALTER TABLE alias_audit ADD COLUMN IF NOT EXISTS action VARCHAR;
ALTER TABLE alias_audit ADD COLUMN IF NOT EXISTS run_id VARCHAR;
ALTER TABLE snapshots ADD COLUMN IF NOT EXISTS collected_at TIMESTAMP;     -- its tables dropped by gc
ALTER TABLE feature_sets ADD COLUMN IF NOT EXISTS collected_at TIMESTAMP;  -- (the row, its lineage, stays)
ALTER TABLE runs ADD COLUMN IF NOT EXISTS trigger VARCHAR;  -- NULL: `mlops-nb run`; 'retrain: ...'
ALTER TABLE runs ADD COLUMN IF NOT EXISTS features JSON;  -- feature set, definitions' digest, views, lead
"""
# What a run may add (and a rollback removes): rows of these tables, keyed by the first column.
ADDITIVE = {"snapshots": "snapshot_id", "feature_sets": "feature_set_id"}


class WarehouseError(MlopsNbError):
    """The warehouse file cannot be opened (missing, locked by another process, corrupt)."""


def warehouse_path(settings: config.Settings | None = None) -> Path:
    return (settings or config.get_settings()).path("warehouse")


@contextlib.contextmanager
def connect(write: bool = False, settings: config.Settings | None = None,
            path: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection that is closed when the block ends; read-only unless ``write``."""
    path = config.project_path(path) if path else warehouse_path(settings)
    if not write and not path.exists():
        raise NotFoundError(f"No warehouse at {path}: run the pipeline first (`mlops-nb run`).")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only=not write)
    try:
        if write:
            _bookkeeping(con)
        yield con
    finally:
        con.close()


def _bookkeeping(con) -> None:
    con.execute(BOOKKEEPING)
    con.execute(MIGRATIONS)


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


def inventory(con) -> dict:
    """What the warehouse holds now, for a rollback to return to: its schemas, tables and views, and the
    keys of the tables a run adds rows to."""
    objects = con.execute("SELECT table_schema, table_name, table_type FROM information_schema.tables "
                          "WHERE table_catalog = current_database()").fetchall()
    out = {"schemas": sorted({s for s, *_ in objects} | _schemas(con)),
           "objects": sorted(f"{s}.{n}" for s, n, _ in objects), "rows": {}, "collected": {}}
    for table, key in ADDITIVE.items():
        if has_table(con, table):
            rows = con.execute(f"SELECT {key}, collected_at IS NOT NULL FROM {table}").fetchall()
            out["rows"][table] = sorted(r[0] for r in rows if not r[1])
            out["collected"][table] = sorted(r[0] for r in rows if r[1])
    return out


def _schemas(con) -> set[str]:
    return {r[0] for r in con.execute("SELECT schema_name FROM information_schema.schemata "
                                      "WHERE catalog_name = current_database()").fetchall()}


def undo_since(con, before: dict) -> list[str]:
    """Remove what was added since ``inventory`` returned ``before``, in one transaction; returns what was
    removed. A task adds schemas, tables and rows (snapshots, feature sets); it never rewrites them."""
    removed = []
    with transaction(con):
        for table, key in ADDITIVE.items():
            if not has_table(con, table):
                continue
            kept = set(before.get("rows", {}).get(table, []))
            collected = set(before.get("collected", {}).get(table, []))
            for value, is_collected in con.execute(f"SELECT {key}, collected_at IS NOT NULL FROM {table}").fetchall():
                if value in collected and not is_collected:  # the run re-made collected data: collected again
                    con.execute(f"UPDATE {table} SET collected_at = now() WHERE {key} = ?", [value])
                elif value not in kept and value not in collected:
                    con.execute(f"DELETE FROM {table} WHERE {key} = ?", [value])
        new_schemas = sorted(_schemas(con) - set(before.get("schemas", [])))
        objects = con.execute("SELECT table_schema, table_name, table_type FROM information_schema.tables "
                              "WHERE table_catalog = current_database()").fetchall()
        known = set(before.get("objects", []))
        for schema, name, kind in objects:
            if f"{schema}.{name}" not in known:
                what = "VIEW" if kind == "VIEW" else "TABLE"
                con.execute(f'DROP {what} IF EXISTS "{schema}"."{name}"')
                if schema not in new_schemas:
                    removed.append(f"{schema}.{name}")
        for schema in new_schemas:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            removed.append(f"schema {schema}")
    return removed


