"""Run records and lineage: who ran what, on which code, data and parameters, with what result."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

LINEAGE_PACKAGES = ("mlops-nb", "duckdb", "numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "ploomber",
                    "ploomber-engine", "papermill", "jupytext", "nbdev", "whylogs", "bentoml")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def git_info(root: Path) -> tuple[str | None, bool | None]:
    """The commit checked out at ``root`` and whether the tree has uncommitted changes (None: no git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
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


def library_versions() -> dict[str, str]:
    out = {}
    for name in LINEAGE_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    import platform

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


def save(con, rec: RunRecord) -> None:
    from ..data.warehouse import transaction

    with transaction(con):
        insert(con, rec)


def insert(con, rec: RunRecord) -> None:
    """The run record and its tasks, inside the caller's transaction."""
    con.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [
        rec.run_id, rec.started_at, rec.ended_at, rec.status, rec.git_commit, rec.git_dirty,
        json.dumps(rec.params, sort_keys=True), rec.snapshot_id, json.dumps(rec.versions, sort_keys=True),
        json.dumps(rec.metrics, sort_keys=True) if rec.metrics is not None else None, rec.model_version,
        json.dumps(rec.gate, sort_keys=True, default=str) if rec.gate is not None else None, rec.error])
    for t in rec.tasks:
        con.execute("INSERT INTO run_tasks VALUES (?, ?, ?, ?)",
                    [rec.run_id, t.name, t.status, round(t.seconds, 3)])


def list_runs(con, limit: int = 20) -> list[dict]:
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
        for k in ("started_at", "ended_at"):
            r[k] = r[k].isoformat() if r[k] else None
    return runs
