"""Writes mlops-nb's run records and model versions into MLflow. Run by ``mlops_nb.export.mlflow`` with the
mlflow environment's Python (MLflow never enters the project's lock nor its process), as
``python mlflow_import.py MANIFEST RESULT``: MANIFEST is the JSON that module gathered (what to write, already
shaped as MLflow's params, metrics and tags), RESULT the JSON this script leaves: ``{"added": counts}``, or
``{"error": text, "added": counts so far}``.

What is there already is found by our ids, kept as tags: ``mlops_nb.run_id`` on a run (which counts only once
``mlops_nb.exported`` is set, its last write: a run cut short by a crash is deleted and made again) and
``mlops_nb.tag`` on a model version (created with its tags in one call). So an export adds only what is new.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

RUN_ID_TAG = "mlops_nb.run_id"
DONE_TAG = "mlops_nb.exported"
VERSION_TAG = "mlops_nb.tag"
PAGE = 1000
BATCH = 100  # MLflow takes at most 100 params or tags in one log_batch


class Refused(Exception):
    """The target cannot take the export; the message says why and what to do."""


def main(argv: list[str]) -> int:
    manifest = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    result = Path(argv[2])
    added = {"runs": 0, "artifacts": 0, "model_versions": 0, "aliases": 0}
    try:
        reachable(manifest["tracking_uri"])
        if manifest["registry_uri"] != manifest["tracking_uri"]:
            reachable(manifest["registry_uri"])
        write(manifest, added)
    except Exception as e:  # every failure goes back to mlops-nb as text, never as a traceback
        message = str(e) if isinstance(e, Refused) else f"{type(e).__name__}: {e}"
        result.write_text(json.dumps({"error": message, "added": added}), encoding="utf-8")
        return 1
    result.write_text(json.dumps({"added": added}), encoding="utf-8")
    return 0


def reachable(uri: str) -> None:
    """Fail fast on a server that does not answer or a store whose folder is missing, before MLflow's client
    retries for minutes or creates anything."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
        except urllib.error.HTTPError:
            pass  # it answered: reachable, whatever it thinks of /health
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise Refused(f"the MLflow server at {uri} cannot be reached ({reason}). Start it (e.g. `mlflow server "
                          "--host 127.0.0.1 --port 5000`) or give the URI of one that runs.") from None
    elif parsed.scheme == "sqlite":
        path = sqlite_path(uri)
        if path is not None and not path.parent.is_dir():
            raise Refused(f"the folder {path.parent} of the sqlite store {path.name} does not exist. Make it, "
                          "or give a sqlite:///PATH whose folder exists.")


def absolute(uri: str) -> str:
    """A ``sqlite:///`` URI with its file's absolute path (any other URI as it is)."""
    path = sqlite_path(uri)
    if path is None:
        return uri
    _, question, query = uri.partition("?")
    return f"sqlite:///{path}{question}{query}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (relative to this process's folder, as MLflow reads it)."""
    rest = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
    rest = rest.split("?", 1)[0]
    return Path(rest).resolve() if rest and rest != ":memory:" else None


def write(m: dict, added: dict) -> None:
    import mlflow
    from mlflow import MlflowClient

    m["tracking_uri"], m["registry_uri"] = absolute(m["tracking_uri"]), absolute(m["registry_uri"])
    database = sqlite_path(m["tracking_uri"])
    if database is not None:
        os.chdir(database.parent)  # MLflow's default artifact root, ./mlruns, then lies beside the database
    mlflow.set_tracking_uri(m["tracking_uri"])
    mlflow.set_registry_uri(m["registry_uri"])
    client = MlflowClient(tracking_uri=m["tracking_uri"], registry_uri=m["registry_uri"])
    experiment_id = experiment(client, m)
    mlflow.set_experiment(experiment_id=experiment_id)
    runs = existing_runs(client, experiment_id)
    for run in m["runs"]:
        if run["run_id"] not in runs:
            runs[run["run_id"]] = add_run(client, experiment_id, run, added)
    versions = existing_versions(client, m["model_name"])
    for version in m["versions"]:
        if version["tag"] not in versions:
            versions[version["tag"]] = add_version(client, m, version, runs[version["run_id"]], added)
    move_aliases(client, m, versions, added)


def experiment(client, m: dict) -> str:
    name = m["experiment"]
    found = client.get_experiment_by_name(name)
    if found is None:
        return client.create_experiment(name, tags={"mlops_nb.model_name": m["model_name"]})
    if found.lifecycle_stage != "active":
        raise Refused(f"the MLflow experiment {name!r} is deleted. Restore it (`mlflow experiments restore "
                      f"--experiment-id {found.experiment_id}`) or export into another one with --experiment.")
    return found.experiment_id


def existing_runs(client, experiment_id: str) -> dict[str, str]:
    """Our run id -> MLflow run id of the runs a past export finished; a run it left unfinished is deleted."""
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` LIKE '%'",
                                  max_results=PAGE, page_token=token)
        for run in page:
            if run.data.tags.get(DONE_TAG) == "true":
                out[run.data.tags[RUN_ID_TAG]] = run.info.run_id
            else:
                client.delete_run(run.info.run_id)
        token = page.token
        if not token:
            return out


def add_run(client, experiment_id: str, run: dict, added: dict) -> str:
    from mlflow.entities import Metric, Param, RunTag

    made = client.create_run(experiment_id, start_time=run["start_ms"], run_name=run["run_id"],
                             tags={RUN_ID_TAG: run["run_id"]})
    rid = made.info.run_id
    when = run["end_ms"] or run["start_ms"]
    params = [Param(k, v) for k, v in run["params"].items()]
    tags = [RunTag(k, v) for k, v in run["tags"].items()]
    metrics = [Metric(k, v, when, 0) for k, v in run["metrics"].items()]
    for i in range(0, max(len(params), len(tags), 1), BATCH):
        client.log_batch(rid, metrics=metrics if i == 0 else [], params=params[i:i + BATCH], tags=tags[i:i + BATCH])
    if run["reports"]:
        client.log_artifacts(rid, run["reports"], artifact_path="reports")
        added["artifacts"] += sum(1 for p in Path(run["reports"]).rglob("*") if p.is_file())
    client.set_terminated(rid, status=run["status"], end_time=run["end_ms"])
    client.set_tag(rid, DONE_TAG, "true")
    added["runs"] += 1
    return rid


def existing_versions(client, name: str) -> dict[str, str]:
    """Our model tag -> MLflow version number, of the registered model ``name`` (made when missing)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, tags={"mlops_nb.model_name": name},
                                       description=f"Versions of {name} exported from mlops-nb's registry.")
    out: dict[str, str] = {}
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=PAGE, page_token=token)
        for v in page:
            if VERSION_TAG in v.tags:
                out[v.tags[VERSION_TAG]] = str(v.version)
        token = page.token
        if not token:
            return out


def add_version(client, m: dict, version: dict, run_id: str, added: dict) -> str:
    """The version's model logged with ``mlflow.sklearn`` from the run that registered it (its unpickled
    estimator, the code it needs, the original file and model.json), then registered with our tags."""
    from importlib.metadata import version as installed

    import joblib
    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="mlops-nb-code-") as tmp:
        code = package_code(Path(m["package"]), Path(tmp))
        sys.path.insert(0, str(code.parent))  # the estimator unpickles with the code it is logged with
        try:
            estimator = joblib.load(version["model_file"])
        finally:
            sys.path.remove(str(code.parent))
        requirements = [f"{d}=={installed(d)}" for d in ("scikit-learn", "numpy", "pandas", "scipy", "joblib")]
        info = mlflow.sklearn.log_model(estimator, name="model", run_id=run_id, serialization_format="pickle",
                                        code_paths=[str(code)], pip_requirements=requirements,
                                        extra_files=[version["model_file"], version["info_file"]],
                                        tags={VERSION_TAG: version["tag"]})
    made = client.create_model_version(m["model_name"], source=info.model_uri, run_id=run_id,
                                       tags=version["tags"], description=version["description"],
                                       model_id=info.model_id)
    added["model_versions"] += 1
    return str(made.version)


def package_code(package: Path, folder: Path) -> Path:
    """The part of mlops_nb a pickled model refers to (the package's ``__init__`` and ``lib/``), copied into
    ``folder``/mlops_nb: logged with the model, so that ``mlflow.sklearn.load_model`` works without mlops-nb."""
    out = folder / "mlops_nb"
    (out / "lib").mkdir(parents=True)
    shutil.copy2(package / "__init__.py", out / "__init__.py")
    for f in (package / "lib").glob("*.py"):
        shutil.copy2(f, out / "lib" / f.name)
    return out


def move_aliases(client, m: dict, versions: dict[str, str], added: dict) -> None:
    """MLflow's aliases made ours: each of ours on its version, one we no longer have removed."""
    current = client.get_registered_model(m["model_name"]).aliases
    for alias in m["managed_aliases"]:
        tag = m["aliases"].get(alias)
        wanted = versions[tag] if tag else None
        if (str(current[alias]) if alias in current else None) == wanted:
            continue
        if wanted is None:
            client.delete_registered_model_alias(m["model_name"], alias)
        else:
            client.set_registered_model_alias(m["model_name"], alias, wanted)
        added["aliases"] += 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
