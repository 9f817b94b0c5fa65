"""`mlops-nb serve` and `mlops-nb build`: `bentoml serve` / `bentoml build`, pinned and offline.

A Bento must pin its model: ``build`` resolves the registry's aliases to exact tags now, writes them to
``pinned.json`` in a fresh build context with the package and the settings, and asks ``bentoml build``
for those models only. Package locking is off (it would resolve against the index: no network here).

A Bento runs anywhere: it carries its settings (every key, as loaded when it was built, overrides
included) and reads them, never a project's (``config.serving_settings``); it never reads the run's
inputs. ``bentoml export`` / ``bentoml import`` move it with its models to another store. It carries the
feature definitions too (``features.yaml``, when the project has them), so it knows which fields the online
store provides; the store itself is data, not part of the Bento: the embedded one is read from
``$BENTOML_HOME/featurestore`` (``online.store_dir``), and a store that is not there means missing values.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .. import config, registry
from ..data import warehouse
from ..errors import MlopsNbError

SERVICE = "mlops_nb.serving.service:FlightDelay"
RECORD_FILE = "record.yaml"  # a record file's place in a Bento
DEFINITIONS_FILE = "features.yaml"  # the feature definitions' place in a Bento
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class BuildError(MlopsNbError):
    """`bentoml build` failed."""


def _absolute(settings: config.Settings, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else settings.root / p


def tool_env(settings: config.Settings) -> dict:
    return config.tool_environment(settings)


def bento_env(settings: config.Settings) -> dict:
    """The environment of `bentoml serve TAG` from a project: a BentoML command's (``tool_env``) without the
    project's settings file, so that only the model store, where the project keeps its Bentos, comes from
    the project. The Bento reads the settings built into it (the user's MLOPS_NB_* overrides still apply)."""
    env = tool_env(settings)
    env.pop(config.ENV_SETTINGS, None)
    return env


def bentoml_cli() -> str:
    return str(Path(sys.executable).with_name("bentoml"))


def serve_command(settings: config.Settings, port: int, host: str = "127.0.0.1", bento: str | None = None) -> list[str]:
    return [bentoml_cli(), "serve", bento or SERVICE, "--host", host, "--port", str(port)]


def pinned_models(settings: config.Settings, purpose: str = "to build a Bento of") -> dict[str, dict]:
    with warehouse.connect(settings=settings) as con:
        return registry.served(con, purpose)


def bentofile(text: str, carried: list[str], tags: list[str]) -> str:
    """The project's bentofile.yaml with the models to pack, and the files the build put beside the package
    added to its ``include`` list when it has one that lacks them (no list: BentoML takes every file)."""
    import yaml

    spec = yaml.safe_load(text) or {}
    include = spec.get("include")
    if include is not None:
        spec["include"] = list(include) + [name for name in carried if name not in include]
    spec["models"] = list(tags)
    return yaml.safe_dump(spec, sort_keys=False)


def build(settings: config.Settings) -> str:
    """Build the Bento; returns its tag."""
    models = pinned_models(settings)
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bento-") as tmp:
        ctx = Path(tmp)
        shutil.copytree(PACKAGE_DIR, ctx / "mlops_nb", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("bentofile.yaml", "requirements.lock"):
            if name == "bentofile.yaml" or (settings.root / name).is_file():  # a project of `init` has no lock
                shutil.copy2(settings.root / name, ctx / name)
        carried = []
        if settings.data.record:  # the record file goes in, and the Bento's settings name it there
            shutil.copy2(_absolute(settings, settings.data.record), ctx / RECORD_FILE)
            settings = settings.replace({"data.record": RECORD_FILE})
            carried.append(RECORD_FILE)
        elif _absolute(settings, settings.features.definitions).is_file():  # and so do the feature definitions
            shutil.copy2(_absolute(settings, settings.features.definitions), ctx / DEFINITIONS_FILE)
            settings = settings.replace({"features.definitions": DEFINITIONS_FILE})
            carried.append(DEFINITIONS_FILE)
        (ctx / config.SETTINGS_FILE).write_text(settings.ini_text(
            f"The settings this Bento was built with (mlops-nb build of {settings.file}): every key, with\n"
            "the build's MLOPS_NB_* overrides. The service reads this file; MLOPS_NB_* where it runs override it."))
        (ctx / config.PINNED_FILE).write_text(json.dumps({"models": models}, indent=2, sort_keys=True))
        (ctx / "bentofile.yaml").write_text(bentofile((ctx / "bentofile.yaml").read_text(), carried,
                                                      sorted({m["tag"] for m in models.values()})))
        res = subprocess.run([bentoml_cli(), "build", ".", "--output", "tag"], cwd=ctx, capture_output=True,
                             text=True, env=tool_env(settings), timeout=600)
    if res.returncode != 0:
        raise BuildError(f"bentoml build failed (exit {res.returncode}):\n{(res.stderr or res.stdout)[-3000:]}")
    found = re.findall(r"__tag__:(\S+)", res.stdout) or re.findall(r"(\S+:\S+)\s*$", res.stdout.strip())
    if not found:
        raise BuildError(f"bentoml build did not print a tag:\n{res.stdout[-2000:]}")
    return found[-1]
