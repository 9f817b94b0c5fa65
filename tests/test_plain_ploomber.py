"""`mlops-nb run` builds a plain Ploomber project (no settings.ini) from its own pipeline.yaml, unchanged."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ASSET = Path(__file__).parent / "assets" / "plain_ploomber"
CLI = [str(Path(os.sys.executable).with_name("mlops-nb"))]


def run(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")}
    return subprocess.run([*CLI, "run", "--quiet", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_plain_ploomber_project_builds_incrementally_with_env_overrides(tmp_path):
    project = tmp_path / "plain"
    shutil.copytree(ASSET, project)
    first = run(project)
    assert first.returncode == 0, first.stderr
    assert (project / "output" / "total.txt").read_text() == str(sum(range(5)))  # n from env.yaml
    assert "make_numbers  ran" in first.stdout and "total         ran" in first.stdout

    second = run(project)
    assert second.returncode == 0, second.stderr
    assert "make_numbers  skipped" in second.stdout and "total         skipped" in second.stdout

    third = run(project, "-p", "n=10")
    assert third.returncode == 0, third.stderr
    assert (project / "output" / "total.txt").read_text() == str(sum(range(10)))
    assert not (project / "settings.ini").exists()


@pytest.mark.slow
def test_plain_ploomber_task_failure_names_task_and_cell(tmp_path):
    project = tmp_path / "plain"
    shutil.copytree(ASSET, project)
    (project / "total.py").write_text((project / "total.py").read_text().replace(
        "numbers = [", "raise ValueError('no total today')\nnumbers = ["))
    res = run(project)
    assert res.returncode != 0
    assert "'total'" in res.stderr and "no total today" in res.stderr and "cell" in res.stderr
    assert "Traceback" not in res.stderr
