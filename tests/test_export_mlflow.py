"""`mlops-nb export mlflow`: run records, task reports, model versions and aliases copied into MLflow, read back
with MLflow's own client (the mlflow exporter environment) from a ``sqlite:///`` store; exporting again adds only
what is new; no champion or a store that cannot be reached is an error that writes nothing."""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import MODEL_NAME, PRODUCTS, REPO, TIMEOUT, query, run_cli, run_ok, store_dir

# Reads an MLflow store back with MLflow's client, in the mlflow environment: argv = tracking URI, model name,
# a pickled frame of test rows, the output JSON. The champion is loaded by `mlflow.sklearn.load_model` alone
# (the code it needs travels with it), its P(label = 1) on the rows saved beside the output.
READ_BACK = r'''
import hashlib, json, sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

uri, name, rows, out = sys.argv[1:5]
mlflow.set_tracking_uri(uri)
mlflow.set_registry_uri(uri)
client = MlflowClient(tracking_uri=uri, registry_uri=uri)
experiment = client.get_experiment_by_name("mlops-nb")
runs = {}
for run in client.search_runs([experiment.experiment_id], max_results=1000):
    runs[run.info.run_id] = {"status": run.info.status, "name": run.info.run_name, "metrics": run.data.metrics,
                             "params": run.data.params, "tags": run.data.tags,
                             "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id, "reports"))}
versions = [{"version": str(v.version), "run_id": v.run_id, "tags": v.tags}
            for v in client.search_model_versions(f"name = '{name}'", max_results=1000)]
aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
champion = client.get_model_version_by_alias(name, "champion")
model = mlflow.sklearn.load_model(f"models:/{name}@champion")
np.save(Path(out).with_suffix(".npy"), model.predict_proba(pd.read_pickle(rows))[:, 1].astype(np.float64))
files = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion"))
Path(out).write_text(json.dumps({
    "runs": runs, "versions": versions, "aliases": aliases,
    "champion": {"version": str(champion.version), "run_id": champion.run_id, "tags": champion.tags},
    "champion_file_sha256": hashlib.sha256((files / "extra_files" / "model.joblib").read_bytes()).hexdigest(),
    "model_code": sys.modules["mlops_nb.lib.model"].__file__}))
'''


@pytest.fixture
def mlflow_python(tool_bin) -> Path:
    return tool_bin("mlflow") / "python"


def sqlite_uri(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def export(project: Path, uri: str) -> dict:
    return run_ok(project, "export", "mlflow", "--tracking-uri", uri).json()


def rows_of(project: Path):
    """The test rows as the pipeline reads them, and the frame the model takes (the flight record's)."""
    from mlops_nb.data import features, warehouse
    from mlops_nb.lib import model
    from mlops_nb.lib.transforms import record_frame

    table = json.loads((project / PRODUCTS / "features.json").read_text(encoding="utf-8"))["table_name"]
    with warehouse.connect(path=project / "data" / "warehouse.duckdb") as con:
        rows = features.load(con, table, ["test"])
    return rows, record_frame(rows), model


def read_back(python: Path, uri: str, folder: Path, frame) -> tuple[dict, np.ndarray]:
    """What MLflow holds, read by its client in a clean process: no mlops_nb on its path, not in the project."""
    folder.mkdir(parents=True, exist_ok=True)
    script, rows, out = folder / "read_back.py", folder / "rows.pkl", folder / "read.json"
    script.write_text(READ_BACK, encoding="utf-8")
    frame.to_pickle(rows)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", GIT_PYTHON_REFRESH="quiet")
    proc = subprocess.run([str(python), str(script), uri, MODEL_NAME, str(rows), str(out)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text(encoding="utf-8")), np.load(out.with_suffix(".npy"))


def our_runs(project: Path) -> dict[str, dict]:
    return {r["run_id"]: r for r in run_ok(project, "runs", "--json", "--limit", "1000").json()}


def report_files(project: Path, run_id: str) -> list[str]:
    folder = project / "reports" / "runs" / run_id
    return sorted(f"reports/{p.name}" for p in folder.iterdir()) if folder.is_dir() else []


def by_our_id(read: dict) -> dict[str, dict]:
    return {r["tags"]["mlops_nb.run_id"]: r for r in read["runs"].values()}


@pytest.mark.slow
def test_export_reads_back_with_mlflow_and_again_adds_only_what_is_new(project, tmp_path, mlflow_python):
    uri = sqlite_uri(tmp_path / "mlflow")
    ours = our_runs(project)
    versions = run_ok(project, "models", "list", "--json").json()
    added = export(project, uri)
    assert added == {"runs": len(ours), "model_versions": len(versions), "aliases": 1,
                     "artifacts": sum(len(report_files(project, r)) for r in ours)}, added

    rows, frame, model = rows_of(project)
    first, p_mlflow = read_back(mlflow_python, uri, tmp_path / "read1", frame)
    runs = by_our_id(first)
    assert set(runs) == set(ours) and len(first["runs"]) == len(ours), (set(runs), set(ours))
    for run_id, run in ours.items():
        got = runs[run_id]
        assert got["status"] == {"succeeded": "FINISHED", "failed": "FAILED"}[run["status"]], got["status"]
        assert got["metrics"] == {k: float(v) for k, v in (run["metrics"] or {}).items()}, got["metrics"]
        assert got["params"] == {k: str(v) for k, v in run["params"].items()}
        tags = got["tags"]
        assert tags["mlops_nb.status"] == run["status"] and tags.get("mlops_nb.snapshot_id") == run["snapshot_id"]
        assert tags.get("mlops_nb.git_commit") == run["git_commit"], tags  # no git yet: absent on both sides
        assert tags["mlops_nb.trigger"] == (run["trigger"] or "mlops-nb run")
        assert got["artifacts"] == report_files(project, run_id) and got["artifacts"], got["artifacts"]
    assert len(first["versions"]) == len(versions)

    champion = run_ok(project, "models", "show", "champion", "--json").json()
    assert first["champion"]["tags"]["mlops_nb.tag"] == champion["tag"], first["champion"]
    assert first["champion"]["tags"]["mlops_nb.sha256"] == champion["sha256"] == first["champion_file_sha256"]
    assert first["aliases"] == {"champion": first["champion"]["version"]}
    assert first["runs"][first["champion"]["run_id"]]["tags"]["mlops_nb.run_id"] == champion["run_id"]
    code = Path(first["model_code"])  # the code the model needs came with it, not from this repository
    assert code.parts[-4:] == ("code", "mlops_nb", "lib", "model.py") and REPO not in code.parents, code

    from mlops_nb.registry import load_file

    estimator = load_file(store_dir(project, champion["version"]) / "model.joblib", champion["sha256"])
    p_ours = model.predict_proba(estimator, rows)
    assert len(p_ours) == len(rows) > 100 and p_mlflow.shape == p_ours.shape
    assert np.max(np.abs(p_mlflow - p_ours)) == 0.0  # the same estimator, the same libraries: the same floats

    # again: nothing new (the read-back below finds exactly one run and one version more than the first)
    assert export(project, uri) == {"runs": 0, "artifacts": 0, "model_versions": 0, "aliases": 0}

    (project / ".gitignore").write_text("data/\nreports/\n", encoding="utf-8")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit",
                                                   "-qm", "sample project"]):
        subprocess.run(["git", *args], cwd=project, check=True, capture_output=True, timeout=60)
    before_versions = query(project, "SELECT version FROM model_versions")
    run_ok(project, "run", "--quiet", "-p", "model.seed=7")
    new_runs = set(our_runs(project)) - set(ours)
    new_versions = set(query(project, "SELECT version FROM model_versions")) - set(before_versions)
    assert len(new_runs) == 1 and len(new_versions) == 1, (new_runs, new_versions)
    champion = run_ok(project, "models", "show", "champion", "--json").json()

    added = export(project, uri)
    assert added["runs"] == 1 and added["model_versions"] == 1, added
    assert added["aliases"] == (0 if champion["run_id"] in ours else 1), added
    third, _ = read_back(mlflow_python, uri, tmp_path / "read3", frame)
    assert set(third["runs"]) > set(first["runs"]) and len(third["runs"]) == len(first["runs"]) + 1
    (new,) = new_runs
    run = by_our_id(third)[new]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert run["tags"]["mlflow.source.git.commit"] == run["tags"]["mlops_nb.git_commit"] == commit, run["tags"]
    assert run["params"]["model.seed"] == "7"
    assert len(third["versions"]) == len(first["versions"]) + 1
    (version,) = [v for v in third["versions"] if v["version"] not in {w["version"] for w in first["versions"]}]
    assert version["tags"]["mlops_nb.version"] == next(iter(new_versions))[0]
    assert third["runs"][version["run_id"]]["tags"]["mlops_nb.run_id"] == new
    assert third["champion"]["tags"]["mlops_nb.tag"] == champion["tag"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_champion_is_an_error_that_writes_nothing(project_factory, project, tmp_path):
    unbuilt = project_factory("unbuilt")
    store = tmp_path / "mlflow"
    store.mkdir()
    uri = f"sqlite:///{store / 'mlflow.db'}"
    for case in (unbuilt, project):
        if case is project:  # a built registry whose champion was taken away: runs and versions, no alias
            import duckdb

            with duckdb.connect(str(project / "data" / "warehouse.duckdb")) as con:
                con.execute("DELETE FROM model_aliases")
        result = run_cli(case, "export", "mlflow", "--tracking-uri", uri)
        assert result.returncode == 7, str(result)
        assert f"No champion of {MODEL_NAME}" in result.stderr and "`mlops-nb run`" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert list(store.iterdir()) == [], "a refused export wrote into the store"


def test_a_store_that_cannot_be_reached_is_an_error(project, tmp_path, mlflow_python):
    for uri, expected in ((f"http://127.0.0.1:{free_port()}", "cannot be reached"),
                          (f"sqlite:///{tmp_path / 'no-such-folder' / 'mlflow.db'}", "does not exist"),
                          ("nosuch://somewhere", "did not take the export")):
        result = run_cli(project, "export", "mlflow", "--tracking-uri", uri)
        assert result.returncode == 7, str(result)
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "no-such-folder").exists()
