"""The only module that imports whylogs: profiles of data frames and contract constraints on them.

whylogs is unmaintained upstream; everything else goes through these functions so it can be replaced.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import config  # noqa: F401  (sets WHYLOGS_NO_ANALYTICS before whylogs is imported)
from .contracts import Table


PARALLEL_ROWS = 100_000  # from this size, two processes profile half the rows each, then merge
_whylogs_split = None  # whylogs' own PreprocessedColumn._pandas_split, once replaced


def _whylogs():
    """whylogs, with its pandas preprocessing vectorised (``_split_fast``) for the column types we log."""
    global _whylogs_split
    import whylogs

    if _whylogs_split is None:
        from whylogs.core.preprocessing import PreprocessedColumn

        _whylogs_split = original = PreprocessedColumn._pandas_split

        def split(self, series, parse_numeric_string: bool = False) -> None:
            if not _split_fast(self, series, parse_numeric_string):
                original(self, series, parse_numeric_string)

        PreprocessedColumn._pandas_split = split
    return whylogs


def load() -> None:
    """Import whylogs now: about 2 s of CPU, which a long-lived process (the service's recorder process) pays at its
    start rather than under its first load."""
    _whylogs()


def _split_fast(column, series, parse_numeric_string: bool) -> bool:
    """What whylogs 1.x's ``PreprocessedColumn._pandas_split`` computes, without its Python call per value
    (an ``np.isinf`` lambda on every float, six type-test lambdas on every string or timestamp): 3-10x
    faster on our frames. Float, integer (nullable too), datetime columns and object columns holding
    only strings; anything else returns False and goes to whylogs' own code. tests/test_profiles.py
    checks that both give whylogs the same values."""
    import numpy as np
    import pandas as pd
    from pandas.api.types import infer_dtype, is_datetime64_any_dtype
    from whylogs.core.preprocessing import NumpyView

    dtype = series.dtype
    kind = getattr(dtype, "kind", "")
    if kind == "f" and isinstance(dtype, np.dtype):
        values = series.to_numpy()
        null = np.isnan(values)
        column.null_count = column.nan_count = int(null.sum())
        floats = values[~null].astype(float)
        column.inf_count = int(np.isinf(floats).sum())
        column.numpy.floats = floats
        return True
    if kind in ("i", "u"):  # nullable integers included
        null = series.isna().to_numpy()
        column.null_count = int(null.sum())
        column.nan_count = _numbers(series[null])
        column.numpy.ints = series[~null].astype(int).to_numpy()
        return True
    is_strings = kind == "O" and isinstance(dtype, np.dtype)  # pandas' "string" dtype: whylogs is fast there
    if parse_numeric_string or not (is_strings or is_datetime64_any_dtype(dtype)):
        return False
    null = series.isna().to_numpy()
    values = series[~null]
    if values.empty:
        return False
    if is_strings and infer_dtype(values, skipna=False) != "string":
        return False
    nulls = series[null]
    column.null_count = len(nulls)
    column.nan_count = _numbers(nulls)
    none = values.iloc[:0]
    column.numpy = NumpyView(floats=none.to_numpy(), ints=pd.Series(dtype=int).to_numpy())
    column.pandas.strings = values if is_strings else none
    column.pandas.tensors = pd.Series([], dtype="object")
    column.pandas.objs = none if is_strings else values
    column.bool_count = column.bool_count_where_true = 0
    return True


def _numbers(nulls) -> int:
    """How many nulls whylogs counts as NaN (its own test, on the nulls only)."""
    from pandas.api.types import is_number

    return int(nulls.apply(is_number).sum()) if len(nulls) else 0


def profile(df):
    """A whylogs profile view of a pandas frame (large frames on two cores: profiles merge exactly as
    sketches do, and whylogs holds the GIL)."""
    why = _whylogs()

    if len(df) < PARALLEL_ROWS or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return why.log(pandas=df).view()
    return _profile_in_two(df)


class Rolling:
    """A profile that grows as frames are tracked into it: whylogs sets up a profile's columns once (about
    70 ms for the request's 21 columns), so a long-lived process tracking every few seconds (the service's
    recorder) pays that once a window, not once a batch, and merges nothing."""

    def __init__(self):
        self._profile = None

    def track(self, df) -> None:
        why = _whylogs()
        if self._profile is None:
            self._profile = why.log(pandas=df).profile()
        else:
            self._profile.track(pandas=df)

    def view(self):
        """The profile so far (a view: what ``write`` and ``merge`` take), or None before any rows."""
        return None if self._profile is None else self._profile.view()


def _profile_in_two(df):
    why = _whylogs()
    from whylogs.core import DatasetProfileView

    half = len(df) // 2
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child profiles the first half and sends it back serialized
        status = 1
        try:
            os.close(read_end)
            data = why.log(pandas=df.iloc[:half]).view().serialize()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    mine = why.log(pandas=df.iloc[half:]).view()
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return why.log(pandas=df).view()  # the child failed: do it here, slower but right
    return DatasetProfileView.deserialize(data).merge(mine)


def write(view, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    view.write(str(path))
    return path


def read(path: Path):
    from whylogs.core import DatasetProfileView

    return DatasetProfileView.read(str(path))


def check_contract(view, table: Table, categories: dict[str, set]) -> list[dict]:
    """Evaluate the contract's rules as whylogs constraints on a profile.

    ``categories`` maps a column to its known values (from the referenced table). Returns one dict a
    constraint: column, rule, severity, passed.
    """
    from whylogs.core.constraints import ConstraintsBuilder
    from whylogs.core.constraints.factories import frequent_strings_in_reference_set, is_in_range, no_missing_values

    columns = set(view.get_columns())
    rules = []
    for col in table.columns:
        if col.name not in columns:
            continue
        if col.not_null:
            rules.append((col, "not null", "error", no_missing_values(col.name)))
        if col.min is not None or col.max is not None:
            lo = col.min if col.min is not None else float("-inf")
            hi = col.max if col.max is not None else float("inf")
            rules.append((col, f"between {col.min} and {col.max}", col.severity, is_in_range(col.name, lo, hi)))
        if col.name in categories:
            rules.append((col, f"in {col.in_table[0]}.{col.in_table[1]}", "error",
                          frequent_strings_in_reference_set(col.name, set(categories[col.name]))))
    builder = ConstraintsBuilder(dataset_profile_view=view)
    for *_, constraint in rules:
        builder.add_constraint(constraint)
    report = builder.build().generate_constraints_report()
    out = []
    for (col, rule, severity, _), result in zip(rules, report):
        out.append({"table": table.name, "column": col.name, "rule": rule, "severity": severity,
                    "passed": bool(result.passed)})
    return out


def merge(a, b):
    """Two profile views of the same columns as one (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


QUANTILE_GRID = 1000  # a number column's summary: its quantiles at 1/1000, 2/1000, ..., 1


def summaries(source, grid: int = QUANTILE_GRID) -> dict[str, dict]:
    """Plain per-column summaries of a profile (a view, its serialized bytes, or a file ``write`` made),
    what drift needs from a sketch when the rows are gone (``monitoring.drift.compare_summaries``).

    Each column: ``kind`` ('number', 'category', 'other' for objects whylogs keeps no distribution of, or
    'empty' when every value is missing), ``dtype`` (whylogs' type of its values: 'fractional',
    'integral', 'boolean', 'string', 'object' or 'mixed'), ``n`` (rows), ``missing`` (null or NaN),
    ``basis`` 'sketch'; numbers: ``quantiles``, the KLL sketch's generalized inverse CDF (smallest q with
    F(q) >= p) at p = i/grid, i = 1..grid; categories: ``items``, the frequent-items sketch's estimated
    count of each value it is sure is frequent (no false positives; as text, as whylogs keys them: exact
    while a column has fewer distinct values than the sketch holds, about 750), and ``other``, the
    non-missing values it did not keep (0 in that exact case)."""
    from whylogs.core import DatasetProfileView

    if isinstance(source, (bytes, bytearray, memoryview)):
        view = DatasetProfileView.deserialize(bytes(source))
    elif hasattr(source, "get_columns"):
        view = source
    else:
        view = read(Path(source))
    return {name: _summary(column, grid) for name, column in view.get_columns().items()}


def _summary(column, grid: int) -> dict:
    metrics = set(column.get_metric_names())
    counts = column.get_metric("counts") if "counts" in metrics else None
    n = int(counts.n.value) if counts is not None else 0
    missing = int(counts.null.value) if counts is not None else 0
    types = column.get_metric("types").to_summary_dict() if "types" in metrics else {}
    present = [t for t in ("fractional", "integral", "boolean", "string", "object") if types.get(t, 0) > 0]
    out = {"kind": "empty", "dtype": present[0] if len(present) == 1 else ("mixed" if present else "empty"),
           "n": n, "missing": missing, "basis": "sketch"}
    values = n - missing
    if values <= 0 or not present:
        return out
    if set(present) <= {"fractional", "integral"} and "distribution" in metrics:
        kll = column.get_metric("distribution").kll.value
        if not kll.is_empty():  # get_quantiles on an empty sketch crashes the process
            out["kind"] = "number"
            out["quantiles"] = [float(q) for q in kll.get_quantiles([i / grid for i in range(1, grid + 1)], True)]
        return out
    if "frequent_items" in metrics and {"boolean", "string"} & set(present):
        import whylogs_sketching as ds

        sketch = column.get_metric("frequent_items").frequent_strings.value
        items = {} if sketch.is_empty() else {
            str(value): int(estimate) for value, estimate, *_ in
            sketch.get_frequent_items(ds.frequent_items_error_type.NO_FALSE_POSITIVES)}
        out.update(kind="category", items=items, other=max(values - sum(items.values()), 0))
        return out
    out["kind"] = "other"
    return out
