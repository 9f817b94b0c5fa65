"""`mlops-nb simulate [--sample FRACTION] [--out DIR] [--seed N] [--json]`: the monitoring loop on the bundled
flights, month by month, in a scratch copy of the project (``monitoring.simulate``)."""
from __future__ import annotations

import json
import sys


def cmd_simulate(args) -> int:
    from pathlib import Path

    from .. import config
    from ..errors import RunInterrupted
    from ..monitoring import simulate as sim

    as_json = getattr(args, "json", False)
    source = config.load()

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    def on_window(w: dict) -> None:
        if not as_json:
            print(sim.window_line(w), flush=True)

    try:
        done = sim.simulate(source, sample=args.sample, out=Path(args.out) if args.out else None, seed=args.seed,
                            progress=progress, on_window=on_window)
    except RunInterrupted as e:
        print(f"{e}: the simulation stopped; its service was stopped.", file=sys.stderr)
        return e.exit_code
    if as_json:
        print(json.dumps(done.as_dict(), indent=2, default=str))
        print(f"scratch project: {done.project}; report: {done.report}; feature store: {done.feature_store}; "
              f"{done.seconds:.0f} s", file=sys.stderr)
        return 0
    print()
    changed = "changed through the canary" if done.champion_end != done.champion_start else "unchanged"
    print(f"champion: {done.champion_start} at the start, {done.champion_end} at the end ({changed})")
    for c in done.comparisons:
        print(f"retrained {c['new']} vs {c['old']} on the {c['rows']} labelled rows of {c['window']}: ROC AUC "
              f"{_f(c['new_roc_auc'])} vs {_f(c['old_roc_auc'])}")
    if not done.comparisons:
        print("no retrain to compare")
    for note in done.notes:
        print(note)
    print(f"scratch project: {done.project}")
    print(f"monitoring report: {done.report}")
    print(f"feature store: {done.feature_store}")
    print(f"{len(done.windows)} window(s), {done.server_starts} server start(s), {done.seconds:.0f} s")
    return 0


def _f(v) -> str:
    return "-" if v is None else f"{v:.4f}"
