"""The promotion gate: model tests on the real trained model (and on broken predictors), the decision's
thresholds and its comparison with the champion, and the gate task inside real runs of the pipeline."""
from __future__ import annotations

import json
import math
import textwrap

import pytest

pytest.register_assert_rewrite("served_project")
from conftest import last_run
from served_project import aliases, audit, mlops, py_json, versions

pytest_plugins = ["served_project"]

THRESHOLDS = {"min_roc_auc": 0.6, "max_brier": 0.25, "tolerance": 0.005}


def thresholds(**changed):
    from mlops_nb import config

    return config.Section("gate", {**THRESHOLDS, **changed})


def passing_tests():
    return [{"name": "golden rows get valid probabilities", "passed": True, "detail": ""}]


# --------------------------------------------------------------------------------------------------
# model tests, on the model the pipeline registered (loaded from the registry) and on broken predictors


MODEL_TESTS = textwrap.dedent("""
    import json, sys
    import numpy as np
    from mlops_nb import registry
    from mlops_nb.data import features, warehouse
    from mlops_nb.lib import model
    from mlops_nb.registry import gate

    receipt = json.load(open("data/products/features.json"))
    with warehouse.connect() as con:
        estimator, info = registry.load_version(con, sys.argv[1])
        test = features.load(con, receipt["table_name"], ["test"])

    def trained(rows):
        return model.predict_proba(estimator, rows)

    def nan(rows):
        return np.full(len(rows), np.nan)

    def leaky(rows):
        '''The trained model, nudged by the departure delay when the record carries one: a leak.'''
        p = model.predict_proba(estimator, rows)
        if "dep_delay" in rows:
            p = np.clip(p + np.where(rows["dep_delay"].to_numpy(dtype=float) > 60, 0.2, 0.0), 0, 1)
        return p

    def out_of_range(rows):
        return model.predict_proba(estimator, rows) * 2 - 0.5

    print(json.dumps({name: gate.model_tests(f, test) for name, f in
                      [("trained", trained), ("nan", nan), ("leaky", leaky), ("out_of_range", out_of_range)]}))
""")


@pytest.fixture(scope="module")
def model_tests(served):
    out = py_json(served.pristine, MODEL_TESTS, f"flight_delay:{served.v1}")
    return {name: {t["name"]: t for t in tests} for name, tests in out.items()}


@pytest.mark.slow
def test_model_tests_pass_for_the_trained_model(model_tests):
    tests = model_tests["trained"]
    assert len(tests) == 5
    failed = [t for t in tests.values() if not t["passed"]]
    assert failed == []
    golden = tests["golden rows get valid probabilities"]["detail"]
    p = json.loads(golden.split("=", 1)[1])
    assert len(p) == 4 and all(0 < x < 1 for x in p)


@pytest.mark.slow
def test_model_tests_fail_for_a_predictor_answering_nan(model_tests):
    tests = model_tests["nan"]
    assert not tests["golden rows get valid probabilities"]["passed"]
    assert not tests["test rows get valid probabilities"]["passed"]


@pytest.mark.slow
def test_model_tests_fail_for_a_predictor_using_an_ignored_field(model_tests):
    tests = model_tests["leaky"]
    leak = tests["ignores identifiers and after-the-fact fields"]
    assert not leak["passed"]
    assert "dep_delay" in leak["detail"]
    assert float(leak["detail"].rsplit(" ", 1)[1]) > 0, leak["detail"]
    # the rest of its behaviour is the trained model's: only the leak is caught
    assert all(t["passed"] for name, t in tests.items() if name != leak["name"])


@pytest.mark.slow
def test_model_tests_fail_for_probabilities_out_of_range(model_tests):
    tests = model_tests["out_of_range"]
    assert not tests["test rows get valid probabilities"]["passed"]


@pytest.mark.slow
def test_gate_refuses_a_broken_model(served, model_tests):
    from mlops_nb.registry import gate

    candidate = served.version(served.v1)["metrics"]
    for name in ("nan", "leaky"):
        decision = gate.decide(candidate, None, list(model_tests[name].values()), thresholds())
        assert decision["promote"] is False
        assert any(r.startswith("model test failed:") for r in decision["reasons"]), decision["reasons"]


# --------------------------------------------------------------------------------------------------
# the decision


@pytest.fixture(scope="module")
def metrics(served) -> dict:
    """The champion's real test metrics, the baseline of the decision tests."""
    return served.version(served.v1)["metrics"]


@pytest.mark.slow
def test_decide_promotes_a_good_first_model(metrics):
    from mlops_nb.registry import gate

    decision = gate.decide(metrics, None, passing_tests(), thresholds(min_roc_auc=0.5))
    assert decision["promote"] is True
    assert decision["reasons"] == ["passed every model test and threshold; there was no champion"]
    assert decision["thresholds"] == {**THRESHOLDS, "min_roc_auc": 0.5}


@pytest.mark.slow
@pytest.mark.parametrize("setting, value, words", [
    ("min_roc_auc", 0.99, "is below gate.min_roc_auc 0.99"),
    ("max_brier", 0.01, "is above gate.max_brier 0.01"),
])
def test_decide_refuses_below_a_threshold(metrics, setting, value, words):
    from mlops_nb.registry import gate

    decision = gate.decide(metrics, None, passing_tests(), thresholds(**{setting: value}))
    assert decision["promote"] is False
    assert len(decision["reasons"]) == 1 and words in decision["reasons"][0], decision["reasons"]


@pytest.mark.slow
def test_decide_refuses_both_thresholds_with_both_reasons(metrics):
    from mlops_nb.registry import gate

    decision = gate.decide(metrics, None, passing_tests(), thresholds(min_roc_auc=0.99, max_brier=0.01))
    assert decision["promote"] is False
    assert [("gate.min_roc_auc" in r, "gate.max_brier" in r) for r in decision["reasons"]] == [(True, False),
                                                                                              (False, True)]


@pytest.mark.slow
@pytest.mark.parametrize("metric, delta", [("roc_auc", -0.02), ("brier", +0.02)])
def test_decide_refuses_a_model_worse_than_the_champion(metrics, metric, delta):
    """The candidate is the champion made worse on one metric by more than gate.tolerance."""
    from mlops_nb.registry import gate

    candidate = {**metrics, metric: metrics[metric] + delta}
    decision = gate.decide(candidate, metrics, passing_tests(), thresholds(min_roc_auc=0.5))
    assert decision["promote"] is False
    (reason,) = decision["reasons"]
    assert "champion" in reason and "gate.tolerance 0.005" in reason
    assert f"{metrics[metric]:.4f}" in reason


@pytest.mark.slow
def test_decide_promotes_within_the_tolerance(metrics):
    from mlops_nb.registry import gate

    candidate = {**metrics, "roc_auc": metrics["roc_auc"] - 0.004, "brier": metrics["brier"] + 0.004}
    decision = gate.decide(candidate, metrics, passing_tests(), thresholds(min_roc_auc=0.5))
    assert decision["promote"] is True
    assert decision["reasons"] == ["passed every model test and threshold, and is not worse than the champion"]
    assert gate.decide(candidate, metrics, passing_tests(), thresholds(min_roc_auc=0.5, tolerance=0.0)
                       )["promote"] is False


@pytest.mark.slow
def test_decide_refuses_an_undefined_roc_auc(metrics):
    """A test set of one class has no ROC AUC (NaN): such a model proves nothing and is refused."""
    from mlops_nb.registry import gate

    decision = gate.decide({**metrics, "roc_auc": math.nan}, None, passing_tests(), thresholds())
    assert decision["promote"] is False
    assert any("gate.min_roc_auc" in r for r in decision["reasons"])


def test_decide_refuses_a_missing_metric():
    from mlops_nb.registry import gate

    decision = gate.decide({"roc_auc": None, "brier": 0.2}, None, passing_tests(), thresholds())
    assert decision["promote"] is False
    assert any("gate.min_roc_auc" in r for r in decision["reasons"])


# --------------------------------------------------------------------------------------------------
# the gate task in real runs


@pytest.mark.slow
def test_a_run_below_the_gate_registers_a_candidate(served):
    """The session's second run had -p gate.min_roc_auc=0.99: a refused model is not a failed run."""
    result = served.second
    assert result.returncode == 0, str(result)
    assert f"model {served.v2}: registered as a candidate, not promoted" in result.stdout, str(result)
    assert "gate.min_roc_auc 0.99" in result.stdout

    record = last_run(served.pristine)
    assert record["status"] == "succeeded"
    assert record["model_version"] == served.v2
    assert record["params"]["gate.min_roc_auc"] == "0.99"
    assert record["gate"]["promote"] is False
    assert any("is below gate.min_roc_auc 0.99" in r for r in record["gate"]["reasons"]), record["gate"]
    assert record["gate"]["aliases"] == {"champion": served.v1}

    assert aliases(served.pristine) == {"champion": served.v1}, "the champion did not change"
    assert len(audit(served.pristine)) == 1, "the refused run wrote no alias change"
    registered = served.version(served.v2)
    assert registered["gate"]["promote"] is False and registered["aliases"] == []
    assert registered["gate"]["reasons"] == record["gate"]["reasons"]
    decision = json.loads((served.pristine / "data" / "products" / "gate.json").read_text())
    assert decision["promote"] is False and decision["version"] == served.v2


@pytest.mark.slow
def test_strict_gate_fails_the_command_when_the_gate_refuses(served_copy):
    """`mlops-nb run --strict-gate` (what CI runs): a refused model lands as a candidate, and the command fails
    with exit code 8 so that the job does; a run whose gate did not run keeps exit code 0."""
    refused = mlops(served_copy, "run", "--quiet", "--strict-gate", "-p", "gate.min_roc_auc=0.99", "-p", "model.seed=9")
    assert refused.returncode == 8, str(refused)
    assert "the gate refused model" in refused.stderr and "gate.min_roc_auc 0.99" in refused.stderr, refused.stderr
    record = last_run(served_copy)
    assert record["status"] == "succeeded" and record["gate"]["promote"] is False
    assert record["model_version"] in [r["version"] for r in versions(served_copy)], "registered as a candidate"
    again = mlops(served_copy, "run", "--quiet", "--strict-gate", "-p", "gate.min_roc_auc=0.99", "-p", "model.seed=9")
    assert again.returncode == 0 and "Nothing to do" in again.stdout, str(again)


@pytest.mark.slow
def test_a_much_worse_model_is_not_promoted_over_the_champion(served, served_copy):
    """One boosting round at a tiny learning rate against the champion's 30: it clears an absolute floor
    of 0.5 ROC AUC but is far worse than the champion on the same test rows."""
    before = audit(served_copy)
    result = mlops(served_copy, "run", "--quiet", "-p", "model.max_iter=1", "-p", "model.learning_rate=0.01",
                   "-p", "gate.min_roc_auc=0.5")
    assert result.returncode == 0, str(result)
    assert "registered as a candidate, not promoted" in result.stdout, str(result)

    record = last_run(served_copy)
    assert record["status"] == "succeeded"
    new = record["model_version"]
    assert new not in (served.v1, served.v2)
    assert record["gate"]["promote"] is False
    reasons = record["gate"]["reasons"]
    assert reasons and all("champion" in r and "gate.tolerance" in r for r in reasons), reasons
    assert record["metrics"]["roc_auc"] < served.version(served.v1)["metrics"]["roc_auc"] - THRESHOLDS["tolerance"]

    assert aliases(served_copy) == {"champion": served.v1}
    assert audit(served_copy) == before
    assert {r["version"] for r in versions(served_copy)} == {served.v1, served.v2, new}
