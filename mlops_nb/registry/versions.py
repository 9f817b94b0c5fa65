"""The model registry: the BentoML model store holds the artifacts, the warehouse holds the truth.

A model version is the BentoML tag ``<model_name>:<first 16 hex of the model file's sha256>``: the same
trained bytes are the same version, registered once. The store's directory of a version holds the
pickled model, its reference profiles (whylogs, written by ``profiles``) and ``model.json`` (metrics,
lineage, parameters, feature schema), so `bentoml export` / a Bento carry all of it. The warehouse
tables ``model_versions``, ``model_aliases`` and ``alias_audit`` say which version is the champion or
the challenger and why; every alias change is one transaction (the alias and its audit row land
together or not at all).

This module and ``serving`` are the only ones that import BentoML.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import MlopsNbError, NotFoundError, did_you_mean

ALIASES = ("champion", "challenger")
MODEL_FILE = "model.joblib"
INFO_FILE = "model.json"
PROFILES_DIR = "reference"


class RegistryError(MlopsNbError):
    """A registry operation is not possible (empty registry, nothing to roll back to, ...)."""

    exit_code = 7
    http_status = 409


def _bentoml(settings: config.Settings | None = None):
    """BentoML, with its home inside the project (set before its first import)."""
    config.export_tool_env(settings or config.get_settings())
    import bentoml

    return bentoml


@dataclass
class Version:
    version: str
    tag: str
    created_at: object
    run_id: str | None
    metrics: dict
    lineage: dict
    gate: dict | None
    aliases: list[str]


def save(estimator_file: Path, info: dict, reference_dir: Path | None,
         settings: config.Settings | None = None) -> str:
    """Put a trained model (its file, info and reference profiles) into the BentoML store; returns the tag.
    Saving the same bytes twice returns the existing tag."""
    import hashlib

    settings = settings or config.get_settings()
    bentoml = _bentoml(settings)
    digest = hashlib.sha256(Path(estimator_file).read_bytes()).hexdigest()
    tag = f"{settings.registry.model_name}:{digest[:16]}"
    try:
        bentoml.models.get(tag)
        return tag
    except bentoml.exceptions.NotFound:
        pass
    labels = {"kind": str(info.get("kind", "")), "run_id": str(info.get("run_id") or ""),
              "snapshot": str(info.get("snapshot_id", ""))[:12]}
    metadata = {"model_sha256": digest, "metrics": info.get("metrics", {}), "lineage": info.get("lineage", {})}
    with bentoml.models.create(tag, labels=labels, metadata=_primitive(metadata)) as model:
        shutil.copy2(estimator_file, model.path_of(MODEL_FILE))
        Path(model.path_of(INFO_FILE)).write_text(json.dumps({**info, "model_sha256": digest}, indent=2,
                                                              sort_keys=True, default=str))
        if reference_dir is not None and Path(reference_dir).exists():
            shutil.copytree(reference_dir, model.path_of(PROFILES_DIR))
    return tag


def _primitive(obj):
    """BentoML metadata takes plain types and no None: unknown values become ''."""
    if isinstance(obj, dict):
        return {str(k): _primitive(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_primitive(v) for v in obj]
    if obj is None:
        return ""
    if isinstance(obj, (str, int, float, bool)):
        return obj
    return str(obj)


def model_dir(tag: str, settings: config.Settings | None = None) -> Path:
    bentoml = _bentoml(settings)
    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        raise NotFoundError(f"Model {tag} is not in the model store {config.get_settings().path('bentoml_home')}; "
                            "it was deleted or the store was moved. Run the pipeline again.") from None


def load(tag: str, settings: config.Settings | None = None):
    """The fitted estimator and its info, checked against the recorded sha256."""
    from ..run.products import load_model

    d = model_dir(tag, settings)
    info = json.loads((d / INFO_FILE).read_text())
    return load_model(d / MODEL_FILE, info["model_sha256"]), info


def register(con, tag: str, info: dict, gate: dict | None, run_id: str | None = None) -> str:
    """Record a stored model in the registry tables (idempotent); returns its version."""
    from ..run.records import now

    version = tag.split(":", 1)[1]
    exists = con.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone()
    if not exists:
        con.execute("INSERT INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?)", [
            version, tag, now(), run_id, json.dumps(info.get("metrics", {}), default=str),
            json.dumps({k: info.get(k) for k in ("lineage", "params", "kind", "seed", "snapshot_id",
                                                  "feature_set_id", "feature_schema")}, default=str),
            json.dumps(gate, default=str) if gate is not None else None])
    elif gate is not None:
        con.execute("UPDATE model_versions SET gate = ? WHERE version = ?", [json.dumps(gate, default=str), version])
    return version


def aliases(con) -> dict[str, str]:
    return dict(con.execute("SELECT alias, version FROM model_aliases").fetchall())


def resolve(con, name: str) -> str:
    """A version from an alias ('champion') or a version (or a unique prefix of one)."""
    current = aliases(con)
    if name in current:
        return current[name]
    if name in ALIASES:
        raise RegistryError(f"No model is the {name} yet: run the pipeline (`mlops-nb run`) so that a model "
                            "passes the gate, or `mlops-nb models promote VERSION`.")
    versions = [r[0] for r in con.execute("SELECT version FROM model_versions").fetchall()]
    matches = [v for v in versions if v.startswith(name.split(":")[-1])]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFoundError(f"No model version {name!r}; known versions: {versions or 'none'}."
                            f"{did_you_mean(name, versions + list(ALIASES))}")
    raise NotFoundError(f"{name!r} matches several versions {matches}; give more characters.")


def set_alias(con, alias: str, version: str | None, reason: str, actor: str = "cli") -> str | None:
    """Point ``alias`` at ``version`` (None removes it) and append the audit row, in one transaction.
    Returns the version it pointed at before."""
    from ..data.warehouse import transaction

    with transaction(con):
        return _set_alias(con, alias, version, reason, actor)


def _set_alias(con, alias, version, reason, actor):
    from ..run.records import now

    if alias not in ALIASES:
        raise RegistryError(f"The 'alias' must be one of {ALIASES}; got {alias!r} instead."
                            f"{did_you_mean(alias, ALIASES)}")
    row = con.execute("SELECT version FROM model_aliases WHERE alias = ?", [alias]).fetchone()
    previous = row[0] if row else None
    if previous == version:
        return previous
    if version is None:
        con.execute("DELETE FROM model_aliases WHERE alias = ?", [alias])
    else:
        con.execute("INSERT OR REPLACE INTO model_aliases VALUES (?, ?, ?)", [alias, version, now()])
    con.execute("INSERT INTO alias_audit VALUES (nextval('alias_audit_seq'), ?, ?, ?, ?, ?, ?)",
                [now(), alias, previous, version, reason, actor])
    return previous


def promote(con, version: str, alias: str = "champion", reason: str = "promoted by hand",
            actor: str = "cli") -> str | None:
    """Make ``version`` the champion (or challenger). Promoting the challenger to champion ends a rollout:
    the challenger alias is removed in the same transaction."""
    from ..data.warehouse import transaction

    version = resolve(con, version)
    with transaction(con):
        previous = _set_alias(con, alias, version, reason, actor)
        if alias == "champion" and aliases(con).get("challenger") == version:
            _set_alias(con, "challenger", None, f"rollout finished: {version} is the champion", actor)
    return previous


def rollback(con, alias: str = "champion", actor: str = "cli") -> tuple[str, str]:
    """Point ``alias`` back at the version it had before the current one was promoted; rolling back again
    walks further back."""
    current = aliases(con).get(alias)
    row = con.execute("SELECT from_version FROM alias_audit WHERE alias = ? AND to_version IS NOT DISTINCT FROM ? "
                      "AND reason NOT LIKE 'rollback%' ORDER BY seq DESC LIMIT 1", [alias, current]).fetchone()
    if current is None or row is None or row[0] is None:
        raise RegistryError(f"Nothing to roll back: the {alias} ({current or 'none'}) has no earlier version "
                            "in the audit log.")
    set_alias(con, alias, row[0], f"rollback from {current}", actor)
    return current, row[0]


def versions(con) -> list[dict]:
    from ..data.warehouse import records

    rows = records(con, "SELECT * FROM model_versions ORDER BY created_at DESC, version")
    current = aliases(con)
    for r in rows:
        r["aliases"] = sorted(a for a, v in current.items() if v == r["version"])
        r["created_at"] = r["created_at"].isoformat() if r["created_at"] else None
    return rows


def show(con, name: str) -> dict:
    version = resolve(con, name)
    return next(r for r in versions(con) if r["version"] == version)


def audit(con, limit: int = 50) -> list[dict]:
    from ..data.warehouse import records

    rows = records(con, "SELECT * FROM alias_audit ORDER BY seq DESC LIMIT ?", [limit])
    for r in rows:
        r["changed_at"] = r["changed_at"].isoformat()
    return rows


def diff(con, a: str, b: str) -> list[tuple[str, object, object]]:
    """Metrics and lineage of two versions side by side: (field, a's value, b's value)."""
    left, right = show(con, a), show(con, b)
    out = []
    for section in ("metrics", "lineage", "gate"):
        la, lb = _flatten(left.get(section) or {}), _flatten(right.get(section) or {})
        la = {k: v for k, v in la.items() if not k.startswith("feature_schema.")}
        lb = {k: v for k, v in lb.items() if not k.startswith("feature_schema.")}
        for key in sorted(set(la) | set(lb)):
            out.append((f"{section}.{key}", la.get(key), lb.get(key)))
    return out


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
