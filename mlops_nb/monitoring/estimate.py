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

from .. import config, registry
from ..registry import gate
from ..registry.gate import calibrate, expected_metrics  # the arithmetic, shared with the gate's check

__all__ = ["METHOD", "calibrate", "expected_metrics", "reference"]

METHOD = gate.ESTIMATOR  # "CBPE"


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
