"""The run journal: written before a run changes anything, so that a run killed at any instant (SIGKILL,
OOM, power loss) is undone, or finished, by the next command.

A run's one commit point is a DuckDB transaction that registers its model, moves the aliases and inserts
its run record with status ``succeeded``. Before it, everything the run did can be undone: the warehouse
objects it added (``warehouse.undo_since`` the inventory taken at the start), the products (restored
from the backup in the run's scratch folder), the model-store folders no version was registered for,
and the staged reports. After it, what is left is finishing: the state file, the reports, the scratch
folder. ``recover`` looks at the journal and the run record and does whichever applies; every step is
idempotent, so a recovery killed half-way is finished by the next one. The journal goes last.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import config
from ..data.logs import fsync_dir

JOURNAL_FILE = ".run-journal.json"
SCRATCH_DIR = ".mlops-nb-run"     # one folder for everything a run keeps aside: backup, staged reports


@dataclass
class Journal:
    run_id: str
    pid: int
    phase: str                  # preparing (backup being made: nothing changed yet), running, committing, restoring
    products_existed: bool
    warehouse_before: dict = field(default_factory=dict)
    state_after: dict | None = None
    children: list[int] = field(default_factory=list)
    started_at: str | None = None
    params: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)   # task -> [last event, seconds]: where a killed run was
    trigger: str | None = None                  # what started the run (a retrain), for its record

    def save(self, settings: config.Settings) -> None:
        _write_durably(journal_path(settings), json.dumps(asdict(self), indent=1, sort_keys=True))


def journal_path(settings: config.Settings) -> Path:
    return settings.path("data_dir") / JOURNAL_FILE


def scratch_dir(settings: config.Settings) -> Path:
    return settings.path("data_dir") / SCRATCH_DIR


def backup_dir(settings: config.Settings) -> Path:
    return scratch_dir(settings) / "products"


def ready_reports_dir(settings: config.Settings) -> Path:
    return scratch_dir(settings) / "reports-ready"


def read(settings: config.Settings) -> Journal | None:
    try:
        data = json.loads(journal_path(settings).read_text(encoding="utf-8"))
        return Journal(**data)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        # A journal cut short by a power loss before its rename: the run had not started changing anything.
        return Journal(run_id="unknown", pid=0, phase="preparing", products_existed=True)


def _write_durably(path: Path, text: str) -> None:
    """Write, fsync, rename, fsync the folder: the file is whole and on disk, or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Every file under ``root`` on disk (a commit must not point at products a power loss would lose)."""
    if not root.exists():
        return
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def remove(settings: config.Settings) -> None:
    shutil.rmtree(scratch_dir(settings), ignore_errors=True)
    journal_path(settings).unlink(missing_ok=True)
    journal_path(settings).with_name(JOURNAL_FILE + ".tmp").unlink(missing_ok=True)
    fsync_dir(journal_path(settings).parent)
