"""Prometheus metrics of the service, per model version and arm, beside BentoML's own at GET /metrics.

    mlops_nb_requests_total{version,arm,route}            answered prediction requests
    mlops_nb_rows_total{version,arm,route}                predicted rows
    mlops_nb_request_latency_seconds{version,arm,route}   handler start to prediction (histogram)
    mlops_nb_p_late{version,arm,route}                    the answered probabilities (histogram, 0.1 wide)
    mlops_nb_recorder_dropped_rows_total{log}             rows (request-log lines) the full recorder dropped
    mlops_nb_recorder_dropped_requests_total{log}         requests whose log lines it dropped

BentoML 1.4.40 serves /metrics from prometheus_client's multiprocess files (``MultiProcessCollector``
over ``PROMETHEUS_MULTIPROC_DIR``, which its workers receive in their environment): a custom collector
would not be seen, only Counter/Histogram/Gauge values are. ``bentoml.metrics`` is deprecated there in
favour of prometheus_client itself, and prometheus_client picks its storage (process memory or those
files) when it is first imported: so it is imported, and the metrics created, at the first observation,
inside the worker, never at the service module's import.

Cost (``observe`` of a one-row request): a few microseconds, see tests/test_metrics.py and the report
of issue #9. A batch's probabilities go into the histogram in one pass (``_observe_many``): one
``searchsorted`` and an increment a non-empty bucket, exactly what ``Histogram.observe`` a value would
have stored.
"""
from __future__ import annotations

import threading

import numpy as np

LABELS = ("version", "arm", "route")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
P_LATE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # le 0.1 ... 1.0 (+Inf added)
ONE_BY_ONE = 8  # up to this many rows, Histogram.observe a value; more, one bulk pass

_metrics = None                      # created at the first observation (see the module's docstring)
_creating = threading.Lock()         # the event loop and the recorder's thread may both be first
_children: dict[tuple, tuple] = {}   # (version, arm, route) -> the labelled children


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
        self.dropped_rows = pc.Counter("mlops_nb_recorder_dropped_rows",
                                       "Rows (request-log lines) not logged: the recorder's queue was full.",
                                       ("log",))
        self.dropped_requests = pc.Counter("mlops_nb_recorder_dropped_requests",
                                           "Requests whose rows were not logged: the recorder's queue was full.",
                                           ("log",))


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        with _creating:
            if _metrics is None:  # prometheus_client refuses a second metric of the same name
                _metrics = _Metrics()
    return _metrics


def observe(version: str, arm: str, route: str, seconds: float, p_late: np.ndarray) -> None:
    """One answered prediction request: counts, latency and every row's probability."""
    children = _children.get((version, arm, route))
    if children is None:
        m, labels = _get(), (version, arm, route)
        children = _children[labels] = (m.requests.labels(*labels), m.rows.labels(*labels),
                                        m.latency.labels(*labels), m.p_late.labels(*labels))
    requests, rows, latency, p_hist = children
    n = len(p_late)
    requests.inc()
    rows.inc(n)
    latency.observe(seconds)
    if n <= ONE_BY_ONE:
        for p in p_late.tolist():
            p_hist.observe(p)
    else:
        _observe_many(p_hist, p_late)


def dropped(log: str, rows: int, requests: int) -> None:
    """Rows and requests the recorder could not queue for ``log`` (predictions or requests)."""
    m = _get()
    m.dropped_rows.labels(log).inc(rows)
    m.dropped_requests.labels(log).inc(requests)


def _observe_many(histogram, values: np.ndarray) -> None:
    """``histogram.observe(v)`` for every v, in one pass. prometheus_client has no bulk API: this adds to
    the same stored values observe does (a value counts in the first bucket whose bound is >= it, the sum
    grows by it; a NaN counts in no bucket and makes the sum NaN, as with observe)."""
    bounds = histogram._upper_bounds
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds) + 1)
    for i in np.flatnonzero(counts[:len(bounds)]).tolist():
        histogram._buckets[i].inc(int(counts[i]))
    histogram._sum.inc(float(np.sum(values)))
