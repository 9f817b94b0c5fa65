"""Feature definitions: ``features.yaml`` beside ``pipeline.yaml``, read once and checked on load.

- entities: the keys features are looked up by (``origin``, ``carrier``): a spine or a request names them
  as columns of the same names;
- sources: where events come from, each with its timestamp column: a ``table`` of the data snapshot, a
  ``query`` over the snapshot (``{snapshot}`` names its schema), a ``file`` (CSV or Parquet), or ``push``
  (events that arrive later through ``mlops-nb features push``, with declared ``columns``);
- views: features of one source by the same entities: each an aggregation (``count``, ``sum``, ``mean`` over
  a ``window`` before the time asked about, or ``last``: the latest value) of a column, and a time to live
  (``ttl``: an online value older than that is missing; a ``last`` value older than that is missing, offline too).

``Definitions.digest`` names the definitions' content: a model version records it.

A flight's prediction time, the time its features are asked as of, is defined here once: ``features.lead``
before its scheduled departure, as SQL for the training spine (``prediction_time_sql``) and in Python for a
request (``prediction_time``); and which views ``features.views`` selects (``selected_views``).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import FeatureStoreError, did_you_mean

FILE = "features.yaml"
AGGREGATIONS = ("count", "sum", "mean", "last")
WINDOWED = ("count", "sum", "mean")
PUSH_TYPES = {"number": "DOUBLE", "text": "VARCHAR", "timestamp": "TIMESTAMP"}
NAME = re.compile(r"[a-z_][a-z0-9_]*")
_DURATION = re.compile(r"(\d+)\s*(s|m|h|d)")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text) -> int:
    """Seconds of '90s', '30m', '2h' or '1d' (a whole number and one unit); ValueError otherwise."""
    found = _DURATION.fullmatch(str(text).strip())
    if not found or int(found.group(1)) <= 0:
        raise ValueError(f"a duration such as 30m, 2h or 1d (a whole number > 0 and one of s, m, h, d); got {text!r}")
    return int(found.group(1)) * _UNIT[found.group(2)]


def prediction_time(year, month, day, sched_dep_time, lead_seconds: int) -> datetime:
    """A flight's prediction time: its scheduled departure (``sched_dep_time`` as HHMM, in the local time the
    flights and their events are kept in) less ``lead_seconds``, a naive datetime. Equal, for every flight, to
    ``prediction_time_sql`` (tested)."""
    try:
        hhmm = int(sched_dep_time)
        return datetime(int(year), int(month), int(day), hhmm // 100, hhmm % 100) - timedelta(seconds=int(lead_seconds))
    except (TypeError, ValueError, OverflowError):
        raise FeatureStoreError(
            f"A flight's prediction time needs its scheduled departure as a date and an HHMM time; got year={year!r}, "
            f"month={month!r}, day={day!r}, sched_dep_time={sched_dep_time!r} (lead {lead_seconds!r} s).") from None


def prediction_time_sql(lead_seconds: int, table: str = "") -> str:
    """``prediction_time`` as a DuckDB expression over the columns year, month, day and sched_dep_time (of
    ``table`` when given): the training spine's time."""
    t = f"{table}." if table else ""
    return (f"make_timestamp({t}year, {t}month, {t}day, {t}sched_dep_time // 100, {t}sched_dep_time % 100, 0) "
            f"- INTERVAL {int(lead_seconds)} SECOND")


def format_duration(seconds: int) -> str:
    for unit in ("d", "h", "m"):
        if seconds % _UNIT[unit] == 0:
            return f"{seconds // _UNIT[unit]}{unit}"
    return f"{seconds}s"


@dataclass(frozen=True)
class Source:
    name: str
    timestamp: str
    table: str = ""
    query: str = ""
    file: str = ""
    push: bool = False
    columns: tuple = ()          # push: ((name, type), ...), types of PUSH_TYPES
    description: str = ""

    @property
    def kind(self) -> str:
        return "table" if self.table else "query" if self.query else "file" if self.file else "push"


@dataclass(frozen=True)
class Feature:
    name: str
    view: str
    aggregation: str
    column: str = ""             # '' for count: the events are counted
    window: int = 0              # seconds before the time asked about; 0 for last


@dataclass(frozen=True)
class View:
    name: str
    entities: tuple
    source: str
    ttl: int
    features: tuple
    description: str = ""

    @property
    def horizon(self) -> int:
        """How far back before the time asked about events count: the longest window, or the ttl for last."""
        return max([f.window for f in self.features] + [self.ttl if any(not f.window for f in self.features) else 0])


@dataclass(frozen=True)
class Definitions:
    entities: dict
    sources: dict
    views: dict
    path: Path | None = None

    @property
    def features(self) -> list[Feature]:
        return [f for v in self.views.values() for f in v.features]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    def view_of(self, feature: str) -> View:
        for v in self.views.values():
            if any(f.name == feature for f in v.features):
                return v
        raise FeatureStoreError(f"No feature {feature!r} is defined.{did_you_mean(feature, self.feature_names)}")

    def to_dict(self) -> dict:
        """Plain data, in declaration order: what the digest hashes and lineage records."""
        return {"entities": dict(self.entities),
                "sources": {n: {k: v for k, v in asdict(s).items() if v not in ("", (), False) and k != "name"}
                            for n, s in self.sources.items()},
                "views": {n: {"entities": list(v.entities), "source": v.source, "ttl": format_duration(v.ttl),
                              "features": {f.name: {k: (format_duration(x) if k == "window" else x)
                                                    for k, x in asdict(f).items() if x not in ("", 0) and k not in ("name", "view")}
                                           for f in v.features}}
                          for n, v in self.views.items()}}

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=list).encode()).hexdigest()


def selected_views(defs: Definitions, views) -> tuple[str, ...]:
    """The views of ``features.views`` a model is trained with (and served by), in declaration order: ``None``
    every view, ``()`` none, else the names given (each must be a view of the definitions)."""
    if views is None:
        return tuple(defs.views)
    names = [str(v) for v in views]
    unknown = [v for v in names if v not in defs.views]
    if unknown:
        where = defs.path.name if defs.path else FILE
        hints = "".join(did_you_mean(v, defs.views) for v in unknown)
        raise FeatureStoreError(f"features.views names {', '.join(map(repr, unknown))}, which {where} does not define; "
                                f"its views are {', '.join(defs.views)}.{hints} Set features.views to 'all', 'none' "
                                "or some of those.")
    return tuple(v for v in defs.views if v in names)


def _fail(where: str, message: str):
    raise FeatureStoreError(f"{where}: {message}")


def _mapping(value, where: str, keys: dict, required: tuple = ()) -> dict:
    """``value`` as a mapping whose keys are among ``keys`` (name -> what it holds) and include ``required``."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        _fail(where, f"must be a mapping; got {type(value).__name__} ({value!r}) instead.")
    for k in value:
        if k not in keys:
            _fail(where, f"unknown key {k!r} (known: {', '.join(keys)}).{did_you_mean(str(k), keys)}")
    for k in required:
        if value.get(k) in (None, ""):
            _fail(where, f"needs {k!r}: {keys[k]}.")
    return value


def _name(name, where: str, what: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        _fail(where, f"the {what} name must be lower-case letters, digits and '_' (not starting with a digit); "
                     f"got {name!r} instead.")
    return name


def _duration(value, where: str) -> int:
    try:
        return parse_duration(value)
    except ValueError as e:
        _fail(where, f"must be {e}.")


SOURCE_KEYS = {"timestamp": "the column holding each event's time", "table": "a table of the data snapshot",
               "query": "SQL over the data snapshot ({snapshot} names its schema)",
               "file": "a CSV or Parquet file (relative to the project)",
               "push": "true: events arrive through `mlops-nb features push`",
               "columns": "push: the events' columns, name -> number, text or timestamp",
               "description": "what the events are"}
VIEW_KEYS = {"entities": "the entity names the view is keyed by", "source": "the source of its events",
             "ttl": "how long a value stays valid (e.g. 2h)", "features": "name -> aggregation, column, window",
             "description": "what the view says"}
FEATURE_KEYS = {"aggregation": f"one of {', '.join(AGGREGATIONS)}", "column": "the source column aggregated",
                "window": "how far back before the time asked about (e.g. 2h); not for last"}


def parse(data, path: Path | None = None) -> Definitions:
    """Definitions from plain data (a parsed features.yaml), every key checked: a FeatureStoreError names the
    entity, source, view or feature and the key, what was expected and what was found."""
    top = str(path.name if path else FILE)
    data = _mapping(data, top, {"entities": "name -> {description}", "sources": "name -> source",
                                "views": "name -> view"}, ("views",))
    entities = {}
    if not isinstance(data.get("entities") or {}, dict):
        _fail(f"{top}: entities", "must be a mapping of entity names to {description}.")
    for name, body in (data.get("entities") or {}).items():
        where = f"{top}: entity {name!r}"
        _name(name, where, "entity")
        body = _mapping(body, where, {"description": "what the key is"})
        entities[name] = str(body.get("description") or "")
    if not entities:
        _fail(top, "needs 'entities': the keys features are looked up by, e.g. origin: {description: ...}.")
    sources = {}
    if not isinstance(data.get("sources") or {}, dict):
        _fail(f"{top}: sources", "must be a mapping of source names to sources.")
    for name, body in (data.get("sources") or {}).items():
        where = f"{top}: source {name!r}"
        _name(name, where, "source")
        body = _mapping(body, where, SOURCE_KEYS, ("timestamp",))
        kinds = [k for k in ("table", "query", "file", "push") if body.get(k)]
        if len(kinds) != 1:
            _fail(where, "needs exactly one of 'table', 'query', 'file' or 'push: true'; got "
                         f"{' and '.join(map(repr, kinds)) or 'none'}.")
        columns = ()
        if body.get("push"):
            if body["push"] is not True:
                _fail(where, f"'push' must be true; got {body['push']!r} instead.")
            cols = body.get("columns")
            if not isinstance(cols, dict) or not cols:
                _fail(where, "a push source needs 'columns': name -> number, text or timestamp.")
            for c, t in cols.items():
                _name(c, f"{where}, columns", "column")
                if t not in PUSH_TYPES:
                    _fail(f"{where}, column {c!r}", f"the type must be one of {', '.join(PUSH_TYPES)}; got {t!r} instead."
                          f"{did_you_mean(str(t), PUSH_TYPES)}")
            if body["timestamp"] not in cols:
                _fail(where, f"the timestamp column {body['timestamp']!r} is not among its columns {sorted(cols)}.")
            columns = tuple(cols.items())
        elif body.get("columns"):
            _fail(where, "'columns' are declared for push sources only (the others' come from their data).")
        if body.get("table"):
            _name(body["table"], where, "table")
        sources[name] = Source(name, str(body["timestamp"]), table=str(body.get("table") or ""),
                               query=str(body.get("query") or ""), file=str(body.get("file") or ""),
                               push=bool(body.get("push")), columns=columns,
                               description=str(body.get("description") or ""))
    if not sources:
        _fail(top, "needs 'sources': where the events come from.")
    views, seen = {}, {}
    if not isinstance(data["views"], dict) or not data["views"]:
        _fail(f"{top}: views", "must be a mapping of view names to views.")
    for name, body in data["views"].items():
        where = f"{top}: view {name!r}"
        _name(name, where, "view")
        body = _mapping(body, where, VIEW_KEYS, ("entities", "source", "ttl", "features"))
        keys = body["entities"]
        keys = [keys] if isinstance(keys, str) else keys
        if not isinstance(keys, list) or not keys:
            _fail(f"{where}, entities", f"must be a list of entity names; got {body['entities']!r} instead.")
        for e in keys:
            if e not in entities:
                _fail(f"{where}, entities", f"unknown entity {e!r} (declared: {', '.join(entities)}).{did_you_mean(str(e), entities)}")
        if len(set(keys)) != len(keys):
            _fail(f"{where}, entities", f"names an entity twice: {keys}.")
        if body["source"] not in sources:
            _fail(f"{where}, source", f"unknown source {body['source']!r} (declared: {', '.join(sources)})."
                                      f"{did_you_mean(str(body['source']), sources)}")
        ttl = _duration(body["ttl"], f"{where}, ttl")
        if not isinstance(body["features"], dict) or not body["features"]:
            _fail(f"{where}, features", "must be a mapping of feature names to {aggregation, column, window}.")
        features = []
        for fname, fbody in body["features"].items():
            fwhere = f"{where}, feature {fname!r}"
            _name(fname, fwhere, "feature")
            if fname in seen:
                _fail(fwhere, f"the name is already a feature of view {seen[fname]!r}: feature names are unique.")
            if fname in entities:
                _fail(fwhere, "the name is an entity's: feature names and entity names differ.")
            seen[fname] = name
            fbody = _mapping(fbody, fwhere, FEATURE_KEYS, ("aggregation",))
            agg = fbody["aggregation"]
            if agg not in AGGREGATIONS:
                _fail(f"{fwhere}, aggregation", f"must be one of {', '.join(AGGREGATIONS)}; got {agg!r} instead."
                                                f"{did_you_mean(str(agg), AGGREGATIONS)}")
            column = fbody.get("column") or ""
            if agg != "count" and not column:
                _fail(fwhere, f"{agg} needs 'column': the source column it aggregates.")
            if column:
                _name(column, f"{fwhere}, column", "column")
            if agg in WINDOWED:
                if fbody.get("window") in (None, ""):
                    _fail(fwhere, f"{agg} needs 'window': how far back before the time asked about, e.g. 2h.")
                window = _duration(fbody["window"], f"{fwhere}, window")
            else:
                if fbody.get("window") not in (None, ""):
                    _fail(f"{fwhere}, window", f"last takes no window (the view's ttl, {format_duration(ttl)}, "
                                               "bounds how old its value may be).")
                window = 0
            features.append(Feature(fname, name, agg, column, window))
        views[name] = View(name, tuple(keys), body["source"], ttl, tuple(features), str(body.get("description") or ""))
    return Definitions(entities, sources, views, path)


def load(path: Path) -> Definitions:
    """The Definitions of a features.yaml file."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"No feature definitions at {path}: write them there (see ARCHITECTURE.md, "
                                "'Feature store') or set features.definitions to their file.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise FeatureStoreError(f"{path} is not valid YAML: {e}") from None
    return parse(data, path)
