"""`mlops-nb run` (the pipeline, or a plain Ploomber project) and `mlops-nb runs` (the run records)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def cmd_run(args) -> int:
    from .. import config

    overrides = dict(args.param)
    if args.only and not args.task:
        print("error: --only runs one task alone: name it with --task NAME (e.g. `mlops-nb run --task train --only`).",
              file=sys.stderr)
        return 2
    if _is_plain_ploomber_project():
        if args.only:
            print("error: --only needs an mlops-nb project (settings.ini): its runs record what each task built. "
                  "In a plain Ploomber project, `ploomber task NAME` builds one task.", file=sys.stderr)
            return 2
        return _run_plain(Path("pipeline.yaml"), overrides, args)
    settings = config.load(overrides=overrides)
    from ..run import transaction

    outcome = transaction.run(settings, force=args.force, target=args.task, only=args.only,
                              progress=None if args.quiet else _progress,
                              announce=lambda line: print(line, file=sys.stderr, flush=True))
    rec = outcome.record
    from ..run.notebooks import render_table

    print(render_table(rec.tasks))
    print()
    if rec.status == "up-to-date":
        print(f"Nothing to do: every task is up to date. Run {rec.run_id} recorded.")
    else:
        print(f"Run {rec.run_id}: {rec.status} in {(rec.ended_at - rec.started_at).total_seconds():.1f} s")
    if rec.snapshot_id:
        print(f"data snapshot: {rec.snapshot_id[:12]}")
    if rec.metrics:
        shown = {k: rec.metrics[k] for k in ("roc_auc", "log_loss", "brier", "accuracy") if k in rec.metrics}
        print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if rec.gate and rec.status != "up-to-date":
        verdict = "promoted to champion" if rec.gate.get("promote") else "registered as a candidate, not promoted"
        print(f"model {rec.model_version}: {verdict}")
        for reason in rec.gate.get("reasons") or []:
            print(f"  - {reason}")
    for report in outcome.reports:
        print(f"report: {report}")
    if outcome.site is not None:
        print(f"reports site: {outcome.site}")
    for note in filter(None, outcome.notes):
        print(note)
    if outcome.error is not None:
        print(f"\nerror: {outcome.error}", file=sys.stderr)
        print("The warehouse, the products and the registry are as they were before this run"
              + (f" (undone: {'; '.join(outcome.undone)})." if outcome.undone else "."), file=sys.stderr)
        return outcome.error.exit_code
    gated = rec.gate and any(t.name == rec.gate.get("task") and t.status == "ran" for t in rec.tasks)
    if args.strict_gate and gated and not rec.gate.get("promote"):
        print(f"\nerror: the gate refused model {rec.model_version} (--strict-gate): "
              + "; ".join(rec.gate.get("reasons") or ["see the gate report"]), file=sys.stderr)
        return GATE_REFUSED
    return 0


GATE_REFUSED = 8  # `mlops-nb run --strict-gate`: the run landed, but the gate refused its model


def _progress(task: str, event: str, seconds: float) -> None:
    if event == "start":
        print(f"  running {task} ...", file=sys.stderr, flush=True)
    else:
        print(f"  {task} {event} in {seconds:.1f} s", file=sys.stderr, flush=True)


def _is_plain_ploomber_project() -> bool:
    """A pipeline.yaml here and no settings.ini here or above (nor MLOPS_NB_SETTINGS)."""
    from .. import config

    if not Path("pipeline.yaml").is_file():
        return False
    try:
        config.find_settings_file()
    except config.SettingsError:
        return True
    return False


def _run_plain(spec_path: Path, overrides: dict, args) -> int:
    """A plain Ploomber project (no settings.ini): its own pipeline.yaml, built as Ploomber would."""
    from ..run import dag
    from ..run.notebooks import render_table

    env = None
    if overrides:
        import yaml

        env_file = spec_path.with_name("env.yaml")
        env = yaml.safe_load(env_file.read_text()) if env_file.exists() else {}
        for dotted, value in overrides.items():
            node = env
            *parents, last = dotted.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = yaml.safe_load(value)
    ploomber_dag = dag.load_plain_dag(spec_path, env)
    result = dag.execute(ploomber_dag, force=args.force, target=args.task, progress=None if args.quiet else _progress)
    print(render_table(result.tasks))
    if result.error is not None:
        print(f"\nerror: {result.error}", file=sys.stderr)
        return result.error.exit_code
    return 0


def cmd_runs(args) -> int:
    from .. import config
    from ..data import warehouse
    from ..run import records

    settings = config.load()
    with warehouse.connect(settings=settings) as con:
        rows = records.list_runs(con, args.limit, settings.path("data_dir"))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("No runs recorded yet: `mlops-nb run` records one.")
        return 0
    print(f"{'run':<25} {'started (UTC)':<19} {'status':<10} {'ran':>3} {'commit':<8} {'snapshot':<12} "
          f"{'roc_auc':<7} trigger")
    for r in rows:
        ran = sum(t["status"] == "ran" for t in r["tasks"])
        commit = (r["git_commit"] or "-")[:7] + ("*" if r["git_dirty"] else "")
        auc = (r["metrics"] or {}).get("roc_auc")
        print(f"{r['run_id']:<25} {r['started_at'][:19]:<19} {r['status']:<10} {ran:>3} {commit:<8} "
              f"{(r['snapshot_id'] or '-')[:12]:<12} {'' if auc is None else f'{auc:.4f}':<7} "
              f"{r.get('trigger') or '-'}".rstrip())
    return 0
