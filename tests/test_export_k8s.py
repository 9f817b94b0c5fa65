"""`mlops-nb export k8s` (issue #10, part 5): Kubernetes manifests for a Bento's container, checked by the
Kubernetes schemas and by running the Bento as the manifests run it.

The small built project (conftest's ``built``) gets a Bento from `mlops-nb build`; the export goes through the
real CLI, and then:

- every manifest passes kubernetes-validate (``--strict``, offline, Kubernetes 1.31) from the exporter's own
  environment (``tool_bin("k8s")``), and its fields say what a deployment needs (probes, non-root, read-only
  root file system, the pinned champion's tag, the autoscaler's target, the Service's pods);
- the Dockerfile `bentoml containerize` would build from (BentoML's ``bentoml.container.get_containerfile``,
  parsed by dockerfile-parse) installs requirements.lock's versions and nothing the lock does not hold;
- a pod is run as the manifests and that Dockerfile describe it, without Docker (there is none here): a mount
  namespace whose root file system is read-only, the Bento at its place in the image (``COPY --chown``, with its
  models, as containerize's build context holds them) and the manifest's volumes as the only writable places,
  the Dockerfile's user, environment and entrypoint with the manifest's environment and arguments, and a network
  namespace where the probes reach it on a pod address, not on loopback. The Python environment stands in for
  the image's (``uv pip install`` of the same lock). It needs root (mount and network namespaces);
- canary: a second Deployment with the challenger, its share of the replicas, answering as the challenger;
- bad input (an unknown Bento, no Bento for the champion, no champion, a canary without a challenger, an
  unwritable --out) exits 7 with a message saying what to do, and writes nothing.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import conftest
from conftest import REPO, copy_of, query, run_cli, run_ok

K8S_VERSION = "1.31.0"  # the Kubernetes version the manifests are validated against
POD_IP = "10.244.0.7"  # the pod's address in its network namespace (on lo, beside 127.0.0.1)
VENV = Path(sys.executable).parent.parent  # stands in for the image's /app/.venv: installed from the same lock
SERVING_FILES = ("bentofile.yaml", "requirements.lock")  # beside what conftest.make_project copies
ROLLOUT = ["-p", "model.learning_rate=0.05", "-p", "gate.min_roc_auc=0.99"]  # a second version, refused
GOOD = {"year": 2013, "month": 3, "day": 1, "sched_dep_time": 600, "sched_arr_time": 830, "carrier": "UA",
        "origin": "EWR", "dest": "ORD", "distance": 719.0}


# --------------------------------------------------------------------------------------------------
# the project, its Bento, the export


def bento_project(built, folder: Path) -> Path:
    """A private copy of the built sample project with what `mlops-nb build` needs."""
    project = copy_of(built.pristine, folder)
    for name in SERVING_FILES:
        shutil.copy2(REPO / name, project / name)
    return project


def build_bento(project: Path) -> str:
    return run_ok(project, "build").stdout.strip().splitlines()[-1]


def aliases(project: Path) -> dict[str, str]:
    """alias -> model tag, read from the warehouse."""
    return dict(query(project, "SELECT a.alias, v.tag FROM model_aliases a JOIN model_versions v USING (version)"))


def bento_dir(project: Path, tag: str) -> Path:
    name, version = tag.split(":")
    return project / "data" / "bentoml" / "bentos" / name / version


def export(project: Path, out: Path, *args, env: dict | None = None) -> dict[str, list[dict]]:
    """`mlops-nb export k8s` into ``out``: file name -> its YAML documents (the Dockerfile as text)."""
    result = run_ok(project, "export", "k8s", "--out", out, *args, env=env)
    written = {Path(line).name for line in result.stdout.splitlines()}
    assert written == {"deployment.yaml", "service.yaml", "hpa.yaml", "Dockerfile.pipeline"}, str(result)
    return {name: list(yaml.safe_load_all((out / name).read_text())) for name in written if name.endswith(".yaml")}


def validate(tool_bin, out: Path) -> None:
    """kubernetes-validate, strict, against K8S_VERSION: every resource of every manifest passes."""
    files = sorted(out.glob("*.yaml"))
    proc = subprocess.run([str(tool_bin("k8s") / "kubernetes-validate"), "--strict", "-k", K8S_VERSION,
                           *map(str, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    resources = sum(len(list(yaml.safe_load_all(f.read_text()))) for f in files)
    assert proc.stdout.count("passed for resource") == resources, proc.stdout


def kinds(manifests: dict[str, list[dict]], kind: str) -> list[dict]:
    return [d for docs in manifests.values() for d in docs if d["kind"] == kind]


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def named_port(container: dict, port) -> int:
    """A probe's or Service's port (a number, or a name of the container's ports) as a number."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def label_of(tag: str) -> str:
    """A model tag as a label value (63 of [A-Za-z0-9_.-]), independently of the exporter."""
    value = tag.replace(":", ".")
    assert re.fullmatch(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value), value
    return value


@pytest.fixture(scope="module")
def champion_bento(built, tmp_path_factory):
    """(project, Bento tag): the built sample project and a Bento of its champion."""
    project = bento_project(built, tmp_path_factory.mktemp("k8s"))
    return project, build_bento(project)


# --------------------------------------------------------------------------------------------------
# the Bento's Dockerfile, as `bentoml containerize` would build it


def containerfile(project: Path, tag: str, folder: Path, k8s_bin: Path) -> dict:
    """The Dockerfile `bentoml containerize TAG` builds from (BentoML's own ``get_containerfile``), parsed by
    dockerfile-parse in the k8s environment: instructions, ARGs, ENVs (as the last stage sees them)."""
    path = folder / "containerize" / "Dockerfile"  # dockerfile-parse takes a file by this name (or a folder)
    path.parent.mkdir()
    env = conftest.cli_env({"BENTOML_HOME": str(project / "data" / "bentoml")})
    subprocess.run([sys.executable, "-c", "import sys, bentoml; bentoml.container.get_containerfile(sys.argv[1], "
                    "output_path=sys.argv[2])", tag, str(path)], check=True, env=env, timeout=120)
    return json.loads(subprocess.run(
        [str(k8s_bin / "python"), "-c",
         "import json, sys\nfrom dockerfile_parse import DockerfileParser\np = DockerfileParser(sys.argv[1])\n"
         "print(json.dumps({'structure': [{'instruction': s['instruction'], 'value': s['value']} "
         "for s in p.structure], 'args': p.args, 'envs': p.envs}))", str(path)],
        check=True, capture_output=True, text=True, timeout=120).stdout)


def expand(text: str, values: dict) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def instructions(parsed: dict, name: str) -> list[str]:
    return [s["value"] for s in parsed["structure"] if s["instruction"] == name]


def pip_installs(command: str) -> list[list[str]]:
    """The arguments after ``pip install`` of each install in a RUN's shell command (``uv pip``, ``python -m
    pip`` too), split as the shell splits them."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token and set(token) <= set(";&|()"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [c[i + 2:] for c in commands for i in range(len(c) - 1) if c[i:i + 2] == ["pip", "install"]]


def requirement_files(args: list[str]) -> tuple[list[str], list[str]]:
    """(-r files, package arguments) of a pip install's arguments; other options dropped."""
    files, packages, i = [], [], 0
    while i < len(args):
        if args[i] in ("-r", "--requirement"):
            files.append(args[i + 1])
            i += 2
            continue
        if not args[i].startswith("-"):
            packages.append(args[i])
        i += 1
    return files, packages


def pins(path: Path) -> dict[str, str]:
    """name -> version of a requirements file whose every requirement is pinned with ==."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{path.name}: {line} is not pinned"
        name = canonicalize_name(req.name)
        assert out.setdefault(name, spec.version) == spec.version, f"{path.name}: {name} pinned twice, differently"
    return out


# --------------------------------------------------------------------------------------------------
# a pod without Docker: namespaces, a read-only root, the manifest's volumes


POD_SCRIPT = r"""
set -euo pipefail
R="$POD_ROOT"
mount --make-rprivate /
ip link set lo up
ip addr add "$POD_IP/32" dev lo
mount -t tmpfs -o mode=755 pod-root "$R"
for d in usr etc dev sys proc; do mkdir -p "$R/$d"; mount --rbind "/$d" "$R/$d"; done
for l in bin lib lib64 sbin; do ln -s "usr/$l" "$R/$l"; done
# the volumes first: the stand-in venv may lie below one of them (a checkout under /tmp), and must stay visible
for p in $VOLUMES; do mkdir -p "$R$p"; mount -t tmpfs -o mode=1777 emptydir "$R$p"; done
mkdir -p "$R$VENV" "$R$PYTHON_HOME" "$R$BENTO_PATH"
mount --bind "$VENV" "$R$VENV"
mount --bind "$PYTHON_HOME" "$R$PYTHON_HOME"
for d in usr etc sys "$VENV" "$PYTHON_HOME"; do mount -o remount,bind,ro "$R/${d#/}"; done
cp -a "$BUILD_CONTEXT/." "$R$BENTO_PATH/"
chown -R "$POD_UID:$POD_GID" "$R$BENTO_PATH"
mount -o remount,ro "$R"
if touch "$R/written" 2>/dev/null; then echo "the pod's root file system is writable" >&2; exit 3; fi
chroot "$R" /usr/bin/setpriv --reuid="$POD_UID" --regid="$POD_GID" --clear-groups "$@" >"$POD_LOG" 2>&1 &
server=$!
set +e
SERVER_PID=$server "$PROBE_PYTHON" "$PROBE" >"$PROBE_OUT"
rc=$?
kill -TERM "$server"
wait "$server"
for p in $VOLUMES; do (cd "$R$p" && find . -xdev -type f | sed "s|^\.|${p%/}|"); done >"$FILES_OUT"
exit $rc
"""

PROBE_SCRIPT = r"""
import json, os, time, urllib.error, urllib.request

base = f"http://{os.environ['POD_IP']}:{os.environ['POD_PORT']}"


def alive():
    try:
        with open(f"/proc/{os.environ['SERVER_PID']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


started = time.time()
while time.time() - started < 150 and alive() and call(os.environ["READY_PATH"])[0] != 200:
    time.sleep(1)
out = {"ready": call(os.environ["READY_PATH"]), "live": call(os.environ["LIVE_PATH"])}
out["predict"] = call("/predict", {"flights": [json.loads(os.environ["RECORD"])], "key": "k8s"})
time.sleep(3)  # the recorder writes the logs every 2 s
print(json.dumps(out))
"""


def can_make_pods() -> str:
    """'' when this process can make mount and network namespaces, else why not."""
    if os.geteuid() != 0:
        return "a pod without Docker needs root (mount and network namespaces)"
    missing = [t for t in ("unshare", "chroot", "setpriv", "ip") if shutil.which(t) is None]
    return f"missing {', '.join(missing)}" if missing else ""


def run_pod(project: Path, tag: str, deployment: dict, parsed: dict, folder: Path) -> tuple[dict, list[str], str]:
    """Run the Bento as ``deployment`` runs the image ``parsed`` (its Dockerfile) describes (see the module's
    docstring): (the probes' and a prediction's answers, the files written in the volumes, the pod's log)."""
    folder.mkdir()
    envs, args = parsed["envs"], parsed["args"]
    (workdir,) = [expand(w, {**args, **envs}) for w in instructions(parsed, "WORKDIR")]
    (user,) = instructions(parsed, "USER")
    (entrypoint,) = [json.loads(e) for e in instructions(parsed, "ENTRYPOINT")]
    assert user == args["BENTO_USER"], "the image runs as the user its Dockerfile makes"

    context = folder / "context"  # containerize's build context: the Bento and, under models/, its models
    shutil.copytree(bento_dir(project, tag), context)
    for model in yaml.safe_load((context / "bento.yaml").read_text())["models"]:
        name, version = model["tag"].split(":")
        shutil.copytree(project / "data" / "bentoml" / "models" / name / version, context / "models" / name / version)

    spec = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    security = {**spec.get("securityContext", {}), **container.get("securityContext", {})}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert {v["name"] for v in spec["volumes"] if "emptyDir" in v} == set(mounts), "every mount an emptyDir"
    pod_env = {**envs, "VIRTUAL_ENV": str(VENV), "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
               "HOME": f"/home/{user}", **{e["name"]: e["value"] for e in container["env"]}}
    command = ["/usr/bin/env", "-i", "-C", workdir, *[f"{k}={v}" for k, v in pod_env.items()],
               *entrypoint, *container["args"]]
    (folder / "probe.py").write_text(PROBE_SCRIPT)
    port = named_port(container, container["readinessProbe"]["httpGet"]["port"])
    env = {"POD_ROOT": str(folder / "root"), "POD_IP": POD_IP, "POD_PORT": str(port), "VENV": str(VENV),
           "PYTHON_HOME": sys.base_prefix, "BENTO_PATH": envs["BENTO_PATH"], "BUILD_CONTEXT": str(context),
           "POD_UID": str(security["runAsUser"]), "POD_GID": str(security["runAsGroup"]),
           "VOLUMES": " ".join(mounts.values()), "POD_LOG": str(folder / "pod.log"),
           "PROBE_PYTHON": sys.executable, "PROBE": str(folder / "probe.py"), "PROBE_OUT": str(folder / "probe.json"),
           "FILES_OUT": str(folder / "files.txt"), "RECORD": json.dumps(GOOD),
           "READY_PATH": container["readinessProbe"]["httpGet"]["path"],
           "LIVE_PATH": container["livenessProbe"]["httpGet"]["path"], "PATH": os.environ["PATH"]}
    (folder / "root").mkdir()
    proc = subprocess.run(["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                           "bash", "-c", POD_SCRIPT, "pod", *command], env=env, capture_output=True, text=True,
                          timeout=300)
    log = (folder / "pod.log").read_text() if (folder / "pod.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n--- pod log\n{log[-4000:]}"
    return (json.loads((folder / "probe.json").read_text()), (folder / "files.txt").read_text().split(), log)


# --------------------------------------------------------------------------------------------------
# the tests


def test_manifests_pass_the_kubernetes_schemas_and_deploy_the_champions_bento(champion_bento, tool_bin, tmp_path):
    project, tag = champion_bento
    out = tmp_path / "k8s"
    manifests = export(project, out)
    validate(tool_bin, out)

    champion = aliases(project)["champion"]
    pinned = json.loads((bento_dir(project, tag) / "src" / "pinned.json").read_text())["models"]
    assert pinned["champion"]["tag"] == champion and "challenger" not in pinned
    (deployment,) = kinds(manifests, "Deployment")
    container = container_of(deployment)
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert container["image"] == tag, "the image as `bentoml containerize` names it: the Bento's tag"
    assert container["args"][container["args"].index("--host") + 1] == "0.0.0.0"
    assert named_port(container, "http") == 3000
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert named_port(container, container["readinessProbe"]["httpGet"]["port"]) == 3000
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    security = {**template["spec"]["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["BENTOML_HOME"] in {m["mountPath"] for m in container["volumeMounts"]}, "BentoML's home writable"
    assert env["MLOPS_NB_SERVING__MODE"] == "champion"
    assert labels["mlops-nb/model-champion"] == label_of(champion)
    annotations = template["metadata"]["annotations"]
    assert json.loads(annotations["mlops-nb/pinned-models"]) == pinned
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)

    (hpa,) = kinds(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                            "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]

    (svc,) = kinds(manifests, "Service")
    assert svc["spec"]["type"] == "ClusterIP" and selects(svc["spec"]["selector"], labels)
    (port,) = svc["spec"]["ports"]
    assert port["port"] == 80 and named_port(container, port["targetPort"]) == 3000

    from mlops_nb import config
    from mlops_nb.export import kfp

    expected = kfp.pipeline_dockerfile(config.load(project / "settings.ini", environ={}))
    assert (out / "Dockerfile.pipeline").read_text() == expected, "the pipeline's image, as the kfp export renders it"

    named = export(project, tmp_path / "named", "--bento", f"{tag.split(':')[0]}:latest")
    assert named == manifests, "the default Bento is the newest built for the champion"


def test_the_bentos_dockerfile_installs_the_locked_versions(champion_bento, tool_bin, tmp_path):
    """What `bentoml containerize` would build (no Docker here to build it): its Dockerfile installs the app's
    packages from the Bento's env/python/requirements.txt alone, which pins requirements.lock's versions, and
    the lock holds every dependency of its packages, so the install resolves nothing else."""
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project, tag = champion_bento
    parsed = containerfile(project, tag, tmp_path, tool_bin("k8s"))
    values = {**parsed["args"], **parsed["envs"]}
    (workdir,) = [expand(w, values) for w in instructions(parsed, "WORKDIR")]
    app = str(Path(workdir) / "env" / "python" / "requirements.txt")
    installs = [a for run in instructions(parsed, "RUN") for a in pip_installs(run)]
    from_app = []
    for args in installs:
        files, packages = requirement_files(args)
        assert not packages, f"a package installed by name, not from a requirements file: {args}"
        if app in [expand(f, values) for f in files]:
            from_app.append(args)
        else:  # the installer's own bootstrap (uv), which the Dockerfile pins by hash
            assert "--require-hashes" in args, args
    assert len(from_app) == 1, installs
    copies = [shlex.split(c) for c in instructions(parsed, "COPY")]
    assert any(c[-2:] == ["./env/python", "./env/python/"] for c in copies), "the Bento's env/python is copied"

    installed = pins(bento_dir(project, tag) / "env" / "python" / "requirements.txt")
    lock = pins(REPO / "requirements.lock")
    wrong = {name: (installed.get(name), version) for name, version in lock.items() if installed.get(name) != version}
    assert not wrong, f"not at the locked version (installed, locked): {wrong}"
    assert set(installed) - set(lock) <= {"pip", "setuptools", "wheel"}, set(installed) - set(lock)

    for name, version in lock.items():
        for text in importlib.metadata.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                dep = canonicalize_name(req.name)
                assert dep in lock, f"{name} needs {dep}, which the lock does not hold"
                assert req.specifier.contains(lock[dep], prereleases=True), (name, text, lock[dep])


@pytest.mark.slow
@pytest.mark.skipif(bool(can_make_pods()), reason=can_make_pods() or "pods can be made")
def test_the_pod_serves_on_a_read_only_root_as_its_non_root_user(champion_bento, tool_bin, tmp_path):
    project, tag = champion_bento
    (deployment,) = kinds(export(project, tmp_path / "k8s"), "Deployment")
    parsed = containerfile(project, tag, tmp_path, tool_bin("k8s"))
    uid = int(parsed["args"]["BENTO_USER_UID"])
    assert container_of(deployment)["securityContext"]["runAsUser"] == uid, "the user the image was made for"

    answers, files, log = run_pod(project, tag, deployment, parsed, tmp_path / "pod")
    assert answers["ready"][0] == 200 and answers["live"][0] == 200, (answers, log[-3000:])
    status, body = answers["predict"]
    assert status == 200, (body, log[-3000:])
    answer = json.loads(body)
    assert (answer["arm"], answer["model_version"]) == ("champion", aliases(project)["champion"].split(":")[1])
    home = {e["name"]: e["value"] for e in container_of(deployment)["env"]}["BENTOML_HOME"]
    assert any(f.startswith(f"{home}/serving/predictions/") for f in files), files  # the log, on the volume
    assert "Read-only file system" not in log and "Permission denied" not in log, log[-3000:]


@pytest.mark.slow
def test_a_canary_is_a_second_deployment_with_the_challenger_and_its_share(built, tool_bin, tmp_path):
    project = bento_project(built, tmp_path)
    run_ok(project, "run", "--quiet", *ROLLOUT)
    (second,) = [r["version"] for r in run_ok(project, "models", "list", "--json").json() if not r["aliases"]]
    run_ok(project, "models", "promote", second, "--alias", "challenger")
    tag = build_bento(project)
    pinned = aliases(project)
    out = tmp_path / "k8s"
    manifests = export(project, out, env={"MLOPS_NB_SERVING__MODE": "canary",
                                          "MLOPS_NB_SERVING__CANARY_SHARE": "0.25"})
    validate(tool_bin, out)

    deployments = {d["spec"]["template"]["metadata"]["labels"]["mlops-nb/track"]: d
                   for d in kinds(manifests, "Deployment")}
    assert set(deployments) == {"stable", "canary"}
    stable, canary = deployments["stable"], deployments["canary"]
    for d in (stable, canary):
        assert container_of(d)["image"] == tag
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert labels["mlops-nb/model-champion"] == label_of(pinned["champion"])
        assert labels["mlops-nb/model-challenger"] == label_of(pinned["challenger"])
    env = {t: {e["name"]: e["value"] for e in container_of(d)["env"]} for t, d in deployments.items()}
    assert env["stable"]["MLOPS_NB_SERVING__MODE"] == "champion"
    assert (env["canary"]["MLOPS_NB_SERVING__MODE"], env["canary"]["MLOPS_NB_SERVING__CANARY_SHARE"]) == ("canary", "1")
    replicas = {t: d["spec"]["replicas"] for t, d in deployments.items()}
    assert replicas["canary"] / (replicas["canary"] + replicas["stable"]) == 0.25, replicas

    (svc,) = kinds(manifests, "Service")
    for track, d in deployments.items():
        pod = d["spec"]["template"]["metadata"]["labels"]
        assert selects(svc["spec"]["selector"], pod), f"the Service reaches the {track} pods"
        other = deployments["canary" if track == "stable" else "stable"]
        assert not selects(other["spec"]["selector"]["matchLabels"], pod), "each Deployment owns its pods only"
    scalers = {h["spec"]["scaleTargetRef"]["name"]: h["spec"] for h in kinds(manifests, "HorizontalPodAutoscaler")}
    assert set(scalers) == {d["metadata"]["name"] for d in deployments.values()}
    low = {t: scalers[d["metadata"]["name"]]["minReplicas"] for t, d in deployments.items()}
    high = {t: scalers[d["metadata"]["name"]]["maxReplicas"] for t, d in deployments.items()}
    assert low == replicas and high["canary"] * low["stable"] == high["stable"] * low["canary"], (low, high)

    if can_make_pods():
        pytest.skip(can_make_pods())
    parsed = containerfile(project, tag, tmp_path, tool_bin("k8s"))
    answers, _, log = run_pod(project, tag, canary, parsed, tmp_path / "pod")
    status, body = answers["predict"]
    assert status == 200, (body, log[-3000:])
    answer = json.loads(body)
    assert (answer["arm"], answer["model_version"]) == ("challenger", pinned["challenger"].split(":")[1])


def refused(project: Path, out: Path, *args, env: dict | None = None, says: tuple[str, ...]) -> None:
    result = run_cli(project, "export", "k8s", "--out", out, *args, env=env)
    assert result.returncode == 7, str(result)
    assert "Traceback" not in result.stderr and all(s in result.stderr for s in says), result.stderr
    assert not out.exists(), f"a refused export wrote {out}"


def test_bad_input_exits_7_and_writes_nothing(champion_bento, project, tmp_path):
    built_bento, tag = champion_bento
    name, version = tag.split(":")
    typo = f"{name}:{version[:-1]}{'a' if version[-1] != 'a' else 'b'}"
    refused(built_bento, tmp_path / "unknown", "--bento", typo, says=(f"Did you mean {tag!r}", "mlops-nb build"))
    refused(built_bento, tmp_path / "canary", env={"MLOPS_NB_SERVING__MODE": "canary"},
            says=("no challenger", "mlops-nb models promote"))

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    refused(built_bento, blocker / "k8s", says=("Cannot write", "--out"))
    assert blocker.read_text() == "not a folder"

    refused(project, tmp_path / "no-bento", says=("No Bento", "mlops-nb build"))  # built, never `mlops-nb build`
    import duckdb

    with duckdb.connect(str(project / conftest.WAREHOUSE)) as con:
        con.execute("DELETE FROM model_aliases")
    refused(project, tmp_path / "no-champion", says=("No champion", "mlops-nb run"))
