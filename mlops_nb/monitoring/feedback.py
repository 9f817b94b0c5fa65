"""Observed outcomes (labels) from a file: `mlops-nb feedback FILE`, the file-borne twin of POST /feedback.

A CSV (.csv, .csv.gz) or Parquet file with the columns

    request_id or key   at least one of the two columns; in each row exactly one of them non-empty
    late                the observed outcome: true/false, 1/0, yes/no (any case)
    arr_delay           optional: the arrival delay in minutes, a finite number (empty: unknown)

is checked as a whole (nothing is written when a row is wrong) and appended, durably and at once, to

    <serving_dir>/feedback/<UTC day>-file-<first 12 hex digits of the file's sha256>.jsonl

in the feedback log's format (``data.logs.FEEDBACK_FIELDS``, source ``file:<file name>``). A file is named
by its content: importing the same bytes again adds nothing.
"""
from __future__ import annotations

import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import config
from ..data import logs
from ..data.ingest import file_sha256
from ..errors import DataError, did_you_mean

SUFFIXES = (".csv", ".csv.gz", ".parquet")
ID_COLUMNS = ("request_id", "key")
COLUMNS = ("request_id", "key", "late", "arr_delay")
TRUE, FALSE = {"true", "1", "yes"}, {"false", "0", "no"}
MAX_PROBLEMS = 10  # bad values listed in an error


@dataclass
class Imported:
    file: str
    sha256: str
    outcomes: int          # valid outcomes in the file
    added: int             # outcomes appended now (0 when the file was imported before)
    already_imported: bool
    log: str               # the feedback file holding them

    def as_dict(self) -> dict:
        return asdict(self)


def feedback_dir(settings: config.Settings) -> Path:
    return config.serving_dir(settings, in_bento=False) / logs.FEEDBACK


def _kind(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return "parquet" if suffix == ".parquet" else "csv"
    raise DataError(f"mlops-nb feedback reads CSV or Parquet files (names ending in {', '.join(SUFFIXES)}); "
                    f"got {path.name!r}. Save the outcomes as CSV or Parquet with columns request_id or key, "
                    "late and optionally arr_delay.")


def _read(path: Path):
    import pandas as pd

    kind = _kind(path)
    if not path.is_file():
        raise DataError(f"No outcome file at {path}: expected an existing {kind.upper()} file. Check the path.")
    try:
        if kind == "csv":
            # every cell as text: the values are checked here, with row numbers, not guessed by pandas
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True,
                                encoding="utf-8-sig")  # a spreadsheet's byte-order mark is no column name
        else:
            frame = pd.read_parquet(path)
    except Exception as e:  # pandas, pyarrow, gzip and csv errors alike
        raise DataError(f"Could not read {path.name} as {kind.upper()}: {type(e).__name__}: {e}. Expected a "
                        f"{kind.upper()} file with columns request_id or key, late and optionally arr_delay.") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, kind


def _close(have, wanted, hinted: set) -> str:
    """' Column 'x': Did you mean 'y'?' for the first column of ``have`` close to one of ``wanted``."""
    for c in have:
        hint = did_you_mean(c, wanted)
        if hint:
            hinted.add(c)
            return f" Column {c!r}:{hint}"
    return ""


def _check_columns(frame, name: str) -> None:
    have = list(frame.columns)
    unknown = [c for c in have if c not in COLUMNS]
    problems, hinted = [], set()
    if not any(c in have for c in ID_COLUMNS):
        problems.append("a column request_id or key (naming the prediction each outcome belongs to) is missing."
                        + _close(unknown, ID_COLUMNS, hinted))
    if "late" not in have:
        problems.append("the column late (the observed outcome, true or false) is missing."
                        + _close(unknown, ["late"], hinted))
    for c in unknown:
        problems.append(f"the column {c!r} is not one of {', '.join(COLUMNS)}."
                        + ("" if c in hinted else did_you_mean(c, COLUMNS)))
    duplicated = sorted({c for c in have if have.count(c) > 1})
    if duplicated:
        problems.append(f"the column(s) {', '.join(duplicated)} appear more than once.")
    if problems:
        raise DataError(f"{name}: expected columns request_id or key, late and optionally arr_delay; the file has "
                        f"{', '.join(map(repr, have)) or 'no columns'}:\n" + "\n".join(f"  - {p}" for p in problems)
                        + "\nRename or remove the columns and import the file again.")


def _text(value) -> str | None:
    """A cell as text, or None when empty (CSV: '', Parquet: null or NaN)."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    text = str(value).strip()
    return text or None


def _late(value):
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    text = _text(value)
    if text is None:
        raise ValueError("empty")
    if text.lower() in TRUE:
        return True
    if text.lower() in FALSE:
        return False
    raise ValueError(text)


def _delay(value):
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(value) if isinstance(value, (int, float)) else float(text)
    except (TypeError, ValueError):
        raise ValueError(text) from None
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def read_outcomes(path) -> list[dict]:
    """The outcomes of a file, checked: a dict a row (request_id, key, late, arr_delay). Raises DataError
    naming every problem (up to MAX_PROBLEMS), with row numbers, columns and values."""
    path = Path(path)
    frame, kind = _read(path)
    _check_columns(frame, path.name)
    if len(frame) == 0:
        raise DataError(f"{path.name} has no rows: expected one outcome a row under the header "
                        f"({', '.join(frame.columns)}).")
    id_pattern = re.compile(logs.REQUEST_ID_PATTERN)
    columns = {c: frame[c].tolist() if c in frame.columns else [None] * len(frame) for c in COLUMNS}
    problems, outcomes = [], []
    line = (lambda i: f"row {i + 1} (line {i + 2})") if kind == "csv" else (lambda i: f"row {i + 1}")
    for i in range(len(frame)):
        here = []
        request_id, key = _text(columns["request_id"][i]), _text(columns["key"][i])
        if (request_id is None) == (key is None):
            present = [c for c in ID_COLUMNS if c in frame.columns]
            if len(present) == 2:
                here.append(f"{line(i)}: expected exactly one of request_id or key to be non-empty; got "
                            + ("both" if request_id is not None else "neither"))
            else:
                here.append(f"{line(i)}, column {present[0]}: expected a value (naming the prediction); got an "
                            "empty value")
        if request_id is not None and not id_pattern.match(request_id):
            here.append(f"{line(i)}, column request_id: expected a request id as the service answers it "
                        f"(16 hex digits, lowercase); got {request_id!r}")
        if key is not None and len(key) > logs.KEY_MAX_CHARS:
            here.append(f"{line(i)}, column key: expected at most {logs.KEY_MAX_CHARS} characters; "
                        f"got {len(key)}")
        try:
            late = _late(columns["late"][i])
        except ValueError as e:
            late = None
            here.append(f"{line(i)}, column late: expected true/false, 1/0 or yes/no; got "
                        + ("an empty value" if str(e) == "empty" else repr(str(e))))
        try:
            arr_delay = _delay(columns["arr_delay"][i])
        except ValueError as e:
            arr_delay = None
            here.append(f"{line(i)}, column arr_delay: expected a finite number of minutes (or empty); "
                        f"got {str(e)!r}")
        if here:
            problems += here
            continue
        outcomes.append({"request_id": request_id, "key": key, "late": late, "arr_delay": arr_delay})
    if problems:
        shown = problems[:MAX_PROBLEMS]
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        raise DataError(f"{path.name}: {len(problems)} bad value(s); nothing was imported:\n"
                        + "\n".join(f"  - {p}" for p in shown) + more
                        + "\nFix the file and import it again.")
    return outcomes


def import_file(settings: config.Settings, path) -> Imported:
    """Check ``path`` and append its outcomes to the feedback log, unless the same bytes were imported
    before. All or nothing: the lines go to a hidden temporary file (fsync) renamed into place."""
    path = Path(path)
    outcomes = read_outcomes(path)
    sha = file_sha256(path)
    folder = feedback_dir(settings)
    earlier = sorted(folder.glob(f"*-file-{sha[:12]}.jsonl")) if folder.is_dir() else []
    if earlier:
        return Imported(str(path), sha, len(outcomes), 0, True, str(earlier[0]))
    at = time.time()
    stamp, source = logs.now_iso(at), f"file:{path.name}"
    lines = [logs.feedback_line(o["request_id"], o["key"], o["late"], o["arr_delay"], stamp, source)
             for o in outcomes]
    dest = logs.day_path(folder.parent, logs.FEEDBACK, at, f"file-{sha[:12]}")
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        logs.append(tmp, lines, durable=True)
        os.replace(tmp, dest)
        logs.fsync_dir(dest.parent)
    except OSError as e:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise DataError(f"Could not write the outcomes of {path.name} to {dest}: {e.strerror or e}. Nothing "
                        "was added; check the folder (paths.serving_dir) and import the file again.") from None
    return Imported(str(path), sha, len(outcomes), len(outcomes), False, str(dest))
