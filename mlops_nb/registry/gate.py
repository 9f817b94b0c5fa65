"""The promotion gate: model tests, and the decision whether a new model may replace the champion.

A candidate becomes the champion only if its model tests pass, it reaches the absolute thresholds of
``[gate]`` on the test months, and it is not worse than the current champion, scored on the same rows,
by more than ``gate.tolerance`` (ROC AUC down, or Brier score up). Every reason is kept: the gate task
writes them to its report, the registry and the run record.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..errors import DataError
from ..lib.record import LABEL, RECORD
from ..lib.transforms import record_arrays, record_frame

# Real-looking flights that every model must score: ordinary ones, a night flight over midnight, one with
# nothing known of its plane or weather, and one from a carrier and to an airport it has never seen.
GOLDEN = [
    dict(year=2013, month=11, day=4, sched_dep_time=600, sched_arr_time=830, carrier="UA", origin="EWR",
         dest="ORD", distance=719.0, plane_year=2004.0, plane_seats=191.0, temp=41.0, dewp=30.0, humid=64.0,
         wind_dir=300.0, wind_speed=12.7, wind_gust=None, precip=0.0, pressure=1021.0, visib=10.0),
    dict(year=2013, month=12, day=20, sched_dep_time=1900, sched_arr_time=2210, carrier="B6", origin="JFK",
         dest="FLL", distance=1069.0, plane_year=2007.0, plane_seats=200.0, temp=34.0, dewp=33.0, humid=96.0,
         wind_dir=40.0, wind_speed=20.7, wind_gust=31.0, precip=0.2, pressure=1003.0, visib=1.5),
    dict(year=2013, month=12, day=31, sched_dep_time=2359, sched_arr_time=440, carrier="B6", origin="JFK",
         dest="BQN", distance=1576.0),
    dict(year=2013, month=11, day=15, sched_dep_time=1230, sched_arr_time=1500, carrier="ZZ", origin="LGA",
         dest="XXX", distance=500.0, temp=50.0),
]
# Fields a record may carry that the model must ignore: identifiers, and what is only known after the
# flight (a model that used them would leak the outcome).
IGNORED = {"flight": 4242, "tailnum": "N00000", "dep_time": 2359, "dep_delay": 300.0, "arr_time": 400,
           "arr_delay": 300.0, "air_time": 999.0}


def model_tests(predict, sample: pd.DataFrame, spec=None) -> list[dict]:
    """Run the model tests with ``predict(records) -> P(late)``; one dict a test: name, passed, detail.
    Single threaded, as the service runs: parallel regions only slow down one-row predictions. ``spec``: a
    record described by data (``lib.spec``), whose golden rows come from ``sample`` (``golden_rows``) and
    whose ignored fields are an identifier and the target itself; None: the flight record."""
    with threadpool_limits(1):
        if spec is None:
            return _model_tests(predict, sample, pd.DataFrame(GOLDEN), IGNORED, list(RECORD))
        ignored = {"row_id": 4242, spec.target: spec.positive, spec.label: 1}
        return _model_tests(predict, sample, pd.DataFrame(golden_rows(spec, sample)), ignored, spec.names)


def golden_rows(spec, sample: pd.DataFrame) -> list[dict]:
    """Rows every model of a record described by data must score: the first two of ``sample`` (the test
    rows), one with its nullable fields missing, one with categories it has never seen."""
    rows = [{k: (None if pd.isna(v) else v) for k, v in r.items()} for r in
            spec.record_frame(sample.head(2)).astype(object).to_dict(orient="records")]
    if not rows:
        return []
    sparse = {k: v for k, v in rows[0].items() if k in spec.required}
    unseen = {**rows[-1], **{f.name: "never-seen-" + f.name for f in spec.fields
                             if f.kind == "category" and not f.closed}}
    return rows + [sparse, unseen]


def _model_tests(predict, sample: pd.DataFrame, golden: pd.DataFrame, ignored: dict, columns: list) -> list[dict]:
    results = []

    p = np.asarray(predict(golden), dtype=float)
    ok = p.shape == (len(golden),) and bool(np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1)))
    results.append({"name": "golden rows get valid probabilities", "passed": ok,
                    "detail": f"P(late) = {np.round(p, 4).tolist()}"})

    again = np.asarray(predict(golden), dtype=float)
    results.append({"name": "same input, same answer", "passed": bool(np.array_equal(p, again)), "detail": ""})

    rows = sample[columns].head(200).reset_index(drop=True)
    batch = np.asarray(predict(rows), dtype=float)
    single = np.array([predict(rows.iloc[[i]])[0] for i in range(min(len(rows), 20))])
    results.append({"name": "one row alone scores as in a batch", "passed": bool(np.array_equal(batch[:len(single)], single)),
                    "detail": f"max difference {np.max(np.abs(batch[:len(single)] - single)) if len(single) else 0:.3g}"})

    noisy = rows.assign(**ignored)
    changed = np.asarray(predict(noisy), dtype=float)
    results.append({"name": "ignores identifiers and after-the-fact fields", "passed": bool(np.array_equal(batch, changed)),
                    "detail": f"fields {sorted(ignored)}; max difference {np.max(np.abs(batch - changed)):.3g}"})

    ok = bool(np.all(np.isfinite(batch)) and np.all((batch >= 0) & (batch <= 1)))
    results.append({"name": "test rows get valid probabilities", "passed": ok, "detail": f"{len(batch)} rows"})
    return results


def model_info(train_info: dict, metrics: dict, threshold: float, run_id: str | None, spec=None) -> dict:
    """What the model store and the registry keep of a candidate: training info, test metrics, the
    request schema it was trained on (the flight record's, or ``spec``'s: a record described by data),
    the decision threshold and the run."""
    schema = {name: list(s) for name, s in RECORD.items()} if spec is None else spec.to_dict()
    return {**train_info, "metrics": metrics["test"], "per_month": metrics["per_month"], "run_id": run_id,
            "feature_schema": schema, "threshold": threshold}


def reference_profiles(train: pd.DataFrame, test: pd.DataFrame, predictions, folder, columns=None):
    """The whylogs profiles that drift is measured against: training features, and test features with the
    model's predictions. ``columns``: the record's fields (the flight record's by default). Returns ``folder``."""
    from pathlib import Path

    from ..data import profiles

    folder = Path(folder)
    columns = list(RECORD) if columns is None else list(columns)
    profiles.write(profiles.profile(train[columns]), folder / TRAIN_PROFILE_FILE)
    profiles.write(profiles.profile(test[columns].assign(p_late=predictions)), folder / "test_predictions.bin")
    return folder


# The compiled form a version is served by (registry.inference): checked against scikit-learn to this tolerance
# on every test row, and timed at these row counts.
COMPILE_TOLERANCE = 1e-12
COMPILE_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
COMPILE_GTIL_ROWS = 2_000  # rows on which the direct C call is checked against treelite.gtil.predict


def compile_model(pipeline, rows, threshold: float, tolerance: float = COMPILE_TOLERANCE) -> tuple[bytes | None, dict]:
    """The version's compiled form for serving (``registry.inference``), and its report: (bytes or None,
    report). Checked on the golden rows and ``rows`` (the test rows): the NumPy input equals the pipeline's
    transform, the compiled probabilities are within ``tolerance`` of scikit-learn's with the same decisions
    at ``threshold``; then timed against scikit-learn (``max_rows``: up to where it is the faster). A version
    that fails a check gets no compiled form: scikit-learn serves it, and the report says why."""
    from ..lib.model import spec_of
    from .inference import Compiled, encoding_plan

    plan = encoding_plan(pipeline)
    if plan is None:
        kind = type(pipeline.steps[-1][1]).__name__
        return None, {"status": "not compiled", "reason": f"{kind} pipelines are scored by scikit-learn"}
    import treelite

    spec = spec_of(pipeline)
    if spec is None:
        frame = record_frame(pd.concat([pd.DataFrame(GOLDEN), record_frame(rows)], ignore_index=True))
    else:
        frame = spec.record_frame(pd.concat([pd.DataFrame(golden_rows(spec, rows)), spec.record_frame(rows)],
                                            ignore_index=True))
    columns = {c: frame[c].astype(object).where(frame[c].notna(), None).tolist() for c in frame.columns}
    report = {"library": f"treelite {treelite.__version__}", "rows_checked": len(frame), "tolerance": tolerance,
              "threshold": threshold}
    with threadpool_limits(1):
        X = plan.matrix(record_arrays(columns) if spec is None else spec.record_arrays(columns))
        expected = pipeline[:-1].transform(frame)
        report["input_equal"] = bool(X.shape == expected.shape and np.array_equal(X, expected, equal_nan=True))
        blob = treelite.sklearn.import_model(plan.classifier).serialize_bytes()
        model = Compiled(blob)  # checked as it will be loaded and scored
        p_sklearn = plan.classifier.predict_proba(X)[:, 1]
        p_compiled = model.predict(X)
        sample = X[:COMPILE_GTIL_ROWS]  # the direct call against treelite's own (0.8 s on 54k rows): a sample
        report["gtil_equal"] = bool(np.array_equal(p_compiled[:len(sample)], np.asarray(treelite.gtil.predict(
            model.model, sample, nthread=1), dtype=np.float64).reshape(len(sample))))
        report["max_abs_diff"] = float(np.max(np.abs(p_sklearn - p_compiled))) if len(X) else 0.0
        report["decisions_changed"] = int(np.sum((p_sklearn >= threshold) != (p_compiled >= threshold)))
        problems = []
        if not report["gtil_equal"]:
            problems.append("the direct call differs from treelite.gtil.predict")
        if not report["input_equal"]:
            problems.append("the NumPy input differs from the pipeline's transform")
        if not report["max_abs_diff"] <= tolerance:
            problems.append(f"compiled and scikit-learn probabilities differ by {report['max_abs_diff']:.3g} "
                            f"(> {tolerance:g})")
        if report["decisions_changed"]:
            problems.append(f"{report['decisions_changed']} decision(s) at threshold {threshold} differ")
        if problems:
            return None, {**report, "status": "failed check", "reason": "; ".join(problems)}
        report.update(_crossover(plan, model, X))
    return blob, {**report, "status": "compiled", "sha256": hashlib.sha256(blob).hexdigest()}


def _crossover(plan, model, X: np.ndarray) -> dict:
    """Up to how many rows the compiled form beats scikit-learn, timed on this machine (best of 3), doubling
    the rows until it has lost twice in a row (beyond, scikit-learn's vectorised loops only gain)."""
    def best(f, rows):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            f(rows)
            times.append(time.perf_counter() - start)
        return min(times)

    timings, max_rows, ahead, lost = {}, 0, True, 0
    reps = np.resize(X, (max(COMPILE_SIZES), X.shape[1]))
    for n in COMPILE_SIZES:
        rows = reps[:n]
        t_sklearn = best(plan.classifier.predict_proba, rows)
        t_compiled = best(model.predict, rows)
        timings[str(n)] = {"sklearn_ms": round(t_sklearn * 1e3, 4), "compiled_ms": round(t_compiled * 1e3, 4)}
        ahead = ahead and t_compiled < t_sklearn
        if ahead:
            max_rows = n
        lost = 0 if t_compiled < t_sklearn else lost + 1
        if lost == 2:
            break
    return {"max_rows": max_rows, "timings": timings}


# The raw reference rows and the calibration map stored with a version (in its reference/ folder, beside the
# profiles): what the monitor compares served inputs and predictions with, and how it estimates the metrics
# before labels arrive. Lineage, not part of the version: the version is the model file's sha256.
TRAIN_PROFILE_FILE = "train_features.bin"      # whylogs profiles of the reference
TRAIN_SAMPLE_FILE = "train_sample.parquet"
TEST_PREDICTIONS_FILE = "test_predictions.parquet"
CALIBRATION_FILE = "calibration.json"
TRAIN_SAMPLE_ROWS = 50_000
ESTIMATOR = "CBPE"


def reference_rows(train: pd.DataFrame, valid: pd.DataFrame, test: pd.DataFrame, test_predictions,
                   valid_predictions, threshold: float, seed: int, folder) -> dict:
    """Write the raw reference of a version into ``folder``: ``train_sample.parquet`` (at most
    TRAIN_SAMPLE_ROWS training rows, the model's input columns, a sample seeded with the model's ``seed``),
    ``test_predictions.parquet`` (month, late, p_late of every test row, in the rows' order) and
    ``calibration.json`` (an isotonic map fitted on the validation rows' predictions and labels, and its
    check on the test rows: the CBPE estimates of ROC AUC and accuracy against the realized ones).
    Returns the calibration."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    test_predictions = _probabilities(test_predictions, "test_predictions")
    valid_predictions = _probabilities(valid_predictions, "valid_predictions")
    for name, rows, p in (("test", test, test_predictions), ("valid", valid, valid_predictions)):
        if len(rows) != len(p):
            raise DataError(f"reference_rows needs one prediction a {name} row; got {len(p)} predictions for "
                            f"{len(rows)} rows.")
    sample = train[list(RECORD)].sample(n=min(len(train), TRAIN_SAMPLE_ROWS), random_state=seed)
    sample.sort_index().reset_index(drop=True).to_parquet(folder / TRAIN_SAMPLE_FILE, index=False)
    y_test = test[LABEL].astype(int).to_numpy()
    pd.DataFrame({"month": test["month"].to_numpy(), LABEL: y_test, "p_late": test_predictions}).to_parquet(
        folder / TEST_PREDICTIONS_FILE, index=False)

    y_valid = valid[LABEL].astype(int).to_numpy()
    calibration = fit_calibration(y_valid, valid_predictions)
    calibration["fitted_on"] = {"split": "valid", "months": sorted(int(m) for m in valid["month"].unique()),
                                "rows": int(len(valid)), "positive_rate": float(y_valid.mean()),
                                "mean_prediction": float(valid_predictions.mean())}
    calibration["check"] = calibration_check(calibration, test["month"].to_numpy(), y_test, test_predictions,
                                             threshold)
    (folder / CALIBRATION_FILE).write_text(json.dumps(calibration, indent=2, sort_keys=True) + "\n")
    return calibration


def fit_calibration(y, p) -> dict:
    """An isotonic calibration map of probabilities ``p`` for labels ``y`` (scikit-learn's
    IsotonicRegression, clipped to [0, 1] and at the ends), as plain JSON: its thresholds ``x`` -> ``y``,
    applied by linear interpolation (``calibrate``)."""
    from sklearn.isotonic import IsotonicRegression

    p, y = _probabilities(p, "p"), np.asarray(y, dtype=np.float64)
    if len(y) != len(p) or len(p) == 0:
        raise DataError(f"fit_calibration needs as many probabilities as labels, and some; got {len(p)} and "
                        f"{len(y)}.")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y)
    return {"method": "isotonic", "x": iso.X_thresholds_.astype(np.float64).tolist(),
            "y": iso.y_thresholds_.astype(np.float64).tolist()}


def calibrate(calibration: dict | None, p) -> np.ndarray:
    """Calibrated probabilities: the stored map applied to ``p`` (``p`` itself when ``calibration`` is None)."""
    p = _probabilities(p, "p")
    if calibration is None:
        return p
    method = calibration.get("method") if isinstance(calibration, dict) else None
    if method != "isotonic":
        raise DataError(f"The 'method' of a calibration map must be 'isotonic'; got {method!r} instead.")
    x, y = (np.asarray(calibration.get(k, []), dtype=np.float64) for k in ("x", "y"))
    if x.ndim != 1 or len(x) == 0 or x.shape != y.shape or np.any(np.diff(x) < 0):
        raise DataError("An isotonic calibration map needs 'x' and 'y' of the same length, at least one point, "
                        f"'x' increasing; got {len(x)} and {len(y)} points.")
    return np.clip(np.interp(p, x, y), 0.0, 1.0)


def expected_metrics(p, threshold: float, calibration: dict | None = None) -> dict:
    """Confidence-based performance estimation (CBPE, as NannyML's): the metrics expected of predictions
    ``p`` if the calibrated probabilities ``q`` are right, without labels. Expected accuracy is the mean of
    ``q`` where ``p >= threshold`` and of ``1 - q`` elsewhere; the expected ROC AUC is the area under the
    expected ROC curve, whose point at each distinct score t is (FP(t) / N, TP(t) / P) with
    TP(t) = sum of q over p >= t, FP(t) = sum of 1 - q over p >= t, P = sum q, N = sum (1 - q) (ties in
    ``p`` move together, as in roc_auc_score). ROC AUC is None for fewer than 2 rows or when P or N is 0;
    accuracy is None for no rows. O(n log n): one sort."""
    p = _probabilities(p, "p")
    q = calibrate(calibration, p)
    accuracy = float(np.mean(np.where(p >= threshold, q, 1.0 - q))) if len(p) else None
    return {"roc_auc": _expected_roc_auc(p, q), "accuracy": accuracy, "method": ESTIMATOR}


def _expected_roc_auc(p: np.ndarray, q: np.ndarray) -> float | None:
    if len(p) < 2:
        return None
    order = np.argsort(-p, kind="stable")
    ps, qs = p[order], q[order]
    tp, fp = np.cumsum(qs), np.cumsum(1.0 - qs)
    positives, negatives = float(tp[-1]), float(fp[-1])
    if positives <= 0 or negatives <= 0:
        return None
    last = np.append(ps[1:] != ps[:-1], True)  # the last row of each distinct score: one ROC point each
    tpr = np.concatenate(([0.0], tp[last] / positives))
    fpr = np.concatenate(([0.0], fp[last] / negatives))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def calibration_check(calibration: dict | None, months, y, p, threshold: float) -> dict:
    """How far the CBPE estimates (with ``calibration``, and without it) are from the realized ROC AUC and
    accuracy of labels ``y``: overall and a month at a time."""
    months, y, p = np.asarray(months), np.asarray(y, dtype=int), _probabilities(p, "p")

    def one(mask) -> dict:
        yy, pp = y[mask], p[mask]
        est = expected_metrics(pp, threshold, calibration)
        raw = expected_metrics(pp, threshold, None)
        realized = {"roc_auc": roc_auc(yy, pp), "accuracy": float(np.mean((pp >= threshold) == yy))}
        out = {"rows": int(mask.sum()), "estimated": {k: est[k] for k in ("roc_auc", "accuracy")},
               "realized": realized, "uncalibrated_estimated": {k: raw[k] for k in ("roc_auc", "accuracy")}}
        out["abs_error"] = {k: (None if est[k] is None or realized[k] is None else abs(est[k] - realized[k]))
                            for k in ("roc_auc", "accuracy")}
        return out

    return {"split": "test", "method": ESTIMATOR, "threshold": float(threshold),
            "months": sorted(int(m) for m in np.unique(months)), **one(np.ones(len(p), dtype=bool)),
            "per_month": [{"month": int(m), **one(months == m)} for m in np.unique(months)]}


def roc_auc(y, p) -> float | None:
    """ROC AUC of scores ``p`` for labels ``y``, None unless both classes are present: the Mann-Whitney
    statistic with tied scores at their average rank, the value of ``sklearn.metrics.roc_auc_score``
    (tests compare them), without importing scikit-learn (over a second of a monitor call)."""
    y = np.asarray(y, dtype=bool)
    positives = int(y.sum())
    negatives = len(y) - positives
    if not positives or not negatives:
        return None
    _, inverse, counts = np.unique(np.asarray(p, dtype=np.float64), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = average_rank[inverse][y].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _probabilities(p, name: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 1:
        raise DataError(f"The '{name}' must be a 1-d array of probabilities; got an array of shape {p.shape} "
                        "instead.")
    bad = ~(np.isfinite(p) & (p >= 0) & (p <= 1))
    if bad.any():
        raise DataError(f"The '{name}' must be probabilities in [0, 1]; got {int(bad.sum())} value(s) outside "
                        f"it or not finite (the first: {p[bad][0]!r}).")
    return p


def _number(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def decide(candidate: dict, champion: dict | None, tests: list[dict], thresholds) -> dict:
    """The gate's decision: promote or not, with every reason."""
    reasons = []
    for t in tests:
        if not t["passed"]:
            reasons.append(f"model test failed: {t['name']} ({t['detail']})")
    auc, brier = _number(candidate.get("roc_auc")), _number(candidate.get("brier"))
    if auc is None:
        reasons.append("the test ROC AUC is missing (a test split with one class?); gate.min_roc_auc needs it")
    elif auc < thresholds.min_roc_auc:
        reasons.append(f"test ROC AUC {auc:.4f} is below gate.min_roc_auc {thresholds.min_roc_auc}")
    if brier is None:
        reasons.append("the test Brier score is missing; gate.max_brier needs it")
    elif brier > thresholds.max_brier:
        reasons.append(f"test Brier score {brier:.4f} is above gate.max_brier {thresholds.max_brier}")
    if champion is not None:
        if auc is not None and auc < champion["roc_auc"] - thresholds.tolerance:
            reasons.append(f"ROC AUC {auc:.4f} is worse than the champion's {champion['roc_auc']:.4f} by more "
                           f"than gate.tolerance {thresholds.tolerance}")
        if brier is not None and brier > champion["brier"] + thresholds.tolerance:
            reasons.append(f"Brier score {brier:.4f} is worse than the champion's {champion['brier']:.4f} by "
                           f"more than gate.tolerance {thresholds.tolerance}")
    promote = not reasons
    if promote:
        reasons.append("passed every model test and threshold" +
                       (", and is not worse than the champion" if champion is not None else "; there was no champion"))
    return {"promote": promote, "reasons": reasons, "candidate": candidate, "champion": champion,
            "tests": tests, "thresholds": dict(thresholds)}
