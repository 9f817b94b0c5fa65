"""The training feature set's point-in-time features: each flight row of ``sql/features.sql`` is a spine row
(its entity columns and its prediction time, ``definitions.prediction_time_sql``: ``features.lead`` before its
scheduled departure) joined to the features of every view by the offline join that `mlops-nb features
historical` runs (``offline.historical_sql``): a model learns from the values the store serves for that time.
The views a model is trained with (``features.views``, recorded in the features task's receipt) only decide
what the train task leaves missing for it (the other views' features, ``left_out``): a model drops what it never
saw a value of, and the feature set holds every view, so that a champion trained with other views is compared
with the new model on the same rows, its own features included.

What the join depends on beyond the data snapshot (the definitions' digest, the lead, the bytes of the
pushed events and of file sources) is the ``options`` that content-address the feature
set, and ``lineage`` is what a model version records of it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import FeatureStoreError
from . import definitions as defs_module
from . import online
from .definitions import Definitions, format_duration, prediction_time_sql, selected_views
from .offline import columns_of, historical_sql, quote

TIME = "prediction_time"          # the spine's time column, kept in the feature set
SPINE = "__training_spine"        # a temporary table of the building connection


@dataclass(frozen=True)
class PointInTime:
    """The join a training feature set is built with (``data.features.build(..., join=...)``)."""
    definitions: Definitions
    lead: int                                   # seconds before the scheduled departure
    views: tuple[str, ...]                      # the model's (features.views), in declaration order
    store: Path                                 # the feature store's folder (events.duckdb: pushed events)
    root: Path                                  # the project (file sources are relative to it)
    pushed_events_sha256: str | None = None     # of events.duckdb, when a view reads a push source
    files: dict = field(default_factory=dict)   # file source -> sha256 of its file

    @property
    def features(self) -> list[str]:
        """The features the model is trained with: those of its views, in declaration order."""
        return [f.name for v in self.definitions.views.values() if v.name in self.views for f in v.features]

    @property
    def left_out(self) -> list[str]:
        """The features of the other views: joined, and left missing for the model by the train task."""
        return [f for f in self.definitions.feature_names if f not in self.features]

    @property
    def pushes(self) -> bool:
        return any(s.push for s in self.definitions.sources.values())

    @property
    def options(self) -> dict:
        """What the joined values depend on besides the snapshot and the flight rows: part of the feature
        set's identity (a change makes a new feature set) and of its ``feature_sets.options``."""
        return {"definitions": self.definitions.digest, "lead": self.lead,
                "spine": prediction_time_sql(self.lead), "pushed_events_sha256": self.pushed_events_sha256,
                "files": dict(self.files)}

    def lineage(self) -> dict:
        """What a model version records: the definitions (their digest and themselves), the views, the lead,
        and the bytes of the events they were computed from beyond the snapshot."""
        return {"digest": self.definitions.digest, "views": list(self.views), "lead": self.lead,
                "lead_text": format_duration(self.lead), "features": self.features, "left_out": self.left_out,
                "pushed_events_sha256": self.pushed_events_sha256, "files": dict(self.files),
                "definitions": self.definitions.to_dict()}

    def create(self, con, rows: str, table: str, snapshot: str) -> None:
        """Create ``table`` from the flight rows (the relation ``rows``): their columns, ``prediction_time``,
        then one column a feature of the definitions. ``snapshot``: the data
        snapshot's schema, which table and query sources read."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {SPINE} AS SELECT *, {prediction_time_sql(self.lead)} AS {TIME} "
                    f"FROM {rows} ORDER BY ALL")
        attached = False
        try:
            columns = list(columns_of(con, SPINE))
            joined = self.definitions.feature_names
            if joined:
                pushed = {}
                if self.pushes:
                    pushed = online.pushed_relations(con, self.definitions, self.store)
                    attached = any(r[0] == online.EVENTS_DB for r in
                                   con.execute("SELECT database_name FROM duckdb_databases()").fetchall())
                source = "(" + historical_sql(con, self.definitions, SPINE, TIME, snapshot=snapshot, root=self.root,
                                              pushed=pushed, features=joined) + ")"
            else:
                source = SPINE
            select = [quote(c) for c in columns] + [quote(f) for f in joined]
            con.execute(f"CREATE TABLE {table} AS SELECT {', '.join(select)} FROM {source} ORDER BY ALL")
        finally:
            if attached:
                con.execute(f"DETACH {online.EVENTS_DB}")
            con.execute(f"DROP TABLE IF EXISTS {SPINE}")


@contextlib.contextmanager
def point_in_time(definitions_file, lead: int, views, store, root):
    """The join of the definitions in ``definitions_file`` for ``lead`` seconds and ``views`` (None: all), the
    pushed events in the feature store's folder ``store``: while the block runs, the feature store's writer
    lock is held when a source takes pushed events (a push cannot change them between their hash and the
    join)."""
    from ..data.ingest import file_sha256

    defs = defs_module.load(Path(definitions_file))
    chosen = selected_views(defs, views)
    if int(lead) < 0:
        raise FeatureStoreError(f"The lead must be a duration >= 0 (features.lead); got {lead!r} seconds.")
    store, root = Path(store), Path(root)
    sources = [defs.sources[name] for name in sorted({v.source for v in defs.views.values()})]
    files = {}
    for s in sources:
        if s.kind == "file":
            path = Path(s.file) if Path(s.file).is_absolute() else root / s.file
            if not path.is_file():
                raise FeatureStoreError(f"Source {s.name!r}: the file {path} does not exist.")
            files[s.name] = file_sha256(path)
    pushes = any(s.push for s in sources)
    with online.writer_lock(store) if pushes else contextlib.nullcontext():
        events = store / online.EVENTS
        yield PointInTime(defs, int(lead), chosen, store, root,
                          file_sha256(events) if pushes and events.is_file() else None, dict(sorted(files.items())))


def missing_shares(con, table: str, join: PointInTime):
    """A frame, one row a feature of the definitions: its view, whether the model is trained with it, and the
    share of rows of each split that have no value (a key without recent events, a stale `last`)."""
    import pandas as pd

    names = join.definitions.feature_names
    if not names:
        return pd.DataFrame(columns=["feature", "view", "trained with"])
    shares = ", ".join(f"avg(CAST({quote(f)} IS NULL AS INTEGER)) AS {quote(f)}" for f in names)
    frame = con.execute(f"SELECT split, {shares} FROM {table} GROUP BY split ORDER BY split").df()
    out = frame.set_index("split").T
    out.insert(0, "trained with", [f in join.features for f in names])
    out.insert(0, "view", [join.definitions.view_of(f).name for f in names])
    out.index.name = "feature"
    return out
