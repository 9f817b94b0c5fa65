"""`make lab` (mlops-nb lab): a real JupyterLab server opens the .py task notebooks as notebooks."""
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from mlops_nb.cli.lab import lab_command

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lab_serves_percent_notebooks_as_notebooks(tmp_path):
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg")}
    proc = subprocess.Popen(lab_command(port, extra=["--ServerApp.token=t", f"--ServerApp.root_dir={ROOT}"]),
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api/contents/notebooks/tasks/train.py?type=notebook&token=t"
        deadline, body = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert r.status == 200
                    body = json.load(r)
                    break
            except OSError:
                time.sleep(0.5)
        assert body is not None, f"lab did not answer: {proc.stderr.read1().decode(errors='replace')[-2000:]}"
        assert body["type"] == "notebook"
        cells = body["content"]["cells"]
        params = [c for c in cells if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1 and "seed" in "".join(params[0]["source"])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
