"""Estimated performance (mlops_nb/monitoring/estimate.py, arithmetic in registry/gate.py) and the raw
reference a version keeps in its store folder (reference/: train_sample.parquet, test_predictions.parquet,
calibration.json), written by the gate at registration.

The estimator is CBPE: with calibrated probabilities q, the expected accuracy and the area under the expected
ROC curve. It is checked against labels drawn from q itself (then the realized metrics scatter around the
estimate), against certain labels (q of 0 or 1: estimate and realized metric are equal), and on a real
build: the stored map and its check on the test months.
"""
from __future__ import annotations

import hashlib
import json
import textwrap
import time

import numpy as np
import pytest

from conftest import copy_of, query, run_ok, store_dir

REFERENCE_FILES = ("train_sample.parquet", "test_predictions.parquet", "calibration.json")


def draws(q, p, threshold, n_draws, rng):
    """Mean realized ROC AUC and accuracy of predictions ``p`` over labels drawn as Bernoulli(q)."""
    from sklearn.metrics import roc_auc_score

    aucs, accs = [], []
    for _ in range(n_draws):
        y = rng.random(len(q)) < q
        aucs.append(roc_auc_score(y, p))
        accs.append(np.mean((p >= threshold) == y))
    return float(np.mean(aucs)), float(np.mean(accs))


# --------------------------------------------------------------------------------------------------
# the estimator


@pytest.mark.parametrize("case", ["beta", "uniform", "ties"])
def test_expected_metrics_is_the_mean_of_the_realized_metrics(case):
    """Perfectly calibrated scores (labels drawn as Bernoulli(p)): the estimate is within 0.005 of the
    realized ROC AUC and accuracy averaged over 200 draws of 2,000 labels (the mean's standard error is about
    0.0007; the expected-ROC area is a ratio estimate, biased by O(1/n))."""
    from mlops_nb.monitoring import estimate

    rng = np.random.default_rng(7)
    p = {"beta": rng.beta(2, 5, 2000), "uniform": rng.random(2000),
         "ties": np.round(rng.beta(2, 3, 2000), 1)}[case]
    est = estimate.expected_metrics(p, 0.5)
    auc, acc = draws(p, p, 0.5, 200, rng)
    assert est["method"] == "CBPE"
    assert est["roc_auc"] == pytest.approx(auc, abs=0.005)
    assert est["accuracy"] == pytest.approx(acc, abs=0.005)
    assert est["accuracy"] == pytest.approx(np.mean(np.where(p >= 0.5, p, 1 - p)), abs=1e-12)


def test_expected_metrics_uses_the_calibration_map():
    """Scores that overstate the risk twice (the true probability is p / 2): with the map, the estimate
    follows the labels; without it, it does not."""
    from mlops_nb.monitoring import estimate
    from mlops_nb.registry import gate

    rng = np.random.default_rng(11)
    fit = rng.random(50_000)  # as many validation rows as the full data has; fewer, and the isotonic steps
    calibration = gate.fit_calibration(rng.random(len(fit)) < fit / 2, fit)  # overstate the spread of q
    p = rng.random(4000)
    q = p / 2
    auc, acc = draws(q, p, 0.5, 100, rng)
    est = estimate.expected_metrics(p, 0.5, calibration)
    assert est["roc_auc"] == pytest.approx(auc, abs=0.01)
    assert est["accuracy"] == pytest.approx(acc, abs=0.01)
    raw = estimate.expected_metrics(p, 0.5)
    assert abs(raw["accuracy"] - acc) > 0.05


def test_certain_labels_give_the_realized_metrics_exactly():
    """q of 0 or 1 is a label: the expected ROC curve is the ROC curve, ties in the scores included (the
    area of the expected curve, registry.gate._expected_roc_auc, given the labels as q)."""
    from sklearn.metrics import roc_auc_score

    from mlops_nb.registry import gate

    rng = np.random.default_rng(3)
    p = np.round(rng.random(500), 2)
    y = (rng.random(500) < p).astype(float)
    assert gate._expected_roc_auc(p, y) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert gate._expected_roc_auc(p, 1 - y) == pytest.approx(roc_auc_score(1 - y, p), abs=1e-12)


def test_identity_calibration():
    from mlops_nb.monitoring import estimate

    p = np.random.default_rng(1).random(1000)
    assert np.array_equal(estimate.calibrate(None, p), p)
    identity = {"method": "isotonic", "x": [0.0, 1.0], "y": [0.0, 1.0]}
    assert np.allclose(estimate.calibrate(identity, p), p, rtol=0, atol=1e-15)
    a, b = estimate.expected_metrics(p, 0.4), estimate.expected_metrics(p, 0.4, identity)
    assert a["roc_auc"] == pytest.approx(b["roc_auc"], abs=1e-12)
    assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-12)
    assert a["roc_auc"] == pytest.approx(5 / 6, abs=0.01)  # uniform scores: E[AUC] = 5/6


def test_degenerate_inputs():
    from mlops_nb.errors import DataError
    from mlops_nb.monitoring import estimate

    assert estimate.expected_metrics(np.array([]), 0.5) == {"roc_auc": None, "accuracy": None, "method": "CBPE"}
    assert estimate.expected_metrics(np.array([0.3]), 0.5) == {"roc_auc": None, "accuracy": 0.7, "method": "CBPE"}
    assert estimate.expected_metrics(np.zeros(5), 0.5)["roc_auc"] is None  # P = 0
    assert estimate.expected_metrics(np.ones(5), 0.5)["roc_auc"] is None  # N = 0
    assert estimate.expected_metrics(np.full(4, 0.5), 0.5)["roc_auc"] == pytest.approx(0.5)  # one tie: chance
    for bad in (np.array([0.2, np.nan]), np.array([1.5]), np.array([-0.1]), np.zeros((2, 2))):
        with pytest.raises(DataError, match="'p' must be"):
            estimate.expected_metrics(bad, 0.5)
    for calibration in ({"method": "binned"}, {"method": "isotonic", "x": [0.0, 1.0], "y": [0.5]},
                        {"method": "isotonic", "x": [], "y": []}, {"method": "isotonic", "x": [1, 0], "y": [0, 1]}):
        with pytest.raises(DataError, match="calibration map"):
            estimate.calibrate(calibration, np.array([0.5]))


def test_a_million_rows_in_well_under_a_second():
    from mlops_nb.monitoring import estimate

    p = np.random.default_rng(5).random(1_000_000)
    calibration = {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.0, 0.2, 1.0]}
    started = time.perf_counter()
    out = estimate.expected_metrics(p, 0.5, calibration)
    seconds = time.perf_counter() - started
    assert out["roc_auc"] is not None
    assert seconds < 1.0, f"{seconds:.2f} s for 1,000,000 rows (about 0.15 s on an idle machine)"


def test_calibration_round_trips_through_json():
    """The map is plain JSON, and applying the stored map is scikit-learn's isotonic prediction."""
    from sklearn.isotonic import IsotonicRegression

    from mlops_nb.monitoring import estimate
    from mlops_nb.registry import gate

    rng = np.random.default_rng(2)
    p = rng.beta(2, 6, 5000)
    y = rng.random(len(p)) < np.sqrt(p)
    calibration = gate.fit_calibration(y, p)
    again = json.loads(json.dumps(calibration))
    assert again == calibration and again["method"] == "isotonic"
    new = np.concatenate([rng.random(1000), [0.0, 1.0]])
    assert np.array_equal(estimate.calibrate(again, new), estimate.calibrate(calibration, new))
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    assert np.allclose(estimate.calibrate(again, new), iso.predict(new), rtol=0, atol=1e-12)
    q = estimate.calibrate(again, np.sort(new))
    assert np.all(np.diff(q) >= 0) and q.min() >= 0 and q.max() <= 1


# --------------------------------------------------------------------------------------------------
# the reference a built project's champion keeps


def champion_of(project):
    return query(project, "SELECT version FROM model_aliases WHERE alias = 'champion'")[0][0]


def file_hashes(folder):
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in REFERENCE_FILES}


def test_the_champion_keeps_its_raw_reference(built, monkeypatch):
    import pandas as pd

    from mlops_nb import config
    from mlops_nb.lib.record import RECORD
    from mlops_nb.monitoring import estimate

    project = built.pristine
    version = champion_of(project)
    folder = store_dir(project, version) / "reference"
    assert {p.name for p in folder.iterdir()} == {"train_features.bin", "test_predictions.bin", *REFERENCE_FILES}
    info = json.loads((folder.parent / "model.json").read_text())
    receipt = json.loads((project / "data" / "products" / "features.json").read_text())

    sample = pd.read_parquet(folder / "train_sample.parquet")
    assert list(sample.columns) == list(RECORD)
    assert len(sample) == min(receipt["row_counts"]["train"], 50_000)

    test = pd.read_parquet(folder / "test_predictions.parquet")
    assert list(test.columns) == ["month", "late", "p_late"]
    assert len(test) == info["metrics"]["n"] == receipt["row_counts"]["test"]
    evaluated = pd.read_parquet(project / "data" / "products" / "predictions.parquet").p_late.to_numpy()
    assert np.array_equal(test.p_late.to_numpy(), evaluated)
    assert test.late.mean() == pytest.approx(info["metrics"]["positive_rate"])
    assert set(test.month) == {3}

    calibration = json.loads((folder / "calibration.json").read_text())
    assert calibration["method"] == "isotonic" and len(calibration["x"]) == len(calibration["y"]) >= 1
    assert calibration["fitted_on"]["split"] == "valid" and calibration["fitted_on"]["months"] == [2]
    assert calibration["fitted_on"]["rows"] == receipt["row_counts"]["valid"]
    check = calibration["check"]
    assert check["method"] == "CBPE" and check["months"] == [3] and check["rows"] == len(test)
    assert check["threshold"] == info["threshold"]
    assert check["realized"]["roc_auc"] == pytest.approx(info["metrics"]["roc_auc"])
    assert check["realized"]["accuracy"] == pytest.approx(info["metrics"]["accuracy"])
    for metric in ("roc_auc", "accuracy"):
        assert check["abs_error"][metric] == pytest.approx(
            abs(check["estimated"][metric] - check["realized"][metric]))
        assert check["abs_error"][metric] < 0.1, check
    assert [m["month"] for m in check["per_month"]] == [3]
    # the check is what the public API computes from the stored rows
    est = estimate.expected_metrics(test.p_late.to_numpy(), info["threshold"], calibration)
    assert est["roc_auc"] == pytest.approx(check["estimated"]["roc_auc"], abs=1e-12)
    assert est["accuracy"] == pytest.approx(check["estimated"]["accuracy"], abs=1e-12)

    # reference(): the same parts, read through the registry, cached
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    settings = config.load(project / "settings.ini")
    ref = estimate.reference(version, settings)
    assert ref["calibration"] == calibration and ref["metrics"] == info["metrics"]
    assert ref["threshold"] == info["threshold"]
    assert ref["train_sample"].equals(sample) and ref["test_predictions"].equals(test)
    assert estimate.reference(f"flight_delay:{version}", settings) is ref


def test_reference_of_a_version_stored_before_the_raw_reference(built, tmp_path, monkeypatch):
    from mlops_nb import config
    from mlops_nb.errors import NotFoundError
    from mlops_nb.monitoring import estimate

    project = copy_of(built.pristine, tmp_path)
    version = champion_of(project)
    for name in REFERENCE_FILES:
        (store_dir(project, version) / "reference" / name).unlink()
    monkeypatch.delenv("BENTOML_HOME", raising=False)
    settings = config.load(project / "settings.ini")
    ref = estimate.reference(version, settings)
    assert ref["train_sample"] is None and ref["test_predictions"] is None and ref["calibration"] is None
    assert ref["metrics"]["n"] > 0
    with pytest.raises(NotFoundError, match="not in the model store"):
        estimate.reference(version[:-1] + ("0" if version[-1] != "0" else "1"), settings)


REWRITE = textwrap.dedent("""
    import hashlib, json, sys
    from pathlib import Path
    import pandas as pd
    from mlops_nb.data import features, warehouse
    from mlops_nb.lib import model
    from mlops_nb.registry import gate
    from mlops_nb.run import products

    receipt = products.read_json("data/products/features.json")
    info = products.read_json("data/products/train.json")
    estimator = products.load_model("data/products/model.joblib", info["model_sha256"])
    with warehouse.connect() as con:
        rows = features.load(con, receipt["table_name"], ["train", "valid", "test"])
    train, valid, test = (rows[rows.split == s] for s in ("train", "valid", "test"))
    p = pd.read_parquet("data/products/predictions.parquet").p_late.to_numpy()
    out = Path(sys.argv[1])
    gate.reference_rows(train, valid, test, p, model.predict_proba(estimator, valid), 0.5, info["seed"], out)
    print(json.dumps({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in out.iterdir()}))
""")


def test_the_reference_is_a_function_of_the_training_and_is_written_once(built, tmp_path):
    """Written again from the same warehouse and model, the three files are the same bytes; a run that
    trains the same bytes again (--force) registers the same version and leaves its folder as it was."""
    import subprocess
    import sys

    from conftest import cli_env

    project = copy_of(built.pristine, tmp_path)
    version = champion_of(project)
    folder = store_dir(project, version) / "reference"
    before = {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}

    env = cli_env({"MLOPS_NB_SETTINGS": str(project / "settings.ini")})
    proc = subprocess.run([sys.executable, "-c", REWRITE, str(tmp_path / "again")], cwd=project, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == file_hashes(folder)

    run_ok(project, "run", "--quiet", "--force")
    assert champion_of(project) == version
    assert query(project, "SELECT count(*) FROM model_registrations WHERE version = ?", [version])[0][0] == 2
    after = {p.name: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in folder.iterdir()}
    assert after == before
