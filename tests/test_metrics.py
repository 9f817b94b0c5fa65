"""The service's Prometheus metrics (``serving.metrics``): labelled samples and bucket counts as the
exposition renders them once flushed, the histogram counts equal to Histogram.observe's (one by one and in
the bulk pass), its cost; and over HTTP, GET /metrics (which flushes) and GET /model of a real server."""
from __future__ import annotations

import timeit

import numpy as np
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlops_nb.serving import metrics


def samples(text: str) -> dict:
    """(sample name, sorted label items) -> value, of an exposition."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(version: str, arm: str = "champion", route: str = "/predict", **more) -> tuple:
    return tuple(sorted({"version": version, "arm": arm, "route": route, **more}.items()))


def test_observe_renders_labelled_counts_and_buckets():
    metrics.observe("t1", "champion", "/predict", 0.0012, np.array([0.05]))
    metrics.observe("t1", "champion", "/predict", 0.3, np.array([0.35]))
    metrics.observe("t1", "challenger", "/predict_batch", 0.004, np.arange(101) / 100)
    metrics.flush()
    got = samples(generate_latest(REGISTRY).decode())
    assert got["mlops_nb_requests_total", labels("t1")] == 2
    assert got["mlops_nb_rows_total", labels("t1")] == 2
    assert got["mlops_nb_request_latency_seconds_bucket", labels("t1", le="0.001")] == 0
    assert got["mlops_nb_request_latency_seconds_bucket", labels("t1", le="0.002")] == 1
    assert got["mlops_nb_request_latency_seconds_bucket", labels("t1", le="0.5")] == 2
    assert got["mlops_nb_request_latency_seconds_sum", labels("t1")] == pytest.approx(0.3012)
    assert got["mlops_nb_p_late_bucket", labels("t1", le="0.1")] == 1
    assert got["mlops_nb_p_late_bucket", labels("t1", le="0.3")] == 1
    assert got["mlops_nb_p_late_bucket", labels("t1", le="0.4")] == 2
    batch = labels("t1", "challenger", "/predict_batch")
    assert got["mlops_nb_requests_total", batch] == 1 and got["mlops_nb_rows_total", batch] == 101
    # 0.00, 0.01, ... 1.00: a bound's own value counts in its bucket (le), as Histogram.observe counts it
    assert [got["mlops_nb_p_late_bucket", labels("t1", "challenger", "/predict_batch", le=f"{b:.1f}")]
            for b in np.arange(0.1, 1.05, 0.1)] == [11, 21, 31, 41, 51, 61, 71, 81, 91, 101]
    assert got["mlops_nb_p_late_count", batch] == 101
    assert got["mlops_nb_p_late_sum", batch] == pytest.approx(50.5)


@pytest.mark.parametrize("rows", [1, metrics.ONE_BY_ONE + 1])
def test_counts_equal_histogram_observe(rows):
    """A value a request (one by one) and many a request (the bulk pass) land where Histogram.observe puts
    them, bounds included, in the p_late and the latency histogram."""
    rng = np.random.default_rng(rows)
    values = np.concatenate([rng.random(5000), np.array(metrics.P_LATE_BUCKETS), [0.0, 1.0, 1.5, -0.1]])
    values = values[:len(values) // rows * rows]
    seconds = np.concatenate([rng.random(len(values) // rows) * 0.02, metrics.LATENCY_BUCKETS])
    arm = f"counted{rows}"
    for i, s in enumerate(seconds.tolist()):
        metrics.observe("t2", arm, "/predict_batch", s, values[i * rows:(i + 1) * rows])
    metrics.flush()
    m = metrics._get()
    got_p, got_latency = (h.labels("t2", arm, "/predict_batch") for h in (m.p_late, m.latency))
    want_p, want_latency = (h.labels("t2", f"observed{rows}", "/predict_batch") for h in (m.p_late, m.latency))
    for v in values[:len(seconds) * rows].tolist():
        want_p.observe(v)
    for s in seconds.tolist():
        want_latency.observe(s)
    for got, want in ((got_p, want_p), (got_latency, want_latency)):
        assert [b.get() for b in got._buckets] == [b.get() for b in want._buckets]
        assert got._sum.get() == pytest.approx(want._sum.get())


def test_observe_costs_microseconds():
    """The hot path serves ~1 ms requests: a one-row observe must stay in microseconds."""
    p = np.array([0.4])
    metrics.observe("t3", "champion", "/predict", 0.001, p)
    n = 2000
    seconds = min(timeit.repeat(lambda: metrics.observe("t3", "champion", "/predict", 0.001, p), number=n,
                                repeat=5)) / n
    assert seconds < 50e-6, f"observe of one row took {seconds * 1e6:.1f} us"


def test_dropped_counts():
    before = REGISTRY.get_sample_value("mlops_nb_recorder_dropped_rows_total", {"log": "predictions"}) or 0
    metrics.dropped("predictions", 7, 2)
    assert REGISTRY.get_sample_value("mlops_nb_recorder_dropped_rows_total", {"log": "predictions"}) == before + 7


# --------------------------------------------------------------------------------------------------
# a real server

pytest_plugins = ["served_project"]


@pytest.mark.slow
def test_metrics_and_get_model_over_http(champion_server):
    from served_project import GOOD, client

    with client(champion_server) as http:
        answers = [http.post("/predict", json={"flights": [GOOD] * n}) for n in (1, 1, 3)]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
        version = answers[0].json()["model_version"]
        text = http.get("/metrics").text
        got = samples(text)
        assert got["mlops_nb_requests_total", labels(version)] >= 3, text
        assert got["mlops_nb_rows_total", labels(version)] >= 5
        assert got["mlops_nb_p_late_count", labels(version)] >= 5
        assert got["mlops_nb_request_latency_seconds_count", labels(version)] >= 3
        # the prediction routes are answered in front of BentoML's traffic metrics: counted by status here
        refused = http.post("/predict", json={"flights": [{**GOOD, "month": 13}]})
        assert refused.status_code == 400, refused.text
        got = samples(http.get("/metrics").text)
        http_labels = lambda status: (("route", "/predict"), ("status", status))  # noqa: E731
        assert got["mlops_nb_http_requests_total", http_labels("200")] >= 3
        assert got["mlops_nb_http_requests_total", http_labels("400")] >= 1
        assert got["mlops_nb_http_request_duration_seconds_count", http_labels("200")] >= 3

        get, post = http.get("/model"), http.post("/model")
        assert get.status_code == post.status_code == 200, (get.text, post.text)
        assert get.headers["content-type"] == "application/json"
        assert get.json() == post.json() and get.json()["champion"]["version"] == version
