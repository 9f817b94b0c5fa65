"""Feature sets: ``sql/features.sql`` run over a snapshot, stored content-addressed in the warehouse.

The SQL assembles one row a flight in the shape the service receives; the derived features (hour, day
of week, ...) are computed by ``mlops_nb.lib.transforms`` inside the model, so training and serving share
one implementation.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources

from ..errors import DataError
from .warehouse import has_table, transaction

SQL_FILE = "features.sql"
SCHEMA = "features"
SPLITS = ("train", "valid", "test")


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


def build(con, snapshot, split: dict) -> FeatureSet:
    """The feature set of ``snapshot`` under ``split`` (train/valid/test -> months), made unless there."""
    options = {s: [int(m) for m in split[s]] for s in SPLITS}
    text = sql_text()
    sql_sha = hashlib.sha256(text.encode()).hexdigest()
    fs_id = hashlib.sha256(json.dumps([snapshot.snapshot_id, sql_sha, options]).encode()).hexdigest()
    name = f"f_{fs_id[:12]}"
    row = con.execute("SELECT row_counts FROM feature_sets WHERE feature_set_id = ? AND collected_at IS NULL",
                      [fs_id]).fetchone()
    if row:
        return FeatureSet(fs_id, name, snapshot.snapshot_id, json.loads(row[0]), added=False)
    planes = (snapshot.table("planes") if has_table(con, "planes", snapshot.schema_name)
              else "(SELECT NULL::VARCHAR AS tailnum, NULL::INTEGER AS year, NULL::INTEGER AS seats "
                   "WHERE false)")
    with transaction(con):
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        con.execute(f'CREATE TABLE "{SCHEMA}"."{name}" AS {render(snapshot, options, planes)}')
        counts = dict(con.execute(f'SELECT split, count(*) FROM "{SCHEMA}"."{name}" GROUP BY split').fetchall())
        counts = {s: counts.get(s, 0) for s in SPLITS}
        counts["dropped_no_arrival"] = con.execute(
            f"SELECT count(*) FROM {snapshot.table('flights')} WHERE arr_delay IS NULL").fetchone()[0]
        empty = [s for s in SPLITS if counts[s] == 0]
        if empty:
            months = [r[0] for r in con.execute(
                f"SELECT DISTINCT month FROM {snapshot.table('flights')} ORDER BY 1").fetchall()]
            raise DataError(
                f"The {', '.join(empty)} split(s) have no rows: the split months are {options} but the "
                f"snapshot holds flights of months {months}. Set 'split.*_months' (or 'data.months') so "
                "that every split gets some months.")
        con.execute("INSERT OR REPLACE INTO feature_sets (feature_set_id, table_name, snapshot_id, sql_sha256, "
                    "options, row_counts, created_at, collected_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
                    [fs_id, name, snapshot.snapshot_id, sql_sha, json.dumps(options), json.dumps(counts),
                     datetime.now(timezone.utc).replace(tzinfo=None)])
    return FeatureSet(fs_id, name, snapshot.snapshot_id, counts, added=True)


def load(con, table_name: str, splits=SPLITS):
    """The rows of some splits as a pandas frame, in the table's deterministic order."""
    wanted = ",".join(f"'{s}'" for s in splits if s in SPLITS)
    return con.execute(f'SELECT * FROM "{SCHEMA}"."{table_name}" WHERE split IN ({wanted}) '
                       "ORDER BY ALL").df()
