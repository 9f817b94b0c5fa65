"""`mlops-nb run` on bad input, after a good build: a plain message naming the problem, a non-zero exit,
no traceback, and the warehouse, the products and the reports exactly as they were."""
from __future__ import annotations

import os
import time

import pytest

from conftest import (PRODUCTS, folder_bytes, last_run, read_csv_text, run_cli, run_count, task_reports,
                      warehouse_tables)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bad(tmp_path_factory, small_data):
    """name -> path of a bad flights file."""
    folder = tmp_path_factory.mktemp("bad-files")
    good = read_csv_text(small_data / "flights.csv")
    files = {}

    def save(name, frame):
        files[name] = folder / f"{name}.csv"
        frame.to_csv(files[name], index=False)

    save("no_carrier", good.drop(columns=["carrier"]))
    save("no_month", good.drop(columns=["month"]))
    distance = good.distance.copy()
    distance.iloc[::100] = "far"
    save("text_distance", good.assign(distance=distance))
    month = good.month.copy()
    month.iloc[5] = "March"
    save("text_month", good.assign(month=month))
    save("header_only", good.iloc[:0])
    files["empty"] = folder / "empty.csv"
    files["empty"].write_bytes(b"")
    files["missing"] = folder / "does-not-exist.csv"
    files["not_csv"] = folder / "flights.xlsx"
    files["not_csv"].write_bytes(b"PK\x03\x04 not a table")
    return files


def snapshot_state(project):
    """Everything a failed run must leave as it was (the run records aside)."""
    return {
        "tables": warehouse_tables(project),
        "products": folder_bytes(project / PRODUCTS),
        "reports": {k: v for k, v in task_reports(project).items() if not k.startswith(("failed/", "runs/"))},
        "data_dir": sorted(os.listdir(project / "data")),
    }


def assert_unchanged(project, before):
    after = snapshot_state(project)
    assert after["tables"] == before["tables"], "warehouse tables changed"
    assert after["products"] == before["products"], "products changed"
    assert after["reports"] == before["reports"], "reports changed"
    assert after["data_dir"] == before["data_dir"], "files left in data/"


def assert_clean_error(result, exit_code, *names):
    assert result.returncode == exit_code, str(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, str(result)
    for name in names:
        assert name in result.stderr, f"{name!r} not in stderr:\n{result}"


# --------------------------------------------------------------------------------------------------
# bad data files: caught when the pipeline is planned or in a task


CASES = {
    # bad file: (exit code, texts stderr must contain, task that fails (None: before any task runs))
    "no_carrier": (3, ["flights.carrier", "column present"], "validate"),
    "no_month": (3, ["'month' column", "no_month.csv"], "ingest"),
    "text_distance": (3, ["flights.distance", "type number"], "validate"),
    "text_month": (3, ["'month' column", "integers", "text_month.csv"], "ingest"),
    "header_only": (3, ["header but no rows", "header_only.csv"], "ingest"),
    "empty": (3, ["empty (0 bytes)", "empty.csv"], None),
    "missing": (2, ["'data.flights'", "does-not-exist.csv"], None),
    "not_csv": (3, ["CSV or Parquet", "flights.xlsx"], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_flights_file(project, bad, name):
    exit_code, texts, failing_task = CASES[name]
    before = snapshot_state(project)
    runs_before = run_count(project)

    result = run_cli(project, "run", "--quiet", "-p", f"data.flights={bad[name]}")

    assert_clean_error(result, exit_code, *texts)
    assert_unchanged(project, before)
    if failing_task is not None:
        assert f"Task '{failing_task}'" in result.stderr
        assert "cell" in result.stderr
        assert result.task_table()[failing_task] == "failed"
        assert "as they were" in result.stderr
        # a failed run records itself, with its error
        assert run_count(project) == runs_before + 1
        record = last_run(project)
        assert record["status"] == "failed"
        assert texts[0] in record["error"]
        assert record["params"]["data.flights"] == str(bad[name])
        assert {t["task"]: t["status"] for t in record["tasks"]}[failing_task] == "failed"
        # the failing notebook is kept for reading, apart from the reports of good runs
        assert (project / "reports" / "failed" / f"{failing_task}.html").is_file()


# --------------------------------------------------------------------------------------------------
# bad settings


@pytest.mark.parametrize("param, texts", [
    ("model.sed=7", ["'model.sed'", "Did you mean 'model.seed'?"]),
    ("seeed=7", ["'seeed'", "Did you mean 'seed'?"]),
    ("model.seed=abc", ["'model.seed'", "'abc'", "an integer >= 0"]),
    ("split.valid_months=1", ["'split.valid_months'", "overlaps", "month 1"]),
    ("model.threshold=1.5", ["'model.threshold'", "1.5"]),
])
def test_bad_param(project, param, texts):
    before = snapshot_state(project)
    runs_before = run_count(project)
    result = run_cli(project, "run", "--quiet", "-p", param)
    assert_clean_error(result, 2, *texts)
    assert_unchanged(project, before)
    assert run_count(project) == runs_before  # refused before it started


def test_param_without_value(project):
    before = snapshot_state(project)
    result = run_cli(project, "run", "-p", "model.seed")
    assert_clean_error(result, 2, "-p expects key=value", "'model.seed'")
    assert_unchanged(project, before)


def test_bad_environment_variable(project):
    before = snapshot_state(project)
    result = run_cli(project, "run", "--quiet", env={"MLOPS_NB_MODEL__SEEED": "3"})
    assert_clean_error(result, 2, "model.seeed")
    assert_unchanged(project, before)


def test_unknown_task(project):
    before = snapshot_state(project)
    result = run_cli(project, "run", "--quiet", "--task", "trian")
    assert_clean_error(result, 6, "'trian'", "Did you mean 'train'?")
    assert_unchanged(project, before)


def test_unknown_key_in_settings_file(project):
    ini = project / "settings.ini"
    ini.write_text(ini.read_text(encoding="utf-8").replace("max_iter =", "max_iters ="), encoding="utf-8")
    before = snapshot_state(project)
    result = run_cli(project, "run", "--quiet")
    assert_clean_error(result, 2, "'model.max_iters'", "Did you mean 'model.max_iter'?")
    assert_unchanged(project, before)
    # the settings command reports the same problem the same way
    assert_clean_error(run_cli(project, "settings"), 2, "'model.max_iters'")


def test_broken_pipeline_yaml(project):
    (project / "pipeline.yaml").write_text("tasks: [\n  - {source: x\n", encoding="utf-8")
    before = snapshot_state(project)
    result = run_cli(project, "run", "--quiet")
    assert_clean_error(result, 4, "pipeline.yaml", "not valid YAML")
    assert_unchanged(project, before)


def test_pipeline_yaml_placeholder_naming_no_setting(project):
    spec = project / "pipeline.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace("{{model.seed}}", "{{model.sed}}"),
                    encoding="utf-8")
    before = snapshot_state(project)
    result = run_cli(project, "run", "--quiet")
    assert_clean_error(result, 4, "{{model.sed}}", "Did you mean 'model.seed'?")
    assert_unchanged(project, before)


# --------------------------------------------------------------------------------------------------
# help works everywhere, instantly


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["runs", "--help"], []])
def test_help_is_instant_even_when_the_project_is_broken(tmp_path, args):
    (tmp_path / "pipeline.yaml").write_text("tasks: [\n  - {source: x\n", encoding="utf-8")
    (tmp_path / "settings.ini").write_text("[nonsense]\nkey = 1\n", encoding="utf-8")
    started = time.perf_counter()
    result = run_cli(tmp_path, *args, timeout=60)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, str(result)
    assert "usage: mlops-nb" in result.stdout
    assert result.stderr == ""
    assert seconds < 5, f"help took {seconds:.1f} s"
    if args[:1] == ["run"]:
        assert "--force" in result.stdout and "--task" in result.stdout and "-p KEY=VALUE" in result.stdout


def test_help_through_python_module(tmp_path):
    import subprocess
    import sys

    from conftest import cli_env

    (tmp_path / "pipeline.yaml").write_text(":::\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "mlops_nb.cli", "run", "--help"], cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "usage: mlops-nb run" in proc.stdout
