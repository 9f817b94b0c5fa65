"""`mlops-nb export kfp`: the pipeline compiled by the kfp SDK, loaded back by kfp (its own parser, its own
placeholder resolution) and checked against pipeline.yaml read independently; the steps it resolves to are run
in kfp's order on a real project; the pipeline image's Dockerfile, parsed by dockerfile-parse, installs exactly
requirements.lock. Docker is not used (there is none here)."""
from __future__ import annotations

import graphlib
import json
import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from conftest import REPO, downstream, folder_bytes, last_run, pipeline_graph, run_cli, run_ok

IMAGE = "registry.example/mlops-nb:1"
PIPELINE_NAME = "flight-delay"  # registry.model_name of a sample project (flight_delay) as kfp names a pipeline
CLAIM = "data_volume_claim"

# Run by the kfp environment's python: the compiled file loaded back by kfp, each task's command resolved by kfp's
# local runner's placeholder code with the pipeline's defaults (and the arguments given), printed as JSON.
INSPECT = r'''
import json, sys, tempfile
from google.protobuf import json_format
from kfp import components
from kfp.kubernetes import kubernetes_executor_config_pb2 as k8s
from kfp.local import executor_input_utils, placeholder_utils

path, arguments = sys.argv[1], json.loads(sys.argv[2])
loaded = components.load_component_from_file(path)
spec = loaded.pipeline_spec  # parsed strictly into kfp's PipelineSpec
platform = json_format.MessageToDict(loaded.component_spec.platform_spec)
executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
root = spec.root
defaults = {name: json_format.MessageToDict(p.default_value) for name, p in root.input_definitions.parameters.items()}
values = {**defaults, **arguments}
names = {key: task.task_info.name for key, task in root.dag.tasks.items()}
tasks = {}
with tempfile.TemporaryDirectory() as tmp:
    for key, task in root.dag.tasks.items():
        component = spec.components[task.component_ref.name]
        container = json_format.MessageToDict(spec.deployment_spec)["executors"][component.executor_label]["container"]
        given = {n: values[p.component_input_parameter] for n, p in task.inputs.parameters.items()}
        executor_input = executor_input_utils.construct_executor_input(component, given, tmp, True)
        command = placeholder_utils.replace_placeholders(
            container["command"] + container.get("args", []), json_format.MessageToDict(executor_input),
            spec.pipeline_info.name, key, tmp, "inspect")
        config = json_format.ParseDict(executors[component.executor_label], k8s.KubernetesExecutorConfig())
        mounts = [{"path": m.mount_path, "claim": values[m.pvc_name_parameter.component_input_parameter]}
                  for m in config.pvc_mount]
        tasks[names[key]] = {"after": sorted(names[d] for d in task.dependent_tasks), "image": container["image"],
                             "command": command, "mounts": mounts, "cache": task.caching_options.enable_cache}
print(json.dumps({"name": spec.pipeline_info.name, "defaults": defaults, "tasks": tasks}))
'''

PARSE_DOCKERFILE = r'''
import json, sys
from dockerfile_parse import DockerfileParser
with open(sys.argv[1], "rb") as f:
    parser = DockerfileParser(fileobj=f)
    instructions = [[i["instruction"], i["value"]] for i in parser.structure]
    print(json.dumps({"base": parser.baseimage, "instructions": instructions}))
'''


@pytest.fixture(scope="module")
def kfp_python(tool_bin) -> Path:
    return tool_bin("kfp") / "python"


def in_kfp(python: Path, script: str, *args, folder: Path) -> dict:
    path = folder / "script.py"
    path.write_text(script, encoding="utf-8")
    proc = subprocess.run([str(python), str(path), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def export(project: Path, out: Path, *args):
    result = run_ok(project, "export", "kfp", "--image", IMAGE, "--out", out, *args)
    assert result.stdout.split() == [str(out)], str(result)
    return result


def test_the_compiled_pipeline_has_one_step_per_task_with_the_plans_edges(project, kfp_python, tmp_path):
    out = tmp_path / "kfp" / "pipeline.yaml"
    export(project, out)
    loaded = in_kfp(kfp_python, INSPECT, out, "{}", folder=tmp_path)
    graph = pipeline_graph(project)

    assert loaded["name"] == PIPELINE_NAME
    assert loaded["defaults"] == {CLAIM: f"{PIPELINE_NAME}-data"}  # no -p: the claim is the only parameter
    assert set(loaded["tasks"]) == set(graph)
    for name, task in loaded["tasks"].items():
        assert task["after"] == sorted(graph[name]["upstream"]), name
        assert task["image"] == IMAGE
        assert task["command"] == ["mlops-nb", "run", "--task", name, "--only"]
        assert task["mounts"] == [{"path": "/project/data", "claim": f"{PIPELINE_NAME}-data"}]
        assert task["cache"] is False, "kfp's cache would skip a task whose data changed"
    other = in_kfp(kfp_python, INSPECT, out, json.dumps({CLAIM: "team-volume"}), folder=tmp_path)
    assert {m["claim"] for t in other["tasks"].values() for m in t["mounts"]} == {"team-volume"}


@pytest.mark.slow
def test_overrides_are_pipeline_parameters_and_the_resolved_steps_run_the_pipeline(project, kfp_python, tmp_path):
    out = tmp_path / "pipeline.yaml"
    export(project, out, "-p", "seed=7")  # a bare key is given its section, as a run does
    loaded = in_kfp(kfp_python, INSPECT, out, "{}", folder=tmp_path)
    assert loaded["defaults"] == {CLAIM: f"{PIPELINE_NAME}-data", "model__seed": "7"}
    for name, task in loaded["tasks"].items():
        assert task["command"] == ["mlops-nb", "run", "--task", name, "--only", "-p", "model.seed=7"]
    given = in_kfp(kfp_python, INSPECT, out, json.dumps({"model__seed": "11"}), folder=tmp_path)
    assert {t["command"][-1] for t in given["tasks"].values()} == {"model.seed=11"}  # set when the run starts

    graph = pipeline_graph(project)
    order = list(graphlib.TopologicalSorter({n: t["after"] for n, t in loaded["tasks"].items()}).static_order())
    ran = set()
    for name in order:
        command = loaded["tasks"][name]["command"]
        result = run_ok(project, *command[1:], "--quiet")
        assert set(result.task_table()) == {name}, str(result)
        ran |= result.tasks_with("ran")
        assert last_run(project)["status"] == ("succeeded" if result.tasks_with("ran") else "up-to-date")
    assert ran == downstream(graph, "train"), "the seed re-runs train and what follows it, nothing else"
    train = json.loads((project / "data" / "products" / "train.json").read_text(encoding="utf-8"))
    assert train["seed"] == 7
    after = run_ok(project, "run", "--quiet", "-p", "model.seed=7")
    assert after.tasks_with("ran") == set(), "the steps left the project up to date, as one run would"


def test_the_pipeline_image_installs_exactly_the_locked_versions(project, kfp_python, tmp_path):
    from mlops_nb import config
    from mlops_nb.export import kfp

    dockerfile = tmp_path / "Dockerfile.pipeline"
    dockerfile.write_text(kfp.pipeline_dockerfile(config.load(project / "settings.ini", environ={})),
                          encoding="utf-8")
    parsed = in_kfp(kfp_python, PARSE_DOCKERFILE, dockerfile, folder=tmp_path)
    assert parsed["base"] == "python:3.11-slim"

    contexts = {None: project, "mlops-nb": REPO}  # the build's context, and the one named mlops-nb
    image: dict[str, Path] = {}  # path in the image -> the file of a build context copied there
    workdir, user, entrypoint, volumes, runs = "/", "root", None, [], []
    for instruction, value in parsed["instructions"]:
        if instruction == "WORKDIR":
            workdir = str(Path(workdir) / value)
        elif instruction == "USER":
            user = value
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(value)
        elif instruction == "VOLUME":
            volumes += value.split()
        elif instruction == "RUN":
            runs += [shlex.split(part) for part in value.split("&&")]
        elif instruction == "COPY":
            words = json.loads(value) if value.startswith("[") else shlex.split(value)
            flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--"))
            *sources, target = [w for w in words if not w.startswith("--")]
            context = contexts[flags.get("from")]
            dest = str(Path(workdir) / target)
            for source in sources:
                src = context / source
                assert src.exists(), f"COPY {source}: not in the build context {context}"
                if src.is_dir():
                    image.update({str(Path(dest) / f.relative_to(src)): f for f in src.rglob("*") if f.is_file()})
                else:
                    image[str(Path(dest) / src.name) if len(sources) > 1 or target.endswith("/") else dest] = src

    installs = [words[2:] for words in runs if words[:2] == ["pip", "install"]]
    assert len(installs) == 2, installs
    lock, package = installs
    assert "--no-deps" in lock and "--no-deps" in package, "pip would resolve dependencies beyond the lock"
    assert [w for w in lock if not w.startswith("--")] == ["-r", "/opt/mlops-nb/requirements.lock"]
    assert image["/opt/mlops-nb/requirements.lock"] == REPO / "requirements.lock"
    (source,) = [w for w in package if not w.startswith("--")]
    assert image[f"{source}/pyproject.toml"] == REPO / "pyproject.toml"
    assert image[f"{source}/mlops_nb/__init__.py"] == REPO / "mlops_nb" / "__init__.py"
    assert "--no-build-isolation" in package, "an isolated build would install setuptools from the index"

    # what `pip install --no-deps -r` installs is exactly the lock's pins: each one exact, each the version the
    # project's environment (made from the same lock, where every test passes) has
    installed = {normalize(d.metadata["Name"]): d.version for d in metadata.distributions()}
    pins = {}
    for line in (REPO / "requirements.lock").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)", line.strip())
            assert m, f"requirements.lock: {line!r} is not an exact pin"
            pins[normalize(m.group(1))] = m.group(2)
    assert "setuptools" in pins, "the package is built without isolation, with the locked setuptools"
    assert {name: installed.get(name) for name in pins} == pins

    assert workdir == "/project" and entrypoint == ["mlops-nb"]
    assert user.split(":")[0] not in ("root", "0")
    assert "/project/data" in volumes
    chown = [w for w in runs if w[:1] == ["chown"]]
    assert chown and {"/project/data", "/project/reports"} <= set(chown[0]), "the user writes data and reports"

    # everything the pipeline reads is in the image at its path in the project (so fingerprints agree)
    spec = yaml.safe_load((project / "pipeline.yaml").read_text(encoding="utf-8"))
    needed = ["pipeline.yaml", "settings.ini", "features.yaml", *(t["source"] for t in spec["tasks"])]
    needed += [str(f.relative_to(project)) for f in (project / "inputs").iterdir()]  # the small data source
    for rel in needed:
        assert image.get(f"/project/{rel}") == project / rel, f"{rel} is not in the image at /project/{rel}"
    assert not any(path.startswith("/project/data/") for path in image), "the data folder is the volume's"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_export_needs_an_image(project):
    result = run_cli(project, "export", "kfp")
    assert result.returncode == 2 and "--image" in result.stderr, str(result)


def test_bad_output_or_overrides_write_nothing(project, tmp_path):
    before = folder_bytes(project)
    unwritable = run_cli(project, "export", "kfp", "--image", IMAGE, "--out", project / "settings.ini" / "p.yaml")
    assert unwritable.returncode == 7, str(unwritable)
    assert "Cannot write" in unwritable.stderr and "Traceback" not in unwritable.stderr, unwritable.stderr

    folder = run_cli(project, "export", "kfp", "--image", IMAGE, "--out", tmp_path)
    assert folder.returncode == 7 and "pipeline.yaml" in folder.stderr, str(folder)

    out = tmp_path / "kfp" / "pipeline.yaml"
    typo = run_cli(project, "export", "kfp", "--image", IMAGE, "--out", out, "-p", "model.sed=7")
    assert typo.returncode == 7 and "Did you mean 'model.seed'?" in typo.stderr, str(typo)
    value = run_cli(project, "export", "kfp", "--image", IMAGE, "--out", out, "-p", "model.seed=-1")
    assert value.returncode == 7 and "model.seed" in value.stderr, str(value)

    missing = run_cli(project, "export", "kfp", "--image", IMAGE, "--out", out,
                      env={"MLOPS_NB_EXPORT__TOOLS_DIR": str(tmp_path / "no-tools")})
    assert missing.returncode == 7 and "mlops-nb export tools kfp" in missing.stderr, str(missing)

    assert list(tmp_path.iterdir()) == [], "a refused export wrote something"
    assert folder_bytes(project) == before
