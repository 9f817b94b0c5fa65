"""`mlops-nb export airflow` (mlops_nb/export/airflow.py): an Airflow 3 DAG, one task per pipeline task with the
same edges, each running `mlops-nb run --task NAME --only`, checked by the real Apache Airflow 3 from its own
environment (`tool_bin("airflow")`): `airflow dags test` runs the exported DAG on an unbuilt copy of the sample
project and registers the same model bytes as `mlops-nb run`; Airflow's DagBag parses both variants (shell tasks,
and KubernetesPodOperator pods with --image).

Airflow gets a home of its own under tmp_path (SQLite metadata, no examples, no usage reporting) and is run by its
own executables; the DAG shells out to our CLI, so the Airflow environment imports nothing of ours.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, MODEL_NAME, TIMEOUT, cli_env, folder_bytes, pipeline_graph, run_cli, run_ok, store_dir

PARAM = "model.max_iter"  # baked into the sample project's settings.ini as 30 (conftest.SMALL_SETTINGS)

# Run by the Airflow environment's python on an exported dags folder: what Airflow's own DagBag makes of it,
# with each task's templated command rendered by the DAG's own Jinja environment (its params and filters).
DAGBAG_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag

folder, render_params = sys.argv[1], json.loads(sys.argv[2])
bag = DagBag(dag_folder=folder)
out = {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in sorted(bag.dags.items()):
    env = dag.get_template_env()
    render = lambda text: env.from_string(text).render(params={**dag.params, **render_params})
    tasks = {}
    for task in dag.tasks:
        info = {"operator": type(task).__name__, "upstream": sorted(task.upstream_task_ids)}
        if hasattr(task, "bash_command"):
            info["command"] = render(task.bash_command)
        else:
            info.update(image=task.image, command=[*task.cmds, *map(render, task.arguments)],
                        mounts=[m.to_dict() for m in task.volume_mounts],
                        volumes=[v.to_dict() for v in task.volumes])
        tasks[task.task_id] = info
    out["dags"][dag_id] = {"max_active_runs": dag.max_active_runs, "max_active_tasks": dag.max_active_tasks,
                           "catchup": dag.catchup, "schedule": type(dag.timetable).__name__,
                           "params": {k: dag.params[k] for k in dag.params}, "tasks": tasks}
print(json.dumps(out))
"""


def airflow_env(home: Path) -> dict:
    """Airflow's settings for a test: everything under ``home``, nothing fetched, no examples."""
    return cli_env({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
                    "AIRFLOW__USAGE_DATA_COLLECTION__ENABLED": "False", "SCARF_ANALYTICS": "false",
                    "DO_NOT_TRACK": "true"})


def airflow(bin_dir: Path, home: Path, *args, program: str = "airflow") -> subprocess.CompletedProcess:
    """One command of the Airflow environment (``airflow ...`` or its ``python ...``) that must succeed."""
    proc = subprocess.run([str(bin_dir / program), *map(str, args)], env=airflow_env(home), cwd=home,
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"$ {program} {args}\nexit {proc.returncode}\n{proc.stdout[-6000:]}\n" \
                                 f"{proc.stderr[-6000:]}"
    return proc


def last_json(proc: subprocess.CompletedProcess):
    """The JSON an Airflow command printed last (Airflow logs warnings to stdout before it)."""
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_dags(bin_dir: Path, home: Path, render_params: dict | None = None) -> dict:
    script = home / "dagbag.py"
    script.write_text(DAGBAG_SCRIPT, encoding="utf-8")
    proc = airflow(bin_dir, home, script, home / "dags", json.dumps(render_params or {}), program="python")
    return last_json(proc)


def words(command: str, cwd: Path) -> list[str]:
    """The words bash makes of a command (each printed on a line instead of run)."""
    done = subprocess.run(["bash", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True, cwd=cwd,
                          check=True)
    return done.stdout.splitlines()


def edges(tasks: dict) -> dict[str, list[str]]:
    return {name: sorted(info["upstream"]) for name, info in tasks.items()}


def expected_edges(project: Path) -> dict[str, list[str]]:
    """The task graph of the project's pipeline.yaml and notebooks, read without mlops_nb."""
    return {name: sorted(info["upstream"]) for name, info in pipeline_graph(project).items()}


def unbuilt_copy(project: Path, folder: Path) -> Path:
    """The project's sources and inputs in ``folder``, without data/: another checkout of it, never run."""
    folder.mkdir()
    for name in ("settings.ini", "pipeline.yaml", "features.yaml", "notebooks", "inputs"):
        src = project / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, folder / name)
    return folder


@pytest.fixture(scope="module")
def airflow_bin(tool_bin) -> Path:
    return tool_bin("airflow")


@pytest.mark.slow
def test_dags_test_runs_every_task_once_and_registers_the_same_model(project, tmp_path, airflow_bin):
    champion = run_ok(project, "models", "show", "champion", "--json").json()
    other = unbuilt_copy(project, tmp_path / "checkout")
    home = tmp_path / "airflow"
    # the DAG's default is another value: the triggered run's conf below must reach every task's command
    run_ok(other, "export", "airflow", "--out", home / "dags", "-p", f"{PARAM}=31")

    started = time.perf_counter()
    airflow(airflow_bin, home, "db", "migrate")
    migrated = time.perf_counter()
    airflow(airflow_bin, home, "dags", "test", "mlops_nb", "-c", json.dumps({PARAM: "30"}))
    print(f"airflow db migrate {migrated - started:.1f} s, dags test {time.perf_counter() - migrated:.1f} s")

    (dag_run,) = last_json(airflow(airflow_bin, home, "dags", "list-runs", "mlops_nb", "-o", "json"))
    assert dag_run["state"] == "success", dag_run
    states = last_json(airflow(airflow_bin, home, "tasks", "states-for-dag-run", "mlops_nb", dag_run["run_id"],
                               "-o", "json"))
    assert sorted(s["task_id"] for s in states) == sorted(expected_edges(other)), states
    assert {s["state"] for s in states} == {"success"}, states

    # each Airflow task ran `mlops-nb run --task NAME --only` exactly once: one run record a task, in edge order
    runs = run_ok(other, "runs", "--json", "--limit", "100").json()
    ran = [(t["task"], t["status"]) for r in reversed(runs) for t in r["tasks"]]
    assert sorted(ran) == sorted((name, "ran") for name in expected_edges(other)), ran
    assert {r["status"] for r in runs} == {"succeeded"}, runs
    assert {r["params"][PARAM] for r in runs} == {"30"}, "the triggered run's param did not reach a task"
    order = [name for name, _ in ran]
    for name, upstream in expected_edges(other).items():
        assert all(order.index(up) < order.index(name) for up in upstream), order

    registered = run_ok(other, "models", "show", "champion", "--json").json()
    assert (registered["tag"], registered["sha256"]) == (champion["tag"], champion["sha256"]), (registered, champion)
    version = champion["version"]
    assert folder_bytes(store_dir(other, version)).get("model.joblib") == \
        folder_bytes(store_dir(project, version))["model.joblib"], f"{MODEL_NAME}:{version} differs"
    assert run_ok(other, "run", "--quiet").tasks_with("ran") == set(), "the DAG left the project not up to date"


@pytest.mark.slow
def test_dagbag_parses_both_variants_with_the_pipelines_tasks_and_edges(project_factory, tmp_path, airflow_bin):
    project = project_factory()
    home = tmp_path / "airflow"
    run_ok(project, "export", "airflow", "--out", home / "dags", "-p", "model.seed=7")
    run_ok(project, "export", "airflow", "--out", home / "dags", "--dag-id", "flights_on_k8s",
           "--image", "registry.example.com/flights:1.0", "-p", "model.seed=7")
    tricky = "7 $(touch pwned); 'x'"  # a triggered value is one argument, never shell code
    parsed = parse_dags(airflow_bin, home, {"model.seed": tricky})
    assert parsed["import_errors"] == {}, parsed["import_errors"]
    assert sorted(parsed["dags"]) == ["flights_on_k8s", "mlops_nb"]

    graph = expected_edges(project)
    for dag_id, dag in parsed["dags"].items():
        assert edges(dag["tasks"]) == graph, dag_id
        assert (dag["max_active_runs"], dag["max_active_tasks"], dag["catchup"]) == (1, 1, False), dag
        assert dag["schedule"] == "NullTimetable" and dag["params"] == {"model.seed": "7"}, dag

    for name, task in parsed["dags"]["mlops_nb"]["tasks"].items():
        assert task["operator"] == "BashOperator"
        cd, run = (words(part, tmp_path) for part in task["command"].split(" && "))
        assert cd == ["cd", str(project)], task["command"]
        assert run == [str(CLI), "run", "--task", name, "--only", "-p", f"model.seed={tricky}"], task["command"]
        assert not (tmp_path / "pwned").exists()

    for name, task in parsed["dags"]["flights_on_k8s"]["tasks"].items():
        assert task["operator"] == "KubernetesPodOperator"
        assert task["image"] == "registry.example.com/flights:1.0"
        assert task["command"] == ["mlops-nb", "run", "--task", name, "--only", "-p", f"model.seed={tricky}"]
        (mount,) = task["mounts"]
        (volume,) = task["volumes"]
        assert mount["mount_path"] == "/project/data" and mount["name"] == volume["name"], task
        assert volume["persistent_volume_claim"]["claim_name"] == "flights-on-k8s-data", volume


def test_the_same_project_exports_the_same_bytes(project_factory, tmp_path):
    project = project_factory()
    first = run_ok(project, "export", "airflow", "--out", tmp_path / "a", "-p", "model.seed=7")
    again = run_ok(project, "export", "airflow", "--out", tmp_path / "b", "-p", "model.seed=7")
    assert [Path(line).name for line in first.stdout.split()] == ["mlops_nb.py"]
    assert (tmp_path / "a" / "mlops_nb.py").read_bytes() == (tmp_path / "b" / "mlops_nb.py").read_bytes()
    assert folder_bytes(tmp_path / "a").keys() == {"mlops_nb.py"}, "staging files were left behind"
    assert again.stdout.split() == [str(tmp_path / "b" / "mlops_nb.py")]


@pytest.mark.parametrize("args, says", [
    (["--dag-id", "my dag!"], ["DAG id", "'my dag!'", "letters, digits, dashes, dots or underscores", "--dag-id"]),
    (["--dag-id", "d" * 251], ["DAG id", "251 characters", "--dag-id"]),
    (["-p", "model.sed=7"], ["Unknown setting 'model.sed'", "Did you mean 'model.seed'"]),
    (["--image", "has space:1"], ["--image", "'has space:1'"]),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(project_factory, tmp_path, args, says):
    project = project_factory()
    out = tmp_path / "dags"
    result = run_cli(project, "export", "airflow", "--out", out, *args)
    assert result.returncode == 7, str(result)
    for text in says:
        assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not out.exists(), "a refused export wrote something"


def test_an_unwritable_out_is_a_clear_error(project_factory, tmp_path):
    project = project_factory()
    place = tmp_path / "elsewhere"
    place.mkdir()
    blocker = place / "a-file"
    blocker.write_text("not a folder\n", encoding="utf-8")
    result = run_cli(project, "export", "airflow", "--out", blocker / "dags")
    assert result.returncode == 7, str(result)
    assert f"Cannot write the export into {blocker / 'dags'}" in result.stderr and "--out" in result.stderr, \
        result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert blocker.read_text(encoding="utf-8") == "not a folder\n"
    assert [p.name for p in place.iterdir()] == ["a-file"], "something was written beside it"
