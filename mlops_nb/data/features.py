"""Feature sets: ``sql/features.sql`` run over a snapshot, stored content-addressed in the warehouse.

The SQL assembles one row a flight in the shape the service receives, but for the point-in-time features
(the weather, recent departures): the features task adds those by the feature store's offline join (a
``join``, ``featurestore.training.PointInTime``), whose options are part of the feature set's identity. The
derived features (hour, day of week, ...) are computed by ``mlops_nb.lib.transforms`` inside the model, so
training and serving share one implementation. A record file's project has its own SQL (``sql/features.sql``,
written by `mlops-nb init`, no feature store): ``build_records`` runs it with the split of its rows (by time,
or seeded random) filled in.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from ..errors import DataError
from ..lib.record import RECORD
from .warehouse import has_table, transaction

SQL_FILE = "features.sql"
SCHEMA = "features"
SPLITS = ("train", "valid", "test")
ROWS = "__flight_rows"  # the SQL's rows, a temporary table, when a join adds features to them


def sql_text() -> str:
    return resources.files("mlops_nb.data").joinpath("sql", SQL_FILE).read_text(encoding="utf-8")


@dataclass
class FeatureSet:
    feature_set_id: str
    table_name: str
    snapshot_id: str
    row_counts: dict
    added: bool

    @property
    def table(self) -> str:
        return f'"{SCHEMA}"."{self.table_name}"'


def render(snapshot, options: dict, planes: str) -> str:
    return sql_text().format(snapshot=f'"{snapshot.schema_name}"', planes=planes,
                             **{k: ",".join(map(str, v)) for k, v in options.items()})


def _identity(con, snapshot, sql: str, options: dict):
    """(id, table name, SQL's sha256, the feature set when it is already made): content-addressed by the
    snapshot, the SQL text and the options."""
    sql_sha = hashlib.sha256(sql.encode()).hexdigest()
    fs_id = hashlib.sha256(json.dumps([snapshot.snapshot_id, sql_sha, options]).encode()).hexdigest()
    name = f"f_{fs_id[:12]}"
    row = con.execute("SELECT row_counts FROM feature_sets WHERE feature_set_id = ? AND collected_at IS NULL",
                      [fs_id]).fetchone()
    existing = FeatureSet(fs_id, name, snapshot.snapshot_id, json.loads(row[0]), added=False) if row else None
    return fs_id, name, sql_sha, existing


def _record(con, fs_id: str, name: str, snapshot, sql_sha: str, options: dict, counts: dict) -> None:
    con.execute("INSERT OR REPLACE INTO feature_sets (feature_set_id, table_name, snapshot_id, sql_sha256, "
                "options, row_counts, created_at, collected_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                [fs_id, name, snapshot.snapshot_id, sql_sha, json.dumps(options), json.dumps(counts),
                 datetime.now(timezone.utc).replace(tzinfo=None)])


def build(con, snapshot, split: dict, join=None) -> FeatureSet:
    """The feature set of ``snapshot`` under ``split`` (train/valid/test -> months), made unless there.
    ``join`` (``featurestore.training.PointInTime``) adds the point-in-time features to the SQL's rows: its
    ``options`` join the feature set's identity, its ``create(con, rows, table, snapshot)`` makes the table.
    A record field that neither gives is a column of NULLs."""
    months = {s: [int(m) for m in split[s]] for s in SPLITS}
    options = months if join is None else {**months, "features": join.options}
    text = sql_text()
    fs_id, name, sql_sha, existing = _identity(con, snapshot, text, options)
    if existing is not None:
        return existing
    planes = (snapshot.table("planes") if has_table(con, "planes", snapshot.schema_name)
              else "(SELECT NULL::VARCHAR AS tailnum, NULL::INTEGER AS year, NULL::INTEGER AS seats "
                   "WHERE false)")
    table = f'"{SCHEMA}"."{name}"'
    with transaction(con):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        if join is None:
            con.execute(f"CREATE TABLE {table} AS {render(snapshot, months, planes)}")
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {ROWS} AS {render(snapshot, months, planes)}")
            try:
                join.create(con, ROWS, table, snapshot.schema_name)
            finally:
                con.execute(f"DROP TABLE IF EXISTS {ROWS}")
        columns = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        for field, (kind, *_) in RECORD.items():
            if field not in columns:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{field}" {"VARCHAR" if kind == "category" else "DOUBLE"}')
        counts = dict(con.execute(f'SELECT split, count(*) FROM "{SCHEMA}"."{name}" GROUP BY split').fetchall())
        counts = {s: counts.get(s, 0) for s in SPLITS}
        counts["dropped_no_arrival"] = con.execute(
            f"SELECT count(*) FROM {snapshot.table('flights')} WHERE arr_delay IS NULL").fetchone()[0]
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            held = [r[0] for r in con.execute(
                f"SELECT DISTINCT month FROM {snapshot.table('flights')} ORDER BY 1").fetchall()]
            raise DataError(
                f"The {', '.join(empty)} split(s) have no rows: the split months are {months} but the "
                f"snapshot holds flights of months {held}. Set 'split.*_months' (or 'data.months') so "
                "that every split gets some months.")
        _record(con, fs_id, name, snapshot, sql_sha, options, counts)
    return FeatureSet(fs_id, name, snapshot.snapshot_id, counts, added=True)


def load(con, table_name: str, splits=SPLITS):
    """The rows of some splits as a pandas frame, in the table's deterministic order."""
    wanted = ",".join(f"'{s}'" for s in splits if s in SPLITS)
    return con.execute(f'SELECT * FROM "{SCHEMA}"."{table_name}" WHERE split IN ({wanted}) '
                       "ORDER BY ALL").df()


# The split of a record's rows (``{split}`` in a record project's features SQL): by time, the oldest rows train
# and the newest test (rows of one time stay together); at random, a seeded hash of each row's values (equal
# rows stay together).
_TIME_SPLIT = ("CASE WHEN percent_rank() OVER (ORDER BY CAST(r.{time} AS TIMESTAMP)) < {train_end} THEN 'train' "
               "WHEN percent_rank() OVER (ORDER BY CAST(r.{time} AS TIMESTAMP)) < {valid_end} THEN 'valid' "
               "ELSE 'test' END")
_RANDOM_SPLIT = ("CASE WHEN md5_number('{seed}|' || CAST(r AS VARCHAR)) % 1000000 < {test} THEN 'test' "
                 "WHEN md5_number('{seed}|' || CAST(r AS VARCHAR)) % 1000000 < {test_valid} THEN 'valid' "
                 "ELSE 'train' END")


def split_expression(spec, split: dict) -> str:
    """The SQL of each row's split for a record (``split``: by, valid_share, test_share, random_seed), over the
    raw table's alias ``r``."""
    valid, test = float(split["valid_share"]), float(split["test_share"])
    if split["by"] == "time":
        if not spec.time:
            raise DataError("The 'split.by' setting is 'time' but the record file names no time column; set "
                            "'time:' in the record file or 'split.by = random'.")
        return _TIME_SPLIT.format(time=_ident(spec.time), train_end=repr(1.0 - valid - test),
                                  valid_end=repr(1.0 - test))
    if split["by"] == "random":
        return _RANDOM_SPLIT.format(seed=int(split["random_seed"]), test=int(round(test * 1e6)),
                                    test_valid=int(round((test + valid) * 1e6)))
    raise DataError(f"The 'split.by' setting of a record must be 'time' or 'random'; got {split['by']!r} instead.")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def build_records(con, snapshot, spec, sql: str, split: dict) -> FeatureSet:
    """The feature set of a record's snapshot: the project's features SQL (``sql``, its text) with
    ``{snapshot}`` (the snapshot's schema) and ``{split}`` (``split_expression``) filled in, made unless there.
    Rows without a target are not trained on: counted as ``dropped_no_label``."""
    options = {"by": split["by"], "valid_share": float(split["valid_share"]), "test_share": float(split["test_share"])}
    if split["by"] == "random":
        options["random_seed"] = int(split["random_seed"])
    rendered = sql.replace("{snapshot}", f'"{snapshot.schema_name}"').replace("{split}", split_expression(spec, options))
    fs_id, name, sql_sha, existing = _identity(con, snapshot, sql, options)
    if existing is not None:
        return existing
    with transaction(con):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        try:
            con.execute(f'CREATE TABLE "{SCHEMA}"."{name}" AS {rendered}')
        except Exception as e:  # the project's own SQL: name it, keep DuckDB's first line
            raise DataError(f"The features SQL failed: {str(e).splitlines()[0]}. Fix sql/features.sql.") from None
        columns = {r[0] for r in con.execute(f'DESCRIBE "{SCHEMA}"."{name}"').fetchall()}
        missing = [c for c in spec.names + [spec.label, "split"] if c not in columns]
        if missing:
            raise DataError(f"The features SQL must give a column for every field of the record, '{spec.label}' "
                            f"and 'split'; {missing} are missing (it gave {sorted(columns)}). Fix sql/features.sql.")
        counts = dict(con.execute(f'SELECT split, count(*) FROM "{SCHEMA}"."{name}" GROUP BY split').fetchall())
        counts = {s: counts.get(s, 0) for s in SPLITS}
        counts["dropped_no_label"] = con.execute(
            f"SELECT count(*) FROM {snapshot.table('records')} WHERE {_ident(spec.target)} IS NULL").fetchone()[0]
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            raise DataError(
                f"The {', '.join(empty)} split(s) have no rows: {sum(counts[s] for s in SPLITS)} rows split "
                f"{options}. Add rows, or change 'split.valid_share' / 'split.test_share'.")
        one_class = [s for s in SPLITS if counts[s] and con.execute(
            f'SELECT count(DISTINCT "{spec.label}") FROM "{SCHEMA}"."{name}" WHERE split = ?', [s]).fetchone()[0] < 2]
        if one_class:
            raise DataError(f"The {', '.join(one_class)} split(s) hold one class of the target only: a model can "
                            "be neither fitted nor scored there. Add rows, or change the split's shares.")
        _record(con, fs_id, name, snapshot, sql_sha, options, counts)
    return FeatureSet(fs_id, name, snapshot.snapshot_id, counts, added=True)
