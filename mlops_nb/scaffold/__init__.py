"""`mlops-nb init`: a new project from a CSV file, its record inferred from the data (``data.infer``).

The project: settings.ini, record.yaml (the inferred record, for the user to edit), sql/features.sql (one row
a record, the label and the split), pipeline.yaml and thin task notebooks (ingest, validate, features, train,
evaluate, gate: the reference tasks' code paths with the record of record.yaml), a Makefile, bentofile.yaml,
a README saying what was inferred. The files that do not depend on the data are copied from ``project/``
(``*.tmpl``, the suffix dropped); the others are written here.

All or nothing: the CSV is read and the record inferred before anything is written; the project is written
into a temporary folder beside DIR and renamed to DIR at the end, so a refusal or a failure leaves nothing.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..data.infer import Inferred, infer
from ..errors import DataError, SettingsError

TEMPLATES = Path(__file__).resolve().parent / "project"
FIELD_KEYS = ("kind", "column", "integer", "min", "max", "categories", "closed", "nullable", "description")


@dataclass
class Created:
    folder: Path
    inferred: Inferred
    model_name: str


def create(folder, csv, target: str, time: str | None = None, positive: str | None = None,
           mlops_nb: str | None = None) -> Created:
    """Write a new project into ``folder`` (absent, or an empty folder) for the CSV file ``csv``; returns what
    was made. ``mlops_nb``: the mlops-nb executable its Makefile runs (default: this one's)."""
    folder, csv = Path(folder).absolute(), Path(csv).absolute()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise SettingsError(f"The project folder {folder} exists and is not empty; give a new folder (or an empty "
                            "one): init never writes over files.")
    if not folder.parent.is_dir():
        raise SettingsError(f"The project folder's parent {folder.parent} does not exist; create it first.")
    inferred = infer(csv, target, time, positive)
    name = model_name(folder.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-init-", dir=folder.parent))
    try:
        _write(tmp, folder.name, csv, inferred, name, mlops_nb or _this_mlops_nb())
        if folder.exists():
            folder.rmdir()  # empty (checked above): the rename takes its place
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; a project is as any folder the user makes
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Created(folder, inferred, name)


def model_name(folder_name: str) -> str:
    """registry.model_name from the project folder's name: lowercase letters, digits, '_', '-', '.'."""
    name = re.sub(r"[^a-z0-9_.-]+", "_", folder_name.lower()).strip("_.-")
    return name if name and name[0].isalnum() else f"model_{name}".rstrip("_") or "model"


def _this_mlops_nb() -> str:
    found = Path(sys.executable).with_name("mlops-nb")
    return str(found) if found.is_file() else "mlops-nb"


def _write(root: Path, title: str, csv: Path, inferred: Inferred, name: str, mlops_nb: str) -> None:
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        rel = template.relative_to(TEMPLATES).with_suffix("")
        dest = root / (".gitignore" if rel.name == "gitignore" else rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(template.read_text(encoding="utf-8").replace("@MLOPS_NB@", mlops_nb), encoding="utf-8")
    spec = inferred.spec
    (root / "record.yaml").write_text(record_yaml(title, csv, inferred), encoding="utf-8")
    (root / "sql").mkdir()
    (root / "sql" / "features.sql").write_text(features_sql(title, spec), encoding="utf-8")
    (root / "settings.ini").write_text(settings_ini(title, csv, spec, name), encoding="utf-8")
    (root / "README.md").write_text(readme(title, csv, inferred, name), encoding="utf-8")
    from ..lib import spec as record_spec

    try:  # what was written loads back as the record it describes
        record_spec.load(root / "record.yaml")
    except ValueError as e:
        raise DataError(f"The inferred record does not load back: {e}") from None


def record_yaml(title: str, csv: Path, inferred: Inferred) -> str:
    spec = inferred.spec
    lines = [
        f"# The record of {title}: the model's input row and the service's request, inferred by `mlops-nb init`",
        f"# from {csv.name} ({inferred.rows} rows). Edit it: the next `mlops-nb run` validates the data against",
        "# it, then trains and serves with it.",
        "#   target: the column holding the outcome; positive: its value that counts as 1 (the service answers",
        "#   P(target = positive)); time: the column that orders the rows (split.by = time), or null;",
        "#   label: the 0/1 column of the feature table.",
        "#   fields: the model's inputs, by name (the request's field). kind: number or category. Numbers:",
        "#   min/max (the values seen widened by a tenth of their span; a value outside fails validation and",
        "#   is refused by the service), integer (whole numbers only). Categories: the values seen; closed:",
        "#   true refuses any other (false: a new value is scored as unknown). nullable: false means every",
        "#   row and request must have it. column: the CSV's column when it differs from the name.",
    ]
    if inferred.ignored:
        lines.append("# Left out (not inputs; derive inputs from them in sql/features.sql):")
        lines += [f"#   {column}: {why}" for column, why in inferred.ignored.items()]
    head = {k: spec[k] for k in ("target", "positive", "time", "label")}
    lines += [yaml.safe_dump(head, sort_keys=False, allow_unicode=True).rstrip(), "fields:"]
    for field, values in spec["fields"].items():
        lines.append(f"  {_flow(field)}:  # seen: {inferred.columns[field]}")
        lines += [f"    {key}: {_flow(values[key])}" for key in FIELD_KEYS if key in values]
    return "\n".join(lines) + "\n"


def _flow(value) -> str:
    """One YAML value on one line (a list in flow style), quoted where YAML would read it otherwise."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, width=10**9).strip()
    return text[:-len("\n...")] if text.endswith("\n...") else text


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def features_sql(title: str, spec: dict) -> str:
    selects = []
    for name, f in spec["fields"].items():
        source = _ident(f.get("column") or name)
        cast = "DOUBLE" if f["kind"] == "number" else "VARCHAR"
        selects.append(f"    CAST(r.{source} AS {cast}) AS {_ident(name)},")
    target = _ident(spec["target"])
    return "\n".join([
        f"-- The feature table of {title}: one row a record of the CSV, in the shape the service receives (the",
        "-- fields of record.yaml), the 0/1 label and the split. Edit it to add features: keep a column for every",
        "-- field of record.yaml, `label` and `split` (a new field goes into record.yaml too).",
        "-- Filled in by mlops-nb: {snapshot} (the snapshot's schema) and {split} (each row's split, from [split]",
        "-- of settings.ini). Rows without a target have no label: dropped here, counted as 'dropped_no_label'.",
        "SELECT",
        *selects,
        f"    CAST(r.{target} = {_literal(spec['positive'])} AS INTEGER) AS label,",
        "    {split} AS split",
        "FROM {snapshot}.records AS r",
        f"WHERE r.{target} IS NOT NULL",
        "ORDER BY ALL  -- every column: a deterministic order, so the same snapshot gives the same frames",
        "",
    ])


def settings_ini(title: str, csv: Path, spec: dict, name: str) -> str:
    by = "time" if spec.get("time") else "random"
    return f"""# The settings of {title}, a project made by `mlops-nb init` from {csv.name}. `mlops-nb settings` prints every
# key as resolved (the keys not here take their defaults); override one for a run with
# `mlops-nb run -p section.key=value`, or with MLOPS_NB_<SECTION>__<KEY>.

[paths]
data_dir = data
warehouse = data/warehouse.duckdb
products_dir = data/products
scratch_dir = data/interactive
reports_dir = reports
bentoml_home = data/bentoml
serving_dir = data/serving
monitoring_dir = data/monitoring

[data]
# the CSV file the pipeline reads: ingest snapshots its bytes (change the file and the next run uses it)
source = {csv}
# its record: fields, target, positive value, time column (edit it: the next run validates and trains with it)
record = record.yaml

[split]
# time: the oldest rows train and the newest test (the time column of record.yaml); random: seeded
by = {by}
valid_share = 0.15
test_share = 0.15
random_seed = 42

[model]
kind = hgb
learning_rate = 0.1
max_iter = 200
max_leaf_nodes = 31
l2_regularization = 0.0
c = 1.0
seed = 42
threshold = 0.5

[pipeline]
executor = engine
reports = true
task_timeout = 3600

[registry]
model_name = {name}

[gate]
# a trained model becomes the champion only if it reaches these on the test rows...
min_roc_auc = 0.6
max_brier = 0.25
# ...and is not worse than the current champion (same rows) by more than this
tolerance = 0.005

[serving]
mode = champion
max_rows = 10000
# the prediction log and request profiles (what `mlops-nb monitor` reads) are the flight record's only for
# now: a record file's service writes neither
log_predictions = false
profile_requests = false
compiled = true
"""


def readme(title: str, csv: Path, inferred: Inferred, name: str) -> str:
    spec = inferred.spec
    rows = [f"| `{n}` | {f['kind']}{' (whole)' if f.get('integer') else ''} | {inferred.columns[n]} | "
            f"{'yes' if f['nullable'] else 'no'} |" for n, f in spec["fields"].items()]
    ignored = [f"- `{c}`: {why}" for c, why in inferred.ignored.items()] or ["- none"]
    notes = [f"- {n}" for n in inferred.notes] or ["- none"]
    split = (f"by time (`{spec['time']}`): the oldest 70% of the rows train, the next 15% validate, the newest "
             "15% test" if spec.get("time") else "at random, seeded (`split.random_seed`): 70% train, 15% "
             "validate, 15% test")
    example = {n: _example(f) for n, f in spec["fields"].items() if not f["nullable"]} or \
        {n: _example(f) for n, f in list(spec["fields"].items())[:1]}
    import json

    body = json.dumps({"records": [example]})
    classes = ", ".join(f"`{k}` {v}" for k, v in inferred.classes.items())
    return f"""# {title}

A project of [mlops-nb](https://github.com/) made by `mlops-nb init` from `{csv}` ({inferred.rows} rows): it
predicts P(`{spec['target']}` = `{spec['positive']}`) from the other columns.

    make run      # ingest, validate, features, train, evaluate, gate: registers a champion
    make serve    # the champion on http://127.0.0.1:3000
    curl -s -X POST http://127.0.0.1:3000/predict -H 'Content-Type: application/json' \\
         -d '{body}'

`make` runs the mlops-nb that made the project; `make run MLOPS_NB=/path/to/venv/bin/mlops-nb` runs
another. Without make: `mlops-nb run`, `mlops-nb serve` in this folder.

## What was inferred (record.yaml)

Target `{spec['target']}` ({classes}); positive value `{spec['positive']}`.

| field | kind | seen | may be missing |
| --- | --- | --- | --- |
{chr(10).join(rows)}

Left out:
{chr(10).join(ignored)}

Choices made:
{chr(10).join(notes)}

The split: {split} (`[split]` of settings.ini).

## Editing it

- `record.yaml`: the fields (ranges, categories, `closed`, `nullable`, descriptions), the target's positive
  value, the time column. The data is validated against it (`validate`), the model trained on its fields,
  and the service's request schema generated from it. Edit it, then `make run`.
- `sql/features.sql`: one row a record, the `label` and the `split`. Add a feature here and to
  `record.yaml`.
- `settings.ini`: the split, the model (`[model]`), the gate's thresholds (`[gate]`), the model's name in the
  registry (`{name}`).
- The data: `data.source` names the CSV; a changed file is a new snapshot, and the next run retrains.

## The service

`POST /predict` takes `{{"records": [{{...}}, ...]}}` (the fields of record.yaml; a nullable field may be left out
or null; an optional `key`) and answers `probability` (P(`{spec['target']}` = `{spec['positive']}`), a row
each) and `positive` (probability >= `model.threshold`), with `request_id`, `model_version` and `arm`.
`POST /predict_batch` takes `{{"columns": {{field: [values], ...}}}}`. A value outside its range, a category of a
closed field not listed, an unknown field or a missing required one is refused (HTTP 400, naming the field).

Not yet for a project of its own record: the prediction log, request profiles and `mlops-nb monitor`,
`feedback`, `retrain`, `simulate` (they are the flight record's); binary targets only (a target of more
values becomes one value against the rest with `mlops-nb init --positive VALUE`).
"""


def _example(f: dict):
    if f["kind"] == "category":
        return f["categories"][0]
    mid = (f["min"] + f["max"]) / 2
    return int(mid) if f.get("integer") else round(mid, 3)
