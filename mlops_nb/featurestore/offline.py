"""The point-in-time join, in DuckDB: each spine row gets the features as of its timestamp, from events
strictly before it, never at or after.

How, per view (its events grouped by entity key and event time):
- windowed features (count, sum, mean over ``window``): running totals per key in time order; an ASOF join
  finds the totals of the last event time before the row's time, and another those before ``time -
  window``; their difference is the window [time - window, time). Sums are DECIMAL(38, 9) (a 128-bit
  integer inside): exact, so a window's sum does not depend on the events before it or on the order of
  summation, and the online store, which runs this join for the keys it serves as of the time it is
  materialized to, gets the same bits. A number is taken to 9 decimal places. A mean is the exact sum, as a
  double, over the count.
- last: the ASOF join's value at the last event time before the row's (several events at one time: their
  mean, as above: not DuckDB's avg, which divides in long double and may differ in the last bit); missing
  when older than the view's ttl.
Two ASOF joins a window instead of the obvious range join (every row joined to every event of its key in
its window, then grouped): bench/features.py measures both.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FeatureStoreError, did_you_mean
from .definitions import WINDOWED, Definitions, Source, View

ROW = "__row"
TS = "__ts"
EXACT = "DECIMAL(38, 9)"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def source_sql(source: Source, *, snapshot: str | None = None, root: Path | None = None,
               pushed: str | None = None) -> str:
    """A source's events as an SQL relation: ``snapshot`` is the data snapshot's schema (table and query
    sources), ``root`` the project folder (files), ``pushed`` the table pushed events are kept in."""
    if source.kind in ("table", "query") and not snapshot:
        raise FeatureStoreError(f"Source {source.name!r} reads the data snapshot, and there is none: run "
                                "`mlops-nb run` (its ingest task) first.")
    if source.kind == "table":
        return f"{quote(snapshot)}.{quote(source.table)}"
    if source.kind == "query":
        return "(" + source.query.replace("{snapshot}", quote(snapshot)) + ")"
    if source.kind == "file":
        path = Path(source.file)
        path = path if path.is_absolute() or root is None else Path(root) / path
        if not path.is_file():
            raise FeatureStoreError(f"Source {source.name!r}: the file {path} does not exist.")
        reader = "read_parquet" if path.suffix.lower() == ".parquet" else "read_csv"
        return f"{reader}({literal(path)})"
    if not pushed:
        raise FeatureStoreError(f"Source {source.name!r} takes pushed events and the store has no table for "
                                "them yet: `mlops-nb features push FILE` creates it.")
    return pushed


def columns_of(con, relation: str) -> dict[str, str]:
    """Column name -> DuckDB type of a relation."""
    import duckdb

    try:
        return {row[0]: row[1] for row in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    except duckdb.Error as e:
        raise FeatureStoreError(f"Could not read {relation}: {str(e).splitlines()[0]}") from None


def check(con, defs: Definitions, relations: dict[str, str], views=None) -> None:
    """Every column the views name is in its source, the timestamps are times: errors name the view and
    the field."""
    for view in views or defs.views.values():
        source = defs.sources[view.source]
        found = columns_of(con, relations[view.source])
        where = f"view {view.name!r} (source {source.name!r})"
        needed = [("entity", e) for e in view.entities] + [("timestamp", source.timestamp)] + [
            (f"feature {f.name!r}", f.column) for f in view.features if f.column]
        for what, column in needed:
            if column not in found:
                raise FeatureStoreError(f"{where}: the {what} column {column!r} is not in the source; its columns "
                                        f"are {', '.join(found)}.{did_you_mean(column, found)}")
        if not _is_time(found[source.timestamp]):
            raise FeatureStoreError(f"{where}: the timestamp column {source.timestamp!r} must hold times "
                                    f"(TIMESTAMP or DATE); it is {found[source.timestamp]}. Cast it in a query source.")
        for f in view.features:
            if f.column and f.aggregation != "count" and not _is_number(found[f.column]):
                raise FeatureStoreError(f"{where}, feature {f.name!r}: {f.aggregation} needs a number column; "
                                        f"{f.column!r} is {found[f.column]}.")


def _is_time(dtype: str) -> bool:
    return dtype.startswith(("TIMESTAMP", "DATE"))


def _is_number(dtype: str) -> bool:
    return dtype.startswith(("DECIMAL", "DOUBLE", "FLOAT", "REAL", "BIGINT", "INTEGER", "SMALLINT", "TINYINT",
                             "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "BOOLEAN"))


def _view_ctes(view: View, source: Source, relation: str, spine: str) -> tuple[list[str], list[str], dict]:
    """(CTEs, joins onto the spine, feature name -> expression) of one view."""
    v = f"v_{view.name}"
    keys = [quote(e) for e in view.entities]
    key_list = ", ".join(keys)
    on = " AND ".join(f"t.{k} = c.{k}" for k in keys)
    known = " AND ".join(f"{spine}.{k} IS NOT NULL" for k in keys)  # a missing key: missing features
    columns = sorted({f.column for f in view.features if f.column})
    ctes, joins, exprs = [], [], {}
    events = (f"{v}_events AS (SELECT {key_list}, CAST({quote(source.timestamp)} AS TIMESTAMP) AS {TS}"
              + "".join(f", CAST({quote(c)} AS {EXACT}) AS {quote(c)}" for c in columns)
              + f" FROM {relation} WHERE {quote(source.timestamp)} IS NOT NULL"
              + "".join(f" AND {k} IS NOT NULL" for k in keys) + ")")
    ctes.append(events)
    windowed = [f for f in view.features if f.aggregation in WINDOWED]
    last = [f for f in view.features if f.aggregation == "last"]
    if windowed:
        wcols = sorted({f.column for f in windowed if f.column})
        grouped = (f"{v}_grouped AS (SELECT {key_list}, {TS}, count(*) AS n"
                   + "".join(f", sum({quote(c)}) AS {quote('s_' + c)}, count({quote(c)}) AS {quote('n_' + c)}"
                             for c in wcols)
                   + f" FROM {v}_events GROUP BY ALL)")
        totals = ["n"] + [x for c in wcols for x in ("s_" + c, "n_" + c)]
        running = (f"{v}_running AS (SELECT {key_list}, {TS}"
                   + "".join(f", sum({quote(t)}) OVER w AS {quote(t)}" for t in totals)
                   + f" FROM {v}_grouped WINDOW w AS (PARTITION BY {key_list} ORDER BY {TS} "
                   "ROWS UNBOUNDED PRECEDING))")
        ctes += [grouped, running]

        def asof(name: str, shift: int) -> str:
            at = f"t.{TS}" + (f" - INTERVAL {shift} SECOND" if shift else "")
            return (f"{name} AS (SELECT t.{ROW}" + "".join(f", c.{quote(x)}" for x in totals)
                    + f" FROM {spine} AS t ASOF LEFT JOIN {v}_running AS c ON {on} AND {at} > c.{TS})")

        ctes.append(asof(f"{v}_hi", 0))
        joins.append(f"LEFT JOIN {v}_hi USING ({ROW})")
        for window in sorted({f.window for f in windowed}):
            ctes.append(asof(f"{v}_lo{window}", window))
            joins.append(f"LEFT JOIN {v}_lo{window} USING ({ROW})")

        def delta(total: str, window: int) -> str:
            return f"(coalesce({v}_hi.{quote(total)}, 0) - coalesce({v}_lo{window}.{quote(total)}, 0))"

        for f in windowed:
            if f.aggregation == "count":
                value = f"CAST({delta('n', f.window)} AS DOUBLE)"
            elif f.aggregation == "sum":
                value = f"CAST({delta('s_' + f.column, f.window)} AS DOUBLE)"
            else:
                n = delta("n_" + f.column, f.window)
                value = f"CASE WHEN {n} > 0 THEN CAST({delta('s_' + f.column, f.window)} AS DOUBLE) / {n} END"
            exprs[f.name] = f"CASE WHEN {known} THEN {value} END AS {quote(f.name)}"
    if last:
        lcols = sorted({f.column for f in last})
        ctes.append(f"{v}_latest AS (SELECT {key_list}, {TS}"
                    + "".join(f", CAST(sum({quote(c)}) AS DOUBLE) / nullif(count({quote(c)}), 0) AS {quote(c)}"
                              for c in lcols)
                    + f" FROM {v}_events GROUP BY ALL)")
        ctes.append(f"{v}_last AS (SELECT t.{ROW}, t.{TS} - c.{TS} <= INTERVAL {view.ttl} SECOND AS fresh"
                    + "".join(f", c.{quote(c)}" for c in lcols)
                    + f" FROM {spine} AS t ASOF LEFT JOIN {v}_latest AS c ON {on} AND t.{TS} > c.{TS})")
        joins.append(f"LEFT JOIN {v}_last USING ({ROW})")
        for f in last:
            exprs[f.name] = f"CASE WHEN {v}_last.fresh THEN {v}_last.{quote(f.column)} END AS {quote(f.name)}"
    return ctes, joins, exprs


def join_sql(defs: Definitions, relations: dict[str, str], spine: str, spine_columns: list[str],
             features: list[str] | None = None) -> str:
    """The SQL of the join: ``spine`` is a relation with ROW (the order) and TS (the time asked about)
    columns and the entity columns; the result is ``spine_columns`` and the features, in ROW order."""
    wanted = set(features or defs.feature_names)
    ctes, joins, exprs = [], [], {}
    for view in defs.views.values():
        sub = [f for f in view.features if f.name in wanted]
        if not sub:
            continue
        part = View(view.name, view.entities, view.source, view.ttl, tuple(sub))
        c, j, e = _view_ctes(part, defs.sources[view.source], relations[view.source], "spine")
        ctes += c
        joins += j
        exprs.update(e)
    order = [n for n in defs.feature_names if n in wanted]
    head = f"WITH spine AS (SELECT * FROM {spine}), " + ", ".join(ctes)
    select = ", ".join([f"spine.{quote(c)}" for c in spine_columns] + [exprs[n] for n in order])
    return f"{head} SELECT {select} FROM spine {' '.join(joins)} ORDER BY spine.{ROW}"


def historical(con, defs: Definitions, spine_table: str, timestamp: str = "event_timestamp", *,
               snapshot: str | None = None, root: Path | None = None, pushed: dict[str, str] | None = None,
               features: list[str] | None = None):
    """The spine (a table of ``con``, in its row order) with one column per feature as of each row's
    ``timestamp``: a DuckDB relation of the spine's columns and the features."""
    return con.sql(historical_sql(con, defs, spine_table, timestamp, snapshot=snapshot, root=root, pushed=pushed,
                                  features=features))


def historical_sql(con, defs: Definitions, spine_table: str, timestamp: str = "event_timestamp", *,
                   snapshot: str | None = None, root: Path | None = None, pushed: dict[str, str] | None = None,
                   features: list[str] | None = None) -> str:
    """The SQL of ``historical``, the spine and the sources checked: what the training feature set runs too."""
    spine_cols = columns_of(con, spine_table)
    if timestamp not in spine_cols:
        raise FeatureStoreError(f"The spine has no {timestamp!r} column (the time each row asks about); its columns "
                                f"are {', '.join(spine_cols)}.{did_you_mean(timestamp, spine_cols)} Name another "
                                "with --timestamp-column.")
    wanted = features or defs.feature_names
    views = [v for v in defs.views.values() if any(f.name in wanted for f in v.features)]
    for view in views:
        for e in view.entities:
            if e not in spine_cols:
                raise FeatureStoreError(f"The spine has no {e!r} column, the entity view {view.name!r} is keyed by; "
                                        f"its columns are {', '.join(spine_cols)}.{did_you_mean(e, spine_cols)}")
    clash = [n for n in wanted if n in spine_cols]
    if clash:
        raise FeatureStoreError(f"The spine already has columns named as features: {', '.join(clash)}. Rename or "
                                "drop them: the result adds one column a feature.")
    bad_time = con.execute(f"SELECT count(*) FILTER (WHERE {quote(timestamp)} IS NULL), "
                           f"count(*) FILTER (WHERE {quote(timestamp)} IS NOT NULL AND "
                           f"TRY_CAST({quote(timestamp)} AS TIMESTAMP) IS NULL), "
                           f"any_value({quote(timestamp)}) FILTER (WHERE {quote(timestamp)} IS NOT NULL AND "
                           f"TRY_CAST({quote(timestamp)} AS TIMESTAMP) IS NULL) FROM {spine_table}").fetchone()
    if bad_time[0] or bad_time[1]:
        raise FeatureStoreError(f"The spine's {timestamp!r} column must hold a time on every row; "
                                f"{bad_time[0]} row(s) have none and {bad_time[1]} are not times"
                                + (f" (e.g. {bad_time[2]!r})." if bad_time[1] else "."))
    relations = {name: source_sql(defs.sources[name], snapshot=snapshot, root=root, pushed=(pushed or {}).get(name))
                 for name in {v.source for v in views}}
    check(con, defs, relations, views)
    spine = f"(SELECT rowid AS {ROW}, CAST({quote(timestamp)} AS TIMESTAMP) AS {TS}, * FROM {spine_table})"
    return join_sql(defs, relations, spine, list(spine_cols), wanted)
