"""Monitoring speed and memory: `mlops-nb monitor` over a million logged predictions, its incremental second
call, and `mlops-nb drift` on two 1,000,000 x 20 Parquet tables.

In a fresh project folder (settings.ini of this repo):
  1. realistic inputs: the bundled flights (as ingest finds them, see bench/pipeline.py) joined with their
     planes and the origin's weather, as sql/features.sql joins them, sampled with replacement to --rows
     rows; a score p_late that depends on the outcome (so realized ROC AUC is about 0.75);
  2. the service's logs in the documented formats (``data.logs``), written by DuckDB: --hours hourly
     prediction-log files (a line a predicted row: request id, key, time, version, arm, row, inputs,
     p_late, latency_ms, shadow) and request-log files (a line a request, plus 0.5% refusals), and feedback
     (a line an outcome) for half of the predictions, received a day later, one file a day;
  3. a model version in the project's model store with a reference as the gate saves it (50,000 training
     rows, the test predictions, model.json with its threshold and metrics; no calibration map): drift and
     estimates are computed for real against it.
Then it times `mlops-nb monitor` (first call: everything), appends one more hour (predictions, requests and
feedback) and times the second call, and times `mlops-nb drift REF.parquet ANA.parquet --json` on two
1,000,000 x 20 tables (the inputs of two different months, so that some columns drift).

Memory is the peak of the summed USS of the process tree (as bench/pipeline.py measures it).

Targets: first monitor < 15 s and < 2 GB on 2 cores; second call < 10% of the first; drift < 10 s.

    .venv/bin/python bench/monitoring.py [--rows 1000000] [--hours 24] [--keep DIR]
"""
from __future__ import annotations

import argparse
import compileall
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pipeline import measure  # noqa: E402  (the same wall-time and USS measurement)

CLI = Path(sys.executable).parent / "mlops-nb"
VERSION = "bench0000000000a"
BASE = "2026-01-05 00:00:00"  # the first logged hour (UTC)

FEATURES_SQL = """
WITH weather AS (
    SELECT origin, year, month, day, hour, avg(temp) AS temp, avg(dewp) AS dewp, avg(humid) AS humid,
           avg(wind_dir) AS wind_dir, avg(CASE WHEN wind_speed <= 150 THEN wind_speed END) AS wind_speed,
           avg(CASE WHEN wind_gust <= 200 THEN wind_gust END) AS wind_gust, avg(precip) AS precip,
           avg(pressure) AS pressure, avg(visib) AS visib
    FROM {weather} GROUP BY ALL),
planes AS (SELECT tailnum, min(year) AS plane_year, min(seats) AS plane_seats FROM {planes} GROUP BY tailnum)
SELECT CAST(f.year AS DOUBLE) AS year, CAST(f.month AS DOUBLE) AS month, CAST(f.day AS DOUBLE) AS day,
       CAST(f.sched_dep_time AS DOUBLE) AS sched_dep_time, CAST(f.sched_arr_time AS DOUBLE) AS sched_arr_time,
       f.carrier, f.origin, f.dest, CAST(f.distance AS DOUBLE) AS distance,
       CAST(p.plane_year AS DOUBLE) AS plane_year, CAST(p.plane_seats AS DOUBLE) AS plane_seats,
       CAST(w.temp AS DOUBLE) AS temp, CAST(w.dewp AS DOUBLE) AS dewp, CAST(w.humid AS DOUBLE) AS humid,
       CAST(w.wind_dir AS DOUBLE) AS wind_dir, CAST(w.wind_speed AS DOUBLE) AS wind_speed,
       CAST(w.wind_gust AS DOUBLE) AS wind_gust, CAST(w.precip AS DOUBLE) AS precip,
       CAST(w.pressure AS DOUBLE) AS pressure, CAST(w.visib AS DOUBLE) AS visib,
       CAST(f.arr_delay AS DOUBLE) AS arr_delay, f.arr_delay > 15 AS late
FROM {flights} f
LEFT JOIN planes p ON f.tailnum = p.tailnum
LEFT JOIN weather w ON w.origin = f.origin AND w.year = f.year AND w.month = f.month AND w.day = f.day
                   AND w.hour = f.hour
WHERE f.arr_delay IS NOT NULL
"""


def record_columns() -> list[str]:
    from mlops_nb.lib.record import RECORD

    return list(RECORD)


def flights_table(con, tmp: Path) -> None:
    """``flights_in``: the bundled flights with the model's input columns, late and arr_delay."""
    from mlops_nb import config
    from mlops_nb.data import ingest

    sources = ingest.resolve_sources(config.load(ROOT / "settings.ini", environ={}))
    readers = {name: ingest._reader(name, path, tmp) for name, path in sources.items()}
    planes = readers.get("planes", "(SELECT NULL::VARCHAR AS tailnum, NULL::INTEGER AS year, NULL::INTEGER AS seats)")
    con.execute("CREATE TABLE flights_in AS " + FEATURES_SQL.format(
        flights=readers["flights"], weather=readers["weather"], planes=planes))


def score(expr_late: str) -> str:
    """A probability that depends on the outcome (Box-Muller normal noise): ROC AUC about 0.75."""
    return (f"1 / (1 + exp(-(-1.2 + 1.3 * {expr_late}::INTEGER + "
            "sqrt(-2 * ln(greatest(random(), 1e-12))) * cos(2 * pi() * random()))))")


def write_hours(con, serving: Path, first_hour: int, hours: int, rows_per_hour: int, seed_offset: int) -> None:
    """Prediction, request and feedback logs of ``hours`` hours from ``first_hour`` (one-row requests)."""
    from mlops_nb.data import logs

    cols = record_columns()
    for d in (logs.PREDICTIONS, logs.REQUESTS, logs.FEEDBACK):
        (serving / d).mkdir(parents=True, exist_ok=True)
    n_flights = con.execute("SELECT count(*) FROM flights_in").fetchone()[0]
    inputs = ", ".join(f"{c} := f.{c}" for c in cols)
    for h in range(first_hour, first_hour + hours):
        stamp = con.execute(f"SELECT strftime(TIMESTAMP '{BASE}' + INTERVAL {h} HOUR, '%Y%m%dT%H%M')").fetchone()[0]
        con.execute(f"""CREATE OR REPLACE TEMP TABLE hour_rows AS
            SELECT i, printf('%016x', {h}::BIGINT * 100000000 + i) AS request_id,
                   TIMESTAMP '{BASE}' + INTERVAL {h} HOUR
                       + to_microseconds(CAST(i * 3600e6 / {rows_per_hour} AS BIGINT)) AS ts,
                   f.*, {score('f.late')} AS p_late, 2 + 20 * random() AS latency_ms
            FROM range({rows_per_hour}) r(i)
            JOIN flights_in f ON f.rowid = (hash(i + {seed_offset + h * rows_per_hour}) % {n_flights})""")
        iso = "strftime(ts, '%Y-%m-%dT%H:%M:%S.%g+00:00')"
        con.execute(f"""COPY (SELECT request_id, NULL::VARCHAR AS key, {iso} AS "at", '{VERSION}' AS model_version,
                   'champion' AS arm, 0 AS "row", struct_pack({inputs}) AS inputs, p_late, latency_ms,
                   NULL::VARCHAR AS shadow
            FROM hour_rows f ORDER BY i) TO '{serving / logs.PREDICTIONS / f"{stamp}-w1.jsonl"}' (FORMAT json)""")
        con.execute(f"""COPY (
            SELECT request_id, {iso} AS "at", '/predict' AS route, 200 AS status, latency_ms + 0.5 AS latency_ms,
                   1 AS rows FROM hour_rows
            UNION ALL
            SELECT NULL, {iso}, '/predict', 422, 0.8, 0 FROM hour_rows WHERE i % 200 = 7
            ) TO '{serving / logs.REQUESTS / f"{stamp}-w1.jsonl"}' (FORMAT json)""")
        day = stamp[:8]
        con.execute(f"""COPY (
            SELECT request_id, NULL::VARCHAR AS key, late, arr_delay,
                   strftime(ts + INTERVAL 1 DAY, '%Y-%m-%dT%H:%M:%S.%g+00:00') AS received_at, 'http' AS source
            FROM hour_rows WHERE i % 2 = 0
            ) TO '{serving / logs.FEEDBACK / f"{day}-h{h:03d}-bench.jsonl"}' (FORMAT json)""")


def model_store_version(con, project: Path) -> None:
    """A version in the project's model store as the gate saves it (model.json and reference/ parts)."""
    folder = project / "data" / "bentoml" / "models" / "flight_delay" / VERSION
    (folder / "reference").mkdir(parents=True)
    cols = ", ".join(record_columns())
    con.execute(f"COPY (SELECT {cols} FROM flights_in WHERE month <= 8 USING SAMPLE 50000 ROWS (reservoir, 1)) "
                f"TO '{folder / 'reference' / 'train_sample.parquet'}' (FORMAT parquet)")
    con.execute(f"COPY (SELECT month::INTEGER AS month, late, {score('late')} AS p_late FROM flights_in "
                f"WHERE month >= 11) TO '{folder / 'reference' / 'test_predictions.parquet'}' (FORMAT parquet)")
    info = {"metrics": {"roc_auc": 0.75, "brier": 0.17, "accuracy": 0.78}, "threshold": 0.5}
    (folder / "model.json").write_text(json.dumps(info))


def drift_tables(con, tmp: Path, rows: int) -> tuple[Path, Path]:
    """Two rows x 20 Parquet tables of the inputs: months 1-6 against months 7-12 (resampled)."""
    cols = ", ".join(f"f.{c}" for c in record_columns())
    out = []
    for name, where in (("reference", "month <= 6"), ("analysis", "month > 6")):
        con.execute(f"CREATE OR REPLACE TEMP TABLE part AS SELECT * FROM flights_in WHERE {where}")
        n = con.execute("SELECT count(*) FROM part").fetchone()[0]
        path = tmp / f"{name}.parquet"
        con.execute(f"COPY (SELECT {cols} FROM range({rows}) r(i) JOIN part f ON f.rowid = hash(i) % {n}) "
                    f"TO '{path}' (FORMAT parquet)")
        out.append(path)
    return out[0], out[1]


def _phases(report: dict) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in report.get("timings", {}).items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="logged predictions of the first call")
    parser.add_argument("--hours", type=int, default=24, help="hourly log files they are spread over")
    parser.add_argument("--drift-rows", type=int, default=1_000_000)
    parser.add_argument("--skip-drift", action="store_true")
    parser.add_argument("--keep", help="build the project in this folder and keep it")
    args = parser.parse_args()
    import duckdb

    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-monitoring-"))
    project = tmp / "project"
    project.mkdir(parents=True)
    shutil.copy(ROOT / "settings.ini", project / "settings.ini")
    serving = project / "data" / "serving"
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    started = time.perf_counter()
    flights_table(con, tmp)
    per_hour = args.rows // args.hours
    write_hours(con, serving, 0, args.hours, per_hour, 0)
    model_store_version(con, project)
    size = sum(p.stat().st_size for p in serving.rglob("*.jsonl"))
    print(f"logs: {per_hour * args.hours:,} predictions over {args.hours} hours, feedback for half; "
          f"{size / 2**20:.0f} MiB of JSON lines; written in {time.perf_counter() - started:.1f} s")

    # the package's bytecode, as an installation has it (pip compiles what it installs; a source tree run
    # with PYTHONDONTWRITEBYTECODE would compile every module again in every call, ~0.1 s)
    compileall.compile_dir(ROOT / "mlops_nb", quiet=1)
    first = measure([str(CLI), "monitor", "--json"], project)
    report = json.loads(first.output[first.output.index("{"):])
    print(f"monitor, first call : {first.seconds:6.2f} s, peak {first.mib:6.0f} MiB (USS of the tree); "
          f"read {report['read']['predictions']:,} predictions, {report['read']['feedback']:,} feedback, "
          f"{report['read']['windows_recomputed']} windows (in-process {report['seconds']:.2f} s)")
    print(f"  phases: {_phases(report)}")

    write_hours(con, serving, args.hours, 1, per_hour, 10**9)
    second = measure([str(CLI), "monitor", "--json"], project)
    report2 = json.loads(second.output[second.output.index("{"):])
    print(f"monitor, second call: {second.seconds:6.2f} s, peak {second.mib:6.0f} MiB; read "
          f"{report2['read']['predictions']:,} predictions, {report2['read']['files_read']} files, "
          f"{report2['read']['windows_recomputed']} windows (in-process {report2['seconds']:.2f} s)")
    print(f"  phases: {_phases(report2)}")
    ratio = second.seconds / first.seconds
    print(f"  targets: first < 15 s: {first.seconds:.2f} s {'ok' if first.seconds < 15 else 'MISSED'}; "
          f"< 2048 MiB: {first.mib:.0f} {'ok' if first.mib < 2048 else 'MISSED'}; "
          f"second / first < 10%: {ratio:.1%} {'ok' if ratio < 0.10 else 'MISSED'}")

    if not args.skip_drift:
        ref, ana = drift_tables(con, tmp, args.drift_rows)
        try:
            drift = measure([str(CLI), "drift", str(ref), str(ana), "--json"], project)
            print(f"drift {args.drift_rows:,} x 20 vs {args.drift_rows:,} x 20: {drift.seconds:6.2f} s, peak "
                  f"{drift.mib:6.0f} MiB; target < 10 s: {'ok' if drift.seconds < 10 else 'MISSED'}")
        except SystemExit as e:
            print(f"drift: `mlops-nb drift` failed or is not ready: {str(e)[:400]}")
    con.close()
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
