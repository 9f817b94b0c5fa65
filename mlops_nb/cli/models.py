"""`mlops-nb models`: the model registry's versions, aliases and audit log."""
from __future__ import annotations

import json

from .report import refresh_site


def cmd_models(args) -> int:
    from .. import config, registry
    from ..data import warehouse
    from ..run import transaction

    settings = config.load()
    action = args.models_command
    if action in ("promote", "rollback"):
        # a run's commit moves aliases too: one writer of aliases at a time
        with transaction.run_lock(settings), warehouse.connect(write=True, settings=settings) as con:
            if action == "promote":
                before = registry.promote(con, args.version, args.alias, args.reason)
                now = registry.aliases(con).get(args.alias)
                print(f"{args.alias}: {before or '(none)'} -> {now}")
            else:
                before, now = registry.rollback(con, args.alias)
                print(f"{args.alias}: {before} -> {now} (rolled back)")
        refresh_site(settings)
        return 0
    with warehouse.connect(settings=settings) as con:
        if action == "list":
            rows = registry.versions(con)
        elif action == "show":
            rows = registry.show(con, args.version)
        elif action == "audit":
            rows = registry.audit(con)
        else:
            rows = registry.diff(con, args.a, args.b)
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, default=str))
    elif action == "list":
        if not rows:
            print("No models registered yet: `mlops-nb run` trains and registers one.")
        print(f"{'version':<18} {'created (UTC)':<19} {'aliases':<20} {'roc_auc':>8} {'brier':>8}  gate")
        for r in rows:
            m = r["metrics"] or {}
            gate = "promoted" if (r["gate"] or {}).get("promote") else "candidate"
            print(f"{r['version']:<18} {r['created_at'][:19]:<19} {','.join(r['aliases']) or '-':<20} "
                  f"{m.get('roc_auc', float('nan')):8.4f} {m.get('brier', float('nan')):8.4f}  {gate}")
    elif action == "show":
        print(json.dumps(rows, indent=2, default=str))
    elif action == "audit":
        for r in rows:
            print(f"{r['changed_at'][:19]}  {r['alias']:<10} {r['from_version'] or '-':<18} -> "
                  f"{r['to_version'] or '-':<18} {r.get('action') or '-':<8} {r['actor']}: {r['reason']}")
    else:
        width = max([len(k) for k, _, _ in rows] + [5])
        print(f"{'field':<{width}}  {args.a:<24} {args.b:<24}")
        for key, a, b in rows:
            mark = "" if a == b else "  *"
            print(f"{key:<{width}}  {str(a):<24} {str(b):<24}{mark}")
    return 0
