"""`mlops-nb retrain [--alert ID] [--json]`: train on the freshest labelled months, gate against the champion
on the newest, and make a model that passes the challenger (``monitoring.retrain``)."""
from __future__ import annotations

import json
import sys


def cmd_retrain(args) -> int:
    from .. import config
    from ..monitoring import retrain
    from .run import _progress

    settings = config.load()
    trigger, alert = retrain.BY_HAND, None
    if args.alert:
        alert = retrain.find_alert(settings, args.alert)
        trigger = f"retrain: alert {alert.alert_id}"
    choice = retrain.choose_months(settings)
    if not args.json:
        print(retrain.describe(choice), flush=True)
    done = retrain.retrain(settings, trigger, progress=None if args.json else _progress, choice=choice,
                           announce=lambda line: print(line, file=sys.stderr, flush=True))
    acknowledged = []
    if alert is not None and done.ok and done.became is not None:
        acknowledged = retrain.acknowledge(settings, [alert.alert_id])
    if args.json:
        print(json.dumps({**done.as_dict(), "alert": alert.alert_id if alert else None,
                          "acknowledged": acknowledged}, indent=2, default=str))
    else:
        _print(done, alert, acknowledged)
    if done.outcome.error is not None:
        if not args.json:
            print(f"\nerror: {done.outcome.error}", file=sys.stderr)
            print("The warehouse, the products and the registry are as they were before this retrain"
                  + (f" (undone: {'; '.join(done.outcome.undone)})." if done.outcome.undone else "."),
                  file=sys.stderr)
        return done.outcome.error.exit_code
    return 0


def _print(done, alert, acknowledged) -> None:
    from ..run.notebooks import render_table

    rec = done.record
    print(render_table(rec.tasks))
    print()
    champion = done.aliases.get("champion")
    if rec.status == "up-to-date":
        print(f"Nothing new to train on: the run on these months is up to date. Run {rec.run_id} recorded "
              f"({rec.trigger}).")
        if rec.model_version:
            print(f"model {rec.model_version}: " + (f"the {done.became}" if done.became else
                                                   "registered, neither champion nor challenger"))
    else:
        print(f"Run {rec.run_id} ({rec.trigger}): {rec.status} in "
              f"{(rec.ended_at - rec.started_at).total_seconds():.1f} s")
    if rec.metrics and rec.status != "up-to-date":
        shown = {k: rec.metrics[k] for k in ("roc_auc", "log_loss", "brier", "accuracy") if k in rec.metrics}
        print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if rec.gate and rec.status != "up-to-date":
        if done.became == "challenger":
            verdict = f"the challenger (the champion stays {champion})"
        elif done.became == "champion":
            verdict = "the champion (there was none)" if rec.gate.get("promote") else "the champion"
        elif rec.gate.get("promote"):
            verdict = "registered; it is the champion already"
        else:
            verdict = f"registered as a candidate, not the challenger (the champion stays {champion})"
        print(f"model {rec.model_version}: {verdict}")
        for reason in rec.gate.get("reasons") or []:
            print(f"  - {reason}")
    for report in done.outcome.reports:
        print(f"report: {report}")
    for note in filter(None, done.outcome.notes):
        print(note)
    if alert is not None:
        print(f"alert {alert.alert_id}: " + ("acknowledged by retrain" if acknowledged else
                                             "left as it was (acknowledged already, or no new challenger)"))
