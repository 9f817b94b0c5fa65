"""registry/inference.py and the gate's compile_model, in process: the model's input built in NumPy equals
the pipeline's own transform value for value; scikit-learn on it equals the pipeline exactly; the compiled
(treelite) path agrees within 1e-12 with the same decisions; what cannot be compiled, or fails a check, is
scored by scikit-learn and says so. On real flights (bundled data), with missing optional fields, unknown and
missing categories, boundary and impossible values."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from conftest import read_bundled_flights_text
from mlops_nb.lib import model
from mlops_nb.lib.record import CATEGORICAL, RECORD
from mlops_nb.lib.transforms import record_frame
from mlops_nb.registry import gate, inference

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    """3,000 flights of two months with a random weather and plane part (enough to fit a real model)."""
    raw = pd.read_csv(io.StringIO(read_bundled_flights_text()), low_memory=False)
    raw = raw[raw["month"].isin([1, 2]) & raw["arr_delay"].notna()].sample(n=3000, random_state=3)
    rng = np.random.default_rng(3)
    frame = raw[["year", "month", "day", "sched_dep_time", "sched_arr_time", "carrier", "origin", "dest",
                 "distance"]].reset_index(drop=True)
    for name, (kind, lo, hi, _) in RECORD.items():
        if name not in frame and kind == "number":
            values = rng.uniform(lo, hi, len(frame)).round(1)
            frame[name] = np.where(rng.random(len(frame)) < 0.2, np.nan, values)
    frame["late"] = (raw["arr_delay"].to_numpy() > 15)
    return frame


@pytest.fixture(scope="module")
def fitted(flights):
    return model.fit(model.build_model("hgb", max_iter=40, seed=1), flights)


def awkward(flights) -> pd.DataFrame:
    """Records a service meets: unknown and missing categories, missing optional fields, boundary values,
    dates that do not exist, overnight flights."""
    base = flights[list(RECORD)].head(12).reset_index(drop=True).copy()
    base.loc[0, "carrier"] = "ZZ"          # never seen
    base.loc[1, "dest"] = "XXX"
    base.loc[2, "origin"] = None           # missing category
    base.loc[3, ["plane_year", "plane_seats", "temp", "wind_gust"]] = np.nan
    base.loc[4, ["month", "day"]] = [2, 30]  # 30 February
    base.loc[5, ["month", "day", "sched_dep_time", "sched_arr_time"]] = [12, 31, 2359, 0]
    base.loc[6, ["sched_dep_time", "sched_arr_time"]] = [0, 2359]
    base.loc[7, list(RECORD)[11:]] = np.nan  # nothing known of the weather
    base.loc[8, "distance"] = 10000
    return base


def as_records(frame: pd.DataFrame) -> list[dict]:
    """As the service's schema gives them: every field, None when missing, ints where JSON had ints."""
    out = []
    for row in frame[list(RECORD)].to_dict("records"):
        out.append({k: (None if v is None or (isinstance(v, float) and np.isnan(v)) else
                        int(v) if k in ("year", "month", "day", "sched_dep_time", "sched_arr_time") else v)
                    for k, v in row.items()})
    return out


def test_numpy_input_equals_the_pipelines_transform(fitted, flights):
    plan = inference.encoding_plan(fitted)
    assert plan is not None and plan.names[:3] == CATEGORICAL
    rows = pd.concat([awkward(flights), flights[list(RECORD)].iloc[12:500]], ignore_index=True)
    records = as_records(rows)
    from mlops_nb.lib.transforms import record_arrays

    expected = fitted[:-1].transform(record_frame(rows))
    for given in (records, {k: [r[k] for r in records] for k in RECORD}):
        X = plan.matrix(record_arrays(given))
        assert X.shape == expected.shape and np.array_equal(X, expected, equal_nan=True)
    assert np.isnan(plan.matrix(record_arrays(records[:3]))[[0, 1, 2], [0, 2, 1]]).all()  # unknown, missing


def test_sklearn_path_is_exact_and_compiled_path_within_1e_12(fitted, flights):
    rows = pd.concat([awkward(flights), flights[list(RECORD)]], ignore_index=True)
    records = as_records(rows)
    expected = model.predict_proba(fitted, rows)
    numpy_sklearn = inference.Scorer(fitted)
    assert numpy_sklearn.path == "scikit-learn (NumPy input)"
    assert np.array_equal(numpy_sklearn.predict(records), expected)
    assert np.array_equal(np.concatenate([numpy_sklearn.predict([r]) for r in records[:40]]), expected[:40])

    blob, report = gate.compile_model(fitted, flights, threshold=0.5)
    assert report["status"] == "compiled" and blob is not None, report
    assert report["input_equal"] and report["gtil_equal"] and report["decisions_changed"] == 0
    assert report["rows_checked"] == len(flights) + 4 and report["max_abs_diff"] <= 1e-12
    timed = [int(n) for n in report["timings"]]
    assert report["max_rows"] >= 1 and timed == list(gate.COMPILE_SIZES[:len(timed)]) and report["max_rows"] in timed
    scorer = inference.Scorer(fitted, inference.Compiled(blob), max_rows=len(records))
    assert scorer.path.startswith("treelite up to")
    compiled = scorer.predict(records)
    assert np.max(np.abs(compiled - expected)) <= 1e-12
    assert np.array_equal(compiled >= 0.5, expected >= 0.5)
    one_by_one = np.concatenate([scorer.predict([r]) for r in records[:40]])
    assert np.array_equal(one_by_one, compiled[:40])  # a row alone scores as in a batch
    frame_in = scorer.predict(rows)  # the recorder's shadow scoring hands a frame
    assert np.array_equal(frame_in, compiled)
    beyond = inference.Scorer(fitted, inference.Compiled(blob), max_rows=10)  # more rows: scikit-learn
    assert np.array_equal(beyond.predict(records), expected)


def test_a_version_that_fails_its_check_is_served_by_sklearn(fitted, flights):
    blob, report = gate.compile_model(fitted, flights.head(300), threshold=0.5, tolerance=-1.0)
    assert blob is None and report["status"] == "failed check"
    assert "probabilities differ" in report["reason"] and "sha256" not in report


def test_other_pipelines_are_not_compiled(flights):
    logreg = model.fit(model.build_model("logreg", max_iter=200, seed=1), flights)
    blob, report = gate.compile_model(logreg, flights, threshold=0.5)
    assert blob is None and report["status"] == "not compiled" and "LogisticRegression" in report["reason"]
    scorer = inference.Scorer(logreg, None)
    assert scorer.path == "scikit-learn pipeline"
    rows = awkward(flights)
    assert np.array_equal(scorer.predict(as_records(rows)), model.predict_proba(logreg, rows))
