"""`pipeline.task_timeout` bounds a task run by the in-process executor (mlops_nb/run/dag.py, SIGALRM): a task
that hangs stops the run within the limit, the error names the task and the limit, the run rolls back
(warehouse, products, registry as they were; a failed run record), and the next run works."""
from __future__ import annotations

import time

import pytest

from conftest import PRODUCTS, assert_up_to_date, folder_bytes, last_run, run_cli, run_ok, warehouse_tables

pytestmark = pytest.mark.slow

HANG = "\n# %%\nimport time\ntime.sleep(600)\n"


def test_hanging_task_is_stopped_and_rolled_back(project):
    nb = project / "notebooks" / "tasks" / "evaluate.py"
    original = nb.read_text(encoding="utf-8")
    tables = warehouse_tables(project)
    products = folder_bytes(project / PRODUCTS)
    versions = run_ok(project, "models", "list", "--json").stdout
    runs_before = last_run(project)["run_id"]

    nb.write_text(original + HANG, encoding="utf-8")
    started = time.monotonic()
    result = run_cli(project, "run", "--quiet", "-p", "pipeline.task_timeout=3", timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode != 0, str(result)
    assert seconds < 60, f"the run took {seconds:.0f} s with a 3 s task limit:\n{result}"
    assert "evaluate" in result.stderr and "pipeline.task_timeout = 3" in result.stderr, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert result.task_table().get("evaluate") == "failed", str(result)
    assert result.task_table().get("gate") != "ran", str(result)

    # rolled back: only the run record is new
    assert warehouse_tables(project) == tables
    assert folder_bytes(project / PRODUCTS) == products
    assert run_ok(project, "models", "list", "--json").stdout == versions
    record = last_run(project)
    assert record["run_id"] != runs_before
    assert record["status"] == "failed"
    assert "pipeline.task_timeout" in (record["error"] or ""), record
    assert {t["task"]: t["status"] for t in record["tasks"]}.get("evaluate") == "failed", record

    # without the hang: the project is as the last good build left it, and a run under the same limit works
    nb.write_text(original, encoding="utf-8")
    assert_up_to_date(project, "-p", "pipeline.task_timeout=3")
    nb.write_text(original + "\n# %%\n# a harmless cell\n", encoding="utf-8")
    fixed = run_ok(project, "run", "--quiet", "-p", "pipeline.task_timeout=120", timeout=300)
    assert fixed.tasks_with("ran") == {"evaluate", "gate"}, str(fixed)
    assert last_run(project)["status"] == "succeeded"
