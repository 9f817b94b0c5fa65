"""One run of the pipeline, as a transaction: all of it lands, or nothing but its run record does.

The order of a run:
1. take the project's run lock (a second run is refused, naming the first one's pid);
2. fingerprint the tasks (``plan``) and, when nothing is stale, record an up-to-date run and stop, never
   importing Ploomber, pandas or scikit-learn;
3. copy the warehouse to a staging file and back up the products folder;
4. build with Ploomber (``dag``), notebooks writing to the staging warehouse;
5. on success, move the staging file over the warehouse, save the fingerprints, render reports;
   on failure, drop the staging file and restore the products: the warehouse, the products and the
   reports are as they were;
6. record the run (status, tasks, lineage, metrics) in the warehouse.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import config
from . import plan as spec
from . import products
from . import records as runs
from ..errors import MlopsNbError, RunLockedError

LOCK_FILE = ".run.lock"


@dataclass
class Outcome:
    record: runs.RunRecord
    stale: list[str]
    reports: list[Path]
    error: MlopsNbError | None = None


@contextmanager
def run_lock(settings: config.Settings) -> Iterator[None]:
    """An exclusive, non-blocking lock on the project; released by the OS if the process dies."""
    path = settings.path("data_dir") / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text(encoding="utf-8").strip() or "unknown"
            raise RunLockedError(
                f"Another mlops-nb run is in progress in {settings.root} ({holder}). Wait for it to finish; "
                f"if no run is going on, the lock {path} is stale: delete it.") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {runs.now().isoformat(timespec='seconds')} UTC".encode())
        yield
    finally:
        os.close(fd)


def run(settings: config.Settings, force: bool = False, target: str | None = None,
        progress=None) -> Outcome:
    record = runs.RunRecord(runs.new_run_id(), runs.now(), params=settings.as_dict())
    with run_lock(settings):
        plan = spec.load_plan(settings)
        if target is not None and target not in plan.tasks:
            from ..errors import NotFoundError, did_you_mean
            raise NotFoundError(f"No task named {target!r}; the tasks are {plan.order()}."
                                f"{did_you_mean(target, plan.tasks)}")
        scope = _closure(plan, target) if target else plan.order()
        stale = [t for t in spec.stale_tasks(plan, spec.read_state(settings)) if t in scope]
        record.git_commit, record.git_dirty = runs.git_info(settings.root)
        record.versions = runs.library_versions()
        if not stale and not force:
            from .dag import TaskResult

            record.status = "up-to-date"
            record.tasks = [TaskResult(n, "skipped") for n in scope]
            _lineage(plan, record)
            record.ended_at = runs.now()
            _save(settings, record)
            return Outcome(record, [], [])
        return _build(settings, plan, record, stale, force, target, scope, progress)


def _build(settings, plan, record, stale, force, target, scope, progress) -> Outcome:
    from . import dag as pipeline

    warehouse = settings.path("warehouse")
    staging = warehouse.with_name(warehouse.name + ".staging")
    products_dir = settings.path("products_dir")
    for leftover in (staging, staging.with_name(staging.name + ".wal")):
        leftover.unlink(missing_ok=True)
    if warehouse.exists():
        shutil.copy2(warehouse, staging)
    staged = settings.replace({"paths.warehouse": str(staging)})
    with tempfile.TemporaryDirectory(prefix="mlops-nb-backup-", dir=settings.path("data_dir")) as backup:
        backup_dir = Path(backup) / "products"
        if products_dir.exists():
            shutil.copytree(products_dir, backup_dir, symlinks=True)
        renderer = _renderer(settings)
        try:
            with config.override(staged, {config.ENV_RUN_ID: record.run_id}):
                dag = pipeline.build_dag(plan, settings.pipeline.executor, settings.pipeline.task_timeout)
                result = pipeline.execute(dag, force=force, target=target,
                                          progress=_rendering(renderer, plan, progress))
        except BaseException:
            if renderer is not None:
                renderer.cancel()
            _restore(products_dir, backup_dir, staging)
            raise
        record.tasks = [t for t in result.tasks if t.name in scope]
        if not result.ok:
            if renderer is not None:
                renderer.cancel()
            failed_reports = _keep_failed_notebook(settings, plan, result.failed_task)
            _restore(products_dir, backup_dir, staging)
            record.status, record.error = "failed", str(result.error)
            record.ended_at = runs.now()
            _save(settings, record)
            return Outcome(record, stale, failed_reports, error=result.error)
    os.replace(staging, warehouse)
    state = spec.read_state(settings)
    state.setdefault("tasks", {}).update({n: plan.tasks[n].fingerprint for n in scope})
    products.write_json(spec.state_path(settings), state)
    record.status = "succeeded"
    _lineage(plan, record)
    reports = renderer.finish(settings.path("reports_dir")) if renderer is not None else []
    record.ended_at = runs.now()
    _save(settings, record)
    return Outcome(record, stale, reports)


def _renderer(settings):
    """A background renderer of the run's reports, when reports are on."""
    if not settings.pipeline.reports:
        return None
    from .reports import Renderer

    return Renderer(settings.path("data_dir"))


def _rendering(renderer, plan, progress):
    """The progress callback, also handing each task's executed notebook to the renderer when it ends."""
    if renderer is None:
        return progress

    def report(name: str, event: str, seconds: float) -> None:
        if progress:
            progress(name, event, seconds)
        nb = plan.tasks[name].products.get("nb")
        if event == "ran" and nb is not None and nb.suffix == ".ipynb":
            renderer.submit(nb, name)

    return report


def _closure(plan: spec.Plan, target: str) -> list[str]:
    """``target`` and everything upstream of it, in plan order."""
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(plan.tasks[name].upstream)
    return [n for n in plan.order() if n in needed]


def _restore(products_dir: Path, backup_dir: Path, staging: Path) -> None:
    for f in (staging, staging.with_name(staging.name + ".wal")):
        f.unlink(missing_ok=True)
    if products_dir.exists():
        shutil.rmtree(products_dir)
    if backup_dir.exists():
        shutil.copytree(backup_dir, products_dir, symlinks=True)


def _keep_failed_notebook(settings, plan, failed_task) -> list[Path]:
    """The failing task's executed notebook, rendered under reports/failed/ before products are restored."""
    if not failed_task or not settings.pipeline.reports:
        return []
    nb = plan.tasks[failed_task].products.get("nb")
    if nb is None or not nb.exists() or nb.suffix != ".ipynb":
        return []
    from . import reports as reporting

    try:
        return [reporting.render(nb, settings.path("reports_dir") / "failed" / f"{failed_task}.html",
                                 title=f"{failed_task} (failed)")]
    except Exception:  # a broken partial notebook must not hide the task's own error
        return []


def _lineage(plan: spec.Plan, record: runs.RunRecord) -> None:
    """Snapshot, metrics and the gate's decision, from the current products, into the run record."""
    for task in plan.tasks.values():
        for key, path in task.products.items():
            if path.suffix != ".json" or not path.exists():
                continue
            data = products.read_json(path)
            if key == "snapshot":
                record.snapshot_id = data.get("snapshot_id")
            elif key == "metrics":
                record.metrics = data.get("test", data)
            elif key == "decision":
                record.model_version = data.get("version")
                record.gate = {"promote": data.get("promote"), "reasons": data.get("reasons"),
                               "aliases": data.get("aliases")}


def _save(settings: config.Settings, record: runs.RunRecord) -> None:
    from ..data import warehouse

    with warehouse.connect(write=True, settings=settings) as con:
        runs.save(con, record)
