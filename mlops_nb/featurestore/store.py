"""The project's feature store: its definitions (``features.definitions``) and the point-in-time join of a
spine file over a data snapshot."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..errors import FeatureStoreError
from . import definitions as defs_module
from . import online
from .offline import historical, literal

SPINE_TABLE = "spine"


def load_definitions(settings: config.Settings) -> defs_module.Definitions:
    return defs_module.load(settings.root / settings.features.definitions)


def read_spine(con, path: Path, table: str = SPINE_TABLE) -> None:
    """A spine file (CSV or Parquet) as a temporary table of ``con``, in the file's row order."""
    import duckdb

    path = Path(path)
    if not path.is_file():
        raise FeatureStoreError(f"The spine {path} does not exist: give a CSV or Parquet file of entity columns "
                                "and a timestamp column.")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix.lower() in (".gz", ".zst") else path.suffix.lower()
    if suffix == ".parquet":
        reader = f"read_parquet({literal(path)})"
    elif suffix in (".csv", ".csv.gz", ".csv.zst", ".tsv"):
        reader = f"read_csv({literal(path)})"
    else:
        raise FeatureStoreError(f"The spine must be a CSV (.csv, .csv.gz) or Parquet (.parquet) file; got {path.name}.")
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {reader}")
    except duckdb.Error as e:
        raise FeatureStoreError(f"Could not read the spine {path}: {str(e).splitlines()[0]}") from None


@dataclass
class Joined:
    rows: int
    features: list[str]
    seconds: float
    out: Path | None


def historical_file(settings: config.Settings, spine: Path, out: Path | None, timestamp: str = "event_timestamp",
                    snapshot: str | None = None, stdout=None) -> Joined:
    """Join a spine file to the features as of each row's ``timestamp``, the sources reading the data
    snapshot of schema ``snapshot``; Parquet to ``out`` (written whole or not at all), else CSV to ``stdout``."""
    from ..data import warehouse

    definitions = load_definitions(settings)
    path = warehouse.warehouse_path(settings)
    needs_snapshot = any(s.kind in ("table", "query") for s in definitions.sources.values())
    if needs_snapshot and not path.exists():
        raise FeatureStoreError(f"The feature sources read the data snapshot and there is no warehouse at {path}: "
                                "run `mlops-nb run` first.")
    with warehouse.connect(settings=settings) if path.exists() else online.memory() as con, \
            online.events_read(settings, definitions):
        read_spine(con, spine)
        started = time.perf_counter()
        joined = historical(con, definitions, SPINE_TABLE, timestamp, snapshot=snapshot, root=settings.root,
                            pushed=online.pushed_relations(con, definitions, online.store_dir(settings)))
        if out is not None:
            out = Path(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            try:
                joined.write_parquet(str(tmp))
                os.replace(tmp, out)
            finally:
                tmp.unlink(missing_ok=True)
            rows = con.execute(f"SELECT count(*) FROM {SPINE_TABLE}").fetchone()[0]
        else:
            frame = joined.df()
            frame.to_csv(stdout, index=False)
            rows = len(frame)
        return Joined(rows, definitions.feature_names, time.perf_counter() - started, out)
