"""`mlops-nb run --task NAME --only`: one task alone, against the products its upstream tasks already made, as
an orchestrator (Airflow, Kubeflow Pipelines) runs each task, also from another working copy that shares
the project's data/ (a shared volume)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import (PRODUCTS, downstream, folder_bytes, last_run, pipeline_graph, run_cli, run_count, run_ok,
                      upstream_closure, warehouse_tables)


@pytest.fixture(scope="module")
def graph(built) -> dict:
    return pipeline_graph(built.pristine)


def products(project: Path) -> dict[str, str]:
    return folder_bytes(project / PRODUCTS)


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in set(before) | set(after) if before.get(k) != after.get(k)}


def train_json(project: Path) -> dict:
    return json.loads((project / PRODUCTS / "train.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_only_runs_the_task_alone_and_the_next_run_finishes_what_follows(project, graph):
    assert len(upstream_closure(graph, "train")) > 1, "train has upstream tasks in the reference pipeline"
    before = products(project)
    result = run_ok(project, "run", "--quiet", "-p", "model.seed=7", "--task", "train", "--only")
    assert result.task_table() == {"train": "ran"}, str(result)
    assert train_json(project)["seed"] == 7
    touched = changed(before, products(project))
    assert {"train.json", "model.joblib"} <= touched, touched
    for name in ("ingest.json", "validate.json", "features.json", "metrics.json", "gate.json"):
        assert name not in touched, f"--only ran more than train: {name} changed"
    run = last_run(project)
    assert run["status"] == "succeeded" and [t["task"] for t in run["tasks"]] == ["train"], run

    again = run_ok(project, "run", "--quiet", "-p", "model.seed=7", "--task", "train", "--only")
    assert again.task_table() == {"train": "skipped"}, str(again)  # up to date: an orchestrator's retry is free

    evaluate = run_ok(project, "run", "--quiet", "-p", "model.seed=7", "--task", "evaluate", "--only")
    assert evaluate.task_table() == {"evaluate": "ran"}, str(evaluate)
    rest = run_ok(project, "run", "--quiet", "-p", "model.seed=7")
    assert rest.tasks_with("ran") == downstream(graph, "evaluate") - {"evaluate"}, str(rest)


@pytest.mark.slow
def test_only_refuses_a_stale_or_missing_upstream_and_changes_nothing(project):
    runs, tables, before = run_count(project), warehouse_tables(project, include_runs=True), products(project)

    stale = run_cli(project, "run", "--quiet", "-p", "features.lead=3h", "--task", "train", "--only")
    assert stale.returncode == 4, str(stale)
    assert "task 'features'" in stale.stderr and "parameters" in stale.stderr, stale.stderr
    assert "mlops-nb run --task features" in stale.stderr and "Traceback" not in stale.stderr, stale.stderr

    (project / PRODUCTS / "features.json").unlink()
    missing = run_cli(project, "run", "--quiet", "--task", "train", "--only")
    assert missing.returncode == 4, str(missing)
    assert "task 'features': product features.json is missing" in missing.stderr, missing.stderr

    after = products(project)
    assert changed(before, after) == {"features.json"}, "a refused --only run changed the products"
    assert run_count(project) == runs
    assert warehouse_tables(project, include_runs=True) == tables


def test_only_needs_a_known_task(project):
    bare = run_cli(project, "run", "--only")
    assert bare.returncode == 2 and "--task NAME" in bare.stderr, str(bare)
    unknown = run_cli(project, "run", "--task", "trian", "--only")
    assert unknown.returncode == 6, str(unknown)
    assert "Did you mean 'train'" in unknown.stderr and "Traceback" not in unknown.stderr, unknown.stderr


@pytest.mark.slow
def test_only_from_another_working_copy_that_shares_data(project, tmp_path, graph):
    """Two working copies (two machines) of the same project, one data/ between them: a task run in one
    builds on the products the other made, and the state both read says so."""
    other = tmp_path / "other-machine"
    other.mkdir()
    for name in ("settings.ini", "pipeline.yaml", "features.yaml", "notebooks", "inputs"):
        src = project / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, other / name)
    (other / "data").symlink_to(project / "data", target_is_directory=True)

    trained = run_ok(other, "run", "--quiet", "-p", "model.seed=7", "--task", "train", "--only")
    assert trained.task_table() == {"train": "ran"}, str(trained)
    evaluated = run_ok(project, "run", "--quiet", "-p", "model.seed=7", "--task", "evaluate", "--only")
    assert evaluated.task_table() == {"evaluate": "ran"}, str(evaluated)  # the other copy's train is up to date here
    gated = run_ok(other, "run", "--quiet", "-p", "model.seed=7", "--task", "gate", "--only")
    assert gated.task_table() == {"gate": "ran"}, str(gated)
    assert run_ok(project, "run", "--quiet", "-p", "model.seed=7").tasks_with("ran") == set(), "all built"
    assert train_json(project)["seed"] == 7
