"""The real pipeline through the real CLI, on a small sample: a full build, run records, incremental
rebuilds, reproducibility, the run lock and failure safety."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from conftest import (CLI, PACKAGE, PRODUCTS, TASKS, TIMEOUT, Result, assert_up_to_date, cli_env,
                      downstream, folder_bytes, last_run, pipeline_graph, read_csv_text,
                      run_cli, run_count, run_ok, task_reports, tasks_using, upstream_closure, warehouse_tables)
from mlops_nb.run import plan as spec


@pytest.fixture(scope="module")
def graph(built) -> dict:
    g = pipeline_graph(built.pristine)
    assert set(TASKS) <= set(g), f"the reference tasks {TASKS} are not all in pipeline.yaml: {list(g)}"
    return g


def products(project: Path) -> dict[str, str]:
    return folder_bytes(project / PRODUCTS)


def read_product(project: Path, name: str) -> dict:
    return json.loads((project / PRODUCTS / name).read_text(encoding="utf-8"))


def assert_ran_exactly(result: Result, expected: set[str], graph: dict):
    table = result.task_table()
    assert set(table) == set(graph), str(result)
    assert result.tasks_with("ran") == expected, str(result)
    assert result.tasks_with("skipped") == set(graph) - expected, str(result)


# --------------------------------------------------------------------------------------------------
# a full build


@pytest.mark.slow
def test_full_build_runs_every_task_and_reports(built, graph):
    first = built.first
    assert first.returncode == 0
    assert first.task_table() == {t: "ran" for t in graph}, str(first)
    assert re.search(r"Run \S+: succeeded in [\d.]+ s", first.stdout)
    assert re.search(r"test metrics: roc_auc \d\.\d{4}", first.stdout)
    assert "Traceback" not in first.stderr
    project = built.pristine
    for task in TASKS:
        assert (project / PRODUCTS / f"{task}.ipynb").is_file()
    for name in ("ingest.json", "validate.json", "features.json", "train.json", "metrics.json",
                 "model.joblib", "predictions.parquet"):
        assert (project / PRODUCTS / name).stat().st_size > 0, name
    metrics = read_product(project, "metrics.json")
    assert 0 < metrics["test"]["roc_auc"] < 1
    features = read_product(project, "features.json")
    assert metrics["test"]["n"] == features["row_counts"]["test"]
    assert not (project / "reports" / "failed").exists()
    # the latest report of each task, the reports site (index.html, site/) and each run's reports (runs/)
    assert sorted(p.name for p in (project / "reports").glob("*.html")) == sorted([f"{t}.html" for t in graph]
                                                                                 + ["index.html"])
    first_id = re.search(r"Run (\S+): succeeded", first.stdout).group(1)
    assert sorted(p.name for p in (project / "reports" / "runs" / first_id).iterdir()) == \
        sorted(f"{t}.html" for t in graph)
    leftovers = [p.name for p in (project / "data").iterdir() if p.name.startswith("mlops-nb-")]
    assert not leftovers, f"staging folders left behind: {leftovers}"


@pytest.mark.slow
@pytest.mark.parametrize("task", TASKS)
def test_reports_are_offline_html_without_code(built, task):
    report = built.pristine / "reports" / f"{task}.html"
    assert report.is_file(), f"no report for {task}"
    html = report.read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html")
    assert '<script src="http' not in html
    assert not re.search(r'src="https?://', html), "the report loads something from the network"
    # no code cell shows its input or its prompt
    assert not re.search(r'class="[^"]*jp-InputPrompt', html)
    assert "In&nbsp;[" not in html
    code_cells = re.findall(r'<div class="(jp-Cell jp-CodeCell[^"]*)"', html)
    assert code_cells and all("jp-mod-noInput" in c for c in code_cells)
    notebook = (built.pristine / "notebooks" / "tasks" / f"{task}.py").read_text(encoding="utf-8")
    assert re.search(r"from mlops_nb[.\w]* import", notebook)
    assert not re.search(r"from mlops_nb[.\w]* import", html)
    # ...but the markdown does show: the notebook's title
    title = re.search(r"^# # (.+)$", notebook, flags=re.M).group(1)
    assert f">{title}<" in html


@pytest.mark.slow
def test_runs_json_records_lineage(project, graph):
    rows = run_ok(project, "runs", "--json").json()
    assert len(rows) == 1
    run = rows[0]
    assert run["status"] == "succeeded"
    assert run["run_id"] in run_ok(project, "runs").stdout
    assert "git_commit" in run and "git_dirty" in run
    assert run["started_at"] < run["ended_at"]
    assert run["params"]["model.seed"] == "42"
    assert run["params"]["data.months"] == "1-3"
    assert run["params"]["data.source"] == "inputs"
    assert run["snapshot_id"] == read_product(project, "ingest.json")["snapshot_id"]
    for package, dist in (("duckdb", "duckdb"), ("scikit-learn", "scikit-learn")):
        assert run["versions"][package] == metadata.version(dist)
    assert run["metrics"]["roc_auc"] == read_product(project, "metrics.json")["test"]["roc_auc"]
    tasks = {t["task"]: t for t in run["tasks"]}
    assert set(tasks) == set(graph)
    assert all(t["status"] == "ran" and t["seconds"] > 0 for t in tasks.values())
    assert run["error"] is None


# --------------------------------------------------------------------------------------------------
# incremental builds


@pytest.mark.slow
def test_second_run_runs_nothing(project, graph):
    before = (warehouse_tables(project), products(project), task_reports(project))
    started = time.perf_counter()
    result = assert_up_to_date(project)
    seconds = time.perf_counter() - started
    assert result.task_table() == {t: "skipped" for t in graph}
    assert seconds < 10, f"a no-op run took {seconds:.1f} s"
    run = last_run(project)
    assert run["status"] == "up-to-date"
    assert {t["status"] for t in run["tasks"]} == {"skipped"}
    assert run["snapshot_id"] == read_product(project, "ingest.json")["snapshot_id"]
    assert run["metrics"] == read_product(project, "metrics.json")["test"]
    assert (warehouse_tables(project), products(project), task_reports(project)) == before


@pytest.mark.slow
def test_up_to_date_run_imports_nothing_heavy(project):
    """The runner decides nothing is stale without importing Ploomber, pandas or scikit-learn."""
    code = ("import json, sys\nfrom mlops_nb.cli import main\nrc = main(['run', '--quiet'])\n"
            "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules})]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=cli_env(), capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to do" in proc.stdout
    rc, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0
    heavy = {"ploomber", "ploomber_engine", "papermill", "pandas", "sklearn", "whylogs", "nbconvert", "bentoml"}
    assert heavy & set(modules) == set()


@pytest.mark.slow
def test_model_seed_reruns_only_train_and_downstream(project, graph):
    assert tasks_using(graph, "model.seed") == {"train"}
    expected = downstream(graph, "train")
    assert {"train", "evaluate"} <= expected and not {"ingest", "validate", "features"} & expected
    before = products(project)
    result = run_ok(project, "run", "--quiet", "-p", "model.seed=7")
    assert_ran_exactly(result, expected, graph)
    assert read_product(project, "train.json")["seed"] == 7
    after = products(project)
    for name in ("ingest.json", "validate.json", "features.json", "ingest.ipynb", "features.ipynb"):
        assert after[name] == before[name], f"{name} changed though its task did not run"
    assert after["train.json"] != before["train.json"]
    run = last_run(project)
    assert run["status"] == "succeeded" and run["params"]["model.seed"] == "7"
    # the same parameters again: nothing to do
    assert_up_to_date(project, "-p", "model.seed=7")


@pytest.mark.slow
def test_split_months_rerun_features_and_downstream(project, graph):
    expected = downstream(graph, "features")
    assert {"features", "train", "evaluate"} <= expected and not {"ingest", "validate"} & expected
    snapshot = read_product(project, "ingest.json")["snapshot_id"]
    result = run_ok(project, "run", "--quiet", "-p", "split.train_months=2", "-p", "split.valid_months=1")
    assert_ran_exactly(result, expected, graph)
    receipt = read_product(project, "features.json")
    assert receipt["split"]["train"] == [2] and receipt["split"]["valid"] == [1]
    assert receipt["snapshot_id"] == snapshot


@pytest.mark.slow
def test_changed_input_bytes_rerun_everything(project, graph):
    flights = project / "inputs" / "flights.csv"
    before = read_product(project, "ingest.json")
    lines = flights.read_text(encoding="utf-8").splitlines(keepends=True)
    flights.write_text("".join(lines[:-1]), encoding="utf-8")  # one flight fewer; same path, same settings
    result = run_ok(project, "run", "--quiet")
    assert_ran_exactly(result, set(graph), graph)
    after = read_product(project, "ingest.json")
    assert after["snapshot_id"] != before["snapshot_id"]
    assert after["row_counts"]["flights"] == before["row_counts"]["flights"] - 1
    assert last_run(project)["snapshot_id"] == after["snapshot_id"]
    assert_up_to_date(project)


@pytest.mark.slow
def test_rewritten_identical_input_is_up_to_date(project):
    flights = project / "inputs" / "flights.csv"
    flights.write_bytes(flights.read_bytes())
    future = time.time() + 3600
    os.utime(flights, (future, future))
    assert_up_to_date(project)


@pytest.mark.slow
def test_edited_task_notebook_reruns_it_and_downstream(project, graph):
    notebook = project / "notebooks" / "tasks" / "evaluate.py"
    notebook.write_text(notebook.read_text(encoding="utf-8") + "\n# %%\nprint('edited')\n", encoding="utf-8")
    result = run_ok(project, "run", "--quiet")
    assert_ran_exactly(result, downstream(graph, "evaluate"), graph)


@pytest.mark.slow
def test_task_option_runs_only_the_closure(project, graph):
    metrics_before = products(project)["metrics.json"]
    result = run_cli(project, "run", "--quiet", "-p", "model.seed=7", "--task", "train")
    assert result.returncode == 0, str(result)
    table = result.task_table()
    assert set(table) == upstream_closure(graph, "train"), str(result)
    assert table["train"] == "ran"
    assert {table[t] for t in upstream_closure(graph, "train") - {"train"}} == {"skipped"}
    assert read_product(project, "train.json")["seed"] == 7
    assert products(project)["metrics.json"] == metrics_before
    # what --task left out runs next time
    result = run_ok(project, "run", "--quiet", "-p", "model.seed=7")
    assert_ran_exactly(result, downstream(graph, "train") - {"train"}, graph)


def test_code_hash_follows_imported_modules(tmp_path, monkeypatch):
    """A task is stale when a module its notebook imports changes, directly or through other modules,
    or an SQL file such a module names; other modules do not matter."""
    package = tmp_path / "mlops_nb"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    notebook = "from mlops_nb.data import features\nimport pandas as pd\n"
    real = spec.code_hash(notebook)
    monkeypatch.setattr(spec, "PACKAGE_DIR", package)
    assert spec.code_hash(notebook) == real  # the content counts, not where the package lives
    assert spec.imported_modules(notebook) == {"data.features"}

    def edit(relative: str, text: str = "\n# edited\n"):
        with open(package / relative, "a", encoding="utf-8") as f:
            f.write(text)

    hashes = [real]
    for relative in ("data/features.py", "data/warehouse.py", "config.py", "errors.py", "data/sql/features.sql"):
        edit(relative)
        hashes.append(spec.code_hash(notebook))
        assert hashes[-1] != hashes[-2], f"editing {relative} did not change the hash"
    # not imported by features, even indirectly
    for relative in ("data/profiles.py", "lib/model.py", "cli/__init__.py"):
        edit(relative)
        assert spec.code_hash(notebook) == hashes[-1], f"editing {relative} changed the hash"


def test_imported_modules_resolve_subpackages(tmp_path, monkeypatch):
    """Modules of subpackages, imported absolutely or relatively inside a subpackage, and the registry
    facade, whose module registry/versions.py counts for a notebook that imports registry."""
    assert spec.imported_modules("import mlops_nb.data.features\n") == {"data.features"}
    assert spec.imported_modules("from mlops_nb.data.features import load\n") == {"data.features"}
    assert spec.imported_modules("from mlops_nb import config, registry\n") == {"config", "registry"}
    relative = "from .. import config\nfrom ..errors import DataError\nfrom .warehouse import transaction\n"
    assert spec.imported_modules(relative, "data") == {"config", "errors", "data.warehouse"}
    package = tmp_path / "mlops_nb"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(spec, "PACKAGE_DIR", package)
    notebook = "from mlops_nb import registry\n"
    before = spec.code_hash(notebook)
    with open(package / "registry" / "versions.py", "a", encoding="utf-8") as f:
        f.write("\n# edited\n")
    assert spec.code_hash(notebook) != before


def test_code_hash_of_the_task_notebooks(tmp_path, monkeypatch):
    package = tmp_path / "mlops_nb"
    shutil.copytree(PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(spec, "PACKAGE_DIR", package)
    notebooks = {t: (PACKAGE.parent / "notebooks" / "tasks" / f"{t}.py").read_text(encoding="utf-8")
                 for t in TASKS}
    before = {t: spec.code_hash(text) for t, text in notebooks.items()}
    with open(package / "lib" / "transforms.py", "a", encoding="utf-8") as f:  # imported by model
        f.write("\n# edited\n")
    after = {t: spec.code_hash(text) for t, text in notebooks.items()}
    changed = {t for t in TASKS if after[t] != before[t]}
    assert {"train", "evaluate"} <= changed  # both import model, which imports transforms
    assert "ingest" not in changed


# --------------------------------------------------------------------------------------------------
# reproducibility


@pytest.mark.slow
def test_two_clean_builds_give_identical_results(project_factory):
    """Two folders, the bundled data, the same settings: the same metrics and the same predictions."""
    projects = [project_factory(name) for name in ("a", "b")]
    procs = [subprocess.Popen([str(CLI), "run", "--quiet"], cwd=p, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for p in projects]
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, out + err
    import numpy as np
    import pandas as pd

    a, b = (read_product(p, "metrics.json") for p in projects)
    assert a["test"] == b["test"]
    assert a["per_month"] == b["per_month"]
    assert a["predictions_sha256"] == b["predictions_sha256"]
    assert a["snapshot_id"] == b["snapshot_id"] and a["feature_set_id"] == b["feature_set_id"]
    ta, tb = (read_product(p, "train.json") for p in projects)
    assert ta["metrics"] == tb["metrics"]
    pa, pb = (pd.read_parquet(p / PRODUCTS / "predictions.parquet")["p_late"].to_numpy() for p in projects)
    assert len(pa) == a["test"]["n"] > 0
    assert np.array_equal(pa, pb)
    assert pa.tobytes() == pb.tobytes()


@pytest.mark.slow
def test_papermill_kernels_build_the_same_model(project):
    """pipeline.executor = papermill (a kernel a task, in the project root as the in-process engine) gives
    the same products as the in-process build, and the run commits like any other."""
    engine = read_product(project, "metrics.json")
    model = (project / PRODUCTS / "model.joblib").read_bytes()
    result = run_ok(project, "run", "--force", "-p", "pipeline.executor=papermill")
    assert set(pipeline_graph(project)) == result.tasks_with("ran"), str(result)
    kernels = read_product(project, "metrics.json")
    assert kernels["test"] == engine["test"] and kernels["predictions_sha256"] == engine["predictions_sha256"]
    assert (project / PRODUCTS / "model.joblib").read_bytes() == model
    assert last_run(project)["status"] == "succeeded"
    assert "Nothing to do" in run_ok(project, "run", "-p", "pipeline.executor=papermill").stdout


# --------------------------------------------------------------------------------------------------
# one run at a time


@pytest.mark.slow
def test_second_concurrent_run_is_refused(project, graph):
    lock = project / "data" / ".run.lock"
    runs_before = run_count(project)
    first = subprocess.Popen([str(CLI), "run", "--quiet", "--force"], cwd=project, env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:
            if lock.exists() and lock.read_text(encoding="utf-8").startswith(f"pid {first.pid},"):
                break
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        assert lock.read_text(encoding="utf-8").startswith(f"pid {first.pid},")

        second = run_cli(project, "run", "--quiet")
        assert first.poll() is None, "the first run ended while the second ran: the test proves nothing"
        assert second.returncode == 5, str(second)
        assert "Another mlops-nb run" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=TIMEOUT)
    assert first.returncode == 0, out + err
    assert set(Result([], 0, out, err, 0).tasks_with("ran")) == set(graph)
    assert run_count(project) == runs_before + 1  # the refused run recorded nothing
    assert last_run(project)["status"] == "succeeded"
    # the lock was released with the first run
    assert_up_to_date(project)


# --------------------------------------------------------------------------------------------------
# a task that fails leaves everything as it was


def state_of(project: Path) -> dict:
    return {"tables": warehouse_tables(project), "products": products(project),
            "reports": {k: v for k, v in task_reports(project).items() if not k.startswith(("failed/", "runs/"))},
            "data": sorted(os.listdir(project / "data"))}


@pytest.mark.slow
def test_failing_features_task_changes_nothing(project):
    flights = project / "inputs" / "flights.csv"
    frame = read_csv_text(flights)
    frame.loc[frame.month == "3", "arr_delay"] = "NA"  # no test month flight arrived: an empty test split
    frame.to_csv(flights, index=False)
    before = state_of(project)
    runs_before = run_count(project)

    result = run_cli(project, "run", "--quiet")

    assert result.returncode == 3, str(result)  # DataError
    assert "Traceback" not in result.stderr
    assert re.search(r"Task 'features' \(features\.py\), (code )?cell \d+", result.stderr), str(result)
    assert "test split(s) have no rows" in result.stderr
    table = result.task_table()
    assert table["ingest"] == "ran" and table["validate"] == "ran" and table["features"] == "failed"
    assert {table[t] for t in ("train", "evaluate")} == {"not-run"}
    assert state_of(project) == before
    assert (project / "reports" / "failed" / "features.html").is_file()
    assert run_count(project) == runs_before + 1
    run = last_run(project)
    assert run["status"] == "failed" and "Task 'features'" in run["error"]
    kept = project / "reports" / "runs" / run["run_id"]  # the failed run keeps its failed notebook, nothing else
    assert [p.name for p in kept.iterdir()] == ["features.html"]
    # with the data fixed the next run builds again, from the ingest on
    shutil.copy(project.parent / "inputs-template" / "flights.csv", flights)
    assert_up_to_date(project)


@pytest.mark.slow
def test_failing_train_task_changes_nothing(project):
    """A foreign exception (scikit-learn's) in a task: named with its task and cell, no traceback."""
    flights = project / "inputs" / "flights.csv"
    frame = read_csv_text(flights)
    frame.loc[(frame.month == "1") & (frame.arr_delay != "NA"), "arr_delay"] = "0"  # nobody late in train
    frame.to_csv(flights, index=False)
    before = state_of(project)

    result = run_cli(project, "run", "--quiet", "-p", "model.kind=logreg")

    assert result.returncode == 4, str(result)  # PipelineError
    assert "Traceback" not in result.stderr
    assert re.search(r"Task 'train' \(train\.py\), (code )?cell \d+", result.stderr), str(result)
    assert "ValueError" in result.stderr and "class" in result.stderr
    assert result.task_table()["train"] == "failed"
    assert state_of(project) == before
    assert last_run(project)["status"] == "failed"
