"""Pipeline speed and memory: `mlops-nb run` against a plain `ploomber build` of the same pipeline.

Both run in fresh copies of this project, measured in the same run of this script: a full run, a no-op
run, and a run after one parameter change (model.learning_rate), each with the peak resident memory of
the whole process tree (papermill kernels included). Then the ratios, and the full-run cost of
`mlops-nb run` with the flights table replicated 1x, 3x and 10x.

Each measurement is repeated (--repeat, 3 by default: a full run in a fresh copy each time, the no-op and
the parameter change in the same copy, the parameter flipping between two values), the two sides taking
turns, and the medians are compared; every run's seconds are printed beside them, as VMs are noisy.

Targets (issue #2): no-op at least 5x faster than Ploomber's, full run at least 2x faster.

    .venv/bin/python bench/pipeline.py [--scales 1,3,10] [--repeat 3] [--skip-plain]
"""
from __future__ import annotations

import argparse
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ("settings.ini", "pipeline.yaml", "notebooks/tasks")


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


def measure(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of the process tree of ``cmd``; fails loudly on a non-zero exit."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLOPS_NB_")},
           "PLOOMBER_STATS_ENABLED": "false", **(env or {})}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    out = proc.stdout.read().decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd} (exit {proc.returncode}):\n{out[-3000:]}")
    return seconds, peak / 2**20


def plain_env_yaml(project: Path, overrides: dict[str, str] | None = None) -> None:
    """env.yaml for plain Ploomber: the same values mlops-nb renders into pipeline.yaml's placeholders."""
    import yaml

    from mlops_nb import config
    from mlops_nb.run import plan as spec

    settings = config.load(project / "settings.ini", overrides=overrides, environ={})
    env: dict = {}
    for dotted in settings.as_dict():
        section, key = dotted.split(".")
        env.setdefault(section, {})[key] = spec.param_value(settings, dotted)
    (project / "env.yaml").write_text(yaml.safe_dump(env))


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


def row(label: str, secs: float, mib: float, spread: str = "") -> str:
    return f"  {label:<34} {secs:8.2f} s   {mib:8.0f} MiB{spread}"


def median_of(samples: list[tuple[float, float]]) -> tuple[float, float, str]:
    """Median seconds and peak memory, and the seconds of every sample."""
    secs = [s for s, _ in samples]
    spread = f"   (runs: {', '.join(f'{s:.1f}' for s in secs)} s)" if len(secs) > 1 else ""
    return statistics.median(secs), statistics.median(m for _, m in samples), spread


def interleaved(tmp: Path, sides: dict, repeat: int) -> dict[str, dict[str, list]]:
    """``repeat`` full runs of each side in fresh copies, then no-op and parameter-change runs in the last
    copy; the sides take turns, so that a slow spell of the machine hits both."""
    out = {name: {"full": [], "no-op": [], "param change": []} for name in sides}
    last = {}
    for i in range(repeat):
        for name, (prepare, full, _) in sides.items():
            last[name] = make_project(tmp / f"{name}{i}")
            prepare(last[name])
            out[name]["full"].append(measure(full, last[name]))
    for i in range(repeat):
        for name, (_, full, _) in sides.items():
            out[name]["no-op"].append(measure(full, last[name]))
    for i in range(repeat):
        for name, (_, _, change) in sides.items():
            out[name]["param change"].append(change(last[name], "0.05" if i % 2 == 0 else "0.1"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,3,10", help="flights replication factors (default 1,3,10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs a measurement (default 3; the median counts)")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain Ploomber baseline")
    args = ap.parse_args()
    mlops = [str(BIN / "mlops-nb"), "run", "--quiet"]
    ploomber = [str(BIN / "ploomber"), "build"]
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-") as tmp:
        tmp = Path(tmp)

        def plain_change(project, lr):
            plain_env_yaml(project, {"model.learning_rate": lr})
            return measure(ploomber, project)

        sides = {"ours": (lambda p: None, mlops,
                          lambda p, lr: measure(mlops + ["-p", f"model.learning_rate={lr}"], p))}
        if not args.skip_plain:
            sides["plain"] = (plain_env_yaml, ploomber, plain_change)
        results = interleaved(tmp, sides, args.repeat)
        titles = {"ours": "mlops-nb run (notebooks in-process)",
                  "plain": "plain `ploomber build` (papermill kernels)"}
        for name in sides:
            print(f"{titles[name]}, median of {args.repeat}:")
            for what, samples in results[name].items():
                print(row(what, *median_of(samples)))
        if not args.skip_plain:
            print("ratios (ploomber / mlops-nb, medians; > 1 means mlops-nb is faster or smaller):")
            for what, target in (("full", 2.0), ("no-op", 5.0), ("param change", None)):
                plain_s, plain_m, _ = median_of(results["plain"][what])
                ours_s, ours_m, _ = median_of(results["ours"][what])
                t, m = plain_s / ours_s, plain_m / ours_m
                goal = f"  (target >= {target:.0f}x: {'met' if t >= target else 'MISSED'})" if target else ""
                print(f"  {what:<14} time {t:6.1f}x   peak memory {m:5.2f}x{goal}")

        print("mlops-nb full run as the flights table grows:")
        for k in [int(x) for x in args.scales.split(",") if x]:
            project = make_project(tmp / f"scale{k}")
            flights = replicate_flights(k, tmp / f"flights_x{k}.parquet")
            secs, mib = measure(mlops + ["-p", f"data.flights={flights}"], project)
            print(row(f"flights x{k} ({336776 * k:,} rows)", secs, mib))
    return 0


if __name__ == "__main__":
    sys.exit(main())
