"""The only module that imports Ploomber: plain Ploomber projects (a pipeline.yaml and no settings.ini),
loaded and built by Ploomber itself, reported per task like our runs.

An mlops-nb project's run does not come here (``plan`` and ``notebooks`` run it, without Ploomber's
import). Ploomber is unmaintained upstream: everything it does for us goes through ``load_plain_dag`` and
``execute``. Heavy imports happen inside the functions (``import ploomber`` takes seconds).
"""
from __future__ import annotations

import contextlib
import gc
import json
import time
import warnings
from pathlib import Path

from ..errors import MlopsNbError, NotFoundError, PipelineError, did_you_mean
from .notebooks import (INJECTED_TAG, BuildResult, TaskResult, _time_limit, clean, explain, first_line,
                        import_nbformat, quiet_kernel_teardown)


def _import_ploomber():
    """Import Ploomber (its nbformat without the slow optional grammar: ``notebooks.import_nbformat``)."""
    import_nbformat()
    import ploomber.executors  # noqa: F401
    import ploomber.spec  # noqa: F401


def load_plain_dag(spec_path: Path, env: dict | None = None):
    """A plain Ploomber project's own pipeline.yaml, loaded as Ploomber would (its env.yaml included)."""
    _import_ploomber()
    from ploomber.spec import DAGSpec

    try:
        with _quiet():
            return DAGSpec(str(spec_path), env=env or None).to_dag()
    except Exception as e:
        raise PipelineError(f"Cannot load the Ploomber spec {spec_path}: {first_line(e)}") from None


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
    with _quiet(everything=False), _released_shells(), quiet_kernel_teardown():
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
        return PipelineError(f"The pipeline could not be rendered: {clean(str(failure))}")
    where = f"Task {task_name!r}"
    source = getattr(dag[task_name], "source", None)
    if source is not None and getattr(source, "loc", None):
        where += f" ({Path(str(source.loc)).name})"
    cell = _failed_cell(dag[task_name])
    if cell:
        where += f", {cell}"
    return explain(where, exc if exc is not None else failure)


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
            and INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    for i, c in enumerate(code, start=1):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            src = "".join(c.get("source", "")).strip().splitlines()
            last = src[-1].strip() if src else ""
            return f"code cell {i} (ending `{last[:80]}`)"
    return ""


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
