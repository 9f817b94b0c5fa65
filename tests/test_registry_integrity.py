"""The registry's records stay true (mlops_nb/registry/versions.py): a version's row is written once and each
run that trains its bytes adds a registration; alias audit rows say which action moved an alias and who did;
rollback walks back by action, never by the reason's text; a stored model is loaded only when its bytes are
the ones the warehouse recorded (model_versions.sha256), whatever the store's own model.json says.

Uses the session project of served_project.py (v1: the champion; v2: a refused candidate).
"""
from __future__ import annotations

import json
import textwrap

import pytest

pytest.register_assert_rewrite("served_project")
from conftest import ALL_TASKS, last_run, query_dicts  # noqa: E402
from served_project import aliases, audit, mlops, mlops_ok, py_json, store_dir  # noqa: E402

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow


def test_same_bytes_trained_again_add_a_registration_only(served, served_copy):
    project = served_copy
    versions_before = query_dicts(project, "SELECT * FROM model_versions ORDER BY version")
    (v1_row,) = [r for r in versions_before if r["version"] == served.v1]
    regs_before = query_dicts(project, "SELECT * FROM model_registrations WHERE version = ?", [served.v1])
    assert [r["run_id"] for r in regs_before] == [v1_row["run_id"]]

    result = mlops_ok(project, "run", "--quiet", "--force")  # the first run's settings: v1's bytes again
    assert result.tasks_with("ran") == ALL_TASKS, str(result)
    record = last_run(project)
    assert record["status"] == "succeeded" and record["model_version"] == served.v1, record

    # the version's row is exactly as it was: created_at, run_id, gate, metrics, lineage, sha256
    assert query_dicts(project, "SELECT * FROM model_versions ORDER BY version") == versions_before
    regs = query_dicts(project, "SELECT * FROM model_registrations WHERE version = ? ORDER BY registered_at",
                       [served.v1])
    assert [r["run_id"] for r in regs] == [v1_row["run_id"], record["run_id"]]
    new = regs[1]
    assert new["registered_at"] > regs[0]["registered_at"]
    gate = json.loads(new["gate"])
    assert gate["promote"] == record["gate"]["promote"] and gate["reasons"] == record["gate"]["reasons"]
    assert new["promoted"] == bool(record["gate"]["promote"])
    assert json.loads(new["metrics"]) == json.loads(regs[0]["metrics"])  # same model, same rows
    assert json.loads(new["metrics"])["roc_auc"] == pytest.approx(record["metrics"]["roc_auc"])
    assert aliases(project).get("champion") == served.v1

    shown = mlops_ok(project, "models", "show", served.v1, "--json").json()
    assert [r["run_id"] for r in shown["registrations"]] == [v1_row["run_id"], record["run_id"]]
    assert shown["run_id"] == v1_row["run_id"]
    assert shown["created_at"] == v1_row["created_at"].isoformat()


def test_alias_audit_rows_carry_action_and_actor(served, served_copy):
    project = served_copy
    first = audit(project)
    assert [(r["action"], r["actor"], r["to_version"]) for r in first] == [("gate", "gate", served.v1)], first
    (v1_row,) = query_dicts(project, "SELECT run_id FROM model_versions WHERE version = ?", [served.v1])
    assert first[0]["run_id"] == v1_row["run_id"]

    mlops_ok(project, "models", "promote", served.v2, "--reason", "by hand")
    mlops_ok(project, "models", "rollback")
    log = audit(project)
    assert log[:1] == first
    assert [(r["action"], r["from_version"], r["to_version"]) for r in log[1:]] == [
        ("promote", served.v1, served.v2), ("rollback", served.v2, served.v1)], log
    for r in log[1:]:
        assert r["actor"] and r["actor"] != "gate", r
        assert r["run_id"] is None
    assert log[1]["reason"] == "by hand"


def test_rollback_walks_back_by_action_not_by_reason(served, served_copy):
    project = served_copy
    v1, v2 = served.v1, served.v2
    result = mlops_ok(project, "run", "--quiet", "-p", "model.seed=7", "-p", "gate.min_roc_auc=0.99")
    v3 = last_run(project)["model_version"]
    assert v3 not in (v1, v2), str(result)
    assert aliases(project).get("champion") == v1

    # a hand promotion whose reason starts with 'rollback' is still a promotion
    mlops_ok(project, "models", "promote", v2, "--reason", "rollback drill")
    mlops_ok(project, "models", "promote", v3, "--reason", "by hand")
    assert aliases(project).get("champion") == v3

    out = mlops_ok(project, "models", "rollback")
    assert aliases(project).get("champion") == v2, str(out)
    out = mlops_ok(project, "models", "rollback")  # past the 'rollback drill' promotion, to v1
    assert aliases(project).get("champion") == v1, str(out)
    refused = mlops(project, "models", "rollback")  # v1 came from the gate with no champion before it
    assert refused.returncode == 7, str(refused)
    assert "Nothing to roll back" in refused.stderr, str(refused)
    assert aliases(project).get("champion") == v1

    log = audit(project)
    assert [(r["action"], r["from_version"], r["to_version"]) for r in log] == [
        ("gate", None, v1), ("promote", v1, v2), ("promote", v2, v3), ("rollback", v3, v2), ("rollback", v2, v1)]


LOAD = textwrap.dedent("""
    import json, sys
    from mlops_nb import registry
    from mlops_nb.data import warehouse
    from mlops_nb.errors import DataError

    out = {}
    with warehouse.connect() as con:
        for name in sys.argv[1:]:
            try:
                estimator, info = registry.load_version(con, name)
                out[name] = {"ok": info["model_sha256"], "expected": registry.expected_sha256(con, info["model_sha256"][:16])}
            except DataError as e:
                out[name] = {"error": type(e).__name__, "message": str(e)}
    print(json.dumps(out))
""")


def test_load_checks_the_sha256_the_warehouse_recorded(served, served_copy):
    project = served_copy
    v1_dir, v2_dir = store_dir(project, served.v1), store_dir(project, served.v2)
    (recorded,) = query_dicts(project, "SELECT sha256 FROM model_versions WHERE version = ?", [served.v1])
    assert recorded["sha256"].startswith(served.v1)

    before = py_json(project, LOAD, "champion", served.v2)
    assert before["champion"].get("ok") == recorded["sha256"], before
    assert before[served.v2].get("ok", "").startswith(served.v2), before

    # the champion's folder now holds v2's model, and a model.json that agrees with it
    v2_info = json.loads((v2_dir / "model.json").read_text())
    (v1_dir / "model.joblib").write_bytes((v2_dir / "model.joblib").read_bytes())
    info = json.loads((v1_dir / "model.json").read_text())
    info["model_sha256"] = v2_info["model_sha256"]
    (v1_dir / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True))

    after = py_json(project, LOAD, "champion", served.v1, served.v2)
    for name in ("champion", served.v1):
        assert after[name].get("error") == "DataError", after
        message = after[name]["message"]
        assert "sha256" in message and "model.joblib" in message, after
        assert recorded["sha256"][:16] in message, after  # what the warehouse recorded is what counts
    assert after[served.v2].get("ok", "").startswith(served.v2), after  # the other version still loads

    # the gate scores the champion: the run stops there, and changes nothing
    failed = mlops(project, "run", "--quiet", "-p", "gate.tolerance=0.01")
    assert failed.returncode != 0, str(failed)
    assert "gate" in failed.stderr and "sha256" in failed.stderr, str(failed)
    assert recorded["sha256"][:16] in failed.stderr, str(failed)
    assert last_run(project)["status"] == "failed"
    assert aliases(project).get("champion") == served.v1
