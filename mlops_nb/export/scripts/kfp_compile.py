"""Compile an mlops-nb pipeline with the kfp SDK's own compiler. Runs in the kfp environment (`mlops-nb export tools
kfp`), never in the project's: it reads the plan as JSON on stdin and writes the compiled YAML to the path it names.

Input: {"name", "description", "image", "out", "steps": [{"name", "upstream", "command"}],
"params": [{"key", "input", "default"}], "claim": {"input", "default"}, "data_mount"}.
Each step becomes a container component running its command, then ``-p KEY=<the pipeline parameter>`` for every
param (the form of ``mlops_nb.export.Step.command``), ordered by ``.after`` on its upstream steps (the tasks share
data through the volume, not kfp artifacts), with the claim mounted at ``data_mount``.
"""
from __future__ import annotations

import inspect
import json
import sys


def _signature(params: list[dict], defaults: bool) -> inspect.Signature:
    """A function signature of string inputs: how kfp's decorators learn a component's or a pipeline's inputs
    when their names come from data."""
    return inspect.Signature([
        inspect.Parameter(p["input"], inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str,
                          **({"default": p["default"]} if defaults else {}))
        for p in params])


def _component(step: dict, image: str, params: list[dict]):
    from kfp import dsl

    def container(*values):
        command = list(step["command"])
        for param, value in zip(params, values):
            command += ["-p", f"{param['key']}={value}"]
        return dsl.ContainerSpec(image=image, command=command)

    container.__name__ = step["name"]
    container.__doc__ = f"mlops-nb task {step['name']!r}, alone against the products of its upstream tasks."
    container.__signature__ = _signature(params, defaults=False)
    return dsl.container_component(container)


def compile_pipeline(spec: dict) -> None:
    from kfp import compiler, dsl, kubernetes

    params, claim = spec["params"], spec["claim"]
    components = {step["name"]: _component(step, spec["image"], params) for step in spec["steps"]}

    def pipeline(*values):
        inputs = dict(zip([p["input"] for p in params + [claim]], values))
        tasks = {}
        for step in spec["steps"]:
            task = components[step["name"]](**{p["input"]: inputs[p["input"]] for p in params})
            task.set_display_name(step["name"])
            task.set_caching_options(False)  # the task's own fingerprints decide what is up to date, not kfp's cache
            for upstream in step["upstream"]:
                task.after(tasks[upstream])
            kubernetes.mount_pvc(task, pvc_name=inputs[claim["input"]], mount_path=spec["data_mount"])
            tasks[step["name"]] = task

    pipeline.__name__ = spec["name"].replace("-", "_")
    pipeline.__signature__ = _signature(params + [claim], defaults=True)
    compiled = dsl.pipeline(name=spec["name"], description=spec["description"])(pipeline)
    compiler.Compiler().compile(compiled, spec["out"])


if __name__ == "__main__":
    compile_pipeline(json.load(sys.stdin))
