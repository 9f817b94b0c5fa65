"""`mlops-nb lab`: JupyterLab with the task notebooks (.py) opening as notebooks."""
from __future__ import annotations

import sys
from pathlib import Path


def lab_command(port: int, ip: str = "127.0.0.1", extra=()) -> list[str]:
    """jupyter lab with Ploomber's server extensions off: they wrap jupytext's contents manager and every
    /api/contents call then fails with HTTP 500."""
    import os

    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--ip={ip}", f"--port={port}", "--no-browser",
           "--ServerApp.jpserver_extensions={'ploomber': False, 'ploomber_extension': False}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + list(extra)


def cmd_lab(args) -> int:
    import subprocess

    return subprocess.call(lab_command(args.port, args.ip, args.extra))
