"""One run of the pipeline, as a transaction: all of it lands, or nothing but its run record does,
whatever stops it: an error, Ctrl-C, SIGTERM, SIGKILL, a power loss.

The order of a run:
1. take the project's run lock (a second run is refused, naming the first one's pid; the OS releases
   the lock of a process that died, so a dead run's lock is simply taken over);
2. finish or undo a run that was killed before (``journal``), saying so in one line;
3. fingerprint the tasks (``plan``) and, when nothing is stale, record an up-to-date run and stop, never
   importing IPython, pandas or scikit-learn;
4. write the journal, back up the products, take the warehouse's inventory (no copy of the warehouse:
   tasks only add content-addressed objects to it, and a rollback drops what was added);
5. run the stale tasks' notebooks (``notebooks``); reports render in the background into the run's scratch folder;
6. commit in one DuckDB transaction (the gate's registration and aliases, the run record), then save the
   fingerprints, move the reports into place and drop the journal;
   on failure or a signal, undo: the warehouse, the products, the registry and the reports are as they
   were, and the failed run's record says what happened.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .. import config
from ..errors import MlopsNbError, RunInterrupted, RunLockedError
from . import journal, products
from . import plan as planning
from . import records

LOCK_FILE = ".run.lock"


@dataclass
class Outcome:
    record: records.RunRecord
    stale: dict[str, str]
    reports: list[Path]
    error: MlopsNbError | None = None
    recovered: str | None = None
    undone: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    site: Path | None = None  # the reports site's index.html, when the run updated it


def crash_point(name: str) -> None:
    """Where the crash tests kill a run for real: SIGKILL, no cleanup, at a named instant."""
    if config.crash_at() == name:
        os.kill(os.getpid(), signal.SIGKILL)


_LOCK_FDS: set[int] = set()


def _drop_locks_in_child() -> None:
    """A forked child (whylogs profiles big frames in one) must not keep the run lock alive after the run
    itself died: it closes its copy of the lock's descriptor (the parent's keeps the lock)."""
    for fd in list(_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_locks_in_child)


@contextmanager
def run_lock(settings: config.Settings) -> Iterator[None]:
    """An exclusive, non-blocking lock on the project (flock): the OS releases it when the process that
    holds it ends, however it ends, so a dead run's lock is simply taken over."""
    path = settings.path("data_dir") / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text(encoding="utf-8").strip() or "unknown"
            raise RunLockedError(
                f"Another mlops-nb run is in progress in {settings.root} ({holder}). Wait for it to finish, "
                "or stop it: the lock is released as soon as that process ends.") from None
        _LOCK_FDS.add(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {records.now().isoformat(timespec='seconds')} UTC".encode())
        yield
    finally:
        _LOCK_FDS.discard(fd)
        os.close(fd)


GATE_ALIASES = ("champion", "challenger")


def run(settings: config.Settings, force: bool = False, target: str | None = None,
        progress=None, announce=None, trigger: str | None = None, gate_alias: str = "champion",
        only: bool = False) -> Outcome:
    """``announce(line)`` is told at once when a killed run had to be finished or undone first.

    ``target`` runs that task and what it needs; with ``only``, that task alone, against the products its
    upstream tasks already made: an orchestrator's step (``mlops-nb run --task NAME --only``). A missing or
    stale upstream is an ``UpstreamNotReady`` naming it, and nothing changes.

    ``trigger`` names what started the run in its record (None: `mlops-nb run`; a retrain says
    'retrain: ...'). ``gate_alias`` is the alias a model that passes the gate gets when the run commits:
    'champion' (a plain run), or 'challenger' (a retrain: the audit row's action and actor are 'retrain',
    its reason names the trigger)."""
    if gate_alias not in GATE_ALIASES:
        raise MlopsNbError(f"The 'gate_alias' of a run must be one of {GATE_ALIASES}; got {gate_alias!r} instead.")
    if only and target is None:
        raise MlopsNbError("The 'only' parameter of run needs a 'target' (the task to run alone); got none.")
    record = records.RunRecord(records.new_run_id(), records.now(), params=settings.as_dict(), trigger=trigger)
    _RECEIVED.clear()
    with run_lock(settings), _signals(_interrupt):
        recovered = recover(settings)
        if recovered and announce:
            announce(recovered)
        state = planning.read_state(settings)
        plan = planning.load_plan(settings, state=state)
        if target is not None and target not in plan.tasks:
            from ..errors import NotFoundError, did_you_mean
            raise NotFoundError(f"No task named {target!r}; the tasks are {plan.order()}."
                                f"{did_you_mean(target, plan.tasks)}")
        scope = [target] if only else _closure(plan, target) if target else plan.order()
        why = planning.stale_tasks(plan, state, settings.path("warehouse").exists())
        if only:
            _check_upstream(plan, target, why)
        stale = {t: why.get(t, "--force") for t in scope if t in why or force}
        record.git_commit, record.git_dirty = records.git_info(settings.root)
        record.versions = records.library_versions()
        if not stale:
            from .notebooks import TaskResult

            record.status = "up-to-date"
            record.tasks = [TaskResult(n, "skipped") for n in scope]
            _lineage(plan, record)
            record.ended_at = records.now()
            _save(settings, record)
            outcome = Outcome(record, {}, [], recovered=recovered)
            _update_site(settings, outcome)
            return outcome
        outcome = _build(settings, plan, state, record, stale, target, scope, progress, gate_alias)
        outcome.recovered = recovered
        _update_site(settings, outcome)
        return outcome


def _update_site(settings, outcome: Outcome) -> None:
    """The reports site lists the run, succeeded, up to date or failed (a derived view: it changes nothing a
    run undoes). A site that cannot be written is said, and leaves the run as it is; a stop signal meanwhile
    is ignored (the run is over: it must not read as rolled back)."""
    if not settings.pipeline.reports:
        return
    from . import site

    try:
        with _signals(signal.SIG_IGN):
            outcome.site = site.write(settings).index
    except (MlopsNbError, OSError) as e:
        outcome.notes.append(f"the reports site could not be updated (the run itself is as said above): {e}; "
                             "`mlops-nb report` writes it")


def recover_if_needed(settings: config.Settings) -> str | None:
    """For commands other than ``run``: finish or undo a killed run first (skipped while a run is live)."""
    if not journal.journal_path(settings).exists():
        return None
    try:
        with run_lock(settings):
            return recover(settings)
    except RunLockedError:
        return None


def recover(settings: config.Settings) -> str | None:
    """Under the run lock: finish a killed run that had committed, undo one that had not. One line."""
    j = journal.read(settings)
    if j is None:
        if journal.scratch_dir(settings).exists():
            shutil.rmtree(journal.scratch_dir(settings), ignore_errors=True)
        return None
    if j.phase == "preparing":
        if j.run_id != "unknown":
            from ..data import warehouse

            with warehouse.connect(write=True, settings=settings) as con:
                _save_failed(con, settings, _killed_record(j), "killed before it changed anything")
        journal.remove(settings)
        return f"Recovered: run {j.run_id} was stopped before it changed anything; its leftovers are removed."
    if _committed(settings, j.run_id):
        _finish(settings, j)
        return f"Recovered: run {j.run_id} was stopped after it committed; its state and reports are now in place."
    where = _where(j)
    undone = _undo(settings, j, f"killed while {where}; rolled back by the next command")
    return (f"Recovered: run {j.run_id} was killed while {where}; rolled back "
            f"({'; '.join(undone) if undone else 'nothing had changed'}).")


def _where(j: journal.Journal) -> str:
    running = [name for name, (event, _) in j.tasks.items() if event == "start"]
    if j.phase == "running" and running:
        return f"running task {running[-1]}"
    return {"running": "running", "committing": "committing", "restoring": "rolling back"}.get(j.phase, j.phase)


def _committed(settings, run_id: str) -> bool:
    from ..data import warehouse

    if not settings.path("warehouse").exists():
        return False
    with warehouse.connect(settings=settings) as con:
        if not warehouse.has_table(con, "runs"):
            return False
        row = con.execute("SELECT status FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return bool(row) and row[0] == "succeeded"


_RECEIVED: list[int] = []  # the stop signals this process got during its run


def _interrupt(signum, frame):
    _RECEIVED.append(signum)
    raise RunInterrupted(signum)


@contextmanager
def _signals(handler):
    """SIGINT and SIGTERM handled by ``handler`` in the block: ``_interrupt`` while a run holds the lock
    (they become RunInterrupted), SIG_IGN while it undoes or commits (a second Ctrl-C must not cut that
    short; a SIGKILL still can, and the journal covers it). Only the main thread can set handlers."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def _build(settings, plan, state, record, stale, target, scope, progress, gate_alias="champion") -> Outcome:
    from ..data import warehouse
    from . import notebooks

    products_dir = settings.path("products_dir")
    j = journal.Journal(record.run_id, os.getpid(), "preparing", products_dir.exists(),
                        started_at=record.started_at.isoformat(), params=record.params, trigger=record.trigger)
    shutil.rmtree(journal.scratch_dir(settings), ignore_errors=True)
    j.save(settings)
    crash_point("preparing")
    if products_dir.exists():
        shutil.copytree(products_dir, journal.backup_dir(settings), symlinks=True)
        journal.fsync_tree(journal.backup_dir(settings))
    with warehouse.connect(write=True, settings=settings) as con:
        j.warehouse_before = warehouse.inventory(con)
    renderer = _renderer(settings)
    j.children = [renderer.pid] if renderer is not None else []
    j.phase = "running"
    j.save(settings)
    crash_point("running")
    seen: dict[str, tuple[str, float]] = {}
    report = _rendering(renderer, plan, progress)

    def tracked(name: str, event: str, seconds: float) -> None:
        seen[name] = (event, seconds)
        j.tasks = dict(seen)
        j.save(settings)
        if report:
            report(name, event, seconds)
        if _RECEIVED:  # a stop signal that surfaced as the task's failure (DuckDB: "Query interrupted")
            raise RunInterrupted(_RECEIVED[-1])

    try:
        with config.override(settings, {config.ENV_RUN_ID: record.run_id}), _working_dir(settings.root):
            result = notebooks.execute(plan, scope, stale, settings.pipeline.executor,
                                       settings.pipeline.task_timeout, progress=tracked)
        record.tasks = [t for t in result.tasks if t.name in scope]
        if not result.ok:
            failed_reports = _keep_failed_notebook(settings, plan, result.failed_task, record.run_id)
            with _signals(signal.SIG_IGN):
                if renderer is not None:
                    renderer.cancel()
                undone = _undo(settings, j, str(result.error), record)
            return Outcome(record, stale, failed_reports, error=result.error, undone=undone)
        reports = renderer.finish(journal.ready_reports_dir(settings)) if renderer is not None else []
        crash_point("before-commit")
        with _signals(signal.SIG_IGN):
            built = [t.name for t in record.tasks if t.status == "ran"]
            j.state_after = planning.new_state(plan, state, built)
            journal.fsync_tree(products_dir)
            j.phase = "committing"
            j.save(settings)
            record.status = "succeeded"
            _lineage(plan, record)
            record.ended_at = records.now()
            _commit(settings, plan, record, gate_alias)
            crash_point("after-commit")
            moved = _finish(settings, j)
        if renderer is not None:
            from . import site

            site.keep_reports(settings, record)
        names = {p.name for p in reports}
        outcome = Outcome(record, stale, [p for p in moved if p.name in names])
        if settings.gc.after_run:
            outcome.notes.append(_collect_after(settings, plan))
        return outcome
    except BaseException as e:
        with _signals(signal.SIG_IGN):
            if renderer is not None:
                renderer.cancel()
            if record.status == "succeeded" and _committed(settings, record.run_id):
                _finish(settings, j)
                raise
            record.status = "running"
            record.tasks = _tasks_so_far(scope, seen)
            why = str(e) if isinstance(e, (MlopsNbError, RunInterrupted)) else f"{type(e).__name__}: {e}"
            undone = _undo(settings, j, why, record)
        if isinstance(e, RunInterrupted):
            e.undone = undone
        raise


def _collect_after(settings, plan) -> str:
    """gc.after_run: the run has landed; a collection that fails is said, and leaves the run as it is."""
    from . import gc

    try:
        report = gc.collect(settings, plan=plan)
    except MlopsNbError as e:
        return f"collection after the run failed (the run itself succeeded): {e}"
    if not report.items:
        return ""
    return f"collected {len(report.items)} item(s) nothing needs any more, {gc.human(report.freed)} (mlops-nb gc)"


@contextmanager
def _working_dir(folder: Path):
    """Tasks run with the project root as their folder: relative paths in parameters mean the same thing
    wherever `mlops-nb run` was started (and in kernels, which inherit the folder)."""
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _tasks_so_far(scope: list[str], seen: dict) -> list:
    """The task table of a run stopped half-way: what ran, the task it stopped in, what never started."""
    from .notebooks import TaskResult

    status = {"ran": "ran", "failed": "failed", "start": "failed"}
    return [TaskResult(n, status[seen[n][0]], seen[n][1]) if n in seen else TaskResult(n, "not-run")
            for n in scope]


def _commit(settings, plan, record, gate_alias: str = "champion") -> None:
    """The commit point: the gate's registration and alias changes, and the run record, in one transaction.
    A passing model becomes ``gate_alias``: the champion, or for a retrain the challenger."""
    from .. import registry
    from ..data import warehouse

    gate = plan.receipt("gate")
    with warehouse.connect(write=True, settings=settings) as con, warehouse.transaction(con):
        records.flush_pending(con, settings.path("data_dir"))
        if gate is not None and record.model_version is not None and _ran(record, gate[0]):
            decision = {k: v for k, v in gate[1].items() if k not in ("info", "tag", "version", products.RECEIPT_KEY)}
            if gate_alias == "champion":
                registry.record_gate(con, gate[1]["tag"], gate[1]["info"], decision, record.run_id)
            else:
                registry.record_gate(con, gate[1]["tag"], gate[1]["info"], decision, record.run_id,
                                     alias=gate_alias, action="retrain", actor="retrain", trigger=record.trigger)
                record.gate["alias"] = gate_alias
            record.gate["aliases"] = registry.aliases(con)
        records.insert(con, record)


def _ran(record, task_name: str) -> bool:
    return any(t.name == task_name and t.status == "ran" for t in record.tasks)


def _finish(settings, j: journal.Journal) -> list[Path]:
    """After the commit: the state file, the reports into place (kept in the run's folder of the reports site,
    and the latest report of each task at its old address: one file, hard-linked), the scratch folder and
    journal gone. Idempotent: each report is linked into the run's folder before it leaves the scratch
    folder."""
    if j.state_after is not None:
        products.write_json(planning.state_path(settings), j.state_after)
    records.clear_pending(settings.path("data_dir"))  # moved into the runs table by the commit
    crash_point("finishing")
    moved = []
    ready = journal.ready_reports_dir(settings)
    if ready.exists():
        from . import site

        target = settings.path("reports_dir")
        kept = site.run_reports_dir(settings, j.run_id)
        for f in sorted(ready.iterdir()):
            site.link(f, kept / f.name)
            os.replace(f, target / f.name)
            moved.append(target / f.name)
    journal.remove(settings)
    return moved


def _undo(settings, j: journal.Journal, why: str, record: records.RunRecord | None = None) -> list[str]:
    """Put the project back as it was before run ``j``; returns what was undone. Idempotent: a copy killed
    half-way is finished by the next one."""
    from .. import registry
    from ..data import warehouse

    j.phase = "restoring"
    j.save(settings)
    _stop_children(j.children)
    undone = []
    with warehouse.connect(write=True, settings=settings) as con:
        removed = warehouse.undo_since(con, j.warehouse_before) if j.warehouse_before else []
        if removed:
            undone.append("warehouse: removed " + ", ".join(removed))
        crash_point("restoring")
        stores = registry.remove_unregistered(con, settings)
        if stores:
            undone.append("model store: removed " + ", ".join(stores))
        products_dir = settings.path("products_dir")
        backup = journal.backup_dir(settings)
        if j.products_existed and backup.exists():
            shutil.rmtree(products_dir, ignore_errors=True)
            os.replace(backup, products_dir)
            undone.append(f"products: restored {products_dir}")
        elif not j.products_existed and products_dir.exists():
            shutil.rmtree(products_dir)
            undone.append(f"products: removed {products_dir}")
        _save_failed(con, settings, record or _killed_record(j), why)
    staged = journal.scratch_dir(settings)
    if staged.exists():
        undone.append("reports: dropped this run's")
    journal.remove(settings)
    return undone


def _killed_record(j: journal.Journal) -> records.RunRecord:
    """The record of a run that died without writing one, from what its journal says."""
    from datetime import datetime

    started = datetime.fromisoformat(j.started_at) if j.started_at else records.now()
    return records.RunRecord(j.run_id, started, params=j.params or {}, tasks=_tasks_so_far(list(j.tasks), j.tasks),
                             trigger=j.trigger)


def _save_failed(con, settings, record: records.RunRecord, why: str) -> None:
    """A failed run's record (once, whoever saves it), with the pending up-to-date ones moved in first."""
    from ..data import warehouse

    record.status, record.error, record.ended_at = "failed", why, records.now()
    with warehouse.transaction(con):
        records.flush_pending(con, settings.path("data_dir"))
        if not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [record.run_id]).fetchone():
            records.insert(con, record)
    records.clear_pending(settings.path("data_dir"))


def _stop_children(pids: list[int]) -> None:
    """End a killed run's report renderer, if it still runs (checked to be ours by its command line)."""
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"mlops_nb" in cmdline and pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _renderer(settings):
    """A background renderer of the run's reports, when reports are on."""
    if not settings.pipeline.reports:
        return None
    from .reports import Renderer

    return Renderer(journal.scratch_dir(settings))


def _rendering(renderer, plan, progress):
    """The progress callback, also handing each task's executed notebook to the renderer when it ends."""
    if renderer is None:
        return progress

    def report(name: str, event: str, seconds: float) -> None:
        if progress:
            progress(name, event, seconds)
        nb = plan.tasks[name].notebook
        if event == "ran" and nb is not None:
            renderer.submit(nb, name)

    return report


def _check_upstream(plan: planning.Plan, target: str, why: dict[str, str]) -> None:
    """``target`` may run alone: every task upstream of it is up to date (built with these settings, code and
    data, its products on disk as it wrote them)."""
    from ..errors import UpstreamNotReady

    behind = [(name, why[name]) for name in _closure(plan, target) if name != target and name in why]
    if behind:
        first = behind[0][0]
        raise UpstreamNotReady(
            f"Task {target!r} cannot run alone (--only): what it reads is not ready: "
            + "; ".join(f"task {name!r}: {reason}" for name, reason in behind)
            + f". Run the upstream first (`mlops-nb run --task {behind[-1][0]}`, which runs {first!r} and what "
            f"follows it), or run {target!r} with what it needs (`mlops-nb run --task {target}`, without --only).")


def _closure(plan: planning.Plan, target: str) -> list[str]:
    """``target`` and everything upstream of it, in plan order."""
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(plan.tasks[name].upstream)
    return [n for n in plan.order() if n in needed]


def _keep_failed_notebook(settings, plan, failed_task, run_id: str) -> list[Path]:
    """The failing task's executed notebook, rendered under reports/failed/ before products are restored, and
    kept in the run's folder of the reports site."""
    if not failed_task or not settings.pipeline.reports:
        return []
    nb = plan.tasks[failed_task].notebook
    if nb is None or not nb.exists():
        return []
    from . import reports, site

    try:
        out = reports.render(nb, settings.path("reports_dir") / site.FAILED_DIR / f"{failed_task}.html",
                             title=f"{failed_task} (failed)")
    except Exception:  # a broken partial notebook must not hide the task's own error
        return []
    try:
        site.link(out, site.run_reports_dir(settings, run_id) / out.name)
    except OSError:  # its page then says the report was not kept; the task's own error is what matters
        pass
    return [out]


def _lineage(plan: planning.Plan, record: records.RunRecord) -> None:
    """Snapshot, feature set, metrics and the gate's decision, from the current products, into the run record."""
    if (found := plan.receipt("snapshot")) is not None:
        record.snapshot_id = found[1].get("snapshot_id")
    if (found := plan.receipt("features")) is not None:
        store = found[1].get("feature_store") or {}
        record.features = {"feature_set_id": found[1].get("feature_set_id"), "snapshot_id": found[1].get("snapshot_id"),
                           **{k: store.get(k) for k in ("digest", "views", "lead", "pushed_events_sha256", "files")}}
    if (found := plan.receipt("metrics")) is not None:
        record.metrics = found[1].get("test", found[1])
    if (found := plan.receipt("gate")) is not None:
        decision = found[1]
        record.model_version = decision["version"]
        record.gate = {"promote": decision.get("promote"), "reasons": decision.get("reasons"),
                       "aliases": decision.get("aliases"), "task": found[0]}


def _save(settings: config.Settings, record: records.RunRecord) -> None:
    """An up-to-date run: recorded beside the warehouse, moved into it by the next write (no DuckDB here)."""
    records.append_pending(settings.path("data_dir"), record)
