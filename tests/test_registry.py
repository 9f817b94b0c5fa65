"""The model registry: the `mlops-nb models` commands and ``mlops_nb.registry``, on a real project (DuckDB
warehouse, BentoML store inside it). Aliases move atomically with their audit rows, the audit log only
grows, a run's lock keeps aliases still, and a stored model is the model the pipeline trained."""
from __future__ import annotations

import hashlib
import json
import textwrap

import pytest

pytest.register_assert_rewrite("served_project")
from served_project import (MODEL_NAME, aliases, audit, mlops, mlops_ok, py, py_json, sample_rows, store_dir,
                            versions)

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow


def assert_clean_error(result, code: int, *needles: str):
    """A refused command: the given exit code, a one-line-ish message naming the problem, no traceback."""
    assert result.returncode == code, str(result)
    assert "Traceback" not in result.stderr + result.stdout, str(result)
    assert result.stderr.startswith("error: "), str(result)
    for needle in needles:
        assert needle in result.stderr, f"{needle!r} not in the message:\n{result}"


def assert_appended(before: list[dict], after: list[dict], n: int) -> list[dict]:
    """``after`` is ``before`` plus ``n`` new rows (earlier rows byte-for-byte unchanged); returns the new."""
    assert len(after) == len(before) + n, (before, after)
    assert after[:len(before)] == before, "an existing audit row changed"
    new = after[len(before):]
    assert [r["seq"] for r in new] == sorted(r["seq"] for r in new)
    assert all(r["seq"] > max([b["seq"] for b in before] or [0]) for r in new)
    return new


def typo(version: str) -> str:
    """The version with its last character changed: close to it, a prefix of nothing."""
    return version[:-1] + ("0" if version[-1] != "0" else "1")


# --------------------------------------------------------------------------------------------------
# reading: list, show, diff, audit


def test_models_list_json(served):
    rows = versions(served.pristine)
    assert [r["version"] for r in rows] == [served.v2, served.v1], "newest first"
    by = {r["version"]: r for r in rows}
    assert by[served.v1]["aliases"] == ["champion"]
    assert by[served.v2]["aliases"] == []
    for v, r in by.items():
        assert r["tag"] == f"{MODEL_NAME}:{v}"
        assert 0.5 < r["metrics"]["roc_auc"] <= 1 and 0 <= r["metrics"]["brier"] <= 1
        assert r["run_id"], "a version names the run that trained it"
        assert store_dir(served.pristine, v).is_dir(), f"{v} is registered but not in the model store"
    assert by[served.v1]["gate"]["promote"] is True
    assert by[served.v2]["gate"]["promote"] is False
    assert by[served.v1]["lineage"]["params"]["learning_rate"] == 0.1
    assert by[served.v2]["lineage"]["params"]["learning_rate"] == 0.05
    # the text form lists the same versions
    text = mlops_ok(served.pristine, "models", "list").stdout
    assert served.v1 in text and served.v2 in text and "champion" in text


def test_models_show_by_version_prefix_and_alias(served):
    full = mlops_ok(served.pristine, "models", "show", served.v1, "--json").json()
    prefix = mlops_ok(served.pristine, "models", "show", served.v1[:6], "--json").json()
    alias = mlops_ok(served.pristine, "models", "show", "champion", "--json").json()
    tag = mlops_ok(served.pristine, "models", "show", f"{MODEL_NAME}:{served.v1}", "--json").json()
    assert full == prefix == alias == tag
    assert full["version"] == served.v1 and full["aliases"] == ["champion"]
    registrations = full.pop("registrations")
    assert full == served.version(served.v1)
    assert [r["run_id"] for r in registrations] == [full["run_id"]], "one registration: the run that trained it"
    assert registrations[0]["promoted"] is True and registrations[0]["gate"]["promote"] is True


def test_models_diff_json(served):
    rows = mlops_ok(served.pristine, "models", "diff", served.v1, served.v2, "--json").json()
    diff = {field: (a, b) for field, a, b in rows}
    one, two = served.version(served.v1), served.version(served.v2)
    assert diff["metrics.roc_auc"] == (one["metrics"]["roc_auc"], two["metrics"]["roc_auc"])
    assert diff["metrics.brier"] == (one["metrics"]["brier"], two["metrics"]["brier"])
    assert diff["lineage.params.learning_rate"] == (0.1, 0.05)
    assert diff["lineage.snapshot_id"][0] == diff["lineage.snapshot_id"][1], "same data"
    assert diff["gate.promote"] == (True, False)
    assert not any(f.startswith("lineage.feature_schema.") for f in diff), "the schema is left out"
    # aliases work too, and the text form marks what differs
    assert mlops_ok(served.pristine, "models", "diff", "champion", served.v2, "--json").json() == rows
    text = mlops_ok(served.pristine, "models", "diff", served.v1, served.v2).stdout
    line = next(l for l in text.splitlines() if l.startswith("lineage.params.learning_rate"))
    assert line.rstrip().endswith("*")


def test_models_audit_json(served):
    rows = audit(served.pristine)
    assert len(rows) == 1, "only the first run changed an alias (the second was refused by the gate)"
    (row,) = rows
    assert (row["alias"], row["from_version"], row["to_version"], row["actor"]) == ("champion", None, served.v1,
                                                                                     "gate")
    assert "passed every model test" in row["reason"]


# --------------------------------------------------------------------------------------------------
# changing aliases


def test_promote_challenger_then_champion_ends_the_rollout(served, served_copy):
    before = audit(served_copy)
    out = mlops_ok(served_copy, "models", "promote", served.v2, "--alias", "challenger", "--reason", "try it on 10%")
    assert out.stdout.strip() == f"challenger: (none) -> {served.v2}"
    assert aliases(served_copy) == {"champion": served.v1, "challenger": served.v2}
    (row,) = assert_appended(before, audit(served_copy), 1)
    assert (row["alias"], row["from_version"], row["to_version"], row["reason"], row["actor"]) == \
        ("challenger", None, served.v2, "try it on 10%", "cli")

    mid = audit(served_copy)
    out = mlops_ok(served_copy, "models", "promote", "challenger", "--reason", "it did well")
    assert out.stdout.strip() == f"champion: {served.v1} -> {served.v2}"
    assert aliases(served_copy) == {"champion": served.v2}, "promoting the challenger ends the rollout"
    champ, ended = assert_appended(mid, audit(served_copy), 2)
    assert (champ["alias"], champ["from_version"], champ["to_version"], champ["reason"], champ["actor"]) == \
        ("champion", served.v1, served.v2, "it did well", "cli")
    assert (ended["alias"], ended["from_version"], ended["to_version"], ended["actor"]) == \
        ("challenger", served.v2, None, "cli")
    assert "rollout finished" in ended["reason"]
    assert audit(served_copy)[:len(before)] == before


def test_rollback_returns_to_the_previous_champion(served, served_copy):
    mlops_ok(served_copy, "models", "promote", served.v2)
    assert aliases(served_copy)["champion"] == served.v2
    before = audit(served_copy)
    out = mlops_ok(served_copy, "models", "rollback")
    assert out.stdout.strip() == f"champion: {served.v2} -> {served.v1} (rolled back)"
    assert aliases(served_copy) == {"champion": served.v1}
    (row,) = assert_appended(before, audit(served_copy), 1)
    assert (row["alias"], row["from_version"], row["to_version"], row["actor"]) == \
        ("champion", served.v2, served.v1, "cli")
    assert served.v2 in row["reason"] and "rollback" in row["reason"]
    # what `models show` says follows
    assert mlops_ok(served_copy, "models", "show", "champion", "--json").json()["version"] == served.v1
    # rolling back again walks further back, not back and forth: v1 had no champion before it
    again = mlops(served_copy, "models", "rollback")
    assert again.returncode != 0 and "Nothing to roll back" in again.stderr
    assert aliases(served_copy) == {"champion": served.v1}


def test_rollback_with_no_history_is_refused(served, served_copy):
    before_aliases, before_audit = aliases(served_copy), audit(served_copy)
    result = mlops(served_copy, "models", "rollback")
    assert_clean_error(result, 7, "Nothing to roll back", "champion")
    result = mlops(served_copy, "models", "rollback", "--alias", "challenger")
    assert_clean_error(result, 7, "Nothing to roll back", "challenger")
    assert aliases(served_copy) == before_aliases and audit(served_copy) == before_audit


def test_rollback_with_no_history_raises_in_process(served, served_copy):
    from mlops_nb import registry
    from mlops_nb.data import warehouse

    with warehouse.connect(write=True, path=served_copy / "data" / "warehouse.duckdb") as con:
        with pytest.raises(registry.RegistryError, match="Nothing to roll back"):
            registry.rollback(con)
        assert registry.aliases(con) == {"champion": served.v1}


@pytest.mark.parametrize("command", [
    ["models", "show", "{typo}"],
    ["models", "show", "{typo}", "--json"],
    ["models", "promote", "{typo}"],
    ["models", "promote", "{typo}", "--alias", "challenger"],
    ["models", "diff", "{v1}", "{typo}"],
], ids=["show", "show-json", "promote", "promote-challenger", "diff"])
def test_unknown_version_is_a_clear_error(served, served_copy, command):
    bad = typo(served.v1)
    before_aliases, before_audit = aliases(served_copy), audit(served_copy)
    args = [a.format(typo=bad, v1=served.v1) for a in command]
    result = mlops(served_copy, *args)
    assert_clean_error(result, 6, f"No model version {bad!r}", f"Did you mean {served.v1!r}?", served.v1, served.v2)
    assert aliases(served_copy) == before_aliases and audit(served_copy) == before_audit


def test_unknown_alias_name_is_a_clear_error(served, served_copy):
    result = mlops(served_copy, "models", "show", "challenger")  # an alias that points at nothing yet
    assert_clean_error(result, 7, "No model is the challenger")
    result = mlops(served_copy, "models", "promote", served.v2, "--alias", "champoin")
    assert result.returncode == 2 and "champion" in result.stderr, str(result)  # argparse's choices
    assert aliases(served_copy) == {"champion": served.v1}


def test_promote_is_refused_while_a_run_holds_the_lock(served, served_copy):
    from mlops_nb import config
    from mlops_nb.run import transaction as runner

    settings = config.load(served_copy / "settings.ini", environ={})
    before_aliases, before_audit = aliases(served_copy), audit(served_copy)
    with runner.run_lock(settings):
        for args in (["models", "promote", served.v2], ["models", "rollback"]):
            result = mlops(served_copy, *args, timeout=120)
            assert_clean_error(result, 5, "Another mlops-nb run")
        assert aliases(served_copy) == before_aliases and audit(served_copy) == before_audit
    # the lock released, the same command goes through
    mlops_ok(served_copy, "models", "promote", served.v2)
    assert aliases(served_copy)["champion"] == served.v2


CRASH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from mlops_nb import registry
    from mlops_nb.data import warehouse

    class DiesBeforeTheAuditRow:
        '''The DuckDB connection, except that the process dies when the audit row is written.'''
        def __init__(self, con):
            self._con = con
        def execute(self, sql, *args, **kwargs):
            if sql.lstrip().startswith("INSERT INTO alias_audit"):
                sys.stdout.flush()
                os._exit(9)
            return self._con.execute(sql, *args, **kwargs)
        def __getattr__(self, name):
            return getattr(self._con, name)

    with warehouse.connect(write=True, path=Path(sys.argv[1])) as con:
        print("champion before:", registry.aliases(con).get("champion"), flush=True)
        registry.set_alias(DiesBeforeTheAuditRow(con), "champion", sys.argv[2], "x")
    print("survived")
""")


def test_alias_change_is_atomic_when_the_process_dies(served, served_copy):
    from mlops_nb import registry
    from mlops_nb.data import warehouse

    db = served_copy / "data" / "warehouse.duckdb"
    before_aliases, before_audit = aliases(served_copy), audit(served_copy)
    result = py(served_copy, CRASH, db, served.v2)
    assert result.returncode == 9, str(result)
    assert f"champion before: {served.v1}" in result.stdout and "survived" not in result.stdout
    assert aliases(served_copy) == before_aliases == {"champion": served.v1}, "the alias moved without its audit row"
    assert audit(served_copy) == before_audit
    # the file is sound after the crash, and the same change without the crash lands whole
    with warehouse.connect(write=True, path=db) as con:
        assert registry.set_alias(con, "champion", served.v2, "after the crash", actor="test") == served.v1
    (row,) = assert_appended(before_audit, audit(served_copy), 1)
    assert (row["from_version"], row["to_version"], row["reason"], row["actor"]) == \
        (served.v1, served.v2, "after the crash", "test")
    assert aliases(served_copy) == {"champion": served.v2}


def test_registry_functions_in_process(served, served_copy):
    from mlops_nb import errors, registry
    from mlops_nb.data import warehouse

    with warehouse.connect(write=True, path=served_copy / "data" / "warehouse.duckdb") as con:
        start = registry.audit(con)
        assert registry.resolve(con, "champion") == served.v1
        assert registry.resolve(con, served.v2[:5]) == served.v2
        assert registry.resolve(con, f"{MODEL_NAME}:{served.v2}") == served.v2
        with pytest.raises(errors.NotFoundError, match="Did you mean"):
            registry.resolve(con, typo(served.v2))
        with pytest.raises(registry.RegistryError, match="Did you mean 'challenger'"):
            registry.set_alias(con, "challanger", served.v2, "typo")
        assert len(registry.audit(con)) == len(start), "a refused change writes no audit row"

        # setting an alias to what it already is changes nothing and logs nothing
        assert registry.set_alias(con, "champion", served.v1, "again") == served.v1
        assert len(registry.audit(con)) == len(start)

        assert registry.promote(con, served.v2, "challenger", "canary", actor="t") is None
        assert registry.aliases(con) == {"champion": served.v1, "challenger": served.v2}
        assert registry.promote(con, "challenger", "champion", "rollout done", actor="t") == served.v1
        assert registry.aliases(con) == {"champion": served.v2}
        assert registry.rollback(con, actor="t") == (served.v2, served.v1)
        assert registry.aliases(con) == {"champion": served.v1}
        log = registry.audit(con)  # newest first
        new = log[:len(log) - len(start)]
        assert [(r["alias"], r["from_version"], r["to_version"]) for r in reversed(new)] == [
            ("challenger", None, served.v2), ("champion", served.v1, served.v2), ("challenger", served.v2, None),
            ("champion", served.v2, served.v1)]
        assert log[len(new):] == start, "earlier audit rows are never modified"
        assert all(r["actor"] == "t" for r in new)
        assert [r["seq"] for r in log] == sorted((r["seq"] for r in log), reverse=True)


# --------------------------------------------------------------------------------------------------
# what is stored


ROUND_TRIP = textwrap.dedent("""
    import hashlib, json, sys
    import joblib, pandas as pd
    from mlops_nb import registry
    from mlops_nb.lib import model

    products_model = "data/products/model.joblib"
    digest = hashlib.sha256(open(products_model, "rb").read()).hexdigest()
    tag = f"{sys.argv[1]}:{digest[:16]}"
    estimator, info = registry.load(tag, digest)
    rows = pd.read_json(sys.argv[2], orient="records", convert_dates=False)
    print(json.dumps({"tag": tag, "sha256": digest, "info_sha256": info["model_sha256"],
                      "stored": model.predict_proba(estimator, rows).tolist(),
                      "pipeline": model.predict_proba(joblib.load(products_model), rows).tolist(),
                      "dir": str(registry.model_dir(tag))}))
""")


def test_stored_model_round_trips(served, tmp_path):
    pristine = served.pristine
    rows = sample_rows(pristine, 25)
    rows_file = tmp_path / "rows.json"
    rows.to_json(rows_file, orient="records")
    out = py_json(pristine, ROUND_TRIP, MODEL_NAME, rows_file)
    # the pipeline's last model is the second run's, registered as v2
    assert out["tag"] == f"{MODEL_NAME}:{served.v2}"
    assert out["info_sha256"] == out["sha256"]
    assert out["dir"] == str(store_dir(pristine, served.v2))
    assert len(out["stored"]) == len(rows) and out["stored"] == out["pipeline"]
    assert len(set(out["stored"])) > 1, "the rows should not all score the same"


@pytest.mark.parametrize("which", ["v1", "v2"])
def test_store_holds_model_json_lineage_and_reference_profiles(served, which):
    from mlops_nb.data import profiles
    from mlops_nb.lib.transforms import RECORD

    version = getattr(served, which)
    d = store_dir(served.pristine, version)
    info = json.loads((d / "model.json").read_text())
    assert hashlib.sha256((d / "model.joblib").read_bytes()).hexdigest() == info["model_sha256"]
    assert info["model_sha256"].startswith(version)
    registered = served.version(version)
    assert info["metrics"] == registered["metrics"]
    assert {"roc_auc", "brier", "log_loss", "accuracy"} <= set(info["metrics"])
    lineage = info["lineage"]
    assert "git_commit" in lineage, "lineage names the code's commit (None outside a git checkout)"
    assert {"bentoml", "scikit-learn", "duckdb", "mlops-nb"} <= set(lineage["versions"])
    assert info["run_id"] == registered["run_id"]
    assert info["feature_schema"] == {k: list(v) for k, v in RECORD.items()}
    assert info["snapshot_id"] == registered["lineage"]["snapshot_id"]

    train = profiles.read(d / "reference" / "train_features.bin")
    test = profiles.read(d / "reference" / "test_predictions.bin")
    assert set(train.get_columns()) == set(RECORD)
    assert set(test.get_columns()) == set(RECORD) | {"p_late"}
    receipt = json.loads((served.pristine / "data" / "products" / "features.json").read_text())
    assert int(train.to_pandas()["counts/n"].max()) == receipt["row_counts"]["train"]
    assert int(test.to_pandas()["counts/n"].max()) == receipt["row_counts"]["test"] == info["metrics"]["n"]
