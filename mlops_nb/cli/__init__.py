"""`mlops-nb`: the command line. Heavy libraries are imported inside commands, so `--help` is instant and
works when the pipeline is broken; our exceptions become exit codes and plain messages here, and only here.
"""
from __future__ import annotations

import argparse
import sys

from .alerts import cmd_alerts
from .drift import cmd_drift
from .export import cmd_export
from .features import cmd_features
from .feedback import cmd_feedback
from .gc import cmd_gc
from .init import cmd_init
from .lab import cmd_lab
from .models import cmd_models
from .monitor import cmd_monitor
from .report import cmd_report
from .retrain import cmd_retrain
from .run import cmd_run, cmd_runs
from .serve import cmd_build, cmd_serve
from .settings import cmd_settings
from .simulate import cmd_simulate


def _parse_param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"-p expects key=value (e.g. -p model.seed=7); got {text!r}")
    return key.strip(), value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlops-nb", description="Run the notebook pipeline, serve its champion, and monitor and retrain it.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the pipeline headless (only what is stale)",
                         description="Run pipeline.yaml headless. Only stale tasks run: a task is stale when its "
                                     "notebook, parameters, input data or imported mlops_nb code changed.")
    run.add_argument("-p", "--param", action="append", default=[], type=_parse_param, metavar="KEY=VALUE",
                     help="override a setting for this run, e.g. -p model.seed=7 (repeatable)")
    run.add_argument("--force", action="store_true", help="run every task (of --task's scope) even if up to date")
    run.add_argument("--task", metavar="NAME", help="run only this task and what it needs")
    run.add_argument("--only", action="store_true",
                     help="with --task: that task alone, against the products its upstream tasks already made (an "
                          "error names what is missing or stale); what an orchestrator runs for each task")
    run.add_argument("--quiet", action="store_true", help="no progress lines, only the closing table")
    run.add_argument("--strict-gate", action="store_true",
                     help="exit with code 8 when the gate refuses the model this run trained (it is still registered, "
                          "as a candidate): for CI jobs that must fail then")

    runs = sub.add_parser("runs", help="list recorded runs", description="List recorded runs, newest first.")
    runs.add_argument("--json", action="store_true", help="print JSON for scripts")
    runs.add_argument("--limit", type=int, default=20, help="how many runs (default 20)")

    report = sub.add_parser("report", help="write the reports site (reports/index.html); prints its path",
                            description="Write reports/index.html and the pages it links, readable offline: the "
                                        "runs with their task reports, lineage and changes, the model registry "
                                        "and the lineage of each version. A run updates it too.")
    report.add_argument("--json", action="store_true", help="print JSON for scripts")

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

    feedback = sub.add_parser("feedback", help="add observed outcomes (labels) from a CSV or Parquet file",
                              description="Append the outcomes in FILE to the feedback log that `mlops-nb "
                                          "monitor` reads: columns request_id or key, late, and optionally "
                                          "arr_delay. Importing the same file again adds nothing.")
    feedback.add_argument("file", metavar="FILE", help="a .csv or .parquet file")
    feedback.add_argument("--json", action="store_true", help="print JSON for scripts")

    monitor = sub.add_parser("monitor", help="turn the service's logs and the feedback into monitoring windows",
                             description="Read what is new in the prediction and request logs, the request "
                                         "profiles and the feedback; write windows (per model version: volume, "
                                         "latency, errors, drift, realized and estimated metrics) into the "
                                         "monitoring store.")
    monitor.add_argument("--window", choices=["1h", "1d"], help="window length (default: monitor.window)")
    monitor.add_argument("--json", action="store_true", help="print JSON for scripts")
    monitor.add_argument("--check", action="store_true",
                         help="exit 3 while an alert is open (for cron, CI or an orchestrator)")

    alerts = sub.add_parser("alerts", help="the monitor's alerts: list (open ones by default), ack",
                            description="Alerts raised by `mlops-nb monitor` from the rules of [monitor]. "
                                        "An alert stays open until acknowledged.")
    alerts.add_argument("--json", action="store_true", help="print JSON for scripts")
    alerts.add_argument("--all", action="store_true", help="acknowledged alerts too")
    asub = alerts.add_subparsers(dest="alerts_command", metavar="ACTION")
    ack = asub.add_parser("ack", help="acknowledge (close) an alert")
    ack.add_argument("id", metavar="ID", help="the alert's id (or a unique prefix)")
    ack.add_argument("--by", default="cli", help="who acknowledges it (recorded with the alert)")
    ack.add_argument("--json", action="store_true", help="print JSON for scripts")

    drift = sub.add_parser("drift", help="drift of ANALYSIS against REFERENCE, per column and chunk",
                           description="Compare two tables column by column: CSV or Parquet files, or "
                                       "model:VERSION for a registered version's training reference.")
    drift.add_argument("reference", metavar="REFERENCE", help="a .csv or .parquet file, or model:VERSION")
    drift.add_argument("analysis", metavar="ANALYSIS", help="a .csv or .parquet file")
    drift.add_argument("--columns", help="comma-separated columns (default: those both tables have)")
    chunks = drift.add_mutually_exclusive_group()
    chunks.add_argument("--chunk-size", type=int, metavar="N", help="chunks of N consecutive rows of ANALYSIS")
    chunks.add_argument("--chunk-by", metavar="COLUMN[:PERIOD]",
                        help="chunks by the values of COLUMN, or by periods of a time column (PERIOD: h, d, w, m)")
    drift.add_argument("--method", default="auto", choices=["auto", "ks", "chi2", "js", "hellinger", "psi"])
    drift.add_argument("--json", action="store_true", help="print one JSON array, an object a chunk and column")

    retrain = sub.add_parser("retrain", help="train on the freshest labelled months; a model that passes the "
                                             "gate becomes the challenger",
                             description="Move the split to the newest labelled months of the monitoring store "
                                         "([retrain] train_span, valid_span, test_span), run the pipeline, gate the "
                                         "new model against the champion on the newest months, and make it the "
                                         "challenger when it passes.")
    retrain.add_argument("--alert", metavar="ID", help="the alert this retrain answers (acknowledged after it)")
    retrain.add_argument("--json", action="store_true", help="print JSON for scripts")

    simulate = sub.add_parser("simulate", help="the monitoring loop on the bundled flights, month by month",
                              description="In a scratch copy of the project: train a champion on the first months, "
                                          "replay each later month through the real service over HTTP (its feature "
                                          "store pushed the month's events and materialized as time advances), "
                                          "send the labels as feedback after a delay, run the monitor, and let alerts, "
                                          "retraining and the canary act as configured. One line a window.")
    simulate.add_argument("--sample", type=float, default=0.1, metavar="FRACTION",
                          help="share of each month's flights replayed (default 0.1)")
    simulate.add_argument("--out", metavar="DIR", help="the scratch project (default: a new temporary folder)")
    simulate.add_argument("--seed", type=int, default=0, help="seed of the sample and the request keys")
    simulate.add_argument("--json", action="store_true", help="print one JSON object")

    features = sub.add_parser("features", help="the feature store: point-in-time features of features.yaml",
                              description="Point-in-time features, declared once in features.yaml (entities, event "
                                          "sources, views with aggregations over windows and a time to live).")
    fsub = features.add_subparsers(dest="features_command", metavar="ACTION", required=True)
    fh = fsub.add_parser("historical", help="join a spine to the features as of each row's time (Parquet out)",
                         description="Join SPINE (CSV or Parquet: entity columns named as the entities, and a "
                                     "timestamp column) to every feature as of each row's timestamp, from events "
                                     "strictly before it. --out writes Parquet: the spine's columns and one column "
                                     "a feature, in the spine's order; without it, CSV on stdout.")
    fh.add_argument("spine", metavar="SPINE", help="a CSV or Parquet file")
    fh.add_argument("--out", metavar="FILE", help="write Parquet here (written whole or not at all)")
    fh.add_argument("--timestamp-column", default="event_timestamp", metavar="NAME",
                    help="the spine's column holding the time each row asks about (default event_timestamp)")
    fm = fsub.add_parser("materialize", help="bring the online store up to a time (each view replaced whole)",
                         description="Store, for every view, the values of the keys with events in its last "
                                     "horizon (its longest window, or its ttl) as of --until: the point-in-time "
                                     "join's values, so online equals offline. Reads only those events; the "
                                     "store ([features] online: embedded or redis) is replaced whole, atomically.")
    fm.add_argument("--until", metavar="TS", help="the time to materialize to (ISO 8601, UTC; default now)")
    fm.add_argument("--json", action="store_true", help="print JSON for scripts")
    fp = fsub.add_parser("push", help="add events to a push source (CSV or Parquet; all or nothing)",
                         description="Add the events of FILE (CSV or Parquet, exactly the source's declared "
                                     "columns, every event timed, none before the time the store was "
                                     "materialized to) to a push source of features.yaml: all of them or none. "
                                     "The next materialize serves them.")
    fp.add_argument("file", metavar="FILE", help="a CSV or Parquet file of events")
    fp.add_argument("--source", metavar="NAME", help="the push source (needed when there are several)")
    fo = fsub.add_parser("online", help="the features the service would read for some keys",
                         description="Read the online store as the service does: every feature of the views "
                                     "whose entities are all given (e.g. origin=EWR carrier=UA), as of the time "
                                     "each view was materialized to; missing or stale values are null.")
    fo.add_argument("keys", nargs="+", metavar="KEY=VALUE", help="entity values, e.g. origin=EWR carrier=UA")
    fo.add_argument("--at", metavar="TS", help="the time of the lookup, for staleness (ISO 8601, UTC; default now)")
    fo.add_argument("--json", action="store_true", help='print {"features": {name: value}, "as_of": {view: time}}')

    sub.add_parser("settings", help="print the resolved settings (settings.ini < MLOPS_NB_* env)")

    init = sub.add_parser("init", help="a new project from a CSV file: its record inferred from the data",
                          description="Make a project in DIR (new or empty) for the CSV file: settings.ini, "
                                      "record.yaml (each column's kind, range, categories and nullability, "
                                      "inferred from the data: edit it), sql/features.sql, pipeline.yaml and task "
                                      "notebooks, a Makefile. Then `cd DIR && make run` registers a champion and "
                                      "`mlops-nb serve` answers predictions for the CSV's columns. Binary targets; "
                                      "--positive makes one value of a target of more values the positive class.")
    init.add_argument("dir", metavar="DIR", help="the project folder to create (absent or empty)")
    init.add_argument("--csv", required=True, metavar="FILE", help="the data: a CSV (or Parquet) file")
    init.add_argument("--target", required=True, metavar="COLUMN", help="the column holding the outcome")
    init.add_argument("--time", metavar="COLUMN",
                      help="a date column: split by time (the oldest rows train, the newest test); "
                           "without it the split is random, seeded")
    init.add_argument("--positive", metavar="VALUE",
                      help="the target's value that counts as 1 (default: chosen from a binary target)")

    export = sub.add_parser("export", help="the project for Airflow, Kubeflow Pipelines, Kubernetes, CI or MLflow",
                            description="Write what another engine reads, from the rendered pipeline.yaml: each "
                                        "orchestrator step runs `mlops-nb run --task NAME --only` in the project, "
                                        "whose data/ the steps share. The engines' own tools check the output "
                                        "(their environments: `mlops-nb export tools`).")
    esub = export.add_subparsers(dest="export_command", metavar="TARGET", required=True)
    airflow = esub.add_parser("airflow", help="an Airflow 3 DAG: a task a pipeline task, the same edges")
    airflow.add_argument("--out", metavar="DIR", default="exports/airflow", help="where the DAG file goes "
                         "(default exports/airflow; point it at the dags folder)")
    airflow.add_argument("--dag-id", metavar="ID", default="mlops_nb", help="the DAG's id (default mlops_nb)")
    airflow.add_argument("--image", metavar="IMAGE", help="run each task in a pod of this image "
                         "(KubernetesPodOperator) instead of a shell on the worker")
    kfp = esub.add_parser("kfp", help="a Kubeflow Pipelines v2 pipeline, compiled by the kfp SDK")
    kfp.add_argument("--image", metavar="IMAGE", required=True, help="the pipeline's image (see the Dockerfile "
                     "that `mlops-nb export k8s` writes)")
    kfp.add_argument("--out", metavar="FILE", default="exports/kfp/pipeline.yaml",
                     help="the compiled pipeline (default exports/kfp/pipeline.yaml)")
    k8s = esub.add_parser("k8s", help="Kubernetes manifests for a Bento's container, and the pipeline's Dockerfile")
    k8s.add_argument("--bento", metavar="TAG", help="the Bento to deploy (default: the newest one built for the "
                     "champion, `mlops-nb build`)")
    k8s.add_argument("--out", metavar="DIR", default="exports/k8s", help="where the files go (default exports/k8s)")
    ci = esub.add_parser("ci", help="GitLab CI, Jenkins and GitHub Actions files: test, pipeline, bento")
    ci.add_argument("--out", metavar="DIR", default=".", help="the repository's root (default .)")
    mlflow = esub.add_parser("mlflow", help="copy runs, reports and model versions into MLflow (idempotent)")
    mlflow.add_argument("--tracking-uri", metavar="URI", required=True,
                        help="an MLflow tracking server or store, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000")
    mlflow.add_argument("--registry-uri", metavar="URI", help="the model registry (default: the tracking URI)")
    mlflow.add_argument("--experiment", metavar="NAME", default="mlops-nb", help="the experiment (default mlops-nb)")
    for p in (airflow, kfp):
        p.add_argument("-p", "--param", action="append", default=[], type=_parse_param, metavar="KEY=VALUE",
                       help="a setting every step runs with (as `mlops-nb run -p`); repeatable")
    tools = esub.add_parser("tools", help="make the exporters' environments (Airflow, kfp, MLflow, Kubernetes "
                                          "and CI checkers); the only export step that downloads")
    tools.add_argument("names", nargs="*", metavar="NAME", help="which (default: all)")

    lab = sub.add_parser("lab", help="JupyterLab on the project: task notebooks open as notebooks, with a run's "
                                     "values; any other option goes to JupyterLab (e.g. --no-browser)")
    lab.add_argument("--port", type=int, default=8888)
    lab.add_argument("--ip", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "lab":  # what mlops-nb lab does not know is JupyterLab's
        args.extra = unknown
    elif unknown:
        parser.parse_args(argv)  # the usual error naming them
    if not args.command:
        parser.print_help()
        return 0
    from ..errors import MlopsNbError, RunInterrupted

    try:
        commands = {"run": cmd_run, "runs": cmd_runs, "settings": cmd_settings, "lab": cmd_lab,
                    "models": cmd_models, "serve": cmd_serve, "build": cmd_build, "gc": cmd_gc,
                    "feedback": cmd_feedback, "monitor": cmd_monitor, "drift": cmd_drift, "alerts": cmd_alerts,
                    "retrain": cmd_retrain, "simulate": cmd_simulate, "report": cmd_report,
                    "init": cmd_init, "features": cmd_features, "export": cmd_export}
        if args.command in FLIGHTS_ONLY:
            _flights_only(args.command)
        if args.command in ("runs", "models", "serve", "build", "gc", "report"):
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


# commands that read the service's logs or label flights: the flight record's only, for now
FLIGHTS_ONLY = ("monitor", "feedback", "retrain", "simulate")


def _flights_only(command: str) -> None:
    """Refuse, in plain words, a monitoring command in a project of its own record (``data.record``)."""
    from .. import config

    try:
        settings = config.load(check_inputs=False)
    except config.SettingsError:
        return  # the command itself says what is wrong with the settings
    if settings.data.record:
        raise config.SettingsError(
            f"`mlops-nb {command}` is not supported yet in a project of its own record (data.record = "
            f"{settings.data.record!r}): monitoring, feedback and retraining read the flight record's prediction "
            "log. This project's service answers predictions but writes no log to monitor.")


def _recover_first() -> None:
    """A run killed earlier is finished or undone before any command reads the project."""
    from .. import config
    from ..run import transaction

    try:
        settings = config.load()
    except config.SettingsError:
        return
    message = transaction.recover_if_needed(settings)
    if message:
        print(message, file=sys.stderr)


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
