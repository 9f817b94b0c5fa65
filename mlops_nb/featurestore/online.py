"""The online feature store: each view's values by key, as of the time it was materialized to, for the
service and `mlops-nb features online`.

One definition of the values: materializing to M runs the offline point-in-time join (``offline.join_sql``)
for a spine of the keys to serve, each asked as of M, and stores its rows, so an online value IS the offline
value of (key, M), bit for bit. The keys served are those with events in [M - horizon, M)
(``View.horizon``); any other key has the join's values for a key without events (count and sum 0, mean
and last missing), so a lookup of an absent key answers those. Materializing reads only the events of that
last horizon (its cost does not grow with history) and replaces each view whole.

Backends (``features.online``): ``embedded`` (``EmbeddedStore``: ``<data_dir>/featurestore/online.duckdb``,
written to a temporary file and renamed over the old one, so a reader never sees half a store nor meets
DuckDB's single-writer lock; readers open it read-only, load it into dicts and close it) or ``redis``
(``redis_store.RedisStore``). Pushed events live in ``events.duckdb`` beside it, one table per push source.
Writers (push, materialize) take a file lock (``.lock``); readers take none.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .. import config
from ..data.logs import fsync_dir
from ..errors import FeatureStoreError, did_you_mean
from .definitions import PUSH_TYPES, Definitions, Source, View
from .offline import ROW, TS, check, columns_of, join_sql, literal, quote, source_sql

FOLDER = "featurestore"          # under paths.data_dir
ONLINE = "online.duckdb"
EVENTS = "events.duckdb"
LOCK = ".lock"
RELOAD_EVERY = 1.0               # seconds between two looks at the published file's identity
FEATURES_SCHEMA = "features"     # online.duckdb: features.<view>; main.views is the bookkeeping
EVENTS_DB = "fs_events"          # events.duckdb attached under this name
PUBLISH_DB = "fs_publish"        # the temporary file being written, attached under this name
NAN = float("nan")
KEEP_CHOSEN = 256                # (entities, views) combinations whose views to read are kept


def store_dir(settings: config.Settings, in_bento: bool = False) -> Path:
    """``<paths.data_dir>/featurestore``. A Bento's own folder is read-only and holds no data: serving a Bento, a
    relative data_dir is taken under BentoML's home instead (``$BENTOML_HOME/featurestore``, beside the Bento's
    logs in ``$BENTOML_HOME/serving``); an absolute one (e.g. ``MLOPS_NB_PATHS__DATA_DIR``) is used as it is."""
    if in_bento and not Path(settings.paths.data_dir).is_absolute():
        return config.bentoml_home(settings) / FOLDER
    return settings.path("data_dir") / FOLDER


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def parse_time(value, what: str) -> datetime:
    """A naive UTC datetime from a datetime or ISO 8601 text (a zone, when named, converted to UTC)."""
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise FeatureStoreError(f"{what} must be a time such as 2013-06-01T12:00 (ISO 8601, UTC unless it "
                                    f"names a zone); got {value!r} instead.") from None
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def stamp(value: datetime) -> str:
    return f"TIMESTAMP '{value.isoformat(sep=' ')}'"


def view_digest(defs: Definitions, name: str) -> str:
    """What a view's values depend on: its entities, ttl and features, and its source (not descriptions).
    The store records it: values materialized under other definitions are not served."""
    data = defs.to_dict()
    view = data["views"][name]
    source = {k: v for k, v in data["sources"][view["source"]].items() if k != "description"}
    text = json.dumps({"view": view, "source": source}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def empty_values(view: View) -> tuple:
    """The values of a key without events in the view's horizon: what the offline join gives it."""
    return tuple(0.0 if f.aggregation in ("count", "sum") else NAN for f in view.features)


@contextlib.contextmanager
def writer_lock(folder: Path):
    """One writer (push, materialize) at a time: fcntl.flock on <folder>/.lock, released however the
    process ends. Readers never take it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def events_read(settings: config.Settings, defs: Definitions):
    """Hold the writer lock while a join reads pushed events (a push writing events.duckdb would make
    DuckDB refuse to open it); nothing to hold without push sources."""
    if any(s.push for s in defs.sources.values()):
        return writer_lock(store_dir(settings))
    return contextlib.nullcontext()


def memory():
    """An in-memory DuckDB connection (closed on leaving its ``with``)."""
    import duckdb

    return duckdb.connect()


# --------------------------------------------------------------------------------------------------
# the backends: each publishes a materialization, says what it holds, and reads rows by key


@dataclass
class Materialized:
    view: str
    keys: int
    as_of: datetime
    seconds: float


@dataclass(frozen=True)
class Part:
    """What a backend stores for one view: the rows of ``sql`` (entity columns, then the features)."""
    view: View
    sql: str
    digest: str


class EmbeddedStore:
    """``online.duckdb``: ``features.<view>`` tables (entity columns, one DOUBLE column a feature) and
    ``views`` (view, as_of, digest, materialized_at, keys). The reader side keeps the published file in
    memory, a dict a view (key tuple of text -> tuple of floats), and looks at the file's identity (inode,
    modification time) at most once a second: a new one is loaded whole, then swapped in."""

    def __init__(self, folder: Path, defs: Definitions | None = None):
        self.folder = Path(folder)
        self.path = self.folder / ONLINE
        self.defs = defs
        self._state = None       # (meta: view -> (as_of, digest), rows: view -> {key: values})
        self._identity = None
        self._next_look = 0.0
        self._loading = threading.Lock()

    # -- writer

    def published(self) -> dict[str, tuple[datetime, str]]:
        """view -> (as_of, digest) of the published store."""
        import duckdb

        if not self.path.exists():
            return {}
        con = duckdb.connect(str(self.path), read_only=True)
        try:
            return {r[0]: (r[1], r[2]) for r in con.execute("SELECT view, as_of, digest FROM views").fetchall()}
        finally:
            con.close()

    def publish(self, con, parts: list[Part], until: datetime) -> list[Materialized]:
        """Write every view into a temporary file of the store's folder, then rename it over online.duckdb."""
        tmp = self.folder / f".online.{os.getpid()}.tmp.duckdb"
        done = []
        _remove(tmp)
        try:
            con.execute(f"ATTACH {literal(tmp)} AS {PUBLISH_DB} (READ_ONLY false)")
            try:
                con.execute(f"CREATE SCHEMA {PUBLISH_DB}.{FEATURES_SCHEMA}")
                con.execute(f"CREATE TABLE {PUBLISH_DB}.main.views (view VARCHAR PRIMARY KEY, as_of TIMESTAMP NOT NULL, "
                            "digest VARCHAR NOT NULL, materialized_at TIMESTAMP NOT NULL, keys BIGINT NOT NULL)")
                for part in parts:
                    started = time.perf_counter()
                    table = f"{PUBLISH_DB}.{FEATURES_SCHEMA}.{quote(part.view.name)}"
                    con.execute(f"CREATE TABLE {table} AS {part.sql}")
                    keys = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    con.execute(f"INSERT INTO {PUBLISH_DB}.main.views VALUES (?, ?, ?, ?, ?)",
                                [part.view.name, until, part.digest, utc_now(), keys])
                    done.append(Materialized(part.view.name, keys, until, time.perf_counter() - started))
                con.execute(f"CHECKPOINT {PUBLISH_DB}")
            finally:
                con.execute(f"DETACH {PUBLISH_DB}")
            os.replace(tmp, self.path)
            fsync_dir(self.folder)
        finally:
            _remove(tmp)
        return done

    def leftovers(self) -> list[Path]:
        """The temporary files of a materialization that did not finish (or of one running now)."""
        return sorted(p for p in self.folder.glob(".online.*.tmp.duckdb*") if p.is_file())

    def clean(self) -> None:
        """Remove the temporary files of a materialization that was killed (the writer lock is held)."""
        for leftover in self.leftovers():
            leftover.unlink(missing_ok=True)

    # -- reader

    def read(self, requests) -> tuple[dict, list]:
        """(view -> (as_of, digest), [values or None for each (view, names, key) of ``requests``])."""
        meta, rows = self._current()
        return meta, [rows.get(view, _NONE).get(key) for view, _, key in requests]

    def reload(self) -> None:
        """Look at the file now (not at most once a second)."""
        self._next_look = 0.0
        self._current()

    def _current(self):
        now = time.monotonic()
        if now >= self._next_look and self._loading.acquire(blocking=self._state is None):
            try:
                if now >= self._next_look:
                    self._next_look = now + RELOAD_EVERY
                    identity = _identity(self.path)
                    if identity != self._identity or self._state is None:
                        self._state = self._load() if identity else ({}, {})
                        self._identity = identity
            finally:
                self._loading.release()
        return self._state

    def _load(self):
        import duckdb

        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.Error as e:
            raise FeatureStoreError(f"Could not read the online store {self.path}: {str(e).splitlines()[0]}. "
                                    "`mlops-nb features materialize` writes it again.") from None
        try:
            meta = {r[0]: (r[1], r[2]) for r in con.execute("SELECT view, as_of, digest FROM views").fetchall()}
            rows = {}
            for view in (self.defs.views.values() if self.defs else ()):
                if view.name not in meta or meta[view.name][1] != view_digest(self.defs, view.name):
                    continue
                k = len(view.entities)
                columns = ", ".join(quote(c) for c in [*view.entities, *(f.name for f in view.features)])
                rows[view.name] = {
                    tuple(str(x) for x in row[:k]): tuple(NAN if x is None else x for x in row[k:])
                    for row in con.execute(f"SELECT {columns} FROM {FEATURES_SCHEMA}.{quote(view.name)}").fetchall()}
            return meta, rows
        finally:
            con.close()


_NONE: dict = {}


def _identity(path: Path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".wal")):
        p.unlink(missing_ok=True)


def backend(settings: config.Settings, defs: Definitions | None = None, in_bento: bool = False,
            timeout: float = 10.0):
    """The configured backend (``features.online``); ``in_bento``: see ``store_dir``; ``timeout``: seconds a
    Redis call may take (the service's reader waits little: a hung Redis must not hold its event loop)."""
    if settings.features.online == "redis":
        from .redis_store import RedisStore

        return RedisStore(settings.features.redis_url, defs, timeout=timeout)
    return EmbeddedStore(store_dir(settings, in_bento), defs)


# --------------------------------------------------------------------------------------------------
# the reader the service uses


class _ViewReader:
    __slots__ = ("name", "entities", "names", "digest", "ttl", "empty", "missing")

    def __init__(self, defs: Definitions, view: View):
        self.name = view.name
        self.entities = view.entities
        self.names = tuple(f.name for f in view.features)
        self.digest = view_digest(defs, view.name)
        self.ttl = timedelta(seconds=view.ttl)
        self.empty = empty_values(view)
        self.missing = (NAN,) * len(self.names)


class OnlineStore:
    """Features by key as the service reads them: ``lookup({'origin': 'EWR', 'carrier': 'UA'}, at)``."""

    def __init__(self, defs: Definitions, store):
        self.defs = defs
        self.store = store
        self.entities = tuple(defs.entities)
        self._views = [_ViewReader(defs, v) for v in defs.views.values()]
        self._chosen_for: dict[tuple, list] = {}

    def _chosen(self, keys, views) -> list:
        """The views to read for ``keys`` (entity names) and ``views`` (view names; None: every view those keys
        name), the names checked; worked out once a combination (a service asks the same few on every request)."""
        found = self._chosen_for.get((tuple(keys), None if views is None else tuple(views)))
        if found is not None:
            return found
        for name in keys:
            if name not in self.defs.entities:
                raise FeatureStoreError(f"Unknown entity {name!r}: the entities are {', '.join(self.entities)}."
                                        f"{did_you_mean(str(name), self.entities)}")
        found = [v for v in self._views if all(e in keys for e in v.entities) and (views is None or v.name in views)]
        if len(self._chosen_for) < KEEP_CHOSEN:
            self._chosen_for[(tuple(keys), None if views is None else tuple(views))] = found
        return found

    def views_for(self, keys) -> list[str]:
        """The views whose entities are all among ``keys``."""
        return [v.name for v in self._views if all(e in keys for e in v.entities)]

    def lookup(self, keys, at: datetime | None = None) -> tuple[dict[str, float], dict[str, datetime | None]]:
        """(feature -> value, view -> the time its values are as of) for every view whose entities are all
        given. As of the time the view was materialized to, M: the offline join's values for (key, M); a key
        the store does not hold has those of a key without events (count and sum 0, mean and last NaN); a
        missing entity value, a view not materialized (under these definitions: as_of None) and a view
        whose as_of is older than ``at`` - ttl (stale) give NaN. ``at``: naive UTC, default now."""
        values, as_of, _ = self.lookup_stale(keys, at)
        return values, as_of

    def lookup_stale(self, keys, at: datetime | None = None, views=None) -> tuple[dict, dict, set]:
        """``lookup``, of ``views`` only when given, and the set of the views that were stale at ``at`` (the
        service counts their NaN apart from missing values)."""
        chosen = self._chosen(keys, views)
        if at is None:
            at = utc_now()
        requests = [(v.name, v.names, tuple([None if (x := keys[e]) is None else str(x) for e in v.entities]))
                    for v in chosen]
        meta, rows = self.store.read(requests)
        if any(meta.get(v.name) is not None and at - meta[v.name][0] > v.ttl for v in chosen):
            self.store.reload()
            meta, rows = self.store.read(requests)
        values, as_of, stale = {}, {}, set()
        for v, request, row in zip(chosen, requests, rows):
            m = meta.get(v.name)
            if m is None or m[1] != v.digest:
                as_of[v.name] = None
                row = v.missing
            else:
                as_of[v.name] = m[0]
                if at - m[0] > v.ttl:
                    stale.add(v.name)
                    row = v.missing
                elif None in request[2]:
                    row = v.missing
                elif row is None:
                    row = v.empty
            values.update(zip(v.names, row))
        return values, as_of, stale

    def lookup_rows(self, keys: dict, at, views=None) -> tuple[dict, dict, dict]:
        """``lookup`` of many rows in one read of the store (one snapshot of it), each distinct key read once:
        ``keys`` entity -> a value a row (None: missing), ``at`` the rows' times (NumPy datetime64, naive UTC),
        ``views`` the views to read (default: every view whose entities are given). Returns (feature -> float64
        array, a value a row, as ``lookup`` gives it for the row's key and time; view -> as_of or None; view ->
        bool array, the rows for which the view's values are stale)."""
        import numpy as np

        chosen = self._chosen(keys, views)
        n = len(at)
        # each entity's values coded once (its distinct values are few), a view's keys as one integer a row
        codes, distinct = {}, {}
        for e in dict.fromkeys(e for v in chosen for e in v.entities):
            index = {k: i for i, k in enumerate(dict.fromkeys(keys[e]))}
            codes[e] = np.fromiter(map(index.__getitem__, keys[e]), dtype=np.int64, count=n)
            distinct[e] = [None if x is None else str(x) for x in index]
        requests, parts = [], []
        for v in chosen:
            combined = np.zeros(n, dtype=np.int64)
            for e in v.entities:
                combined = combined * len(distinct[e]) + codes[e]
            found_keys, inverse = np.unique(combined, return_inverse=True)
            for code in found_keys.tolist():
                key = []
                for e in reversed(v.entities):
                    code, i = divmod(code, len(distinct[e]))
                    key.append(distinct[e][i])
                requests.append((v.name, v.names, tuple(reversed(key))))
            parts.append((len(requests) - len(found_keys), len(found_keys), inverse))
        meta, found = self.store.read(requests)
        if n and any(meta.get(v.name) is not None and (at > np.datetime64(meta[v.name][0] + v.ttl, "us")).any() for v in chosen):
            self.store.reload()
            meta, found = self.store.read(requests)
        values, as_of, stale = {}, {}, {}
        for v, (start, count, inverse) in zip(chosen, parts):
            m = meta.get(v.name)
            if m is None or m[1] != v.digest:
                as_of[v.name] = None
                stale[v.name] = np.zeros(n, dtype=bool)
                matrix = np.full((n, len(v.names)), NAN)
            else:
                as_of[v.name] = m[0]
                table = np.array([v.missing if None in request[2] else v.empty if row is None else row
                                  for request, row in zip(requests[start:start + count], found[start:start + count])],
                                 dtype=np.float64).reshape(count, len(v.names))
                matrix = table[inverse] if count > 1 else np.repeat(table, n, axis=0)
                old = stale[v.name] = at > np.datetime64(m[0] + v.ttl, "us")  # at - as_of > ttl
                if old.any():
                    matrix[old] = NAN
            values.update(zip(v.names, matrix.T))
        return values, as_of, stale


def open_store(settings: config.Settings, defs: Definitions, in_bento: bool = False,
               timeout: float = 10.0) -> OnlineStore:
    return OnlineStore(defs, backend(settings, defs, in_bento, timeout))


# --------------------------------------------------------------------------------------------------
# materialize


def recent_table(source: str) -> str:
    return quote(f"__recent_{source}")


def view_sql(defs: Definitions, view: View, until: datetime) -> str:
    """The rows the online store keeps for ``view`` as of ``until``: the offline join of a spine of the
    keys with events in [until - horizon, until), each asked as of ``until``, over those events (the
    source's recent events are in ``recent_table``)."""
    source = defs.sources[view.source]
    ts = f"CAST({quote(source.timestamp)} AS TIMESTAMP)"
    recent = (f"(SELECT * FROM {recent_table(source.name)} "
              f"WHERE {ts} >= {stamp(until - timedelta(seconds=view.horizon))})")
    keys = ", ".join(quote(e) for e in view.entities)
    known = " AND ".join(f"{quote(e)} IS NOT NULL" for e in view.entities)
    spine = (f"(SELECT row_number() OVER (ORDER BY {keys}) AS {ROW}, {stamp(until)} AS {TS}, {keys} "
             f"FROM (SELECT DISTINCT {keys} FROM {recent} WHERE {known}))")
    return join_sql(defs, {source.name: recent}, spine, list(view.entities), [f.name for f in view.features])


def pushed_relations(con, defs: Definitions, folder: Path) -> dict[str, str]:
    """Push source -> its events as a relation of ``con`` (events.duckdb attached read-only); the declared
    columns and no rows when nothing was pushed to it."""
    path = Path(folder) / EVENTS
    tables = set()
    if path.exists() and any(s.push for s in defs.sources.values()):
        con.execute(f"ATTACH {literal(path)} AS {EVENTS_DB} (READ_ONLY)")
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ? "
                                            "AND schema_name = 'main'", [EVENTS_DB]).fetchall()}
    return {s.name: (f"{EVENTS_DB}.main.{quote(s.name)}" if s.name in tables else _no_events(s))
            for s in defs.sources.values() if s.push}


def _no_events(source: Source) -> str:
    return "(SELECT " + ", ".join(f"CAST(NULL AS {PUSH_TYPES[t]}) AS {quote(c)}" for c, t in source.columns) + " LIMIT 0)"


def materialize(settings: config.Settings, defs: Definitions, until=None, snapshot: str | None = None,
                store=None) -> list[Materialized]:
    """Bring the online store to ``until`` (naive UTC, default now): every view replaced by the offline
    join's values of its active keys as of ``until``. ``snapshot``: the data snapshot's schema, for table
    and query sources."""
    from ..data import warehouse

    until = parse_time(utc_now() if until is None else until, "The time to materialize to (--until)")
    folder = store_dir(settings)
    store = store or backend(settings, defs)
    needs_snapshot = any(defs.sources[v.source].kind in ("table", "query") for v in defs.views.values())
    if needs_snapshot and not warehouse.warehouse_path(settings).exists():
        raise FeatureStoreError(f"The feature sources read the data snapshot and there is no warehouse at "
                                f"{warehouse.warehouse_path(settings)}: run `mlops-nb run` first.")
    with writer_lock(folder):
        if isinstance(store, EmbeddedStore):
            store.clean()
        with warehouse.connect(settings=settings) if needs_snapshot else memory() as con:
            pushed = pushed_relations(con, defs, folder)
            sources = {v.source for v in defs.views.values()}
            relations = {name: source_sql(defs.sources[name], snapshot=snapshot, root=settings.root,
                                          pushed=pushed.get(name)) for name in sources}
            check(con, defs, relations)
            for name in sorted(sources):
                horizon = max(v.horizon for v in defs.views.values() if v.source == name)
                ts = f"CAST({quote(defs.sources[name].timestamp)} AS TIMESTAMP)"
                con.execute(f"CREATE OR REPLACE TEMP TABLE {recent_table(name)} AS SELECT * FROM {relations[name]} "
                            f"WHERE {ts} >= {stamp(until - timedelta(seconds=horizon))} AND {ts} < {stamp(until)}")
            parts = [Part(v, view_sql(defs, v, until), view_digest(defs, v.name)) for v in defs.views.values()]
            return store.publish(con, parts, until)


# --------------------------------------------------------------------------------------------------
# push


@dataclass
class Pushed:
    source: str
    rows: int
    first: datetime | None
    last: datetime | None
    path: Path


def push_source(defs: Definitions, name: str | None) -> Source:
    """The push source ``name``, or the only one when ``name`` is None."""
    pushes = [s.name for s in defs.sources.values() if s.push]
    if name is None:
        if len(pushes) == 1:
            return defs.sources[pushes[0]]
        if not pushes:
            raise FeatureStoreError("No source of the feature definitions takes pushed events: declare one in "
                                    "features.yaml (push: true, with its columns).")
        raise FeatureStoreError(f"Several sources take pushed events ({', '.join(pushes)}): name one with --source.")
    if name not in defs.sources:
        raise FeatureStoreError(f"No source {name!r} is defined; the push sources are {', '.join(pushes) or 'none'}."
                                f"{did_you_mean(name, pushes or defs.sources)}")
    if not defs.sources[name].push:
        raise FeatureStoreError(f"The source {name!r} reads {defs.sources[name].kind} data and takes no pushed events; "
                                f"the push sources are {', '.join(pushes) or 'none'}.")
    return defs.sources[name]


def push(settings: config.Settings, defs: Definitions, path, source: str | None = None, store=None) -> Pushed:
    """Add the events of a CSV or Parquet file to a push source: all of them or, on any problem, none.
    The columns must be exactly the declared ones, each value castable to its type, every event timed, and
    no event before the time a view of the source was materialized to (it would change values already
    served)."""
    import duckdb

    src = push_source(defs, source)
    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"The events file {path} does not exist: give a CSV or Parquet file with the "
                                f"columns {', '.join(c for c, _ in src.columns)}.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        reader = f"read_parquet({literal(path)})"
    elif suffix in (".csv", ".tsv") or path.name.lower().endswith((".csv.gz", ".csv.zst")):
        reader = f"read_csv({literal(path)}, header = true, all_varchar = true)"
    else:
        raise FeatureStoreError(f"The events file must be CSV (.csv, .csv.gz) or Parquet (.parquet); got {path.name}.")
    declared = dict(src.columns)
    where = f"{path.name} (events of source {src.name!r})"
    with memory() as con:
        con.execute("SET TimeZone = 'UTC'")
        try:
            con.execute(f"CREATE TEMP TABLE pushed AS SELECT * FROM {reader}")
        except duckdb.Error as e:
            raise FeatureStoreError(f"Could not read the events file {path}: {str(e).splitlines()[0]}") from None
        found = columns_of(con, "pushed")
        missing = [c for c in declared if c not in found]
        extra = [c for c in found if c not in declared]
        if missing or extra:
            hints = "".join(did_you_mean(c, missing) for c in extra)
            raise FeatureStoreError(
                f"{where}: the columns must be exactly the declared ones ({', '.join(declared)}); the file "
                + "; ".join(filter(None, [missing and f"lacks {', '.join(missing)}",
                                          extra and f"has {', '.join(extra)} besides"]))
                + f".{hints} Nothing was pushed.")
        for column, kind in declared.items():
            q = quote(column)
            bad = con.execute(f"SELECT count(*), min(rowid), arg_min(CAST({q} AS VARCHAR), rowid) FROM pushed "
                              f"WHERE {q} IS NOT NULL AND TRY_CAST({q} AS {PUSH_TYPES[kind]}) IS NULL").fetchone()
            if bad[0]:
                raise FeatureStoreError(f"{where}: the column {column!r} must hold values of type {kind} "
                                        f"({PUSH_TYPES[kind]}); {bad[0]} row(s) do not, the first data row {bad[1] + 1}: "
                                        f"{bad[2]!r}. Fix the file; nothing was pushed.")
        ts = quote(src.timestamp)
        untimed = con.execute(f"SELECT count(*), min(rowid) FROM pushed WHERE {ts} IS NULL").fetchone()
        if untimed[0]:
            raise FeatureStoreError(f"{where}: every event needs its time in {src.timestamp!r}; {untimed[0]} row(s) "
                                    f"have none, the first data row {untimed[1] + 1}. Nothing was pushed.")
        folder = store_dir(settings)
        with writer_lock(folder):
            store = store or backend(settings, defs)
            published = store.published()
            froms = [published[v.name][0] for v in defs.views.values() if v.source == src.name and v.name in published]
            if froms:
                as_of = max(froms)
                late = con.execute(f"SELECT count(*), min(rowid), arg_min(CAST({ts} AS TIMESTAMP), rowid) "
                                   f"FROM pushed WHERE CAST({ts} AS TIMESTAMP) < {stamp(as_of)}").fetchone()
                if late[0]:
                    raise FeatureStoreError(
                        f"{where}: events out of order: {late[0]} event(s) are before {as_of}, the time the online "
                        f"store was materialized to (they would change values already served), the first data row "
                        f"{late[1] + 1} at {late[2]}. Push only events at or after {as_of}; nothing was pushed.")
            columns = ", ".join(f"{quote(c)} {PUSH_TYPES[t]}" for c, t in src.columns)
            select = ", ".join(f"CAST({quote(c)} AS {PUSH_TYPES[t]})" for c, t in src.columns)
            table = f"{EVENTS_DB}.main.{quote(src.name)}"
            con.execute(f"ATTACH {literal(folder / EVENTS)} AS {EVENTS_DB}")
            try:
                stored = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? "
                                     "AND schema_name = 'main' AND table_name = ? ORDER BY column_index",
                                     [EVENTS_DB, src.name]).fetchall()
                if stored and [tuple(r) for r in stored] != [(c, PUSH_TYPES[t]) for c, t in src.columns]:
                    raise FeatureStoreError(
                        f"The events already pushed to {src.name!r} have the columns "
                        f"{', '.join(f'{c} {t}' for c, t in stored)}, and features.yaml now declares "
                        f"{columns}: move {folder / EVENTS} aside (or declare the columns as they were). "
                        "Nothing was pushed.")
                con.execute("BEGIN")
                try:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
                    con.execute(f"INSERT INTO {table} SELECT {select} FROM pushed ORDER BY rowid")
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.execute(f"DETACH {EVENTS_DB}")
        rows, first, last = con.execute(f"SELECT count(*), min(CAST({ts} AS TIMESTAMP)), "
                                        f"max(CAST({ts} AS TIMESTAMP)) FROM pushed").fetchone()
    return Pushed(src.name, rows, first, last, path)
