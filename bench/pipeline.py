"""Pipeline speed, overhead, memory and warehouse growth: `mlops-nb run` against plain `ploomber build`.

Three sides run the same pipeline in fresh copies of this project, measured in the same run of this
script and taking turns, so that a slow spell of the machine hits all of them:
  ours      `mlops-nb run`: notebooks in this process (IPython shells), run records, reports, gc;
  papermill plain `ploomber build` of the same pipeline.yaml, its placeholders filled by an env.yaml:
            Ploomber's default, a Jupyter kernel a notebook (papermill), a forked process a task;
  engine    the same plain build with every task's `executor: ploomber-engine` (progress bar off) and
            the DAG's executor `Serial(build_in_subprocess=False)`: Ploomber's own in-process executor in
            its fastest configuration (no kernel, no fork, the imports shared by the tasks).
Each side does a full run, a no-op run and a run after one parameter change (model.learning_rate:
train, evaluate and gate re-run). Memory is the peak, over the run, of the summed unique memory (USS) of
the process tree, so that a process forked from another is not counted twice. Each measurement is
repeated (--repeat, 3 by default: a full run in a fresh copy each time, the no-op and the parameter
change in the last copy, the parameter flipping between two values) and the medians are compared; every
run's seconds are printed beside them, as VMs are noisy.

Each run's own task table (mlops-nb's `task status seconds`, Ploomber's `name Ran? Elapsed (s)`) is
checked: a full run must run every task, the parameter change exactly train, evaluate and gate, a no-op
nothing; otherwise the script stops, so a task skipped by mistake never counts as speed.

Orchestration overhead: the wall time of a full run minus the execution time of the notebooks' cells, read
from the executed notebooks (data/products/*.ipynb: ploomber-engine's `metadata.ploomber` timestamps, or
`metadata.execution` timestamps (a kernel's, or ours), or `metadata.papermill.duration`); when a notebook has none,
the task seconds of the run's table, and the printout says which measure was used.

Then the full-run cost of `mlops-nb run` as the flights table grows (--scales), and the warehouse cost
(--growth-runs, unless --skip-growth): in one fresh copy, that many `mlops-nb run`s, each on a data
folder whose flights file drops a different handful of rows, so each ingests a new snapshot and re-runs
everything; the warehouse file (plus its .wal) after run 1, 5 and the last, the last run's time against
the first's, and what `mlops-nb gc --dry-run --json` would still free at the end (the project collects
after every successful run by default: gc.after_run, gc.keep_runs = 5, so the size should level off).

Targets (the issue): no-op at least 10x faster than plain Ploomber's no-op (against each plain side),
orchestration overhead at most 10% of our full run; the warehouse size after run 1, 5 and 20 and the run
time of the 20th against the 1st are printed, not judged.

    .venv/bin/python bench/pipeline.py [--repeat 3] [--scales 1,3,10] [--skip-plain]
                                       [--growth-runs 20] [--skip-growth]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SPEC = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
TASKS = [t.get("name") or Path(t["source"]).stem for t in SPEC["tasks"]]


def _task_folders(spec: dict) -> list[str]:
    """The folders of the task notebooks (pipeline.yaml's `source:` entries), copied whole: a notebook may
    read a file beside it. A notebook at the project's top level is copied alone, never the whole root."""
    paths = set()
    for task in spec["tasks"]:
        folder = Path(task["source"]).parent
        paths.add(task["source"] if folder == Path(".") else folder.as_posix())
    return sorted(paths)


PROJECT_FILES = ("settings.ini", "pipeline.yaml", *_task_folders(SPEC))

# What each kind of run must run; the parameter change re-runs the task that names it and its downstream.
PARAM = "model.learning_rate"
EXPECTED = {"full": set(TASKS), "no-op": set(), "param change": {"train", "evaluate", "gate"}}
TARGET_NOOP = 10.0       # plain Ploomber no-op seconds / ours, at least
TARGET_OVERHEAD = 0.10   # our overhead / our full run, at most


def make_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for rel in PROJECT_FILES:
        src = ROOT / rel
        if src.is_dir():
            shutil.copytree(src, dest / rel)
        else:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def bench_env() -> dict:
    """This environment without MLOPS_NB_* settings (each project's settings.ini rules), Ploomber's
    telemetry off."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")},
            "PLOOMBER_STATS_ENABLED": "false"}


@dataclass
class Sample:
    seconds: float   # wall time
    mib: float       # peak of the summed USS of the process tree
    output: str      # stdout and stderr


def _tree_uss(root: psutil.Process) -> int:
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_full_info().uss
        except psutil.Error:  # ended between the listing and the reading
            pass
    return total


def measure(cmd: list[str], cwd: Path) -> Sample:
    """Wall seconds, peak summed USS (MiB) of the process tree, and output of ``cmd``; fails loudly on a
    non-zero exit. The output goes to a file: a pipe left unread would block a talkative run."""
    with tempfile.TemporaryFile() as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=bench_env(), stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, _tree_uss(root))
            except psutil.Error:  # the root itself has just ended
                pass
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        log.seek(0)
        out = log.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{out[-3000:]}")
    return Sample(seconds, peak / 2**20, out)


def task_table(output: str) -> dict[str, tuple[bool, float | None]]:
    """task -> (ran, seconds) from the last task table in a run's output: mlops-nb's `task status
    seconds` (ran / skipped) or Ploomber's `name Ran? Elapsed (s) Percentage` (True / False)."""
    lines = output.splitlines()
    heads = [i for i, line in enumerate(lines) if line.split()[:2] in (["task", "status"], ["name", "Ran?"])]
    if not heads:
        return {}
    table = {}
    for line in lines[heads[-1] + 2:]:  # past the header and its dashes
        cells = line.split()
        if not cells:
            break
        ran = cells[1] in ("ran", "True")
        table[cells[0]] = (ran, float(cells[2]) if ran and len(cells) > 2 else None)
    return table


def check_tasks(label: str, what: str, sample: Sample) -> None:
    """The one place that checks a run's task table: every task listed, and exactly the expected ones ran."""
    table = task_table(sample.output)
    ran = {name for name, (did, _) in table.items() if did}
    if sorted(table) != sorted(TASKS) or ran != EXPECTED[what]:
        hint = (" (did mlops_nb's code or the notebooks change while the benchmark ran? a changed module makes "
                "its tasks stale)" if what == "no-op" else "")
        raise SystemExit(f"{label}, {what} run: expected {sorted(EXPECTED[what]) or 'no task'} to run among "
                         f"{TASKS}, the run's task table says {sorted(ran) or 'none'} ran of "
                         f"{sorted(table) or 'no table found'}{hint}.\n--- output ---\n{sample.output[-3000:]}")


def timed_run(label: str, what: str, cmd: list[str], project: Path) -> Sample:
    sample = measure(cmd, project)
    check_tasks(label, what, sample)
    return sample


def _cell_seconds(meta: dict) -> float | None:
    """A code cell's own execution time from its metadata, or None if it has none."""
    engine = meta.get("ploomber") or {}
    if "timestamp_start" in engine and "timestamp_end" in engine:
        return engine["timestamp_end"] - engine["timestamp_start"]
    kernel = meta.get("execution") or {}
    if "iopub.execute_input" in kernel and "shell.execute_reply" in kernel:
        return (datetime.fromisoformat(kernel["shell.execute_reply"])
                - datetime.fromisoformat(kernel["iopub.execute_input"])).total_seconds()
    duration = (meta.get("papermill") or {}).get("duration")
    return None if duration is None else float(duration)


def notebook_seconds(project: Path, sample: Sample) -> tuple[float, str]:
    """Seconds the notebooks of a full run spent executing their cells, and what measured them: the
    executed notebooks' cell metadata, or else the task seconds of the run's table."""
    total, untimed = 0.0, []
    notebooks = sorted((project / "data" / "products").glob("*.ipynb"))
    for nb in notebooks:
        cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
        times = [_cell_seconds(c.get("metadata") or {}) for c in cells]
        if cells and all(t is None for t in times):
            untimed.append(nb.stem)
        total += sum(t for t in times if t is not None)
    if len(notebooks) == len(TASKS) and not untimed:
        return total, "cell timings in the executed notebooks' metadata"
    return (sum(s or 0.0 for _, s in task_table(sample.output).values()),
            f"task seconds of the run's table (no cell timings in {untimed or 'missing notebooks'})")


@dataclass
class Side:
    title: str
    prepare: Callable[[Path], None]              # a fresh copy -> ready to run
    command: list[str]                           # a full run; again, a no-op
    change: Callable[[Path, str], list[str]]     # set PARAM to a value -> the command to run


def plain_env_yaml(project: Path, overrides: dict[str, str] | None = None) -> None:
    """env.yaml for plain Ploomber: the same values mlops-nb renders into pipeline.yaml's placeholders."""
    from mlops_nb import config
    from mlops_nb.run import plan as spec

    settings = config.load(project / "settings.ini", overrides=overrides, environ={})
    env: dict = {}
    for dotted in settings.as_dict():
        section, key = dotted.split(".")
        env.setdefault(section, {})[key] = spec.param_value(settings, dotted)
    (project / "env.yaml").write_text(yaml.safe_dump(env))


def plain_engine_spec(project: Path) -> None:
    """The plain project with Ploomber's in-process executor, its fastest configuration: each task's
    `executor: ploomber-engine` (as NotebookRunner takes it; no progress bar), and the DAG's executor
    building the tasks in this process rather than in a fork each (Ploomber's default)."""
    plain_env_yaml(project)
    spec = yaml.safe_load((project / "pipeline.yaml").read_text())
    for task in spec["tasks"]:
        task["executor"] = "ploomber-engine"
        task["executor_params"] = {"progress_bar": False}
    spec["executor"] = {"dotted_path": "ploomber.executors.Serial", "build_in_subprocess": False}
    (project / "pipeline.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def replicate_flights(k: int, dest: Path) -> Path:
    """flights x k as Parquet (the copies keep their months, so every split grows k times)."""
    import duckdb

    from mlops_nb import config
    from mlops_nb.data import ingest

    src = ingest.resolve_sources(config.load(ROOT / "settings.ini", environ={}))["flights"]
    with tempfile.TemporaryDirectory() as tmp:
        reader = ingest._reader("flights", src, Path(tmp))
        con = duckdb.connect()
        con.execute(f"COPY (SELECT f.* FROM {reader} AS f, range({k})) TO '{dest}' (FORMAT parquet)")
        con.close()
    return dest


def _csv_bytes(path: Path) -> bytes:
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            return z.read(z.namelist()[0])
    return gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()


def source_folder(dest: Path) -> list[bytes]:
    """A data folder of the project's source tables as CSV (flights.csv written later); flights' lines."""
    from mlops_nb import config
    from mlops_nb.data import ingest

    dest.mkdir(parents=True)
    sources = ingest.resolve_sources(config.load(ROOT / "settings.ini", environ={}))
    for name, path in sources.items():
        if name != "flights":
            (dest / f"{name}.csv").write_bytes(_csv_bytes(path))
    return _csv_bytes(sources["flights"]).splitlines(keepends=True)


def write_changed_flights(folder: Path, lines: list[bytes], i: int, drop: int = 5) -> None:
    """flights.csv without a handful of rows, a different handful for each ``i``: new bytes, new snapshot."""
    start = 1 + (i * 7919) % (len(lines) - 1 - drop)
    (folder / "flights.csv").write_bytes(b"".join(lines[:start] + lines[start + drop:]))


def warehouse_bytes(project: Path) -> int:
    db = project / "data" / "warehouse.duckdb"
    wal = db.with_name(db.name + ".wal")
    return sum(p.stat().st_size for p in (db, wal) if p.exists())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def interleaved(tmp: Path, sides: dict[str, Side], repeat: int) -> dict[str, dict[str, list]]:
    """``repeat`` full runs of each side in fresh copies, then no-op and parameter-change runs in the last
    copy; the sides take turns. Each full run also yields the notebooks' own seconds ("cells")."""
    out = {name: {"full": [], "no-op": [], "param change": [], "cells": []} for name in sides}
    last = {}
    for i in range(repeat):
        for name, side in sides.items():
            last[name] = make_project(tmp / f"{name}{i}")
            side.prepare(last[name])
            sample = timed_run(side.title, "full", side.command, last[name])
            out[name]["full"].append(sample)
            out[name]["cells"].append(notebook_seconds(last[name], sample))
    for i in range(repeat):
        for name, side in sides.items():
            out[name]["no-op"].append(timed_run(side.title, "no-op", side.command, last[name]))
    for i in range(repeat):
        for name, side in sides.items():
            cmd = side.change(last[name], "0.05" if i % 2 == 0 else "0.1")
            out[name]["param change"].append(timed_run(side.title, "param change", cmd, last[name]))
    return out


def growth(tmp: Path, mlops: list[str], runs: int) -> list[str]:
    """``runs`` runs of ours in one copy, each on changed flights; the summary lines."""
    project = make_project(tmp / "growth")
    folder = tmp / "growth-data"
    lines = source_folder(folder)
    cmd = mlops + ["-p", f"data.source={folder}"]
    seconds, summary = [], []
    print(f"warehouse growth: {runs} runs of `mlops-nb run` in one copy, each on changed flights:")
    for i in range(1, runs + 1):
        write_changed_flights(folder, lines, i)
        seconds.append(timed_run("mlops-nb run (growth)", "full", cmd, project).seconds)
        size = (f"warehouse {warehouse_bytes(project) / 2**20:6.1f} MiB   "
                f"(all of data/, model store included: {tree_bytes(project / 'data') / 2**20:.0f} MiB)")
        print(f"  run {i:<3} {seconds[-1]:6.1f} s   {size}")
        if i in (1, 5, runs):
            summary.append(f"    after run {i:<3} {size}")
    summary.append(f"    run {runs} against run 1: {seconds[-1]:.1f} s / {seconds[0]:.1f} s = "
                   f"{seconds[-1] / seconds[0]:.2f}x   (every run: {', '.join(f'{s:.0f}' for s in seconds)} s)")
    gc = subprocess.run([str(BIN / "mlops-nb"), "gc", "--dry-run", "--json"], cwd=project, env=bench_env(),
                        capture_output=True, text=True)
    if gc.returncode != 0:
        raise SystemExit(f"mlops-nb gc --dry-run --json failed in {project}:\n{gc.stderr[-3000:]}")
    report = json.loads(gc.stdout)
    summary.append(f"    `mlops-nb gc --dry-run --json` at the end: freed_bytes {report['freed_bytes']:,} "
                   f"({len(report['removed'])} item(s)); warehouse data in use "
                   f"{report['warehouse_bytes_before'] / 2**20:.1f} MiB; snapshots kept: "
                   f"{len(report['kept'].get('snapshots', []))}")
    return summary


def row(label: str, samples: list[Sample]) -> str:
    """Median seconds and peak memory, and the seconds of every sample."""
    secs = [s.seconds for s in samples]
    spread = f"   (runs: {', '.join(f'{s:.1f}' for s in secs)} s)" if len(secs) > 1 else ""
    return (f"  {label:<34} {statistics.median(secs):8.2f} s   "
            f"{statistics.median(s.mib for s in samples):8.0f} MiB USS{spread}")


def median(samples: list[Sample], attr: str = "seconds") -> float:
    return statistics.median(getattr(s, attr) for s in samples)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def report(sides: dict[str, Side], results: dict, repeat: int) -> list[str]:
    """Print each side's medians and overhead, and the ratios of each plain side to ours; the summary
    lines (the targets judged)."""
    overhead = {}
    for name, side in sides.items():
        res = results[name]
        print(f"{side.title}, median of {repeat}:")
        for what in ("full", "no-op", "param change"):
            print(row(what, res[what]))
        spent = [s.seconds - cells for s, (cells, _) in zip(res["full"], res["cells"])]
        share = statistics.median(o / s.seconds for o, s in zip(spent, res["full"]))
        how = "; ".join(sorted({how for _, how in res["cells"]}))
        overhead[name] = (statistics.median(spent), share, how)
        print(f"  {'overhead (full run - cells)':<34} {overhead[name][0]:8.2f} s   {share:8.1%} of the full run"
              f"   (runs: {', '.join(f'{o:.1f}' for o in spent)} s; measure: {how})")

    ours_full, ours_noop = median(results["ours"]["full"]), median(results["ours"]["no-op"])
    plain = [name for name in sides if name != "ours"]
    targets, others = ["  targets:"], []
    for name in plain:
        print(f"ratios against {sides[name].title} (plain / mlops-nb, medians; > 1 means mlops-nb is "
              "faster or smaller):")
        for what in ("full", "no-op", "param change"):
            t = median(results[name][what]) / median(results["ours"][what])
            m = median(results[name][what], "mib") / median(results["ours"][what], "mib")
            print(f"  {what:<14} time {t:6.1f}x   peak memory (USS) {m:5.2f}x")
        plain_noop, plain_full = median(results[name]["no-op"]), median(results[name]["full"])
        targets.append(f"    no-op >= {TARGET_NOOP:.0f}x faster than {sides[name].title}: {plain_noop:.2f} s / "
                       f"{ours_noop:.2f} s = {plain_noop / ours_noop:.1f}x   "
                       f"{verdict(plain_noop / ours_noop >= TARGET_NOOP)}")
        others.append(f"  full run, {sides[name].title} / mlops-nb: {plain_full:.2f} s / {ours_full:.2f} s = "
                      f"{plain_full / ours_full:.2f}x (no target)")
    spent, share, how = overhead["ours"]
    targets.append(f"    overhead <= {TARGET_OVERHEAD:.0%} of our full run: {spent:.2f} s = {share:.1%} (full run "
                   f"{ours_full:.2f} s)   {verdict(share <= TARGET_OVERHEAD)}   [measure: {how}]")
    return targets + others


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs of each measurement and side (default 3; the medians count)")
    ap.add_argument("--scales", default="1,3,10",
                    help="flights replication factors for the scale runs (default 1,3,10; '' for none)")
    ap.add_argument("--skip-plain", action="store_true", help="skip both plain Ploomber sides")
    ap.add_argument("--growth-runs", type=int, default=20,
                    help="runs on changed data for the warehouse growth figures (default 20)")
    ap.add_argument("--skip-growth", action="store_true", help="skip the warehouse growth runs")
    args = ap.parse_args()
    mlops = [str(BIN / "mlops-nb"), "run", "--quiet"]
    ploomber = [str(BIN / "ploomber"), "build"]
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-") as tmp:
        tmp = Path(tmp)

        def plain_change(project: Path, value: str) -> list[str]:
            plain_env_yaml(project, {PARAM: value})
            return ploomber

        sides = {"ours": Side("mlops-nb run (notebooks in-process)", lambda p: None, mlops,
                              lambda p, value: mlops + ["-p", f"{PARAM}={value}"])}
        if not args.skip_plain:
            sides["papermill"] = Side("plain `ploomber build` (papermill kernels)", plain_env_yaml, ploomber,
                                      plain_change)
            sides["engine"] = Side("plain `ploomber build` (ploomber-engine in-process)", plain_engine_spec,
                                   ploomber, plain_change)
        results = interleaved(tmp, sides, args.repeat)

        summary = report(sides, results, args.repeat)

        scales = [int(x) for x in args.scales.split(",") if x.strip()]
        if scales:
            print("mlops-nb full run as the flights table grows:")
        for k in scales:
            project = make_project(tmp / f"scale{k}")
            flights = replicate_flights(k, tmp / f"flights_x{k}.parquet")
            sample = timed_run(f"mlops-nb run (flights x{k})", "full",
                               mlops + ["-p", f"data.flights={flights}"], project)
            print(row(f"flights x{k} ({336776 * k:,} rows)", [sample]))

        if not args.skip_growth and args.growth_runs > 0:
            summary.append(f"  warehouse growth ({args.growth_runs} runs on changed data, one copy):")
            summary.extend(growth(tmp, mlops, args.growth_runs))

    print(f"\nsummary (medians of {args.repeat} runs a side; every run's task table checked):")
    print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
