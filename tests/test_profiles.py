"""profiles: the vectorised whylogs preprocessing hands whylogs exactly what whylogs' own code would.

Each column type we log is split twice, by ``profiles._split_fast`` and by whylogs' original
``PreprocessedColumn._pandas_split``, and every field whylogs reads afterwards is compared. Profiles as a
whole are then compared on every metric that is deterministic (whylogs' KLL quantiles are randomised:
two profiles of the same frame by whylogs alone differ there).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mlops_nb.data import profiles


def frame(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    floats = rng.normal(size=n)
    floats[::7] = np.nan
    floats[3], floats[5] = np.inf, -np.inf
    times = pd.Series(pd.date_range("2013-01-01", periods=n, freq="h", tz="UTC"))
    times[::11] = pd.NaT
    return pd.DataFrame({
        "f64": floats,
        "f32": rng.normal(size=n).astype("float32"),
        "all_nan": np.full(n, np.nan),
        "i64": rng.integers(-5, 5, n),
        "i8": rng.integers(0, 5, n).astype("int8"),
        "u32": rng.integers(0, 5, n).astype("uint32"),
        "nullable_int": pd.array([1, None, 3] * (n // 3), dtype="Int64"),
        "strings": pd.Series(rng.choice(["EWR", "JFK", "LGA"], n), dtype=object),
        "strings_with_nulls": pd.Series(["a", None, np.nan, "b", pd.NA, "c"] * (n // 6), dtype=object),
        "naive_times": pd.Series(pd.date_range("2013-01-01", periods=n, freq="min")),
        "utc_times": times,
        # whylogs' own code takes these:
        "mixed": pd.Series([1, "a", None, 2.5, True, np.nan] * (n // 6), dtype=object),
        "bools": rng.integers(0, 2, n).astype(bool),
        "string_dtype": pd.array(["x", None] * (n // 2), dtype="string"),
        "all_null": pd.Series([None] * n, dtype=object),
    })


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, pd.Series):
        return isinstance(b, pd.Series) and a.dtype == b.dtype and a.equals(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


FIELDS = ["null_count", "nan_count", "inf_count", "bool_count", "bool_count_where_true",
          "numpy.ints", "numpy.floats", "numpy.strings", "pandas.strings", "pandas.tensors", "pandas.objs",
          "list.ints", "list.floats", "list.strings", "list.tensors", "list.objs"]


@pytest.mark.parametrize("name", list(frame().columns))
def test_split_fast_gives_whylogs_the_same_values(name):
    from whylogs.core.preprocessing import PreprocessedColumn

    profiles._whylogs()
    series = frame()[name]
    fast, slow = PreprocessedColumn(), PreprocessedColumn()
    handled = profiles._split_fast(fast, series, False)
    profiles._whylogs_split(slow, series, False)
    if name in ("mixed", "bools", "string_dtype", "all_null"):
        assert not handled, f"{name} should be left to whylogs"
        return
    assert handled, f"{name} should take the fast path"
    for path in FIELDS:
        part, _, attr = path.rpartition(".")
        a = getattr(getattr(fast, part) if part else fast, attr)
        b = getattr(getattr(slow, part) if part else slow, attr)
        assert _same(a, b), f"{name}: {path} differs: {a!r} vs {b!r}"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf in a column, in whylogs too
def test_profiles_match_whylogs_own_on_every_deterministic_metric():
    import whylogs as why
    from whylogs.core.preprocessing import PreprocessedColumn

    df = frame()
    ours = profiles.profile(df).to_pandas()
    patched = PreprocessedColumn._pandas_split
    PreprocessedColumn._pandas_split = profiles._whylogs_split
    try:
        theirs = why.log(pandas=df).view().to_pandas()
    finally:
        PreprocessedColumn._pandas_split = patched
    random = [c for c in theirs.columns if c.startswith("distribution/") and c not in
              ("distribution/n", "distribution/max", "distribution/min", "distribution/mean")]
    keep = [c for c in theirs.columns if c not in random]
    assert ours.columns.tolist() == theirs.columns.tolist()
    pd.testing.assert_frame_equal(ours[keep], theirs[keep], check_exact=False, rtol=1e-12)
    assert set(ours.index) == set(df.columns)
