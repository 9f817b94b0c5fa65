"""The promotion gate: model tests, and the decision whether a new model may replace the champion.

A candidate becomes the champion only if its model tests pass, it reaches the absolute thresholds of
``[gate]`` on the test months, and it is not worse than the current champion, scored on the same rows,
by more than ``gate.tolerance`` (ROC AUC down, or Brier score up). Every reason is kept: the gate task
writes them to its report, the registry and the run record.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from ..lib.record import RECORD

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


def model_tests(predict, sample: pd.DataFrame) -> list[dict]:
    """Run the model tests with ``predict(records) -> P(late)``; one dict a test: name, passed, detail.
    Single threaded, as the service runs: parallel regions only slow down one-row predictions."""
    with threadpool_limits(1):
        return _model_tests(predict, sample)


def _model_tests(predict, sample: pd.DataFrame) -> list[dict]:
    golden = pd.DataFrame(GOLDEN)
    results = []

    p = np.asarray(predict(golden), dtype=float)
    ok = p.shape == (len(golden),) and bool(np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1)))
    results.append({"name": "golden rows get valid probabilities", "passed": ok,
                    "detail": f"P(late) = {np.round(p, 4).tolist()}"})

    again = np.asarray(predict(golden), dtype=float)
    results.append({"name": "same input, same answer", "passed": bool(np.array_equal(p, again)), "detail": ""})

    rows = sample[list(RECORD)].head(200).reset_index(drop=True)
    batch = np.asarray(predict(rows), dtype=float)
    single = np.array([predict(rows.iloc[[i]])[0] for i in range(min(len(rows), 20))])
    results.append({"name": "one row alone scores as in a batch", "passed": bool(np.array_equal(batch[:len(single)], single)),
                    "detail": f"max difference {np.max(np.abs(batch[:len(single)] - single)) if len(single) else 0:.3g}"})

    noisy = rows.assign(**IGNORED)
    changed = np.asarray(predict(noisy), dtype=float)
    results.append({"name": "ignores identifiers and after-the-fact fields", "passed": bool(np.array_equal(batch, changed)),
                    "detail": f"fields {sorted(IGNORED)}; max difference {np.max(np.abs(batch - changed)):.3g}"})

    ok = bool(np.all(np.isfinite(batch)) and np.all((batch >= 0) & (batch <= 1)))
    results.append({"name": "test rows get valid probabilities", "passed": ok, "detail": f"{len(batch)} rows"})
    return results


def model_info(train_info: dict, metrics: dict, threshold: float, run_id: str | None) -> dict:
    """What the model store and the registry keep of a candidate: training info, test metrics, the
    request schema it was trained on, the decision threshold and the run."""
    return {**train_info, "metrics": metrics["test"], "per_month": metrics["per_month"], "run_id": run_id,
            "feature_schema": {name: list(spec) for name, spec in RECORD.items()}, "threshold": threshold}


def reference_profiles(train: pd.DataFrame, test: pd.DataFrame, predictions, folder):
    """The whylogs profiles that drift is measured against: training features, and test features with the
    model's predictions. Returns ``folder``."""
    from pathlib import Path

    from ..data import profiles

    folder = Path(folder)
    profiles.write(profiles.profile(train[list(RECORD)]), folder / "train_features.bin")
    profiles.write(profiles.profile(test[list(RECORD)].assign(p_late=predictions)), folder / "test_predictions.bin")
    return folder


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
