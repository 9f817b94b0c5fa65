"""Feature store speed: the point-in-time join against the obvious SQL range join.

The bundled flights are ingested into a scratch warehouse; the spine is every flight that arrived (327,346
rows: origin, carrier, and the time two hours before its scheduled departure, as the pipeline asks). Both
sides compute every feature of features.yaml in one DuckDB connection on 2 threads, results fetched as
Arrow:
  ours      featurestore.offline.historical (running totals and ASOF joins)
  range     the obvious query: each spine row joined to every event of its key in its window (or its ttl,
            for last), then grouped; measured once (it takes minutes), after a check that both agree
Sides interleaved, ours measured --repeat times (median). Target (issue #12): ours <= 2 s.
Then the online store (embedded): in-process lookups of one flight's features (origin, carrier), the store
materialized to a busy hour, against per-row DuckDB queries on the published file (target, issue #12 part 4:
a lookup adds at most 0.3 ms at p50); and materializations to 12 points of the year (the first of each month,
17:00: ours reads the events of each view's last horizon) against the same join over the whole history before
each point (the obvious way), checked equal. Lookups over the service: bench/serving.py, once the service
reads the store.

    .venv/bin/python bench/features.py [--repeat 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPINE = """CREATE OR REPLACE TEMP TABLE spine AS
SELECT origin, carrier,
       make_timestamp(year, month, day, sched_dep_time // 100, sched_dep_time % 100, 0) - INTERVAL 2 HOUR
         AS event_timestamp
FROM {snapshot}.flights WHERE arr_delay IS NOT NULL ORDER BY year, month, day, sched_dep_time, carrier, flight"""


def range_join_sql(defs, relations: dict, spine: str = "spine") -> str:
    """Every feature by the obvious query: a LEFT range join a view, grouped by spine row."""
    from mlops_nb.featurestore.offline import EXACT, quote

    parts, selects = [], []
    for view in defs.views.values():
        source = defs.sources[view.source]
        on = " AND ".join(f"e.{quote(k)} = s.{quote(k)}" for k in view.entities)
        ts = f"CAST(e.{quote(source.timestamp)} AS TIMESTAMP)"
        horizon = view.horizon
        aggs = []
        for f in view.features:
            inside = f"{ts} >= e.event_timestamp - INTERVAL {f.window} SECOND" if f.window else "TRUE"
            col = f"CAST(e.{quote(f.column)} AS {EXACT})" if f.column else None
            if f.aggregation == "count":
                aggs.append(f"CAST(count({ts}) FILTER (WHERE {inside}) AS DOUBLE) AS {quote(f.name)}")
            elif f.aggregation == "sum":
                aggs.append(f"CAST(coalesce(sum({col}) FILTER (WHERE {inside}), 0) AS DOUBLE) AS {quote(f.name)}")
            elif f.aggregation == "mean":
                aggs.append(f"CAST(sum({col}) FILTER (WHERE {inside}) AS DOUBLE) / "
                            f"nullif(count({col}) FILTER (WHERE {inside}), 0) AS {quote(f.name)}")
            else:  # last: the mean of the values at the newest time before T, within the ttl
                aggs.append(f"CAST(avg({col}) FILTER (WHERE {ts} = newest) AS DOUBLE) AS {quote(f.name)}")
        keyed = " AND ".join(f"s.{quote(k)} IS NOT NULL" for k in view.entities)
        newest = (f", max({ts}) OVER (PARTITION BY s.rowid) AS newest" if any(f.aggregation == "last" for f in view.features)
                  else "")
        parts.append(f"""v_{view.name} AS (
  SELECT rid, {', '.join(aggs)} FROM (
    SELECT s.rowid AS rid, s.event_timestamp, e.*{newest}
    FROM {spine} AS s LEFT JOIN {relations[view.source]} AS e
      ON {on} AND {ts} < s.event_timestamp AND {ts} >= s.event_timestamp - INTERVAL {horizon} SECOND
    WHERE {keyed}) AS e
  GROUP BY rid)""")
        selects += [f"v_{view.name}.{quote(f.name)}" for f in view.features]
    joins = " ".join(f"LEFT JOIN v_{v} ON v_{v}.rid = s.rowid" for v in defs.views)
    return (f"WITH {', '.join(parts)} SELECT s.*, {', '.join(selects)} FROM {spine} AS s {joins} ORDER BY s.rowid")


def full_history_sql(defs, view, relation: str, until) -> str:
    """The obvious materialization: the same join for the same keys, over the source's whole history."""
    from mlops_nb.featurestore import online
    from mlops_nb.featurestore.offline import ROW, TS, join_sql, quote

    keys = ", ".join(quote(e) for e in view.entities)
    known = " AND ".join(f"{quote(e)} IS NOT NULL" for e in view.entities)
    recent = online.recent_table(view.source)
    spine = (f"(SELECT row_number() OVER (ORDER BY {keys}) AS {ROW}, {online.stamp(until)} AS {TS}, {keys} "
             f"FROM (SELECT DISTINCT {keys} FROM {recent} WHERE {known}))")
    return join_sql(defs, {view.source: relation}, spine, list(view.entities), [f.name for f in view.features])


def materializations(settings, defs, snapshot: str, say) -> dict:
    """Materialize to 17:00 on the first of each month of the year (ours: the last horizon's events only);
    at each, the baseline computes the same rows by the same join over the whole history before M (the
    obvious way), in the connection ours used, and both must agree."""
    import numpy as np

    from mlops_nb.data import warehouse
    from mlops_nb.featurestore import online
    from mlops_nb.featurestore.offline import source_sql

    ours, full, same = [], [], True
    for month in range(1, 13):
        until = online.parse_time(f"2013-{month:02d}-01T17:00", "until")
        started = time.perf_counter()
        online.materialize(settings, defs, until, snapshot=snapshot)
        ours.append(time.perf_counter() - started)
        with warehouse.connect(settings=settings) as con:
            con.execute("SET threads = 2")
            relations = {n: source_sql(s, snapshot=snapshot) for n, s in defs.sources.items()}
            for name in {v.source for v in defs.views.values()}:
                horizon = max(v.horizon for v in defs.views.values() if v.source == name)
                ts = f"CAST({online.quote(defs.sources[name].timestamp)} AS TIMESTAMP)"
                con.execute(f"CREATE TEMP TABLE {online.recent_table(name)} AS SELECT * FROM {relations[name]} "
                            f"WHERE {ts} >= {online.stamp(until - timedelta(seconds=horizon))} "
                            f"AND {ts} < {online.stamp(until)}")
            started = time.perf_counter()
            rows = {}
            for view in defs.views.values():
                before = f"(SELECT * FROM {relations[view.source]} WHERE CAST({online.quote(defs.sources[view.source].timestamp)} AS TIMESTAMP) < {online.stamp(until)})"
                rows[view.name] = con.execute(full_history_sql(defs, view, before, until)).fetchnumpy()
            full.append(time.perf_counter() - started)
        store = online.EmbeddedStore(online.store_dir(settings), defs)
        held = store._current()[1]
        for view in defs.views.values():
            got = rows[view.name]
            expected = {tuple(str(got[e][i]) for e in view.entities):
                        tuple(float(got[f.name][i]) for f in view.features) for i in range(len(got[view.entities[0]]))}
            same = same and set(expected) == set(held[view.name]) and all(
                np.array_equal(np.array(expected[key], dtype=float), np.array(held[view.name][key], dtype=float),
                               equal_nan=True) for key in expected)
    figures = {"materialize_s_median": statistics.median(ours), "materialize_s": ours,
               "full_history_s_median": statistics.median(full), "same_values": same,
               "speedup_vs_full_history": statistics.median(full) / statistics.median(ours)}
    say(f"materialize (12 points of the year): ours median {figures['materialize_s_median']:.3f} s, the same join "
        f"over the whole history {figures['full_history_s_median']:.3f} s "
        f"({figures['speedup_vs_full_history']:.1f}x); same values: {same}")
    return figures


def online_lookups(settings, defs, snapshot: str, say, n: int = 20000) -> dict:
    """The online store (embedded) materialized to a busy hour of the year, then ``n`` in-process lookups
    of one flight's features (origin, carrier: every view) against the per-row baseline: one DuckDB query a
    view on the published file, through a connection kept open."""
    import random

    import duckdb

    from mlops_nb.featurestore import online
    from mlops_nb.featurestore.offline import quote

    until = online.parse_time("2013-07-01T17:00", "until")
    done = online.materialize(settings, defs, until, snapshot=snapshot)
    reader = online.open_store(settings, defs)
    pairs = sorted(reader.store._current()[1]["carrier_origin_departures"])
    rng = random.Random(0)
    keys = [dict(zip(("carrier", "origin"), rng.choice(pairs))) for _ in range(n)]
    at = until + timedelta(minutes=10)
    ours = []
    for k in keys:
        t0 = time.perf_counter_ns()
        reader.lookup(k, at)
        ours.append(time.perf_counter_ns() - t0)
    con = duckdb.connect(str(online.store_dir(settings) / online.ONLINE), read_only=True)
    queries = [(f"SELECT * FROM features.{quote(v.name)} WHERE "
                + " AND ".join(f"{quote(e)} = ?" for e in v.entities), v.entities) for v in defs.views.values()]
    per_row = []
    for k in keys[: n // 10]:
        t0 = time.perf_counter_ns()
        for sql, entities in queries:
            con.execute(sql, [k[e] for e in entities]).fetchall()
        per_row.append(time.perf_counter_ns() - t0)
    con.close()
    figures = {"keys": {m.view: m.keys for m in done},
               "lookup_p50_us": statistics.median(ours) / 1000,
               "lookup_p99_us": sorted(ours)[int(len(ours) * 0.99)] / 1000,
               "lookups_per_s": 1e9 / statistics.mean(ours),
               "per_row_query_p50_us": statistics.median(per_row) / 1000,
               "per_row_queries_per_s": 1e9 / statistics.mean(per_row),
               "lookup_target": "lookup_p50_us <= 300"}
    say(f"online lookups ({sum(figures['keys'].values())} keys): one flight's {len(defs.feature_names)} features "
        f"p50 {figures['lookup_p50_us']:.1f} us, p99 {figures['lookup_p99_us']:.1f} us "
        f"({figures['lookups_per_s']:,.0f}/s); per-row DuckDB queries p50 {figures['per_row_query_p50_us']:.0f} us "
        f"({figures['per_row_queries_per_s']:,.0f}/s)")
    return figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    import numpy as np

    from mlops_nb import config
    from mlops_nb.data import ingest, warehouse
    from mlops_nb.featurestore import definitions, offline

    defs = definitions.load(ROOT / "features.yaml")
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-features-") as tmp:
        settings = config.load(ROOT / "settings.ini").replace({"paths.warehouse": str(Path(tmp) / "w.duckdb")})
        with warehouse.connect(write=True, settings=settings) as con:
            snapshot = ingest.ingest(con, settings)
        with warehouse.connect(settings=settings) as con:
            con.execute("SET threads = 2")
            con.execute(SPINE.format(snapshot=offline.quote(snapshot.schema_name)))
            rows = con.execute("SELECT count(*) FROM spine").fetchone()[0]
            relations = {n: offline.source_sql(s, snapshot=snapshot.schema_name) for n, s in defs.sources.items()}

            def ours():
                return offline.historical(con, defs, "spine", snapshot=snapshot.schema_name).to_arrow_table()

            ours()  # warm: the snapshot's pages in memory for both sides
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                mine = ours()
                times.append(time.perf_counter() - started)
            say(f"ours: {rows:,} rows x {len(defs.feature_names)} features: median {statistics.median(times):.3f} s "
                f"of {args.repeat} ({', '.join(f'{t:.2f}' for t in times)})")
            started = time.perf_counter()
            theirs = con.execute(range_join_sql(defs, relations)).to_arrow_table()
            range_s = time.perf_counter() - started
            say(f"range join: {range_s:.1f} s")
            same = all(np.array_equal(mine[n].to_numpy(zero_copy_only=False).astype(float),
                                      theirs[n].to_numpy(zero_copy_only=False).astype(float), equal_nan=True)
                       for n in defs.feature_names)
        settings = settings.replace({"paths.data_dir": tmp, "features.online": "embedded"})
        lookups = online_lookups(settings, defs, snapshot.schema_name, say)
        lookups["materialize"] = materializations(settings, defs, snapshot.schema_name, say)
    report = {"spine_rows": rows, "features": len(defs.feature_names), "ours_s": statistics.median(times),
              "ours_runs_s": times, "range_join_s": range_s, "same_values": same,
              "speedup_vs_range_join": range_s / statistics.median(times),
              "target": "ours_s <= 2", "met": statistics.median(times) <= 2.0 and same, "online": lookups}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"point-in-time join, {rows:,} spine rows, {report['features']} features: ours {report['ours_s']:.3f} s, "
              f"range join {range_s:.1f} s ({report['speedup_vs_range_join']:.0f}x); same values: {same}; "
              f"target <= 2 s: {'met' if report['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
