"""`mlops-nb init DIR --csv FILE --target COLUMN`: a project of one's own CSV, as a user meets it.

Five generated CSVs (numbers only; categories; missing values; a time column; a string target of three
values made binary with --positive): each is turned into a project by the real CLI, run by `mlops-nb run` in
its folder (the project's notebooks, a real DuckDB warehouse and model store), and must register a champion
whose compiled form passed its checks; then each is served by a real `mlops-nb serve` on a free port of
127.0.0.1 and answers rows of its CSV over HTTP with the trained pipeline's probabilities. Bad input: each
refusal is a clear error (what was expected, what was found, how to fix it) and leaves no folder behind.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import CLI, run_cli
from mlops_nb.lib import model
from served_project import Server, client

ROWS = 900


def _numbers(rng, n):
    df = pd.DataFrame({"x1": rng.normal(0, 1, n).round(4), "x2": rng.uniform(-5, 5, n).round(3),
                       "count": rng.integers(0, 40, n)})
    df["outcome"] = ((df.x1 + df.x2 / 3 + rng.normal(0, 0.5, n)) > 0).astype(int)
    return df, {"target": "outcome"}


def _categories(rng, n):
    df = pd.DataFrame({"colour": rng.choice(["red", "green", "blue"], n), "size": rng.choice(["S", "M", "L"], n),
                       "price": rng.uniform(1, 100, n).round(2)})
    signal = (df.colour == "red") * 1.5 + (df["size"] == "L") * 1.0 + rng.normal(0, 0.6, n)
    df["bought"] = np.where(signal > 1.0, "yes", "no")
    return df, {"target": "bought"}


def _missing(rng, n):
    df = pd.DataFrame({"age": rng.integers(18, 90, n).astype(float), "plan": rng.choice(["basic", "pro"], n),
                       "region": rng.choice(["north", "south", "east"], n), "Monthly Fee": rng.uniform(5, 50, n).round(2)})
    df["churned"] = np.where((df.age > 55) ^ (df.plan == "pro") ^ (rng.random(n) < 0.1), "true", "false")
    df.loc[rng.random(n) < 0.2, "age"] = np.nan
    df.loc[rng.random(n) < 0.3, "region"] = None
    df.loc[rng.random(n) < 0.1, "Monthly Fee"] = np.nan
    return df, {"target": "churned"}


def _time(rng, n):
    df = pd.DataFrame({"day": pd.date_range("2023-01-01", periods=n, freq="D").strftime("%Y-%m-%d"),
                       "temp": rng.normal(15, 8, n).round(1), "wind": rng.uniform(0, 30, n).round(1)})
    df["frost"] = ((df.temp + rng.normal(0, 2, n)) < 8).astype(int)
    return df, {"target": "frost", "time": "day"}


def _string_target(rng, n):
    df = pd.DataFrame({"humidity": rng.uniform(20, 100, n).round(1), "pressure": rng.normal(1010, 10, n).round(1),
                       "season": rng.choice(["winter", "spring", "summer", "autumn"], n)})
    rain = (df.humidity > 75) & (df.pressure < 1012)
    df["weather"] = np.where(rain, "rain", np.where(df.humidity < 45, "sun", "fog"))
    return df, {"target": "weather", "positive": "rain"}


SHAPES = {"numbers": _numbers, "categories": _categories, "missing": _missing, "time": _time,
          "string_target": _string_target}


def _args(options: dict) -> list[str]:
    out = []
    for key in ("target", "time", "positive"):
        if key in options:
            out += [f"--{key}", options[key]]
    return out


def write_csv(folder: Path, shape: str) -> tuple[Path, pd.DataFrame, dict]:
    frame, options = SHAPES[shape](np.random.default_rng(sorted(SHAPES).index(shape)), ROWS)
    path = folder / f"{shape}.csv"
    frame.to_csv(path, index=False)
    return path, frame, options


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """shape -> (project, csv frame, init options, init result, run result, a second run's result): every
    shape initialised and run twice (the second at once: nothing is stale)."""
    root = tmp_path_factory.mktemp("init")
    out = {}
    for shape in SHAPES:
        csv, frame, options = write_csv(root, shape)
        made = run_cli(root, "init", root / shape, "--csv", csv, *_args(options))
        ran = run_cli(root / shape, "run") if made.returncode == 0 else None
        again = run_cli(root / shape, "run") if ran is not None and ran.returncode == 0 else None
        out[shape] = (root / shape, frame, options, made, ran, again)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_init_then_run_registers_a_compiled_champion(projects, shape):
    project, frame, options, made, ran, again = projects[shape]
    assert made.returncode == 0, str(made)
    assert f"created {project}" in made.stdout
    for name in ("settings.ini", "record.yaml", "sql/features.sql", "pipeline.yaml", "Makefile", "bentofile.yaml",
                 "README.md", "notebooks/tasks/ingest.py", "notebooks/tasks/gate.py"):
        assert (project / name).is_file(), name
    assert ran is not None and ran.returncode == 0, str(ran)
    assert ran.tasks_with("ran") == {"ingest", "validate", "features", "train", "evaluate", "gate"}, str(ran)
    assert "promoted to champion" in ran.stdout, str(ran)
    champion = run_cli(project, "models", "show", "champion", "--json").json()
    record = yaml.safe_load((project / "record.yaml").read_text())
    assert record["target"] == options["target"] and record.get("time") == options.get("time")
    assert champion["lineage"]["feature_schema"]["fields"].keys() == record["fields"].keys()
    assert champion["lineage"]["compiled"]["status"] == "compiled", champion["lineage"]["compiled"]
    gate = json.loads((project / "data" / "products" / "gate.json").read_text())
    assert all(t["passed"] for t in gate["tests"]), gate["tests"]
    assert again.returncode == 0 and again.tasks_with("ran") == set(), str(again)  # nothing is stale


@pytest.mark.slow
def test_what_init_infers(projects):
    fields = {shape: yaml.safe_load((p / "record.yaml").read_text())["fields"] for shape, (p, *_) in projects.items()}
    assert {n: (f["kind"], f["integer"]) for n, f in fields["numbers"].items()} == {
        "x1": ("number", False), "x2": ("number", False), "count": ("number", True)}
    assert fields["numbers"]["x2"]["min"] <= -4.9 and fields["numbers"]["x2"]["max"] >= 4.9
    assert fields["numbers"]["count"]["min"] == 0  # never below 0: the floor stays 0
    assert fields["categories"]["size"] == {"kind": "category", "categories": ["L", "M", "S"], "closed": False,
                                            "nullable": False, "description": ""}
    missing = fields["missing"]
    assert missing["age"]["nullable"] and missing["region"]["nullable"] and not missing["plan"]["nullable"]
    assert missing["Monthly_Fee"]["column"] == "Monthly Fee"  # a field's name is an identifier
    assert set(fields["time"]) == {"temp", "wind"}  # the time column splits, it is not an input
    assert "season" in fields["string_target"]
    record = yaml.safe_load((projects["string_target"][0] / "record.yaml").read_text())
    assert record["positive"] == "rain"
    record = yaml.safe_load((projects["categories"][0] / "record.yaml").read_text())
    assert record["positive"] == "yes"  # a yes/no target: yes is the positive value
    settings = (projects["time"][0] / "settings.ini").read_text()
    assert "by = time" in settings and "model_name = time" in settings
    assert "by = random" in (projects["numbers"][0] / "settings.ini").read_text()


def _row(record: dict, values: dict) -> dict:
    """A CSV row as a request's record: the record's field names, no missing values."""
    out = {}
    for name, f in record["fields"].items():
        value = values[f.get("column") or name]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[name] = int(value) if f["kind"] == "number" and f["integer"] else (
            float(value) if f["kind"] == "number" else str(value))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_champion_is_served_for_the_csvs_columns(projects, shape, tmp_path):
    project, frame, options, made, ran, _ = projects[shape]
    assert ran is not None and ran.returncode == 0, str(ran)
    record = yaml.safe_load((project / "record.yaml").read_text())
    rows = [_row(record, r) for r in frame.head(5).to_dict(orient="records")]
    server = Server([CLI, "serve", "--port", "{port}"], project, {},
                    tmp_path / "server.log").start()
    try:
        server.wait_ready()
        with client(server) as http:
            answer = http.post("/predict", json={"records": rows})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert set(body) == {"request_id", "model_version", "arm", "probability", "positive"}
            assert len(body["probability"]) == 5 and all(0 <= p <= 1 for p in body["probability"])
            assert body["positive"] == [p >= 0.5 for p in body["probability"]]
            trained = model.predict_proba(joblib.load(project / "data" / "products" / "model.joblib"),
                                          pd.DataFrame(rows))  # the pipeline as trained, on the same rows
            assert np.allclose(body["probability"], trained, rtol=0, atol=1e-12), (body["probability"], trained)
            champion = run_cli(project, "models", "show", "champion", "--json").json()
            assert body["model_version"] == champion["version"]

            columns = {name: [r.get(name) for r in rows] for name in record["fields"]}
            batch = http.post("/predict_batch", json={"columns": columns})
            assert batch.status_code == 200, batch.text
            assert np.allclose(batch.json()["probability"], body["probability"], rtol=0, atol=1e-12)

            number = next(n for n, f in record["fields"].items() if f["kind"] == "number")
            too_big = {**rows[0], number: record["fields"][number]["max"] + 1}
            refused = http.post("/predict", json={"records": [too_big]})
            assert refused.status_code == 400 and number in refused.text, refused.text
            unknown = http.post("/predict", json={"records": [{**rows[0], "not_a_field": 1}]})
            assert unknown.status_code == 400 and "not_a_field" in unknown.text, unknown.text
            if shape == "missing":  # nullable fields may be left out: only the required ones
                required = {n: v for n, v in rows[0].items() if not record["fields"][n]["nullable"]}
                assert set(required) == {"plan"}
                sparse = http.post("/predict", json={"records": [required]})
                assert sparse.status_code == 200, sparse.text
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()[-3000:]


@pytest.mark.slow
def test_monitoring_commands_say_they_do_not_support_a_record_file(projects):
    project = projects["numbers"][0]
    for command in (["monitor"], ["retrain"]):
        result = run_cli(project, *command)
        assert result.returncode == 2, str(result)
        assert "not supported yet in a project of its own record" in result.stderr
        assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------------------------------
# bad input: a clear error, and nothing created


def _refused(tmp_path: Path, csv_text: str | None, *args, exit_code: int = 3) -> str:
    csv = tmp_path / "data.csv"
    if csv_text is not None:
        csv.write_text(csv_text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli(tmp_path, "init", tmp_path / "project", "--csv", csv, *args)
    assert result.returncode == exit_code, str(result)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no project, no temporary folder
    return result.stderr


GOOD = "a,b,y\n1,x,0\n2,y,1\n3,x,0\n4,y,1\n"


def test_a_missing_target_column_is_named_with_a_suggestion(tmp_path):
    err = _refused(tmp_path, GOOD.replace("a,b,y", "a,b,outcome"), "--target", "outcom")
    assert "'outcom' is not in data.csv" in err and "['a', 'b', 'outcome']" in err and "Did you mean 'outcome'?" in err


def test_a_constant_target_is_refused(tmp_path):
    err = _refused(tmp_path, "a,y\n1,yes\n2,yes\n3,\n", "--target", "y")
    assert "is constant" in err and "'yes'" in err


def test_an_empty_csv_is_refused(tmp_path):
    assert "is empty (0 bytes)" in _refused(tmp_path, "", "--target", "y")


def test_a_csv_with_no_rows_after_its_header_is_refused(tmp_path):
    assert "has a header but no rows" in _refused(tmp_path, "a,b,y\n", "--target", "y")


def test_more_than_two_classes_needs_positive(tmp_path):
    err = _refused(tmp_path, "a,y\n1,r\n2,s\n3,t\n4,r\n", "--target", "y")
    assert "has 3 values" in err and "only binary targets are supported" in err and "--positive" in err


def test_a_positive_value_not_in_the_target_is_refused(tmp_path):
    err = _refused(tmp_path, GOOD, "--target", "y", "--positive", "2")
    assert "--positive value '2' is not a value" in err and "['0', '1']" in err


def test_a_time_column_that_is_not_dates_is_refused(tmp_path):
    err = _refused(tmp_path, "d,a,y\n2024-01-01,1,0\nsoon,2,1\n2024-01-03,3,0\n", "--target", "y", "--time", "d")
    assert "must hold dates" in err and "'soon'" in err


def test_a_missing_csv_file_is_refused(tmp_path):
    assert "does not exist" in _refused(tmp_path, None, "--target", "y")


def test_a_folder_that_is_not_empty_is_never_written(tmp_path):
    (tmp_path / "data.csv").write_text(GOOD)
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    result = run_cli(tmp_path, "init", project, "--csv", tmp_path / "data.csv", "--target", "y")
    assert result.returncode == 2 and "exists and is not empty" in result.stderr, str(result)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "project"]


def test_an_empty_folder_becomes_the_project(tmp_path):
    (tmp_path / "data.csv").write_text(GOOD)
    (tmp_path / "project").mkdir()
    result = run_cli(tmp_path, "init", "project", "--csv", "data.csv", "--target", "y")
    assert result.returncode == 0, str(result)
    assert (tmp_path / "project" / "record.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "project"]


@pytest.mark.slow
def test_an_edited_record_is_what_the_data_is_validated_against(projects, tmp_path):
    """Closing a category and leaving one of its values out: the next run stops at validate, naming the
    column, the rule and the rows, and registers nothing new."""
    import shutil

    project = tmp_path / "categories"
    shutil.copytree(projects["categories"][0], project, symlinks=True)
    (project / "data" / ".run.lock").unlink(missing_ok=True)
    path = project / "record.yaml"
    record = yaml.safe_load(path.read_text())
    record["fields"]["colour"].update(closed=True, categories=["green", "red"])
    path.write_text(yaml.safe_dump(record, sort_keys=False))
    before = run_cli(project, "models", "list", "--json").json()
    result = run_cli(project, "run")
    assert result.returncode == 3, str(result)
    assert "records.colour: rule 'one of the record's categories' broken by" in result.stderr, result.stderr
    assert run_cli(project, "models", "list", "--json").json() == before
