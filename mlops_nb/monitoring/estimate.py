"""Estimated performance before the labels arrive, and a version's reference data.

The estimate is confidence-based performance estimation (CBPE, as NannyML's): the metrics expected of the
served predictions if the model's calibrated probabilities are right. Each version stores, at registration
(``registry.gate.reference_rows``), an isotonic calibration map fitted on its validation months, with
its check on the test months (estimated against realized ROC AUC and accuracy) in ``calibration.json``.
CBPE assumes that P(late | score) has not changed since the validation months: it sees covariate shift
(a different mix of scores), not concept or label shift (the same score now late more often).

The arithmetic is the registry's (``registry.gate``: the gate uses it to check the map when it stores it);
this module is the monitor's entry point to it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import config, registry
from ..registry import gate

__all__ = ["METHOD", "calibrate", "expected_metrics", "reference"]

METHOD = gate.ESTIMATOR  # "CBPE"


def calibrate(calibration: dict | None, p: np.ndarray) -> np.ndarray:
    """Calibrated probabilities: the stored map (``calibration.json``, or None: the identity) applied to
    ``p``. Raises ``DataError`` for probabilities outside [0, 1] or a map that is not one."""
    return gate.calibrate(calibration, p)


def expected_metrics(p: np.ndarray, threshold: float, calibration: dict | None = None) -> dict:
    """{"roc_auc": float | None, "accuracy": float | None, "method": "CBPE"}: the ROC AUC and accuracy
    expected of predictions ``p`` at the decision ``threshold``, from the calibrated probabilities q.
    Accuracy = mean(q where p >= threshold, else 1 - q); ROC AUC = area under (FP(t) / N, TP(t) / P) over
    every distinct score t, TP(t) = sum of q over p >= t, FP(t) = sum of 1 - q over p >= t, P = sum q,
    N = sum (1 - q). ROC AUC is None for fewer than 2 rows or P or N of 0; accuracy is None for no rows.
    One sort: about 0.1 s for a million rows."""
    return gate.expected_metrics(p, threshold, calibration)


_CACHE: dict[str, dict] = {}


def reference(version: str, settings: config.Settings | None = None) -> dict:
    """A version's reference, read from its folder in the model store (read-only):

    - ``train_sample``: DataFrame of at most 50,000 training rows (the model's input columns), or None;
    - ``test_predictions``: DataFrame of every test row's month, late and p_late, or None;
    - ``calibration``: the calibration map with its check on the test months (``calibration.json``), or None;
    - ``metrics``: the version's test metrics (``model.json``);
    - ``threshold``: the version's decision threshold (``model.json``), or None.

    The three raw parts are None for a version stored before they were added. Cached for the process (a
    version's folder is written once): treat the frames as read-only. ``version``: a version or a tag
    ``name:version``. Raises ``NotFoundError`` for a version not in the store."""
    folder = registry.reference_dir(version, settings)
    key = str(folder.resolve())
    if key not in _CACHE:
        _CACHE[key] = _read(folder)
    return _CACHE[key]


def _read(folder: Path) -> dict:
    import pandas as pd

    info_file = folder.parent / registry.INFO_FILE
    info = json.loads(info_file.read_text(encoding="utf-8"))

    def frame(name):
        path = folder / name
        return pd.read_parquet(path) if path.is_file() else None

    calibration_file = folder / gate.CALIBRATION_FILE
    return {"train_sample": frame(gate.TRAIN_SAMPLE_FILE), "test_predictions": frame(gate.TEST_PREDICTIONS_FILE),
            "calibration": (json.loads(calibration_file.read_text(encoding="utf-8"))
                            if calibration_file.is_file() else None),
            "metrics": info.get("metrics") or {}, "threshold": info.get("threshold")}
