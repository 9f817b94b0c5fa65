"""Runs that survive a crash: `mlops-nb run` is a transaction, whatever stops it.

Every scenario starts from one project built once for this module, restored at the same absolute path
(``conftest.BuiltProject``: Ploomber's own task metadata holds absolute paths, so a copy elsewhere would
re-run tasks that are up to date), makes a run that would change the model (``-p model.seed=7``), stops it
for real (SIGKILL at a named point via MLOPS_NB_CRASH_AT, SIGKILL on a progress line, SIGTERM, SIGINT),
then checks the same invariants: the warehouse opens; a run that had not committed is undone (tables,
products, aliases, reports, model store) with a 'failed' record; a run that had committed is finished
(record, registry, state file, reports); nothing is left behind; the lock of a dead run is taken over;
the next runs work.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import (ALL_TASKS, CLI, PRODUCTS, BuiltProject, cli_env, folder_bytes, model_store, query, run_cli,
                      run_count, task_reports, warehouse_tables)

pytestmark = pytest.mark.slow

STEP_TIMEOUT = 180          # seconds, for any one command of a scenario
SEED_RUN = ("run", "-p", "model.seed=7")   # a run that retrains: train, evaluate, gate
LOCKED = "in progress"      # what a refused second run says
ROLLED_BACK, COMMITTED = "rolled back", "committed"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> BuiltProject:
    """One sample project (small settings, the bundled data), built once: its first run must succeed."""
    return BuiltProject(tmp_path_factory.mktemp("crash"), None)


@pytest.fixture
def project(base) -> Path:
    return base.fresh()


# --------------------------------------------------------------------------------------------------
# running and killing


@dataclass
class Killed:
    returncode: int
    stderr: str
    stdout: str
    run_id: str | None      # from the journal the killed run left (None: it left none)

    def __str__(self):
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}\n--- stderr\n{self.stderr}"


def journal_run_id(project: Path) -> str | None:
    path = project / "data" / ".run-journal.json"
    return json.loads(path.read_text())["run_id"] if path.exists() else None


def crash_at(project: Path, point: str, *args) -> Killed:
    """``mlops-nb *args`` that SIGKILLs itself at ``point``."""
    result = run_cli(project, *args, env={"MLOPS_NB_CRASH_AT": point}, timeout=STEP_TIMEOUT)
    assert result.returncode == -signal.SIGKILL, f"not killed at {point}:\n{result}"
    return Killed(result.returncode, result.stderr, result.stdout, journal_run_id(project))


def stop_on_line(project: Path, line: str, *args, delay: float = 0.0, sig=signal.SIGKILL,
                 env: dict | None = None, group: bool = False) -> Killed:
    """Start ``mlops-nb *args``, send ``sig`` once a stderr line contains ``line`` (after ``delay``
    seconds), and wait for the process to end. ``group``: to its whole process group, as Ctrl-C in a
    terminal does (its report renderer gets the signal too)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([str(CLI), *args], cwd=project, env=cli_env(env), stdout=out,
                                stderr=subprocess.PIPE, text=True, bufsize=1, start_new_session=group)
        watchdog = threading.Timer(STEP_TIMEOUT, proc.kill)
        watchdog.start()
        lines, sent = [], False
        try:
            for text in proc.stderr:
                lines.append(text)
                if not sent and line in text:
                    time.sleep(delay)
                    if group:
                        os.killpg(proc.pid, sig)
                    else:
                        proc.send_signal(sig)
                    sent = True
            proc.wait(timeout=STEP_TIMEOUT)
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        killed = Killed(proc.returncode, "".join(lines), out.read(), journal_run_id(project))
    assert sent, f"the line {line!r} never came:\n{killed}"
    return killed


def step(project: Path, *args, env: dict | None = None):
    """A command after the crash: it must work, and never find a run in progress (the dead run's lock
    is taken over)."""
    result = run_cli(project, *args, env=env, timeout=STEP_TIMEOUT)
    assert LOCKED not in result.stderr, f"a dead run's lock was not taken over:\n{result}"
    assert result.returncode == 0, str(result)
    return result


def recovered_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("Recovered:")]


# --------------------------------------------------------------------------------------------------
# what a project looks like


@dataclass
class Snapshot:
    tables: dict        # {table: (rows, hash)}, without runs and run_tasks
    runs: dict          # run_id -> status
    aliases: dict       # alias -> version
    versions: set       # registered model versions
    products: dict      # relative path -> sha256, hidden files included
    reports: dict       # task reports: the latest and those kept per run (not the site's pages)


def snapshot(project: Path) -> Snapshot:
    return Snapshot(
        tables=warehouse_tables(project),
        runs=dict(query(project, "SELECT run_id, status FROM runs")),
        aliases=dict(query(project, "SELECT alias, version FROM model_aliases")),
        versions={v for (v,) in query(project, "SELECT version FROM model_versions")},
        products=folder_bytes(project / PRODUCTS),
        reports=task_reports(project))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def store_versions(project: Path) -> set[str]:
    root = model_store(project)
    return {d.name for d in root.iterdir() if d.is_dir()} if root.is_dir() else set()


def leftovers(project: Path) -> list[str]:
    """What a run keeps aside while it runs, and must never leave behind in data/."""
    found = []
    for p in (project / "data").rglob("*"):
        n = p.name
        if (n in (".mlops-nb-run", ".run-journal.json", ".run-journal.json.tmp") or n.endswith(".staging")
                or n.startswith(("mlops-nb-backup-", "mlops-nb-reports-"))):
            found.append(str(p.relative_to(project)))
    return sorted(found)


def product_paths(project: Path) -> dict[tuple[str, str], Path]:
    """(task, product key) -> file, from pipeline.yaml (read independently of mlops_nb.run.plan)."""
    spec = yaml.safe_load((project / "pipeline.yaml").read_text())
    out = {}
    for task in spec["tasks"]:
        for key, template in task["product"].items():
            out[task["name"], key] = project / template.replace("{{paths.products_dir}}", str(PRODUCTS))
    return out


def live_helpers(project: Path) -> list[str]:
    """Processes still working in the project's scratch folder (a killed run's report renderer)."""
    scratch = str(project / "data" / ".mlops-nb-run").encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if proc.name.isdigit() and scratch in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def warehouse_opens(project: Path) -> None:
    assert run_count(project) >= 1


def invariants(project: Path, before: Snapshot, outcome: str, run_id: str | None) -> None:
    """Everything that must hold once a stopped run was undone (ROLLED_BACK) or finished (COMMITTED)."""
    warehouse_opens(project)
    now = snapshot(project)
    assert leftovers(project) == [], "left behind in data/"
    assert live_helpers(project) == [], "a process of the killed run still works in its scratch folder"
    assert store_versions(project) == now.versions, "model-store folders != registered versions"
    latest = model_store(project) / "latest"
    assert not latest.exists() or latest.read_text().strip() in now.versions, "the store's 'latest' is gone"
    for old, status in before.runs.items():
        assert now.runs.get(old) == status, f"run {old} changed"
    assert run_id is not None, "the killed run left no journal: its run id is unknown"
    if outcome == ROLLED_BACK:
        assert now.tables == before.tables, "warehouse tables changed"
        assert now.aliases == before.aliases, "aliases changed"
        assert now.versions == before.versions, "model registry changed"
        assert now.products == before.products, "products changed"
        assert now.reports == before.reports, "reports changed"
        assert now.runs.get(run_id) == "failed", f"killed run {run_id} is recorded as {now.runs.get(run_id)}"
    else:
        assert now.runs.get(run_id) == "succeeded", f"run {run_id}: {now.runs.get(run_id)}"
        ((version, gate),) = query(project, "SELECT model_version, gate FROM runs WHERE run_id = ?", [run_id])
        assert version not in before.versions and now.versions == before.versions | {version}
        assert sha256(project / PRODUCTS / "model.joblib")[:16] == version, "the model file is not the new version"
        gate = json.loads(gate)
        assert now.aliases == gate["aliases"], "aliases are not the ones the committed run set"
        if gate["promote"]:
            assert now.aliases["champion"] == version
        state = json.loads((project / PRODUCTS / ".mlops-nb-state.json").read_text())
        paths = product_paths(project)
        for task, rec in state["tasks"].items():
            for key, recorded in rec["products"].items():
                if recorded is not None:
                    assert sha256(paths[task, key]) == recorded[2], f"state file: {task}.{key} does not match"
        ran = {t for (t,) in query(project, "SELECT task FROM run_tasks WHERE run_id = ? AND status = 'ran'",
                                      [run_id])}
        assert {"train", "evaluate", "gate"} <= ran
        kept = {f"runs/{run_id}/{t}.html" for t in ran}  # the reports kept with the run, the latest's bytes
        assert set(now.reports) == set(before.reports) | kept, "reports missing after the committed run"
        for task in ran:
            assert now.reports[f"runs/{run_id}/{task}.html"] == now.reports[f"{task}.html"]
        for task in ("evaluate", "gate"):
            assert now.reports[f"{task}.html"] != before.reports[f"{task}.html"], f"{task}.html is the old one"


def recover(project: Path, *command: str) -> str:
    """The next command finishes or undoes the killed run, saying so in exactly one line (returned)."""
    result = step(project, *command)
    lines = recovered_lines(result.stderr)
    assert len(lines) == 1, str(result)
    return lines[0]


def up_to_date(project: Path, *args: str):
    result = step(project, "run", *args)
    assert "Nothing to do" in result.stdout and result.tasks_with("ran") == set(), str(result)
    assert recovered_lines(result.stderr) == [], str(result)
    return result


def then_next_runs_work(project: Path, outcome: str) -> None:
    """The project is consistent for the next runs: the rolled-back one is as before (a plain run has
    nothing to do), the committed one is in place (its own command has nothing to do)."""
    args = () if outcome == ROLLED_BACK else SEED_RUN[1:]
    up_to_date(project, *args)
    up_to_date(project, *args)


# --------------------------------------------------------------------------------------------------
# scenarios


def test_base_build_succeeded(base):
    assert base.first.returncode == 0 and base.first.tasks_with("ran") == ALL_TASKS, str(base.first)


@pytest.mark.parametrize("point, outcome, command", [
    ("preparing", ROLLED_BACK, ("runs",)),
    ("running", ROLLED_BACK, ("models", "list")),
    ("before-commit", ROLLED_BACK, ("run",)),
    ("after-commit", COMMITTED, ("runs", "--json")),
    ("finishing", COMMITTED, ("models", "list")),
])
def test_sigkill_at_fault_point(project, point, outcome, command):
    before = snapshot(project)
    killed = crash_at(project, point, *SEED_RUN)
    warehouse_opens(project)
    if point == "before-commit":  # there is something to undo: the new model is in the store, unregistered
        assert store_versions(project) - before.versions, "no new model-store folder before the commit"
    recover(project, *command)
    invariants(project, before, outcome, killed.run_id)
    then_next_runs_work(project, outcome)


@pytest.mark.parametrize("args, line, delay", [
    (("run", "-p", "data.months=1-2"), "running ingest", 0.5),
    (SEED_RUN, "running train", 0.3),  # train takes about a second on the small sample
    (SEED_RUN, "running gate", 0.5),
], ids=["ingest", "train", "gate"])
def test_sigkill_during_task(project, args, line, delay):
    before = snapshot(project)
    killed = stop_on_line(project, line, *args, delay=delay)
    assert killed.returncode == -signal.SIGKILL, str(killed)
    warehouse_opens(project)
    said = recover(project, "runs")
    invariants(project, before, ROLLED_BACK, killed.run_id)
    if line == "running train":  # the kill landed inside the task (it takes seconds): both say where
        assert "train ran" not in killed.stderr, str(killed)
        ((error,),) = query(project, "SELECT error FROM runs WHERE run_id = ?", [killed.run_id])
        assert killed.run_id in said and "killed while running task train" in said, said
        assert "killed while running task train" in error, error
    then_next_runs_work(project, ROLLED_BACK)


def test_killed_after_train_then_plain_run_keeps_the_old_model(project):
    """The issue's reference case: `run -p model.seed=7` killed right after "train ran"; a plain run must
    not go on with the seed-7 model file: it is the seed-42 one again, and nothing needs to run."""
    before = snapshot(project)
    model = (project / PRODUCTS / "model.joblib").read_bytes()
    killed = stop_on_line(project, "train ran", *SEED_RUN)
    assert killed.returncode == -signal.SIGKILL, str(killed)
    assert (project / PRODUCTS / "model.joblib").read_bytes() != model, "the seed-7 model was not written"

    plain = step(project, "run")
    assert len(recovered_lines(plain.stderr)) == 1, str(plain)
    assert "Nothing to do" in plain.stdout and plain.tasks_with("ran") == set(), str(plain)
    assert (project / PRODUCTS / "model.joblib").read_bytes() == model
    assert snapshot(project).aliases["champion"] == before.aliases["champion"]
    invariants(project, before, ROLLED_BACK, killed.run_id)

    # and the change itself can be made now, once
    done = step(project, *SEED_RUN)
    assert done.tasks_with("ran") == {"train", "evaluate", "gate"}, str(done)
    assert "succeeded" in done.stdout, str(done)
    up_to_date(project, *SEED_RUN[1:])


@pytest.mark.parametrize("first, second, outcome", [
    ("before-commit", "restoring", ROLLED_BACK),
    ("sigterm", "restoring", ROLLED_BACK),
    ("after-commit", "finishing", COMMITTED),
], ids=["undo killed", "in-process undo of a SIGTERM killed", "finish killed"])
def test_recovery_killed_half_way_is_completed_by_the_next_command(project, first, second, outcome):
    """The recovery itself is SIGKILLed (an undo after the warehouse objects went and before the products
    came back; a finish after the state file and before the reports); a third command completes it."""
    before = snapshot(project)
    if first == "sigterm":  # the in-process rollback of a SIGTERM is the one killed
        killed = stop_on_line(project, "running train", *SEED_RUN, delay=1.5, sig=signal.SIGTERM,
                              env={"MLOPS_NB_CRASH_AT": second})
        assert killed.returncode == -signal.SIGKILL, str(killed)
    else:
        killed = crash_at(project, first, *SEED_RUN)
        crashed = run_cli(project, "runs", env={"MLOPS_NB_CRASH_AT": second}, timeout=STEP_TIMEOUT)
        assert crashed.returncode == -signal.SIGKILL, f"the recovery was not killed at {second}:\n{crashed}"
    phase = json.loads((project / "data" / ".run-journal.json").read_text())["phase"]
    assert phase == ("restoring" if outcome == ROLLED_BACK else "committing")
    warehouse_opens(project)

    recover(project, "models", "list")
    invariants(project, before, outcome, killed.run_id)
    then_next_runs_work(project, outcome)


@pytest.mark.parametrize("sig, code, group", [
    (signal.SIGTERM, 143, False),
    (signal.SIGINT, 130, False),
    (signal.SIGINT, 130, True),
], ids=["SIGTERM", "SIGINT", "Ctrl-C to the process group"])
def test_signal_during_train_rolls_back_in_process(project, sig, code, group):
    before = snapshot(project)
    stopped = stop_on_line(project, "running train", *SEED_RUN, delay=1.5, sig=sig, group=group)
    assert stopped.returncode == code, str(stopped)
    said = [line for line in stopped.stderr.splitlines() if "rolled back" in line]
    assert said, str(stopped)
    assert "products: restored" in said[-1], f"the message does not say what was undone:\n{stopped}"
    ((run_id, error),) = query(project, "SELECT run_id, error FROM runs ORDER BY started_at DESC LIMIT 1")
    assert sig.name in (error or ""), f"the failed run's record does not say why: {error!r}"
    invariants(project, before, ROLLED_BACK, run_id)   # at once, no other command in between
    then_next_runs_work(project, ROLLED_BACK)

