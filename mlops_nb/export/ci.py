"""`mlops-nb export ci`: the project's CI for GitLab CI, Jenkins and GitHub Actions, the same three jobs in each,
rendered from one description (``jobs``) so that they cannot drift apart:

1. ``test``: ``make test`` (it installs everything itself), pip's cache and the exporters' environments
   (``export.tools_dir``) kept between runs where the system allows;
2. ``pipeline``: ``make install``, then ``mlops-nb run --strict-gate``: a model the gate refuses fails the job
   (exit 8) and stays registered as a candidate; the gate's decision and the reports are kept whatever the outcome,
   and ``paths.data_dir`` (the warehouse, the model store) is handed to the next job;
3. ``bento``: on the default branch only, after ``pipeline``: ``mlops-nb build``, a Bento pinned to the champion.

The paths come from the settings and the rendered plan, nothing else: the same project exports the same bytes.
Nothing here imports a CI system; the files are text, checked by each system's own tools in the tests.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import ExportError, did_you_mean
from . import tools, write_files

GITLAB, JENKINS, GITHUB = ".gitlab-ci.yml", "Jenkinsfile", ".github/workflows/ci.yml"
MAKE_TARGETS = ("install", "test")  # what the jobs run; `make install` makes .venv
MLOPS_NB = ".venv/bin/mlops-nb"
GATE_TASK = "gate"
GITLAB_IMAGE = "python:3.11-trixie"  # Debian 13: Python 3.11 from the image, Node.js 20 and Java from Debian
GITLAB_TOOLS = ".cache/mlops-nb-tools"  # GitLab caches only paths inside the project: the tools folder links here
KEEP_DAYS = 7  # how long the data handed to the next job is kept
ACTIONS = {"checkout": "actions/checkout@v5", "python": "actions/setup-python@v6", "cache": "actions/cache@v5",
           "upload": "actions/upload-artifact@v6", "download": "actions/download-artifact@v7"}  # Node 24 majors
GITHUB_DEFAULT_BRANCH = "github.ref == format('refs/heads/{0}', github.event.repository.default_branch)"


@dataclass(frozen=True)
class Job:
    """One CI job as every system runs it. Paths are relative to the project's root, a folder's ending in ``/``."""
    name: str
    commands: tuple[str, ...]
    timeout: int                      # minutes
    keep: tuple[str, ...] = ()        # artifacts kept whatever the outcome
    hand_on: str | None = None        # the folder the next job needs (Jenkins: already in the shared workspace)
    default_branch_only: bool = False
    caches_tools: bool = False        # the exporters' environments, besides pip's cache


def export(settings: config.Settings, out: Path) -> list[Path]:
    """Write ``.gitlab-ci.yml``, ``Jenkinsfile`` and ``.github/workflows/ci.yml`` under ``out`` (the repository's
    root), all or none. Returns the paths written."""
    plan = jobs(settings)
    return write_files(out, {GITLAB: gitlab(settings, plan), JENKINS: jenkins(plan), GITHUB: github(settings, plan)})


def jobs(settings: config.Settings) -> list[Job]:
    """The three jobs of this project, upstream first; an ExportError when the project cannot run them."""
    _check_makefile(settings.root)
    data = _inside(settings, settings.path("data_dir"), "paths.data_dir", folder=True)
    for key in ("warehouse", "bentoml_home"):  # what `mlops-nb build` reads must reach the bento job
        _inside(settings, settings.path(key), f"paths.{key}", within=settings.path("data_dir"))
    reports = _inside(settings, settings.path("reports_dir"), "paths.reports_dir", folder=True)
    bentos = _inside(settings, settings.path("bentoml_home") / "bentos", "paths.bentoml_home", folder=True)
    return [
        Job("test", ("make test",), 90, caches_tools=True),
        Job("pipeline", ("make install", f"{MLOPS_NB} run --strict-gate"), 30,
            keep=(_gate_decision(settings), reports), hand_on=data),
        Job("bento", ("make install", f"{MLOPS_NB} build"), 30, keep=(bentos,), default_branch_only=True),
    ]


def _check_makefile(root: Path) -> None:
    makefile = root / "Makefile"
    text = makefile.read_text(encoding="utf-8") if makefile.is_file() else ""
    targets = sorted(set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M)))
    for target in MAKE_TARGETS:
        if target not in targets:
            found = f"its targets are {targets}" if makefile.is_file() else "there is none"
            raise ExportError(f"The CI runs `make {target}` in the project, so {makefile} must have a {target!r} "
                              f"target; {found}.{did_you_mean(target, targets)} Add it (an mlops-nb checkout's "
                              "Makefile has install, test and run), then export again.")


def _inside(settings: config.Settings, path: Path, key: str, within: Path | None = None, folder: bool = False) -> str:
    """``path`` relative to the project's root (POSIX, a folder's ending in ``/``): CI keeps and hands on only what
    is inside the checkout, so a path outside ``within`` (default: the project) is an ExportError."""
    root = settings.root.resolve()
    try:
        path.resolve().relative_to((within or root).resolve())
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        where = f"inside {within}" if within else f"inside the project ({root})"
        raise ExportError(f"CI hands on only what is {where}; {key} is {path}. Set {key} to a path {where} in "
                          "settings.ini, then export again.") from None
    return f"{rel}/" if folder else rel


def _gate_decision(settings: config.Settings) -> str:
    from ..run import plan as planning

    plan = planning.load_plan(settings)
    task = plan.tasks.get(GATE_TASK)
    if task is None:
        raise ExportError(f"The pipeline job keeps the gate's decision, the JSON product of the task {GATE_TASK!r}; "
                          f"pipeline.yaml has no such task (its tasks: {list(plan.tasks)})."
                          f"{did_you_mean(GATE_TASK, plan.tasks)}")
    decisions = sorted(p for p in task.products.values() if p.suffix == ".json")
    if len(decisions) != 1:
        raise ExportError(f"The task {GATE_TASK!r} must have one JSON product, its decision; pipeline.yaml gives it "
                          f"{[p.name for p in decisions]}.")
    return _inside(settings, decisions[0], f"the {GATE_TASK} task's decision")


def _header(comment: str, system: str, notes: str) -> str:
    lines = ["Generated by `mlops-nb export ci` from the project's pipeline.yaml and settings.ini: do not edit. "
             "Regenerate with", "`mlops-nb export ci --out .` in the project (it writes .gitlab-ci.yml, Jenkinsfile "
             "and .github/workflows/ci.yml).",
             f"The same three jobs as in the other two files; on {system}:", *notes.splitlines()]
    return "".join(f"{comment} {line}".rstrip() + "\n" for line in lines)


def _tools_dir_in_shell(settings: config.Settings) -> str:
    """``export.tools_dir`` as a shell word (``~`` as ``"$HOME"``)."""
    folder = str(settings.export.tools_dir)
    if folder == "~" or folder.startswith("~/"):
        return '"$HOME"' + (f"/{shlex.quote(folder[2:])}" if folder[2:] else "")
    return shlex.quote(folder)


def _requirements_files(settings: config.Settings) -> list[str]:
    """What pip's cache depends on: the project's lock and pyproject.toml, those it has."""
    return [name for name in ("requirements.lock", "pyproject.toml") if (settings.root / name).is_file()]


def _tools_requirements(settings: config.Settings) -> str:
    """A glob of the files the exporters' environments are made from (the project's lock when the package is
    installed from elsewhere: it pins the package, and so them)."""
    try:
        return f"{tools.REQUIREMENTS.resolve().relative_to(settings.root.resolve()).as_posix()}/*"
    except ValueError:
        return "requirements.lock"


def _yaml(header: str, doc: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):  # the same mapping twice is written twice, not as an anchor
            return True

        def increase_indent(self, flow=False, indentless=False):  # list items indented under their key
            return super().increase_indent(flow, False)

    def text(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return header + yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=1000, allow_unicode=True)


# --------------------------------------------------------------------------------------------------
# GitLab CI


def gitlab(settings: config.Settings, plan: list[Job]) -> str:
    pip = {"key": "pip", "paths": [".cache/pip"]}
    doc = {
        "stages": [job.name for job in plan],
        "default": {"image": GITLAB_IMAGE},
        "variables": {"PIP_CACHE_DIR": "$CI_PROJECT_DIR/.cache/pip", "npm_config_cache": "$CI_PROJECT_DIR/.cache/npm"},
    }
    link = _tools_dir_in_shell(settings)
    for previous, job in zip([None, *plan], plan):
        entry: dict = {"stage": job.name}
        if previous is not None:
            entry["needs"] = [previous.name]
        if job.default_branch_only:
            entry["rules"] = [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}]
        entry["timeout"] = f"{job.timeout}m"
        if job.caches_tools:
            entry["cache"] = [pip, {"key": "mlops-nb-tools", "paths": [f"{GITLAB_TOOLS}/", ".cache/npm/"]}]
            entry["before_script"] = [f'mkdir -p {GITLAB_TOOLS} "$(dirname {link})"',
                                      f'ln -sfn "$CI_PROJECT_DIR/{GITLAB_TOOLS}" {link}']
        else:
            entry["cache"] = [{**pip, "policy": "pull"}]
        entry["script"] = list(job.commands)
        if job.keep or job.hand_on:
            entry["artifacts"] = {"when": "always" if job.keep else "on_success", "expire_in": f"{KEEP_DAYS} days",
                                  "paths": [*job.keep, *([job.hand_on] if job.hand_on else [])]}
        doc[job.name] = entry
    notes = (f"image {GITLAB_IMAGE}; the pipeline job's artifacts (also when it failed) hand data/ to bento;\n"
             f"GitLab caches only inside the project: pip's cache there, and the exporters' environments\n"
             f"({settings.export.tools_dir}) linked to {GITLAB_TOOLS}.")
    return _yaml(_header("#", "GitLab CI", notes), doc)


# --------------------------------------------------------------------------------------------------
# Jenkins (declarative pipeline)


def _groovy(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def jenkins(plan: list[Job]) -> str:
    out = ["pipeline {", "    agent any", "    stages {"]
    for job in plan:
        out += [f"        stage({_groovy(job.name)}) {{"]
        if job.default_branch_only:
            out += ["            when {", "                environment name: 'BRANCH_IS_PRIMARY', value: 'true'",
                    "            }"]
        out += ["            options {", f"                timeout(time: {job.timeout}, unit: 'MINUTES')",
                "            }", "            steps {"]
        out += [f"                sh {_groovy(command)}" for command in job.commands]
        out += ["            }"]
        if job.keep:
            patterns = ", ".join(f"{p}**" if p.endswith("/") else p for p in job.keep)
            out += ["            post {", "                always {",
                    f"                    archiveArtifacts artifacts: {_groovy(patterns)}, allowEmptyArchive: true",
                    "                }", "            }"]
        out += ["        }"]
    out += ["    }", "}"]
    notes = ("a multibranch pipeline (BRANCH_IS_PRIMARY marks the default branch); the agent needs python3.11, make,\n"
             "Node.js 20 with npm and Java 17; the stages share the workspace (data/ and .venv), and pip's cache and\n"
             "the exporters' environments stay in the agent's home between builds.")
    return _header("//", "Jenkins", notes) + "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------------
# GitHub Actions


def github(settings: config.Settings, plan: list[Job]) -> str:
    python = {"python-version": "3.11"}
    if lock := _requirements_files(settings):
        python.update({"cache": "pip", "cache-dependency-path": "\n".join(lock) + "\n"})
    setup = [{"uses": ACTIONS["checkout"]}, {"uses": ACTIONS["python"], "with": python}]
    tools_key = "mlops-nb-tools-${{ runner.os }}-"
    jobs_doc = {}
    for previous, job in zip([None, *plan], plan):
        entry: dict = {}
        if previous is not None:
            entry["needs"] = previous.name
        if job.default_branch_only:
            entry["if"] = f"github.event_name == 'push' && {GITHUB_DEFAULT_BRANCH}"
        entry.update({"runs-on": "ubuntu-latest", "timeout-minutes": job.timeout})
        steps = list(setup)
        if job.caches_tools:
            steps.append({"uses": ACTIONS["cache"], "with": {
                "path": str(settings.export.tools_dir),
                "key": f"{tools_key}${{{{ hashFiles('{_tools_requirements(settings)}') }}}}",
                "restore-keys": tools_key}})
        if previous is not None and previous.hand_on:
            steps.append({"uses": ACTIONS["download"], "with": {"name": f"{previous.name}-data",
                                                                "path": previous.hand_on}})
        steps += [{"run": command} for command in job.commands]
        if job.keep:
            steps.append({"if": "always()", "uses": ACTIONS["upload"], "with": {
                "name": job.name, "path": "\n".join(job.keep) + "\n", "if-no-files-found": "ignore"}})
        if job.hand_on:
            steps.append({"uses": ACTIONS["upload"], "with": {
                "name": f"{job.name}-data", "path": job.hand_on, "include-hidden-files": True,
                "retention-days": KEEP_DAYS}})
        entry["steps"] = steps
        jobs_doc[job.name] = entry
    doc = {"name": "ci", "on": {"push": {"branches": ["main"]}, "pull_request": {}},
           "permissions": {"contents": "read"}, "jobs": jobs_doc}
    notes = ("pushes to main and pull requests; bento on pushes to the default branch; an artifact hands data/ to\n"
             "bento; setup-python caches pip's cache, actions/cache the exporters' environments "
             f"({settings.export.tools_dir}).")
    return _yaml(_header("#", "GitHub Actions", notes), doc)
