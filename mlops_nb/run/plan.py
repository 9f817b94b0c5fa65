"""pipeline.yaml, rendered with the settings, and each task's fingerprint, without importing Ploomber.

A task's fingerprint hashes everything its result depends on: its notebook's text, its parameters, its
product paths, the source files it ingests, the ``mlops_nb`` modules (and SQL files) its notebook
imports, and its upstream tasks' fingerprints. Ploomber sees none of the data or module changes on its
own; ``dag`` passes the two hashes to it as parameters so that both agree on what is stale. When
every fingerprint matches the last successful run and every product exists, nothing is stale, and that
is decided here in a fraction of a second (``import ploomber`` alone takes seconds).
"""
from __future__ import annotations

import ast
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


@dataclass
class Task:
    name: str
    source: Path
    spec: dict                      # the task's rendered entry of pipeline.yaml
    upstream: list[str]
    products: dict[str, Path]
    params: dict[str, Any]
    settings_keys: list[str]        # the settings its parameters come from
    code_hash: str = ""             # hash of the mlops_nb modules its notebook imports
    source_hash: str = ""           # ingest only: hash of the input files
    fingerprint: str = ""


@dataclass
class Plan:
    root: Path
    data: dict                      # the whole rendered spec (what Ploomber gets)
    tasks: dict[str, Task] = field(default_factory=dict)  # in dependency order

    def order(self) -> list[str]:
        return list(self.tasks)


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
    """The value a placeholder renders to: typed for scalars, the settings text for month lists."""
    value = settings.get(dotted)
    if isinstance(value, tuple):
        section, key = config.split_key(dotted)
        return settings.raw[section][key]
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


def parameters_cell(source: Path) -> dict:
    """Literal assignments of a percent-format notebook's cell tagged ``parameters``."""
    text = source.read_text(encoding="utf-8")
    cells = re.split(r"^# %%", text, flags=re.M)
    for cell in cells:
        header, _, body = cell.partition("\n")
        if "parameters" in header:
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
    raise PipelineError(f"{source} has no cell tagged 'parameters'; add '# %% tags=[\"parameters\"]' "
                        "before the cell that declares upstream, product and the task's parameters.")


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
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return set()
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
    return {m for m in found if m and module_file(m)}


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


def load_plan(settings: config.Settings, spec_path: Path | None = None) -> Plan:
    """The rendered spec of an mlops-nb project with every task's fingerprint."""
    from ..data import ingest

    spec_path = spec_path or settings.root / SPEC_FILE
    if not spec_path.is_file():
        raise PipelineError(f"No {SPEC_FILE} in {settings.root}: the pipeline is declared there.")
    raw = load_yaml(spec_path)
    plan = Plan(settings.root, {k: v for k, v in raw.items() if k != "tasks"})
    rendered_tasks = []
    for i, entry in enumerate(raw["tasks"]):
        if not isinstance(entry, dict) or "source" not in entry:
            raise PipelineError(f"{spec_path.name}: task #{i + 1} must be a mapping with a 'source'.")
        used: set[str] = set()
        entry = render(entry, settings, used, f"tasks[{i}]")
        source = settings.root / entry["source"]
        if not source.is_file():
            raise PipelineError(f"{spec_path.name}: task #{i + 1}'s source {entry['source']} does not exist.")
        name = entry.get("name") or source.stem
        declared = parameters_cell(source)
        upstream = declared.get("upstream") or []
        if isinstance(upstream, dict):
            upstream = list(upstream)
        products = entry.get("product")
        products = products if isinstance(products, dict) else {"nb": products}
        task = Task(name=name, source=source, spec=entry, upstream=list(upstream),
                    products={k: settings.root / v for k, v in products.items()},
                    params=dict(entry.get("params") or {}), settings_keys=sorted(used))
        rendered_tasks.append(task)
    names = {t.name for t in rendered_tasks}
    for t in rendered_tasks:
        for u in t.upstream:
            if u not in names:
                from ..errors import did_you_mean
                raise PipelineError(f"Task {t.name!r} ({t.source.name}) declares upstream {u!r}, which is not "
                                    f"a task of {spec_path.name}.{did_you_mean(u, names)}")
    for task in _toposort(rendered_tasks):
        text = task.source.read_text(encoding="utf-8")
        task.code_hash = code_hash(text)
        if "source" in task.params and task.name == "ingest":
            file_settings = settings.replace({f"data.{k}": task.params[k]
                                              for k in ("source", "flights", "weather", "months")
                                              if k in task.params})
            hashes = {n: ingest.file_sha256(p)
                      for n, p in sorted(ingest.resolve_sources(file_settings).items())}
            task.source_hash = ingest.snapshot_id(file_settings, hashes)
        payload = {
            "notebook": hashlib.sha256(text.encode()).hexdigest(),
            "params": task.params, "products": {k: _relative(v, settings.root) for k, v in task.products.items()},
            "code_hash": task.code_hash, "source_hash": task.source_hash,
            "upstream": {u: plan.tasks[u].fingerprint for u in sorted(task.upstream)},
        }
        task.fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()
        plan.tasks[task.name] = task
    return plan


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
        return json.loads(state_path(settings).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def stale_tasks(plan: Plan, state: dict) -> list[str]:
    """Tasks whose fingerprint differs from the last successful build, or whose products are missing."""
    recorded = state.get("tasks", {})
    return [name for name, t in plan.tasks.items()
            if recorded.get(name) != t.fingerprint or not all(p.exists() for p in t.products.values())]
