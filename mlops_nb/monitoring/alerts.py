"""Alerts: the rules of ``[monitor]`` over the monitor's windows, stored once, delivered to their sinks.

A rule that holds for a window and model version is an alert with a stable id (a hash of the rule, the
window and the version), so the same window and rule never alert twice, however often the monitor runs or
late labels recompute the window. An alert stays open until acknowledged (``mlops-nb alerts ack ID``).
Sinks: a log line (stderr), a JSON line in ``<monitoring_dir>/alerts.jsonl`` (durable), and a webhook
POST of the alert as JSON when ``monitor.webhook_url`` is set: each attempt bounded by
``monitor.webhook_timeout``, retried ``monitor.webhook_retries`` times with doubling pauses, after the
monitor has committed its windows, in parallel threads; an alert whose webhook failed is kept, marked
``failed``, and delivered again by the next monitor call.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from ..errors import MlopsNbError, NotFoundError, did_you_mean

ALERTS_FILE = "alerts.jsonl"
PREDICTION = "p_late"  # the drift row of the prediction (the other rows are input features)

DDL = """
CREATE TABLE IF NOT EXISTS alerts (
    alert_id      VARCHAR PRIMARY KEY,      -- sha256(rule, window length and start, version, arm)[:16]
    rule          VARCHAR NOT NULL,
    window_length VARCHAR NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    model_version VARCHAR NOT NULL,
    arm           VARCHAR NOT NULL,
    message       VARCHAR NOT NULL,
    evidence      JSON NOT NULL,            -- the numbers the rule read, and its threshold
    fired_at      TIMESTAMP NOT NULL,
    acked_at      TIMESTAMP,
    acked_by      VARCHAR,
    webhook       VARCHAR NOT NULL          -- off | pending | delivered | failed
);
"""


class SinkError(MlopsNbError):
    """An alert could not be delivered to a sink (it is kept, and delivered again by the next monitor)."""

    exit_code = 7


@dataclass
class Alert:
    alert_id: str
    rule: str
    window_length: str
    window_start: datetime
    model_version: str
    arm: str
    message: str
    evidence: dict = field(default_factory=dict)
    fired_at: datetime | None = None
    acked_at: datetime | None = None
    acked_by: str | None = None
    webhook: str = "off"

    def as_dict(self) -> dict:
        out = asdict(self)
        for key in ("window_start", "fired_at", "acked_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out


def alert_id(rule: str, window_length: str, window_start, model_version: str, arm: str) -> str:
    text = f"{rule}\0{window_length}\0{_iso(window_start)}\0{model_version}\0{arm}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evaluate(window: dict, drift: list[dict], reference_roc_auc: float | None, settings) -> list[Alert]:
    """The alerts one window of one version raises. ``window`` is a row of the store's windows table,
    ``drift`` its drift rows; ``reference_roc_auc`` the version's test ROC AUC."""
    m = settings.monitor
    found: list[tuple[str, str, dict]] = []
    judged = [d for d in drift if d["column"] != PREDICTION and d.get("drifted") is not None]
    drifted = sorted(d["column"] for d in judged if d["drifted"])
    if judged and len(drifted) / len(judged) > m.max_drifted_share:
        found.append(("drifted_share", f"{len(drifted)} of {len(judged)} input features drifted ({', '.join(drifted)})"
                      f", more than monitor.max_drifted_share = {m.max_drifted_share:g}",
                      {"drifted": drifted, "judged": len(judged), "share": len(drifted) / len(judged),
                       "threshold": m.max_drifted_share}))
    for name in m.watch:
        row = next((d for d in judged if d["column"] == name), None)
        if row is not None and row["drifted"]:
            found.append((f"feature_drift:{name}", f"watched feature {name!r} drifted ({row['method']} "
                          f"{row['statistic']:.4g}, threshold {row['threshold']:g})", _drift_evidence(row)))
    prediction = next((d for d in drift if d["column"] == PREDICTION), None)
    if m.prediction_drift and prediction is not None and prediction.get("drifted"):
        found.append(("prediction_drift", f"the prediction drifted ({prediction['method']} "
                      f"{prediction['statistic']:.4g}, threshold {prediction['threshold']:g})",
                      _drift_evidence(prediction)))
    auc, labelled = window.get("roc_auc"), window.get("labelled") or 0
    if auc is not None and auc < m.min_roc_auc:
        found.append(("roc_auc_floor", f"realized ROC AUC {auc:.4f} on {labelled} labelled rows is below "
                      f"monitor.min_roc_auc = {m.min_roc_auc:g}",
                      {"roc_auc": auc, "labelled": labelled, "threshold": m.min_roc_auc}))
    if auc is not None and reference_roc_auc is not None and reference_roc_auc - auc > m.max_roc_auc_drop:
        found.append(("roc_auc_drop", f"realized ROC AUC {auc:.4f} is {reference_roc_auc - auc:.4f} below the "
                      f"version's test ROC AUC {reference_roc_auc:.4f} (monitor.max_roc_auc_drop = "
                      f"{m.max_roc_auc_drop:g})", {"roc_auc": auc, "reference_roc_auc": reference_roc_auc,
                                                   "labelled": labelled, "threshold": m.max_roc_auc_drop}))
    estimated = window.get("estimated_roc_auc")
    if estimated is not None and reference_roc_auc is not None and reference_roc_auc - estimated > m.max_estimated_drop:
        found.append(("estimated_drop", f"estimated ROC AUC {estimated:.4f} is {reference_roc_auc - estimated:.4f} "
                      f"below the version's test ROC AUC {reference_roc_auc:.4f} (monitor.max_estimated_drop = "
                      f"{m.max_estimated_drop:g})", {"estimated_roc_auc": estimated, "reference_roc_auc":
                                                     reference_roc_auc, "threshold": m.max_estimated_drop}))
    p99 = window.get("latency_p99_ms")
    if p99 is not None and p99 > m.max_latency_p99_ms:
        found.append(("latency_p99", f"latency p99 {p99:.1f} ms is above monitor.max_latency_p99_ms = "
                      f"{m.max_latency_p99_ms:g}", {"latency_p99_ms": p99, "threshold": m.max_latency_p99_ms}))
    requests, errors = window.get("requests") or 0, window.get("errors") or 0
    if requests and errors / requests > m.max_error_rate:
        found.append(("error_rate", f"{errors} of {requests} requests failed ({errors / requests:.1%}), above "
                      f"monitor.max_error_rate = {m.max_error_rate:g}",
                      {"errors": errors, "requests": requests, "threshold": m.max_error_rate}))
    version, arm, length, start = window["model_version"], window["arm"], window["window_length"], window["window_start"]
    return [Alert(alert_id(rule, length, start, version, arm), rule, length, start, version, arm, message, evidence)
            for rule, message, evidence in found]


def _drift_evidence(row: dict) -> dict:
    return {k: row.get(k) for k in ("column", "method", "statistic", "p_value", "threshold", "basis")}


def record(con, alerts: list[Alert], settings) -> list[Alert]:
    """Store the alerts not stored before (same id: nothing happens); returns the new ones. Call inside the
    monitor's transaction."""
    con.execute(DDL)
    new = []
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    webhook = "pending" if settings.monitor.webhook_url else "off"
    for a in alerts:
        if con.execute("SELECT 1 FROM alerts WHERE alert_id = ?", [a.alert_id]).fetchone():
            continue
        a.fired_at, a.webhook = now, webhook
        con.execute("INSERT INTO alerts VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)",
                    [a.alert_id, a.rule, a.window_length, a.window_start, a.model_version, a.arm, a.message,
                     json.dumps(a.evidence, default=str), a.fired_at, a.webhook])
        new.append(a)
    return new


def deliver(con, new: list[Alert], settings, log=None) -> list[str]:
    """The sinks, after the monitor committed: a log line and a JSON line for each new alert; the webhook
    for every alert whose delivery is pending or failed (new ones and earlier failures). Returns what
    failed, one line each (the alerts stay, marked failed)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    con.execute(DDL)
    for a in new:
        log(f"ALERT {a.alert_id} {a.rule} [{a.window_length} {_iso(a.window_start)} {a.model_version}/{a.arm}]: "
            f"{a.message}")
    if new:
        from ..data.logs import append

        append(settings.path("monitoring_dir") / ALERTS_FILE,
               [json.dumps(a.as_dict(), default=str) + "\n" for a in new], durable=True)
    failures = []
    url = settings.monitor.webhook_url
    if not url:
        return failures
    todo = listing(con, where="webhook IN ('pending', 'failed')")
    results = _post_all(url, todo, settings.monitor.webhook_timeout, settings.monitor.webhook_retries)
    for a, error in zip(todo, results):
        con.execute("UPDATE alerts SET webhook = ? WHERE alert_id = ?", ["failed" if error else "delivered", a.alert_id])
        if error:
            failures.append(f"webhook {url}: alert {a.alert_id} not delivered ({error}); kept, retried by the "
                            "next `mlops-nb monitor`")
    return failures


def _post_all(url: str, alerts: list[Alert], timeout: float, retries: int) -> list[str | None]:
    """POST each alert in its own thread (a slow receiver delays no other alert); None where delivered."""
    from concurrent.futures import ThreadPoolExecutor

    if not alerts:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(alerts))) as pool:
        return list(pool.map(lambda a: _post(url, a.as_dict(), timeout, retries), alerts))


def _post(url: str, payload: dict, timeout: float, retries: int) -> str | None:
    import urllib.error
    import urllib.request

    body = json.dumps(payload, default=str).encode()
    error = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "mlops-nb"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return None
                error = f"HTTP {response.status}"
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            error = str(getattr(e, "reason", e))
    return f"{error} after {retries + 1} attempt(s)"


def listing(con, where: str = "TRUE", params=None) -> list[Alert]:
    """Stored alerts, newest first."""
    if not _has_table(con):
        return []
    rows = con.execute(f"SELECT alert_id, rule, window_length, window_start, model_version, arm, message, evidence, "
                       f"fired_at, acked_at, acked_by, webhook FROM alerts WHERE {where} "
                       "ORDER BY fired_at DESC, window_start DESC, alert_id", params or []).fetchall()
    return [Alert(*r[:7], json.loads(r[7]), *r[8:]) for r in rows]


def open_alerts(con) -> list[Alert]:
    return listing(con, "acked_at IS NULL")


def acknowledge(con, alert_id: str, actor: str) -> Alert:
    """Close an open alert (a unique prefix of its id is enough)."""
    matches = listing(con, "alert_id LIKE ?", [alert_id + "%"]) if alert_id else []
    if len(matches) != 1:
        ids = [a.alert_id for a in listing(con)]
        if not matches:
            raise NotFoundError(f"No alert {alert_id!r}; `mlops-nb alerts` lists them.{did_you_mean(alert_id, ids)}")
        raise NotFoundError(f"{alert_id!r} matches {len(matches)} alerts; give more of the id.")
    a = matches[0]
    if a.acked_at is None:
        a.acked_at, a.acked_by = datetime.now(timezone.utc).replace(tzinfo=None), actor
        con.execute("UPDATE alerts SET acked_at = ?, acked_by = ? WHERE alert_id = ?", [a.acked_at, actor, a.alert_id])
    return a


def _has_table(con) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'alerts'").fetchone()[0])


def _iso(value) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)
