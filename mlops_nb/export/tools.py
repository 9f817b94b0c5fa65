"""The exporters' own environments: Apache Airflow, the kfp SDK, MLflow, a Kubernetes schema validator and the CI
files' checkers each live in an environment of their own, not in the project's lock (their dependencies would pin
the project's). Each is made from ``requirements/<tool>.txt`` (a Python virtual environment, pip from the package
index) or ``requirements/<tool>.npm`` (Node.js packages, one ``package@exact-version`` a line, npm from its
registry) by ``mlops-nb export tools`` (``make tools``), under ``export.tools_dir``, in a folder named by the
requirements' content: a changed file makes a new one, and an unchanged one is kept between runs and clones (CI's
cache). Nothing is installed at export time: a missing environment is an ExportError that says how to make it.
"""
from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

from .. import config
from ..errors import ExportError, did_you_mean

REQUIREMENTS = Path(__file__).parent / "requirements"
KINDS = (".txt", ".npm")  # pip's requirements, npm's packages
DONE = ".installed"  # written last: an environment without it was cut short and is made again
NPM_PACKAGE = re.compile(r"^(@[\w.-]+/)?[\w.-]+@\d+\.\d+\.\d+(-[\w.]+)?$")  # name@exact-version, no range


def names() -> list[str]:
    return sorted({p.stem for kind in KINDS for p in REQUIREMENTS.glob(f"*{kind}")})


def requirements(tool: str) -> Path:
    found = [REQUIREMENTS / f"{tool}{kind}" for kind in KINDS if (REQUIREMENTS / f"{tool}{kind}").is_file()]
    if not found:
        raise ExportError(f"No exporter environment named {tool!r}; they are {names()}.{did_you_mean(tool, names())}")
    if len(found) > 1:
        raise ExportError(f"The {tool} environment has two requirements files, {[p.name for p in found]}; keep one "
                          f"of them in {REQUIREMENTS}.")
    return found[0]


def npm_packages(path: Path) -> list[str]:
    """The packages of an ``.npm`` file: one ``package@exact-version`` a line (blank lines and ``#`` comments
    skipped); a range would install another version tomorrow, so it is refused."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line and not NPM_PACKAGE.match(line):
            raise ExportError(f"{path.name} line {number}: expected package@exact-version (e.g. left-pad@1.3.0), "
                              f"found {line!r}. Pin the exact version the environment was tested with.")
        if line:
            out.append(line)
    if not out:
        raise ExportError(f"{path} names no package; write one package@exact-version a line.")
    return out


def env_dir(settings: config.Settings, tool: str) -> Path:
    digest = hashlib.sha256(requirements(tool).read_bytes()).hexdigest()[:12]
    return Path(settings.export.tools_dir).expanduser() / f"{tool}-{digest}"


def bin_dir(settings: config.Settings, tool: str) -> Path:
    """The environment's bin folder (an npm environment's: ``node_modules/.bin``); an ExportError naming the
    command that makes it when it is not there."""
    folder = env_dir(settings, tool)
    if not (folder / DONE).is_file():
        raise ExportError(f"The {tool} environment is not installed (expected in {folder}). Make it once with "
                          f"`mlops-nb export tools {tool}` (or `make tools`, every exporter's); it is kept there.")
    return folder / "node_modules" / ".bin" if requirements(tool).suffix == ".npm" else folder / "bin"


def create(settings: config.Settings, tool: str, say=print) -> Path:
    """Make ``tool``'s environment unless it is there; returns its folder. The only step that downloads."""
    folder = env_dir(settings, tool)
    if (folder / DONE).is_file():
        return folder
    reqs = requirements(tool)
    packages = npm_packages(reqs) if reqs.suffix == ".npm" else None
    shutil.rmtree(folder, ignore_errors=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    say(f"making the {tool} environment in {folder} (from {reqs.name}) ...")
    if packages is None:
        steps = [[sys.executable, "-m", "venv", str(folder)],
                 [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "-r", str(reqs)]]
    else:
        folder.mkdir()
        steps = [["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", *packages]]
    try:
        for step in steps:
            subprocess.run(step, check=True, env=config.child_environment())
    except FileNotFoundError as e:
        needs = "Node.js 20 or newer and npm (e.g. `apt-get install nodejs npm`)" if packages else "Python's venv"
        raise ExportError(f"Could not make the {tool} environment: {e.filename} is not installed; {reqs.name} "
                          f"needs {needs}.") from None
    except (OSError, subprocess.CalledProcessError) as e:
        raise ExportError(f"Could not make the {tool} environment in {folder}: {e}. Its requirements are {reqs}; "
                          f"{'npm' if packages else 'pip'}'s output above says what failed.") from None
    (folder / DONE).write_text(reqs.read_text(encoding="utf-8"), encoding="utf-8")
    return folder
