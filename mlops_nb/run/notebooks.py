"""The run's executor: each task to build, its notebook with the run's values injected, executed in this
process (IPython) or in a Jupyter kernel (papermill), saved as the task's executed notebook.

Values are passed as Ploomber passes them: a cell tagged ``injected-parameters`` right after the cell
tagged ``parameters``, with the task's params, ``upstream`` ({task: its products}) and ``product``. So
pipeline.yaml stays a Ploomber spec (``ploomber build`` runs it too), while a run does not import
Ploomber: its import alone took 1.2-1.5 s, more than a tenth of a full run. ``plan`` decides what runs;
plain Ploomber projects (no settings.ini) still go through ``dag``.

In process, every notebook gets a fresh IPython shell (a fresh namespace, rich outputs, magics), as
ploomber-engine gives it, without its import of pyplot for notebooks that draw nothing: matplotlib's
inline backend is turned on when a notebook imports pyplot, and a ``matplotlib.figure.Figure`` a cell
returns is shown as a PNG either way.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import MlopsNbError, PipelineError
from .plan import INJECTED_TAG

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


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


def execute(plan, scope: list[str], stale, executor: str = "engine", task_timeout: int | None = None,
            progress=None) -> BuildResult:
    """Run the tasks of ``scope`` that are in ``stale``, in plan order; never raises for a failing task,
    reports it (what comes after it does not run). ``progress(name, event, seconds)`` is told when each
    task starts ('start') and ends ('ran', 'failed'). A stop signal (RunInterrupted) goes through."""
    import gc

    # What is alive now (thousands of imported modules) leaves the collector's sight while the tasks run:
    # full collections during the tasks stop re-scanning it (0.3-0.5 s a run).
    gc.freeze()
    try:
        return _execute(plan, scope, stale, executor, task_timeout, progress)
    finally:
        gc.unfreeze()


def _execute(plan, scope, stale, executor, task_timeout, progress) -> BuildResult:
    results, error, failed = [], None, None
    for name in scope:
        if name not in stale:
            results.append(TaskResult(name, "skipped"))
            continue
        if failed is not None:
            results.append(TaskResult(name, "not-run"))
            continue
        task = plan.tasks[name]
        if progress:
            progress(name, "start", 0.0)
        started = time.perf_counter()
        try:
            run_task(plan, task, executor, task_timeout)
        except Exception as e:
            seconds = time.perf_counter() - started
            results.append(TaskResult(name, "failed", seconds))
            failed, error = name, explain(f"Task {name!r} ({task.source.name})", e)
            if progress:
                progress(name, "failed", seconds)
            continue
        seconds = time.perf_counter() - started
        results.append(TaskResult(name, "ran", seconds))
        if progress:
            progress(name, "ran", seconds)
    return BuildResult(results, error, failed)


def run_task(plan, task, executor: str = "engine", task_timeout: int | None = None) -> None:
    """Execute one task's notebook into its executed-notebook product; its other products must exist after.
    Its file products are removed first, so a product the notebook no longer writes cannot pass for new
    (a run keeps a backup of the products folder)."""
    for path in task.products.values():
        if path.is_file():
            path.unlink()
    for path in {p.parent for p in task.products.values()}:
        path.mkdir(parents=True, exist_ok=True)
    nb = task_notebook(plan, task)
    if executor == "papermill":
        _run_in_kernel(nb, task.notebook, task_timeout)
    else:
        _run_here(nb, task.notebook, task.name, task_timeout)
    missing = [f"{key} ({path})" for key, path in task.products.items() if not path.exists()]
    if missing:
        raise PipelineError(f"it ran, but did not write its product(s) {', '.join(missing)}. Write every "
                            "product that pipeline.yaml declares for it, or remove the ones it no longer makes.")


def task_notebook(plan, task):
    """The task's notebook as a run executes it: its file with the run's values injected after the parameters
    cell (and any injected cell of an earlier run dropped)."""
    nb = read_task(task.source)
    inject(nb, parameters_source(task_values(plan, task)))
    nb.metadata.setdefault("kernelspec", dict(KERNELSPEC))
    return nb


def inject(nb, source: str) -> None:
    """``source`` as the cell tagged ``injected-parameters`` right after the cell tagged ``parameters`` (in
    place: nbformat's notebook, or the plain dict of Jupyter's contents API); an earlier one is dropped."""
    cells = strip(nb)
    at = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    injected = {"cell_type": "code", "execution_count": None, "metadata": {"tags": [INJECTED_TAG]}, "outputs": [],
                "source": source}
    if nb.get("nbformat_minor", 0) >= 5:  # cell ids came with nbformat 4.5
        injected["id"] = INJECTED_TAG
    if type(nb) is not dict:  # nbformat's NotebookNode
        injected = import_nbformat().from_dict(injected)
    nb["cells"] = cells[:at + 1] + [injected] + cells[at + 1:]


def strip(nb) -> list:
    """The notebook's cells without injected ones (set on ``nb`` too)."""
    nb["cells"] = [c for c in nb["cells"] if INJECTED_TAG not in c.get("metadata", {}).get("tags", [])]
    return nb["cells"]


def task_values(plan, task, products: dict | None = None) -> dict:
    """What a run passes to a task's notebook: its params, ``upstream`` ({task: its products}) and
    ``product`` (``products``, key -> path, in place of its own when given)."""
    values = dict(task.params)
    values["upstream"] = {name: as_passed(plan.tasks[name]) for name in task.upstream}
    values["product"] = as_passed(task, products)
    return values


def parameters_source(values: dict, note: str = "") -> str:
    return "# Parameters\n" + note + "".join(f"{name} = {value!r}\n" for name, value in values.items())


def as_passed(task, products: dict | None = None):
    """A task's products as its notebook and its downstream see them: {key: path}, or the one path when
    pipeline.yaml gives a single product."""
    paths = {key: str(path) for key, path in (products or task.products).items()}
    return paths if isinstance(task.spec.get("product"), dict) else next(iter(paths.values()))


def read_task(path: Path):
    """A task notebook's cells as a run starts them: a percent .py file read by jupytext, an .ipynb without
    the outputs and execution counts it was saved with by hand."""
    if path.suffix != ".ipynb":
        return _read_percent(path)
    nbformat = import_nbformat()
    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as e:  # nbformat raises JSON, validation and version errors of several types
        raise PipelineError(f"{path} is not a readable notebook: {first_line(e)}. Open and save it in "
                            "JupyterLab, or restore it from git.") from None
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def _read_percent(path: Path):
    """A jupytext percent-format file as a notebook (jupytext's contents managers, and the web server
    they import, are not needed for reading one)."""
    managers = ("jupytext.sync_contentsmanager", "jupytext.async_contentsmanager")
    blocked = [m for m in managers if m not in sys.modules] if "jupytext" not in sys.modules else []
    sys.modules.update(dict.fromkeys(blocked))
    try:
        import jupytext
    finally:
        for m in blocked:
            sys.modules.pop(m, None)
    return jupytext.reads(path.read_text(encoding="utf-8"), fmt="py:percent")


def import_nbformat():
    """nbformat, without the 0.7 s that jsonschema spends compiling rfc3987_syntax's grammar, an optional
    dependency (IRI format checks) that notebooks' schema does not use; jsonschema skips it when absent."""
    if "jsonschema" not in sys.modules:
        sys.modules.setdefault("rfc3987_syntax", None)
    import nbformat

    return nbformat


def _save(nb, out: Path) -> None:
    nbformat = import_nbformat()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(nbformat.writes(nb, version=4), encoding="utf-8")
    tmp.replace(out)


# ---------------------------------------------------------------------------------------------- in process

def _run_here(nb, out: Path, name: str, timeout: int | None) -> None:
    """Each code cell in a fresh IPython shell, in order; the notebook is saved with its outputs, also when
    a cell fails (then the cell's error is raised, with ``cell`` saying which)."""
    shell = _shell_class()()
    try:
        with _time_limit(name, timeout):
            count = 0
            for cell in nb.cells:
                if cell.cell_type != "code":
                    continue
                count += 1
                error = shell.run(cell, count)
                if error is not None:
                    error.mlops_nb_cell = _describe(cell, count, nb)
                    raise error
    finally:
        _save(nb, out)
        shell.close()


def _describe(cell, count: int, nb) -> str:
    """'code cell N (ending `last line`)', N counting the notebook's own code cells (not the injected one)."""
    injected = sum(1 for c in nb.cells[:nb.cells.index(cell)]
                   if c.cell_type == "code" and INJECTED_TAG in c.metadata.get("tags", []))
    lines = cell.source.strip().splitlines()
    return f"code cell {count - injected} (ending `{lines[-1].strip()[:80] if lines else ''}`)"


@functools.cache
def _shell_class():
    """IPython's shell, writing each cell's outputs into the cell (built on first use: IPython is imported
    only by a run that executes something)."""
    import atexit

    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    new_output = import_nbformat().v4.new_output

    class Hook(DisplayHook):
        """A cell's value: an execute_result (no output cache, so nothing outlives the notebook)."""

        def quiet(self):  # IPython reads the cell back from its history, which we do not keep
            return self.semicolon_at_end_of_expression(self.shell.source)

        def __call__(self, result=None):
            if result is not None and not self.quiet():
                data, metadata = self.shell.display_formatter.format(result)
                if data:
                    self.shell.outputs.append(new_output("execute_result", data=data, metadata=metadata))

    class Publisher(DisplayPublisher):
        """``display(...)``: a display_data output."""

        def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
            self.shell.outputs.append(new_output("display_data", data=data, metadata=metadata or {}))

        def clear_output(self, wait=False):
            self.shell.outputs.clear()

    class Stream(io.TextIOBase):
        """stdout or stderr of a cell, as stream outputs in the order written."""

        def __init__(self, shell, name):
            self.shell, self.stream = shell, name

        def writable(self):
            return True

        def write(self, text):
            outputs = self.shell.outputs
            if text:
                if outputs and outputs[-1].output_type == "stream" and outputs[-1].name == self.stream:
                    outputs[-1].text += text
                else:
                    outputs.append(new_output("stream", name=self.stream, text=text))
            return len(text)

    class Shell(InteractiveShell):
        def __init__(self):
            config = Config()
            config.HistoryManager.enabled = False  # no sqlite history in the user's ~/.ipython
            self.outputs = []
            self.source = ""
            self._pyplot = False
            self._previous = InteractiveShell._instance
            super().__init__(config=config, display_pub_class=Publisher, displayhook_class=Hook)
            InteractiveShell._instance = self  # display() publishes through the current instance
            png = self.display_formatter.formatters["image/png"]
            png.for_type_by_name("matplotlib.figure", "Figure", _png)
            if "matplotlib.pyplot" in sys.modules:
                self._inline()

        def enable_gui(self, gui=None):
            pass

        def _showtraceback(self, etype, evalue, stb):
            self.outputs.append(new_output("error", ename=etype.__name__, evalue=str(evalue), traceback=stb))

        def run(self, cell, count: int):
            """Execute one cell into ``cell``; returns its error, or None."""
            self.outputs = cell.outputs = []
            self.source = cell.source
            started = _now()
            with contextlib.redirect_stdout(Stream(self, "stdout")), \
                    contextlib.redirect_stderr(Stream(self, "stderr")):
                result = self.run_cell(cell.source, store_history=False)
                if not self._pyplot and "matplotlib.pyplot" in sys.modules:
                    self._inline(flush=True)
            cell.execution_count = count
            for output in cell.outputs:
                if output.output_type == "execute_result":
                    output.execution_count = count
            cell.metadata["execution"] = {"iopub.execute_input": started, "shell.execute_reply": _now()}
            return result.error_before_exec or result.error_in_exec

        def _inline(self, flush: bool = False):
            """matplotlib's inline backend, from the cell that imported pyplot on; that cell's figures are
            shown now (the backend shows a cell's figures when the cell ends)."""
            from matplotlib_inline.backend_inline import configure_inline_support

            self._pyplot = True
            configure_inline_support.current_backend = "unset"  # else later display_data is lost
            self.enable_matplotlib("inline")
            if flush:
                import matplotlib.pyplot as plt

                for number in plt.get_fignums():
                    self.display_pub.publish(self.display_formatter.format(plt.figure(number))[0])
                plt.close("all")

        def close(self):
            """Let the shell go now: IPython keeps every shell until exit otherwise (an atexit hook each)."""
            atexit.unregister(self.atexit_operations)
            self.user_ns.clear()
            self.user_global_ns.clear()
            if self.history_manager is not None:
                self.history_manager.end_session()
                self.history_manager.close()
                self.history_manager = None
            InteractiveShell._instance = self._previous

    return Shell


def _png(fig):
    from IPython.core.pylabtools import print_figure

    return print_figure(fig, "png", base64=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


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


# ------------------------------------------------------------------------------------------------ a kernel

def _run_in_kernel(nb, out: Path, timeout: int | None) -> None:
    """papermill in a fresh kernel (the parameters are already injected); ``timeout`` bounds each cell."""
    import papermill

    source = out.with_name(f".{out.stem}.in.ipynb")
    _save(nb, source)
    try:
        with quiet_kernel_teardown():
            papermill.execute_notebook(str(source), str(out), progress_bar=False, execution_timeout=timeout,
                                       kernel_name=nb.metadata["kernelspec"]["name"])
    finally:
        source.unlink(missing_ok=True)


class _ZmqCallbackNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "ZMQStream callback" not in record.getMessage()


@contextlib.contextmanager
def quiet_kernel_teardown():
    """When a cell fails, the kernel is shut down while its client's zmq streams may still hold callbacks:
    tornado then logs their exception with a library traceback on stderr (seen under load). The task's own
    error is what the run reports; that noise is dropped."""
    noise = _ZmqCallbackNoise()
    log = logging.getLogger("tornado.general")
    log.addFilter(noise)
    try:
        yield
    finally:
        log.removeFilter(noise)


# --------------------------------------------------------------------------------------------------- errors

def explain(where: str, exc: BaseException) -> MlopsNbError:
    """``where`` failed: one of our errors keeps its type (and exit code) behind the prefix; any other
    error, raised here or in a kernel, becomes a PipelineError naming its type and first line."""
    chain = []
    e = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    cell = next((c.mlops_nb_cell for c in chain if getattr(c, "mlops_nb_cell", None)), "") or _cell_of(chain)
    if cell:
        where += f", {cell}"
    ours = next((c for c in chain if isinstance(c, MlopsNbError)), None) or _from_kernel(chain)
    if ours is not None:
        err = type(ours).__new__(type(ours))
        err.__dict__.update(ours.__dict__)
        err.args = (f"{where} failed:\n{ours}",)
        return err
    remote = next((c for c in chain if hasattr(c, "ename")), None)  # papermill: raised in a kernel
    if remote is not None:
        return PipelineError(f"{where} failed: {remote.ename}: {first_line(remote.evalue)}")
    root = chain[-1]
    return PipelineError(f"{where} failed: {type(root).__name__}: {first_line(root)}")


def _from_kernel(chain) -> MlopsNbError | None:
    """One of our errors raised in a papermill kernel arrives as its class name and message only."""
    from .. import errors

    remote = next((c for c in chain if hasattr(c, "ename") and hasattr(c, "evalue")), None)
    cls = getattr(errors, getattr(remote, "ename", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, MlopsNbError)):
        return None
    err = cls.__new__(cls)
    err.args = (clean(remote.evalue),)
    return err


def _cell_of(chain) -> str:
    import re

    for c in chain:
        index = getattr(c, "cell_index", None)  # papermill's PapermillExecutionError
        if index is not None:
            return f"cell {index + 1}"
        m = re.search(r"[Cc]ell (?:#)?(\d+)", str(c).split("\n", 3)[0] if str(c) else "")
        if m:
            return f"cell {m.group(1)}"
    return ""


def first_line(e) -> str:
    text = clean(str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def clean(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def render_table(results: list[TaskResult]) -> str:
    width = max([len(r.name) for r in results] + [4])
    lines = [f"{'task':<{width}}  {'status':<8}  {'seconds':>8}", f"{'-' * width}  {'-' * 8}  {'-' * 8}"]
    for r in results:
        secs = f"{r.seconds:8.1f}" if r.status in ("ran", "failed") else f"{'':>8}"
        lines.append(f"{r.name:<{width}}  {r.status:<8}  {secs}")
    return "\n".join(lines)
