"""Run records and lineage: who ran what, on which code, data and parameters, with what result."""
from __future__ import annotations

import functools
import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

LINEAGE_PACKAGES = ("mlops-nb", "duckdb", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "ploomber",
                    "ploomber-engine", "papermill", "jupytext", "nbdev", "whylogs", "bentoml")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def git_info(root: Path) -> tuple[str | None, bool | None]:
    """The commit checked out at ``root`` and whether the tree has uncommitted changes (None: no git)."""
    from .. import config

    env = config.child_environment({"GIT_OPTIONAL_LOCKS": "0"})
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, env=env)
        if commit.returncode != 0:
            return None, None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10, env=env)
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def installed_versions(names) -> dict[str, str | None]:
    """Versions of installed distributions, read from the names of their .dist-info folders: one listing
    of each folder on sys.path instead of a metadata scan a package (the no-op run pays for this)."""
    found = _dist_infos()
    return {name: found.get(_normal(name)) for name in names}


def _normal(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


@functools.lru_cache(maxsize=1)
def _dist_infos() -> dict[str, str]:
    import sys

    out: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for n in names:
            if n.endswith(".dist-info") and "-" in n:
                dist, _, version = n[:-len(".dist-info")].partition("-")
                out.setdefault(_normal(dist), version)
    return out


def library_versions() -> dict[str, str]:
    import platform

    out = {k: v for k, v in installed_versions(LINEAGE_PACKAGES).items() if v is not None}
    out["python"] = platform.python_version()
    return out


def lineage(root: Path) -> dict:
    """What an artifact records about the code that made it."""
    commit, dirty = git_info(root)
    return {"git_commit": commit, "git_dirty": dirty, "versions": library_versions()}


@dataclass
class RunRecord:
    run_id: str
    started_at: datetime
    params: dict
    status: str = "running"
    ended_at: datetime | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    snapshot_id: str | None = None
    versions: dict = field(default_factory=dict)
    metrics: dict | None = None
    model_version: str | None = None
    gate: dict | None = None
    error: str | None = None
    tasks: list = field(default_factory=list)   # pipeline.TaskResult
    trigger: str | None = None  # what started the run: None for `mlops-nb run`; 'retrain: ...' for a retrain
    features: dict | None = None  # the feature set's point-in-time join: its id, definitions' digest, views,
                                  # lead and pushed events' sha256 (None: no feature store)


def insert(con, rec: RunRecord) -> None:
    """The run record and its tasks, inside the caller's transaction."""
    con.execute("INSERT INTO runs (run_id, started_at, ended_at, status, git_commit, git_dirty, params, snapshot_id, "
                "versions, metrics, model_version, gate, error, trigger, features) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        rec.run_id, rec.started_at, rec.ended_at, rec.status, rec.git_commit, rec.git_dirty,
        json.dumps(rec.params, sort_keys=True), rec.snapshot_id, json.dumps(rec.versions, sort_keys=True),
        json.dumps(rec.metrics, sort_keys=True) if rec.metrics is not None else None, rec.model_version,
        json.dumps(rec.gate, sort_keys=True, default=str) if rec.gate is not None else None, rec.error,
        rec.trigger, json.dumps(rec.features, sort_keys=True) if rec.features is not None else None])
    for t in rec.tasks:
        con.execute("INSERT INTO run_tasks VALUES (?, ?, ?, ?)",
                    [rec.run_id, t.name, t.status, round(t.seconds, 3)])


PENDING_FILE = ".mlops-nb-pending-runs.jsonl"


def append_pending(data_dir: Path, rec: RunRecord) -> None:
    """An up-to-date run's record, kept beside the warehouse until the next write to it (``flush_pending``):
    the no-op run then never imports DuckDB. A lost line loses the record of a run that changed nothing."""
    row = {**rec.__dict__, "started_at": rec.started_at.isoformat(),
           "ended_at": rec.ended_at.isoformat() if rec.ended_at else None,
           "tasks": [t.__dict__ for t in rec.tasks]}
    with open(Path(data_dir) / PENDING_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, sort_keys=True, default=str) + "\n")


def pending(data_dir: Path) -> list[RunRecord]:
    from types import SimpleNamespace

    try:
        lines = (Path(data_dir) / PENDING_FILE).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        row["started_at"] = datetime.fromisoformat(row["started_at"])
        row["ended_at"] = datetime.fromisoformat(row["ended_at"]) if row["ended_at"] else None
        row["tasks"] = [SimpleNamespace(**t) for t in row["tasks"]]
        out.append(RunRecord(**row))
    return out


def flush_pending(con, data_dir: Path) -> None:
    """Move the pending up-to-date records into the runs table (inside the caller's transaction; a record
    already there is skipped, so a flush cut short and repeated adds nothing twice)."""
    for rec in pending(data_dir):
        if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [rec.run_id]).fetchone():
            insert(con, rec)


def clear_pending(data_dir: Path) -> None:
    (Path(data_dir) / PENDING_FILE).unlink(missing_ok=True)


def list_runs(con, limit: int = 20, data_dir: Path | None = None) -> list[dict]:
    from ..data.warehouse import has_table, records

    if not has_table(con, "runs"):
        return []
    runs = records(con, "SELECT * FROM runs ORDER BY started_at DESC, run_id DESC LIMIT ?", [limit])
    tasks = records(con, "SELECT * FROM run_tasks WHERE run_id IN (SELECT run_id FROM runs ORDER BY "
                         "started_at DESC, run_id DESC LIMIT ?) ORDER BY rowid", [limit])
    by_run: dict[str, list] = {}
    for t in tasks:
        by_run.setdefault(t.pop("run_id"), []).append(t)
    for r in runs:
        r["tasks"] = by_run.get(r["run_id"], [])
        r.setdefault("trigger", None)  # a warehouse not yet migrated (read-only) has no trigger column
        r.setdefault("features", None)
        for k in ("started_at", "ended_at"):
            r[k] = r[k].isoformat() if r[k] else None
    if data_dir is not None:  # up-to-date runs not yet moved into the table
        known = {r["run_id"] for r in runs}
        for rec in pending(data_dir):
            if rec.run_id not in known:
                runs.append(_as_row(rec))
        runs.sort(key=lambda r: (r["started_at"], r["run_id"]), reverse=True)
    return runs[:limit]


def pending_rows(data_dir: Path) -> list[dict]:
    """The pending up-to-date runs shaped as list_runs' rows (the reports site reads them without DuckDB)."""
    return [_as_row(rec) for rec in pending(data_dir)]


def _as_row(rec: RunRecord) -> dict:
    """A pending record shaped as list_runs' rows."""
    row = {k: v for k, v in rec.__dict__.items() if k != "tasks"}
    row["started_at"] = rec.started_at.isoformat()
    row["ended_at"] = rec.ended_at.isoformat() if rec.ended_at else None
    row["tasks"] = [{"task": t.name, "status": t.status, "seconds": t.seconds} for t in rec.tasks]
    return row
