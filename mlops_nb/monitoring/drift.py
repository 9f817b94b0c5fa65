"""Drift of one table against another, column by column: any CSV or Parquet files, or a model version's
training reference, so drift is usable on data the pipeline never saw.

Methods (``config.DRIFT_METHODS``; ``auto`` = ks for numbers, chi2 for categories):

- ``ks``: the two-sample Kolmogorov-Smirnov statistic, numbers (and date/times) only. From rows it is
  exactly ``scipy.stats.ks_2samp``'s statistic (computed here on the smaller sample's points, the same
  fractions of the same counts) and its p-value (scipy's exact method up to 10,000 rows a side, else its
  asymptotic ``kstwo``, as ks_2samp chooses), both from ``monitoring.kolmogorov`` so that a monitor call
  need not import scipy.stats.
  On a category column ks does not apply: the result has no statistic and a note (a mixed table with
  ``--method ks`` still checks its numbers instead of failing).
- ``chi2``: Pearson's chi-square test of homogeneity on the 2 x K table of counts,
  ``scipy.stats.chi2_contingency(..., correction=False)``'s statistic and p-value (the same arithmetic, here;
  no Yates correction, so a two-category column is treated like any other); drifted when the p-value is below the threshold. Numbers are counted in
  the bins below.
- ``js`` (Jensen-Shannon distance, base 2, as ``scipy.spatial.distance.jensenshannon``: in [0, 1]),
  ``hellinger`` (``sqrt(1 - sum(sqrt(p * q)))``, in [0, 1]) and ``psi`` (``sum((q - p) * ln(q / p))``) on the
  proportions of categories or bins. JS and Hellinger need no epsilon (0 log 0 = 0); PSI replaces an
  empty proportion by ``PSI_EPSILON`` (1e-4), so one empty bin costs about 1e-4 * ln(p / 1e-4), finite.

Bins of a number column: ``monitor.bins`` quantile bins of the REFERENCE (inner edges at its quantiles
j / bins, the smallest value with at least that share at or below it; equal edges merged, so a column
with few values has fewer bins), right-closed, the outer two open to -inf and +inf so that analysis
values outside the reference's range count. Categories: the union of both sides', in the reference's
order then new ones; a category the reference never had counts.

Basis: ``exact`` when both sides are rows; ``sketch`` when either is a whylogs profile (summaries from
``data.profiles.summaries``: KLL quantiles at 1/1000 steps, frequent items; ``summarize`` makes the same
summaries from rows, exact for categories, through the same quantile grid for numbers). KS from a sketch is
max |F_ref - F_an| over both sides' quantile points, each F read off the quantile grid (within 1/1000
of the sketch's CDF, plus the sketch's own rank error, about 0.3% for whylogs' k = 1024); bin counts come
from the same CDF, categories from the frequent items (values a sketch did not keep are counted
together as ``(other)`` on both sides).

Missing values (null, NaN, NaT) never enter a statistic and are always counted (``missing_reference``,
``missing_analysis``); ``n_reference`` / ``n_analysis`` are the values compared. A side with no values
gives a result with no statistic and a note, never an exception; so does a side with fewer values than
``monitor.min_rows`` (a note only: the statistic is still judged). Columns of different types on the two
sides are one ``DataError`` naming each column and both types. Thresholds: ``monitor.thresholds``,
overridden per column by ``monitor.column_thresholds``; drifted = statistic > threshold (chi2: p-value <
threshold).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .. import config
from ..errors import DataError, did_you_mean
from . import kolmogorov

METHODS = ("auto", *config.DRIFT_METHODS)
DEFAULT_THRESHOLDS = {"ks": 0.1, "chi2": 0.05, "js": 0.1, "hellinger": 0.1, "psi": 0.2}
PSI_EPSILON = 1e-4
OTHER = "(other)"  # the values a frequent-items sketch did not keep
PERIODS = ("h", "d", "w", "m")
NUMERIC_KINDS = ("number", "datetime")
_LABELS = {"number": "a number", "datetime": "a date/time", "text": "text", "boolean": "true/false",
           "other": "an object column", "empty": "empty"}


@dataclass
class DriftResult:
    column: str
    method: str
    statistic: float | None
    p_value: float | None
    threshold: float
    drifted: bool
    basis: str  # 'exact' (from rows) or 'sketch' (from a whylogs profile)
    n_reference: int  # values compared (missing ones excluded)
    n_analysis: int
    missing_reference: int
    missing_analysis: int
    note: str = ""


@dataclass
class _Side:
    """One column of one table, ready to compare: sorted values (numbers), counts (categories) or
    quantiles (a sketch's numbers)."""

    kind: str  # number, datetime, text, boolean, other, empty
    dtype: str
    n: int
    missing: int
    basis: str = "exact"
    values: np.ndarray | None = None  # sorted, float64
    counts: pd.Series | None = None  # value -> count, no zeros
    other: float = 0.0  # sketch: values not among ``counts``
    quantiles: np.ndarray | None = None  # sketch: generalized inverse CDF at i / len, i = 1..len
    text_keys: bool = False  # counts keyed by text (summaries), not by the values themselves
    _cache: dict = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------------------------------
# public API


def compare(reference: pd.DataFrame, analysis: pd.DataFrame, columns: list[str] | None = None,
            method: str = "auto", settings=None) -> list[DriftResult]:
    """Drift of ``analysis`` against ``reference`` (both frames of rows: exact statistics), one result a
    column (default: the columns both have, in the reference's order)."""
    return Comparison(reference, columns, method, settings, analysis_columns=list(analysis.columns)).against(analysis)


def compare_summaries(reference: dict, analysis: dict, columns=None, method: str = "auto",
                      settings=None) -> list[DriftResult]:
    """Drift from per-column summaries (``data.profiles.summaries`` of whylogs profiles, or ``summarize``
    of rows): what the monitor has when the rows are gone. Basis 'sketch', except for categories of two
    exact summaries (numbers go through the quantile grid: within 1/1000 of the exact KS)."""
    return Comparison(reference, columns, method, settings, analysis_columns=list(analysis)).against(analysis)


def summarize(frame: pd.DataFrame, columns=None, grid: int = 1000) -> dict[str, dict]:
    """Exact summaries of rows in the format of ``data.profiles.summaries`` (basis 'exact'), to store or
    to compare with a profile's."""
    out = {}
    for name in (columns or list(frame.columns)):
        side = _side(frame[name])
        summary = {"kind": {"text": "category", "boolean": "category"}.get(side.kind, side.kind),
                   "dtype": "boolean" if side.kind == "boolean" else side.dtype, "n": side.n + side.missing,
                   "missing": side.missing, "basis": "exact"}
        if side.kind in NUMERIC_KINDS and side.n:
            summary["kind"] = "number"
            summary["quantiles"] = _quantiles(side, grid).tolist()
        elif side.counts is not None:
            keyed = _text_keys(side.counts)
            summary.update(items={k: int(v) for k, v in keyed.items()}, other=0)
        out[name] = summary
    return out


def chunks(analysis: pd.DataFrame, chunk_size: int | None = None,
           chunk_by: str | None = None) -> Iterator[tuple[int, object, object, pd.DataFrame]]:
    """(index from 0, start, end, rows) of each chunk of ``analysis``.

    Neither argument: one chunk, the whole table. ``chunk_size``: consecutive rows in file order, start
    and end the first and last row's position (from 0). ``chunk_by='COLUMN'``: one chunk a distinct
    value in order of first appearance, start = end = the value. ``chunk_by='COLUMN:PERIOD'`` (PERIOD h,
    d, w (weeks from Monday) or m): one chunk a period of a date/time column that has rows, in time
    order, start the period's first instant and end the next period's (exclusive), as ISO strings.
    Rows whose COLUMN is missing are not dropped: they form a last chunk with start = end = None."""
    if chunk_size is not None and chunk_by is not None:
        raise DataError("Give chunk_size or chunk_by, not both; got both instead.")
    n = len(analysis)
    if chunk_size is None and chunk_by is None:
        yield 0, (0 if n else None), (n - 1 if n else None), analysis
        return
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise DataError(f"The chunk size (--chunk-size) must be an integer > 0; got {chunk_size!r} instead.")
        for i, start in enumerate(range(0, n, int(chunk_size))):
            stop = min(start + int(chunk_size), n)
            yield i, start, stop - 1, analysis.iloc[start:stop]
        return
    column, period = parse_chunk_by(chunk_by, list(analysis.columns))
    series = analysis[column]
    if period is None:
        codes, uniques = pd.factorize(series, use_na_sentinel=True)
        bounds = [(_plain(v), _plain(v)) for v in uniques]
    else:
        starts, ends = _periods(series, column, period)
        codes, uniques = pd.factorize(starts, sort=True, use_na_sentinel=True)
        stops = pd.Series(ends).groupby(codes).first() if len(uniques) else pd.Series(dtype=object)
        bounds = [(uniques[k].isoformat(), stops[k].isoformat()) for k in range(len(uniques))]
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    edges = np.searchsorted(sorted_codes, np.arange(-1, len(uniques) + 1), side="left")
    for k, (start, end) in enumerate(bounds):
        yield k, start, end, analysis.take(order[edges[k + 1]:edges[k + 2]])
    if edges[1] > 0:  # code -1: the column is missing
        yield len(bounds), None, None, analysis.take(order[:edges[1]])


def parse_chunk_by(spec: str, columns: list[str]) -> tuple[str, str | None]:
    """'COLUMN' or 'COLUMN:PERIOD' -> (column, period or None); the column must exist."""
    column, period = str(spec), None
    head, sep, tail = column.rpartition(":")
    if sep and column not in columns:
        if tail.lower() not in PERIODS:
            raise DataError(f"The period of --chunk-by must be one of {', '.join(PERIODS)} (hour, day, week, "
                            f"month); got {tail!r} instead, in {spec!r}. Write COLUMN or COLUMN:PERIOD.")
        column, period = head, tail.lower()
    if column not in columns:
        raise DataError(f"The --chunk-by column {column!r} is not in ANALYSIS; its columns are {columns}."
                        f"{did_you_mean(column, columns)}")
    return column, period


def load_table(spec: str, settings=None, *, name: str = "table") -> pd.DataFrame | dict:
    """A table to compare: a .csv (.csv.gz, .csv.zip, .csv.bz2, .csv.xz) or .parquet file as a frame, or
    ``model:VERSION`` (a version, its prefix or an alias) as that version's training reference: the rows
    of ``reference/train_sample.parquet`` when the version has them (exact), else the summaries of its
    ``reference/train_features.bin`` whylogs profile (sketch). ``name`` ('REFERENCE', 'ANALYSIS') is
    used in messages."""
    spec = str(spec)
    if spec.startswith("model:"):
        return _model_reference(spec[len("model:"):], settings, name)
    path = Path(spec)
    lower = path.name.lower()
    kind = ("parquet" if lower.endswith((".parquet", ".pq")) else
            "csv" if lower.endswith((".csv", ".csv.gz", ".csv.zip", ".csv.bz2", ".csv.xz")) else None)
    if kind is None:
        raise DataError(f"The {name} must be a .csv (or .csv.gz) or .parquet file, or model:VERSION; got "
                        f"{spec!r} instead. Convert the file, or name it by what it holds.")
    if not path.is_file():
        raise DataError(f"The {name} file {spec!r} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                        + f"; looked at {path.resolve()}.")
    frame = _read_parquet(path, name) if kind == "parquet" else _read_csv(path, name)
    return _unique_columns(frame, name)


def _unique_columns(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    twice = sorted({str(c) for c in frame.columns[frame.columns.duplicated()]})
    if twice:
        raise DataError(f"The {name}'s column names must be unique; got {twice} more than once instead. "
                        "Rename the duplicates.")
    return frame


class Comparison:
    """A reference prepared once (its columns' sorted values, counts, bins), compared with any number
    of analysis tables or chunks: ``Comparison(reference, ...).against(chunk)``."""

    def __init__(self, reference, columns=None, method: str = "auto", settings=None, analysis_columns=None,
                 exclude=()):
        if method not in METHODS:
            raise DataError(f"The drift method must be one of {', '.join(METHODS)}; got {method!r} instead."
                            f"{did_you_mean(str(method), METHODS)}")
        self.method = method
        self.settings = settings if settings is not None else config.get_settings()
        self.is_summary = isinstance(reference, dict)
        ref_columns = list(reference) if self.is_summary else list(reference.columns)
        if self.is_summary and analysis_columns is not None:  # a profile keeps its columns sorted by name
            order = {c: i for i, c in enumerate(analysis_columns)}
            ref_columns = sorted(ref_columns, key=lambda c: order.get(c, len(order)))
        self.columns = select_columns(ref_columns, analysis_columns if analysis_columns is not None else ref_columns,
                                      columns, exclude)
        if not self.is_summary:
            _unique_columns(reference, "REFERENCE")
        self.reference = {c: (_side_from_summary(reference[c]) if self.is_summary else _side(reference[c]))
                          for c in self.columns}

    def against(self, analysis) -> list[DriftResult]:
        is_summary = isinstance(analysis, dict)
        have = list(analysis) if is_summary else list(analysis.columns)
        select_columns(self.columns, have, self.columns)  # raises naming what is missing
        if not is_summary:
            _unique_columns(analysis, "ANALYSIS")
        sides = {c: _side_from_summary(analysis[c]) if is_summary else _side(analysis[c]) for c in self.columns}
        problems = []
        for column, side in sides.items():  # every mismatched column in one message
            try:
                _check_kinds(column, self.reference[column], side)
            except DataError as e:
                problems.append(str(e))
        if len(problems) == 1:
            raise DataError(problems[0])
        if problems:
            raise DataError(f"{len(problems)} columns differ in type between REFERENCE and ANALYSIS:\n" +
                            "\n".join(f"  - {p}" for p in problems))
        return [self._judge(column, self.reference[column], side) for column, side in sides.items()]

    def threshold(self, column: str, method: str) -> float:
        mon = self.settings.monitor
        per_column = dict(mon.column_thresholds).get(column, {})
        return float(per_column.get(method, dict(mon.thresholds).get(method, DEFAULT_THRESHOLDS[method])))

    def _judge(self, column: str, ref: _Side, an: _Side) -> DriftResult:
        kind = "other" if "other" in (ref.kind, an.kind) else ref.kind if ref.kind != "empty" else an.kind
        numeric = kind in NUMERIC_KINDS
        method = self.method if self.method != "auto" else ("ks" if numeric or kind == "empty" else "chi2")
        basis = "exact" if ref.basis == an.basis == "exact" else "sketch"
        result = DriftResult(column, method, None, None, self.threshold(column, method), False, basis,
                             ref.n, an.n, ref.missing, an.missing)
        if ref.n == 0 or an.n == 0:
            sides = [s for s, side in (("REFERENCE", ref), ("ANALYSIS", an)) if side.n == 0]
            result.note = " and ".join(sides) + (" has" if len(sides) == 1 else " have") + " no values in this " \
                "column (" + ", ".join(f"{side.missing} missing" for side in (ref, an) if side.n == 0) + \
                "): nothing to compare"
            return result
        if kind == "other":
            result.note = "the profile keeps no distribution of this column (whylogs object type)"
            return result
        if method == "ks" and not numeric:
            result.note = f"ks compares numbers and this column is {_LABELS[kind]}: use chi2, js, hellinger or psi"
            return result
        if method == "ks":
            if basis == "exact":
                stat, p = _ks_exact(ref.values, an.values)
            else:
                grid = len(ref.quantiles if ref.quantiles is not None else an.quantiles)  # rows: the sketch's grid
                stat = _ks_quantiles(_quantiles(ref, grid), _quantiles(an, grid))
                p = kolmogorov.asymptotic(stat, ref.n, an.n)
        else:
            if numeric:
                edges = self._edges(ref)
                c_ref, c_an = _bin_counts(ref, edges), _bin_counts(an, edges)
            else:
                c_ref, c_an = _aligned_counts(ref, an)
                lumped = max(ref.other, an.other)
                if lumped > 0:
                    result.note = ("the profile did not keep every value of this column: those it did not keep "
                                   f"are compared as one category {OTHER!r}")
            stat, p = _binned(method, c_ref, c_an)
        few = int(self.settings.monitor.min_rows)
        if min(ref.n, an.n) < few:
            result.note = "; ".join(filter(None, [result.note, f"fewer than monitor.min_rows ({few}) values on a "
                                                  "side: the statistic is noisy"]))
        result.statistic = None if stat is None or not math.isfinite(stat) else float(stat)
        result.p_value = None if p is None or not math.isfinite(p) else float(p)
        if method == "chi2":
            result.drifted = result.p_value is not None and result.p_value < result.threshold
        else:
            result.drifted = result.statistic is not None and result.statistic > result.threshold
        return result

    def _edges(self, ref: _Side) -> np.ndarray:
        bins = int(self.settings.monitor.bins)
        if bins not in ref._cache:
            points = ref.values if ref.values is not None else ref.quantiles
            ref._cache[bins] = np.unique(_inverse_cdf(points, np.arange(1, bins) / bins))
        return ref._cache[bins]


def select_columns(ref_columns, an_columns, columns=None, exclude=()) -> list[str]:
    """The columns to compare: ``columns`` (each must be in both tables), else those both have minus
    ``exclude``, in the reference's order."""
    ref_columns, an_columns = [str(c) for c in ref_columns], [str(c) for c in an_columns]
    if columns is None:
        shared = set(an_columns)
        chosen = [c for c in ref_columns if c in shared and c not in set(exclude)]
        if not chosen:
            raise DataError(f"REFERENCE and ANALYSIS have no column in common to compare; REFERENCE has "
                            f"{ref_columns}, ANALYSIS has {an_columns}. Compare tables of the same columns.")
        return chosen
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    columns = list(dict.fromkeys(columns))
    if not columns:
        raise DataError("The columns to compare (--columns) must name at least one column; got none instead.")
    for side, have in (("REFERENCE", ref_columns), ("ANALYSIS", an_columns)):
        absent = [c for c in columns if c not in set(have)]
        if absent:
            raise DataError(f"The column{'s' if len(absent) > 1 else ''} {', '.join(map(repr, absent))} asked for "
                            f"(--columns) {'are' if len(absent) > 1 else 'is'} not in {side}; its columns are "
                            f"{have}.{did_you_mean(absent[0], have)}")
    return columns


# --------------------------------------------------------------------------------------------------
# columns as sides


def _side(series: pd.Series) -> _Side:
    """A column of rows as a ``_Side``: numbers and date/times as sorted floats, the rest as counts."""
    from pandas.api import types

    dtype = series.dtype
    name = str(dtype)
    if isinstance(dtype, pd.CategoricalDtype):  # text columns of the files we read arrive as these
        name = "string" if types.is_object_dtype(dtype.categories.dtype) else name
        codes = series.cat.codes.to_numpy()
        present = codes >= 0
        counts = np.bincount(codes[present], minlength=len(dtype.categories))
        kept = counts > 0
        cats = dtype.categories
        kind = "text"
        if len(cats) and types.is_bool_dtype(cats.dtype):
            kind = "boolean"
        elif len(cats) and types.is_numeric_dtype(cats.dtype):
            values = np.repeat(cats.to_numpy(dtype=float), counts)
            return _numbers(values, int((~present).sum()), name)
        return _Side(kind if kept.any() else "empty", name, int(present.sum()), int((~present).sum()),
                     counts=pd.Series(counts[kept], index=cats[kept]))
    if types.is_bool_dtype(dtype):
        return _categories(series, "boolean", name)
    if types.is_numeric_dtype(dtype):
        values = series.to_numpy(dtype=float, na_value=np.nan)
        missing = np.isnan(values)
        return _numbers(values[~missing], int(missing.sum()), name)
    if types.is_datetime64_any_dtype(dtype) or types.is_timedelta64_dtype(dtype):
        missing = series.isna().to_numpy()
        values = series.array.asi8[~missing].astype(float)  # ns since the epoch (UTC when tz-aware)
        side = _numbers(values, int(missing.sum()), name)
        side.kind = "datetime" if side.n else "empty"
        return side
    missing = series.isna().to_numpy()
    present = series[~missing]
    inferred = types.infer_dtype(present, skipna=True) if len(present) else "empty"
    if inferred == "empty":
        return _Side("empty", name, 0, int(missing.sum()))
    if inferred == "boolean":
        return _categories(series, "boolean", name)
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        values = pd.to_numeric(present, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        return _numbers(values[~np.isnan(values)], int(missing.sum() + np.isnan(values).sum()), name)
    if inferred in ("datetime", "datetime64", "date"):
        stamps = pd.to_datetime(present, errors="coerce", utc=True)
        bad = stamps.isna().to_numpy()
        side = _numbers(stamps.array.asi8[~bad].astype(float), int(missing.sum() + bad.sum()), name)
        side.kind = "datetime"
        return side
    return _categories(series, "text", name)


def _numbers(values: np.ndarray, missing: int, dtype: str) -> _Side:
    values = np.sort(np.asarray(values, dtype=float))
    return _Side("number" if len(values) else "empty", dtype, len(values), missing, values=values)


def _categories(series: pd.Series, kind: str, dtype: str) -> _Side:
    try:
        counts = series.value_counts(dropna=True, sort=False)
        dict.fromkeys(counts.index)  # arrays count, but cannot be keys
    except TypeError:  # unhashable values (lists, dicts, arrays): counted by their text
        counts = series[series.notna()].astype(str).value_counts(sort=False)
    counts = counts[counts > 0]
    n = int(counts.sum())
    return _Side(kind if n else "empty", dtype, n, len(series) - n, counts=counts)


def _side_from_summary(summary: dict) -> _Side:
    """A column summary (``data.profiles.summaries`` or ``summarize``) as a ``_Side``."""
    kind = {"number": "number", "empty": "empty", "other": "other"}.get(summary.get("kind"))
    dtype = str(summary.get("dtype", "?"))
    if kind is None:  # category
        kind = "boolean" if dtype == "boolean" else "text"
    total, missing = int(summary.get("n", 0)), int(summary.get("missing", 0))
    # numbers go through a quantile grid even when it was exact: their basis is 'sketch'
    basis = summary.get("basis", "sketch") if kind in ("text", "boolean", "empty") else "sketch"
    side = _Side(kind, dtype, max(total - missing, 0), missing, basis=basis, text_keys=True)
    if kind == "number":
        side.quantiles = np.asarray(summary["quantiles"], dtype=float)
    elif kind in ("text", "boolean"):
        side.counts = pd.Series(summary.get("items", {}), dtype=float)
        side.other = float(summary.get("other", 0))
    return side


def _check_kinds(column: str, ref: _Side, an: _Side) -> None:
    if ref.kind == an.kind or {"empty", "other"} & {ref.kind, an.kind}:
        return
    hint = ("A stray non-number turns a CSV column of numbers into text: fix those values"
            if "text" in (ref.kind, an.kind) else "Convert one side's column to the other's type")
    raise DataError(f"Column {column!r} is {_LABELS[ref.kind]} in REFERENCE ({ref.dtype}) but {_LABELS[an.kind]} "
                    f"in ANALYSIS ({an.dtype}); drift compares like with like. {hint}, or leave the column out "
                    "with --columns.")


def _text_keys(counts: pd.Series) -> pd.Series:
    """Counts keyed as whylogs keys frequent items (text, at most 128 characters)."""
    keys = [str(k)[:128] for k in counts.index]
    return pd.Series(counts.to_numpy(dtype=float), index=keys).groupby(level=0, sort=False).sum()


# --------------------------------------------------------------------------------------------------
# statistics


def _ks_exact(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value of two sorted samples, as ``scipy.stats.ks_2samp`` gives them."""
    # scipy evaluates F_a - F_b (searchsorted 'right' / n) at every point of both samples. Between two
    # distinct points of the smaller sample its F is constant and the other's rises, so the extremes are
    # at its points (right) and just before them (left): the same fractions of the same counts.
    big, small = (a, b) if len(a) >= len(b) else (b, a)
    nb, ns = len(big), len(small)
    diffs = np.concatenate([
        np.searchsorted(big, small, side="right") / nb - np.searchsorted(small, small, side="right") / ns,
        np.searchsorted(big, small, side="left") / nb - np.searchsorted(small, small, side="left") / ns])
    d = float(max(np.clip(-diffs.min(), 0, 1), diffs.max()))
    found = kolmogorov.two_sample(d, len(a), len(b))
    if found is None:  # scipy's exact method failed (it falls back, with a warning) or is out of reach
        from scipy import stats

        res = stats.ks_2samp(a, b)
        return float(res.statistic), float(res.pvalue)
    return found


def _quantiles(side: _Side, grid: int) -> np.ndarray:
    """The generalized inverse CDF at i / grid (i = 1..grid): a sketch's own, or exact from rows."""
    if side.quantiles is not None:
        return side.quantiles
    key = ("quantiles", grid)
    if key not in side._cache:
        side._cache[key] = _inverse_cdf(side.values, np.arange(1, grid + 1) / grid)
    return side._cache[key]


def _inverse_cdf(points: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The smallest of the sorted ``points`` with at least a share ``probs`` of them at or below it."""
    n = len(points)
    return points[np.clip(np.ceil(probs * n).astype(np.int64) - 1, 0, n - 1)]


def _cdf(quantiles: np.ndarray, x: np.ndarray) -> np.ndarray:
    """F(x) read off a quantile grid: the share of grid points at or below x (F floored to the grid)."""
    return np.searchsorted(quantiles, x, side="right") / len(quantiles)


def _ks_quantiles(qa: np.ndarray, qb: np.ndarray) -> float:
    points = np.union1d(qa, qb)
    return float(np.max(np.abs(_cdf(qa, points) - _cdf(qb, points))))


def _bin_counts(side: _Side, edges: np.ndarray) -> np.ndarray:
    """Counts in the bins (-inf, e1], (e1, e2], ..., (ek, inf): exact from rows, else n x CDF differences."""
    if side.values is not None:
        at_or_below = np.searchsorted(side.values, edges, side="right")
        return np.diff(np.concatenate([[0], at_or_below, [side.n]])).astype(float)
    return np.diff(np.concatenate([[0.0], _cdf(side.quantiles, edges), [1.0]])) * side.n


def _aligned_counts(ref: _Side, an: _Side) -> tuple[np.ndarray, np.ndarray]:
    """Counts of both sides over the union of their categories (the reference's first). Against a sketch
    the keys are text, and values an incomplete sketch did not keep go together into ``(other)``."""
    r, a = ref.counts, an.counts
    if ref.text_keys != an.text_keys:
        r, a = (r if ref.text_keys else _text_keys(r)), (a if an.text_keys else _text_keys(a))
    incomplete = [s for s, side in ((r, ref), (a, an)) if side.other > 0]
    r_other, a_other = ref.other, an.other
    if incomplete:
        known = set.intersection(*(set(s.index) for s in incomplete))
        r, r_other = _lump(r, known, r_other)
        a, a_other = _lump(a, known, a_other)
    keys = list(dict.fromkeys([*r.index, *a.index]))
    c_ref = r.reindex(keys, fill_value=0).to_numpy(dtype=float)
    c_an = a.reindex(keys, fill_value=0).to_numpy(dtype=float)
    if r_other > 0 or a_other > 0:
        c_ref, c_an = np.append(c_ref, r_other), np.append(c_an, a_other)
    return c_ref, c_an


def _lump(counts: pd.Series, known: set, other: float) -> tuple[pd.Series, float]:
    keep = counts.index.isin(list(known))
    return counts[keep], float(other + counts[~keep].sum())


def _binned(method: str, c_ref: np.ndarray, c_an: np.ndarray) -> tuple[float, float | None]:
    """The statistic (and chi2's p-value) of two count vectors over the same bins or categories."""
    keep = (c_ref > 0) | (c_an > 0)
    c_ref, c_an = c_ref[keep], c_an[keep]
    if method == "chi2":
        if len(c_ref) < 2:  # one category on both sides: no test to make, nothing differs
            return 0.0, 1.0
        return _chi2_homogeneity(np.vstack([c_ref, c_an]))
    p, q = c_ref / c_ref.sum(), c_an / c_an.sum()
    if method == "js":
        from scipy.special import rel_entr

        m = (p + q) / 2.0
        return float(np.sqrt((np.sum(rel_entr(p, m)) + np.sum(rel_entr(q, m))) / np.log(2) / 2.0)), None
    if method == "hellinger":
        return float(np.sqrt(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2) / 2)), None
    if method == "psi":
        p, q = np.maximum(p, PSI_EPSILON), np.maximum(q, PSI_EPSILON)
        return float(np.sum((q - p) * np.log(q / p))), None
    raise DataError(f"The drift method must be one of {', '.join(METHODS)}; got {method!r} instead.")


def _chi2_homogeneity(observed: np.ndarray) -> tuple[float, float]:
    """``scipy.stats.chi2_contingency(observed, correction=False)``'s statistic and p-value, the same
    arithmetic through scipy.special (scipy.stats costs 0.45 s to import)."""
    from scipy.special import chdtrc

    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True) / observed.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = (observed.shape[0] - 1) * (observed.shape[1] - 1)
    return statistic, float(chdtrc(dof, statistic))


# --------------------------------------------------------------------------------------------------
# reading tables


def _read_parquet(path: Path, name: str) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataError(f"The {name} file {str(path)!r} cannot be read as Parquet ({_first_line(e)}). Check that "
                        "it is a complete Parquet file, or give a CSV file ending in .csv.") from None
    return _to_pandas(table)


def _read_csv(path: Path, name: str) -> pd.DataFrame:
    """pyarrow's multi-threaded reader (types inferred from the first block); a column that changes type
    later in the file makes it fall back to pandas, where such a column is text."""
    import pyarrow as pa
    from pyarrow import csv

    if not path.name.lower().endswith(".zip"):
        try:
            # empty fields are missing, as pandas reads them
            return _to_pandas(csv.read_csv(path, convert_options=csv.ConvertOptions(strings_can_be_null=True)))
        except pa.ArrowInvalid:
            pass
        except (pa.ArrowException, OSError, UnicodeDecodeError, ValueError) as e:
            raise DataError(f"The {name} file {str(path)!r} cannot be read as CSV ({_first_line(e)}). Check its "
                            "encoding (UTF-8) and that every line has the header's columns.") from None
    try:
        return pd.read_csv(path, low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as e:
        raise DataError(f"The {name} file {str(path)!r} cannot be read as CSV ({_first_line(e)}). Check its "
                        "encoding (UTF-8) and that every line has the header's columns.") from None


def _to_pandas(table) -> pd.DataFrame:
    """Text columns arrive dictionary-encoded (pandas categoricals): counting them is a bincount, and 20
    million Python strings are never made."""
    import pyarrow as pa

    columns = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = col.dictionary_encode()
        columns.append(col)
    return pa.table(columns, names=table.column_names).to_pandas()


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _model_reference(version: str, settings, name: str) -> pd.DataFrame | dict:
    from .. import registry
    from ..data import profiles, warehouse
    from ..registry import gate

    if not version:
        raise DataError(f"The {name} model:VERSION must name a version or an alias; got 'model:' instead "
                        "(see `mlops-nb models list`).")
    settings = settings if settings is not None else config.get_settings()
    with warehouse.connect(settings=settings) as con:
        resolved = registry.resolve(con, version)
        tag = con.execute("SELECT tag FROM model_versions WHERE version = ?", [resolved]).fetchone()[0]
    folder = registry.reference_dir(tag, settings)  # read without importing BentoML
    sample = folder / gate.TRAIN_SAMPLE_FILE
    if sample.is_file():
        return _read_parquet(sample, name)
    profile = folder / gate.TRAIN_PROFILE_FILE
    if not profile.is_file():
        raise DataError(f"Model version {resolved} has no training reference ({profile} is missing); train it "
                        "again with `mlops-nb run`, or compare against a data file.")
    return profiles.summaries(profile)


# --------------------------------------------------------------------------------------------------
# chunks


def _periods(series: pd.Series, column: str, period: str) -> tuple[pd.Series, pd.Series]:
    from pandas.api import types

    if types.is_numeric_dtype(series.dtype) and not types.is_bool_dtype(series.dtype):
        raise DataError(f"The --chunk-by column {column!r} must hold dates/times for the period {period!r}; got "
                        f"numbers ({series.dtype}) instead. Chunk by the column's values (--chunk-by {column}) "
                        "or by a time column.")
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.astype(object)
    try:
        with warnings.catch_warnings():  # "could not infer format": each value is then parsed on its own
            warnings.simplefilter("ignore")
            stamps = (series if types.is_datetime64_any_dtype(series.dtype) else
                      pd.to_datetime(series, errors="coerce", format="mixed"))
    except (ValueError, TypeError) as e:  # e.g. mixed time zones
        raise DataError(f"The --chunk-by column {column!r} must hold dates/times of one time zone for the period "
                        f"{period!r}; pandas could not read it ({_first_line(e)}).") from None
    if not types.is_datetime64_any_dtype(stamps.dtype):
        raise DataError(f"The --chunk-by column {column!r} must hold dates/times of one time zone for the period "
                        f"{period!r}; its values mix time zones or types. Convert them to UTC first.")
    bad = stamps.isna() & series.notna()
    if bad.any():
        raise DataError(f"The --chunk-by column {column!r} must hold dates/times for the period {period!r}; "
                        f"{int(bad.sum())} value(s) are not, such as {series[bad].iloc[0]!r}. Fix them, or chunk by "
                        "the column's values.")
    try:
        day = stamps.dt.normalize()
        if period == "h":
            start, step = stamps.dt.floor("h"), pd.Timedelta(hours=1)
        elif period == "d":
            start, step = day, pd.DateOffset(days=1)
        elif period == "w":
            start, step = day - pd.to_timedelta(stamps.dt.weekday, unit="D"), pd.DateOffset(days=7)
        else:
            start, step = day - pd.to_timedelta(stamps.dt.day - 1, unit="D"), pd.DateOffset(months=1)
        return start, start + step
    except (ValueError, TypeError) as e:  # e.g. a local time a daylight-saving change makes ambiguous
        raise DataError(f"The --chunk-by column {column!r} cannot be cut into periods {period!r} "
                        f"({_first_line(e)}); convert it to UTC first.") from None


def _plain(value):
    """A chunk bound as JSON can hold it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    return value
