"""The only module that imports Ploomber: build the DAG from a rendered spec, run it, report per task.

Ploomber is unmaintained upstream: everything it does for us goes through ``build_dag`` and ``execute``,
so it can be replaced without touching the notebooks or pipeline.yaml. Heavy imports happen inside the
functions (``import ploomber`` takes seconds).
"""
from __future__ import annotations

import contextlib
import gc
import json
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlopsNbError, NotFoundError, PipelineError, did_you_mean


def _import_ploomber():
    """Import Ploomber without the 1.1 s that jsonschema spends compiling rfc3987_syntax's grammar, an
    optional dependency (IRI format checks) that nothing here uses; jsonschema skips it when absent."""
    import sys

    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)
    import ploomber.executors  # noqa: F401
    import ploomber.spec  # noqa: F401


@dataclass
class TaskResult:
    name: str
    status: str          # ran | skipped | failed | not-run
    seconds: float = 0.0


@dataclass
class BuildResult:
    tasks: list[TaskResult]
    error: MlopsNbError | None = None
    failed_task: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def build_dag(plan, tokens: dict[str, str], executor: str = "engine", task_timeout: int = 3600):
    """A Ploomber DAG for an mlops-nb plan, notebooks in-process (ploomber-engine) or in kernels (papermill).
    Each task gets our decision as a parameter (``plan.token``): Ploomber re-runs exactly the tasks whose
    token changed, and what is downstream of them."""
    _import_ploomber()
    from ploomber.spec import DAGSpec

    from .plan import TOKEN_PARAM

    tasks = []
    for task in plan.tasks.values():
        entry = dict(task.spec, name=task.name)
        entry["params"] = {**(entry.get("params") or {}), TOKEN_PARAM: tokens[task.name]}
        if "executor" not in entry:
            if executor == "engine":
                entry["executor"] = "ploomber-engine"
                entry["executor_params"] = {"progress_bar": False}
            else:
                entry["executor"] = "papermill"
                entry["executor_params"] = {"execution_timeout": task_timeout, "progress_bar": False}
        tasks.append(entry)
    data = dict(plan.data, tasks=tasks)
    with _quiet():
        dag = DAGSpec(data, parent_path=str(plan.root)).to_dag()
    return dag


def load_plain_dag(spec_path: Path, env: dict | None = None):
    """A plain Ploomber project's own pipeline.yaml, loaded as Ploomber would (its env.yaml included)."""
    _import_ploomber()
    from ploomber.spec import DAGSpec

    try:
        with _quiet():
            return DAGSpec(str(spec_path), env=env or None).to_dag()
    except Exception as e:
        raise PipelineError(f"Cannot load the Ploomber spec {spec_path}: {_first_line(e)}") from None


def execute(dag, force: bool = False, target: str | None = None, progress=None,
            task_timeout: int | None = None) -> BuildResult:
    """Build the DAG (or ``target`` and what it needs); never raises for a failing task, reports it.
    ``progress(name, event, seconds)`` is told when each task starts ('start') and ends ('ran', 'failed').
    ``task_timeout`` (seconds) ends a task running in this process that takes longer (papermill kernels
    have their own cell timeout)."""
    from ploomber.executors import Serial

    names = list(dag)
    if target is not None and target not in names:
        raise NotFoundError(f"No task named {target!r}; the tasks are {names}.{did_you_mean(target, names)}")
    dag.executor = Serial(build_in_subprocess=False, catch_exceptions=True, catch_warnings=False)
    seconds: dict[str, float] = {}
    errors: dict[str, BaseException] = {}
    for name in names:
        _time_task(dag[name], seconds, errors, progress, task_timeout)

    if target is not None:  # the target and its upstream only (build_partially would build a deep copy)
        keep = _upstream_closure(dag, target)
        for name in [n for n in names if n not in keep]:
            dag.pop(name)
        names = [n for n in names if n in keep]
    failure = None
    # What is alive now (thousands of imported modules) leaves the collector's sight for the build: full
    # collections during the tasks stop re-scanning it (0.3-0.5 s a run); the build's end gives it back.
    gc.freeze()
    with _quiet(everything=False), _released_shells():
        try:
            dag.build(force=force, show_progress=False)
        except Exception as e:  # Ploomber's DAGBuildError, DAGRenderError, ...
            failure = e
        finally:
            gc.unfreeze()

    results = [TaskResult(n, *_status(dag[n], n, seconds)) for n in names]
    if failure is None:
        return BuildResult(results)
    failed = next((n for n in names if n in errors), None)
    return BuildResult(results, error=_explain(failed, errors.get(failed), failure, dag), failed_task=failed)


@contextlib.contextmanager
def _released_shells():
    """ploomber-engine runs each notebook in a new IPython shell, and IPython registers an atexit hook per
    shell: every shell (its output cache, its history) lived until exit, which then paid a full
    gc.collect per shell (1.3 s for six). Each shell is let go when the build ends instead."""
    import atexit

    from ploomber_engine.ipython import PloomberShell

    shells = []
    original = PloomberShell.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        shells.append(self)

    PloomberShell.__init__ = init
    try:
        yield
    finally:
        PloomberShell.__init__ = original
        for shell in shells:
            atexit.unregister(shell.atexit_operations)
            shell.user_ns.clear()
            if shell.history_manager is not None:
                shell.history_manager.output_hist.clear()
                shell.history_manager.end_session()
                shell.history_manager.close()
                shell.history_manager = None


def _upstream_closure(dag, target: str) -> set[str]:
    keep, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(dag[name].upstream)
    return keep


def _time_task(task, seconds: dict, errors: dict, progress, timeout: int | None = None) -> None:
    """Wrap a task's build to time it, bound it, report it and keep its exception (Ploomber only keeps their
    text)."""
    original = task._build

    def timed(*args, **kwargs):
        started = time.perf_counter()
        if progress:
            progress(task.name, "start", 0.0)
        try:
            with _time_limit(task.name, timeout):
                result = original(*args, **kwargs)
        except BaseException as e:
            errors[task.name] = e
            seconds[task.name] = time.perf_counter() - started
            if progress:
                progress(task.name, "failed", seconds[task.name])
            raise
        seconds[task.name] = time.perf_counter() - started
        if progress:
            progress(task.name, "ran", seconds[task.name])
        return result

    task._build = timed


@contextlib.contextmanager
def _time_limit(name: str, seconds: int | None):
    """Raise TaskTimeoutError in this (main) thread when the block runs longer than ``seconds``. A signal
    interrupts Python code and sleeps; a long call into C code ends when it returns to Python. The timer
    fires again every second until the block ends, should something in the task catch the error."""
    import signal
    import threading

    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return
    from ..errors import TaskTimeoutError

    closing = []

    def expire(signum, frame):
        if not closing:
            raise TaskTimeoutError(f"Task {name!r} ran longer than pipeline.task_timeout = {seconds} s and was "
                                   "stopped. Make it faster, or raise the limit (-p pipeline.task_timeout=SECONDS).")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    finally:
        closing.append(True)
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _status(task, name: str, seconds: dict) -> tuple[str, float]:
    status = getattr(task.exec_status, "value", str(task.exec_status))
    if status == "executed":
        return "ran", seconds.get(name, 0.0)
    if status == "errored":
        return "failed", seconds.get(name, 0.0)
    if status == "skipped":
        return "skipped", 0.0
    return "not-run", 0.0


def _explain(task_name, exc, failure, dag) -> MlopsNbError:
    """The failing task, the notebook cell and the cause, from Ploomber's chain of exceptions."""
    if task_name is None:  # failed before any task ran: rendering
        return PipelineError(f"The pipeline could not be rendered: {_clean(str(failure))}")
    chain = []
    e = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    ours = next((c for c in chain if isinstance(c, MlopsNbError)), None) or _from_kernel(chain)
    cell = _failed_cell(dag[task_name]) or _cell_of(chain)
    source = getattr(dag[task_name], "source", None)
    where = f"Task {task_name!r}"
    if source is not None and getattr(source, "loc", None):
        where += f" ({Path(str(source.loc)).name})"
    if cell:
        where += f", {cell}"
    if ours is not None:  # keep its type (and exit code), prefix where it happened
        err = type(ours).__new__(type(ours))
        err.__dict__.update(ours.__dict__)
        err.args = (f"{where} failed:\n{ours}",)
        return err
    root = chain[-1] if chain else failure
    remote = next((c for c in chain if hasattr(c, "ename")), None)  # papermill: raised in a kernel
    if remote is not None:
        return PipelineError(f"{where} failed: {remote.ename}: {_first_line(remote.evalue)}")
    return PipelineError(f"{where} failed: {type(root).__name__}: {_first_line(root)}")


def _from_kernel(chain) -> MlopsNbError | None:
    """One of our errors raised in a papermill kernel arrives as its class name and message only."""
    from .. import errors

    remote = next((c for c in chain if hasattr(c, "ename") and hasattr(c, "evalue")), None)
    cls = getattr(errors, getattr(remote, "ename", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, MlopsNbError)):
        return None
    err = cls.__new__(cls)
    err.args = (_clean(remote.evalue),)
    return err


def _cell_of(chain) -> str:
    for c in chain:
        index = getattr(c, "cell_index", None)  # papermill's PapermillExecutionError
        if index is not None:
            return f"cell {index + 1}"
        m = re.search(r"[Cc]ell (?:#)?(\d+)", str(c).split("\n", 3)[0] if str(c) else "")
        if m:
            return f"cell {m.group(1)}"
    return ""


def _failed_cell(task) -> str:
    """The cell that raised, read from the partially executed notebook the task left behind."""
    try:
        products = task.product.to_json_serializable()
        nb_path = next((p for p in products.values() if str(p).endswith(".ipynb")), None) \
            if isinstance(products, dict) else products
        cells = json.loads(Path(nb_path).read_text(encoding="utf-8"))["cells"]
    except Exception:
        return ""
    code = [c for c in cells if c.get("cell_type") == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for i, c in enumerate(code, start=1):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            src = "".join(c.get("source", "")).strip().splitlines()
            last = src[-1].strip() if src else ""
            return f"code cell {i} (ending `{last[:80]}`)"
    return ""


def _first_line(e) -> str:
    text = _clean(str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _clean(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@contextlib.contextmanager
def _quiet(everything: bool = True):
    """Ploomber warns about parameters a notebook does not declare (ours, code_hash and source_hash, are on
    purpose), and about its own deprecations while loading a spec. Notebooks' own warnings stay visible."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not used in the task's source code.*")
        warnings.filterwarnings("ignore", message=".*parameters are not used.*")
        if everything:
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def render_table(results: list[TaskResult]) -> str:
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'task':<{width}}  {'status':<8}  {'seconds':>8}", f"{'-' * width}  {'-' * 8}  {'-' * 8}"]
    for r in results:
        secs = f"{r.seconds:8.1f}" if r.status in ("ran", "failed") else f"{'':>8}"
        lines.append(f"{r.name:<{width}}  {r.status:<8}  {secs}")
    return "\n".join(lines)

