"""`mlops-nb`: the command line. Heavy libraries are imported inside commands, so `--help` is instant and
works when the pipeline is broken; our exceptions become exit codes and plain messages here, and only here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"-p expects key=value (e.g. -p model.seed=7); got {text!r}")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops-nb", description="Run the notebook pipeline, and inspect its runs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline headless (only what is stale)",
                         description="Run pipeline.yaml headless. Only stale tasks run: a task is stale when its "
                                     "notebook, parameters, input data or imported mlops_nb code changed.")
    run.add_argument("-p", "--param", action="append", default=[], type=_parse_param, metavar="KEY=VALUE",
                     help="override a setting for this run, e.g. -p model.seed=7 (repeatable)")
    run.add_argument("--force", action="store_true", help="run every task (of --task's scope) even if up to date")
    run.add_argument("--task", metavar="NAME", help="run only this task and what it needs")
    run.add_argument("--quiet", action="store_true", help="no progress lines, only the closing table")

    runs = sub.add_parser("runs", help="list recorded runs", description="List recorded runs, newest first.")
    runs.add_argument("--json", action="store_true", help="print JSON for scripts")
    runs.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")

    models = sub.add_parser("models", help="the model registry: list, show, promote, rollback, diff",
                            description="The model registry: versions, the champion and challenger aliases, "
                                        "and the audit log of every alias change.")
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ml = msub.add_parser("list", help="every registered version, newest first")
    ml.add_argument("--json", action="store_true")
    ms = msub.add_parser("show", help="one version: metrics, lineage, gate decision")
    ms.add_argument("version", help="a version (or unique prefix), or an alias: champion, challenger")
    ms.add_argument("--json", action="store_true")
    mp = msub.add_parser("promote", help="point an alias at a version (atomic, audited)")
    mp.add_argument("version")
    mp.add_argument("--alias", default="champion", choices=["champion", "challenger"])
    mp.add_argument("--reason", default="promoted by hand")
    mr = msub.add_parser("rollback", help="point an alias back at its previous version")
    mr.add_argument("--alias", default="champion", choices=["champion", "challenger"])
    md = msub.add_parser("diff", help="metrics and lineage of two versions side by side")
    md.add_argument("a")
    md.add_argument("b")
    md.add_argument("--json", action="store_true")
    ma = msub.add_parser("audit", help="the alias audit log, newest first")
    ma.add_argument("--json", action="store_true")

    serve = sub.add_parser("serve", help="serve the champion over HTTP (bentoml serve, 127.0.0.1)",
                           description="Run `bentoml serve` of the service, answering with the registry's champion "
                                       "(and challenger, in a canary or shadow rollout).")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--bento", help="serve this Bento tag (from `mlops-nb build`) instead of the project")

    sub.add_parser("build", help="build a Bento pinned to the current champion (offline); prints its tag")

    gc = sub.add_parser("gc", help="remove data, models and products that nothing needs; print what is freed",
                        description="Drop the warehouse data (snapshots, feature sets) that neither the current "
                                    "products, the champion and challenger, nor the last gc.keep_runs successful "
                                    "runs need (the lineage rows of every registered version stay), model-store "
                                    "folders no registered version names, and products no task declares.")
    gc.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    gc.add_argument("--json", action="store_true", help="print JSON for scripts")

    sub.add_parser("settings", help="print the resolved settings (settings.ini < MLOPS_NB_* env)")

    lab = sub.add_parser("lab", help="JupyterLab on 127.0.0.1, task notebooks (.py) opening as notebooks")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--ip", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    lab.add_argument("extra", nargs=argparse.REMAINDER, help="passed on to jupyter lab")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from .errors import MlopsNbError, RunInterrupted

    try:
        commands = {"run": cmd_run, "runs": cmd_runs, "settings": cmd_settings, "lab": cmd_lab,
                    "models": cmd_models, "serve": cmd_serve, "build": cmd_build, "gc": cmd_gc}
        if args.command in ("runs", "models", "serve", "build", "gc"):
            _recover_first()
        return commands[args.command](args)
    except MlopsNbError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RunInterrupted as e:
        undone = getattr(e, "undone", None) or []
        print(f"{e}: the run was rolled back" + (": " + "; ".join(undone) if undone else "; nothing had changed")
              + ".", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mlops-nb runs | head`
        sys.stderr.close()
        return 0


def _recover_first() -> None:
    """A run killed earlier is finished or undone before any command reads the project."""
    from . import config, runner

    try:
        settings = config.load()
    except config.SettingsError:
        return
    message = runner.recover_if_needed(settings)
    if message:
        print(message, file=sys.stderr)


def cmd_run(args) -> int:
    from . import config

    overrides = dict(args.param)
    if _is_plain_ploomber_project():
        return _run_plain(Path("pipeline.yaml"), overrides, args)
    settings = config.load(overrides=overrides)
    from . import runner

    outcome = runner.run(settings, force=args.force, target=args.task, progress=None if args.quiet else _progress,
                         announce=lambda line: print(line, file=sys.stderr, flush=True))
    rec = outcome.record
    from .pipeline import render_table

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
    if outcome.error is not None:
        print(f"\nerror: {outcome.error}", file=sys.stderr)
        print("The warehouse, the products and the registry are as they were before this run"
              + (f" (undone: {'; '.join(outcome.undone)})." if outcome.undone else "."), file=sys.stderr)
        return outcome.error.exit_code
    return 0


def _progress(task: str, event: str, seconds: float) -> None:
    if event == "start":
        print(f"  running {task} ...", file=sys.stderr, flush=True)
    else:
        print(f"  {task} {event} in {seconds:.1f} s", file=sys.stderr, flush=True)


def _is_plain_ploomber_project() -> bool:
    """A pipeline.yaml here and no settings.ini here or above (nor MLOPS_NB_SETTINGS)."""
    from . import config

    if not Path("pipeline.yaml").is_file():
        return False
    try:
        config.find_settings_file()
    except config.SettingsError:
        return True
    return False


def _run_plain(spec_path: Path, overrides: dict, args) -> int:
    """A plain Ploomber project (no settings.ini): its own pipeline.yaml, built as Ploomber would."""
    from . import pipeline

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
    dag = pipeline.load_plain_dag(spec_path, env)
    result = pipeline.execute(dag, force=args.force, target=args.task, progress=None if args.quiet else _progress)
    print(pipeline.render_table(result.tasks))
    if result.error is not None:
        print(f"\nerror: {result.error}", file=sys.stderr)
        return result.error.exit_code
    return 0


def cmd_runs(args) -> int:
    from . import config, runs, warehouse

    settings = config.load()
    with warehouse.connect(settings=settings) as con:
        rows = runs.list_runs(con, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print("No runs recorded yet: `mlops-nb run` records one.")
        return 0
    print(f"{'run':<25} {'started (UTC)':<19} {'status':<10} {'ran':>3} {'commit':<8} {'snapshot':<12} roc_auc")
    for r in rows:
        ran = sum(t["status"] == "ran" for t in r["tasks"])
        commit = (r["git_commit"] or "-")[:7] + ("*" if r["git_dirty"] else "")
        auc = (r["metrics"] or {}).get("roc_auc")
        print(f"{r['run_id']:<25} {r['started_at'][:19]:<19} {r['status']:<10} {ran:>3} {commit:<8} "
              f"{(r['snapshot_id'] or '-')[:12]:<12} {'' if auc is None else f'{auc:.4f}'}")
    return 0


def cmd_models(args) -> int:
    from . import config, registry, runner, warehouse

    settings = config.load()
    action = args.models_command
    if action in ("promote", "rollback"):
        # a run's commit moves aliases too: one writer of aliases at a time
        with runner.run_lock(settings), warehouse.connect(write=True, settings=settings) as con:
            if action == "promote":
                before = registry.promote(con, args.version, args.alias, args.reason)
                now = registry.aliases(con).get(args.alias)
                print(f"{args.alias}: {before or '(none)'} -> {now}")
            else:
                before, now = registry.rollback(con, args.alias)
                print(f"{args.alias}: {before} -> {now} (rolled back)")
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
                  f"{r['to_version'] or '-':<18} {r['actor']}: {r['reason']}")
    else:
        width = max([len(k) for k, _, _ in rows] + [5])
        print(f"{'field':<{width}}  {args.a:<24} {args.b:<24}")
        for key, a, b in rows:
            mark = "" if a == b else "  *"
            print(f"{key:<{width}}  {str(a):<24} {str(b):<24}{mark}")
    return 0


def cmd_gc(args) -> int:
    from . import config, gc, runner

    settings = config.load()
    with runner.run_lock(settings):
        report = gc.collect(settings, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for item in report.items:
        print(f"{verb} {item.kind} {item.name}: {gc.human(item.bytes)} ({item.detail})")
    for why in report.kept.get("snapshots", []):
        print(f"kept snapshot {why}")
    total = f"{gc.human(report.freed)} {'to free' if args.dry_run else 'freed'}"
    print(f"{len(report.items)} item(s), {total}; warehouse data in use {gc.human(report.warehouse_bytes_before)}"
          + ("" if args.dry_run else f" -> {gc.human(report.warehouse_bytes_after)}"))
    return 0


def cmd_serve(args) -> int:
    import os

    from . import config
    from .serving import build

    settings = config.load()
    if args.bento is None:
        build.pinned_models(settings, "to serve")  # fail now, in plain words, when there is nothing to serve
    cmd = build.serve_command(settings, args.port, args.host, args.bento)
    os.chdir(settings.root)
    os.execve(cmd[0], cmd, build.tool_env(settings))


def cmd_build(args) -> int:
    from . import config
    from .serving import build

    print(build.build(config.load()))
    return 0


def cmd_settings(args) -> int:
    from . import config

    settings = config.load()
    print(f"# {settings.file}")
    for key, value in settings.as_dict().items():
        print(f"{key} = {value}")
    return 0


def lab_command(port: int, ip: str = "127.0.0.1", extra=()) -> list[str]:
    """jupyter lab with Ploomber's server extensions off: they wrap jupytext's contents manager and every
    /api/contents call then fails with HTTP 500."""
    import os

    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", f"--ip={ip}", f"--port={port}", "--no-browser",
           "--ServerApp.jpserver_extensions={'ploomber': False, 'ploomber_extension': False}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + list(extra)


def cmd_lab(args) -> int:
    import subprocess

    return subprocess.call(lab_command(args.port, args.ip, args.extra))


def entry() -> None:
    """The console script. After a run, tearing down the interpreter (some 3,800 modules of the data
    stack) costs about a second: the exit handlers run, the streams are flushed, and the process ends
    without the teardown. ``main`` itself returns normally, for callers in-process."""
    import atexit
    import os

    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: `mlops-nb runs | head`
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
