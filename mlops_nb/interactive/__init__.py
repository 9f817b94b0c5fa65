"""Task notebooks run by hand: the values a run would pass them, in JupyterLab and in plain Python.

    from mlops_nb import interactive
    globals().update(interactive.task("train"))   # its parameters, upstream and product, as a run passes them

A run executes a task notebook with a cell tagged ``injected-parameters`` after its cell tagged
``parameters`` (``run.notebooks``). ``mlops-nb lab`` serves the notebooks through
``interactive.contents.TaskContentsManager``, which adds the same cell, built here, to a task notebook when
it is opened and drops it when it is saved: the file on disk stays what the pipeline reads. The values come
from the current settings (settings.ini, ``MLOPS_NB_*``) and the last run: ``upstream`` names the products
the upstream tasks last made (an error names the task to run first when one is missing; a note in the cell
says when one is out of date), ``product`` names the task's own products under ``paths.scratch_dir``, laid
out as in the products folder, so that running a notebook by hand never overwrites what the last run made
(``scratch=False`` gives the real paths). What the task writes elsewhere (tables in the warehouse, a model
registered by the gate) it writes as in a run.
"""
from __future__ import annotations

from pathlib import Path

from .. import config
from ..errors import MlopsNbError, PipelineError, did_you_mean
from ..run import notebooks, plan as plans

NOTE = ("# mlops-nb: the values `mlops-nb run` would pass (current settings, the last run's products); this\n"
        "# cell is not saved. The task's products go to the scratch folder {scratch}.\n")


class UpstreamMissing(PipelineError):
    """A task notebook opened by hand needs products that no run has made yet."""


def task(name: str, *, scratch: bool = True, settings: config.Settings | None = None) -> dict:
    """The values a run passes task ``name``'s notebook: its parameters, ``upstream`` and ``product``
    (under ``paths.scratch_dir`` unless ``scratch`` is False), from the current settings and the last
    run's products. Raises UpstreamMissing when an upstream task's products are missing."""
    settings = settings or config.load(check_inputs=False)
    plan = plans.load_plan(settings, state=plans.read_state(settings))
    return _values(plan, _task(plan, name), settings, scratch)


def task_of(path: Path, settings: config.Settings | None = None) -> str | None:
    """The name of the pipeline's task whose notebook is ``path``, or None."""
    settings = settings or config.load(check_inputs=False)
    path = Path(path).resolve()
    for entry in plans.load_yaml(settings.root / plans.SPEC_FILE).get("tasks") or []:
        if isinstance(entry, dict) and (settings.root / str(entry.get("source", ""))).resolve() == path:
            return entry.get("name") or path.stem
    return None


def cell_source(name: str, settings: config.Settings | None = None) -> str:
    """The source of the injected cell for task ``name``; when its values cannot be had, a cell that raises
    the error saying why (so that running the notebook stops there, with the fix)."""
    settings = settings or config.load(check_inputs=False)
    try:
        state = plans.read_state(settings)
        plan = plans.load_plan(settings, state=state)
        task = _task(plan, name)
        values = _values(plan, task, settings, scratch=True)
        stale = plans.stale_tasks(plan, state, settings.path("warehouse").exists())
    except MlopsNbError as e:
        return (f"# mlops-nb could not fill in the values of task {name!r}:\n"
                + "".join(f"# {line}\n" for line in str(e).splitlines())
                + f"from mlops_nb.errors import PipelineError\nraise PipelineError({str(e)!r})\n")
    note = NOTE.format(scratch=settings.path("scratch_dir"))
    note += "".join(f"# Out of date: {u} ({stale[u]}); these are the products it last made.\n"
                    for u in task.upstream if u in stale)
    return notebooks.parameters_source(values, note)


def notebook(path: Path, settings: config.Settings | None = None):
    """A task notebook (.py percent file or .ipynb) as JupyterLab opens it: with the injected cell (for
    nbclient and other Jupyter clients that read files themselves)."""
    import jupytext

    path = Path(path)
    settings = settings or config.load(check_inputs=False)
    name = task_of(path, settings)
    if name is None:
        raise MlopsNbError(f"{path} is not the notebook of a task of {plans.SPEC_FILE}; its tasks' sources "
                           "are listed there.")
    nb = jupytext.read(path)
    notebooks.inject(nb, cell_source(name, settings))
    return nb


def _task(plan, name: str):
    if name not in plan.tasks:
        raise PipelineError(f"There is no task {name!r} in {plans.SPEC_FILE}; its tasks are "
                            f"{', '.join(plan.tasks)}.{did_you_mean(name, list(plan.tasks))}")
    return plan.tasks[name]


def _values(plan, task, settings: config.Settings, scratch: bool) -> dict:
    """The values for ``task``; UpstreamMissing when an upstream task's products are missing."""
    for upstream in task.upstream:
        missing = [p for p in plan.tasks[upstream].products.values() if not p.exists()]
        if missing:
            raise UpstreamMissing(
                f"Task {task.name!r} reads the products of {upstream!r}, and {missing[0]} does not exist: run "
                f"the pipeline first (`mlops-nb run`), then run this notebook again.")
    products = None
    if scratch:
        products = {key: _scratch(path, settings) for key, path in task.products.items()}
        for path in products.values():
            path.parent.mkdir(parents=True, exist_ok=True)
    values = notebooks.task_values(plan, task, products)
    for param in task.params:  # a path setting as an absolute path: a kernel starts in the notebook's folder
        key = task.setting_of(param)
        if key is not None and tuple(key.split(".")) in config.PATH_KEYS:
            values[param] = str(settings.path(key.split(".")[1]))
    return values


def _scratch(path: Path, settings: config.Settings) -> Path:
    """Where an interactive run writes a product: its place below the products folder, under the scratch
    folder instead."""
    products, scratch = settings.path("products_dir").resolve(), settings.path("scratch_dir")
    try:
        return scratch / path.resolve().relative_to(products)
    except ValueError:
        return scratch / path.name
