"""A record inferred from a CSV file: what `mlops-nb init` writes as a project's record.yaml.

The file is read by DuckDB with ingest's own reader (the same type sniffing, text columns read as text), so
what init infers is what the pipeline will read. Per column: numbers (whole or not) with a range, categories
with the values seen, nullability; columns that cannot be inputs as they are (identifiers, free text, dates
other than the time column, a single value, no value) are left out and listed with the reason. The target
must be binary, or made binary with a positive value (one class against the rest).

Every refusal is a ``DataError`` that says what was expected, what was found and how to fix it.
"""
from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError, did_you_mean
from .contracts import family_of
from .ingest import SUFFIXES, _reader

MAX_CATEGORIES = 200     # a text column with more distinct values is an identifier or free text, not an input
RANGE_MARGIN = 0.1       # a number's range: the values seen, widened by this share of their span on each side
POSITIVE_WORDS = ("1", "true", "yes", "y", "t", "positive", "pos")  # a binary target's positive value, if seen
RESERVED = ("split", "label")


@dataclass
class Inferred:
    """The inferred record (``spec``: plain data, as record.yaml holds it) and what the user should know."""
    spec: dict
    rows: int
    classes: dict                                   # target value -> rows
    ignored: dict = field(default_factory=dict)     # column -> why it is not an input
    notes: list = field(default_factory=list)       # choices made (the positive value, renamed columns)
    columns: dict = field(default_factory=dict)     # field -> what was seen (range, distinct values, nulls)


def infer(path, target: str, time: str | None = None, positive: str | None = None) -> Inferred:
    """The record of the CSV (or Parquet) file at ``path`` with outcome column ``target``; ``time``: the
    column that orders the rows (split by time); ``positive``: the target's value that counts as 1 (needed
    when the target has more than two values: that value against the rest)."""
    import duckdb

    path = Path(path)
    if not path.is_file():
        raise DataError(f"The CSV file {path} does not exist (or is not a file); give the path of a CSV file.")
    if not path.name.endswith(SUFFIXES):
        raise DataError(f"The file {path} must be CSV or Parquet ({', '.join(SUFFIXES)}); got "
                        f"{path.suffix or 'no suffix'}.")
    if path.stat().st_size == 0:
        raise DataError(f"The CSV file {path} is empty (0 bytes): expected a header line and rows of data.")
    con = duckdb.connect()
    with tempfile.TemporaryDirectory(prefix="mlops-nb-init-") as tmp:
        reader = _reader("records", path, Path(tmp), full_scan=True)
        try:
            types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
        except duckdb.Error as e:
            raise DataError(f"Cannot read {path} as CSV: {str(e).splitlines()[0]}. Expected a header line, then "
                            "rows of comma-separated values.") from None
        for flag, column in (("--target", target), ("--time", time)):
            if column is not None and column not in types:
                raise DataError(f"The {flag} column {column!r} is not in {path.name}; its columns are "
                                f"{list(types)}.{did_you_mean(column, types)}")
        if time is not None and time == target:
            raise DataError(f"The --time column and the --target column must differ; both are {time!r}.")
        text = [c for c, t in types.items() if family_of(t) not in ("int", "number", "timestamp")] + [target]
        reader = _reader("records", path, Path(tmp), full_scan=True, text=sorted(set(text) - {time}))
        frame = con.execute(f"SELECT * FROM {reader}").df()
        types = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {reader}").fetchall()}
    if len(frame) == 0:
        raise DataError(f"The CSV file {path} has a header but no rows after it; expected at least one row of data.")
    if time is not None and family_of(types[time]) != "timestamp":
        import pandas as pd

        values = frame[time].dropna().astype(str)
        bad = values[pd.to_datetime(values, errors="coerce", format="ISO8601").isna()]
        sample = (bad if len(bad) else values).head(3).tolist()
        raise DataError(f"The --time column {time!r} must hold dates or date-times (such as 2024-01-31 or "
                        f"2024-01-31 13:45:00); DuckDB reads it as {types[time]} (values such as {sample}). "
                        "Fix its values, or leave --time out for a seeded random split.")
    if time is not None and frame[time].nunique() < 3:
        raise DataError(f"The --time column {time!r} has {frame[time].nunique()} distinct value(s): a split by time "
                        "needs at least 3 (train, valid, test). Leave --time out for a seeded random split.")
    inferred = Inferred(spec={}, rows=len(frame), classes={})
    pos = _target(frame, target, positive, path, inferred)
    fields = _fields(frame, types, {target, time}, inferred)
    if not fields:
        raise DataError(f"No column of {path.name} can be an input of the model: "
                        + "; ".join(f"{c}: {why}" for c, why in inferred.ignored.items())
                        + ". Add a number or category column.")
    inferred.spec = {"target": target, "positive": pos, "time": time, "label": "label", "fields": fields}
    return inferred


def _target(frame, target: str, positive: str | None, path: Path, inferred: Inferred) -> str:
    values = frame[target].dropna()
    counts = values.value_counts()
    inferred.classes = {str(k): int(v) for k, v in counts.items()}
    if len(counts) == 0:
        raise DataError(f"The --target column {target!r} of {path.name} has no values (every row is empty or NA); "
                        "choose a column that holds the outcome.")
    if len(counts) == 1:
        raise DataError(f"The --target column {target!r} is constant: every row with a value has "
                        f"{counts.index[0]!r}; a model needs two outcomes to tell apart. Choose another column "
                        "or add rows of the other outcome.")
    if positive is not None:
        if str(positive) not in inferred.classes:
            raise DataError(f"The --positive value {positive!r} is not a value of the --target column {target!r}; "
                            f"its values are {sorted(inferred.classes)[:20]}.{did_you_mean(str(positive), inferred.classes)}")
        if len(counts) > 2:
            inferred.notes.append(f"the target {target!r} has {len(counts)} values: {positive!r} (1) against the "
                                  "other values (0)")
        return str(positive)
    if len(counts) > 2:
        shown = ", ".join(f"{k!r} ({v})" for k, v in list(inferred.classes.items())[:10])
        raise DataError(f"The --target column {target!r} has {len(counts)} values ({shown}"
                        f"{', ...' if len(counts) > 10 else ''}); only binary targets are supported. Pass "
                        "--positive VALUE to predict that value against the others.")
    by_word = [v for v in inferred.classes if v.strip().lower() in POSITIVE_WORDS]
    if len(by_word) == 1:
        chosen, why = by_word[0], "it reads as the positive outcome"
    else:  # the rarer class (the event), ties broken by the later value in sorted order
        chosen = sorted(inferred.classes, key=lambda v: (inferred.classes[v], _neg_sort(v)))[0]
        why = "it is the rarer outcome"
    inferred.notes.append(f"positive value {chosen!r} of {target!r} ({why}); pass --positive to choose the other")
    return chosen


def _neg_sort(value: str):
    return tuple(-ord(ch) for ch in value)


def _fields(frame, types: dict, skip: set, inferred: Inferred) -> dict:
    fields: dict[str, dict] = {}
    taken = set(RESERVED)
    for column, dtype in types.items():
        if column in skip:
            continue
        values = frame[column]
        present = values.dropna()
        family = family_of(dtype)
        distinct = present.nunique()
        if present.empty:
            inferred.ignored[column] = "no values (every row is empty or NA)"
            continue
        if distinct == 1:
            inferred.ignored[column] = f"one value only ({present.iloc[0]!r}): it tells no rows apart"
            continue
        if family == "timestamp" or family in ("date", "time", "interval"):
            inferred.ignored[column] = (f"a {dtype.lower()}: pass it as --time to split by it, or derive numbers "
                                        "from it in sql/features.sql")
            continue
        if family in ("int", "number"):
            if family == "int" and distinct == len(values) and (_looks_like_id(column) or _is_counter(present)):
                inferred.ignored[column] = "a distinct whole number a row: an identifier, not an input"
                continue
            spec = _number(present, integer=family == "int")
            seen = f"numbers {present.min():g} to {present.max():g}"
        elif family in ("text", "boolean") or dtype.upper() == "VARCHAR":
            if distinct > MAX_CATEGORIES:
                inferred.ignored[column] = (f"{distinct} distinct text values (over {MAX_CATEGORIES}): an identifier "
                                            "or free text, not a category")
                continue
            cats = sorted(str(v) for v in present.unique())
            spec = {"kind": "category", "categories": cats, "closed": False}
            seen = f"{distinct} categories"
        else:
            inferred.ignored[column] = f"type {dtype}: neither a number nor text"
            continue
        name = _name(column, taken)
        if name != column:
            spec["column"] = column
            inferred.notes.append(f"column {column!r} is the field {name!r} (a field's name is letters, digits, '_')")
        nulls = int(values.isna().sum())
        spec["nullable"] = nulls > 0
        spec["description"] = ""
        fields[name] = spec
        inferred.columns[name] = seen + (f", {nulls} missing" if nulls else "")
    return fields


def _looks_like_id(column: str) -> bool:
    return bool(re.search(r"(^|_|\b)id$|Id$|ID$", column.strip()))


def _is_counter(values) -> bool:
    return float(values.max()) - float(values.min()) == len(values) - 1


def _number(values, integer: bool) -> dict:
    """A number field: its range the values seen, widened by RANGE_MARGIN of their span on each side and
    rounded outward; a column never below 0 keeps 0 as its floor."""
    lo, hi = float(values.min()), float(values.max())
    pad = (hi - lo) * RANGE_MARGIN
    step = 10 ** math.floor(math.log10(pad)) if pad > 0 else 1.0
    low, high = math.floor((lo - pad) / step) * step, math.ceil((hi + pad) / step) * step
    if lo >= 0:
        low = max(low, 0.0)
    if integer or step >= 1:
        low, high = int(low), int(high)
    else:
        digits = max(0, -int(math.floor(math.log10(step))))
        low, high = round(low, digits), round(high, digits)
    return {"kind": "number", "integer": integer, "min": low, "max": high}


def _name(column: str, taken: set) -> str:
    """A field's name for a column: letters, digits and '_' (others become '_'), not starting with a digit,
    unique, not a reserved column of the feature table."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", column.strip()).strip("_") or "column"
    if name[0].isdigit():
        name = "c_" + name
    base, i = name, 2
    while name in taken:
        name = f"{base}_{i}"
        i += 1
    taken.add(name)
    return name
