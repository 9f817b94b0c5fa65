"""`mlops-nb lab [--port N] [--ip ADDR] [JUPYTERLAB OPTIONS...]`: JupyterLab on the project.

Task notebooks (.py percent files and .ipynb) open as notebooks with the values a run would pass them
(``interactive.contents``), saved back without them. JupyterLab reads its settings from the project
(``<data_dir>/lab/user-settings``, so a user's global settings do not change how the project's notebooks
open): .py files open in jupytext's notebook view, no news fetching, no update checks (offline by
default). The server binds 127.0.0.1 with a token (Jupyter's default) unless told otherwise; the kernel is
Jupyter's own Python, the project's venv. Any option this command does not know goes to JupyterLab as it
is (``mlops-nb lab --port 8899 --no-browser``); a ``--`` among them is dropped.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

# JupyterLab settings of the project: file (below the settings folder) -> keys we set (the user's others stay)
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"defaultViewers": {"python": "Jupytext Notebook"}},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
}
CONTENTS_MANAGER = "mlops_nb.interactive.contents.TaskContentsManager"


def lab_command(port: int, ip: str = "127.0.0.1", extra=()) -> list[str]:
    """jupyter lab with our contents manager, and Ploomber's server extensions off: they wrap jupytext's
    contents manager and every /api/contents call then fails with HTTP 500."""
    import os

    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--ip={ip}", f"--port={port}",
           f"--ServerApp.contents_manager_class={CONTENTS_MANAGER}",
           "--ServerApp.jpserver_extensions={'ploomber': False, 'ploomber_extension': False}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + [a for a in extra if a != "--"]


def lab_environment(data_dir: Path) -> dict[str, str]:
    """The environment of the server: JupyterLab's settings and workspaces in the project, with our keys
    written into the settings files first."""
    from .. import config

    folder = Path(data_dir) / "lab"
    write_settings(folder / "user-settings")
    return config.child_environment({"JUPYTERLAB_SETTINGS_DIR": str(folder / "user-settings"),
                                     "JUPYTERLAB_WORKSPACES_DIR": str(folder / "workspaces")})


def write_settings(folder: Path) -> None:
    """Our keys into the project's JupyterLab settings files, keeping what else they hold. A file that is
    not plain JSON (JupyterLab writes JSON5 with comments when edited by hand) is left as it is."""
    for name, keys in LAB_SETTINGS.items():
        path = folder / name
        current = {}
        if path.is_file():
            try:
                current = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                print(f"mlops-nb lab: {path} is not plain JSON; left as it is (it should set {keys})", file=sys.stderr)
                continue
        merged = {**current, **{k: ({**current.get(k, {}), **v} if isinstance(v, dict) else v)
                                for k, v in keys.items()}}
        if merged != current or not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(merged, indent=2) + "\n", encoding="utf-8")


def cmd_lab(args) -> int:
    import subprocess

    from .. import config

    settings = config.load(check_inputs=False)
    return subprocess.call(lab_command(args.port, args.ip, args.extra), cwd=settings.root,
                           env=lab_environment(settings.path("data_dir")))
