"""Serving speed: our BentoML service (compiled, and today's scikit-learn path) against bare Starlette
serving the same compiled model with the same feature code.

Builds a small project (3 months of flights) to get a champion (the gate compiles it), then, one server at a
time on 127.0.0.1 (no two measured servers share the 2 cores):
  ours          `mlops-nb serve`: compiled inference, request profiling on
  ours-sklearn  the same with serving.compiled = false (scikit-learn on the NumPy input)
  ours-noprof   ours with serving.profile_requests = false (no whylogs profiles; the logs still written)
  ours-nolog    ours-noprof with serving.log_predictions = false too (what the prediction and request logs cost)
  bare          bench/bare_app.py: Starlette + uvicorn, the same feature code (the online store's lookup of the
                fields the record leaves out, then the Scorer, compiled), no validation, no logging
For each round (the servers' order turns each round) a server is started, warmed up, left until its
process tree is idle (its recorder process imports whylogs once, at start), measured with wrk
(POST /predict, one flight record) at 16 concurrent connections (wrk) and by a Python client one request at
a time (each request timed by the client: wrk's latency figures at 1 connection were seen inconsistent, their
mean x count several times the run's length, see ``busy``), then left idle until its recorder's
process is done (PROFILE_SECONDS and a margin), its process tree's CPU read, and stopped, before
the next one starts. Figures are medians over rounds. The profiling cost is end to end, on the server's
process tree at 16 concurrent, ours against ours-noprof in ``--pairs`` extra pairs run back to back (the
median of the pairs): the CPU a request that profiling adds, as a share of ours-noprof's whole tree. The
flag changes one process of the tree, the recorder's (the workers queue and hand over the same rows
either way: serving/recorder.py), so what it adds is that process's CPU on against off. The whole tree's
difference is printed beside it: the same cost plus the workers' drift between two server processes (their
CPU a request was seen 236-361 us for identical servers on this machine, far above a 3% cost). The logs'
cost, ours-noprof against ours-nolog, is printed too (no target).
Then POST /predict_batch with 10,000 rows a request (ours and ours-sklearn, 2 concurrent), and in process
the model-only time of one row: the classifier's predict_proba against the compiled form.

Targets (issue #9), as ratios of the same run: ours at 16 concurrent >= 8x the requests/s of ours-sklearn;
>= 0.8x bare; p99 at 1 concurrent <= 3x bare's; model-only one row >= 50x faster compiled; /predict_batch
rows/s not below ours-sklearn's; profiling < 3% of the server's CPU a request.

    .venv/bin/python bench/serving.py [--seconds 8] [--rounds 3] [--pairs 4] [--json]
Needs wrk (Debian package `wrk`; `make bench-serving` installs it).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SAMPLE = ["-p", "data.months=1-3", "-p", "split.train_months=1", "-p", "split.valid_months=2",
          "-p", "split.test_months=3"]
RECORD = {"year": 2013, "month": 3, "day": 14, "sched_dep_time": 1725, "sched_arr_time": 2015, "carrier": "UA",
          "origin": "EWR", "dest": "ORD", "distance": 719.0, "plane_year": 2004.0, "plane_seats": 191.0,
          "temp": 41.0, "dewp": 30.0, "humid": 64.0, "wind_dir": 300.0, "wind_speed": 12.7, "precip": 0.0,
          "pressure": 1021.0, "visib": 10.0}
BATCH_ROWS = 10_000
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}) for {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} not ready after {timeout} s")


def wrk(url: str, script: Path, conns: int, seconds: int) -> dict:
    """One wrk run: requests/s, requests, p50 and p99 (ms), non-2xx answers, and ``busy``, a check of wrk's
    latency figures: mean latency x requests / (connections x duration) cannot exceed 1 (a connection waits
    for one answer at a time); wrk's histogram at 1 connection was seen over 2, its p99 then tens of ms where
    a Python client saw 1 ms: read p99 with it."""
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, timeout=seconds + 120).stdout
    took = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m),", out)
    requests = int(took.group(1))
    wall = float(took.group(2)) * {"ms": 1e-3, "s": 1.0, "m": 60.0}[took.group(3)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    avg = _ms(re.search(r"Latency\s+(\S+)", out).group(1))
    lat = {p: _ms(re.search(rf"^\s+{p}%\s+(\S+)", out, re.M).group(1)) for p in ("50", "99")}
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "requests": requests,
            "p50": lat["50"], "p99": lat["99"], "errors": int(non2xx.group(1)) if non2xx else 0,
            "busy": avg * requests / 1e3 / (conns * wall)}


def one_at_a_time(port: int, body: str, seconds: int) -> dict:
    """POST /predict one request at a time over one keep-alive connection (http.client), each timed:
    requests/s, requests, p50 and p99 (ms), non-2xx answers."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    latencies, errors = [], 0
    started = time.perf_counter()
    end = started + seconds
    while (t := time.perf_counter()) < end:
        conn.request("POST", "/predict", body, headers)
        answer = conn.getresponse()
        answer.read()
        latencies.append((time.perf_counter() - t) * 1e3)
        errors += not 200 <= answer.status < 300
    conn.close()
    wall = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / wall, "requests": len(latencies), "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], "errors": errors}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def tree_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) used so far by a server's process tree (``tree``: workers and the
    recorder's process), and by the recorder's process alone (``recorder``: it writes the logs and runs
    whylogs)."""
    import psutil

    root = psutil.Process(pid)
    used = {"tree": 0.0, "recorder": 0.0}
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()  # with the children it has waited for (a profile's forked half)
            seconds = t.user + t.system + t.children_user + t.children_system
            used["tree"] += seconds
            if "mlops_nb.serving.writer" in p.cmdline():
                used["recorder"] += seconds
        except psutil.Error:
            pass
    return used


def dropped_rows(url: str) -> int:
    """Rows the server's recorder could not queue so far (its /metrics): the logs and profiles kept up if 0."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("mlops_nb_recorder_dropped_rows_total")))


def settle(pid: int, timeout: float = 120) -> None:
    """Wait until a server's process tree is idle (under 2% of a CPU over half a second): what it does once
    after start-up (the recorder's process importing whylogs) is no request's cost."""
    deadline = time.monotonic() + timeout
    used = tree_cpu(pid)["tree"]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = tree_cpu(pid)["tree"]
        if now - used < 0.01:
            return
        used = now


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextlib.contextmanager
def server(spec: tuple, project: Path, env: dict, one: Path):
    """(process, port, url) of a server started from ``spec`` (command, extra environment, whether it profiles
    requests), warmed up and left until its process tree is idle; stopped on exit. A server that profiles is
    first left until its recorder has profiled the warm-up's rows: whylogs sets a profile's columns up at its
    first rows (tens of ms, once a profile window and worker: an hour of traffic), which is no request's cost
    and, in a run of seconds, would be counted as several microseconds a request."""
    from mlops_nb.serving.writer import PROFILE_SECONDS

    cmd, extra, profiles = spec
    port = free_port()
    proc = subprocess.Popen([c.replace("{port}", str(port)) for c in cmd], cwd=project,
                            env={**env, **extra, "MLOPS_NB_SERVING__MAX_ROWS": str(BATCH_ROWS)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/readyz", proc)
        wrk(f"{url}/predict", one, 4, 2)  # warm-up
        if profiles:
            time.sleep(PROFILE_SECONDS + 2)
        settle(proc.pid)
        yield proc, port, url
    finally:
        stop(proc)


def build_project(tmp: Path) -> tuple[Path, dict, str]:
    """(project folder, environment, champion tag): this repository's settings, pipeline and task notebooks
    in ``tmp/project``, run on 3 months of the bundled flights (about 20 s)."""
    project = tmp / "project"
    project.mkdir()
    for rel in ("settings.ini", "pipeline.yaml", "features.yaml", "notebooks/tasks"):
        src = ROOT / rel
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, project / rel)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_NB_", "BENTOML_HOME"))}
    env["MLOPS_NB_SETTINGS"] = str(project / "settings.ini")
    subprocess.run([str(BIN / "mlops-nb"), "run", "--quiet", *SAMPLE], cwd=project, env=env, check=True,
                   capture_output=True, timeout=900)
    tag = json.loads(subprocess.run([str(BIN / "mlops-nb"), "models", "show", "champion", "--json"],
                                    cwd=project, env=env, check=True, capture_output=True, text=True).stdout)["tag"]
    return project, env, tag


def model_only(project: Path, env: dict) -> dict:
    """One row, the classifier alone (single-threaded, as served): scikit-learn against the compiled form,
    in a child process with the project's settings (the median of 2,000 calls each)."""
    code = """
import json, time, statistics
from threadpoolctl import threadpool_limits
from mlops_nb import config, registry
from mlops_nb.data import warehouse
from mlops_nb.registry import inference
from mlops_nb.lib.transforms import record_arrays
record = json.loads(__import__("sys").argv[1])
settings = config.load()
config.use_bentoml_home(settings.path("bentoml_home"))
with warehouse.connect(settings=settings) as con:
    entry = registry.served(con)["champion"]
estimator, info = registry.load(entry["tag"], entry["sha256"])
compiled = inference.Compiled(registry.load_compiled(entry["tag"], info))
plan = inference.encoding_plan(estimator)
X = plan.matrix(record_arrays([record]))
def median_ms(f):
    for _ in range(200):
        f()
    times = []
    for _ in range(2000):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3
with threadpool_limits(1):
    print(json.dumps({"sklearn_ms": median_ms(lambda: plan.classifier.predict_proba(X)),
                      "compiled_ms": median_ms(lambda: compiled.predict(X)),
                      "max_rows": info["compiled"]["max_rows"]}))
"""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(RECORD)], cwd=project, env=env, check=True,
                         capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    from mlops_nb.serving.writer import PROFILE_SECONDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=4,
                    help="pairs of ours and ours-noprof run back to back for profiling's cost (0: from the rounds)")
    ap.add_argument("--json", action="store_true", help="one JSON object with the figures and ratios")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (or `make bench-serving`)")
    say = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-serving-") as tmp:
        tmp = Path(tmp)
        project, env, tag = build_project(tmp)
        servers = {  # name -> (command, extra environment, whether it profiles requests)
            "ours": ([str(BIN / "mlops-nb"), "serve", "--port", "{port}"], {}, True),
            "ours-sklearn": ([str(BIN / "mlops-nb"), "serve", "--port", "{port}"],
                             {"MLOPS_NB_SERVING__COMPILED": "false"}, True),
            "ours-noprof": ([str(BIN / "mlops-nb"), "serve", "--port", "{port}"],
                            {"MLOPS_NB_SERVING__PROFILE_REQUESTS": "false"}, False),
            "ours-nolog": ([str(BIN / "mlops-nb"), "serve", "--port", "{port}"],
                           {"MLOPS_NB_SERVING__PROFILE_REQUESTS": "false", "MLOPS_NB_SERVING__LOG_PREDICTIONS": "false"},
                           False),
            "bare": ([sys.executable, str(ROOT / "bench" / "bare_app.py"), tag, "{port}"],
                     {"BENTOML_HOME": str(project / "data" / "bentoml")}, False),
        }
        one = tmp / "one.lua"
        body = json.dumps({"flights": [RECORD]})
        one.write_text(LUA % body)
        batch = tmp / "batch.lua"
        batch.write_text(LUA % json.dumps({"columns": {k: [v] * BATCH_ROWS for k, v in RECORD.items()}}))
        results: dict = {}
        batches: dict = {}

        def measure(name: str, port: int, url: str, conns: int, pid: int) -> dict:
            before = tree_cpu(pid)
            r = (one_at_a_time(port, body, args.seconds) if conns == 1 else
                 wrk(f"{url}/predict", one, conns, args.seconds))
            if name != "bare":  # let the recorder's process log and profile what came (on its clock)
                time.sleep(PROFILE_SECONDS + 4)
            after = tree_cpu(pid)
            r["cpu_ms"], r["recorder_cpu_ms"] = ((after[k] - before[k]) / max(r["requests"], 1) * 1e3
                                                 for k in ("tree", "recorder"))
            r["dropped_rows"] = 0 if name == "bare" else dropped_rows(url)
            return r

        names = list(servers)
        for i in range(args.rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                with server(servers[name], project, env, one) as (proc, port, url):
                    for conns in (1, 16):
                        r = measure(name, port, url, conns, proc.pid)
                        results.setdefault((name, conns), []).append(r)
                        say(f"  round {i + 1} {name:<12} c={conns:<2} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms"
                            f"  p99 {r['p99']:7.2f} ms  cpu {r['cpu_ms']:.3f} ms/request  non-2xx {r['errors']}")
                    if name in ("ours", "ours-sklearn"):
                        b = wrk(f"{url}/predict_batch", batch, 2, args.seconds)
                        batches.setdefault(name, []).append(b["rps"] * BATCH_ROWS)
                        say(f"  round {i + 1} {name:<12} /predict_batch {BATCH_ROWS} rows: "
                            f"{b['rps'] * BATCH_ROWS:,.0f} rows/s (p50 {b['p50']:.0f} ms, non-2xx {b['errors']})")
        # profiling's cost is a few percent of a request's CPU, under this machine's noise between rounds
        # minutes apart: measured again in pairs, ours and ours-noprof one right after the other (the order
        # turning), the cost the median of the pairs' ratios
        pairs, tree_pairs = [], []
        for i in range(args.pairs):
            cpu = {}
            for name in (("ours", "ours-noprof") if i % 2 == 0 else ("ours-noprof", "ours")):
                with server(servers[name], project, env, one) as (proc, port, url):
                    cpu[name] = measure(name, port, url, 16, proc.pid)
            on, off = cpu["ours"], cpu["ours-noprof"]
            pairs.append((on["recorder_cpu_ms"] - off["recorder_cpu_ms"]) / off["cpu_ms"])
            tree_pairs.append(on["cpu_ms"] / off["cpu_ms"] - 1)
            say(f"  pair {i + 1}: ms CPU/request, tree (recorder's process) ours {on['cpu_ms']:.4f} "
                f"({on['recorder_cpu_ms']:.4f}), ours-noprof {off['cpu_ms']:.4f} ({off['recorder_cpu_ms']:.4f}): "
                f"profiling {pairs[-1]:+.2%} (whole tree {tree_pairs[-1]:+.1%})")
        model = model_only(project, env)

    med = {f"{name} c={conns}": {k: statistics.median(r[k] for r in rs)
                                  for k in ("rps", "p50", "p99", "cpu_ms", "recorder_cpu_ms")}
           for (name, conns), rs in results.items()}
    errors = sum(r["errors"] for rs in results.values() for r in rs)
    dropped = sum(r["dropped_rows"] for rs in results.values() for r in rs)
    rows_per_s = {name: statistics.median(v) for name, v in batches.items()}
    ratios = {
        "ours_vs_sklearn_rps_c16": med["ours c=16"]["rps"] / med["ours-sklearn c=16"]["rps"],
        "ours_vs_bare_rps_c16": med["ours c=16"]["rps"] / med["bare c=16"]["rps"],
        "ours_vs_bare_p99_c1": med["ours c=1"]["p99"] / med["bare c=1"]["p99"],
        "model_only_speedup": model["sklearn_ms"] / model["compiled_ms"],
        "batch_rows_vs_sklearn": rows_per_s["ours"] / rows_per_s["ours-sklearn"],
        "profiling_cpu_share": statistics.median(pairs) if pairs else
        (med["ours c=16"]["recorder_cpu_ms"] - med["ours-noprof c=16"]["recorder_cpu_ms"])
        / med["ours-noprof c=16"]["cpu_ms"],
    }
    logging_share = med["ours-noprof c=16"]["cpu_ms"] / med["ours-nolog c=16"]["cpu_ms"] - 1
    targets = {"ours_vs_sklearn_rps_c16": (">=", 8.0), "ours_vs_bare_rps_c16": (">=", 0.8),
               "ours_vs_bare_p99_c1": ("<=", 3.0), "model_only_speedup": (">=", 50.0),
               "batch_rows_vs_sklearn": (">=", 1.0), "profiling_cpu_share": ("<", 0.03)}
    met = {k: (ratios[k] >= t if op == ">=" else ratios[k] <= t if op == "<=" else ratios[k] < t)
           for k, (op, t) in targets.items()}
    report = {"rounds": args.rounds, "seconds": args.seconds, "servers": med, "non_2xx": errors,
              "recorder_dropped_rows": dropped,
              "batch_rows_per_s": rows_per_s, "model_only_one_row": model, "ratios": ratios,
              "logging_cpu_share": logging_share, "profiling_pairs": pairs,
              "profiling_pairs_whole_tree": tree_pairs,
              "targets": {k: f"{op} {t}" for k, (op, t) in targets.items()}, "met": met}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"POST /predict, one record, {args.rounds} rounds of {args.seconds} s, one server at a time (medians):")
    print(f"  {'server':<14} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11}")
    for key, m in med.items():
        print(f"  {key:<14} {m['rps']:9.0f} {m['p50']:8.2f} {m['p99']:8.2f} {m['cpu_ms']:11.3f}")
    print(f"  non-2xx answers: {errors}")
    print(f"  rows the recorder dropped (a full queue: the logs fell behind): {dropped}")
    print(f"POST /predict_batch, {BATCH_ROWS} rows a request, 2 concurrent: " +
          ", ".join(f"{n} {v:,.0f} rows/s" for n, v in rows_per_s.items()))
    print(f"model only, one row: scikit-learn {model['sklearn_ms']:.4f} ms, compiled {model['compiled_ms']:.4f} ms "
          f"(compiled used up to {model['max_rows']} rows a request)")
    print("ratios (target):")
    for k, v in ratios.items():
        op, t = targets[k]
        print(f"  {k:<26} {v:8.3f}  ({op} {t}: {'met' if met[k] else 'MISSED'})")
    print(f"  {'logging_cpu_share':<26} {logging_share:8.3f}  (the prediction and request logs; no target)")
    if tree_pairs:
        print(f"  profiling, whole tree on/off (with the workers' drift): median {statistics.median(tree_pairs):+.3f}"
              f" of {len(tree_pairs)} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
