"""A Bento runs anywhere (issue #9): it carries its settings and never reads the project's inputs.

One project whose ``data.source`` is its own folder of CSVs (``csv/``, relative) and whose settings.ini
says ``serving.max_rows = 7`` is run once and built once. Then:

- the Bento, exported and imported into an empty store in another folder, serves from there while the
  project folder is gone (nothing of the project can be read), MLOPS_NB_* overrides still applying; it
  carries the feature definitions and reads the online store under that BentoML home
  (``$BENTOML_HOME/featurestore``, materialized there from the project beforehand);
- `mlops-nb serve --bento TAG` in the project serves with the Bento's settings, not the project's changed
  ones, and starts without an online store under its home: the fields a request leaves out are missing;
- `mlops-nb run` on a missing source folder still fails early, in plain words.

Everything is real: the CLIs in subprocesses, `bentoml serve` on free ports of 127.0.0.1, httpx.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

import conftest
from served_project import (BENTOML, CLI, SERVING_FILES, Server, aliases, as_records, client, mlops,
                            mlops_ok, run, sample_rows)

pytestmark = pytest.mark.slow

BUILT_MAX_ROWS = 7  # serving.max_rows in the settings the Bento is built with
UNTIL = "2013-03-15T12:00:00"  # the online store the exported Bento reads is materialized to this time


def without_store_fields(records: list[dict]) -> list[dict]:
    """The records without the fields the reference feature definitions provide (the service looks them up)."""
    from mlops_nb.featurestore.definitions import load

    provided = set(load(conftest.REPO / "features.yaml").feature_names)
    return [{k: v for k, v in r.items() if k not in provided} for r in records]


def bento_project(folder: Path, small_data: Path) -> Path:
    """A sample project reading its own CSV folder, with what a Bento build needs."""
    conftest.make_project(folder, data_source="csv", serving__max_rows=str(BUILT_MAX_ROWS))
    shutil.copytree(small_data, folder / "csv")
    for name in SERVING_FILES:
        shutil.copy2(conftest.REPO / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_data):
    """(project, Bento tag, champion version, 8 flight records): one run, one build."""
    project = bento_project(tmp_path_factory.mktemp("anywhere") / "project", small_data)
    mlops_ok(project, "run", "--quiet")
    champion = aliases(project)["champion"]
    tag = mlops_ok(project, "build", timeout=600).stdout.strip().splitlines()[-1]
    records = as_records(sample_rows(project, BUILT_MAX_ROWS + 1))
    assert len(records) == BUILT_MAX_ROWS + 1
    return project, tag, champion, records


def predict(server: Server, records: list[dict]):
    with client(server) as http:
        return http.post("/predict", json={"flights": records})


def test_an_exported_bento_serves_from_an_empty_store_without_its_project(built, tmp_path):
    project, tag, champion, records = built
    archive = tmp_path / "model.bento"
    exported = run([BENTOML, "export", tag, archive], tmp_path, {"BENTOML_HOME": project / "data" / "bentoml"})
    assert exported.returncode == 0 and archive.is_file(), str(exported)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    home = elsewhere / "bentoml"
    imported = run([BENTOML, "import", archive], elsewhere, {"BENTOML_HOME": home})
    assert imported.returncode == 0, str(imported)

    # the embedded online store of a Bento is under its BentoML home: materialized there from the project
    mlops_ok(project, "features", "materialize", "--until", UNTIL, env={"MLOPS_NB_PATHS__DATA_DIR": str(home)})
    assert (home / "featurestore" / "online.duckdb").is_file()
    hidden = project.with_name("project-hidden")
    project.rename(hidden)  # nothing of the project can be read: its CSVs, warehouse, store, settings
    # no BENTOML_HOME: BentoML's default store, ~/bentoml (HOME is the other folder)
    server = Server([BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", "{port}"], elsewhere,
                    {"HOME": elsewhere, "MLOPS_NB_SERVING__MAX_ROWS": "5"}, tmp_path / "bento.log")
    try:
        server.start().wait_ready()
        with client(server) as http:
            info = http.post("/model").json()
        answered = predict(server, without_store_fields(records[:5]))
        refused = predict(server, records[:6])
    finally:
        server.stop()
        hidden.rename(project)
    assert info["champion"]["version"] == champion, info
    assert answered.status_code == 200, answered.text
    body = answered.json()
    assert body["model_version"] == champion and len(body["p_late"]) == 5, body
    assert set(body["features"]["as_of"].values()) == {UNTIL}, body["features"]
    assert [p.parent.name for p in (home / "bentos").rglob("features.yaml")] == ["src"]
    # the environment's override wins over the Bento's settings, as anywhere else
    assert refused.status_code == 400 and "at most 5 items" in refused.text, refused.text
    # the service's logs go beside the Bento, under the store's serving/, never into the Bento
    logged = list((home / "serving" / "predictions").glob("*.jsonl"))
    assert logged and champion in logged[0].read_text(), server.log()[-3000:]
    assert not [p for p in (home / "bentos").rglob("*.jsonl")]


def test_mlops_nb_serve_bento_uses_the_bentos_settings(built, tmp_path):
    project, tag, champion, records = built
    ini = project / "settings.ini"
    original = ini.read_text()
    assert f"max_rows = {BUILT_MAX_ROWS}\n" in original
    ini.write_text(original.replace(f"max_rows = {BUILT_MAX_ROWS}\n", "max_rows = 50\n"))
    server = Server([CLI, "serve", "--bento", tag, "--port", "{port}"], project, {}, tmp_path / "serve.log")
    try:
        server.start().wait_ready()
        answered = predict(server, without_store_fields(records[:BUILT_MAX_ROWS]))
        refused = predict(server, records[:BUILT_MAX_ROWS + 1])
    finally:
        server.stop()
        ini.write_text(original)
    assert answered.status_code == 200, answered.text
    assert answered.json()["model_version"] == champion
    features = answered.json()["features"]  # no store under the project's BentoML home: all missing, no failure
    assert set(features["as_of"].values()) == {None}
    assert features["missing"] == {f: "all" for f in features["provided"]}
    assert refused.status_code == 400, refused.text
    assert f"at most {BUILT_MAX_ROWS} items" in refused.text, refused.text


def test_run_refuses_a_missing_source_folder_early(tmp_path):
    project = conftest.make_project(tmp_path / "project", data_source="csv")
    started = time.monotonic()
    result = mlops(project, "run", "--quiet", timeout=120)
    assert time.monotonic() - started < 60, str(result)
    assert result.returncode != 0, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert "'data.source'" in result.stderr and "'csv'" in result.stderr and "not a folder" in result.stderr, \
        str(result)
    assert not (project / "data" / "warehouse.duckdb").exists()


def test_serving_settings_do_not_check_the_runs_inputs(tmp_path):
    from mlops_nb import config
    from mlops_nb.errors import SettingsError

    ini = conftest.make_project(tmp_path / "project", data_source="csv") / "settings.ini"
    with pytest.raises(SettingsError, match="'data.source'"):
        config.load(ini, environ={})
    settings = config.load(ini, environ={}, check_inputs=False)
    assert settings.data.source == "csv"
    assert settings.replace({"model.seed": 7}).model.seed == 7  # replace keeps check_inputs
    with pytest.raises(SettingsError, match="'serving.max_rows'"):
        config.load(ini, overrides={"serving.max_rows": "0"}, environ={}, check_inputs=False)


def test_a_bentos_settings_file_loads_back_to_the_same_settings(tmp_path):
    from mlops_nb import config

    ini = conftest.make_project(tmp_path / "project", serving__max_rows="7") / "settings.ini"
    settings = config.load(ini, environ={"MLOPS_NB_MODEL__SEED": "9"})
    copy = tmp_path / "bento" / config.SETTINGS_FILE
    copy.parent.mkdir()
    copy.write_text(settings.ini_text("built from\nthe project"))
    again = config.load(copy, environ={})
    assert again.raw == settings.raw and again.model.seed == 9 and again.serving.max_rows == 7


def test_the_reports_site_lists_the_bento_once_built(built):
    """`mlops-nb build` rewrites the reports site: the registry page names the Bento and what it pins."""
    import html

    project, tag, champion, _ = built
    text = (project / "reports" / "site" / "models.html").read_text(encoding="utf-8")
    bentos = text[text.index("<h2>Bentos</h2>"):]
    assert f'<td class="mono">{html.escape(tag)}</td>' in bentos, bentos[:2000]
    assert f"model-{champion}.html" in bentos
