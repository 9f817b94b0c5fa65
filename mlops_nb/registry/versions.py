"""The model registry: the BentoML model store holds the artifacts, the warehouse holds the truth.

A model version is the BentoML tag ``<model_name>:<first 16 hex of the model file's sha256>``: the same
trained bytes are the same version, registered once. The store's directory of a version holds the
pickled model, its reference profiles (whylogs, written by ``profiles``), its compiled form for serving
(``compiled.treelite``, when ``registry.inference`` could compile and check it) and ``model.json`` (metrics,
lineage, parameters, feature schema, the feature definitions it was trained with under ``feature_store``,
the compile report under ``compiled``), so `bentoml export` / a Bento carry all of it. The warehouse
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

__all__ = ["ACTIONS", "ALIASES", "COMPILED_FILE", "INFO_FILE", "MODEL_FILE", "PROFILES_DIR", "RegistryError", "Version", "aliases",
           "audit", "champion", "diff", "expected_sha256", "flatten", "load", "load_compiled", "load_file", "load_version", "model_dir", "promote",
           "record_gate", "reference_dir", "register", "registrations", "remove_unregistered", "resolve", "rollback",
           "save", "served", "set_alias", "show", "store_dirs", "versions"]

ALIASES = ("champion", "challenger")
MODEL_FILE = "model.joblib"
INFO_FILE = "model.json"
PROFILES_DIR = "reference"
COMPILED_FILE = "compiled.treelite"  # registry.inference.Compiled reads it


class RegistryError(MlopsNbError):
    """A registry operation is not possible (empty registry, nothing to roll back to, ...)."""

    exit_code = 7
    http_status = 409


def _bentoml(store):
    """BentoML, its home at ``store`` (see ``config.use_bentoml_home``)."""
    config.use_bentoml_home(store)
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


def save(estimator_file: Path, info: dict, reference_dir: Path | None, model_name: str, store,
         compiled: bytes | None = None) -> str:
    """Put a trained model (its file, info, reference profiles and compiled form) into the BentoML store at
    ``store``; returns the tag. The reference folder is moved into the store (or dropped when the same bytes are
    already there: the existing version is kept as it is). Registration is separate (``record_gate``,
    when the run commits)."""
    import hashlib

    bentoml = _bentoml(store)
    digest = hashlib.sha256(Path(estimator_file).read_bytes()).hexdigest()
    tag = f"{model_name}:{digest[:16]}"
    try:
        bentoml.models.get(tag)
        if reference_dir is not None:
            shutil.rmtree(reference_dir, ignore_errors=True)
        return tag
    except bentoml.exceptions.NotFound:
        pass
    labels = {"kind": str(info.get("kind", "")), "run_id": str(info.get("run_id") or ""),
              "snapshot": str(info.get("snapshot_id", ""))[:12]}
    metadata = {"model_sha256": digest, "metrics": info.get("metrics", {}), "lineage": info.get("lineage", {})}
    with bentoml.models.create(tag, labels=labels, metadata=_primitive(metadata)) as model:
        shutil.copy2(estimator_file, model.path_of(MODEL_FILE))
        if compiled is not None:
            Path(model.path_of(COMPILED_FILE)).write_bytes(compiled)
        Path(model.path_of(INFO_FILE)).write_text(json.dumps({**info, "model_sha256": digest}, indent=2,
                                                              sort_keys=True, default=str))
        if reference_dir is not None and Path(reference_dir).exists():
            shutil.move(str(reference_dir), model.path_of(PROFILES_DIR))
    return tag


def store_dirs(settings: config.Settings) -> dict[str, Path]:
    """version -> its folder in the model store, for this project's model name (read without BentoML)."""
    root = config.bentoml_home(settings) / "models" / settings.registry.model_name
    if not root.is_dir():
        return {}
    return {d.name: d for d in root.iterdir() if d.is_dir()}


def reference_dir(version: str, settings: config.Settings | None = None) -> Path:
    """The ``reference/`` folder of a version in the model store (``version``: the version, or its tag
    ``name:version``), read without BentoML; it holds the whylogs profiles, and for versions saved since
    they were added, the raw reference (``gate.TRAIN_SAMPLE_FILE``, ...). Read it, never write: a version is
    written once."""
    settings = settings if settings is not None else config.get_settings()
    name, _, version = version.rpartition(":")
    name = name or settings.registry.model_name
    folder = config.bentoml_home(settings) / "models" / name / version
    if not version or not (folder / INFO_FILE).is_file():
        known = sorted(store_dirs(settings)) if name == settings.registry.model_name else []
        raise NotFoundError(f"Model version {name}:{version} is not in the model store "
                            f"{config.bentoml_home(settings)}; known versions of {name}: {known or 'none'}."
                            f"{did_you_mean(version, known)}")
    return folder / PROFILES_DIR


def remove_unregistered(con, settings: config.Settings) -> list[str]:
    """Delete model-store folders that no registered version names (a run killed between saving its model
    and committing leaves one). Only under the run lock: a run in progress may be saving one."""
    registered = {r[0] for r in con.execute("SELECT version FROM model_versions").fetchall()}
    removed = []
    for version, d in sorted(store_dirs(settings).items()):
        if version not in registered:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(f"{settings.registry.model_name}:{version}")
    latest = config.bentoml_home(settings) / "models" / settings.registry.model_name / "latest"
    if removed and latest.exists() and latest.read_text().strip() not in store_dirs(settings):
        remaining = sorted(store_dirs(settings).items(), key=lambda kv: kv[1].stat().st_mtime)
        if remaining:
            latest.write_text(remaining[-1][0])
        else:
            latest.unlink()
    return removed


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(tzinfo=None)


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


def model_dir(tag: str, store=None) -> Path:
    """The folder of ``tag`` in the model store (``store``: paths.bentoml_home; default the project's)."""
    home = config.use_bentoml_home(store if store is not None else config.get_settings().path("bentoml_home"))
    import bentoml

    try:
        return Path(bentoml.models.get(tag).path)
    except bentoml.exceptions.NotFound:
        raise NotFoundError(f"Model {tag} is not in the model store {home}; it was deleted or the store was "
                            "moved. Run the pipeline again.") from None


def load(tag: str, sha256: str, store=None):
    """The fitted estimator and its info. ``sha256`` is the file's hash as the registry recorded it (see
    ``served``, ``expected_sha256``): a file changed in the store after registration is refused."""
    d = model_dir(tag, store=store)
    info = json.loads((d / INFO_FILE).read_text())
    return load_file(d / MODEL_FILE, sha256), info


def load_compiled(tag: str, info: dict, store=None) -> bytes | None:
    """The compiled form of a version, when its compile report says it passed its checks; None otherwise.
    Bytes that are not the ones the report recorded are refused, as the model file's are."""
    import hashlib

    from ..errors import DataError

    report = info.get("compiled") or {}
    if report.get("status") != "compiled":
        return None
    path = model_dir(tag, store=store) / COMPILED_FILE
    blob = path.read_bytes()
    found = hashlib.sha256(blob).hexdigest()
    if found != report.get("sha256"):
        raise DataError(f"The compiled model {path} is not the one that was checked: its sha256 is {found[:16]}..., "
                        f"expected {str(report.get('sha256'))[:16]}.... Run the pipeline again (`mlops-nb run "
                        "--force`) to rebuild it.")
    return blob


def load_file(path, sha256: str | None):
    """Unpickle a model file, refusing one whose bytes are not the ones recorded."""
    import hashlib

    import joblib

    from ..errors import DataError

    found = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if sha256 and found != sha256:
        raise DataError(f"The model file {path} is not the one that was recorded: its sha256 is {found[:16]}..., "
                        f"expected {sha256[:16]}.... It was changed after it was written; run the pipeline again "
                        "(`mlops-nb run --force`) to rebuild it.")
    return joblib.load(path)


def load_version(con, name: str, store=None):
    """The estimator and info of a version or alias, checked against the sha256 the registry recorded."""
    version = resolve(con, name)
    tag = con.execute("SELECT tag FROM model_versions WHERE version = ?", [version]).fetchone()[0]
    return load(tag, expected_sha256(con, version), store)


def expected_sha256(con, version: str) -> str:
    """The model file's sha256 as recorded when the version was registered."""
    row = con.execute("SELECT coalesce(sha256, json_extract_string(lineage, '$.model_sha256')) "
                      "FROM model_versions WHERE version = ?", [version]).fetchone()
    if row is None or not row[0]:
        raise NotFoundError(f"Model version {version!r} is not registered in the warehouse.")
    return row[0]


def champion(con) -> dict | None:
    """{"tag", "sha256"} of the champion, or None."""
    try:
        return served(con)["champion"]
    except RegistryError:
        return None


def served(con, purpose: str = "to serve") -> dict[str, dict]:
    """alias -> {"tag", "sha256"} for every alias set: what a service loads, or a Bento pins."""
    rows = con.execute("SELECT a.alias, v.tag, coalesce(v.sha256, json_extract_string(v.lineage, '$.model_sha256')) "
                       "FROM model_aliases a JOIN model_versions v USING (version)").fetchall()
    out = {alias: {"tag": tag, "sha256": sha256} for alias, tag, sha256 in rows}
    if "champion" not in out:
        raise RegistryError(f"No champion {purpose}: run the pipeline first (`mlops-nb run`), "
                            "or promote a version (`mlops-nb models promote VERSION`).")
    return out


ACTIONS = ("gate", "promote", "rollback", "retrain")


def register(con, tag: str, info: dict, gate: dict | None, run_id: str | None = None) -> str:
    """Record a stored model for a run; returns its version. The first registration of the trained bytes
    creates the version; a later run that trained the same bytes adds its own registration row (its gate
    decision, metrics and run id) and rewrites nothing."""

    version = tag.split(":", 1)[1]
    sha256 = info.get("model_sha256")
    if not con.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone():
        con.execute("INSERT INTO model_versions (version, tag, created_at, run_id, metrics, lineage, gate, sha256) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
            version, tag, _now(), run_id, json.dumps(info.get("metrics", {}), default=str),
            json.dumps({k: info.get(k) for k in ("lineage", "params", "kind", "seed", "snapshot_id", "feature_set_id",
                                                  "feature_store", "feature_schema", "model_sha256", "compiled")},
                       default=str),
            json.dumps(gate, default=str) if gate is not None else None, sha256])
    if run_id is not None:
        con.execute("INSERT OR REPLACE INTO model_registrations VALUES (?, ?, ?, ?, ?, ?)", [
            version, run_id, _now(), json.dumps(info.get("metrics", {}), default=str),
            json.dumps(gate, default=str) if gate is not None else None, bool(gate and gate.get("promote"))])
    return version


def registrations(con, version: str) -> list[dict]:
    from ..data.warehouse import records

    rows = records(con, "SELECT * FROM model_registrations WHERE version = ? ORDER BY registered_at, run_id",
                   [version])
    for r in rows:
        r["registered_at"] = r["registered_at"].isoformat()
    return rows


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


def set_alias(con, alias: str, version: str | None, reason: str, actor: str = "cli", action: str = "promote",
              run_id: str | None = None) -> str | None:
    """Point ``alias`` at ``version`` (None removes it) and append the audit row, in one transaction.
    Returns the version it pointed at before."""
    from ..data.warehouse import transaction

    with transaction(con):
        return _set_alias(con, alias, version, reason, actor, action, run_id)


def _set_alias(con, alias, version, reason, actor, action="promote", run_id=None):

    if alias not in ALIASES:
        raise RegistryError(f"The 'alias' must be one of {ALIASES}; got {alias!r} instead."
                            f"{did_you_mean(alias, ALIASES)}")
    if action not in ACTIONS:
        raise RegistryError(f"The 'action' of an alias change must be one of {ACTIONS}; got {action!r} instead."
                            f"{did_you_mean(action, ACTIONS)}")
    row = con.execute("SELECT version FROM model_aliases WHERE alias = ?", [alias]).fetchone()
    previous = row[0] if row else None
    if previous == version:
        return previous
    if version is None:
        con.execute("DELETE FROM model_aliases WHERE alias = ?", [alias])
    else:
        con.execute("INSERT OR REPLACE INTO model_aliases VALUES (?, ?, ?)", [alias, version, _now()])
    con.execute("INSERT INTO alias_audit (seq, changed_at, alias, from_version, to_version, reason, actor, action, "
                "run_id) VALUES (nextval('alias_audit_seq'), ?, ?, ?, ?, ?, ?, ?, ?)",
                [_now(), alias, previous, version, reason, actor, action, run_id])
    return previous


def promote(con, version: str, alias: str = "champion", reason: str = "promoted by hand",
            actor: str = "cli", action: str = "promote", run_id: str | None = None) -> str | None:
    """Make ``version`` the champion (or challenger). Promoting the challenger to champion ends a rollout:
    the challenger alias is removed in the same transaction."""
    from ..data.warehouse import transaction

    version = resolve(con, version)
    with transaction(con):
        return _promote(con, version, alias, reason, actor, action, run_id)


def _promote(con, version, alias, reason, actor, action, run_id):
    previous = _set_alias(con, alias, version, reason, actor, action, run_id)
    if alias == "champion" and aliases(con).get("challenger") == version:
        _set_alias(con, "challenger", None, f"rollout finished: {version} is the champion", actor, action, run_id)
    return previous


def record_gate(con, tag: str, info: dict, decision: dict, run_id: str | None, alias: str = "champion",
                action: str = "gate", actor: str = "gate", trigger: str | None = None) -> str:
    """A run's gate outcome, inside the caller's transaction: the registration, and ``alias`` (the champion;
    a retrain's: the challenger) when the model passed. Returns the version.

    A retrain's model that passed becomes the challenger, unless it is the champion already (nothing moves)
    or there is no champion (then it becomes the champion: a service needs one). The audit row's reason
    starts with ``trigger`` when given."""
    version = register(con, tag, info, decision, run_id=run_id)
    if decision.get("promote"):
        reason = "; ".join(decision.get("reasons") or [])
        reason = f"{trigger}: {reason}" if trigger else reason
        if alias == "challenger":
            current = aliases(con).get("champion")
            if current == version:
                return version
            if current is None:
                alias = "champion"
        _promote(con, version, alias, reason, actor, action, run_id)
    return version


def rollback(con, alias: str = "champion", actor: str = "cli") -> tuple[str, str]:
    """Point ``alias`` back at the version it had before the current one was set by a gate or a promotion;
    rolling back again walks further back (rollback rows are never walked back through)."""
    current = aliases(con).get(alias)
    row = con.execute("SELECT from_version FROM alias_audit WHERE alias = ? AND to_version IS NOT DISTINCT FROM ? "
                      "AND coalesce(action, 'promote') <> 'rollback' "
                      "ORDER BY seq DESC LIMIT 1", [alias, current]).fetchone()
    if current is None or row is None or row[0] is None:
        raise RegistryError(f"Nothing to roll back: the {alias} ({current or 'none'}) has no earlier version "
                            "in the audit log.")
    set_alias(con, alias, row[0], f"rollback from {current}", actor, action="rollback")
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
    out = next(r for r in versions(con) if r["version"] == version)
    out["registrations"] = registrations(con, version)
    return out


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
        la, lb = flatten(left.get(section) or {}), flatten(right.get(section) or {})
        la = {k: v for k, v in la.items() if not k.startswith("feature_schema.")}
        lb = {k: v for k, v in lb.items() if not k.startswith("feature_schema.")}
        for key in sorted(set(la) | set(lb)):
            out.append((f"{section}.{key}", la.get(key), lb.get(key)))
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict's leaves under dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``): how model.json's
    sections are compared (``diff``) and copied as flat parameters (``export.mlflow``)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
