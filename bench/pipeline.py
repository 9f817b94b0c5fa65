"""Pipeline speed and memory: `mlops-nb run` against a plain `ploomber build` of the same pipeline.

Both run in fresh copies of this project, measured in the same run of this script: a full run, a no-op
run, and a run after one parameter change (model.learning_rate), each with the peak resident memory of
the whole process tree (papermill kernels included). Then the ratios, and the full-run cost of
`mlops-nb run` with the flights table replicated 1x, 3x and 10x.

Targets (issue #2): no-op at least 5x faster than Ploomber's, full run at least 2x faster.

    .venv/bin/python bench/pipeline.py [--scales 1,3,10] [--skip-plain]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROJECT_FILES = ("settings.ini", "pipeline.yaml", "notebooks/pipeline")


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

    from mlops_nb import config, spec

    settings = config.load(project / "settings.ini", overrides=overrides, environ={})
    env: dict = {}
    for dotted in settings.as_dict():
        section, key = dotted.split(".")
        env.setdefault(section, {})[key] = spec.param_value(settings, dotted)
    (project / "env.yaml").write_text(yaml.safe_dump(env))


def replicate_flights(k: int, dest: Path) -> Path:
    """flights x k as Parquet (the copies keep their months, so every split grows k times)."""
    import duckdb

    from mlops_nb import config, ingest

    src = ingest.resolve_sources(config.load(ROOT / "settings.ini", environ={}))["flights"]
    with tempfile.TemporaryDirectory() as tmp:
        reader = ingest._reader("flights", src, Path(tmp))
        con = duckdb.connect()
        con.execute(f"COPY (SELECT f.* FROM {reader} AS f, range({k})) TO '{dest}' (FORMAT parquet)")
        con.close()
    return dest


def row(label: str, secs: float, mib: float) -> str:
    return f"  {label:<34} {secs:8.2f} s   {mib:8.0f} MiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", default="1,3,10", help="flights replication factors (default 1,3,10)")
    ap.add_argument("--skip-plain", action="store_true", help="skip the plain Ploomber baseline")
    args = ap.parse_args()
    mlops = [str(BIN / "mlops-nb"), "run", "--quiet"]
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-") as tmp:
        tmp = Path(tmp)
        ours = make_project(tmp / "ours")
        results["ours full"] = measure(mlops, ours)
        results["ours no-op"] = measure(mlops, ours)
        results["ours param change"] = measure(mlops + ["-p", "model.learning_rate=0.05"], ours)
        print("mlops-nb run (notebooks in-process):")
        for k in ("ours full", "ours no-op", "ours param change"):
            print(row(k[5:], *results[k]))

        if not args.skip_plain:
            plain = make_project(tmp / "plain")
            plain_env_yaml(plain)
            ploomber = [str(BIN / "ploomber"), "build"]
            results["plain full"] = measure(ploomber, plain)
            results["plain no-op"] = measure(ploomber, plain)
            plain_env_yaml(plain, {"model.learning_rate": "0.05"})
            results["plain param change"] = measure(ploomber, plain)
            print("plain `ploomber build` (papermill kernels):")
            for k in ("plain full", "plain no-op", "plain param change"):
                print(row(k[6:], *results[k]))
            print("ratios (ploomber / mlops-nb; > 1 means mlops-nb is faster or smaller):")
            for what, target in (("full", 2.0), ("no-op", 5.0), ("param change", None)):
                t = results[f"plain {what}"][0] / results[f"ours {what}"][0]
                m = results[f"plain {what}"][1] / results[f"ours {what}"][1]
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
