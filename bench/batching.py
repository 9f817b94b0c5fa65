"""Adaptive batching: does BentoML's `batchable=True` pay for our one-row POST /predict? (issue #9)

How BentoML 1.4.40 batches (new `@bentoml.service` SDK; `_bentoml_impl/server/app.py`,
`bentoml/_internal/marshal/dispatcher.py`): no separate runner and no extra process or hop. Each worker's
HTTP app holds a `CorkDispatcher` per batchable API, on the same event loop as the HTTP handling. A request
is parsed and validated as usual, then queued (a Job with a future); a controller task, polling in 1 ms
ticks, releases the queue as one call (at most one batch in flight, `max_batch_size` rows at most) when its
cost model (batch duration = a * n + b, fitted on the last 50 batches) says waiting longer would not pay;
the inputs are concatenated along `batch_dim` (lists: `list.extend`), the API function is called once
(awaited on the loop when it is `async def`, else in a thread), and the outputs are sliced back to each
request. A queued request whose estimated latency reaches `max_latency_ms` is answered 503 "process is
overloaded". Every request still pays its own HTTP parsing, pydantic validation and JSON answer: batching
only shares the API function's call.

Builds a small project as bench/serving.py does (3 months of flights, about 20 s), loads its champion's
`Scorer` (compiled) and serves, one server at a time on 127.0.0.1, minimal BentoML services written into
the temporary folder, the same settings as ours (async, tracing excluded from /predict, access log off,
gc.freeze at start-up, one worker, one OpenMP thread), the same request shape and validation as our
/predict (`{"flights": [record]}`, the `flights` field of `schemas.request_models`), each answering a list
of probabilities:
  plain        `async def predict(flights)`: scores each request
  batch-Nms    the same function with `batchable=True, batch_dim=0, max_batch_size=M, max_latency_ms=N`
Each server is warmed up, then measured with wrk at each concurrency (default 1 and 16), then at 1 again
("c=1 after": whether single requests stay slow after a burst). req/s counts 2xx answers only (the
batched servers answer some requests 503 under load: "non-2xx"). Rounds turn the servers' order; figures
are medians over rounds; ratios are batch/plain. For batched servers the mean batch size comes from
BentoML's own `bentoml_service_adaptive_batch_size` histogram (/metrics). Last, in a child process, the API
function alone (`Scorer.predict` on validated records) by rows a call: what batching could share at most.
Trust req/s and p50 more than p99: wrk's latency histogram can exceed the wall clock (wg/wrk#438, #114),
so each measurement is checked (mean latency x requests <= connections x duration) and flagged if not.

    .venv/bin/python bench/batching.py [--seconds 6] [--rounds 2] [--latencies 5,20] [--max-batch-size 64]
                                       [--conns 1,16] [--json]
Needs wrk (Debian package `wrk`). About 5 minutes with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import LUA, RECORD, build_project, free_port, stop, tree_cpu, wait_ready, wrk  # noqa: E402

BIN = Path(sys.executable).parent
MAX_ROWS = 64  # rows a request may carry (the request model's limit); one is sent

SERVICE = '''"""bench/batching.py: {doc}"""
import gc
import os
from typing import Annotated

import bentoml
from threadpoolctl import threadpool_limits

from mlops_nb import registry
from mlops_nb.data import warehouse
from mlops_nb.registry import inference
from mlops_nb.serving.schemas import request_models

PredictRequest, _ = request_models({max_rows})
_FIELD = PredictRequest.model_fields["flights"]
Flights = Annotated[(_FIELD.annotation, *_FIELD.metadata)]  # list[FlightRecord], 1 to {max_rows} of them


@bentoml.service(name="{name}", workers=1, http={{"host": "127.0.0.1"}}, traffic={{"timeout": 60}},
                 logging={{"access": {{"enabled": False}}}}, tracing={{"excluded_urls": ["/predict"]}})
class {cls}:
    def __init__(self) -> None:
        threadpool_limits(1)
        tag = os.environ["BENCH_TAG"]
        with warehouse.connect() as con:
            estimator, info = registry.load_version(con, tag)
        blob = registry.load_compiled(tag, info)
        self.scorer = inference.Scorer(estimator, inference.Compiled(blob) if blob else None,
                                       (info.get("compiled") or {{}}).get("max_rows", 0))

    @bentoml.on_startup
    def _start(self) -> None:
        gc.collect()
        gc.freeze()

    @bentoml.api(route="/predict"{api_args})
    async def predict(self, flights: Flights) -> list[float]:
        """P(late) for each record (batched: the records of every request in the batch)."""
        return self.scorer.predict([f.__dict__ for f in flights]).tolist()
'''


def write_service(folder: Path, name: str, latency_ms: int | None, max_batch: int) -> str:
    """A service file for ``name``; returns the `bentoml serve` target."""
    module = "svc_" + re.sub(r"\W", "_", name)
    cls = "Bench" + re.sub(r"\W", "", name.title())
    if latency_ms is None:
        api_args, doc = "", "plain async API, one call a request"
    else:
        api_args = f", batchable=True, batch_dim=0, max_batch_size={max_batch}, max_latency_ms={latency_ms}"
        doc = f"adaptive batching, max_latency_ms={latency_ms}, max_batch_size={max_batch}"
    (folder / f"{module}.py").write_text(SERVICE.format(doc=doc, max_rows=MAX_ROWS, name=module, cls=cls,
                                                        api_args=api_args))
    return f"{module}:{cls}"


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of BentoML's adaptive batch size histogram: rows and batches so far."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = {"sum": 0.0, "count": 0.0}
    for m in re.finditer(r"^bentoml_service_adaptive_batch_size_(sum|count)\{[^}]*\}\s+(\S+)$", text, re.M):
        total[m.group(1)] += float(m.group(2))
    return total["sum"], total["count"]


def answer(url: str) -> list:
    req = urllib.request.Request(f"{url}/predict", data=json.dumps({"flights": [RECORD]}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def function_only(project: Path, env: dict, sizes=(1, 4, 8, 16, 64)) -> dict:
    """What one call of the API function costs (``Scorer.predict`` on validated records, one thread), by
    rows a call: the most batching can share. In a child process with the project's settings (median of
    1,000 calls each); ms a call and ms a row."""
    code = """
import json, os, statistics, sys, time
from threadpoolctl import threadpool_limits
from mlops_nb import registry
from mlops_nb.data import warehouse
from mlops_nb.registry import inference
from mlops_nb.serving.schemas import FlightRecord
threadpool_limits(1)
tag = os.environ["BENCH_TAG"]
with warehouse.connect() as con:
    estimator, info = registry.load_version(con, tag)
blob = registry.load_compiled(tag, info)
scorer = inference.Scorer(estimator, inference.Compiled(blob) if blob else None,
                          (info.get("compiled") or {}).get("max_rows", 0))
record = FlightRecord(**json.loads(sys.argv[1]))
out = {"path": scorer.path}
for n in json.loads(sys.argv[2]):
    rows = [record] * n
    f = lambda: scorer.predict([r.__dict__ for r in rows]).tolist()
    for _ in range(100):
        f()
    times = []
    for _ in range(1000):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    ms = statistics.median(times) * 1e3
    out[str(n)] = {"ms_per_call": ms, "ms_per_row": ms / n}
print(json.dumps(out))
"""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(RECORD), json.dumps(list(sizes))], cwd=project,
                         env=env, check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6, help="wrk duration of each measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--latencies", default="5,20", help="max_latency_ms of the batched servers, comma-separated")
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--conns", default="1,16", help="concurrent connections, comma-separated")
    ap.add_argument("--json", action="store_true", help="one JSON object with the figures and ratios")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk (or `make bench-serving`)")
    say = (lambda *a, **k: print(*a, file=sys.stderr, flush=True, **k)) if args.json else \
        (lambda *a, **k: print(*a, flush=True, **k))
    latencies = [int(x) for x in args.latencies.split(",") if x.strip()]
    conns = [int(x) for x in args.conns.split(",") if x.strip()]
    steps = [(f"c={c}", c) for c in conns] + ([("c=1 after", 1)] if max(conns) > 1 else [])
    load_before = load_average()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mlops-nb-bench-batching-") as tmp:
        tmp = Path(tmp)
        say("building a small project (about 20 s)...")
        project, env, tag = build_project(tmp)
        env.update({"BENTOML_HOME": str(project / "data" / "bentoml"), "BENTOML_DO_NOT_TRACK": "true",
                    "BENCH_TAG": tag})
        services = tmp / "services"
        services.mkdir()
        servers = {"plain": write_service(services, "plain", None, args.max_batch_size)}
        for ms in latencies:
            servers[f"batch-{ms}ms"] = write_service(services, f"batch-{ms}ms", ms, args.max_batch_size)
        lua = tmp / "one.lua"
        lua.write_text(LUA % json.dumps({"flights": [RECORD]}))
        results: dict = {}
        answers: dict = {}
        names = list(servers)
        for i in range(args.rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                port = free_port()
                proc = subprocess.Popen([str(BIN / "bentoml"), "serve", servers[name], "--host", "127.0.0.1",
                                         "--port", str(port), "--working-dir", str(services)],
                                        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                try:
                    url = f"http://127.0.0.1:{port}"
                    wait_ready(f"{url}/readyz", proc)
                    answers.setdefault(name, answer(url))
                    wrk(f"{url}/predict", lua, 4, 2)  # warm-up (and the dispatcher's training batches)
                    time.sleep(1)
                    for label, c in steps:
                        before_cpu = tree_cpu(proc.pid)["tree"]
                        before_batches = batch_stats(url)
                        r = wrk(f"{url}/predict", lua, c, args.seconds)
                        rows, batches = (a - b for a, b in zip(batch_stats(url), before_batches))
                        r["cpu_ms"] = (tree_cpu(proc.pid)["tree"] - before_cpu) / max(r["requests"], 1) * 1e3
                        r["mean_batch"] = rows / batches if batches else None
                        r["ok_rps"] = r["rps"] * (r["requests"] - r["errors"]) / max(r["requests"], 1)
                        results.setdefault((name, label), []).append(r)
                        batch = f"  mean batch {r['mean_batch']:5.2f}" if r["mean_batch"] else ""
                        say(f"  round {i + 1} {name:<11} {label:<9} {r['ok_rps']:7.0f} req/s  p50 {r['p50']:6.2f} ms  "
                            f"p99 {r['p99']:7.2f} ms  cpu {r['cpu_ms']:.3f} ms/req  non-2xx {r['errors']}{batch}"
                            + (f"  (wrk latency suspect: busy {r['busy']:.2f})" if r["busy"] > 1.05 else ""))
                        time.sleep(1)
                finally:
                    stop(proc)
        function = function_only(project, env, sorted({1, 4, 8, 16, args.max_batch_size}))
    elapsed = time.monotonic() - started

    def med(rs, k):
        values = [r[k] for r in rs if r[k] is not None]
        return statistics.median(values) if values else None

    table = {f"{name} {label}": {k: med(rs, k) for k in ("ok_rps", "p50", "p99", "cpu_ms", "mean_batch", "busy")} |
             {"non_2xx": sum(r["errors"] for r in rs)} for (name, label), rs in results.items()}
    ratios = {}
    for name in names[1:]:
        for label, _ in steps:
            b, p = table[f"{name} {label}"], table[f"plain {label}"]
            ratios[f"{name} {label}"] = {"ok_rps": b["ok_rps"] / p["ok_rps"], "p50": b["p50"] / p["p50"],
                                         "p99": b["p99"] / p["p99"], "cpu_ms": b["cpu_ms"] / p["cpu_ms"]}
    p_late = {name: a[0] for name, a in answers.items()}
    report = {"rounds": args.rounds, "seconds": args.seconds, "max_batch_size": args.max_batch_size,
              "request": "POST /predict {\"flights\": [one record]}", "servers": table, "ratios_vs_plain": ratios,
              "function_only": function,
              "same_answer": len(set(p_late.values())) == 1, "p_late": p_late,
              "load_average_before": load_before, "load_average_after": load_average(),
              "elapsed_s": round(elapsed, 1)}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"POST /predict, one record, {args.rounds} rounds of {args.seconds} s, one server at a time (medians; "
          f"max_batch_size {args.max_batch_size}; req/s counts 2xx answers only):")
    print(f"  {'server':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} {'mean batch':>11} "
          f"{'non-2xx':>8}")
    for key, m in table.items():
        mb = f"{m['mean_batch']:11.2f}" if m["mean_batch"] else f"{'-':>11}"
        print(f"  {key:<22} {m['ok_rps']:8.0f} {m['p50']:8.2f} {m['p99']:8.2f} {m['cpu_ms']:11.3f} {mb} "
              f"{m['non_2xx']:8d}")
    suspect = [k for k, m in table.items() if m["busy"] > 1.05]
    if suspect:
        print(f"  wrk's latencies exceed the wall clock (mean latency x requests > connections x duration) for: "
              f"{', '.join(suspect)}: their p99 is not to be trusted")
    print("ratios batch/plain (2xx req/s above 1 and latencies below 1 favour batching):")
    print(f"  {'server':<22} {'req/s':>8} {'p50':>8} {'p99':>8} {'CPU/req':>8}")
    for key, r in ratios.items():
        print(f"  {key:<22} {r['ok_rps']:8.3f} {r['p50']:8.3f} {r['p99']:8.3f} {r['cpu_ms']:8.3f}")
    print(f"the API function alone ({function['path']}), by rows a call: " + ", ".join(
        f"{n} rows {v['ms_per_call']:.3f} ms ({v['ms_per_row']:.4f} ms/row)" for n, v in function.items() if n != "path"))
    print(f"same answer from every server: {report['same_answer']} ({p_late})")
    print(f"load average before {load_before}, after {report['load_average_after']}; {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
