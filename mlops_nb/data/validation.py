"""Checks a snapshot against its contracts with exact SQL counts of the rows that break each rule."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .contracts import CONTRACTS, Table, family_of
from ..errors import ValidationFailed


@dataclass(frozen=True)
class Finding:
    table: str
    column: str | None
    rule: str
    broken_rows: int
    total_rows: int
    severity: str = "error"
    detail: str = ""

    def __str__(self):
        where = f"{self.table}.{self.column}" if self.column else self.table
        if self.broken_rows < 0:
            return f"{where}: rule '{self.rule}' broken ({self.detail})"
        text = f"{where}: rule '{self.rule}' broken by {self.broken_rows:,} of {self.total_rows:,} rows"
        return text + (f" ({self.detail})" if self.detail else "")

    def as_dict(self):
        return asdict(self)


def check_snapshot(con, snapshot, contracts: dict[str, Table] | None = None) -> list[Finding]:
    """Every broken rule of every table in the snapshot (errors and warnings), against ``contracts`` (the
    flights' ``CONTRACTS`` unless given: a record's come from ``contracts.record_contract``)."""
    findings: list[Finding] = []
    present = {r[0] for r in con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
        [snapshot.schema_name]).fetchall()}
    for name, table in (CONTRACTS if contracts is None else contracts).items():
        if name not in present:
            if table.required:
                findings.append(Finding(name, None, "table present", 1, 0, detail="table missing"))
            continue
        findings += check_table(con, snapshot.table(name), table, snapshot, present)
    return findings


def check_table(con, qualified: str, table: Table, snapshot=None, present=()) -> list[Finding]:
    columns = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {qualified}").fetchall()}
    total = con.execute(f"SELECT count(*) FROM {qualified}").fetchone()[0]
    out: list[Finding] = []
    if total < table.min_rows:
        out.append(Finding(table.name, None, f"at least {table.min_rows} row(s)", table.min_rows - total,
                           total, detail="the table is empty"))
    for col in table.columns:
        if col.name not in columns:
            out.append(Finding(table.name, col.name, "column present", total, total,
                               detail=f"missing; the table has {sorted(columns)}"))
            continue
        found = family_of(columns[col.name])
        if found != col.family and not (col.family == "number" and found == "int"):
            target = {"text": "VARCHAR", "timestamp": "TIMESTAMP"}.get(col.family, "DOUBLE")
            bad = _uncastable(con, qualified, col.name, target)
            non_null = 0 if bad else _count(con, qualified, f'"{col.name}" IS NOT NULL')
            if bad:
                detail = f"found type {columns[col.name]}; {bad:,} value(s) are not {col.family}"
            elif not non_null:
                bad, detail = total, "the column has no values at all (every row is empty or NA)"
            else:
                bad, detail = non_null, (f"stored as {columns[col.name]}; store the values as {col.family} "
                                        "in the source file")
            out.append(Finding(table.name, col.name, f"type {col.family}", bad, total, detail=detail))
            continue
        q = f'"{col.name}"'
        if col.not_null:
            n = _count(con, qualified, f"{q} IS NULL")
            if n:
                out.append(Finding(table.name, col.name, "not null", n, total))
        if col.min is not None or col.max is not None:
            lo = f"{q} < {col.min}" if col.min is not None else "false"
            hi = f"{q} > {col.max}" if col.max is not None else "false"
            n = _count(con, qualified, f"{lo} OR {hi}")
            if n:
                out.append(Finding(table.name, col.name, f"between {col.min} and {col.max}", n, total,
                                   severity=col.severity))
        if col.categories is not None:
            known = ", ".join("'" + c.replace("'", "''") + "'" for c in col.categories)
            n = _count(con, qualified, f"{q} IS NOT NULL AND {q} NOT IN ({known or 'NULL'})")
            if n:
                out.append(Finding(table.name, col.name, "one of the record's categories", n, total,
                                   detail=f"expected one of {list(col.categories)[:20]}; add new ones to the "
                                          "record file or set 'closed: false'"))
        if col.in_table and snapshot is not None and col.in_table[0] in present:
            ref = snapshot.table(col.in_table[0])
            n = _count(con, qualified, f'{q} IS NOT NULL AND {q} NOT IN '
                                       f'(SELECT "{col.in_table[1]}" FROM {ref})')
            if n:
                out.append(Finding(table.name, col.name, f"known in {col.in_table[0]}.{col.in_table[1]}",
                                   n, total))
    return out


def _count(con, qualified: str, condition: str) -> int:
    return con.execute(f"SELECT count(*) FROM {qualified} WHERE {condition}").fetchone()[0]


def _uncastable(con, qualified: str, column: str, target: str) -> int:
    return _count(con, qualified, f'"{column}" IS NOT NULL AND TRY_CAST("{column}" AS {target}) IS NULL')


def raise_for(findings: list[Finding], failed_constraints: list[dict] = ()) -> None:
    """Stop the run on any error-level SQL finding or whylogs constraint the SQL checks did not cover."""
    errors = [f for f in findings if f.severity == "error"]
    covered = {(f.table, f.column) for f in errors}
    errors += [Finding(c["table"], c["column"], c["rule"], -1, -1, detail="whylogs constraint failed")
               for c in failed_constraints
               if c["severity"] == "error" and (c["table"], c["column"]) not in covered]
    if errors:
        raise ValidationFailed(errors)
