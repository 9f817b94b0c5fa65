"""The reports site: ``<reports_dir>/index.html`` and the pages it links, the project's home page offline.

Plain HTML with inline CSS and inline SVG (the chart of metrics over runs, the lineage graphs): no script,
no remote resource, relative links only, so that it reads the same from ``file://`` and from
``python -m http.server``. Every value is escaped.

    index.html                  runs (status, trigger, changed parameters, metrics), the metrics chart,
                                the aliases, the latest task reports and other pages (monitoring.html)
    site/models.html            the registry: aliases, versions with their gate decisions, the audit log,
                                the Bentos built from this project's store
    site/model-<version>.html   one version: its lineage graph (snapshot -> feature set -> run -> model
                                -> Bento), metrics, every registration and its gate decision
    site/run-<run id>.html      one run: tasks and their reports, lineage, what changed since the
                                previous run that did not fail (parameters and metrics side by side)
    runs/<run id>/<task>.html   the task reports of one run, kept per run; a task a run did not re-run
                                is a hard link to the report it reused; a failed run keeps its failed
                                task's report; ``mlops-nb gc`` prunes the folders of runs it no longer
                                keeps (``gc.keep_runs``)
    <task>.html                 the latest report of each task (a hard link of its per-run copy; the
                                address a run prints and earlier versions used)

A write reads the warehouse read-only in one short connection, and only when it changed since the last
write (its size and modification time are kept with the data read, in ``site/.cache.json``, where the runs'
parameters and library versions are stored once each, however many runs share them); an up-to-date
run, which never opens DuckDB, adds its record from the pending file. When neither the warehouse nor the
files the pages name changed, only the index and the new runs' pages are rendered; only pages whose text
changed are written, each atomically. A write takes no lock: a run started meanwhile is not refused.
"""
from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import config
from . import records

SITE_DIR = "site"            # the site's own pages, below the reports folder
RUNS_DIR = "runs"            # task reports kept per run
FAILED_DIR = "failed"        # the last failed task's partial notebook (transaction._keep_failed_notebook)
INDEX = "index.html"
CACHE_FILE = ".cache.json"   # the warehouse's data as last read, with the warehouse's size and time
PAGES_FILE = ".pages.json"   # each page's digest as last written
CACHE_FORMAT = 2             # bump when the cached data's shape changes
METRICS = ("roc_auc", "log_loss", "brier", "accuracy")
INDEX_RUNS = 100             # runs in the index's table and chart (older ones: a list of links), so that the
                             # index an up-to-date run writes stays cheap however long the history
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # run ids and versions that may name a file


@dataclass
class Written:
    index: Path
    pages: int                                     # pages the site has
    written: list[Path] = field(default_factory=list)  # pages whose text changed (the others were left alone)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {"index": str(self.index), "pages": self.pages, "written": [str(p) for p in self.written],
                "seconds": round(self.seconds, 4)}


# --------------------------------------------------------------------------------------------------
# where things are


def reports_dir(settings: config.Settings) -> Path:
    return settings.path("reports_dir")


def runs_root(settings: config.Settings) -> Path:
    return reports_dir(settings) / RUNS_DIR


def run_reports_dir(settings: config.Settings, run_id: str) -> Path:
    """Where the task reports of run ``run_id`` are kept."""
    return runs_root(settings) / run_id


def link(src: Path, dest: Path) -> None:
    """``dest`` becomes ``src``'s bytes: a hard link (no space used), a copy where links are refused;
    atomic, and idempotent (a run finished twice after a crash links again)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dest)


def keep_reports(settings: config.Settings, record: records.RunRecord) -> None:
    """After a run committed: the reports of the tasks it did not re-run (up to date) join its folder, as
    links to the latest reports, which are theirs; so every kept run's folder holds all its tasks. One that
    cannot be linked (nor copied) is left out: the run's page then links the earlier run's copy."""
    if not _SAFE.match(record.run_id):
        return
    top = reports_dir(settings)
    folder = run_reports_dir(settings, record.run_id)
    for task in record.tasks:
        src = top / f"{task.name}.html"
        if task.status == "skipped" and src.is_file() and not (folder / src.name).exists():
            try:
                link(src, folder / src.name)
            except OSError:
                continue


# --------------------------------------------------------------------------------------------------
# the data: the warehouse (cached while it is unchanged), the pending up-to-date runs, the file system


def _warehouse_key(settings) -> list | None:
    path = settings.path("warehouse")
    key = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
        except FileNotFoundError:
            key.append(None)
            continue
        key.append([st.st_size, st.st_mtime_ns])
    return None if key[0] is None else key


def _read_warehouse(settings) -> dict:
    """Everything the pages show from the warehouse, as JSON-ready values, in one read-only connection."""
    from .. import registry
    from ..data import warehouse

    data = {"runs": [], "versions": [], "registrations": {}, "aliases": {}, "audit": [], "snapshots": {},
            "feature_sets": {}}
    with warehouse.connect(settings=settings) as con:
        if warehouse.has_table(con, "runs"):
            data["runs"] = records.list_runs(con, limit=2 ** 62)
        if warehouse.has_table(con, "model_versions"):
            data["versions"] = registry.versions(con)
            data["aliases"] = registry.aliases(con)
            for v in data["versions"]:
                data["registrations"][v["version"]] = registry.registrations(con, v["version"])
            data["audit"] = registry.audit(con, limit=2 ** 62)
        if warehouse.has_table(con, "snapshots"):
            for r in warehouse.records(con, "SELECT * FROM snapshots"):
                data["snapshots"][r["snapshot_id"]] = r
        if warehouse.has_table(con, "feature_sets"):
            for r in warehouse.records(con, "SELECT * FROM feature_sets"):
                data["feature_sets"][r["feature_set_id"]] = r
    data = json.loads(json.dumps(data, default=_plain))
    shared: dict[str, int] = {}  # the runs' parameters and library versions, each distinct one kept once
    for r in data["runs"]:
        for k in _SHARED:
            r[k] = shared.setdefault(json.dumps(r.get(k) or {}, sort_keys=True), len(shared))
    data["shared"] = [json.loads(text) for text in shared]
    return data


_SHARED = ("params", "versions")  # what runs mostly have in common (a no-op run repeats the one before)


def _plain(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _data(settings, cache_path: Path) -> tuple[dict, bool]:
    """The pages' data, and whether the warehouse's part came unchanged from the cache (which is written
    only when the warehouse was read)."""
    key = _warehouse_key(settings)
    cached = False
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8")) if key is not None else {}
    except (OSError, ValueError):
        cache = {}
    if key is None:
        data = {"runs": [], "versions": [], "registrations": {}, "aliases": {}, "audit": [], "snapshots": {},
                "feature_sets": {}, "shared": []}
    elif cache.get("format") == CACHE_FORMAT and cache.get("key") == key and "data" in cache:
        data, cached = cache["data"], True
    else:
        data = _read_warehouse(settings)
        key = _warehouse_key(settings)  # as read (a checkpoint on close may have touched it)
        _write_text(cache_path, json.dumps({"format": CACHE_FORMAT, "key": key, "data": data},
                                           separators=(",", ":")))
    shared = data["shared"]
    runs = [{**r, **{k: shared[r[k]] for k in _SHARED}} for r in data["runs"]]
    known = {r["run_id"] for r in runs}
    for row in records.pending_rows(settings.path("data_dir")):
        if row["run_id"] not in known:
            runs.append(row)
    runs.sort(key=lambda r: (r["started_at"] or "", r["run_id"]))  # oldest first
    return {**data, "runs": runs}, cached


def _bentos(settings) -> list[dict]:
    """The Bentos of the project's store, read without BentoML: tag, creation time, pinned models."""
    root = config.bentoml_home(settings) / "bentos"
    out = []
    if not root.is_dir():
        return out
    for name_dir in sorted(root.iterdir()):
        if not name_dir.is_dir():
            continue
        for d in sorted(name_dir.iterdir()):
            pinned = d / "src" / config.PINNED_FILE
            if not d.is_dir() or not pinned.is_file():
                continue
            try:
                models = json.loads(pinned.read_text(encoding="utf-8")).get("models") or {}
            except (OSError, ValueError):
                models = {}
            created = None
            try:
                m = re.search(r"^creation_time:\s*'?([^'\n]+)", (d / "bento.yaml").read_text(encoding="utf-8"), re.M)
                created = m.group(1).strip() if m else None
            except OSError:
                pass
            out.append({"tag": f"{name_dir.name}:{d.name}", "created": created,
                        "models": {alias: str(m.get("tag", "")) for alias, m in models.items()
                                   if isinstance(m, dict)}})
    out.sort(key=lambda b: (b["created"] or "", b["tag"]), reverse=True)
    return out


def _kept_reports(settings) -> dict[str, set[str]]:
    """run id -> the task report files kept in its folder."""
    root = runs_root(settings)
    out = {}
    if root.is_dir():
        for d in root.iterdir():
            if d.is_dir():
                out[d.name] = {f.name for f in d.iterdir() if f.suffix == ".html" and not f.name.startswith(".")}
    return out


def _other_pages(settings, tasks: set[str]) -> list[tuple[str, str]]:
    """Pages beside the task reports (the monitoring report, ...): (file name, title)."""
    out = []
    top = reports_dir(settings)
    if not top.is_dir():
        return out
    for f in sorted(top.glob("*.html")):
        if f.name == INDEX or f.stem in tasks or f.name.startswith("."):
            continue
        title = f.stem.replace("_", " ").capitalize()
        try:
            with open(f, encoding="utf-8", errors="replace") as fh:
                m = re.search(r"<title>(.*?)</title>", fh.read(4096), re.S | re.I)
            if m and m.group(1).strip():
                title = html.unescape(m.group(1).strip())
        except OSError:
            pass
        out.append((f.name, title))
    return out


# --------------------------------------------------------------------------------------------------
# writing


def write(settings: config.Settings) -> Written:
    """Write the site from what the project holds now; returns the index's path and the pages written.
    Reads the warehouse read-only, briefly; call it when no connection writes the warehouse."""
    started = time.perf_counter()
    top = reports_dir(settings)
    site = top / SITE_DIR
    state_path = site / PAGES_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = {}
    pages_before = state.get("pages") or {}
    data, cached = _data(settings, site / CACHE_FILE)
    ctx = _Context(settings, data)
    # With the warehouse and the files the pages name unchanged, only runs were added (up-to-date ones, from
    # the pending file): a page written before is still right, only the index and the new runs' pages are new
    # (an up-to-date run then renders two pages, however many runs the site lists).
    files = ctx.files_key()
    unchanged = set(pages_before) - {INDEX} if cached and state.get("files") == files else set()
    pages = ctx.pages()
    written = []
    digests = {}
    present = {f"{SITE_DIR}/{n}" for n in os.listdir(site)} if site.is_dir() else set()
    present |= {INDEX} if (top / INDEX).is_file() else set()
    for rel, render in pages.items():
        if rel in unchanged and rel in present:
            digests[rel] = pages_before[rel]
            continue
        text = render()
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        digests[rel] = digest
        path = top / rel
        if pages_before.get(rel) == digest and rel in present:
            continue
        _write_text(path, text)
        written.append(path)
    if site.is_dir():  # pages of runs and versions no longer recorded
        for f in site.glob("*.html"):
            if f"{SITE_DIR}/{f.name}" not in pages:
                f.unlink(missing_ok=True)
    _write_text(state_path, json.dumps({"pages": digests, "files": files}, separators=(",", ":")))
    return Written(top / INDEX, len(pages), written, time.perf_counter() - started)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# the pages


def e(value) -> str:
    """Escaped text (attributes included)."""
    return html.escape("" if value is None else str(value), quote=True)


_URL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def quote(name: str) -> str:
    """A file name as a link's path, percent-encoded (urllib.parse's quote, without importing it)."""
    return "".join(c if c in _URL_SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name)


def u(name: str) -> str:
    """A file name as a link's path: percent-encoded, then escaped."""
    return e(quote(name))


def _num(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _short(value, n: int = 12) -> str:
    return (value or "")[:n]


def _when(text) -> str:
    return (text or "")[:19].replace("T", " ")


CSS = """
:root{--fg:#1f2933;--muted:#616e7c;--line:#d9dee3;--bg:#f7f8fa;--accent:#1f5fa8;--ok:#1e7b34;--bad:#b42318;
--warn:#9a6700;--info:#475467}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:var(--fg);
background:#fff}
nav{background:#12263f;padding:.55rem 1.2rem;display:flex;gap:1.1rem;flex-wrap:wrap;align-items:center}
nav a{color:#dbe7f5;text-decoration:none;font-weight:500}
nav a.here{color:#fff;border-bottom:2px solid #fff}
nav .brand{color:#fff;font-weight:700;margin-right:.6rem}
main{padding:1rem 1.4rem 3rem;max-width:1400px}
h1{font-size:1.45rem;margin:.4rem 0 .8rem}
h2{font-size:1.1rem;margin:1.6rem 0 .5rem;border-bottom:1px solid var(--line);padding-bottom:.2rem}
a{color:var(--accent)}
table{border-collapse:collapse;margin:.3rem 0 .8rem;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:.28rem .6rem;text-align:left;vertical-align:top}
th{background:var(--bg);font-weight:600}
#runs td:nth-child(-n+4){white-space:nowrap}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.muted{color:var(--muted)}
.badge{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-size:12px;font-weight:600;color:#fff}
.s-succeeded{background:var(--ok)}.s-failed{background:var(--bad)}.s-up-to-date{background:var(--info)}
.s-running{background:var(--warn)}.s-ran{background:var(--ok)}.s-skipped{background:var(--info)}
.s-not-run{background:#98a2b3}.s-passed{background:var(--ok)}.s-refused{background:var(--bad)}
.alias{display:inline-block;padding:0 .4rem;border:1px solid var(--accent);border-radius:.5rem;font-size:12px;
color:var(--accent);margin-right:.2rem}
.changed{background:#fff6d6}
.up{color:var(--ok)}.down{color:var(--bad)}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:.4rem 0 1rem}
.card{border:1px solid var(--line);border-radius:.4rem;padding:.6rem .9rem;min-width:14rem;background:var(--bg)}
.card .k{color:var(--muted);font-size:12px}.card .v{font-size:1.05rem;font-weight:600}
pre.error{background:#fff1f0;border:1px solid #f3c5c0;padding:.6rem;white-space:pre-wrap;max-width:110ch}
svg text{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
details summary{cursor:pointer;color:var(--accent)}
"""


class _Context:
    """One rendering of the site from one set of data."""

    def __init__(self, settings, data: dict):
        self.settings = settings
        self.data = data
        self.runs = [r for r in data["runs"] if _SAFE.match(str(r.get("run_id") or ""))]
        self.by_id = {r["run_id"]: r for r in self.runs}
        self.order = {r["run_id"]: i for i, r in enumerate(self.runs)}
        self.versions = [v for v in data["versions"] if _SAFE.match(str(v.get("version") or ""))]
        self.version_by_id = {v["version"]: v for v in self.versions}
        self.version_ids = set(self.version_by_id)
        self.kept = _kept_reports(settings)
        self.bentos = _bentos(settings)
        self.tasks = self._task_names()
        top = reports_dir(settings)
        self.latest = [t for t in self.tasks if (top / f"{t}.html").is_file()]
        failed = top / FAILED_DIR
        self.failed = sorted(f.name for f in failed.glob("*.html")) if failed.is_dir() else []
        self.others = _other_pages(settings, set(self.tasks))

    def _task_names(self) -> list[str]:
        names: list[str] = []
        for r in reversed(self.runs):
            for t in r.get("tasks") or []:
                if t["task"] not in names:
                    names.append(t["task"])
            if names:
                break
        top = reports_dir(self.settings)
        seen = set(names)
        for r in self.runs:
            for t in r.get("tasks") or []:
                if t["task"] not in seen and (top / f"{t['task']}.html").is_file():
                    names.append(t["task"])
                    seen.add(t["task"])
        return names

    # ---- shared pieces

    def pages(self) -> dict:
        """Every page of the site -> a function that renders it."""
        out = {INDEX: self.index, f"{SITE_DIR}/models.html": self.models_page}
        for v in self.versions:
            out[f"{SITE_DIR}/model-{v['version']}.html"] = functools.partial(self.model_page, v)
        for r in self.runs:
            out[f"{SITE_DIR}/run-{r['run_id']}.html"] = functools.partial(self.run_page, r)
        return out

    def files_key(self) -> str:
        """What the pages read from files beside the warehouse's data: the reports kept per run, the latest and
        failed reports, the other pages, the Bentos, the project's name."""
        kept = sorted((k, sorted(v)) for k, v in self.kept.items())
        return hashlib.sha256(json.dumps([kept, self.latest, self.failed, self.others, self.bentos,
                                          self.settings.root.name, _code()]).encode()).hexdigest()

    def page(self, title: str, body: str, depth: int, here: str) -> str:
        root = "../" * depth
        links = [("home", f"{root}{INDEX}", "Runs"), ("models", f"{_to_site(depth)}models.html", "Models")]
        links += [(name, f"{root}{quote(name)}", title_) for name, title_ in self.others]
        nav = "".join(f'<a href="{e(href)}"{" class=here" if key == here else ""}>{e(text)}</a>'
                      for key, href, text in links)
        project = self.settings.root.name
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                "<link rel=\"icon\" href=\"data:,\">"
                f"<title>{e(title)} - {e(project)}</title><style>{CSS}</style></head><body>"
                f"<nav><span class=\"brand\">{e(project)}</span>{nav}</nav><main>{body}</main></body></html>\n")

    def run_link(self, run_id, depth: int, text: str | None = None) -> str:
        if not run_id:
            return ""
        label = e(text if text is not None else run_id)
        if run_id in self.by_id:
            return f'<a href="{_to_site(depth)}run-{e(run_id)}.html" class="mono">{label}</a>'
        return f'<span class="mono">{label}</span>'

    def version_link(self, version, depth: int) -> str:
        if not version:
            return ""
        if version in self.version_ids:
            return f'<a href="{_to_site(depth)}model-{e(version)}.html" class="mono">{e(version)}</a>'
        return f'<span class="mono">{e(version)}</span>'

    def aliases_of(self, version) -> str:
        return "".join(f'<span class="alias">{e(a)}</span>' for a, v in sorted(self.data["aliases"].items())
                       if v == version)

    @staticmethod
    def status(text) -> str:
        return f'<span class="badge s-{e(text)}">{e(text)}</span>'

    def previous(self, run: dict) -> dict | None:
        """The previous run that did not fail: the state this run started from."""
        for r in reversed(self.runs[: self.order[run["run_id"]]]):
            if r["status"] != "failed":
                return r
        return None

    @staticmethod
    def changed_params(run: dict, prev: dict | None) -> list[tuple[str, object, object]]:
        if prev is None:
            return []
        a, b = prev.get("params") or {}, run.get("params") or {}
        return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]

    def feature_set_of(self, run: dict) -> str | None:
        v = self.version_by_id.get(run.get("model_version") or "")
        return (v.get("lineage") or {}).get("feature_set_id") if v else None

    def report_of(self, run: dict, task: str, depth: int) -> str:
        """A link to the report of ``task`` in ``run``: its own copy, or (a task it did not re-run, a run that
        has no folder) the copy kept by the latest earlier run that has one."""
        name = f"{task}.html"
        root = "../" * depth
        status = next((t["status"] for t in run.get("tasks") or [] if t["task"] == task), None)
        if name in self.kept.get(run["run_id"], ()):
            reused = ' <span class="muted">(reused: the task was up to date)</span>' if status == "skipped" else ""
            return f'<a href="{root}{RUNS_DIR}/{e(run["run_id"])}/{u(name)}">report</a>{reused}'
        if status == "not-run":
            return '<span class="muted">none</span>'
        if status == "skipped":
            for r in reversed(self.runs[: self.order[run["run_id"]]]):
                if name in self.kept.get(r["run_id"], ()):
                    return (f'<a href="{root}{RUNS_DIR}/{e(r["run_id"])}/{u(name)}">report</a> '
                            f'<span class="muted">(made by run {self.run_link(r["run_id"], depth)})</span>')
        return ('<span class="muted" title="removed by mlops-nb gc (gc.keep_runs), or reports were off">'
                "not kept</span>")

    # ---- index

    def index(self) -> str:
        runs = list(reversed(self.runs))
        parts = ["<h1>Runs, models and reports</h1>"]
        champion = self.data["aliases"].get("champion")
        challenger = self.data["aliases"].get("challenger")
        last = runs[0] if runs else None
        cards = []
        for alias, version in (("champion", champion), ("challenger", challenger)):
            v = next((x for x in self.versions if x["version"] == version), None)
            auc = (v or {}).get("metrics", {}).get("roc_auc")
            cards.append(f'<div class="card"><div class="k">{alias}</div><div class="v">'
                         f'{self.version_link(version, 0) if version else "none"}</div>'
                         f'<div class="k">{"ROC AUC " + _num(auc) if auc is not None else ""}</div></div>')
        if last is not None:
            cards.append(f'<div class="card"><div class="k">last run</div><div class="v">'
                         f'{self.run_link(last["run_id"], 0)}</div><div class="k">{self.status(last["status"])} '
                         f'{e(_when(last["started_at"]))} UTC</div></div>')
        cards.append(f'<div class="card"><div class="k">recorded</div><div class="v">{len(runs)} runs</div>'
                     f'<div class="k">{len(self.versions)} model versions, {len(self.bentos)} Bentos</div></div>')
        parts.append(f'<div class="cards">{"".join(cards)}</div>')
        parts.append("<h2>Metrics over runs</h2>")
        parts.append(self.metrics_chart())
        parts.append("<h2>Reports</h2>")
        parts.append(self.report_list())
        parts.append("<h2>Runs</h2>")
        if not runs:
            parts.append('<p class="muted">No runs recorded yet: <code>mlops-nb run</code> records one.</p>')
        else:
            head = ("<tr><th>run</th><th>started (UTC)</th><th>status</th><th>trigger</th><th>tasks ran</th>"
                    "<th>commit</th><th>snapshot</th><th>model</th>"
                    + "".join(f'<th class="n">{m}</th>' for m in METRICS)
                    + "<th>parameters changed since the previous run</th></tr>")
            rows = []
            for r in runs[:INDEX_RUNS]:
                prev = self.previous(r)
                changed = self.changed_params(r, prev)
                shown = "; ".join(f"{e(k)}: {e(a)} &rarr; {e(b)}" for k, a, b in changed[:4])
                if len(changed) > 4:
                    shown += f"; and {len(changed) - 4} more"
                if prev is None:
                    shown = '<span class="muted">first run</span>'
                elif not changed:
                    shown = '<span class="muted">none</span>'
                ran = [t["task"] for t in r.get("tasks") or [] if t["status"] == "ran"]
                failed = [t["task"] for t in r.get("tasks") or [] if t["status"] == "failed"]
                metrics = r.get("metrics") or {}
                rows.append(
                    f"<tr><td>{self.run_link(r['run_id'], 0)}</td><td>{e(_when(r['started_at']))}</td>"
                    f"<td>{self.status(r['status'])}</td><td>{e(r.get('trigger') or 'mlops-nb run')}</td>"
                    f"<td>{e(', '.join(ran)) or '<span class=muted>none</span>'}"
                    f"{'; failed: ' + e(', '.join(failed)) if failed else ''}</td>"
                    f"<td class=\"mono\">{e(_short(r.get('git_commit'), 7))}{'*' if r.get('git_dirty') else ''}</td>"
                    f"<td class=\"mono\">{e(_short(r.get('snapshot_id')))}</td>"
                    f"<td>{self.version_link(r.get('model_version'), 0)}</td>"
                    + "".join(f'<td class="n">{e(_num(metrics.get(m)))}</td>' for m in METRICS)
                    + f"<td>{shown}</td></tr>")
            parts.append(f"<table id=\"runs\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
            older = runs[INDEX_RUNS:]
            if older:
                items = "".join(f"<li>{self.run_link(r['run_id'], 0)} {e(_when(r['started_at']))} "
                                f"{e(r['status'])}</li>" for r in older)
                parts.append(f'<details id="older-runs"><summary>{len(older)} older runs</summary><ul>{items}</ul>'
                             "</details>")
        return self.page("Runs", "".join(parts), 0, "home")

    def report_list(self) -> str:
        items = []
        if self.latest:
            links = ", ".join(f'<a href="{u(t + ".html")}">{e(t)}</a>' for t in self.latest)
            items.append(f"<li>latest report of each task: {links} <span class=\"muted\">(each run's own are on "
                         "its page)</span></li>")
        for name, title in self.others:
            items.append(f'<li><a href="{u(name)}">{e(title)}</a></li>')
        if self.failed:
            links = ", ".join(f'<a href="{FAILED_DIR}/{u(f)}">{e(f[:-5])}</a>' for f in self.failed)
            items.append(f"<li>the last failed task's notebook: {links}</li>")
        if not items:
            return '<p class="muted">No reports yet.</p>'
        return f"<ul>{''.join(items)}</ul>"

    def metrics_chart(self) -> str:
        """A panel a metric, a point a succeeded run (in time order); each point links to its run."""
        points = [r for r in self.runs if r["status"] == "succeeded" and r.get("metrics")][-INDEX_RUNS:]
        if not points:
            return '<p class="muted">No succeeded run with metrics yet.</p>'
        panels = []
        w, h, left, right, top_, bottom = 300, 170, 48, 12, 22, 26
        for metric in METRICS:
            values = [(i, r, (r.get("metrics") or {}).get(metric)) for i, r in enumerate(points)]
            values = [(i, r, float(v)) for i, r, v in values
                      if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if not values:
                continue
            lo, hi = min(v for _, _, v in values), max(v for _, _, v in values)
            if hi - lo < 1e-12:
                lo, hi = lo - 0.01, hi + 0.01
            pad = (hi - lo) * 0.08
            lo, hi = lo - pad, hi + pad
            n = max(len(points) - 1, 1)

            def x(i):
                return left + (w - left - right) * (i / n if len(points) > 1 else 0.5)

            def y(v):
                return top_ + (h - top_ - bottom) * (1 - (v - lo) / (hi - lo))

            line = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, _, v in values)
            dots = "".join(
                f'<a href="{SITE_DIR}/run-{e(r["run_id"])}.html"><circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="4" '
                f'fill="#1f5fa8"><title>{e(metric)} {v:.4f}: run {e(r["run_id"])}, '
                f'{e(_when(r["started_at"]))} UTC</title></circle></a>' for i, r, v in values)
            label = f"{metric} over {len(values)} succeeded runs, from {values[0][2]:.4f} to {values[-1][2]:.4f}"
            panels.append(
                f'<svg role="img" aria-label="{e(label)}" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
                f'class="chart"><title>{e(label)}</title>'
                f'<rect x="{left}" y="{top_}" width="{w - left - right}" height="{h - top_ - bottom}" fill="#f7f8fa" '
                f'stroke="#d9dee3"/>'
                f'<text x="{left}" y="15" font-size="13" font-weight="600" fill="#1f2933">{e(metric)}</text>'
                + _label(left - 4, top_ + 10, f"{hi:.3f}", "end") + _label(left - 4, h - bottom, f"{lo:.3f}", "end")
                + _label(left, h - 8, _when(points[0]["started_at"])[:10])
                + _label(w - right, h - 8, _when(points[-1]["started_at"])[:10], "end") +
                f'<polyline points="{line}" fill="none" stroke="#1f5fa8" stroke-width="1.5"/>{dots}</svg>')
        return f'<div class="cards" id="metrics-chart">{"".join(panels)}</div>'

    # ---- a run

    def run_page(self, run: dict) -> str:
        rid = run["run_id"]
        prev = self.previous(run)
        parts = [f"<h1>Run <span class=\"mono\">{e(rid)}</span> {self.status(run['status'])}</h1>"]
        started, ended = run.get("started_at"), run.get("ended_at")
        seconds = ""
        if started and ended:
            from datetime import datetime

            seconds = f"{(datetime.fromisoformat(ended) - datetime.fromisoformat(started)).total_seconds():.1f} s"
        registered = next((r for r in self.data["registrations"].get(run.get("model_version") or "", [])
                           if r.get("run_id") == rid), None)
        if registered is not None:  # this run gated the model: its decision
            verdict = (f" {self.status('passed' if registered.get('promoted') else 'refused')} "
                       + e("; ".join((registered.get("gate") or {}).get("reasons") or [])))
        elif run.get("model_version"):
            verdict = ' <span class="muted">(the products\' model; this run did not gate it)</span>'
        else:
            verdict = ""
        facts = [("started (UTC)", e(_when(started))), ("ended (UTC)", e(_when(ended))), ("took", e(seconds)),
                 ("status", self.status(run["status"])), ("trigger", e(run.get("trigger") or "mlops-nb run")),
                 ("model version", self.version_link(run.get("model_version"), 1) + verdict)]
        parts.append(self.facts(facts))
        if run.get("error"):
            parts.append(f'<pre class="error">{e(run["error"])}</pre>')
        parts.append("<h2>Tasks</h2>")
        rows = "".join(f"<tr><td>{e(t['task'])}</td><td>{self.status(t['status'])}</td>"
                       f"<td class=\"n\">{e(_num(t.get('seconds'), 1))}</td>"
                       f"<td>{self.report_of(run, t['task'], 1)}</td></tr>" for t in run.get("tasks") or [])
        parts.append("<table id=\"tasks\"><thead><tr><th>task</th><th>status</th><th class=\"n\">seconds</th>"
                     f"<th>report</th></tr></thead><tbody>{rows}</tbody></table>")
        parts.append("<h2>Lineage</h2>")
        snap = run.get("snapshot_id")
        fs = self.feature_set_of(run)
        commit = run.get("git_commit")
        lineage = [("git commit", (f'<span class="mono">{e(commit)}</span>' if commit else "not a git checkout")
                    + (" (with uncommitted changes)" if run.get("git_dirty") else "")),
                   ("data snapshot", self.snapshot_text(snap)), ("feature set", self.feature_set_text(fs)),
                   ("feature definitions", self.feature_store_text(run.get("features")))]
        parts.append(self.facts(lineage))
        parts.append(self.diff(run, prev))
        params = run.get("params") or {}
        prow = "".join(f"<tr><td class=\"mono\">{e(k)}</td><td class=\"mono\">{e(v)}</td></tr>"
                       for k, v in sorted(params.items()))
        parts.append(f"<h2>Parameters</h2><details><summary>every setting of the run ({len(params)})</summary>"
                     f"<table id=\"params\"><tbody>{prow}</tbody></table></details>")
        versions = run.get("versions") or {}
        vrow = "".join(f"<tr><td>{e(k)}</td><td class=\"mono\">{e(v)}</td></tr>" for k, v in sorted(versions.items()))
        parts.append(f"<h2>Library versions</h2><table id=\"versions\"><tbody>{vrow}</tbody></table>")
        return self.page(f"Run {rid}", "".join(parts), 1, "home")

    @staticmethod
    def facts(rows) -> str:
        return "<table class=\"facts\"><tbody>" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) \
            + "</tbody></table>"

    def snapshot_text(self, snap) -> str:
        if not snap:
            return '<span class="muted">none</span>'
        row = self.data["snapshots"].get(snap) or {}
        counts = row.get("row_counts") or {}
        extra = ", ".join(f"{e(k)} {e(v)}" for k, v in sorted(counts.items()))
        bits = [f'<span class="mono">{e(snap)}</span>']
        if row:
            bits.append(f'<span class="muted">from {e(row.get("source"))}, made {e(_when(row.get("created_at")))}'
                        + (f"; rows: {extra}" if extra else "")
                        + ("; its tables were collected by gc" if row.get("collected_at") else "") + "</span>")
        return "<br>".join(bits)

    def feature_set_text(self, fs) -> str:
        if not fs:
            return '<span class="muted">unknown (no model version)</span>'
        row = self.data["feature_sets"].get(fs) or {}
        counts = row.get("row_counts") or {}
        extra = ", ".join(f"{e(k)} {e(v)}" for k, v in sorted(counts.items()))
        out = f'<span class="mono">{e(fs)}</span>'
        if row:
            out += (f'<br><span class="muted">table features.{e(row.get("table_name"))}'
                    + (f"; rows: {extra}" if extra else "")
                    + ("; collected by gc" if row.get("collected_at") else "") + "</span>")
        return out

    @staticmethod
    def feature_store_text(info) -> str:
        """The point-in-time join a feature set was built with: the definitions' digest, the views, the lead
        and the pushed events' sha256 (a run's ``features``, a version's ``feature_store``)."""
        if not isinstance(info, dict) or not info.get("digest"):
            return '<span class="muted">none (no feature store)</span>'
        views = info.get("views")
        lead = info.get("lead")
        bits = [f'<span class="mono" title="{e(info["digest"])}">{e(_short(info["digest"]))}</span>',
                f"views: {e(', '.join(views) if views else 'none')}",
                f"lead: {e(f'{lead} s' if lead is not None else 'unknown')}"]
        if info.get("pushed_events_sha256"):
            bits.append(f'pushed events <span class="mono">{e(_short(info["pushed_events_sha256"]))}</span>')
        return "; ".join(bits)

    def diff(self, run: dict, prev: dict | None) -> str:
        if prev is None:
            return "<h2>Changes</h2><p class=\"muted\">The first run: nothing to compare with.</p>"
        head = (f"<h2>Changes since run {self.run_link(prev['run_id'], 1)}</h2>"
                "<p class=\"muted\">The previous run that did not fail, side by side with this one.</p>")
        changed = self.changed_params(run, prev)
        if changed:
            rows = "".join(f'<tr class="changed"><td class="mono">{e(k)}</td><td class="mono">{e(a)}</td>'
                           f'<td class="mono">{e(b)}</td></tr>' for k, a, b in changed)
            params = ("<table id=\"changed-params\"><thead><tr><th>parameter</th><th>previous run</th>"
                      f"<th>this run</th></tr></thead><tbody>{rows}</tbody></table>")
        else:
            params = '<p id="changed-params">No parameter changed.</p>'
        what = []
        for label, key in (("git commit", "git_commit"), ("data snapshot", "snapshot_id"),
                           ("model version", "model_version")):
            a, b = prev.get(key), run.get(key)
            cls = ' class="changed"' if a != b else ""
            if key == "model_version":
                a_text, b_text = self.version_link(a, 1), self.version_link(b, 1)
            else:
                a_text, b_text = (f'<span class="mono">{e(_short(x)) or "none"}</span>' for x in (a, b))
            what.append(f"<tr{cls}><td>{label}</td><td>{a_text}</td><td>{b_text}</td></tr>")
        ma, mb = prev.get("metrics") or {}, run.get("metrics") or {}
        for m in [*METRICS, *sorted((set(ma) | set(mb)) - set(METRICS))]:
            if m not in ma and m not in mb:
                continue
            a, b = ma.get(m), mb.get(m)
            delta = ""
            if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
                d = b - a
                shown = f"{d:+d}" if isinstance(d, int) else f"{d:+.4f}"
                better = d > 0 if m in ("roc_auc", "accuracy") else d < 0 if m in ("log_loss", "brier") else None
                cls = "" if d == 0 or better is None else (" class=up" if better else " class=down")
                delta = f"<span{cls}>{shown}</span>"
            row_cls = ' class="changed"' if a != b else ""
            what.append(f"<tr{row_cls}><td>{e(m)}</td><td class=\"n\">{e(_num(a))}</td>"
                        f"<td class=\"n\">{e(_num(b))}</td><td class=\"n\">{delta}</td></tr>")
        side = ("<table id=\"side-by-side\"><thead><tr><th></th><th>previous run</th><th>this run</th>"
                f"<th class=\"n\">change</th></tr></thead><tbody>{''.join(what)}</tbody></table>")
        return head + params + side

    # ---- the registry

    def models_page(self) -> str:
        parts = ["<h1>Model registry</h1>", "<h2>Aliases</h2>"]
        if self.data["aliases"]:
            since = {}
            for a in self.data["audit"]:  # newest first
                since.setdefault(a["alias"], a)
            rows = "".join(
                f"<tr><td><span class=\"alias\">{e(alias)}</span></td><td>{self.version_link(v, 1)}</td>"
                f"<td>{e(_when((since.get(alias) or {}).get('changed_at')))}</td>"
                f"<td>{e((since.get(alias) or {}).get('reason'))}</td></tr>"
                for alias, v in sorted(self.data["aliases"].items()))
            parts.append("<table id=\"aliases\"><thead><tr><th>alias</th><th>version</th><th>since (UTC)</th>"
                         f"<th>why</th></tr></thead><tbody>{rows}</tbody></table>")
        else:
            parts.append('<p class="muted">No alias yet: no model passed the gate.</p>')
        parts.append("<h2>Versions</h2>")
        if self.versions:
            rows = []
            for v in self.versions:
                regs = self.data["registrations"].get(v["version"]) or []
                last = regs[-1] if regs else None
                decision = ""
                if last is not None:
                    gate = last.get("gate") or {}
                    decision = (self.status("passed" if last.get("promoted") else "refused") + " "
                                + e("; ".join(gate.get("reasons") or [])))
                m = v.get("metrics") or {}
                rows.append(f"<tr><td>{self.version_link(v['version'], 1)} {self.aliases_of(v['version'])}</td>"
                            f"<td>{e(_when(v.get('created_at')))}</td><td>{self.run_link(v.get('run_id'), 1)}</td>"
                            + "".join(f'<td class="n">{e(_num(m.get(k)))}</td>' for k in METRICS)
                            + f"<td class=\"n\">{len(regs)}</td><td>{decision}</td></tr>")
            parts.append("<table id=\"model-versions\"><thead><tr><th>version</th><th>created (UTC)</th>"
                         "<th>first run</th>" + "".join(f'<th class="n">{m}</th>' for m in METRICS)
                         + "<th class=\"n\">registrations</th><th>latest gate decision</th></tr></thead>"
                         f"<tbody>{''.join(rows)}</tbody></table>")
        else:
            parts.append('<p class="muted">No model registered yet.</p>')
        parts.append("<h2>Audit log</h2>")
        if self.data["audit"]:
            rows = "".join(
                f"<tr><td class=\"n\">{e(a.get('seq'))}</td><td>{e(_when(a.get('changed_at')))}</td>"
                f"<td>{e(a.get('alias'))}</td><td>{self.version_link(a.get('from_version'), 1)}</td>"
                f"<td>{self.version_link(a.get('to_version'), 1)}</td><td>{e(a.get('action') or 'promote')}</td>"
                f"<td>{e(a.get('actor'))}</td><td>{e(a.get('reason'))}</td>"
                f"<td>{self.run_link(a.get('run_id'), 1)}</td></tr>" for a in self.data["audit"])
            parts.append("<table id=\"audit\"><thead><tr><th class=\"n\">#</th><th>when (UTC)</th><th>alias</th>"
                         "<th>from</th><th>to</th><th>action</th><th>actor</th><th>why</th><th>run</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table>")
        else:
            parts.append('<p class="muted">No alias change yet.</p>')
        parts.append("<h2>Bentos</h2>")
        parts.append(self.bento_table(self.bentos, 1))
        return self.page("Models", "".join(parts), 1, "models")

    def bento_table(self, bentos, depth: int) -> str:
        if not bentos:
            return '<p class="muted">No Bento built yet: <code>mlops-nb build</code> makes one.</p>'
        rows = "".join(
            f"<tr><td class=\"mono\">{e(b['tag'])}</td><td>{e(_when(b['created']))}</td><td>"
            + ", ".join(f"{e(alias)}: {self.version_link(tag.rpartition(':')[2], depth)}"
                        for alias, tag in sorted(b["models"].items()))
            + "</td></tr>" for b in bentos)
        return ("<table class=\"bentos\"><thead><tr><th>Bento</th><th>built (UTC)</th><th>pinned models</th></tr>"
                f"</thead><tbody>{rows}</tbody></table>")

    def model_page(self, v: dict) -> str:
        version = v["version"]
        lineage = v.get("lineage") or {}
        regs = self.data["registrations"].get(version) or []
        bentos = [b for b in self.bentos if any(t.rpartition(":")[2] == version for t in b["models"].values())]
        parts = [f"<h1>Model version <span class=\"mono\">{e(version)}</span> {self.aliases_of(version)}</h1>"]
        parts.append("<h2>Lineage</h2>")
        parts.append(self.lineage_graph(v, bentos))
        info = lineage.get("lineage") or {}
        facts = [("tag", f'<span class="mono">{e(v.get("tag"))}</span>'),
                 ("created (UTC)", e(_when(v.get("created_at")))),
                 ("trained by run", self.run_link(v.get("run_id"), 1)),
                 ("model file sha256",
                  f'<span class="mono">{e(v.get("sha256") or lineage.get("model_sha256"))}</span>'),
                 ("kind", e(lineage.get("kind"))), ("seed", e(lineage.get("seed"))),
                 ("hyperparameters", e(_pairs(lineage.get("params")))),
                 ("git commit", f'<span class="mono">{e(info.get("git_commit") or "not a git checkout")}</span>'
                  + (" (with uncommitted changes)" if info.get("git_dirty") else "")),
                 ("data snapshot", self.snapshot_text(lineage.get("snapshot_id"))),
                 ("feature set", self.feature_set_text(lineage.get("feature_set_id"))),
                 ("feature definitions", self.feature_store_text(lineage.get("feature_store")))]
        compiled = lineage.get("compiled")
        if isinstance(compiled, dict):
            done = compiled.get("status") == "compiled"
            said = (f"{compiled.get('library')}, serves up to {compiled.get('max_rows')} rows" if done
                    else f"{compiled.get('status')}: {compiled.get('reason')}")
            facts.append(("compiled form", e(said)))
        parts.append(self.facts(facts))
        m = v.get("metrics") or {}
        mrows = "".join(f"<tr><td>{e(k)}</td><td class=\"n\">{e(_num(val))}</td></tr>"
                        for k, val in sorted(m.items()))
        parts.append(f"<h2>Test metrics</h2><table id=\"metrics\"><tbody>{mrows}</tbody></table>")
        parts.append("<h2>Registrations and gate decisions</h2>")
        rows = []
        for r in regs:
            gate = r.get("gate") or {}
            tests = gate.get("tests") or []
            passed = sum(1 for t in tests if t.get("passed"))
            failed = "; ".join(f"{t.get('name')}: {t.get('detail')}" for t in tests if not t.get("passed"))
            rows.append(f"<tr><td>{self.run_link(r.get('run_id'), 1)}</td><td>{e(_when(r.get('registered_at')))}</td>"
                        f"<td>{self.status('passed' if r.get('promoted') else 'refused')}</td>"
                        f"<td>{e('; '.join(gate.get('reasons') or []))}</td>"
                        f"<td>{passed} of {len(tests)} passed{(': ' + e(failed)) if failed else ''}</td>"
                        f"<td class=\"mono\">{e(_pairs(gate.get('thresholds')))}</td></tr>")
        parts.append("<table id=\"registrations\"><thead><tr><th>run</th><th>registered (UTC)</th><th>gate</th>"
                     "<th>reasons</th><th>model tests</th><th>thresholds</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
        history = [a for a in self.data["audit"] if version in (a.get("from_version"), a.get("to_version"))]
        if history:
            rows = "".join(f"<tr><td>{e(_when(a.get('changed_at')))}</td><td>{e(a.get('alias'))}</td>"
                           f"<td>{'to' if a.get('to_version') == version else 'away'}</td>"
                           f"<td>{e(a.get('action') or 'promote')}</td><td>{e(a.get('actor'))}</td>"
                           f"<td>{e(a.get('reason'))}</td></tr>" for a in history)
            parts.append("<h2>Alias changes</h2><table id=\"alias-history\"><thead><tr><th>when (UTC)</th>"
                         "<th>alias</th><th>moved</th><th>action</th><th>actor</th><th>why</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table>")
        parts.append("<h2>Bentos</h2>")
        parts.append(self.bento_table(bentos, 1))
        versions = info.get("versions") or {}
        vrow = "".join(f"<tr><td>{e(k)}</td><td class=\"mono\">{e(x)}</td></tr>" for k, x in sorted(versions.items()))
        parts.append(f"<h2>Library versions when trained</h2><table><tbody>{vrow}</tbody></table>")
        return self.page(f"Model {version}", "".join(parts), 1, "models")

    def lineage_graph(self, v: dict, bentos: list[dict]) -> str:
        """snapshot -> feature set -> run -> model -> Bento(s), as boxes and arrows; each box links where the
        site has a page."""
        lineage = v.get("lineage") or {}
        snap, fs = lineage.get("snapshot_id"), lineage.get("feature_set_id")
        snap_row = self.data["snapshots"].get(snap) or {}
        fs_row = self.data["feature_sets"].get(fs) or {}
        run = self.by_id.get(v.get("run_id") or "")
        columns = [
            [("data snapshot", _short(snap) or "unknown",
              f"{sum((snap_row.get('row_counts') or {}).values()) if snap_row.get('row_counts') else ''}"
              + (" rows" if snap_row.get("row_counts") else ""), None)],
            [("feature set", _short(fs) or "unknown",
              ", ".join(f"{k} {n}" for k, n in sorted((fs_row.get("row_counts") or {}).items()))[:40], None)],
            [("run", v.get("run_id") or "unknown", _when((run or {}).get("started_at")),
              f"run-{v['run_id']}.html" if run else None)],
            [("model version", v["version"], ", ".join(a for a, x in sorted(self.data["aliases"].items())
                                                      if x == v["version"]), f"model-{v['version']}.html")],
            [("Bento", b["tag"], _when(b["created"]), None) for b in bentos] or [("Bento", "none built", "", None)],
        ]
        bw, bh, gap, pad = 224, 58, 40, 10
        rows = max(len(c) for c in columns)
        width = pad * 2 + len(columns) * bw + (len(columns) - 1) * gap
        height = pad * 2 + rows * bh + (rows - 1) * 14
        out = []
        centers = []
        for ci, col in enumerate(columns):
            x = pad + ci * (bw + gap)
            ys = []
            for ri, (kind, name, note, href) in enumerate(col):
                y = pad + ri * (bh + 14)
                ys.append(y + bh / 2)
                box = (f'<rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="#f7f8fa" stroke="#1f5fa8"/>'
                       f'<text x="{x + 8}" y="{y + 16}" font-size="11" fill="#616e7c">{e(kind)}</text>'
                       f'<text x="{x + 8}" y="{y + 34}" font-size="12" font-weight="600" fill="#1f2933">'
                       f'{e(_fit(name, 30))}</text>'
                       f'<text x="{x + 8}" y="{y + 50}" font-size="10.5" fill="#616e7c">{e(_fit(note, 36))}</text>'
                       f'<title>{e(kind)}: {e(name)}{(" (" + e(note) + ")") if note else ""}</title>')
                out.append(f'<a href="{e(href)}">{box}</a>' if href else f"<g>{box}</g>")
            centers.append((x, ys))
        for ci in range(len(columns) - 1):
            x0 = centers[ci][0] + bw
            x1 = centers[ci + 1][0]
            for y0 in centers[ci][1]:
                for y1 in centers[ci + 1][1]:
                    out.append(f'<line x1="{x0}" y1="{y0:.1f}" x2="{x1 - 6}" y2="{y1:.1f}" stroke="#616e7c" '
                               f'stroke-width="1.4"/><polygon points="{x1},{y1:.1f} {x1 - 8},{y1 - 4:.1f} '
                               f'{x1 - 8},{y1 + 4:.1f}" fill="#616e7c"/>')
        label = (f"Lineage of model version {v['version']}: data snapshot {_short(snap)} -> feature set {_short(fs)} "
                 f"-> run {v.get('run_id')} -> model {v['version']} -> "
                 + (", ".join(b["tag"] for b in bentos) or "no Bento"))
        return (f'<svg role="img" aria-label="{e(label)}" id="lineage" viewBox="0 0 {width} {height}" '
                f'width="{width}" height="{height}"><title>{e(label)}</title>{"".join(out)}</svg>')


@functools.lru_cache(maxsize=1)
def _code() -> str:
    """This module's digest: pages written by other code are written again."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _pairs(mapping) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((mapping or {}).items()))


def _label(x, y, text, anchor: str = "start") -> str:
    return f'<text x="{x}" y="{y}" font-size="10" text-anchor="{anchor}" fill="#616e7c">{e(text)}</text>'


def _to_site(depth: int) -> str:
    """The relative path from a page ``depth`` folders below the reports folder to the site's pages."""
    return "" if depth == 1 else "../" * depth + f"{SITE_DIR}/"


def _fit(text, n: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"
