"""The online feature store on the request path: the fields of a request's rows that the store provides and
the row does not send are the store's values for the row's keys as of its prediction time.

Which fields (``provided``): the flight record's number fields that are features of the selected views
(``features.views`` of ``features.definitions``) keyed by record fields; for the reference definitions the
weather at the origin (temp ... visib) and the four departure features. A row's keys are its entity fields
(origin, carrier); its prediction time is ``definitions.prediction_time`` of its scheduled departure less
``features.lead``, the time training joined the same features as of. A value the row sends wins over the
store; a field left out or null is looked up. A looked-up value is NaN for the model, and counted, when it is

- ``missing``: the store gave no number (the view is not materialized under these definitions, the store is
  absent or cannot be read, no events of the key in the window, a null observation, or a departure that is no
  time, such as 30 February);
- ``stale``: the view's values were materialized longer than its ttl before the row's prediction time.

A request reads the store once (one snapshot of it), each distinct key once, and does the rest in NumPy
(bench/features.py measures it). A store that cannot be read is not the client's fault: its values are
missing, the request is answered, and a line says why (at most one a minute).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from .. import config
from ..data.logs import FEATURE_SOURCES as SOURCES
from ..errors import FeatureStoreError
from ..featurestore.definitions import prediction_time
from ..lib.record import RECORD

STORE, SENT, MISSING, STALE = 0, 1, 2, 3          # a row's code of a field: its name is SOURCES[code]
NAN_REASONS = (MISSING, STALE)
WARN_SECONDS = 60.0
REDIS_TIMEOUT = 0.25  # seconds a Redis read of the request path may take: a hung Redis gives missing values, not 504s
NAT = np.datetime64("NaT", "s")


def prediction_times(year, month, day, sched_dep_time, lead_seconds: int) -> np.ndarray:
    """``definitions.prediction_time`` of many rows at once (NumPy arrays of numbers) as datetime64[s]; NaT
    where it raises (a date that does not exist, minutes past 59, a missing part). Tested equal."""
    y, m, d, t = (np.asarray(a, dtype=np.float64) for a in (year, month, day, sched_dep_time))
    hours, minutes = np.floor(t / 100), t % 100
    ok = ((np.floor(y) == y) & (np.floor(m) == m) & (np.floor(d) == d) & (np.floor(t) == t)
          & (y >= 1) & (y <= 9999) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= 31)
          & (hours >= 0) & (hours <= 23) & (minutes <= 59))
    y, m, d = (np.where(ok, a, 1).astype(np.int64) for a in (y, m, d))
    first = ((y - 1970) * 12 + (m - 1)).astype("datetime64[M]")
    days = first.astype("datetime64[D]") + (d - 1)
    ok &= days.astype("datetime64[M]") == first
    seconds = np.where(ok, hours * 3600 + minutes * 60, 0).astype(np.int64) - int(lead_seconds)
    return np.where(ok, days.astype("datetime64[s]") + seconds.astype("timedelta64[s]"), NAT)


def provided_fields(defs, views) -> dict[str, str]:
    """field -> view: the record's number fields that are features of ``views`` whose entities are record
    fields, in the record's order."""
    by_name = {f.name: v for v in views for f in defs.views[v].features
               if all(e in RECORD for e in defs.views[v].entities)}
    return {name: by_name[name] for name, spec in RECORD.items() if name in by_name and spec[0] == "number"}


@dataclass
class Used:
    """What a request's rows took from the store: ``codes`` (rows x ``names``) of STORE, SENT, MISSING, STALE,
    and ``as_of`` (view -> the time its values are as of, None when not materialized or unreadable) of the
    views read (none when every row sent every provided field)."""
    names: tuple
    codes: np.ndarray
    as_of: dict

    def nan_counts(self) -> list[tuple[str, str, int]]:
        """(field, reason, rows) of the fields that were NaN for ``missing`` or ``stale`` reasons."""
        if len(self.codes) == 1:
            return [(name, SOURCES[code], 1) for name, code in zip(self.names, self.codes[0].tolist())
                    if code in NAN_REASONS]
        out = []
        for code in NAN_REASONS:
            found = np.count_nonzero(self.codes == code, axis=0)
            out += [(self.names[i], SOURCES[code], int(found[i])) for i in np.flatnonzero(found).tolist()]
        return out

    def answer(self) -> dict:
        """The answer's ``features`` (``schemas.StoreFeatures``): per field, the rows it was sent, missing or
        stale in ("all": every row of the request)."""
        n = len(self.codes)
        out = {"provided": list(self.names),
               "as_of": {v: None if t is None else t.isoformat() for v, t in self.as_of.items()},
               "sent": {}, "missing": {}, "stale": {}}
        if n == 1:  # the hot path: a few Python steps, not a dozen NumPy calls
            for name, code in zip(self.names, self.codes[0].tolist()):
                if code != STORE:
                    out[SOURCES[code]][name] = "all"
            return out
        for code in (SENT, MISSING, STALE):
            hits = self.codes == code
            counts = np.count_nonzero(hits, axis=0)
            part = out[SOURCES[code]]
            for i in np.flatnonzero(counts).tolist():
                part[self.names[i]] = "all" if counts[i] == n else np.flatnonzero(hits[:, i]).tolist()
        return out


class Lookup:
    """Fills a request's rows from the online store (``fill``); ``store``: a ``featurestore.online.OnlineStore``."""

    def __init__(self, store, fields: dict[str, str], lead: int, where: str = ""):
        self.store = store
        self.names = tuple(fields)
        self.view_of = dict(fields)
        self.views = tuple(dict.fromkeys(fields.values()))
        self.fields = {v: [name for name in self.names if fields[name] == v] for v in self.views}
        self.indexes = {v: [i for i, name in enumerate(self.names) if fields[name] == v] for v in self.views}
        self.columns = {v: np.array(i) for v, i in self.indexes.items()}
        self.entities = tuple(dict.fromkeys(e for v in self.views for e in store.defs.views[v].entities))
        self.lead = int(lead)
        self.where = where
        self._warned_at = -WARN_SECONDS

    def warm(self) -> dict:
        """Read the store now (at start-up, not at the first request); view -> as_of (None: not there)."""
        try:
            self.store.store.reload()
            return self.store.lookup_rows({e: [] for e in self.entities}, np.array([], dtype=NAT.dtype), self.views)[1]
        except FeatureStoreError as e:
            self._warn(e)
            return {v: None for v in self.views}

    def fill(self, rows, n: int):
        """(the rows with the provided fields filled, ``Used``): ``rows`` is a list of records (dicts) or a dict
        of columns (lists, None for a column not sent), as the request schemas give them; neither is changed."""
        records = isinstance(rows, list)
        if records and n == 1:
            return self._fill_one(rows[0])
        k = len(self.names)
        if records:
            given = np.array([[r.get(name) for name in self.names] for r in rows], dtype=np.float64).reshape(n, k)
        else:
            given = np.full((n, k), np.nan)
            for i, name in enumerate(self.names):
                if rows.get(name) is not None:
                    given[:, i] = np.array(rows[name], dtype=np.float64)
        sent = ~np.isnan(given)  # the schemas refuse NaN: a NaN here was a null or a field left out
        wanted = ~sent.all(axis=0)
        if not wanted.any():
            return rows, Used(self.names, np.full((n, k), SENT, dtype=np.int8), {})
        needed = [v for v in self.views if wanted[self.columns[v]].any()]
        column = (lambda name: [r.get(name) for r in rows]) if records else rows.get
        at = self._times(column, n)
        found = np.full((n, k), np.nan)
        old = np.zeros((n, k), dtype=bool)
        try:
            values, as_of, stale = self.store.lookup_rows({e: column(e) for e in self.entities}, at, needed)
        except FeatureStoreError as e:
            self._warn(e)
            as_of = {v: None for v in needed}
        else:
            for v in needed:
                found[:, self.columns[v]] = np.stack([values[name] for name in self.fields[v]], axis=1)
                old[:, self.columns[v]] = stale[v][:, None]
        timeless = np.isnat(at)
        if timeless.any():  # no prediction time: nothing to ask the store about
            found[timeless] = np.nan
            old[timeless] = False
        codes = np.where(sent, SENT, np.where(np.isnan(found), np.where(old, STALE, MISSING), STORE)).astype(np.int8)
        filled = np.where(sent, given, found)
        if records:
            return ([{**r, **dict(zip(self.names, values))} for r, values in zip(rows, filled.tolist())],
                    Used(self.names, codes, as_of))
        # every provided column as numbers, also those sent whole: the model's input takes them without
        # converting the lists again
        return ({**rows, **{name: filled[:, i] for i, name in enumerate(self.names)
                            if wanted[i] or rows.get(name) is not None}}, Used(self.names, codes, as_of))

    def _fill_one(self, record: dict):
        """``fill`` of one record (the hot path), in plain Python with the store's one-key ``lookup_stale``:
        the same values and codes as the rows' path (tested)."""
        given = [record.get(name) for name in self.names]
        if None not in given:
            return [record], Used(self.names, np.full((1, len(self.names)), SENT, dtype=np.int8), {})
        needed = [v for v in self.views if any(given[i] is None for i in self.indexes[v])]
        try:
            at = prediction_time(record["year"], record["month"], record["day"], record["sched_dep_time"], self.lead)
        except FeatureStoreError:
            at = None  # no prediction time: nothing to ask the store about (its as_of is still told)
        try:
            values, as_of, stale = self.store.lookup_stale({e: record.get(e) for e in self.entities}, at, needed)
        except FeatureStoreError as e:
            self._warn(e)
            values, as_of, stale = {}, {v: None for v in needed}, set()
        if at is None:
            values, stale = {}, set()
        out, codes = dict(record), []
        for name, value in zip(self.names, given):
            if value is not None:
                codes.append(SENT)
                continue
            value = out[name] = values.get(name, np.nan)
            codes.append(STORE if value == value else STALE if self.view_of[name] in stale else MISSING)
        return [out], Used(self.names, np.array([codes], dtype=np.int8), as_of)

    def _times(self, column, n: int) -> np.ndarray:
        """The rows' prediction times (datetime64[s], NaT for a departure that is no time): one row by
        ``definitions.prediction_time`` itself, more at once by ``prediction_times``."""
        parts = [column(c) for c in ("year", "month", "day", "sched_dep_time")]
        if n == 1:
            try:
                return np.array([prediction_time(*(p[0] for p in parts), self.lead)], dtype=NAT.dtype)
            except FeatureStoreError:
                return np.array([NAT])
        return prediction_times(*parts, self.lead)

    def _warn(self, error: Exception) -> None:
        if time.monotonic() - self._warned_at >= WARN_SECONDS:
            self._warned_at = time.monotonic()
            print(f"mlops-nb: the online feature store{self.where} could not be read ({error}); its fields are "
                  "missing (NaN) for the model until it can (counted in /metrics: mlops_nb_feature_nan_total)",
                  flush=True)


def load(settings: config.Settings, in_bento: bool) -> Lookup | None:
    """The service's ``Lookup``, or None when there is nothing to look up: no definitions file, no selected
    view, or no record field among their features. Bad definitions are a FeatureStoreError."""
    from ..featurestore import online
    from ..featurestore.definitions import selected_views
    from ..featurestore.store import load_definitions

    if not (settings.root / settings.features.definitions).is_file():
        return None
    defs = load_definitions(settings)
    fields = provided_fields(defs, selected_views(defs, settings.features.views))
    if not fields:
        return None
    where = (f" at {settings.features.redis_url}" if settings.features.online == "redis"
             else f" {online.store_dir(settings, in_bento) / online.ONLINE}")
    return Lookup(online.open_store(settings, defs, in_bento, timeout=REDIS_TIMEOUT), fields, settings.features.lead,
                  where)


def as_of_text(as_of: dict[str, datetime | None]) -> str:
    return ", ".join(f"{v} {'not materialized' if t is None else 'as of ' + t.isoformat(sep=' ')}"
                     for v, t in as_of.items())
