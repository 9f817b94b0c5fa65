"""Task notebooks by hand (``mlops-nb lab``, ``mlops_nb.interactive``): a real JupyterLab server serves each
task notebook of a built project with a run's values injected; run top to bottom in a real kernel it works
on the last run's products and writes its own to the scratch folder; saved back, the .py file is byte for
byte what it was; in headless Chromium, opening a task notebook from the file browser shows the notebook
view. Without the upstream products, the notebook stops at the injected cell naming what to run."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from browser import run_chromium
from conftest import CLI, PRODUCTS, REPO, cli_env, folder_bytes, pipeline_graph
from mlops_nb.cli.lab import LAB_SETTINGS, lab_command, write_settings
from mlops_nb.run.notebooks import INJECTED_TAG

TOKEN = "t0k3n"
SCRATCH = Path("data/interactive")
ARTIFACTS = REPO / "build" / "test-artifacts"  # git-ignored


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """``mlops-nb lab`` started in a project as a user would, with JupyterLab's options after ours."""

    def __init__(self, project: Path, tmp: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = cli_env({"JUPYTER_RUNTIME_DIR": str(tmp / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp / "config"),
                       "JUPYTER_DATA_DIR": str(tmp / "jupyter-data"), "HOME": str(tmp)})
        self.proc = subprocess.Popen([str(CLI), "lab", "--port", str(self.port), "--no-browser", "--",
                                      f"--ServerApp.token={TOKEN}"], cwd=project, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"mlops-nb lab exited: {self.proc.stderr.read().decode(errors='replace')[-3000:]}")
            try:
                self.call("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("mlops-nb lab did not answer within 120 s")

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.base}{path}", data=data, method=method,
                                     headers={"Authorization": f"token {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture
def lab(project, tmp_path):
    server = Lab(project, tmp_path)
    yield server
    server.stop()


def injected(nb: dict) -> tuple[int, str]:
    """(index, source) of the injected cell; it must follow the parameters cell."""
    cells = nb["cells"]
    at = [i for i, c in enumerate(cells) if INJECTED_TAG in c["metadata"].get("tags", [])]
    assert len(at) == 1, [c["metadata"] for c in cells]
    assert "parameters" in cells[at[0] - 1]["metadata"].get("tags", [])
    source = cells[at[0]]["source"]
    return at[0], source if isinstance(source, str) else "".join(source)


def values_of(source: str) -> dict:
    namespace: dict = {}
    exec(source, namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def execute(nb: dict, cwd: Path):
    """Run a notebook top to bottom in a real kernel of this venv, started in ``cwd`` (JupyterLab starts a
    notebook's kernel in the notebook's folder)."""
    import nbformat
    from nbclient import NotebookClient

    node = nbformat.from_dict(nb)
    NotebookClient(node, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(cwd)}}).execute()
    return node


@pytest.mark.slow
def test_task_notebooks_run_by_hand_on_the_last_runs_products(project, lab):
    tasks = list(pipeline_graph(project))
    products_before = folder_bytes(project / PRODUCTS)
    for name in tasks:
        path = project / "notebooks" / "tasks" / f"{name}.py"
        on_disk = path.read_bytes()
        model = lab.call("GET", f"/api/contents/notebooks/tasks/{name}.py?type=notebook&content=1")
        assert model["type"] == "notebook"
        _, source = injected(model["content"])
        values = values_of(source)
        for upstream, products in values["upstream"].items():  # the last run's products, as a run passes them
            for p in (products.values() if isinstance(products, dict) else [products]):
                assert Path(p).is_relative_to(project / PRODUCTS) and Path(p).exists(), (name, upstream, p)
        own = values["product"].values() if isinstance(values["product"], dict) else [values["product"]]
        assert all(Path(p).is_relative_to(project / SCRATCH) for p in own), (name, values["product"])
        assert "warehouse_file" not in values or Path(values["warehouse_file"]).is_absolute()

        ran = execute(model["content"], path.parent)
        written = [p for p in own if not p.endswith(".ipynb")]  # the executed notebook: what the user has open
        assert written and all(Path(p).exists() for p in written), f"{name} ran but did not write {written}"
        outputs = [o for c in ran.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name

        # saved from JupyterLab (with the injected cell and outputs): the file is what it was
        lab.call("PUT", f"/api/contents/notebooks/tasks/{name}.py",
                 {"type": "notebook", "format": "json", "content": model["content"]})
        assert path.read_bytes() == on_disk, f"saving {name}.py changed the file"
    assert folder_bytes(project / PRODUCTS) == products_before, "a notebook run by hand wrote the run's products"
    # the scratch metrics are the last run's: the same model scored on the same rows
    scratch = json.loads((project / SCRATCH / "metrics.json").read_text())
    real = json.loads((project / PRODUCTS / "metrics.json").read_text())
    assert scratch["test"] == real["test"], (scratch, real)


@pytest.mark.slow
def test_the_file_browser_opens_a_task_notebook_as_a_notebook(project, lab, tmp_path):
    """JupyterLab in headless Chromium, the project's settings: a .py task notebook opens in the notebook view
    (what a double click in the file browser opens, through /lab/tree/<path>), injected cell included."""
    url = f"{lab.base}/lab/tree/notebooks/tasks/train.py?token={TOKEN}"
    dom = run_chromium(tmp_path, "--virtual-time-budget=30000", "--window-size=1400,1000", "--dump-dom", url).stdout
    assert "jp-NotebookPanel" in dom and "jp-Cell" in dom, dom[-3000:]
    assert "injected-parameters" in dom or "mlops-nb: the values" in dom, "no injected cell in the view"
    shot = ARTIFACTS / "lab-train-notebook.png"  # kept after the test, for a person to look at
    shot.parent.mkdir(parents=True, exist_ok=True)
    run_chromium(tmp_path, "--virtual-time-budget=30000", "--window-size=1400,1000", f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000


@pytest.mark.slow
def test_lab_settings_are_the_projects(lab, project):
    """News and update checks off, .py files in jupytext's notebook view: JupyterLab's settings API reads them
    from the project (not the user's global settings)."""
    docs = lab.call("GET", "/lab/api/settings/@jupyterlab/docmanager-extension:plugin")
    assert docs["settings"]["defaultViewers"]["python"] == "Jupytext Notebook"
    news = lab.call("GET", "/lab/api/settings/@jupyterlab/apputils-extension:notification")
    assert news["settings"]["fetchNews"] == "false" and news["settings"]["checkForUpdates"] is False
    assert (project / "data" / "lab" / "user-settings").is_dir()


def test_interactive_task_gives_the_injected_values(project):
    from mlops_nb import config, interactive

    settings = config.load(project / "settings.ini")
    values = interactive.task("train", settings=settings)
    _, source = injected(json.loads(json.dumps(interactive.notebook(project / "notebooks/tasks/train.py", settings))))
    assert values_of(source) == values
    assert values["upstream"]["features"]["features"] == str(project / PRODUCTS / "features.json")
    real = interactive.task("train", scratch=False, settings=settings)
    assert real["product"]["model"] == str(project / PRODUCTS / "model.joblib")


def test_a_missing_upstream_product_names_the_task_to_run(project_factory):
    from mlops_nb import config, interactive
    from mlops_nb.errors import PipelineError

    project = project_factory()
    settings = config.load(project / "settings.ini", check_inputs=False)
    with pytest.raises(interactive.UpstreamMissing, match="'features'.*mlops-nb run"):
        interactive.task("train", settings=settings)
    nb = interactive.notebook(project / "notebooks/tasks/train.py", settings)
    _, source = injected(json.loads(json.dumps(nb)))
    with pytest.raises(PipelineError, match="'features'"):
        values_of(source)
    with pytest.raises(PipelineError, match="no task 'trian'.*Did you mean 'train'"):
        interactive.task("trian", settings=settings)


def test_lab_passes_unknown_options_to_jupyterlab():
    cmd = lab_command(8899, extra=["--no-browser", "--", "--ServerApp.token=x"])
    assert cmd[-2:] == ["--no-browser", "--ServerApp.token=x"] and "--" not in cmd
    from mlops_nb.cli import build_parser

    args, unknown = build_parser().parse_known_args(["lab", "--port", "8899", "--no-browser"])
    assert args.port == 8899 and unknown == ["--no-browser"]


def test_lab_settings_keep_the_users_other_keys(tmp_path):
    name = "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings"
    (tmp_path / name).parent.mkdir(parents=True)
    (tmp_path / name).write_text(json.dumps({"autosave": False, "defaultViewers": {"markdown": "Markdown Preview"}}))
    write_settings(tmp_path)
    got = json.loads((tmp_path / name).read_text())
    assert got == {"autosave": False, "defaultViewers": {"markdown": "Markdown Preview", "python": "Jupytext Notebook"}}
    for file, keys in LAB_SETTINGS.items():
        if file != name:  # written whole where there was none
            assert json.loads((tmp_path / file).read_text()) == keys
    digest = hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    write_settings(tmp_path)
    assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
