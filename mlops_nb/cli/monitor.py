"""`mlops-nb monitor [--window 1h|1d] [--json] [--check]`: read what is new in the service's logs and the
feedback into the monitoring store, recompute the windows it touched, say what was read and what each window
shows, and write reports/monitoring.html.

Exit codes: 0; 3 with --check while an alert is open (for cron, CI or an orchestrator); 7 when an alert
could not be delivered to a sink (it is kept, and delivered again by the next call)."""
from __future__ import annotations

import json
import sys


def cmd_monitor(args) -> int:
    from .. import config
    from ..monitoring import monitor
    from ..monitoring import report as page

    settings = config.load()
    report = monitor.monitor(settings, window=getattr(args, "window", None))
    _show(settings, args, report)
    written = page.write(settings, report.window)
    if not getattr(args, "json", False):
        print(f"report: {written}")
    _link_from_site(settings, written)
    return _exit_code(settings, args, report)


def _link_from_site(settings, written) -> None:
    """The reports site (when the project has one) links the monitoring page from the first time it exists."""
    from ..errors import MlopsNbError
    from ..run import site

    index = site.reports_dir(settings) / site.INDEX
    try:
        if not index.is_file() or f'href="{written.name}"' in index.read_text(encoding="utf-8"):
            return
        site.write(settings)
    except (MlopsNbError, OSError) as e:
        print(f"the reports site does not link {written.name} yet: {e} (`mlops-nb report` writes it)", file=sys.stderr)


def _exit_code(settings, args, report) -> int:
    from ..monitoring import alerts, store

    if getattr(args, "check", False):
        with store.connect(settings, read_only=True) as con:
            still_open = alerts.open_alerts(con)
        if still_open:
            print(f"{len(still_open)} open alert(s): " + ", ".join(f"{a.alert_id} {a.rule}" for a in still_open)
                  + " (`mlops-nb alerts ack ID` closes one)", file=sys.stderr)
            return 3
    if report.alert_failures:
        return alerts.SinkError.exit_code
    return 0


def _show(settings, args, report) -> None:
    as_json = getattr(args, "json", False)
    for line in report.alert_log + report.alert_failures:
        print(line, file=sys.stderr, flush=True)
    retrain = None
    if report.alerts and settings.monitor.on_alert == "retrain":  # after the store is committed and closed
        from ..monitoring import retrain as retraining

        retrain = retraining.retrain_on_alert(settings, report.alerts,
                                              announce=lambda line: print(line, file=sys.stderr, flush=True))
    promotion = None
    if settings.retrain.auto_promote:  # the challenger's labelled requests, as the windows now count them
        from ..monitoring import retrain as retraining

        promotion = retraining.promote_if_ready(settings)
    if as_json:
        print(json.dumps({**report.as_dict(), "retrain": retrain, "promotion": promotion}, indent=2, default=str))
        return
    if report.empty:
        print(f"no prediction logs in {report.serving_dir / 'predictions'} yet; serve with `mlops-nb serve` (the "
              "service logs every prediction there, with serving.log_predictions = true), then run "
              "`mlops-nb monitor` again.")
        if not report.read.get("feedback"):
            return
    r = report.read
    print(f"read {r.get('files_read', 0)} of {r.get('files', 0)} log file(s) ({r.get('new_files', 0)} new), "
          f"{r.get('lines', 0)} line(s), {_size(r.get('bytes', 0))}: {r.get('predictions', 0)} prediction(s), "
          f"{r.get('requests', 0)} request(s), {r.get('feedback', 0)} feedback line(s) "
          f"({r.get('duplicates', 0)} duplicate(s), {r.get('labels_changed', 0)} label(s) changed); "
          f"{r.get('unknown_labels', 0)} label(s) match no prediction yet; {len(report.warnings)} warning(s)")
    for w in report.warnings:
        print(f"warning [{w['kind']}]: {w['message']}")
    if not report.windows:
        print(f"no {report.window} window changed (store: {report.store})")
        return
    print(f"{len(report.windows)} {report.window} window(s) recomputed (store: {report.store}):")
    for w in report.windows:
        print(_line(w))
    if report.alerts:
        print(f"{len(report.alerts)} new alert(s): " + ", ".join(f"{a['alert_id']} {a['rule']}" for a in report.alerts)
              + " (`mlops-nb alerts` lists the open ones)")
    if retrain is not None:
        print(f"retrain on alert: {retrain.get('status')}"
              + (f" ({retrain['reason']})" if retrain.get("reason") else ""))
    if promotion is not None:
        verdict = f"promoted {promotion.get('challenger')}" if promotion.get("promoted") else "not yet"
        print(f"auto-promote: {verdict}" + (f" ({promotion['reason']})" if promotion.get("reason") else ""))


def _line(w: dict) -> str:
    start = w["window_start"].strftime("%Y-%m-%d %H:%M") if hasattr(w["window_start"], "strftime") \
        else str(w["window_start"])
    who = "service (all routes)" if w["model_version"] == "*" else f"{w['model_version']} {w['arm']}"
    parts = [f"{start} {w['window_length']}  {who}: {w['requests']} req, {w['rows']} rows, {w['errors']} err, "
             f"p99 {_ms(w['latency_p99_ms'])}"]
    if w["model_version"] != "*":
        judged = [d for d in w.get("drift", []) if d.get("drifted") is not None]
        if not judged:
            notes = [d["note"] for d in w.get("drift", []) if d.get("note")]
            parts.append("drift: " + (notes[0] if notes else "not judged"))
        else:
            parts.append("drifted: " + (", ".join(w["drifted"]) if w["drifted"] else "none"))
        if w["roc_auc"] is not None:
            parts.append(f"ROC AUC {w['roc_auc']:.3f} ({w['labelled']} labelled, {w['label_coverage']:.0%})")
        else:
            parts.append(f"ROC AUC - ({w.get('realized_note') or 'no labels'})")
        est = w.get("estimated_roc_auc")
        parts.append(f"estimated ROC AUC {est:.3f}" if est is not None else "estimated ROC AUC -")
    return "; ".join(parts)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.1f} ms"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
