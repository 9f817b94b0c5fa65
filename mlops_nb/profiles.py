"""The only module that imports whylogs: profiles of data frames and contract constraints on them.

whylogs is unmaintained upstream; everything else goes through these functions so it can be replaced.
"""
from __future__ import annotations

import os
from pathlib import Path

from . import config  # noqa: F401  (sets WHYLOGS_NO_ANALYTICS before whylogs is imported)
from .contracts import Table


PARALLEL_ROWS = 100_000  # from this size, two processes profile half the rows each, then merge


def profile(df):
    """A whylogs profile view of a pandas frame (large frames on two cores: profiles merge exactly as
    sketches do, and whylogs holds the GIL)."""
    import whylogs as why

    if len(df) < PARALLEL_ROWS or (os.cpu_count() or 1) < 2 or not hasattr(os, "fork"):
        return why.log(pandas=df).view()
    return _profile_in_two(df)


def _profile_in_two(df):
    import whylogs as why
    from whylogs.core import DatasetProfileView

    half = len(df) // 2
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child profiles the first half and sends it back serialized
        status = 1
        try:
            os.close(read_end)
            data = why.log(pandas=df.iloc[:half]).view().serialize()
            with os.fdopen(write_end, "wb") as out:
                out.write(data)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    mine = why.log(pandas=df.iloc[half:]).view()
    with os.fdopen(read_end, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        return why.log(pandas=df).view()  # the child failed: do it here, slower but right
    return DatasetProfileView.deserialize(data).merge(mine)


def write(view, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    view.write(str(path))
    return path


def read(path: Path):
    from whylogs.core import DatasetProfileView

    return DatasetProfileView.read(str(path))


def check_contract(view, table: Table, categories: dict[str, set]) -> list[dict]:
    """Evaluate the contract's rules as whylogs constraints on a profile.

    ``categories`` maps a column to its known values (from the referenced table). Returns one dict a
    constraint: column, rule, severity, passed.
    """
    from whylogs.core.constraints import ConstraintsBuilder
    from whylogs.core.constraints.factories import frequent_strings_in_reference_set, is_in_range, no_missing_values

    columns = set(view.get_columns())
    rules = []
    for col in table.columns:
        if col.name not in columns:
            continue
        if col.not_null:
            rules.append((col, "not null", "error", no_missing_values(col.name)))
        if col.min is not None or col.max is not None:
            lo = col.min if col.min is not None else float("-inf")
            hi = col.max if col.max is not None else float("inf")
            rules.append((col, f"between {col.min} and {col.max}", col.severity, is_in_range(col.name, lo, hi)))
        if col.name in categories:
            rules.append((col, f"in {col.in_table[0]}.{col.in_table[1]}", "error",
                          frequent_strings_in_reference_set(col.name, set(categories[col.name]))))
    builder = ConstraintsBuilder(dataset_profile_view=view)
    for *_, constraint in rules:
        builder.add_constraint(constraint)
    report = builder.build().generate_constraints_report()
    out = []
    for (col, rule, severity, _), result in zip(rules, report):
        out.append({"table": table.name, "column": col.name, "rule": rule, "severity": severity,
                    "passed": bool(result.passed)})
    return out


def merge(a, b):
    """Two profile views of the same columns as one (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)
