"""Exports: the project as what other engines read (Airflow, Kubeflow Pipelines, Kubernetes, CI, MLflow), made
from the rendered plan, so that there is no second definition of the pipeline to keep in sync.

Every orchestrator runs a task as one step, ``mlops-nb run --task NAME --only`` (``Step.command``): that task
alone, against the products its upstream tasks made, committing its own products and run record; the steps
share the project's ``data/`` (a shared volume) and its run lock, so one writes at a time. An exporter writes
its files with ``write_files`` (all of them or none) and checks nothing by string matching: its tests use the
engine's own tooling, from the exporters' environments (``tools``).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import ExportError, SettingsError


@dataclass(frozen=True)
class Step:
    """A task of the plan as an orchestrator sees it: its name and the tasks it waits for."""
    name: str
    upstream: tuple[str, ...]

    def command(self, params: dict[str, str] | None = None, program: str = "mlops-nb") -> list[str]:
        """The step's command: the task alone (``--only``), with the run's ``-p`` overrides."""
        out = [program, "run", "--task", self.name, "--only"]
        for key, value in (params or {}).items():
            out += ["-p", f"{key}={value}"]
        return out


def steps(settings: config.Settings) -> list[Step]:
    """The plan's tasks in dependency order, each with its upstream tasks (pipeline.yaml rendered with
    ``settings``, as a run renders it)."""
    from ..run import plan as planning

    plan = planning.load_plan(settings)
    return [Step(t.name, tuple(t.upstream)) for t in plan.tasks.values()]


def overrides(settings: config.Settings, params: dict | None, command: str) -> tuple[config.Settings, dict[str, str]]:
    """The settings with the ``-p`` overrides of ``mlops-nb export COMMAND``, and the overrides by their full
    'section.key' names, sorted: checked as a run checks them, so that a bad one fails here, not in the engine."""
    try:
        named = {"{}.{}".format(*config.split_key(key)): config.to_raw(value) for key, value in (params or {}).items()}
        return (settings.replace(named) if named else settings), dict(sorted(named.items()))
    except SettingsError as e:
        raise ExportError(f"{e} Each -p of `mlops-nb export {command}` is a setting every task runs with, as with "
                          "`mlops-nb run -p`.") from None


def write_files(out: Path, files: dict[str, str | bytes]) -> list[Path]:
    """Write ``files`` (path relative to ``out`` -> text or bytes) under ``out``, all or none: each is written
    into a temporary folder beside ``out`` first, then moved into place (a failure before the moves leaves
    ``out`` as it was). Returns the paths written."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".mlops-nb-export-", dir=out))
    except OSError as e:
        raise ExportError(f"Cannot write the export into {out}: {e.strerror or e}. Choose a folder you can write "
                          "to with --out.") from None
    try:
        for rel, content in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content, encoding="utf-8")
        written = []
        for rel in files:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
            written.append(target)
        return written
    except OSError as e:
        raise ExportError(f"Cannot write the export into {out}: {e.strerror or e}. Nothing was written; choose a "
                          "folder you can write to with --out.") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
