"""Shared fixtures of the registry, gate and serving tests: one small project built (twice) per session,
copies of it for tests that change it, and real `bentoml serve` processes on free ports of 127.0.0.1.

Loaded by test_registry.py, test_gate.py, test_serving.py and test_serving_fuzz.py with
``pytest_plugins = ["served_project"]`` (one plugin, so the session fixtures are built once for all four).
Fixtures: ``served`` (the session project, a ``Built``), ``served_copy`` (a private copy of it a test),
``champion_server`` (`mlops-nb serve` of a copy, shared by the serving tests).

Everything is real: the `mlops-nb` CLI in subprocesses, a DuckDB file, the BentoML model store inside the
project (data/bentoml), the HTTP server, httpx. Nothing is mocked.

The session project:
- run 1 (small sample: months 1-3, 30 boosting rounds) registers ``v1`` and makes it the champion;
- run 2 (``-p model.learning_rate=0.05 -p gate.min_roc_auc=0.99``) registers ``v2``, which the gate refuses
  (the threshold is out of reach): a candidate. So ``v1`` is the champion and ``v2`` a known other version.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import conftest

from conftest import CLI, MODEL_NAME, REPO, TIMEOUT, VENV_BIN, store_dir  # noqa: F401 (MODEL_NAME: re-exported)

PYTHON = Path(sys.executable)
BENTOML = VENV_BIN / "bentoml"
READY_TIMEOUT = 120    # seconds, a server's cold start (the machine is shared: be generous)

MAX_ROWS = 50  # the champion server's serving.max_rows
# a valid flight record with only the required fields: what the API tests send when any good request will do
GOOD = {"year": 2013, "month": 3, "day": 1, "sched_dep_time": 600, "sched_arr_time": 830, "carrier": "UA",
        "origin": "EWR", "dest": "ORD", "distance": 719.0}
SECOND_RUN = ["-p", "model.learning_rate=0.05", "-p", "gate.min_roc_auc=0.99"]
SERVING_FILES = ("bentofile.yaml", "requirements.lock")  # beside what conftest.make_project copies


# --------------------------------------------------------------------------------------------------
# subprocesses


def clean_env(extra: dict | None = None) -> dict:
    """Our environment without MLOPS_NB_* and BENTOML_HOME (a project then uses its own store)."""
    return conftest.cli_env({k: str(v) for k, v in (extra or {}).items()})


class Result(conftest.Result):
    """A finished command (any command, not only mlops-nb); ``json()`` as conftest.Result's."""

    def __str__(self):
        return (f"$ {' '.join(map(str, self.args))}\nexit {self.returncode} after {self.seconds:.1f} s\n"
                f"--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}")


def run(args: list, cwd: Path, env: dict | None = None, timeout: float = TIMEOUT) -> Result:
    started = time.perf_counter()
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=clean_env(env), capture_output=True, text=True,
                          timeout=timeout)
    return Result([str(a) for a in args], proc.returncode, proc.stdout, proc.stderr,
                  time.perf_counter() - started)


def mlops(cwd: Path, *args, env: dict | None = None, timeout: float = TIMEOUT) -> Result:
    """``mlops-nb *args`` in ``cwd``, as a user would run it."""
    return run([CLI, *args], cwd, env, timeout)


def mlops_ok(cwd: Path, *args, **kwargs) -> Result:
    result = mlops(cwd, *args, **kwargs)
    assert result.returncode == 0, str(result)
    return result


def py(project: Path, code: str, *args, env: dict | None = None, timeout: float = TIMEOUT) -> Result:
    """A Python snippet in a fresh interpreter, in ``project`` with its settings and model store (BentoML's
    home is fixed at its first import: a subprocess keeps every project's store apart)."""
    extra = {"MLOPS_NB_SETTINGS": project / "settings.ini", "BENTOML_HOME": project / "data" / "bentoml",
             **(env or {})}
    return run([PYTHON, "-c", code, *args], project, extra, timeout)


def py_json(project: Path, code: str, *args, **kwargs):
    """Run ``code``, which prints one JSON document as its last line of stdout; returns it."""
    result = py(project, code, *args, **kwargs)
    assert result.returncode == 0, str(result)
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------------
# the project


def make_project(folder: Path) -> Path:
    """A project folder as a user has it: the sample project (small sample baked into settings.ini),
    plus the bentofile and the lock file a Bento build needs."""
    conftest.make_project(folder)
    for name in SERVING_FILES:
        shutil.copy2(REPO / name, folder / name)
    return folder


def versions(project: Path) -> list[dict]:
    return mlops_ok(project, "models", "list", "--json").json()


def aliases(project: Path) -> dict[str, str]:
    return {a: r["version"] for r in versions(project) for a in r["aliases"]}


def audit(project: Path) -> list[dict]:
    """The alias audit log, oldest first."""
    return sorted(mlops_ok(project, "models", "audit", "--json").json(), key=lambda r: r["seq"])


@dataclass
class Built:
    """The session's project, never changed after it is built: copy it to change anything."""
    pristine: Path
    second: Result
    v1: str          # the champion (run 1)
    v2: str          # a refused candidate (run 2)

    def copy(self, dest: Path) -> Path:
        shutil.copytree(self.pristine, dest, symlinks=True)
        (dest / "data" / ".run.lock").unlink(missing_ok=True)
        return dest

    def version(self, v: str) -> dict:
        return next(r for r in versions(self.pristine) if r["version"] == v)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Built:
    root = tmp_path_factory.mktemp("served")
    project = make_project(root / "pristine")
    first = mlops(project, "run", "--quiet")
    assert first.returncode == 0, str(first)
    after_first = aliases(project)
    assert "champion" in after_first, f"the first run promoted nothing:\n{first}"
    second = mlops(project, "run", "--quiet", *SECOND_RUN)
    assert second.returncode == 0, str(second)
    rows = versions(project)
    assert len(rows) == 2, f"two runs should register two versions: {[r['version'] for r in rows]}"
    v1 = after_first["champion"]
    (v2,) = [r["version"] for r in rows if r["version"] != v1]
    return Built(project, second, v1, v2)


@pytest.fixture
def served_copy(served, tmp_path) -> Path:
    """A private copy of the session project, for a test that changes it."""
    return served.copy(tmp_path / "project")


# --------------------------------------------------------------------------------------------------
# data


def sample_rows(project: Path, n: int = 200):
    """``n`` rows of the test months, the record's columns only, read from the warehouse (read-only), in the
    feature table's order; rows spread over the whole split."""
    from mlops_nb.data import features, warehouse
    from mlops_nb.lib.transforms import RECORD

    receipt = json.loads((project / "data" / "products" / "features.json").read_text())
    with warehouse.connect(path=project / "data" / "warehouse.duckdb") as con:
        rows = features.load(con, receipt["table_name"], ["test"])
    step = max(1, len(rows) // n)
    return rows.iloc[::step].head(n)[list(RECORD)].reset_index(drop=True)


def _plain(value):
    """A frame's cell as JSON: NaN/None -> null, numpy scalars -> Python (whole numbers of the integer fields
    stay numbers: pydantic takes 2013.0 for an int)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def as_records(frame) -> list[dict]:
    """Rows as JSON records, every record field present (null when unknown)."""
    from mlops_nb.serving.schemas import INTEGER_FIELDS

    out = []
    for row in frame.to_dict(orient="records"):
        rec = {k: _plain(v) for k, v in row.items()}
        for k in INTEGER_FIELDS:
            if rec.get(k) is not None:
                assert float(rec[k]).is_integer(), (k, rec[k])
                rec[k] = int(rec[k])
        out.append(rec)
    return out


def as_columns(frame) -> dict[str, list]:
    records = as_records(frame)
    return {name: [r[name] for r in records] for name in frame.columns}


def load_estimator(project: Path, version: str):
    """The stored estimator of a version, from its folder in the model store, checked against its sha256
    (what ``registry.load`` does once BentoML has found the folder)."""
    from mlops_nb.run import products

    d = store_dir(project, version)
    info = json.loads((d / "model.json").read_text())
    return products.load_model(d / "model.joblib", info["model_sha256"])


def offline_p_late(project: Path, version: str, frame) -> list[float]:
    from mlops_nb.lib.model import predict_proba

    return predict_proba(load_estimator(project, version), frame).tolist()


# --------------------------------------------------------------------------------------------------
# servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A real `mlops-nb serve` / `bentoml serve` process (its own process group), its log in a file."""
    args: list
    cwd: Path
    env: dict
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    returncode: int | None = None
    project: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        cmd = [str(a).replace("{port}", str(self.port)) for a in self.args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.cwd, env=clean_env(self.env), stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}) before it was ready:\n"
                                     f"{self.log()[-5000:]}")
            if self.ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"the server was not ready after {timeout} s:\n{self.log()[-5000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM to the process group (the service flushes its recorder on shutdown), then wait."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._reap_group()
        self.returncode = self.proc.returncode
        self._log.close()
        return self.returncode

    def _reap_group(self) -> None:
        """Workers of the group that outlived the arbiter: wait for them briefly, then kill them."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def serve(project: Path, log_dir: Path, name: str = "server", **settings) -> Server:
    """`mlops-nb serve` of ``project`` with MLOPS_NB_* overrides given as SECTION__KEY=value; started."""
    env = {f"MLOPS_NB_{k.upper()}": v for k, v in settings.items()}
    return Server([CLI, "serve", "--port", "{port}"], project, env, log_dir / f"{name}.log",
                  project=project).start()


@pytest.fixture(scope="session")
def champion_server(served, tmp_path_factory):
    """`mlops-nb serve` of a copy of the session project, champion mode, serving.max_rows = 50.
    Shared by test_serving.py and test_serving_fuzz.py; nothing may change its project."""
    root = tmp_path_factory.mktemp("champion-server")
    project = served.copy(root / "project")
    server = serve(project, root, "champion", SERVING__MAX_ROWS=MAX_ROWS)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def client(server: Server):
    import httpx

    return httpx.Client(base_url=server.url, timeout=60)
