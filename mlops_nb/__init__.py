"""From a parameterized notebook to a served, monitored, retrainable model, reproducibly.

Modules:

- `mlops_nb.cli.lab`: `mlops-nb lab [--port N] [--ip ADDR] [JUPYTERLAB OPTIONS...]`: JupyterLab on the project.
- `mlops_nb.cli.monitor`: `mlops-nb monitor [--window 1h|1d] [--json] [--check]`: read what is new in the service's logs and the feedback into the monitoring store, recompute the windows it touched, say what was read and what each window shows, and write reports/monitoring.html.
- `mlops_nb.config`: The one Settings object: loaded once from settings.ini, MLOPS_NB_* overrides, validated on load.
- `mlops_nb.data.contracts`: Data contracts: what each raw table must look like before anything is trained on it.
- `mlops_nb.data.features`: Feature sets: ``sql/features.sql`` run over a snapshot, stored content-addressed in the warehouse.
- `mlops_nb.data.infer`: A record inferred from a CSV file: what `mlops-nb init` writes as a project's record.yaml.
- `mlops_nb.data.ingest`: Sources -> immutable, content-addressed snapshots in the warehouse.
- `mlops_nb.data.logs`: The service's logs: what the service writes and the monitor reads, the one contract between them.
- `mlops_nb.data.warehouse`: DuckDB warehouse: short-lived connections, the bookkeeping tables, and nothing else.
- `mlops_nb.errors`: Our exception tree.
- `mlops_nb.featurestore.definitions`: Feature definitions: ``features.yaml`` beside ``pipeline.yaml``, read once and checked on load.
- `mlops_nb.featurestore.offline`: The point-in-time join, in DuckDB: each spine row gets the features as of its timestamp, from events strictly before it, never at or after.
- `mlops_nb.featurestore.online`: The online feature store: each view's values by key, as of the time it was materialized to, for the service and `mlops-nb features online`.
- `mlops_nb.featurestore.redis_store`: The online store in Redis (``features.online = redis``), for several service replicas: the same values as the embedded store, published the same way (whole, or not at all).
- `mlops_nb.featurestore.training`: The training feature set's point-in-time features: each flight row of ``sql/features.sql`` is a spine row (its entity columns and its prediction time, ``definitions.prediction_time_sql``: ``features.lead`` before its scheduled departure) joined to the features of every view by the offline join that `mlops-nb features historical` runs (``offline.historical_sql``): a model learns from the values the store serves for that time. The views a model is trained with (``features.views``, recorded in the features task's receipt) only decide what the train task leaves missing for it (the other views' features, ``left_out``): a model drops what it never saw a value of, and the feature set holds every view, so that a champion trained with other views is compared with the new model on the same rows, its own features included.
- `mlops_nb.interactive.contents`: The contents manager of ``mlops-nb lab``: jupytext's (percent .py files open as notebooks), with the values of a run injected into task notebooks when they are opened and dropped when they are saved.
- `mlops_nb.monitoring.alerts`: Alerts: the rules of ``[monitor]`` over the monitor's windows, stored once, delivered to their sinks.
- `mlops_nb.monitoring.drift`: Drift of one table against another, column by column: any CSV or Parquet files, or a model version's training reference, so drift is usable on data the pipeline never saw.
- `mlops_nb.monitoring.estimate`: Estimated performance before the labels arrive, and a version's reference data.
- `mlops_nb.monitoring.feedback`: Observed outcomes (labels) from a file: `mlops-nb feedback FILE`, the file-borne twin of POST /feedback.
- `mlops_nb.monitoring.kolmogorov`: Two-sample Kolmogorov-Smirnov p-values as ``scipy.stats.ks_2samp`` gives them (two-sided, method 'auto'), without importing ``scipy.stats``: its import (0.45-0.7 s) was most of an incremental monitor call.
- `mlops_nb.monitoring.monitor`: `monitor(settings, window)`: the service's logs and the feedback, read incrementally into the monitoring store (``monitoring.store``), and the windows they touched recomputed.
- `mlops_nb.monitoring.report`: The monitoring report: ``<paths.reports_dir>/monitoring.html``, one page readable offline.
- `mlops_nb.monitoring.retrain`: Retraining: the training window moved to the freshest labelled data, run with the run machinery, the new model gated against the champion and made the challenger; and the rule that promotes the challenger.
- `mlops_nb.monitoring.simulate`: `mlops-nb simulate`: the monitoring loop, measured, on the bundled flights, month by month, with a live feature store.
- `mlops_nb.monitoring.store`: The monitoring store: its own DuckDB file, ``<paths.monitoring_dir>/monitoring.duckdb``, never the warehouse.
- `mlops_nb.registry.gate`: The promotion gate: model tests, and the decision whether a new model may replace the champion.
- `mlops_nb.registry.inference`: How a registered model is scored when it serves: features in NumPy, and a compiled form of the trees.
- `mlops_nb.registry.versions`: The model registry: the BentoML model store holds the artifacts, the warehouse holds the truth.
- `mlops_nb.run.dag`: The only module that imports Ploomber: plain Ploomber projects (a pipeline.yaml and no settings.ini), loaded and built by Ploomber itself, reported per task like our runs.
- `mlops_nb.run.gc`: Garbage collection: what no run, model version or alias needs any more leaves the warehouse, the model store and the products folder.
- `mlops_nb.run.journal`: The run journal: written before a run changes anything, so that a run killed at any instant (SIGKILL, OOM, power loss) is undone, or finished, by the next command.
- `mlops_nb.run.notebooks`: The run's executor: each task to build, its notebook with the run's values injected, executed in this process (IPython) or in a Jupyter kernel (papermill), saved as the task's executed notebook.
- `mlops_nb.run.plan`: pipeline.yaml, rendered with the settings, and each task's fingerprint, without importing Ploomber.
- `mlops_nb.run.reports`: Executed notebooks -> self-contained HTML without code cells, readable offline.
- `mlops_nb.run.site`: The reports site: ``<reports_dir>/index.html`` and the pages it links, the project's home page offline.
- `mlops_nb.run.transaction`: One run of the pipeline, as a transaction: all of it lands, or nothing but its run record does, whatever stops it: an error, Ctrl-C, SIGTERM, SIGKILL, a power loss.
- `mlops_nb.serving.access`: An ASGI middleware writing the request log: a line a request to the API's routes, answered or refused.
- `mlops_nb.serving.bento`: `mlops-nb serve` and `mlops-nb build`: `bentoml serve` / `bentoml build`, pinned and offline.
- `mlops_nb.serving.direct`: The prediction routes answered in front of BentoML's app: the same input model, the same method of the service, the same answer bytes, for a fraction of the CPU.
- `mlops_nb.serving.limits`: An ASGI middleware guarding the API from malformed requests, so that every one of them is a 4xx with a JSON error object (``{"error": "..."}``) naming the problem, never a 5xx nor a plain-text answer.
- `mlops_nb.serving.lookup`: The online feature store on the request path: the fields of a request's rows that the store provides and the row does not send are the store's values for the row's keys as of its prediction time.
- `mlops_nb.serving.metrics`: Prometheus metrics of the service, per model version and arm, beside BentoML's own at GET /metrics.
- `mlops_nb.serving.recorder`: Request profiling and the prediction log, off the hot path and out of the server's process.
- `mlops_nb.serving.schemas`: Request and response schemas, built from the model's flight record (``transforms.RECORD``).
- `mlops_nb.serving.service`: The BentoML service: the champion (and, in a rollout, the challenger) behind typed HTTP endpoints.
- `mlops_nb.serving.writer`: The recorder's process: it writes the prediction and request logs and profiles the requests with whylogs, so that none of that work holds the server's GIL."""

__version__ = "0.1.0"
