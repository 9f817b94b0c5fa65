"""`mlops-nb export k8s`: Kubernetes manifests for a Bento's container, and the pipeline's Dockerfile.

The image is the one `bentoml containerize TAG` builds, named as it names it (``<bento name>:<version>``): its
entrypoint runs ``bentoml serve`` of the Bento as the user ``bentoml`` (uid 1034), with BentoML's home at
``/home/bentoml/``. The manifests run it as a cluster expects:

- ``--host 0.0.0.0``: the service binds 127.0.0.1 unless told otherwise (``http.host`` of ``@bentoml.service``),
  which no probe or Service could reach in a pod;
- a read-only root file system, non-root, no privilege escalation, every capability dropped. What is written
  goes to two emptyDir volumes: ``/tmp`` (BentoML's sockets, Python's temporary files) and
  ``/var/lib/bentoml``, made BentoML's home (``BENTOML_HOME``): BentoML's ``tmp/``, its store folders and
  ``prometheus_multiproc_dir/``, and ours, the service's logs (``serving/``) and the embedded online store
  (``featurestore/``). Both volumes go with the pod: keep the logs by mounting a persistent volume at
  ``/var/lib/bentoml/serving``; serve features from Redis (``features.online = redis``) or from a volume
  materialized at ``/var/lib/bentoml/featurestore`` (without either, the fields the store provides are missing);
- readiness on ``/readyz``, liveness on ``/livez``, with a startup probe for the cold start (imports, models);
- the pinned model tags as labels (a label value holds 63 characters of ``[A-Za-z0-9_.-]``, so ``:`` becomes
  ``.``) and whole, with their sha256, in the ``mlops-nb/pinned-models`` annotation;
- a ClusterIP Service (port 80 -> 3000) over every pod of the app, and a HorizontalPodAutoscaler on CPU.

Rollouts. ``serving.mode = shadow``: one Deployment whose pods score every request with both models (the
service's own shadow mode). ``serving.mode = canary``: the service can split traffic by key inside one pod,
but then a replica's CPU is shared by both models and a cluster cannot scale or roll back the challenger on
its own; so the split is made by Kubernetes instead: the Deployment runs the champion alone
(``MLOPS_NB_SERVING__MODE=champion``) and a second Deployment, labelled ``mlops-nb/track: canary``, runs the
same Bento with every request sent to its pinned challenger (``mode=canary``, ``canary_share=1``: its answers,
logs and metrics still say ``arm: challenger``). The Service balances connections over the pods of both, so
the challenger's share is its share of the replicas: the smallest pool of at most ``POOL`` pods, at least
``REPLICAS`` of them the champion's, whose split is nearest ``serving.canary_share`` (0.1 -> 9 + 1, 0.25 ->
3 + 1, 0.5 -> 2 + 2), the share reached written in the canary's annotations. Each Deployment has its own
autoscaler with bounds in that proportion; pods of both are equally loaded, so they scale alike and keep it.
A key no longer sticks to an arm (a connection does). A share of 0 writes no canary; a share of 1 is refused
(promote the challenger instead).

``Dockerfile.pipeline`` is the image the orchestrators' steps run in (``kfp.pipeline_dockerfile``).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .. import config
from ..errors import ExportError, MlopsNbError, did_you_mean
from . import write_files

PORT = 3000  # BentoML's HTTP port in the image (EXPOSE 3000)
UID = 1034  # the uid of the user `bentoml containerize` images run as (ARG BENTO_USER_UID)
HOME = "/var/lib/bentoml"  # BentoML's home in the pod: a writable volume, not the image's /home/bentoml/
REPLICAS, SCALE = 2, 5  # the autoscaler's bounds: REPLICAS .. REPLICAS * SCALE (a canary's pool times SCALE)
POOL = 10  # a canary's split is made over at most this many pods
CPU_TARGET = 70  # average CPU utilization (% of the request) the autoscaler keeps
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "2Gi"}}
LABEL_PREFIX = "mlops-nb/"


@dataclass(frozen=True)
class Bento:
    """A Bento of the project's store, as its files say: what ``bentoml containerize`` names its image, what
    it pins (alias -> {"tag", "sha256"}), when it was built."""
    name: str
    version: str
    created: datetime
    pinned: dict[str, dict]

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"

    def pins(self, alias: str) -> str | None:
        return (self.pinned.get(alias) or {}).get("tag")


def store_bentos(settings: config.Settings) -> list[Bento]:
    """The Bentos of the store (``$BENTOML_HOME/bentos/<name>/<version>``), read from their files without
    BentoML: ``bento.yaml`` and the ``pinned.json`` that `mlops-nb build` put in (none: an empty pin)."""
    import yaml

    found = []
    for info in sorted((config.bentoml_home(settings) / "bentos").glob("*/*/bento.yaml")):
        try:
            spec = yaml.safe_load(info.read_text(encoding="utf-8")) or {}
            pinned_file = info.parent / "src" / config.PINNED_FILE
            pinned = json.loads(pinned_file.read_text(encoding="utf-8"))["models"] if pinned_file.is_file() else {}
            created = spec["creation_time"]
            found.append(Bento(str(spec["name"]), str(spec["version"]),
                               created if isinstance(created, datetime) else datetime.fromisoformat(str(created)),
                               pinned))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
            raise ExportError(f"Cannot read the Bento in {info.parent}: {e}. Remove it (`bentoml delete`) or build "
                              "again with `mlops-nb build`.") from None
    return found


def served(settings: config.Settings) -> dict[str, dict]:
    """The registry's aliases (alias -> {"tag", "sha256"}); an ExportError when there is no champion."""
    from .. import registry
    from ..data import warehouse

    try:
        with warehouse.connect(settings=settings) as con:
            return registry.served(con, "to deploy")
    except MlopsNbError as e:
        raise ExportError(str(e)) from None


def choose(settings: config.Settings, aliases: dict[str, dict], tag: str | None, rollout: bool) -> Bento:
    """The Bento named by ``tag`` (``NAME`` or ``NAME:latest``: its newest, as BentoML reads them), else the newest
    whose pinned champion (and, for a rollout, challenger) are the registry's."""
    bentos = store_bentos(settings)
    if tag is not None:
        by_tag = {b.tag: b for b in bentos}
        for b in sorted(bentos, key=lambda b: b.created):
            by_tag[f"{b.name}:latest"] = by_tag[b.name] = b
        if tag not in by_tag:
            listed = ", ".join(sorted(b.tag for b in bentos)) or "none"
            raise ExportError(f"No Bento {tag!r} in the model store ({config.bentoml_home(settings)}); it holds: "
                              f"{listed}.{did_you_mean(tag, by_tag)} Build one with `mlops-nb build`.")
        chosen = by_tag[tag]
        if not chosen.pins("champion"):
            raise ExportError(f"The Bento {tag} pins no model (pinned.json): it was not built by `mlops-nb build` "
                              "and would refuse to start. Build one with `mlops-nb build`.")
        return chosen
    wanted = {"champion": aliases["champion"]["tag"]}
    if rollout:
        wanted["challenger"] = aliases["challenger"]["tag"]
    fitting = [b for b in bentos if all(b.pins(a) == t for a, t in wanted.items())]
    if not fitting:
        pins = " and ".join(f"the {a} {t}" for a, t in wanted.items())
        held = f"its {len(bentos)} Bento(s) pin other models" if bentos else "it holds none"
        raise ExportError(f"No Bento in the model store ({config.bentoml_home(settings)}) pins {pins}: {held}. "
                          "Build one with `mlops-nb build`, or name one with --bento TAG.")
    return max(fitting, key=lambda b: b.created)


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends; the end of a long
    value is kept (a tag's version)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", ".", text)[-63:]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def dns_name(text: str, suffix: str = "") -> str:
    """``text`` as an object name that is also a DNS-1035 label (a Service's): [a-z0-9-], a letter first."""
    base = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    if not base[:1].isalpha():
        base = f"bento-{base}".rstrip("-")
    return base[:63 - len(suffix)].rstrip("-") + suffix


def canary_split(share: float) -> tuple[int, int]:
    """(champion pods, challenger pods): the smallest pool of at most POOL pods, at least REPLICAS of them the
    champion's and one the challenger's, whose challenger share is nearest ``share``."""
    def canary(total: int) -> int:
        return min(max(round(share * total), 1), total - REPLICAS)

    total = min(range(REPLICAS + 1, POOL + 1), key=lambda t: (abs(canary(t) / t - share), t))
    return total - canary(total), canary(total)


def deployment(bento: Bento, name: str, labels: dict, track: str, replicas: int, env: dict[str, str],
               annotations: dict[str, str]) -> dict:
    """One Deployment of the Bento's image. Its selector holds the app and the track only (a selector cannot
    change): the next Bento is a rolling update of the same Deployment; the pinned tags label the pods."""
    selector = {**labels, f"{LABEL_PREFIX}track": track}
    pod_labels = {**selector, f"{LABEL_PREFIX}bento-version": label_value(bento.version),
                  **{f"{LABEL_PREFIX}model-{alias}": label_value(entry["tag"])
                     for alias, entry in sorted(bento.pinned.items())}}
    pod_annotations = {f"{LABEL_PREFIX}bento": bento.tag,
                       f"{LABEL_PREFIX}pinned-models": json.dumps(bento.pinned, sort_keys=True)}
    probe = {"httpGet": {"path": "/livez", "port": "http"}}
    container = {
        "name": "bento",
        "image": bento.tag,
        "imagePullPolicy": "IfNotPresent",
        "args": ["--host", "0.0.0.0", "--port", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "env": [{"name": k, "value": v} for k, v in {"BENTOML_HOME": HOME, "BENTOML_DO_NOT_TRACK": "true",
                                                      **env}.items()],
        "resources": RESOURCES,
        "startupProbe": {**probe, "periodSeconds": 5, "failureThreshold": 36},
        "livenessProbe": {**probe, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 3},
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "bentoml-home", "mountPath": HOME}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": pod_labels, "annotations": {**pod_annotations, **annotations}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annotations},
                "spec": {
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "bentoml-home", "emptyDir": {}}],
                },
            },
        },
    }


def autoscaler(name: str, labels: dict, low: int, high: int) -> dict:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": low,
            "maxReplicas": high,
            "metrics": [{"type": "Resource", "resource": {
                "name": "cpu", "target": {"type": "Utilization", "averageUtilization": CPU_TARGET}}}],
        },
    }


def service(name: str, labels: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"type": "ClusterIP", "selector": labels,
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
    }


def documents(header: str, *objects: dict) -> str:
    """``objects`` as one YAML stream under a comment ``header``; shared parts written out, not as anchors."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data) -> bool:
            return True

    lines = "".join(f"# {line}\n" for line in header.splitlines())
    return lines + "---\n".join(yaml.dump(o, Dumper=Dumper, sort_keys=False) for o in objects)


def manifests(settings: config.Settings, bento: Bento) -> dict[str, str]:
    """deployment.yaml, service.yaml and hpa.yaml of ``bento`` (a canary's Deployment and autoscaler in the
    same files, after the champion's)."""
    mode, share = settings.serving.mode, settings.serving.canary_share
    name = dns_name(bento.name)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlops-nb",
              "app.kubernetes.io/managed-by": "mlops-nb"}
    header = (f"Written by `mlops-nb export k8s` for the Bento {bento.tag}: its image is what\n"
              f"`bentoml containerize {bento.tag}` builds. See mlops_nb/export/k8s.py for the choices.")
    canary = mode == "canary" and share > 0
    stable, extra = (canary_split(share) if canary else (REPLICAS, 0))
    deployments = [deployment(bento, name, labels, "stable", stable,
                              {"MLOPS_NB_SERVING__MODE": "champion" if mode == "canary" else mode}, {})]
    scalers = [autoscaler(name, labels, stable, stable * SCALE)]
    if canary:
        deployments.append(deployment(
            bento, dns_name(bento.name, "-canary"), labels, "canary", extra,
            {"MLOPS_NB_SERVING__MODE": "canary", "MLOPS_NB_SERVING__CANARY_SHARE": "1"},
            {f"{LABEL_PREFIX}canary-share": str(share),
             f"{LABEL_PREFIX}canary-share-effective": f"{extra / (stable + extra):.4g}"}))
        scalers.append(autoscaler(dns_name(bento.name, "-canary"), labels, extra, extra * SCALE))
    return {"deployment.yaml": documents(header, *deployments),
            "service.yaml": documents(header, service(name, labels)),
            "hpa.yaml": documents(header, *scalers)}


def export(settings: config.Settings, out: Path, bento: str | None = None) -> list[Path]:
    """Write the manifests of ``bento`` (default: the newest Bento pinning the registry's champion, and its
    challenger in a rollout) and ``Dockerfile.pipeline`` into ``out``, all or none."""
    from .kfp import pipeline_dockerfile

    aliases = served(settings)
    mode = settings.serving.mode
    rollout = mode == "shadow" or (mode == "canary" and settings.serving.canary_share > 0)
    if rollout and "challenger" not in aliases:
        raise ExportError(f"serving.mode is {mode!r} but the registry has no challenger; promote one (`mlops-nb "
                          "models promote VERSION --alias challenger`) or set serving.mode = champion.")
    if mode == "canary" and settings.serving.canary_share >= 1:
        raise ExportError("serving.canary_share = 1 sends every request to the challenger: promote it "
                          "(`mlops-nb models promote VERSION`) and export the champion, or set a share below 1.")
    chosen = choose(settings, aliases, bento, rollout)
    if rollout and not chosen.pins("challenger"):
        raise ExportError(f"serving.mode is {mode!r} but the Bento {chosen.tag} pins no challenger (it was built "
                          "before one was set). Build one with `mlops-nb build`, or name another with --bento TAG.")
    files: dict[str, str | bytes] = dict(manifests(settings, chosen))
    files["Dockerfile.pipeline"] = pipeline_dockerfile(settings)
    return write_files(out, files)
