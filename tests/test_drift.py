"""`mlops-nb drift` and monitoring/drift.py: statistics against scipy and plain numpy, known shifts found
and no shift not, chunks, missing values, clear errors, and sketch (whylogs) statistics near exact ones."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cli, run_ok, write_settings
from mlops_nb import config
from mlops_nb.data import profiles
from mlops_nb.monitoring import drift

SEED = 5  # the no-shift pair passes every test at p > 0.3 (chi2 flags 5% of equal pairs by design)
BINNED = ("chi2", "js", "hellinger", "psi")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    folder = tmp_path_factory.mktemp("drift-project")
    write_settings(folder / "settings.ini", {})
    return folder


@pytest.fixture(scope="module")
def settings(project):
    return config.load(project / "settings.ini", environ={})


def frame(seed: int, n: int, shift: bool = False) -> pd.DataFrame:
    """A number (normal; shifted: mean +0.5 sd), an integer, a category and a true/false column."""
    rng = np.random.default_rng(seed)
    mix = [0.2, 0.2, 0.3, 0.3] if shift else [0.4, 0.3, 0.2, 0.1]
    return pd.DataFrame({
        "x": rng.normal(0.5 if shift else 0.0, 1.0, n),
        "k": rng.poisson(6.0 if shift else 4.0, n),
        "c": rng.choice(["a", "b", "c", "d"], n, p=mix),
        "b": rng.random(n) < (0.75 if shift else 0.5),
    })


@pytest.fixture(scope="module")
def tables():
    return frame(SEED, 20_000), frame(SEED + 1, 15_000), frame(SEED + 2, 15_000, shift=True)


# --------------------------------------------------------------------------------------------------
# statistics against scipy and numpy


@pytest.mark.parametrize("n_ref,n_an,decimals", [(3000, 2000, None), (40_000, 25_000, None), (40_000, 25_000, 1),
                                                 (12_000, 50, 0)])
def test_exact_ks_is_scipys(settings, n_ref, n_an, decimals):
    rng = np.random.default_rng(n_ref + n_an)
    a, b = rng.normal(0, 1, n_ref), rng.normal(0.05, 1.1, n_an)
    if decimals is not None:  # ties
        a, b = a.round(decimals), b.round(decimals)
    a[::97] = np.nan  # missing values are left out of the statistic, and counted
    expected = stats.ks_2samp(a[~np.isnan(a)], b)
    (r,) = drift.compare(pd.DataFrame({"x": a}), pd.DataFrame({"x": b}), method="ks", settings=settings)
    assert r.basis == "exact" and r.method == "ks"
    assert abs(r.statistic - expected.statistic) <= 1e-12
    assert r.p_value == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-300)
    assert (r.n_reference, r.missing_reference, r.n_analysis, r.missing_analysis) == (
        n_ref - len(a[::97]), len(a[::97]), n_an, 0)
    swapped = drift.compare(pd.DataFrame({"x": b}), pd.DataFrame({"x": a}), method="ks", settings=settings)[0]
    assert abs(swapped.statistic - expected.statistic) <= 1e-12


def test_chi2_is_scipys_on_the_union_of_categories(settings):
    ref = pd.DataFrame({"c": ["a"] * 50 + ["b"] * 30 + ["c"] * 20 + [None] * 7})
    an = pd.DataFrame({"c": ["a"] * 40 + ["b"] * 30 + ["new"] * 10 + [None] * 3})  # 'c' gone, 'new' unseen
    (r,) = drift.compare(ref, an, method="chi2", settings=settings)
    table = np.array([[50, 30, 20, 0], [40, 30, 0, 10]])
    expected = stats.chi2_contingency(table, correction=False)
    assert r.statistic == pytest.approx(expected.statistic, rel=1e-12)
    assert r.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert r.drifted == (expected.pvalue < 0.05)
    assert (r.n_reference, r.missing_reference, r.n_analysis, r.missing_analysis) == (100, 7, 80, 3)


def test_ks_chi2_and_js_are_scipys_without_importing_scipy_stats():
    """ks_2samp's p-values (exact and asymptotic), chi2_contingency's and jensenshannon without importing
    scipy.stats (0.45-0.7 s of an incremental monitor call): kstwo.sf on a grid over every branch (tail,
    Durbin, Pelz-Good, Ruben-Gambino, d >= 0.5; n below 141 is scipy's own), then each in a fresh process."""
    import subprocess
    import sys
    import warnings

    from mlops_nb.monitoring import kolmogorov

    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's Durbin matrix overflows unused entries
        for n in (5, 140, 141, 300, 5_000, 22_000, 99_999, 100_000, 100_001, 2_000_000):
            for d in [*np.geomspace(1e-5, 0.999, 40), 0.5, 0.49999, 0.5 / n, 0.75 / n, 1.0 / n, 0.0, 1.0]:
                expected = float(stats.kstwo.sf(d, n))
                assert kolmogorov.sf(n, d) == pytest.approx(expected, rel=1e-12, abs=1e-300), (n, d)
                checked += 1
    assert checked == 10 * 47
    samples = {"large": (20_000, 30_000, 0.0), "exact": (3_000, 7_001, 0.05), "equal": (400, 400, 0.3),
               "tiny": (7, 11, 1.0)}
    code = ("import sys, json, numpy as np; from mlops_nb.monitoring import drift, kolmogorov; "
            f"r = np.random.default_rng(1); samples = {samples!r}; out = {{}}\n"
            "for name, (n1, n2, shift) in samples.items():\n"
            "    out[name] = drift._ks_exact(np.sort(r.normal(size=n1)), np.sort(r.normal(shift, size=n2)))\n"
            "out['kstwo'] = kolmogorov.sf(12_000, 0.01)\n"
            "out['chi2'] = drift._binned('chi2', np.array([5., 6, 7]), np.array([7., 6, 5]))[1]\n"
            "out['js'] = drift._binned('js', np.array([5., 6, 7]), np.array([7., 6, 5]))[0]\n"
            "assert 'scipy.stats' not in sys.modules and 'scipy.spatial' not in sys.modules, 'imported'\n"
            "print(json.dumps(out))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    rng = np.random.default_rng(1)
    for name, (n1, n2, shift) in samples.items():  # ks_2samp's exact method (three of them) and asymptotic
        expected = stats.ks_2samp(rng.normal(size=n1), rng.normal(shift, size=n2))
        assert found[name][0] == pytest.approx(expected.statistic, rel=1e-15), name
        assert found[name][1] == pytest.approx(expected.pvalue, rel=1e-12), name
    assert found["kstwo"] == pytest.approx(float(stats.kstwo.sf(0.01, 12_000)), rel=1e-12)
    assert found["chi2"] == pytest.approx(stats.chi2_contingency([[5, 6, 7], [7, 6, 5]], correction=False).pvalue,
                                          rel=1e-12)
    from scipy.spatial import distance

    assert found["js"] == pytest.approx(distance.jensenshannon([5, 6, 7], [7, 6, 5], base=2), rel=1e-12)


def _numpy_statistics(p_counts, q_counts):
    p, q = p_counts / p_counts.sum(), q_counts / q_counts.sum()
    m = (p + q) / 2

    def kl(a, b):
        nz = a > 0
        return np.sum(a[nz] * np.log2(a[nz] / b[nz]))

    pe, qe = np.where(p == 0, 1e-4, p), np.where(q == 0, 1e-4, q)
    return {"js": np.sqrt((kl(p, m) + kl(q, m)) / 2),
            "hellinger": np.sqrt(1 - np.sum(np.sqrt(p * q))),
            "psi": np.sum((qe - pe) * np.log(qe / pe))}


def test_binned_numbers_match_numpy_on_reference_quantile_bins(settings, tables):
    ref, _, shifted = tables
    bins = settings.monitor.bins
    x_ref, x_an = ref["x"].to_numpy(), shifted["x"].to_numpy()
    edges = np.unique(np.quantile(x_ref, np.arange(1, bins) / bins, method="inverted_cdf"))
    count = lambda x: np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)  # noqa: E731
    expected = _numpy_statistics(count(x_ref), count(x_an))
    for method, value in expected.items():
        (r,) = drift.compare(ref, shifted, ["x"], method, settings)
        assert r.statistic == pytest.approx(value, rel=1e-9, abs=1e-12), method
    chi = stats.chi2_contingency(np.vstack([count(x_ref), count(x_an)]), correction=False)
    (r,) = drift.compare(ref, shifted, ["x"], "chi2", settings)
    assert r.statistic == pytest.approx(chi.statistic, rel=1e-9) and r.p_value == pytest.approx(chi.pvalue, abs=1e-12)


def test_binned_categories_match_numpy_with_an_empty_category(settings):
    ref = pd.DataFrame({"c": list("aaaabbbccd")})
    an = pd.DataFrame({"c": list("aabbbbcccc")})  # 'd' empty in ANALYSIS: PSI's epsilon
    counts = np.array([4, 3, 2, 1]), np.array([2, 4, 4, 0])
    for method, value in _numpy_statistics(*counts).items():
        (r,) = drift.compare(ref, an, method=method, settings=settings)
        assert r.statistic == pytest.approx(value, rel=1e-9), method


def test_a_known_shift_is_flagged_by_every_method_and_no_shift_is_not(settings, tables):
    ref, same, shifted = tables
    for method in drift.METHODS:
        found = {r.column: r for r in drift.compare(ref, shifted, method=method, settings=settings)}
        quiet = {r.column: r for r in drift.compare(ref, same, method=method, settings=settings)}
        judged = ["x", "k"] if method == "ks" else ["x", "k", "c", "b"]
        assert all(found[c].drifted for c in judged), (method, found)
        assert not any(r.drifted for r in quiet.values()), (method, quiet)
        if method == "ks":  # ks on categories: skipped with a note, not an error
            assert found["c"].statistic is None and "ks compares numbers" in found["c"].note
        if method == "auto":
            assert [found[c].method for c in "xkcb"] == ["ks", "ks", "chi2", "chi2"]


def test_thresholds_come_from_settings_with_per_column_overrides(project, tables):
    ref, _, shifted = tables
    s = config.load(project / "settings.ini", overrides={"monitor.thresholds": "ks=0.5, psi=0.3",
                                                         "monitor.column_thresholds": "x:ks=0.01"}, environ={})
    found = {r.column: r for r in drift.compare(ref, shifted, method="ks", settings=s)}
    assert (found["x"].threshold, found["k"].threshold) == (0.01, 0.5)
    assert found["x"].drifted and not found["k"].drifted
    assert drift.compare(ref, shifted, ["x"], "js", s)[0].threshold == drift.DEFAULT_THRESHOLDS["js"]


def test_missing_values_are_counted_and_an_all_missing_side_is_a_note(settings):
    ref = pd.DataFrame({"x": [1.0, np.nan, 3.0, 4.0, np.nan], "c": ["a", None, "b", "a", "b"],
                        "gone": [1.0, 2.0, 3.0, 4.0, 5.0]})
    an = pd.DataFrame({"x": [2.0, 3.0, np.nan], "c": ["a", "a", None], "gone": [np.nan, np.nan, np.nan]})
    found = {r.column: r for r in drift.compare(ref, an, settings=settings)}
    assert (found["x"].n_reference, found["x"].missing_reference, found["x"].n_analysis,
            found["x"].missing_analysis) == (3, 2, 2, 1)
    assert (found["c"].missing_reference, found["c"].missing_analysis) == (1, 1)
    gone = found["gone"]
    assert gone.statistic is None and gone.p_value is None and not gone.drifted
    assert gone.missing_analysis == 3 and "ANALYSIS has no values" in gone.note


def test_chunks_by_rows_values_and_periods():
    times = pd.to_datetime(["2024-01-01 05:00", "2024-01-01 23:00", "2024-01-03 01:00", None, "2024-01-03 02:00"])
    df = pd.DataFrame({"t": times, "g": ["x", "y", "x", None, "z"], "v": range(5)})
    assert [(i, s, e, list(r["v"])) for i, s, e, r in drift.chunks(df, chunk_size=2)] == [
        (0, 0, 1, [0, 1]), (1, 2, 3, [2, 3]), (2, 4, 4, [4])]
    assert [(i, s, e, list(r["v"])) for i, s, e, r in drift.chunks(df, chunk_by="g")] == [
        (0, "x", "x", [0, 2]), (1, "y", "y", [1]), (2, "z", "z", [4]), (3, None, None, [3])]
    assert [(i, s, e, list(r["v"])) for i, s, e, r in drift.chunks(df, chunk_by="t:d")] == [
        (0, "2024-01-01T00:00:00", "2024-01-02T00:00:00", [0, 1]),
        (1, "2024-01-03T00:00:00", "2024-01-04T00:00:00", [2, 4]), (2, None, None, [3])]
    assert [s for _, s, _, _ in drift.chunks(df, chunk_by="t:m")][:1] == ["2024-01-01T00:00:00"]
    assert [(s, e) for _, s, e, _ in drift.chunks(df, chunk_by="t:w")][:1] == [
        ("2024-01-01T00:00:00", "2024-01-08T00:00:00")]  # weeks start on Monday


# --------------------------------------------------------------------------------------------------
# sketches: whylogs profiles of the same rows


def test_sketch_statistics_agree_with_exact_ones(tmp_path, settings, tables):
    ref, _, shifted = tables
    profile = profiles.write(profiles.profile(ref), tmp_path / "ref.bin")
    ref_summary = profiles.summaries(profile)  # from the file, as a model version's reference is read
    an_summary = profiles.summaries(profiles.profile(shifted).serialize())
    assert ref_summary["x"]["kind"] == "number" and ref_summary["c"]["kind"] == "category"
    for method, tolerance in [("ks", 0.02), ("js", 0.02), ("hellinger", 0.02), ("psi", 0.05)]:
        exact = {r.column: r for r in drift.compare(ref, shifted, method=method, settings=settings)}
        for summaries in (an_summary, drift.summarize(shifted)):  # profile vs profile; profile vs rows
            sketch = {r.column: r for r in drift.compare_summaries(ref_summary, summaries, method=method,
                                                                  settings=settings)}
            for column in (["x", "k"] if method == "ks" else ["x", "k", "c", "b"]):
                assert sketch[column].basis == "sketch"
                assert abs(sketch[column].statistic - exact[column].statistic) <= tolerance, (method, column)
                assert sketch[column].drifted == exact[column].drifted
                assert sketch[column].n_reference == exact[column].n_reference


def test_sketch_of_many_categories_and_of_objects(settings):
    rng = np.random.default_rng(SEED)
    ref = pd.DataFrame({"id": [f"v{i}" for i in rng.integers(0, 5000, 20_000)],
                        "t": pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 10**6, 20_000), unit="s")})
    an = ref.sample(frac=0.5, random_state=1)
    summary = profiles.summaries(profiles.profile(ref))
    assert summary["id"]["other"] > 0 and summary["t"]["kind"] == "other"  # a sketch keeps the frequent ones
    found = {r.column: r for r in drift.compare_summaries(summary, drift.summarize(an), method="js",
                                                          settings=settings)}
    assert found["id"].basis == "sketch" and 0 <= found["id"].statistic < 0.1 and not found["id"].drifted
    assert "compared as one category '(other)'" in found["id"].note
    assert found["t"].statistic is None and "no distribution" in found["t"].note


def test_summaries_of_rows_compare_like_rows(settings, tables):
    ref, _, shifted = tables
    exact = {r.column: r for r in drift.compare(ref, shifted, settings=settings)}
    summed = {r.column: r for r in drift.compare_summaries(drift.summarize(ref), drift.summarize(shifted),
                                                           settings=settings)}
    for column in ("c", "b"):  # categories: the same counts, the same test
        assert summed[column].basis == "exact"
        assert summed[column].statistic == pytest.approx(exact[column].statistic, rel=1e-12)
    for column in ("x", "k"):  # numbers: through the quantile grid
        assert summed[column].basis == "sketch"
        assert abs(summed[column].statistic - exact[column].statistic) <= 2 / 1000


# --------------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def files(project, tables):
    ref, same, shifted = tables
    ref = ref.assign(t=pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(len(ref)) * 10, unit="s"))
    shifted = shifted.assign(t=pd.Timestamp("2024-03-01") + pd.to_timedelta(np.arange(len(shifted)) * 20, unit="s"))
    ref.loc[::50, "x"] = np.nan
    ref.to_csv(project / "ref.csv", index=False)
    same.to_csv(project / "same.csv.gz", index=False)
    shifted.to_parquet(project / "shifted.parquet")
    return ref, same, shifted


def test_drift_json_one_object_per_chunk_and_column(project, files):
    ref, _, shifted = files
    out = run_ok(project, "drift", "ref.csv", "shifted.parquet", "--json", "--chunk-size", "4000",
                 "--columns", "x,c")
    rows = json.loads(out.stdout)
    assert all(list(r) == ["chunk", "start", "end", "column", "method", "statistic", "p_value", "threshold",
                           "drifted"] for r in rows)
    assert [(r["chunk"], r["start"], r["end"], r["column"]) for r in rows] == [
        (i, i * 4000, min(i * 4000 + 3999, len(shifted) - 1), c) for i in range(4) for c in ("x", "c")]
    assert all(r["drifted"] is True for r in rows)
    assert {r["method"] for r in rows} == {"ks", "chi2"}
    assert all(isinstance(r["p_value"], float) and r["threshold"] in (0.1, 0.05) for r in rows)
    expected = stats.ks_2samp(ref["x"].dropna(), shifted["x"].iloc[:4000]).statistic
    assert abs(rows[0]["statistic"] - expected) <= 1e-12


def test_drift_chunks_by_day_and_prints_a_table(project, files):
    out = run_ok(project, "drift", "ref.csv", "shifted.parquet", "--json", "--chunk-by", "t:d", "--method", "psi")
    rows = json.loads(out.stdout)
    days = sorted({(r["start"], r["end"]) for r in rows})
    assert days == [("2024-03-01T00:00:00", "2024-03-02T00:00:00"), ("2024-03-02T00:00:00", "2024-03-03T00:00:00"),
                    ("2024-03-03T00:00:00", "2024-03-04T00:00:00"), ("2024-03-04T00:00:00", "2024-03-05T00:00:00")]
    assert {r["column"] for r in rows} == {"x", "k", "c", "b"}  # the chunking column is not compared
    assert all(r["p_value"] is None for r in rows)
    text = run_ok(project, "drift", "ref.csv", "same.csv.gz").stdout
    assert "DRIFTED" not in text and "basis exact" in text
    x_line = next(line for line in text.splitlines() if " x " in line)
    assert f"{ref_missing(files)}/0" in x_line and "ks" in x_line
    shifted_text = run_ok(project, "drift", "ref.csv", "shifted.parquet").stdout
    assert shifted_text.count("DRIFTED") == 4 + 1  # x, k, c, b; and t (another quarter)


def ref_missing(files) -> int:
    return int(files[0]["x"].isna().sum())


@pytest.mark.parametrize("case", ["type", "column", "suffix", "corrupt", "model", "chunk-by"])
def test_drift_errors_are_clear(project, files, case):
    if case == "type":
        pd.DataFrame({"x": ["1.5", "late", "2"], "c": ["a", "b", "a"]}).to_csv(project / "text.csv", index=False)
        args, code, words = ("ref.csv", "text.csv"), 3, ["Column 'x'", "number in REFERENCE (float64)",
                                                          "text in ANALYSIS"]
    elif case == "column":
        args, code, words = ("ref.csv", "shifted.parquet", "--columns", "x,cc"), 3, [
            "'cc'", "not in REFERENCE", "'x', 'k', 'c', 'b', 't'", "Did you mean 'c'?"]
    elif case == "suffix":
        (project / "data.txt").write_text("x\n1\n")
        args, code, words = ("ref.csv", "data.txt"), 3, [".csv", ".parquet", "'data.txt'"]
    elif case == "corrupt":
        (project / "broken.parquet").write_bytes(b"PAR1 not really")
        args, code, words = ("broken.parquet", "ref.csv"), 3, ["cannot be read as Parquet", "broken.parquet"]
    elif case == "model":
        args, code, words = ("model:nope", "ref.csv"), 6, ["No warehouse"]
    else:
        args, code, words = ("ref.csv", "shifted.parquet", "--chunk-by", "tt:d"), 3, ["'tt'", "Did you mean 't'?"]
    result = run_cli(project, "drift", *args)
    assert result.returncode == code, str(result)
    assert "Traceback" not in result.stderr and result.stderr.startswith("error: "), str(result)
    for word in words:
        assert word in result.stderr, (word, str(result))


def test_a_registered_versions_reference(built, tmp_path):
    """model:VERSION (or an alias) as REFERENCE, in a built project: its stored training sample (exact), or,
    when the sample is absent, its whylogs profile (sketch); the same rows show no drift, and shifted
    ones do."""
    import shutil

    from conftest import last_run, run_ok, store_dir

    project = built.fresh()
    version = last_run(project)["model_version"]
    sample = store_dir(project, version) / "reference" / "train_sample.parquet"
    rows = pd.read_parquet(sample)
    rows.to_parquet(tmp_path / "same.parquet")
    rows.assign(distance=rows["distance"] * 3).to_parquet(tmp_path / "shifted.parquet")

    same = run_ok(project, "drift", "model:champion", tmp_path / "same.parquet", "--json").json()
    assert same and {r["column"] for r in same} == set(rows.columns)
    assert not any(r["drifted"] for r in same), [r for r in same if r["drifted"]]
    shifted = {r["column"]: r for r in run_ok(project, "drift", f"model:{version}", tmp_path / "shifted.parquet",
                                               "--json").json()}
    assert shifted["distance"]["drifted"] and shifted["distance"]["method"] == "ks"
    assert "exact" in run_ok(project, "drift", "model:champion", tmp_path / "shifted.parquet").stdout

    shutil.move(sample, tmp_path / "aside.parquet")  # a version stored before samples were kept
    sketch = run_ok(project, "drift", "model:champion", tmp_path / "shifted.parquet")
    assert "sketch" in sketch.stdout
    by_sketch = {r["column"]: r for r in run_ok(project, "drift", "model:champion", tmp_path / "shifted.parquet",
                                                 "--json").json()}
    assert by_sketch["distance"]["drifted"]
    assert abs(by_sketch["distance"]["statistic"] - shifted["distance"]["statistic"]) < 0.02
