"""Alerts (mlops_nb/monitoring/alerts.py): the rules of [monitor] over windows, stable ids, a real DuckDB
store, the JSON-lines file, a real local HTTP receiver for the webhook (and one that is down), and the
`mlops-nb alerts` command."""
from __future__ import annotations

import json
import socket
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from conftest import run_cli, run_ok, write_settings
from mlops_nb import config
from mlops_nb.monitoring import alerts, store

START = datetime(2013, 11, 1, 10)


def window(**values) -> dict:
    base = {"window_length": "1h", "window_start": START, "model_version": "v1", "arm": "champion",
            "requests": 1000, "errors": 0, "latency_p99_ms": 20.0, "roc_auc": None, "labelled": 0,
            "estimated_roc_auc": None}
    return {**base, **values}


def drift_rows(drifted: dict[str, bool]) -> list[dict]:
    return [{"column": c, "method": "ks", "statistic": 0.3 if d else 0.01, "p_value": None, "threshold": 0.1,
             "drifted": d, "basis": "exact"} for c, d in drifted.items()]


@pytest.fixture
def project(tmp_path):
    write_settings(tmp_path / "settings.ini", {})
    return tmp_path


def settings_of(project, **overrides):
    return config.load(project / "settings.ini", overrides=overrides, environ={})


def rules(found) -> set[str]:
    return {a.rule for a in found}


def test_each_rule_fires_on_its_evidence_and_not_otherwise(project):
    s = settings_of(project, **{"monitor.watch": "distance", "monitor.max_drifted_share": "0.5"})
    quiet = alerts.evaluate(window(roc_auc=0.70, labelled=500, estimated_roc_auc=0.69),
                            drift_rows({"distance": False, "dep_time": False, "p_late": False}), 0.70, s)
    assert quiet == []

    found = alerts.evaluate(
        window(roc_auc=0.55, labelled=500, estimated_roc_auc=0.60, latency_p99_ms=900.0, errors=100),
        drift_rows({"distance": True, "dep_time": True, "origin": False, "p_late": True}), 0.70, s)
    assert rules(found) == {"drifted_share", "feature_drift:distance", "prediction_drift", "roc_auc_floor",
                            "roc_auc_drop", "estimated_drop", "latency_p99", "error_rate"}
    by_rule = {a.rule: a for a in found}
    assert by_rule["drifted_share"].evidence["drifted"] == ["dep_time", "distance"]
    assert by_rule["roc_auc_drop"].evidence == {"roc_auc": 0.55, "reference_roc_auc": 0.70, "labelled": 500,
                                                "threshold": 0.05}
    assert "0.5500" in by_rule["roc_auc_floor"].message and "monitor.min_roc_auc" in by_rule["roc_auc_floor"].message

    # no labels yet: no realized rule; the prediction rule can be switched off
    s2 = settings_of(project, **{"monitor.prediction_drift": "false"})
    found = alerts.evaluate(window(), drift_rows({"distance": False, "p_late": True}), 0.70, s2)
    assert found == []


def test_the_same_window_and_rule_never_alert_twice(project):
    s = settings_of(project)
    found = alerts.evaluate(window(latency_p99_ms=900.0), [], None, s)
    again = alerts.evaluate(window(latency_p99_ms=950.0), [], None, s)
    assert [a.alert_id for a in found] == [a.alert_id for a in again]
    other = alerts.evaluate(window(latency_p99_ms=900.0, model_version="v2"), [], None, s)
    assert other[0].alert_id != found[0].alert_id
    with store.connect(s) as con:
        assert len(alerts.record(con, found, s)) == 1
        assert alerts.record(con, again, s) == []
        assert len(alerts.listing(con)) == 1


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sinks_log_file_and_webhook_with_a_receiver_down_then_up(project):
    port = free_port()
    s = settings_of(project, **{"monitor.webhook_url": f"http://127.0.0.1:{port}/hook",
                                "monitor.webhook_timeout": "1", "monitor.webhook_retries": "2"})
    found = alerts.evaluate(window(latency_p99_ms=900.0, errors=200), [], None, s)
    lines: list[str] = []
    with store.connect(s) as con:
        new = alerts.record(con, found, s)
        failures = alerts.deliver(con, new, s, log=lines.append)  # nobody listens on the port
        assert len(failures) == 2 and all("3 attempt(s)" in f and "kept" in f for f in failures), failures
        assert {a.webhook for a in alerts.listing(con)} == {"failed"}
    assert len(lines) == 2 and all(line.startswith("ALERT ") for line in lines)
    written = [json.loads(line) for line in (project / "data/monitoring/alerts.jsonl").read_text().splitlines()]
    assert {w["rule"] for w in written} == {"latency_p99", "error_rate"}

    Receiver.received = []
    server = HTTPServer(("127.0.0.1", port), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with store.connect(s) as con:
            assert alerts.deliver(con, [], s, log=lines.append) == []  # the failed ones go out now
            assert {a.webhook for a in alerts.listing(con)} == {"delivered"}
    finally:
        server.shutdown()
    assert sorted(r["rule"] for r in Receiver.received) == ["error_rate", "latency_p99"]
    assert all(r["alert_id"] and r["evidence"] for r in Receiver.received)
    assert len(lines) == 2  # nothing new was logged again


def test_alerts_command_lists_and_acknowledges(project):
    s = settings_of(project)
    with store.connect(s) as con:
        alerts.record(con, alerts.evaluate(window(latency_p99_ms=900.0), [], None, s), s)
    listed = run_ok(project, "alerts", "--json").json()
    assert [a["rule"] for a in listed] == ["latency_p99"]
    alert_id = listed[0]["alert_id"]
    assert "OPEN" in run_ok(project, "alerts").stdout
    acked = run_ok(project, "alerts", "ack", alert_id[:6], "--by", "oncall")
    assert alert_id in acked.stdout and "oncall" in acked.stdout
    assert run_ok(project, "alerts", "--json").json() == []
    assert run_ok(project, "alerts", "--all", "--json").json()[0]["acked_by"] == "oncall"
    missing = run_cli(project, "alerts", "ack", "ffff")
    assert missing.returncode == 6 and "No alert 'ffff'" in missing.stderr and "Traceback" not in missing.stderr
