"""`mlops-nb export mlflow`: the run records and the model registry copied into MLflow (a tracking server or a
``sqlite:///`` store), for a team whose tracking and registry live there.

What mlops-nb knows is gathered here, from the warehouse and the model store, and shaped as MLflow takes it
(each run: params, metrics, tags, its task reports; each version: its files and tags; the aliases); the writing
is ``scripts/mlflow_import.py``, run with the mlflow environment's Python (``tools``): MLflow is not imported
by mlops_nb. Our ids travel as tags, so exporting again adds only what is new.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from .. import config
from ..errors import ExportError
from ..registry.versions import flatten
from . import tools

SCRIPT = Path(__file__).parent / "scripts" / "mlflow_import.py"
STATUS = {"succeeded": "FINISHED", "failed": "FAILED"}  # anything else: KILLED
MAX_PARAM = 6000  # MLflow's longest param value
MAX_TAG = 8000  # and run tag value


def export(settings: config.Settings, tracking_uri: str, registry_uri: str | None = None,
           experiment: str = "mlops-nb") -> dict:
    """Copy what MLflow does not hold yet: runs (into ``experiment``), model versions (of the registered model
    ``registry.model_name``, logged with ``mlflow.sklearn``), the ``champion``/``challenger`` aliases. Returns
    the counts added: runs, artifacts (task report files), model_versions, aliases (set, moved or removed)."""
    manifest = gather(settings)
    python = tools.bin_dir(settings, "mlflow") / "python"
    manifest.update(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri, experiment=experiment)
    with tempfile.TemporaryDirectory(prefix="mlops-nb-mlflow-") as tmp:
        source, result = Path(tmp) / "manifest.json", Path(tmp) / "result.json"
        source.write_text(json.dumps(manifest), encoding="utf-8")
        env = config.child_environment({"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                                        "GIT_PYTHON_REFRESH": "quiet"})
        proc = subprocess.run([str(python), str(SCRIPT), str(source), str(result)], capture_output=True, text=True,
                              env=env)
        answer = json.loads(result.read_text(encoding="utf-8")) if result.is_file() else None
    if answer is None:
        raise ExportError(f"The MLflow export stopped (exit {proc.returncode}) before it said what it did. Its "
                          f"output:\n{proc.stderr[-3000:]}\nExporting again adds only what is still missing.")
    if "error" in answer:
        done = {k: n for k, n in answer["added"].items() if n}
        so_far = (f"Added before that: {done}; exporting again adds only what is still missing." if done else
                  "Nothing was exported.")
        raise ExportError(f"MLflow at {tracking_uri} did not take the export: {answer['error']}\n{so_far} Check "
                          "--tracking-uri (e.g. sqlite:///mlflow.db, http://127.0.0.1:5000).")
    return answer["added"]


def gather(settings: config.Settings) -> dict:
    """What the script writes: runs, versions and aliases as MLflow takes them. An ExportError when there is
    no champion, or a version's file is not what was registered: nothing is written then."""
    from .. import registry
    from ..data import warehouse
    from ..run import records

    name = settings.registry.model_name
    path = warehouse.warehouse_path(settings)
    if not path.exists():
        raise ExportError(f"No champion of {name} to export: there is no warehouse at {path}, so no run and no "
                          "model yet. Run the pipeline (`mlops-nb run`) so that a model passes the gate, then "
                          "export again.")
    data_dir = settings.path("data_dir")
    with warehouse.connect(settings=settings) as con:
        aliases = registry.aliases(con) if warehouse.has_table(con, "model_aliases") else {}
        if "champion" not in aliases:
            raise ExportError(f"No champion of {name} to export: the registry's aliases are {aliases or 'none'}. "
                              "Run the pipeline (`mlops-nb run`) so that a model passes the gate, or promote a "
                              "version (`mlops-nb models promote VERSION`), then export again.")
        versions = list(reversed(registry.versions(con)))  # oldest first: MLflow numbers them in that order
        sha256 = {v["version"]: registry.expected_sha256(con, v["version"]) for v in versions}
        count = con.execute("SELECT count(*) FROM runs").fetchone()[0] + len(records.pending(data_dir))
        runs = list(reversed(records.list_runs(con, count, data_dir)))
    known = {r["run_id"] for r in runs}
    folders = registry.store_dirs(settings)
    tags = {v["version"]: v["tag"] for v in versions}
    return {"model_name": name, "package": str(Path(__file__).resolve().parents[1]),
            "runs": [run_entry(settings, r) for r in runs],
            "versions": [version_entry(v, sha256[v["version"]], folders.get(v["version"]), known) for v in versions],
            "aliases": {alias: tags[version] for alias, version in aliases.items()},
            "managed_aliases": list(registry.ALIASES)}


def run_entry(settings: config.Settings, r: dict) -> dict:
    """A run record as an MLflow run: its settings as params, its test metrics, our facts as tags."""
    features = r.get("features") or {}
    gate = r.get("gate") or {}
    tags = {"mlops_nb.status": r["status"], "mlops_nb.trigger": r.get("trigger") or "mlops-nb run",
            "mlops_nb.snapshot_id": r.get("snapshot_id"), "mlops_nb.git_commit": r.get("git_commit"),
            "mlflow.source.git.commit": r.get("git_commit"), "mlops_nb.git_dirty": r.get("git_dirty"),
            "mlops_nb.model_version": r.get("model_version"), "mlops_nb.promoted": gate.get("promote"),
            "mlops_nb.feature_set_id": features.get("feature_set_id"),
            "mlops_nb.features_digest": features.get("digest"),
            "mlops_nb.tasks": json.dumps({t["task"]: t["status"] for t in r["tasks"]}),
            "mlops_nb.library_versions": json.dumps(r.get("versions") or {}, sort_keys=True),
            "mlops_nb.error": r.get("error")}
    reports = settings.path("reports_dir") / "runs" / r["run_id"]
    return {"run_id": r["run_id"], "status": STATUS.get(r["status"], "KILLED"),
            "start_ms": _ms(r["started_at"]), "end_ms": _ms(r["ended_at"]) if r["ended_at"] else None,
            "params": {k: _text(v)[:MAX_PARAM] for k, v in flatten(r.get("params") or {}).items()},
            "metrics": {k: float(v) for k, v in _numbers(r.get("metrics") or {}).items()},
            "tags": {k: _text(v)[:MAX_TAG] for k, v in tags.items() if v is not None},
            "reports": str(reports) if reports.is_dir() and any(reports.iterdir()) else None}


def version_entry(v: dict, sha256: str, folder: Path | None, runs: set[str]) -> dict:
    """A model version as an MLflow version: its files, and our tag, sha256, metrics and lineage as tags."""
    from ..registry import INFO_FILE, MODEL_FILE

    if folder is None or not (folder / MODEL_FILE).is_file():
        raise ExportError(f"Model version {v['tag']} is registered but its {MODEL_FILE} is not in the model store "
                          f"({folder or 'no folder ' + v['version']}). Nothing was exported; restore the model store "
                          "(paths.bentoml_home) from a copy that holds it.")
    found = hashlib.sha256((folder / MODEL_FILE).read_bytes()).hexdigest()
    if found != sha256:
        raise ExportError(f"The model file of {v['tag']} in the store is not the one that was registered: its sha256 "
                          f"is {found[:16]}..., expected {sha256[:16]}.... Nothing was exported; run the pipeline "
                          "again (`mlops-nb run --force`) to rebuild it.")
    if v["run_id"] not in runs:
        raise ExportError(f"Model version {v['tag']} was registered by run {v['run_id']}, which the warehouse's "
                          "run records do not hold. Nothing was exported; the warehouse is not the one that "
                          "registered it.")
    lineage = v.get("lineage") or {}
    code = lineage.get("lineage") or {}
    tags = {"mlops_nb.tag": v["tag"], "mlops_nb.version": v["version"], "mlops_nb.sha256": sha256,
            "mlops_nb.run_id": v["run_id"], "mlops_nb.created_at": v["created_at"],
            "mlops_nb.kind": lineage.get("kind"),
            "mlops_nb.seed": lineage.get("seed"), "mlops_nb.snapshot_id": lineage.get("snapshot_id"),
            "mlops_nb.feature_set_id": lineage.get("feature_set_id"), "mlops_nb.git_commit": code.get("git_commit"),
            "mlops_nb.git_dirty": code.get("git_dirty"), "mlops_nb.params": json.dumps(lineage.get("params") or {}),
            "mlops_nb.promoted": (v.get("gate") or {}).get("promote")}
    tags.update({f"mlops_nb.metrics.{k}": value for k, value in _numbers(v.get("metrics") or {}).items()})
    return {"version": v["version"], "tag": v["tag"], "run_id": v["run_id"], "sha256": sha256,
            "model_file": str(folder / MODEL_FILE), "info_file": str(folder / INFO_FILE),
            "tags": {k: _text(value) for k, value in tags.items() if value is not None},
            "description": f"mlops-nb's {v['tag']}, trained and registered by run {v['run_id']}."}


def _numbers(d: dict) -> dict:
    """The numeric leaves of ``d`` (flattened): what MLflow takes as metrics."""
    return {k: v for k, v in flatten(d).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _text(v) -> str:
    """A value as MLflow stores it: booleans lower case (as our settings write them), lists and dicts as JSON."""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _ms(iso: str) -> int:
    """Milliseconds since the epoch of a naive UTC time (how the warehouse keeps times)."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=timezone.utc).timestamp() * 1000)
