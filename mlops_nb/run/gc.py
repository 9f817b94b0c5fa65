"""Garbage collection: what no run, model version or alias needs any more leaves the warehouse, the model
store and the products folder.

What is kept:
- the data (snapshot schemas, feature tables) of the current products, of the versions the aliases point
  at, and of the last ``gc.keep_runs`` successful runs; the data of anything else is dropped, but its
  lineage rows (``snapshots``, ``feature_sets``: input file hashes, options, row counts) stay, marked
  ``collected_at``, so every registered version's lineage stays readable;
- every registered model version's folder in the model store; folders no version names are removed;
- in the products folder, the products that pipeline.yaml declares, their Ploomber metadata and the state
  file; anything else (a product of a task since removed or renamed, a scratch folder) is removed;
- in the reports site, the task reports kept per run (``reports/runs/<run id>/``) of the last
  ``gc.keep_runs`` successful runs and of every run since the oldest of them; older runs' folders, and
  folders no run record names, are removed (their records and pages stay).
- the feature store (``<data_dir>/featurestore/``): the online store and the pushed events are never
  removed (their sizes are reported); the temporary files of a materialization that was killed are, as the
  store's own ``EmbeddedStore.clean`` removes them, under its writer lock.

DuckDB reuses the blocks that dropped tables free, so after a collection the file stops growing;
``CHECKPOINT`` gives the free blocks at the file's end back to the file system.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from ..errors import MlopsNbError
from . import plan as planning

BLOCK_BYTES = 262144  # DuckDB's block size


@dataclass
class Item:
    kind: str       # snapshot | feature set | model store | product | run reports | feature store
    name: str
    bytes: int
    detail: str = ""


@dataclass
class Report:
    items: list[Item] = field(default_factory=list)
    kept: dict[str, list[str]] = field(default_factory=dict)
    warehouse_bytes_before: int = 0
    warehouse_bytes_after: int = 0
    feature_store_bytes: dict[str, int] = field(default_factory=dict)  # kept file -> size
    dry_run: bool = False

    @property
    def freed(self) -> int:
        return sum(i.bytes for i in self.items)

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "freed_bytes": self.freed, "kept": self.kept,
                "warehouse_bytes_before": self.warehouse_bytes_before,
                "warehouse_bytes_after": self.warehouse_bytes_after,
                "feature_store_bytes": self.feature_store_bytes,
                "removed": [i.__dict__ for i in self.items]}


def needed_snapshots(con, settings: config.Settings, plan: planning.Plan | None) -> dict[str, str]:
    """snapshot id -> why it is kept."""
    keep: dict[str, str] = {}
    current = plan.receipt("snapshot") if plan is not None else None
    if current is not None:
        keep[current[1]["snapshot_id"]] = "current products"
    rows = con.execute("SELECT a.alias, v.lineage FROM model_aliases a JOIN model_versions v USING (version)")
    for alias, lineage in rows.fetchall():
        snap = json.loads(lineage or "{}").get("snapshot_id")
        if snap:
            keep.setdefault(snap, f"the {alias}'s training data")
    recent = con.execute("SELECT snapshot_id, max(started_at) AS last_at FROM runs WHERE status = 'succeeded' "
                         "AND snapshot_id IS NOT NULL GROUP BY snapshot_id ORDER BY last_at DESC LIMIT ?",
                         [settings.gc.keep_runs]).fetchall()
    for snap, _ in recent:
        keep.setdefault(snap, f"one of the last {settings.gc.keep_runs} successful runs")
    return keep


def collect(settings: config.Settings, dry_run: bool = False, plan: planning.Plan | None = None) -> Report:
    """Remove what nothing needs; with ``dry_run``, only say what would go. Call under the run lock."""
    from .. import registry
    from ..data import warehouse

    report = Report(dry_run=dry_run)
    if plan is None:
        try:
            plan = planning.load_plan(settings, state=planning.read_state(settings))
        except MlopsNbError:  # a broken pipeline.yaml must not stop a collection: then no product is pruned
            plan = None
    if settings.path("warehouse").exists():
        with warehouse.connect(write=True, settings=settings) as con:
            report.warehouse_bytes_before = _used_bytes(con)
            _collect_warehouse(con, settings, plan, report, dry_run)
            for version, d in sorted(registry.store_dirs(settings).items()):
                if not con.execute("SELECT 1 FROM model_versions WHERE version = ?", [version]).fetchone():
                    report.items.append(Item("model store", f"{settings.registry.model_name}:{version}",
                                             _tree_bytes(d), "no registered version names it"))
            if not dry_run:
                registry.remove_unregistered(con, settings)
                con.execute("CHECKPOINT")
            report.warehouse_bytes_after = _used_bytes(con)
            _collect_run_reports(con, settings, report, dry_run)
    if plan is not None:
        _collect_products(settings, plan, report, dry_run)
    _collect_feature_store(settings, report, dry_run)
    return report


def _collect_feature_store(settings, report: Report, dry_run: bool) -> None:
    """Keep the feature store's online store and pushed events, saying their sizes; remove what an interrupted
    materialization left, by the store's own clean(), under its writer lock (a running one's file is not left)."""
    from ..featurestore import online

    folder = online.store_dir(settings)
    if not folder.is_dir():
        return
    with online.writer_lock(folder):
        for name in (online.ONLINE, online.EVENTS):
            if (folder / name).is_file():
                report.feature_store_bytes[name] = (folder / name).stat().st_size
        report.kept["feature store"] = [f"{name} ({human(n)})" for name, n in report.feature_store_bytes.items()]
        store = online.EmbeddedStore(folder)
        leftovers = store.leftovers()
        for path in leftovers:
            report.items.append(Item("feature store", path.name, path.stat().st_size,
                                     "left by a materialization that did not finish"))
        if leftovers and not dry_run:
            store.clean()


def _collect_warehouse(con, settings, plan, report: Report, dry_run: bool) -> None:
    from ..data.warehouse import has_table, transaction

    keep = needed_snapshots(con, settings, plan)
    report.kept = {"snapshots": sorted(f"{s[:12]} ({why})" for s, why in keep.items())}
    live = con.execute("SELECT snapshot_id, schema_name FROM snapshots WHERE collected_at IS NULL").fetchall()
    sets = con.execute("SELECT feature_set_id, table_name, snapshot_id FROM feature_sets "
                       "WHERE collected_at IS NULL").fetchall()
    doomed_sets = [(fs, t) for fs, t, snap in sets if snap not in keep]
    doomed_snaps = [(s, schema) for s, schema in live if s not in keep]
    for fs, table in doomed_sets:
        report.items.append(Item("feature set", fs[:12], _table_bytes(con, f'features."{table}"'), f"features.{table}"))
    for snap, schema in doomed_snaps:
        tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?",
                                            [schema]).fetchall()]
        size = sum(_table_bytes(con, f'"{schema}"."{t}"') for t in tables)
        report.items.append(Item("snapshot", snap[:12], size, f"schema {schema}, {len(tables)} tables"))
    if dry_run or not (doomed_sets or doomed_snaps):
        return
    with transaction(con):
        for fs, table in doomed_sets:
            if has_table(con, table, "features"):
                con.execute(f'DROP TABLE "features"."{table}"')
            con.execute("UPDATE feature_sets SET collected_at = now() WHERE feature_set_id = ?", [fs])
        for snap, schema in doomed_snaps:
            con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            con.execute("UPDATE snapshots SET collected_at = now() WHERE snapshot_id = ?", [snap])


def _collect_products(settings, plan: planning.Plan, report: Report, dry_run: bool) -> None:
    root = settings.path("products_dir")
    if not root.is_dir():
        return
    declared = {p.resolve() for t in plan.tasks.values() for p in t.products.values()}
    keep = set(declared) | {planning.state_path(settings).resolve()}
    parents = {q for p in declared for q in p.parents}
    todo = sorted(root.iterdir())
    while todo:
        path = todo.pop(0)
        resolved = path.resolve()
        if resolved in keep:
            continue
        if resolved in parents:  # a folder holding declared products: look inside
            todo.extend(sorted(path.iterdir()))
            continue
        size = _tree_bytes(path) if path.is_dir() else path.stat().st_size
        report.items.append(Item("product", str(path.relative_to(root)), size, "no task of pipeline.yaml makes it"))
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _collect_run_reports(con, settings, report: Report, dry_run: bool) -> None:
    """The folders of task reports kept per run: those of the last ``gc.keep_runs`` successful runs and of
    every run since the oldest of them stay (the up-to-date runs not yet in the warehouse too)."""
    from ..data.warehouse import has_table
    from . import records, site

    root = site.runs_root(settings)
    folders = sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []
    if not folders:
        return
    rows = con.execute("SELECT run_id, status, started_at FROM runs").fetchall() if has_table(con, "runs") else []
    started = {run_id: at for run_id, _, at in rows}
    succeeded = sorted(at for _, status, at in rows if status == "succeeded")
    keep_runs = settings.gc.keep_runs
    cutoff = succeeded[-keep_runs] if len(succeeded) > keep_runs else None
    pending = {r.run_id for r in records.pending(settings.path("data_dir"))}
    doomed = []
    for d in folders:
        if d.name in pending:
            continue
        if d.name not in started:
            doomed.append((d, "no run record names it"))
        elif cutoff is not None and started[d.name] < cutoff:
            doomed.append((d, f"a run older than the last {keep_runs} successful runs"))
    freed = _unlinked_bytes([d for d, _ in doomed])
    for d, why in doomed:
        report.items.append(Item("run reports", d.name, freed[d], why))
        if not dry_run:
            shutil.rmtree(d, ignore_errors=True)


def _unlinked_bytes(folders: list[Path]) -> dict[Path, int]:
    """What removing ``folders`` frees, by folder: a file counts only when every hard link to it is inside
    them (a run's reports share their bytes with the latest reports and with later runs' folders)."""
    inodes: dict[tuple[int, int], list] = {}
    for d in folders:
        for f in d.rglob("*"):
            st = f.stat()
            if f.is_file():
                entry = inodes.setdefault((st.st_dev, st.st_ino), [d, st.st_size, st.st_nlink, 0])
                entry[3] += 1
    out = {d: 0 for d in folders}
    for d, size, nlink, seen in inodes.values():
        if seen >= nlink:
            out[d] += size
    return out


def _used_bytes(con) -> int:
    row = con.execute("SELECT used_blocks, block_size FROM pragma_database_size() "
                      "WHERE database_name = current_database()").fetchone()
    return int(row[0]) * int(row[1]) if row else 0


def _table_bytes(con, qualified: str) -> int:
    blocks = con.execute(f"SELECT count(DISTINCT block_id) FROM pragma_storage_info('{qualified}') "
                         "WHERE block_id >= 0").fetchone()[0]
    return int(blocks) * BLOCK_BYTES


def _tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human(n: float) -> str:
    if abs(n) < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
