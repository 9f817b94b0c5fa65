"""The BentoML service: the champion (and, in a rollout, the challenger) behind typed HTTP endpoints.

    bentoml serve mlops_nb.serving.service:FlightDelay      # in the project: the registry's champion
    mlops-nb serve / mlops-nb build                          # the same, and a Bento pinned to its model

Which model and settings: a Bento built by ``mlops-nb build`` carries ``pinned.json`` naming its exact tags
and the settings it was built with (``config.serving_settings``: never a project's, and never the run's
inputs, so it starts on any machine); anywhere else the registry's aliases are read once at start-up. Every
answer names the model version, the arm and a request id. Features come from the training code:
``registry.inference.Scorer`` builds the model's input in NumPy with ``lib.transforms.derive_arrays`` (what
the pipeline's ``derive`` step runs) and the fitted encoder's own tables, then scores it with the version's
compiled form (treelite) up to the number of rows where that is the faster (measured when the version was
saved), else with scikit-learn. Requests of more than ``INLINE_ROWS`` rows are scored in a worker thread, so
that the event loop (health checks included) keeps answering.

Speed (see bench/serving.py): the prediction routes answered over HTTP in front of BentoML's app by
``direct.Front`` (the same input models and methods, without BentoML's endpoint machinery and middlewares;
our traffic timeout, request log and guard still run), async endpoints, BentoML's tracing excluded
from the API routes, its traffic timeout replaced by ``limits.Deadline`` (BentoML's left every request's
timer in the event loop), metrics counted in process, access log off by default, a full garbage collection
then ``gc.freeze()`` at start-up, and the logs and profiles handed to a background thread.

Features from the online store (``lookup``): the record's fields that the feature definitions provide
(``features.definitions``, the views of ``features.views``) may be left out of a request; each row then gets
the store's values for its origin and carrier as of its prediction time (``features.lead`` before its
scheduled departure), a value sent winning. Missing and stale values are NaN for the model, named in the
answer's ``features``, counted in /metrics (``mlops_nb_feature_nan_total``) and in the prediction log. Without
a definitions file (or with a record file) nothing is looked up. The embedded store is
``<paths.data_dir>/featurestore/online.duckdb`` (a Bento's: ``$BENTOML_HOME/featurestore`` unless data_dir is
absolute); a store that is not there means missing values, not a failed start.

A project with a record file (``data.record``, written by ``mlops-nb init``) is served by the same class: its
request bodies and answer come from the record (``schemas.spec_models``: ``{"records": [...]}``, answered with
``probability`` and ``positive``), and it writes no prediction log or profiles (their formats, and the
monitor, are the flight record's for now).

Logs (formats in ``data.logs``): the recorder writes the prediction log (a line a row, with the request's
key and latency) and the request log (a line a request to /predict, /predict_batch and /feedback,
answered or refused, from the ``RequestLog`` middleware); POST /feedback appends observed outcomes to the
feedback log, durably, before it answers.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Optional

import anyio.to_thread
import bentoml
from bentoml._internal.server.http import traffic
import numpy as np
import pandas as pd
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from .. import config, registry
from ..data import logs
from ..errors import FeatureStoreError, MlopsNbError
from ..registry.inference import Compiled, Scorer
from . import lookup, metrics
from .access import GetModel, RequestLog
from .direct import Direct, Front
from .limits import Deadline, RequestGuard
from .recorder import Recorder, limits
from .schemas import (FeedbackAnswer, ModelInfo, Prediction, StoreFeatures, feedback_model, request_models,
                      spec_models)

API_ROUTES = ["/predict", "/predict_batch", "/model", "/feedback"]
LOGGED_ROUTES = ["/predict", "/predict_batch", "/feedback"]  # a line each in the request log
PREDICTION_ROUTES = {"/predict": "predict", "/predict_batch": "predict_batch"}  # answered by direct.Front's chain
TIMEOUT_SECONDS = 60  # the traffic timeout: a request not answering within it is cancelled, a 504
KEEP_ANSWERS = 1024  # one-row ``features`` answers kept (then forgotten, all at once)
INLINE_ROWS = 64  # up to this many rows a request is scored on the event loop (about a millisecond at most)
SETTINGS = config.serving_settings()
BENTO = config.bento_source()  # a Bento's source folder, or None in a project
MAX_ROWS = SETTINGS.serving.max_rows
MAX_BODY_BYTES = MAX_ROWS * 1024 + 65536  # a record is ~400 bytes of JSON
FeedbackRequest = feedback_model(MAX_ROWS)


class ServingError(MlopsNbError):
    """The service cannot start: no model to serve, or the model store lacks it."""


def record_spec(settings: config.Settings):
    """The record file's spec (``data.record``, relative to the settings' folder), or None: the flight record."""
    if not settings.data.record:
        return None
    from pathlib import Path

    from ..lib import spec

    path = Path(settings.data.record)
    try:
        return spec.load(path if path.is_absolute() else settings.root / path)
    except ValueError as e:
        raise ServingError(f"Cannot serve the record of 'data.record': {e}") from None


def store_lookup(settings: config.Settings):
    """The online store's ``lookup.Lookup`` for the flight record, or None (nothing to look up)."""
    try:
        return lookup.load(settings, in_bento=BENTO is not None)
    except FeatureStoreError as e:
        raise ServingError(f"Cannot serve with the feature definitions of 'features.definitions' "
                           f"({settings.features.definitions}): {e}") from None


SPEC = record_spec(SETTINGS)
LOOKUP = store_lookup(SETTINGS) if SPEC is None else None
if SPEC is None:
    PredictRequest, PredictBatchRequest = request_models(MAX_ROWS, LOOKUP.view_of if LOOKUP else None)
    Answer = Prediction
    BODY = "flights"  # the field of POST /predict's body that holds the records
else:
    PredictRequest, PredictBatchRequest, Answer = spec_models(SPEC, MAX_ROWS)
    BODY = "records"


@dataclass
class Loaded:
    tag: str
    version: str
    scorer: Scorer
    info: dict

    @property
    def threshold(self) -> float:
        return float(self.info.get("threshold", 0.5))

    def predict(self, rows) -> np.ndarray:
        return self.scorer.predict(rows)

    def describe(self) -> dict:
        keep = ("kind", "params", "seed", "snapshot_id", "feature_set_id", "lineage", "model_sha256", "run_id")
        return {"version": self.version, "tag": self.tag, "metrics": self.info.get("metrics", {}),
                **{k: self.info.get(k) for k in keep}, "inference": self.scorer.path}


def resolve_models(settings: config.Settings) -> dict[str, dict]:
    """alias -> {"tag", "sha256"}: from pinned.json in a Bento, else from the registry."""
    if BENTO is not None:
        return json.loads((BENTO / config.PINNED_FILE).read_text())["models"]
    from ..data import warehouse

    try:
        with warehouse.connect(settings=settings) as con:
            return registry.served(con)
    except MlopsNbError as e:
        raise ServingError(f"Nothing to serve: {e}") from None


def load(entry: dict, compiled: bool = True) -> Loaded:
    """A model as ``resolve_models`` names it, its files checked against the sha256 the registry recorded;
    scored by its compiled form when it has one that passed its checks (and ``compiled``)."""
    estimator, info = registry.load(entry["tag"], entry["sha256"])
    blob = registry.load_compiled(entry["tag"], info) if compiled else None
    scorer = Scorer(estimator, Compiled(blob) if blob else None, (info.get("compiled") or {}).get("max_rows", 0))
    return Loaded(entry["tag"], entry["tag"].split(":", 1)[1], scorer, info)


def flight_time(row: dict) -> float:
    """The scheduled departure of a request's first flight (a record), as a POSIX time (its local time read
    as UTC): the clock of a replay of past traffic (serving.clock = flight). Never raises for a validated
    record (day 31 of a short month runs on into the next)."""
    from datetime import datetime, timedelta, timezone

    hhmm = int(row["sched_dep_time"])
    start = datetime(int(row["year"]), int(row["month"]), 1, tzinfo=timezone.utc)
    return (start + timedelta(days=int(row["day"]) - 1, hours=hhmm // 100, minutes=hhmm % 100)).timestamp()


def arm_for(key: str, share: float) -> str:
    """Canary routing: a stable hash of the key, so the same key always gets the same arm."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "challenger" if bucket < share else "champion"


class _RefusalsInOneLine(logging.Filter):
    """BentoML logs every refused request (HTTP 400) as an error with a traceback; it is the client's
    mistake: one line at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError":
            record.msg = f"{record.getMessage()}: refused, {exc.error_count()} validation error(s)"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("bentoml._internal.server.http_app").addFilter(_RefusalsInOneLine())
traffic.TimeoutMiddleware = Deadline  # BentoML's traffic timeout, without its timers' leak (see limits.Deadline)

if BENTO is None:  # a Bento's models come from the Bento, not the project's store
    config.use_bentoml_home(SETTINGS.path("bentoml_home"))


@bentoml.service(
    name="flight_delay",
    workers=1,
    http={"host": "127.0.0.1"},  # a plain `bentoml serve` binds loopback only; `--host 0.0.0.0` to expose
    traffic={"timeout": TIMEOUT_SECONDS},
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
    tracing={"excluded_urls": API_ROUTES},
)
class FlightDelay:
    def __init__(self) -> None:
        self.mode = SETTINGS.serving.mode
        tags = resolve_models(SETTINGS)
        compiled = SETTINGS.serving.compiled
        self.champion = load(tags["champion"], compiled)
        if self.champion.scorer.spec != SPEC:
            raise ServingError(f"The champion {self.champion.tag} was trained on another record than this project's "
                               f"('data.record' = {SETTINGS.data.record!r}): its requests would not fit it. Run the "
                               "pipeline (`mlops-nb run`) to register a champion of this record.")
        self.challenger = None
        if self.mode != "champion":
            if "challenger" not in tags:
                raise ServingError(f"serving.mode is {self.mode!r} but the registry has no challenger; "
                                   "promote one (`mlops-nb models promote VERSION --alias challenger`) or set "
                                   "serving.mode = champion.")
            self.challenger = load(tags["challenger"], compiled)
        shadow = (self.challenger.version, self.challenger.predict) if self.mode == "shadow" else None
        out = config.serving_dir(SETTINGS, in_bento=BENTO is not None)
        log, profile = SETTINGS.serving.log_predictions, SETTINGS.serving.profile_requests
        if SPEC is not None and (log or profile):
            print("mlops-nb: the prediction log and request profiles are written for the flight record only; a "
                  "record file's service writes neither (set serving.log_predictions and "
                  "serving.profile_requests to false to silence this)", flush=True)
            log = profile = False
        if SPEC is not None and SETTINGS.serving.clock == "flight":
            raise ServingError("serving.clock = flight needs the flight record's departure time; a record file's "
                               "service logs at wall time: set serving.clock = wall.")
        self.recorder = (Recorder(out, SETTINGS.serving.profile_window_minutes, shadow, log=log, profile=profile,
                                  **limits(SETTINGS)) if log or profile else None)
        self.out = out
        self._feedback_lock = threading.Lock()  # one append at a time to this worker's file
        self.share = SETTINGS.serving.canary_share if self.mode == "canary" else 0.0
        self.flight_clock = SETTINGS.serving.clock == "flight"
        self.lookup = LOOKUP
        self._answers: dict[tuple, StoreFeatures] = {}  # one-row requests' ``features`` (``features_answer``)

    @bentoml.on_startup
    def _start(self) -> None:
        # One request is a row or a few: OpenMP's parallel regions (one a tree in gradient boosting) cost far
        # more than they save, and under CPU contention a region can stall for milliseconds. The thread count
        # is a per-thread setting, and BentoML builds the service in another thread than the event loop's,
        # which scores small requests: set here, in the loop's thread (set in __init__, the worker threads
        # spun after every one-row prediction: twice the CPU a request).
        threadpool_limits(1)
        if self.lookup is not None:
            print(f"mlops-nb: {', '.join(self.lookup.names)} from the online feature store{self.lookup.where} "
                  f"when a request leaves them out: {lookup.as_of_text(self.lookup.warm())}", flush=True)
        if self.recorder is not None:
            self.recorder.start()
            RUNNING.recorder = self.recorder if self.recorder.log else None
        RUNNING.describe = lambda: self.info().model_dump(mode="json")
        RUNNING.instance = self
        self._flush_metrics(asyncio.get_running_loop())
        gc.collect()
        gc.freeze()  # the loaded model and libraries leave the collector's sight: no long pauses under load

    def _flush_metrics(self, loop) -> None:
        metrics.flush()
        self._flusher = loop.call_later(metrics.FLUSH_SECONDS, self._flush_metrics, loop)

    @bentoml.on_shutdown
    def _stop(self) -> None:
        RUNNING.instance = None
        self._flusher.cancel()
        metrics.flush()
        if self.recorder is not None:
            RUNNING.recorder = None
            self.recorder.close()

    async def answer(self, rows, n: int, key: Optional[str], started: float, first: dict, route: str) -> Answer:
        """Score ``rows`` (records, or columns) of ``n`` rows, count and log them, answer."""
        request_id = os.urandom(8).hex()
        arm = arm_for(key or request_id, self.share) if self.share else "champion"
        model = self.challenger if arm == "challenger" else self.champion
        score = functools.partial(self.score, model, rows, n)
        p, logged, used = score() if n <= INLINE_ROWS else await anyio.to_thread.run_sync(score)
        seconds = time.perf_counter() - started
        metrics.observe(model.version, arm, route, seconds, p)
        if used is not None:
            metrics.feature_nan(model.version, arm, route, used.nan_counts())
        if self.recorder is not None:
            latency_ms = seconds * 1000.0
            at = flight_time(first) if self.flight_clock else None
            self.recorder.record(request_id, model.version, arm, logged, p, key, latency_ms, at,
                                 None if used is None else (used.names, used.codes.tobytes()))
        if SPEC is None:
            return Prediction(request_id=request_id, model_version=model.version, arm=arm, p_late=p.tolist(),
                              late=(p >= model.threshold).tolist(),
                              features=None if used is None else self.features_answer(used))
        return Answer(request_id=request_id, model_version=model.version, arm=arm, probability=p.tolist(),
                      positive=(p >= model.threshold).tolist())

    def features_answer(self, used: lookup.Used) -> StoreFeatures:
        """The answer's ``features``: of a one-row request, made once for each combination of the row's codes
        and the views' as_of (few: the store changes its as_of when it is materialized), and kept; building and
        validating it cost ~6 us of a ~300 us request (bench/serving.py)."""
        if len(used.codes) != 1:
            return StoreFeatures(**used.answer())
        key = (used.codes.tobytes(), tuple(used.as_of.items()))
        found = self._answers.get(key)
        if found is None:
            if len(self._answers) >= KEEP_ANSWERS:
                self._answers.clear()
            found = self._answers[key] = StoreFeatures(**used.answer())
        return found

    def score(self, model: Loaded, rows, n: int):
        """P(late), the rows as the model and the recorder take them (the store's values filled in; columns
        become a frame, off the event loop), and what the store gave them (``lookup.Used``, or None)."""
        used = None
        if self.lookup is not None:
            rows, used = self.lookup.fill(rows, n)
        if n <= INLINE_ROWS:
            p = model.predict(rows)
        else:  # one OpenMP thread a batch too: two batches at once then take a core each (OpenMP's own threads
            with threadpool_limits(1):  # in a worker thread had cost 13% of the rows/s, bench/serving.py)
                p = model.predict(rows)
        if self.recorder is None or isinstance(rows, list):
            return p, rows, used
        frame = pd.DataFrame({name: values if values is not None else [None] * n for name, values in rows.items()})
        return p, frame, used

    @bentoml.api(route="/predict")
    async def predict(self, request: PredictRequest, /) -> Answer:
        """P(late) for one or more flight records (a record file's project: P(target = positive) of records)."""
        started = time.perf_counter()
        records = [f.__dict__ for f in getattr(request, BODY)]
        return await self.answer(records, len(records), request.key, started, records[0], "/predict")

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: PredictBatchRequest, /) -> Answer:
        """P(late) for many flights sent as columns (faster to parse than records); a record file's project:
        its records as columns."""
        started = time.perf_counter()
        columns = dict(request.columns)
        n = request.columns.n_rows()
        first = {name: values[0] if values is not None else None for name, values in columns.items()}
        return await self.answer(columns, n, request.key, started, first, "/predict_batch")

    @bentoml.api(route="/feedback")
    async def feedback(self, request: FeedbackRequest, /) -> FeedbackAnswer:
        """Observed outcomes of earlier predictions, each named by its request_id or its key: on disk
        (fsync) before the answer. Duplicates and unknown ids are kept (the monitor sorts them out)."""
        at = time.time()
        try:
            await anyio.to_thread.run_sync(self.write_feedback, request.outcomes, at)
        except OSError as e:
            return JSONResponse({"error": f"the outcomes were not recorded: writing the feedback log failed "
                                          f"({e.strerror or e}); none of the {len(request.outcomes)} outcome(s) was "
                                          "kept: send them again later"}, status_code=503)
        return FeedbackAnswer(accepted=len(request.outcomes), received_at=logs.now_iso(at))

    def write_feedback(self, outcomes: list, at: float) -> None:
        """Append ``outcomes`` to this worker's feedback file of the day, durably (fsync); all or none:
        a failed write is cut off again, so that no partial line is left to spoil the next one."""
        stamp = logs.now_iso(at)
        lines = [logs.feedback_line(o.request_id, o.key, o.late, o.arr_delay, stamp, "http") for o in outcomes]
        path = logs.day_path(self.out, logs.FEEDBACK, at, logs.worker_name())
        with self._feedback_lock:
            size = path.stat().st_size if path.is_file() else 0
            try:
                logs.append(path, lines, durable=True)
            except OSError:
                try:
                    if path.is_file():
                        os.truncate(path, size)
                except OSError:
                    pass
                raise

    @bentoml.api(route="/model")
    async def model(self) -> ModelInfo:
        """The served model(s): version, lineage, metrics, and the rollout mode (GET /model too)."""
        return self.info()

    def info(self) -> ModelInfo:
        return ModelInfo(mode=self.mode, champion=self.champion.describe(),
                         challenger=self.challenger.describe() if self.challenger else {})


class _Running:
    """What the middlewares need of the running service, set at start-up (None until then)."""

    recorder = None  # its recorder, when it writes the logs (RequestLog)
    describe = None  # its model description (GetModel)
    instance = None  # the service itself (Front, Direct)


RUNNING = _Running()
# the request log outermost, so that it sees the size limit's refusals too
FlightDelay.add_asgi_middleware(RequestLog, routes=LOGGED_ROUTES, sink=RUNNING)
FlightDelay.add_asgi_middleware(RequestGuard, max_bytes=MAX_BODY_BYTES)
FlightDelay.add_asgi_middleware(metrics.Scrape)
FlightDelay.add_asgi_middleware(GetModel, route="/model", source=RUNNING)


class _Fronted(type(FlightDelay)):
    """The service, its HTTP app behind ``direct.Front`` (the prediction routes answered in front of BentoML's
    middlewares): BentoML builds the app in ``Service.to_asgi`` and has no hook around it, so the service
    object becomes an instance of this subclass, which only wraps what ``to_asgi`` returns."""

    __slots__ = ()

    def to_asgi(self, is_main: bool = True):
        app = super().to_asgi(is_main)
        if SETTINGS.serving.access_log:  # BentoML's access log is to see every request
            return app
        direct = Direct(self, PREDICTION_ROUTES, RUNNING)
        fast = Deadline(RequestLog(RequestGuard(direct, max_bytes=MAX_BODY_BYTES), routes=PREDICTION_ROUTES,
                                   sink=RUNNING, counted=True), timeout=TIMEOUT_SECONDS)
        return Front(app, fast, PREDICTION_ROUTES, RUNNING)


FlightDelay.__class__ = _Fronted
