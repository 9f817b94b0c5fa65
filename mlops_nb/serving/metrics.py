"""Prometheus metrics of the service, per model version and arm, beside BentoML's own at GET /metrics.

    mlops_nb_requests_total{version,arm,route}            answered prediction requests
    mlops_nb_rows_total{version,arm,route}                predicted rows
    mlops_nb_request_latency_seconds{version,arm,route}   handler start to prediction (histogram)
    mlops_nb_p_late{version,arm,route}                    the answered probabilities (histogram, 0.1 wide)
    mlops_nb_http_requests_total{route,status}            requests to the prediction routes, by status
    mlops_nb_http_request_duration_seconds{route,status}  arrival to the answer's last byte (histogram)
    mlops_nb_recorder_dropped_rows_total{log}             rows (request-log lines) the full recorder dropped
    mlops_nb_recorder_dropped_requests_total{log}         requests whose log lines it dropped
    mlops_nb_feature_nan_total{version,arm,route,feature,reason}  rows whose field from the online feature
                                                          store was NaN for the model: reason missing (the store
                                                          gave no number) or stale (past the view's ttl)

The two ``http`` series count what BentoML's traffic metrics (``bentoml_*_request_total`` and
``_request_duration_seconds``) count for the other routes: the prediction routes are answered in front of
BentoML's app (``direct.Front``), refusals included.

BentoML 1.4.40 serves /metrics from prometheus_client's multiprocess files (``MultiProcessCollector``
over ``PROMETHEUS_MULTIPROC_DIR``, which its workers receive in their environment): a custom collector
would not be seen, only Counter/Histogram/Gauge values are. ``bentoml.metrics`` is deprecated there in
favour of prometheus_client itself, and prometheus_client picks its storage (process memory or those
files) when it is first imported: so it is imported, and the metrics created, at the first flush,
inside the worker, never at the service module's import.

Cost: a request's ``observe`` only adds to plain Python counters of this process (about 2 us for a row;
each prometheus_client ``inc`` or ``observe`` writes a multiprocess file through a lock, and the 6 of a
one-row request took 6% of its server CPU, py-spy). ``flush`` moves them into the Prometheus metrics:
``Scrape``, a middleware of the service, calls it before every ``GET /metrics`` (so a scrape sees every
answered request) and the service every ``FLUSH_SECONDS`` (what another worker's scrape sees).
Histogram counts go in as ``Histogram.observe`` would have stored them, a value in the first bucket whose
bound is >= it.
"""
from __future__ import annotations

import math
import threading
from bisect import bisect_left

import numpy as np

LABELS = ("version", "arm", "route")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
P_LATE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # le 0.1 ... 1.0 (+Inf added)
ONE_BY_ONE = 8  # up to this many rows, a bucket a value; more, one NumPy pass
FLUSH_SECONDS = 1.0
_LATENCY_BOUNDS = (*LATENCY_BUCKETS, math.inf)
_P_BOUNDS = (*P_LATE_BUCKETS, math.inf)

_metrics = None                      # created at the first flush (see the module's docstring)
_creating = threading.Lock()         # the event loop and the recorder's thread may both be first
_children: dict[tuple, tuple] = {}   # (version, arm, route) -> the labelled children
_pending: dict[tuple, "_Counts"] = {}  # (version, arm, route) -> what observe counted since the last flush
_http_children: dict[tuple, tuple] = {}  # (route, status) -> the labelled children
_http_pending: dict[tuple, list] = {}    # (route, status) -> [latency bucket counts, latency sum]
_nan_children: dict[tuple, object] = {}  # (version, arm, route, feature, reason) -> the labelled child
_nan_pending: dict[tuple, int] = {}      # (version, arm, route, feature, reason) -> rows since the last flush


class _Metrics:
    def __init__(self):
        import prometheus_client as pc

        self.requests = pc.Counter("mlops_nb_requests", "Answered prediction requests.", LABELS)
        self.rows = pc.Counter("mlops_nb_rows", "Predicted rows.", LABELS)
        self.latency = pc.Histogram("mlops_nb_request_latency_seconds",
                                    "A prediction request's time in the handler, validation done to answer.",
                                    LABELS, buckets=LATENCY_BUCKETS)
        self.p_late = pc.Histogram("mlops_nb_p_late", "The answered probabilities of a late arrival.", LABELS,
                                   buckets=P_LATE_BUCKETS)
        self.http_requests = pc.Counter("mlops_nb_http_requests", "Requests to the prediction routes, by status.",
                                        ("route", "status"))
        self.http_duration = pc.Histogram("mlops_nb_http_request_duration_seconds",
                                          "A prediction route's request, arrival to the answer's last byte.",
                                          ("route", "status"), buckets=LATENCY_BUCKETS)
        self.dropped_rows = pc.Counter("mlops_nb_recorder_dropped_rows",
                                       "Rows (request-log lines) not logged: the recorder's queue was full.",
                                       ("log",))
        self.dropped_requests = pc.Counter("mlops_nb_recorder_dropped_requests",
                                           "Requests whose rows were not logged: the recorder's queue was full.",
                                           ("log",))
        self.feature_nan = pc.Counter("mlops_nb_feature_nan",
                                      "Rows whose field from the online feature store was NaN for the model: the "
                                      "store gave no number (missing) or its view was past its ttl (stale).",
                                      (*LABELS, "feature", "reason"))


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _creating:
            if _metrics is None:  # prometheus_client refuses a second metric of the same name
                _metrics = _Metrics()
    return _metrics


class _Counts:
    __slots__ = ("requests", "rows", "latency", "latency_sum", "p", "p_sum")

    def __init__(self):
        self.requests = self.rows = 0
        self.latency, self.latency_sum = [0] * len(_LATENCY_BOUNDS), 0.0
        self.p, self.p_sum = [0] * len(_P_BOUNDS), 0.0


def observe(version: str, arm: str, route: str, seconds: float, p_late: np.ndarray) -> None:
    """One answered prediction request: counts, latency and every row's probability (on the event loop)."""
    counts = _pending.get((version, arm, route))
    if counts is None:
        counts = _pending[(version, arm, route)] = _Counts()
    counts.requests += 1
    counts.rows += len(p_late)
    counts.latency[bisect_left(_LATENCY_BOUNDS, seconds)] += 1
    counts.latency_sum += seconds
    if len(p_late) <= ONE_BY_ONE:
        for p in p_late.tolist():
            if p == p:  # a NaN counts in no bucket (and makes the sum NaN), as with Histogram.observe
                counts.p[bisect_left(_P_BOUNDS, p)] += 1
            counts.p_sum += p
    else:
        found = np.bincount(np.searchsorted(_P_BOUNDS, p_late, side="left"), minlength=len(_P_BOUNDS) + 1)
        for i in np.flatnonzero(found[:len(_P_BOUNDS)]).tolist():
            counts.p[i] += int(found[i])
        counts.p_sum += float(np.sum(p_late))


def answered(route: str, status: int, seconds: float) -> None:
    """One request to a prediction route, answered (or refused) with ``status`` (on the event loop)."""
    counts = _http_pending.get((route, status))
    if counts is None:
        counts = _http_pending[(route, status)] = [[0] * len(_LATENCY_BOUNDS), 0.0]
    counts[0][bisect_left(_LATENCY_BOUNDS, seconds)] += 1
    counts[1] += seconds


def feature_nan(version: str, arm: str, route: str, counts: list[tuple[str, str, int]]) -> None:
    """Rows of one request whose store-provided field was NaN: (feature, reason, rows) (on the event loop)."""
    for feature, reason, rows in counts:
        labels = (version, arm, route, feature, reason)
        _nan_pending[labels] = _nan_pending.get(labels, 0) + rows


def flush() -> None:
    """What ``observe``, ``answered`` and ``feature_nan`` counted, into the Prometheus metrics (on the event
    loop, as they)."""
    global _pending, _http_pending, _nan_pending
    if _nan_pending:
        nan, _nan_pending = _nan_pending, {}
        for labels, rows in nan.items():
            child = _nan_children.get(labels)
            if child is None:
                child = _nan_children[labels] = _get().feature_nan.labels(*labels)
            child.inc(rows)
    if _http_pending:
        http, _http_pending = _http_pending, {}
        for labels, (buckets, total) in http.items():
            children = _http_children.get(labels)
            if children is None:
                m = _get()
                labelled = (labels[0], str(labels[1]))
                children = _http_children[labels] = (m.http_requests.labels(*labelled),
                                                     m.http_duration.labels(*labelled))
            requests, duration = children
            requests.inc(sum(buckets))
            _add(duration, buckets, total)
    if not _pending:
        return
    pending, _pending = _pending, {}
    for labels, counts in pending.items():
        children = _children.get(labels)
        if children is None:
            m = _get()
            children = _children[labels] = (m.requests.labels(*labels), m.rows.labels(*labels),
                                             m.latency.labels(*labels), m.p_late.labels(*labels))
        requests, rows, latency, p_hist = children
        requests.inc(counts.requests)
        rows.inc(counts.rows)
        _add(latency, counts.latency, counts.latency_sum)
        _add(p_hist, counts.p, counts.p_sum)


def _add(histogram, buckets: list[int], total: float) -> None:
    """Bucket counts and a sum into a prometheus_client histogram child: the values its ``observe`` stores
    (it has no bulk API)."""
    for i, count in enumerate(buckets):
        if count:
            histogram._buckets[i].inc(count)
    histogram._sum.inc(total)


def dropped(log: str, rows: int, requests: int) -> None:
    """Rows and requests the recorder could not queue for ``log`` (predictions or requests)."""
    m = _get()
    m.dropped_rows.labels(log).inc(rows)
    m.dropped_requests.labels(log).inc(requests)


class Scrape:
    """ASGI middleware: ``flush`` before the app answers ``GET <route>``."""

    def __init__(self, app, route: str = "/metrics"):
        self.app = app
        self.route = route

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == self.route:
            flush()
        return await self.app(scope, receive, send)
