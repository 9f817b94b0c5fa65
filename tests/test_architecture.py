"""Import rules of the package, checked on its source (AST) and, for the CLI, at runtime."""
from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PACKAGE, REPO, cli_env

HEAVY = {"pandas", "numpy", "duckdb", "ploomber", "ploomber_engine", "papermill", "sklearn", "scipy",
         "whylogs", "bentoml", "nbconvert", "nbformat", "matplotlib", "pyarrow", "jupytext", "nbdev"}

# nbdev exports these from notebooks/lib into mlops_nb/lib; everything else is written by hand
EXPORTED = {"lib.record", "lib.columns", "lib.transforms", "lib.model", "lib.evaluation", "lib.spec"}
GENERATED = EXPORTED | {"_modidx"}

# The layers, top first: a module imports modules of its own layer or of the layers below it, never above.
# serving, monitoring, interactive, scaffold (mlops-nb init) and export share a rank and never import each other (the
# service's log formats, data.logs, are all serving and monitoring share). "base" is config, errors, lib (the
# generated model code), __init__ and _modidx.
RANK = {"cli": 0, "serving": 1, "monitoring": 1, "interactive": 1, "scaffold": 1, "export": 1, "run": 2,
        "registry": 3, "featurestore": 3.5, "data": 4, "base": 5}
LAYERS = list(RANK)


def modules() -> dict[str, Path]:
    """dotted name below mlops_nb ('cli', 'serving.service') -> file, for every module of the package; a
    subpackage is named by its __init__.py ('cli', 'registry'), the package's own one is '__init__'."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if rel[-1] == "__init__" and len(rel) > 1:
            rel = rel[:-1]
        out[".".join(rel)] = path
    return out


def layer(module: str) -> str:
    return module.split(".")[0] if module.split(".")[0] in LAYERS else "base"


def _runs_on_import(node):
    """The nodes executed when a module is imported: everything but function bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield child
        yield from _runs_on_import(child)


def imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file (relative imports resolved; `from a import b`
    names a.b when b is a module of ours)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(PACKAGE).with_suffix("").parts if PACKAGE in path.parents else ()
    package = ["mlops_nb", *rel[:-1]] if rel else []  # the package a relative import starts from
    ours_names = set(modules())
    nodes = list(_runs_on_import(tree)) if top_level_only else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                name = ".".join(base + ([node.module] if node.module else []))
                if not node.module:  # from . import a, b
                    out += [(f"{name}.{a.name}", node.lineno) for a in node.names]
                    continue
            else:
                name = node.module or ""
                if name == "mlops_nb":  # from mlops_nb import a, b
                    out += [(f"mlops_nb.{a.name}", node.lineno) for a in node.names]
                    continue
            if name.startswith("mlops_nb."):  # from mlops_nb.data import features: the module features
                below = name.split(".", 1)[1]
                out += [(f"{name}.{a.name}" if f"{below}.{a.name}" in ours_names else name, node.lineno)
                        for a in node.names]
                continue
            out.append((name, node.lineno))
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def ours(path: Path) -> set[str]:
    """The mlops_nb modules a file imports, as names below mlops_nb ('errors', 'serving.schemas')."""
    return {name.split(".", 1)[1] for name, _ in imports(path) if name.startswith("mlops_nb.")}


def importers_of(library: str) -> set[str]:
    return {m for m, path in modules().items() if any(top(n) == library for n, _ in imports(path))}


def test_the_scan_sees_the_package():
    found = modules()
    assert {"cli", "config", "errors", "run.dag", "data.profiles", "run.plan", "run.transaction"} <= set(found)
    # the scanner resolves relative and absolute imports, and modules imported from a subpackage
    assert "errors" in ours(found["config"])
    assert {"config", "errors", "data.contracts"} <= ours(found["data.ingest"])
    assert "data.warehouse" in ours(found["serving.service"])
    assert "ploomber.spec" in {n for n, _ in imports(found["run.dag"])}


def test_errors_imports_nothing_of_ours():
    assert ours(PACKAGE / "errors.py") == set()


def test_config_imports_only_errors():
    assert ours(PACKAGE / "config.py") <= {"errors"}
    third_party = {top(n) for n, _ in imports(PACKAGE / "config.py")} - set(sys.stdlib_module_names) - {"mlops_nb"}
    assert third_party == set(), f"config imports {third_party}"


def test_only_dag_imports_ploomber():
    assert importers_of("ploomber") | importers_of("ploomber_engine") == {"run.dag"}


def test_only_profiles_imports_whylogs():
    assert importers_of("whylogs") == {"data.profiles"}


def test_bentoml_only_in_registry_versions_and_serving():
    allowed = {m for m in modules() if m == "registry.versions" or m == "serving" or m.startswith("serving.")}
    users = importers_of("bentoml") | importers_of("_bentoml_impl") | importers_of("_bentoml_sdk")
    assert users <= allowed, f"bentoml imported by {sorted(users - allowed)}"


def test_package_never_imports_the_notebooks():
    for name, path in modules().items():
        bad = [(n, line) for n, line in imports(path) if top(n) == "notebooks"]
        assert bad == [], f"mlops_nb/{path.relative_to(PACKAGE)} imports {bad}"


def test_layers_import_downwards_only():
    """cli -> serving, monitoring, interactive -> run -> registry -> data -> config, errors, lib: never up,
    and never between serving, monitoring and interactive."""
    names = set(modules())
    bad = set()
    for name, path in modules().items():
        for imported in ours(path):
            target = imported if imported in names else imported.rsplit(".", 1)[0]
            upward = RANK[layer(target)] < RANK[layer(name)]
            sideways = RANK[layer(target)] == RANK[layer(name)] and layer(target) != layer(name)
            if upward or sideways:
                bad.add((name, target))
    assert bad == set(), f"imports against the layer order {RANK}: {sorted(bad)}"


def test_serving_never_imports_run():
    for name, path in modules().items():
        if layer(name) == "serving":
            assert {m for m in ours(path) if layer(m) == "run"} == set(), name


def test_generated_modules_import_only_the_records_and_transforms_of_ours():
    for name in EXPORTED:
        assert ours(modules()[name]) <= {"lib.record", "lib.columns", "lib.transforms", "lib.spec"}, name


def test_lib_init_is_only_a_docstring():
    body = ast.parse((PACKAGE / "lib" / "__init__.py").read_text(encoding="utf-8")).body
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value.value, str)


def test_registry_facade_exports_the_public_names_of_versions():
    """`from mlops_nb import registry; registry.promote(...)`: every public name of registry/versions.py."""
    tree = ast.parse((PACKAGE / "registry" / "versions.py").read_text(encoding="utf-8"))
    public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    public |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    public = {n for n in public if not n.startswith("_")}
    from mlops_nb import registry

    versions = sys.modules["mlops_nb.registry.versions"]  # registry.versions is the function versions()
    missing = sorted(n for n in public if getattr(registry, n, None) is not getattr(versions, n))
    assert missing == [], f"mlops_nb.registry does not re-export {missing}"
    assert {"promote", "rollback", "aliases", "versions", "RegistryError"} <= public


def test_task_notebooks_use_the_package():
    notebooks = sorted((REPO / "notebooks" / "tasks").glob("*.py"))
    assert {p.stem for p in notebooks} >= {"ingest", "validate", "features", "train", "evaluate"}
    for path in notebooks:
        used = ours(path)
        assert used, f"{path.name} imports nothing from mlops_nb"
        assert used <= set(modules()), f"{path.name} imports {used - set(modules())}"


@pytest.mark.parametrize("name", sorted(m for m in modules() if layer(m) == "cli"))
def test_cli_imports_nothing_heavy_at_module_level(name):
    path = modules()[name]
    names = {top(n) for n, _ in imports(path, top_level_only=True)}
    assert names & HEAVY == set()
    # nor anything of ours that would: whatever cli imports at the top must be light itself
    for mod in {n.split(".", 1)[1] for n, _ in imports(path, top_level_only=True) if n.startswith("mlops_nb.")}:
        mod = mod if mod in modules() else mod.rsplit(".", 1)[0]
        assert {top(n) for n, _ in imports(modules()[mod], top_level_only=True)} & HEAVY == set(), mod


def test_importing_the_cli_loads_nothing_heavy():
    code = ("import json, sys, mlops_nb.cli\n"
            f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_imports_of_ours_name_real_modules():
    """A module's imports of ours name modules that exist (a rename would otherwise surface at runtime)."""
    valid = set(modules())
    for name, path in modules().items():
        for imported in ours(path):
            ok = imported in valid or imported.rsplit(".", 1)[0] in valid  # or a name inside one
            assert ok, f"mlops_nb/{path.relative_to(PACKAGE)} imports mlops_nb.{imported}, which does not exist"
    for path in sorted((REPO / "notebooks" / "tasks").glob("*.py")):
        for imported in ours(path):
            assert imported in valid or imported.rsplit(".", 1)[0] in valid, f"{path.name}: mlops_nb.{imported}"


# --------------------------------------------------------------------------------------------------
# nbdev: generated modules are marked, hand-written ones are not


def header(path: Path, lines: int = 5) -> str:
    return "".join(path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines])


def test_generated_modules_are_exactly_the_nbdev_ones():
    marked = {m for m, p in modules().items() if re.search("autogenerated", header(p), re.I)}
    assert marked == GENERATED


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_exported_module_names_its_notebook(name):
    path = modules()[name]
    text = header(path)
    assert "# AUTOGENERATED! DO NOT EDIT!" in text
    m = re.search(r"File to edit: ((?:\.\./)+notebooks/lib/\S+\.ipynb)\.", text)
    assert m, f"{name} does not name its notebook"
    notebook = (path.parent / m.group(1)).resolve()
    assert notebook.is_file() and notebook.parent == REPO / "notebooks" / "lib", m.group(1)


def test_modidx_is_nbdevs_index():
    text = header(PACKAGE / "_modidx.py")
    assert text.startswith("# Autogenerated by nbdev")
    from mlops_nb import _modidx

    # nbdev indexes functions and classes: lib.record holds data only
    assert {k.split(".", 1)[1] for k in _modidx.d["syms"]} == EXPORTED - {"lib.record"}


def test_no_hand_written_module_carries_the_generated_header():
    for name, path in modules().items():
        if name in GENERATED:
            continue
        text = path.read_text(encoding="utf-8")
        assert "AUTOGENERATED! DO NOT EDIT!" not in text, name
        assert not re.search(r"# %% (\.\./)+notebooks/lib/", text), name


FORBIDDEN_IN_SERVING = {"run.dag", "run.transaction", "run.plan", "data.ingest", "data.features", "data.validation",
                        "registry.gate", "run.reports", "cli"} | {m for m in modules() if m.startswith("cli.")}


def test_serving_never_reaches_training_code_statically():
    """The import closure of the service holds none of the pipeline's modules."""
    graph = {m: {o for o in ours(p) if o in modules()} for m, p in modules().items()}
    seen, todo = set(), ["serving.service"]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph.get(m, ()))
    assert not seen & FORBIDDEN_IN_SERVING, f"serving.service reaches {sorted(seen & FORBIDDEN_IN_SERVING)}"
    libraries = {top(n) for m in seen for n, _ in imports(modules()[m])}
    assert not libraries & {"ploomber", "papermill", "ploomber_engine", "nbconvert"}, libraries


def test_importing_the_service_loads_no_pipeline_library():
    code = ("import json, sys, mlops_nb.serving.service\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'ploomber', 'papermill', 'ploomber_engine', 'nbconvert'} or m in "
            f"{sorted('mlops_nb.' + m for m in FORBIDDEN_IN_SERVING)!r})))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_only_config_reads_the_environment():
    """scikit-learn's _config.py: settings and environment are read in one place (children get theirs from
    config.child_environment)."""
    readers = set()
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb") \
                    and isinstance(node.value, ast.Name) and node.value.id == "os":
                readers.add(name)
    assert readers == {"config"}, f"modules other than config read the environment: {sorted(readers - {'config'})}"
