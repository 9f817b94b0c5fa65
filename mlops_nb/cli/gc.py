"""`mlops-nb gc`: remove what no run, model version or alias needs, and say how much it frees."""
from __future__ import annotations

import json


def cmd_gc(args) -> int:
    from .. import config
    from ..run import gc, transaction

    settings = config.load()
    with transaction.run_lock(settings):
        report = gc.collect(settings, dry_run=args.dry_run)
        if not args.dry_run and settings.pipeline.reports:  # no page may link a removed folder
            from ..run import site

            site.write(settings)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for item in report.items:
        print(f"{verb} {item.kind} {item.name}: {gc.human(item.bytes)} ({item.detail})")
    for why in report.kept.get("snapshots", []):
        print(f"kept snapshot {why}")
    for what in report.kept.get("feature store", []):
        print(f"kept feature store {what}")
    total = f"{gc.human(report.freed)} {'to free' if args.dry_run else 'freed'}"
    print(f"{len(report.items)} item(s), {total}; warehouse data in use {gc.human(report.warehouse_bytes_before)}"
          + ("" if args.dry_run else f" -> {gc.human(report.warehouse_bytes_after)}"))
    return 0
