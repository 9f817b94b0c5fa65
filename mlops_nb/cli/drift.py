"""`mlops-nb drift REFERENCE ANALYSIS`: drift of any two tables (CSV, Parquet, or a model version's
training reference), per column and chunk. Exit 0 whether or not anything drifted: alerts and their exit
codes belong to `mlops-nb monitor`; bad input is one of our errors (exit code from cli/__init__)."""
from __future__ import annotations

import json
import math

JSON_KEYS = ("chunk", "start", "end", "column", "method", "statistic", "p_value", "threshold", "drifted")


def cmd_drift(args) -> int:
    from .. import config
    from ..errors import DataError
    from ..monitoring import drift

    settings = config.load()
    columns = None
    if args.columns is not None:
        columns = [c.strip() for c in args.columns.split(",") if c.strip()]
        if not columns:
            raise DataError(f"--columns must name at least one column, comma-separated; got {args.columns!r} "
                            "instead.")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise DataError(f"--chunk-size must be an integer > 0; got {args.chunk_size} instead.")
    if str(args.analysis).startswith("model:"):
        raise DataError(f"The ANALYSIS must be a .csv or .parquet file; got {args.analysis!r} instead "
                        "(model:VERSION is a REFERENCE only: its training rows or profile).")
    reference = drift.load_table(args.reference, settings, name="REFERENCE")
    analysis = drift.load_table(args.analysis, settings, name="ANALYSIS")
    exclude = ()
    if args.chunk_by:  # chunking by a column: that column is the chunks, not a feature to compare
        exclude = (drift.parse_chunk_by(args.chunk_by, list(analysis.columns))[0],)
    comparison = drift.Comparison(reference, columns, args.method, settings,
                                  analysis_columns=list(analysis.columns), exclude=exclude)
    rows = []
    for index, start, end, part in drift.chunks(analysis, args.chunk_size, args.chunk_by):
        for r in comparison.against(part):
            rows.append((index, start, end, len(part), r))

    if args.json:
        print(json.dumps([{"chunk": i, "start": start, "end": end, "column": r.column, "method": r.method,
                           "statistic": _number(r.statistic), "p_value": _number(r.p_value),
                           "threshold": r.threshold, "drifted": bool(r.drifted)}
                          for i, start, end, _, r in rows], default=str))
        return 0
    _print_table(args, reference, analysis, rows)
    return 0


def _number(value):
    return None if value is None or not math.isfinite(value) else value


def _fmt(value, width: int) -> str:
    if value is None:
        return f"{'-':>{width}}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:>{width}.2e}"
    return f"{value:>{width}.4f}"


def _print_table(args, reference, analysis, rows) -> None:
    ref_rows = (len(reference) if not isinstance(reference, dict) else
                max((s.get("n", 0) for s in reference.values()), default=0))
    ref_what = "rows" if not isinstance(reference, dict) else "rows, profiled (whylogs)"
    n_chunks = len({i for i, *_ in rows})
    print(f"REFERENCE {args.reference}: {ref_rows:,} {ref_what}")
    print(f"ANALYSIS  {args.analysis}: {len(analysis):,} rows in {n_chunks} chunk{'s' if n_chunks != 1 else ''}")
    col_w = max([len("column")] + [len(r.column) for *_, r in rows])
    bound_w = max([len("start..end")] + [len(_bounds(s, e, n)) for _, s, e, n, _ in rows])
    print(f"{'chunk':>5}  {'start..end':<{bound_w}}  {'rows':>9}  {'column':<{col_w}}  {'method':<9}  "
          f"{'statistic':>10}  {'p':>10}  {'threshold':>9}  {'missing ref/an':>15}  basis")
    notes = []
    for i, start, end, n, r in rows:
        mark = "  DRIFTED" if r.drifted else ""
        missing = f"{r.missing_reference}/{r.missing_analysis}"
        print(f"{i:>5}  {_bounds(start, end, n):<{bound_w}}  {n:>9,}  {r.column:<{col_w}}  {r.method:<9}  "
              f"{_fmt(r.statistic, 10)}  {_fmt(r.p_value, 10)}  {r.threshold:>9g}  {missing:>15}  {r.basis}{mark}")
        if r.note:
            notes.append(f"chunk {i}, {r.column}: {r.note}")
    for note in notes:
        print(f"note: {note}")
    drifted = sum(r.drifted for *_, r in rows)
    print(f"{drifted} of {len(rows)} column-chunk comparisons drifted. Drifted: statistic above the threshold "
          "(chi2: p below it).")
    if any(r.basis == "sketch" for *_, r in rows):
        print("basis sketch: the REFERENCE is a whylogs profile; statistics come from its KLL quantiles and "
              "frequent items (KS within about 0.01 of the exact value).")
    else:
        print("basis exact: every statistic is computed from the rows.")


def _bounds(start, end, rows: int) -> str:
    if start is None and end is None:
        return "(missing)" if rows else "(no rows)"
    return str(start) if start == end else f"{start}..{end}"
