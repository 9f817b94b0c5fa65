"""`mlops-nb alerts [--json]` lists the monitor's alerts; `mlops-nb alerts ack ID` closes one."""
from __future__ import annotations

import json


def cmd_alerts(args) -> int:
    from .. import config
    from ..monitoring import alerts, store

    settings = config.load()
    if args.alerts_command == "ack":
        with store.lock(settings), store.connect(settings) as con:
            con.execute(alerts.DDL)
            alert = alerts.acknowledge(con, args.id, actor=args.by)
        print(json.dumps(alert.as_dict(), indent=2) if args.json else
              f"acknowledged {alert.alert_id} ({alert.rule}, {alert.window_length} window of "
              f"{alert.window_start:%Y-%m-%d %H:%M}, {alert.model_version}) by {alert.acked_by}")
        return 0
    if not store.store_path(settings).exists():
        found = []
    else:
        with store.connect(settings, read_only=True) as con:
            found = alerts.listing(con, "TRUE" if args.all else "acked_at IS NULL")
    if args.json:
        print(json.dumps([a.as_dict() for a in found], indent=2))
        return 0
    if not found:
        print("No open alerts." if not args.all else "No alerts.")
        return 0
    for a in found:
        state = f"acked by {a.acked_by}" if a.acked_at else "OPEN"
        webhook = "" if a.webhook == "off" else f", webhook {a.webhook}"
        print(f"{a.alert_id}  {state:<10} {a.rule:<18} {a.window_length} {a.window_start:%Y-%m-%d %H:%M}  "
              f"{a.model_version}/{a.arm}{webhook}\n    {a.message}")
    return 0
