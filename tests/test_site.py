"""The reports site (mlops_nb/run/site.py, `mlops-nb report`): a real sample project (the shared build), run
again with a changed parameter, once with nothing to do and once with a task that fails; then every page is
there, every link of every page (the task reports included) resolves to a file of the site and none leaves it,
every report is reachable from index.html, the run page shows the changed parameter's old and new values side
by side, real headless Chromium opens the pages from file:// and from `python -m http.server` with no
console message, and `mlops-nb gc` with gc.keep_runs = 1 removes the older run's folder of reports."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from browser import run_chromium
from conftest import TASKS, cli_env, run_cli, run_ok

pytestmark = pytest.mark.slow

ALL = [*TASKS, "gate"]
CHANGED = ("model.learning_rate", "0.1", "0.05")


def copy_tree(project: Path, folder: Path) -> Path:
    """A copy of a project that keeps its hard links (the reports kept per run share their bytes)."""
    subprocess.run(["cp", "-a", str(project), str(folder)], check=True, timeout=120)
    return folder / project.name


@pytest.fixture(scope="module")
def site(built, tmp_path_factory) -> dict:
    """The shared build (run 1), then: run 2 with model.learning_rate changed (train, evaluate and gate run),
    run 3 with nothing to do, run 4 whose features task fails (a test month the snapshot does not hold)."""
    project = copy_tree(built.fresh(), tmp_path_factory.mktemp("site"))
    second = run_ok(project, "run", "--quiet", "-p", f"{CHANGED[0]}={CHANGED[2]}")
    assert second.tasks_with("ran") == {"train", "evaluate", "gate"}, str(second)
    third = run_ok(project, "run", "--quiet", "-p", f"{CHANGED[0]}={CHANGED[2]}")
    assert third.tasks_with("ran") == set(), str(third)
    fourth = run_cli(project, "run", "--quiet", "-p", f"{CHANGED[0]}={CHANGED[2]}", "-p", "split.test_months=4")
    assert fourth.returncode == 3 and fourth.task_table()["features"] == "failed", str(fourth)
    runs = run_ok(project, "runs", "--json").json()  # newest first
    assert [r["status"] for r in runs] == ["failed", "up-to-date", "succeeded", "succeeded"], runs
    for result in (second, third, fourth):
        assert f"reports site: {project / 'reports' / 'index.html'}" in result.stdout, str(result)
    return {"project": project, "reports": project / "reports", "runs": list(reversed(runs)),
            "versions": run_ok(project, "models", "list", "--json").json()}


# --------------------------------------------------------------------------------------------------
# links


class Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("href", "src", "xlink:href", "action", "poster", "data") and value is not None:
                self.links.append((tag, value))
            elif name == "srcset" and value:
                self.links += [(tag, part.strip().split()[0]) for part in value.split(",") if part.strip()]


def links_of(page: Path) -> list[tuple[str, str]]:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def local_target(page: Path, value: str) -> Path | None:
    """The file a link points at (None: a fragment of the page itself, or inline data); fails on anything that
    would leave the site: a scheme, a network path, an absolute path."""
    if value.startswith("#") or value.startswith("data:"):
        return None
    parts = urlsplit(value)
    assert not parts.scheme and not parts.netloc and not value.startswith("/"), f"{page}: {value!r} leaves the site"
    return (page.parent / unquote(parts.path)).resolve()


def html_pages(reports: Path) -> list[Path]:
    return sorted(p for p in reports.rglob("*.html") if not p.name.startswith("."))


def assert_links_resolve(reports: Path) -> int:
    checked = 0
    for page in html_pages(reports):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"""(href|src)\s*=\s*["']?\s*(https?:|//)""", text, re.I), page
        for tag, value in links_of(page):
            target = local_target(page, value)
            if target is None:
                continue
            assert target.is_file(), f"{page.relative_to(reports)}: <{tag}> {value!r} -> nothing at {target}"
            assert reports.resolve() in target.parents, f"{page}: {value!r} points outside the reports folder"
            checked += 1
    return checked


def reachable(reports: Path) -> set[Path]:
    """Every page reached from index.html by following links."""
    seen, todo = set(), [(reports / "index.html").resolve()]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".html":
            continue
        seen.add(page)
        todo += [t for _, v in links_of(page) if (t := local_target(page, v)) is not None]
    return seen


# --------------------------------------------------------------------------------------------------
# tests


def test_every_page_is_written(site):
    reports, runs = site["reports"], site["runs"]
    first, second, up_to_date, failed = runs
    assert (reports / "index.html").is_file() and (reports / "site" / "models.html").is_file()
    for r in runs:
        assert (reports / "site" / f"run-{r['run_id']}.html").is_file(), r["run_id"]
    assert len(site["versions"]) == 2
    for v in site["versions"]:
        assert (reports / "site" / f"model-{v['version']}.html").is_file(), v["version"]
    # the task reports kept per run: all six for both runs that built (three of the second's reused)...
    for r in (first, second):
        assert sorted(p.stem for p in (reports / "runs" / r["run_id"]).glob("*.html")) == sorted(ALL), r["run_id"]
    for task in ("ingest", "validate", "features"):  # ...as hard links to the reports the second run reused
        reused = reports / "runs" / second["run_id"] / f"{task}.html"
        assert os.path.samefile(reused, reports / f"{task}.html")
        assert reused.read_bytes() == (reports / "runs" / first["run_id"] / f"{task}.html").read_bytes()
    for task in ("train", "evaluate", "gate"):  # its own, the latest at the old address too
        own = reports / "runs" / second["run_id"] / f"{task}.html"
        assert not os.path.samefile(own, reports / "runs" / first["run_id"] / f"{task}.html")
        assert os.path.samefile(own, reports / f"{task}.html")
    # the failed run keeps its failed task's notebook; a run with nothing to do has no folder
    assert [p.name for p in (reports / "runs" / failed["run_id"]).iterdir()] == ["features.html"]
    assert not (reports / "runs" / up_to_date["run_id"]).exists()
    # writing again changes nothing: every page is as the runs left it
    again = run_ok(site["project"], "report", "--json").json()
    assert again["written"] == [] and again["index"] == str(reports / "index.html"), again
    assert run_ok(site["project"], "report").stdout.strip() == str(reports / "index.html")


def test_every_link_resolves_and_every_report_is_reachable(site):
    reports = site["reports"]
    assert assert_links_resolve(reports) > 50
    pages = {p.resolve() for p in html_pages(reports)}
    assert pages - reachable(reports) == set(), "pages no link reaches from index.html"


def test_the_index_lists_the_runs_and_charts_their_metrics(site):
    text = (site["reports"] / "index.html").read_text(encoding="utf-8")
    table = re.search(r'<table id="runs">(.*?)</table>', text, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)
    assert len(rows) == 4
    for row, r in zip(rows, reversed(site["runs"])):  # newest first
        assert f"site/run-{r['run_id']}.html" in row and f">{r['status']}<" in row and "mlops-nb run" in row, row
    newest_succeeded = site["runs"][1]
    assert f"{CHANGED[0]}: {CHANGED[1]} &rarr; {CHANGED[2]}" in rows[2], rows[2]
    assert f"{newest_succeeded['metrics']['roc_auc']:.4f}" in rows[2]
    # a chart a metric, a point a succeeded run, each linking to its run
    chart = re.search(r'<div class="cards" id="metrics-chart">(.*?)</div>', text, re.S).group(1)
    assert chart.count("<svg") == 4 and chart.count("<circle") == 8, chart[:500]
    assert chart.count(f'href="site/run-{newest_succeeded["run_id"]}.html"') == 4
    champion = next(v for v in site["versions"] if "champion" in v["aliases"])
    assert f'href="site/model-{champion["version"]}.html"' in text
    for task in ALL:
        assert f'<a href="{task}.html">{task}</a>' in text
    assert '<a href="failed/features.html">' in text


def test_the_run_page_shows_what_changed_side_by_side(site):
    first, second, up_to_date, failed = site["runs"]
    text = (site["reports"] / "site" / f"run-{second['run_id']}.html").read_text(encoding="utf-8")
    changed = re.search(r'<table id="changed-params">(.*?)</table>', text, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", changed.split("<tbody>")[1], re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert cells == [[CHANGED[0], CHANGED[1], CHANGED[2]]], cells
    assert f"run-{first['run_id']}.html" in text.split('id="changed-params"')[0]  # compared with the first run
    side = re.search(r'<table id="side-by-side">(.*?)</table>', text, re.S).group(1)
    auc = re.search(r"<td>roc_auc</td>(.*?)</tr>", side, re.S).group(1)
    assert f"{first['metrics']['roc_auc']:.4f}" in auc and f"{second['metrics']['roc_auc']:.4f}" in auc, auc
    # lineage: commit, snapshot, feature set, parameters, library versions; task reports, three reused
    assert second["snapshot_id"] in text and "feature set" in text
    assert re.search(r"features\.f_[0-9a-f]{12}", text)
    assert "scikit-learn" in text and second["versions"]["scikit-learn"] in text
    tasks = re.search(r'<table id="tasks">(.*?)</table>', text, re.S).group(1)
    assert tasks.count(f'href="../runs/{second["run_id"]}/') == 6
    # the up-to-date run points at the reports of the run that made them; the failed run says why it failed
    noop = (site["reports"] / "site" / f"run-{up_to_date['run_id']}.html").read_text(encoding="utf-8")
    assert "No parameter changed" in noop
    assert noop.count(f'href="../runs/{second["run_id"]}/') == 6
    bad = (site["reports"] / "site" / f"run-{failed['run_id']}.html").read_text(encoding="utf-8")
    assert "test split(s) have no rows" in bad and f'href="../runs/{failed["run_id"]}/features.html"' in bad
    assert re.search(r"<td[^>]*>split\.test_months</td><td[^>]*>3</td><td[^>]*>4</td>", bad)


def test_the_registry_pages(site):
    text = (site["reports"] / "site" / "models.html").read_text(encoding="utf-8")
    champion = next(v for v in site["versions"] if "champion" in v["aliases"])
    for v in site["versions"]:
        assert f'href="model-{v["version"]}.html"' in text
    audit = re.search(r'<table id="audit">(.*?)</table>', text, re.S).group(1)
    assert champion["version"] in audit and ">gate<" in audit
    page = (site["reports"] / "site" / f"model-{champion['version']}.html").read_text(encoding="utf-8")
    graph = re.search(r'<svg role="img" aria-label="([^"]*)" id="lineage"', page).group(1)
    lineage = champion["lineage"]
    for part in (lineage["snapshot_id"][:12], lineage["feature_set_id"][:12], champion["run_id"],
                 champion["version"]):
        assert part in graph, (part, graph)
    assert f'href="run-{champion["run_id"]}.html"' in page
    assert re.search(r'<table id="registrations">.*passed', page, re.S)


def test_a_promotion_and_a_rollback_update_the_site(site, tmp_path):
    project = copy_tree(site["project"], tmp_path)
    champion = next(v for v in site["versions"] if "champion" in v["aliases"])
    other = next(v for v in site["versions"] if "champion" not in v["aliases"])
    models = project / "reports" / "site" / "models.html"

    def champion_row() -> str:
        text = models.read_text(encoding="utf-8")
        return re.search(r'<table id="aliases">(.*?)</table>', text, re.S).group(1)

    run_ok(project, "models", "promote", other["version"], "--reason", "a <b>hand</b> promotion")
    assert re.search(rf'champion</span></td><td><a href="model-{other["version"]}.html"', champion_row())
    text = models.read_text(encoding="utf-8")
    assert "a &lt;b&gt;hand&lt;/b&gt; promotion" in text and "<b>hand</b>" not in text  # escaped
    assert run_ok(project, "report", "--json").json()["written"] == []  # already up to date
    run_ok(project, "models", "rollback")
    assert re.search(rf'champion</span></td><td><a href="model-{champion["version"]}.html"', champion_row())
    assert_links_resolve(project / "reports")


def test_an_up_to_date_run_updates_the_site_without_duckdb(site, tmp_path):
    project = copy_tree(site["project"], tmp_path)
    code = ("import json, sys\nfrom mlops_nb.cli import main\n"
            f"rc = main(['run', '--quiet', '-p', '{CHANGED[0]}={CHANGED[2]}'])\n"
            "print(json.dumps([rc, sorted({m.split('.')[0] for m in sys.modules})]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    rc, modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rc == 0 and "Nothing to do" in proc.stdout
    assert not {"duckdb", "pandas", "nbconvert"} & set(modules)
    run_id = re.search(r"Run (\S+) recorded", proc.stdout).group(1)
    assert (project / "reports" / "site" / f"run-{run_id}.html").is_file()
    assert f"run-{run_id}.html" in (project / "reports" / "index.html").read_text(encoding="utf-8")
    assert_links_resolve(project / "reports")


def test_the_monitoring_page_is_linked_once_it_exists(site, tmp_path):
    project = copy_tree(site["project"], tmp_path)
    reports = project / "reports"
    assert "monitoring.html" not in (reports / "index.html").read_text(encoding="utf-8")
    said = run_ok(project, "monitor")  # no prediction logged yet: the page says so, and the site links it
    assert (reports / "monitoring.html").is_file(), str(said)
    assert '<a href="monitoring.html"' in (reports / "index.html").read_text(encoding="utf-8")
    second = site["runs"][1]
    assert '<a href="../monitoring.html"' in (reports / "site" / f"run-{second['run_id']}.html").read_text()
    assert_links_resolve(reports)


def test_chromium_opens_the_pages_from_file_urls_without_console_messages(site, tmp_path):
    reports = site["reports"]
    second = site["runs"][1]
    for page, expect in ((reports / "index.html", second["run_id"]),
                         (reports / "site" / f"run-{second['run_id']}.html", CHANGED[0])):
        proc = run_chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                            "--dump-dom", page.as_uri())
        console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
        assert console == [], console
        assert expect in proc.stdout and "</nav>" in proc.stdout
        if page.name == "index.html":
            assert proc.stdout.count("<circle") == 8  # the chart was drawn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_site_works_from_python_http_server(site, tmp_path):
    reports = site["reports"]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(reports)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                urllib.request.urlopen(base, timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        # every link of the index and of one run page answers 200 over HTTP
        second = site["runs"][1]
        for rel in ("index.html", f"site/run-{second['run_id']}.html"):
            page = reports / rel
            for _, value in links_of(page):
                target = local_target(page, value)
                if target is not None:
                    url = base + str(target.relative_to(reports.resolve()))
                    with urllib.request.urlopen(url, timeout=10) as answer:
                        assert answer.status == 200, url
        proc = run_chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                            "--dump-dom", base + "index.html")
        assert [line for line in proc.stderr.splitlines() if "CONSOLE" in line] == []
        assert second["run_id"] in proc.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_gc_with_keep_runs_1_removes_the_older_runs_reports(site, tmp_path):
    project = copy_tree(site["project"], tmp_path)
    reports = project / "reports"
    first, second, _, failed = site["runs"]
    env = {"MLOPS_NB_GC__KEEP_RUNS": "1"}
    dry = run_ok(project, "gc", "--dry-run", "--json", env=env).json()
    items = [i for i in dry["removed"] if i["kind"] == "run reports"]
    assert [i["name"] for i in items] == [first["run_id"]], items
    # what removing it frees: the files no other place links (the latest reports and the later runs' folders
    # share theirs)
    files = list((reports / "runs" / first["run_id"]).iterdir())
    own = sum(f.stat().st_size for f in files if f.stat().st_nlink == 1)
    assert items[0]["bytes"] == own > 0, (items, own)
    assert (reports / "runs" / first["run_id"]).is_dir(), "a dry run removed something"

    done = run_ok(project, "gc", env=env)
    assert f"removed run reports {first['run_id']}" in done.stdout, str(done)
    assert not (reports / "runs" / first["run_id"]).exists()
    assert sorted(p.stem for p in (reports / "runs" / second["run_id"]).glob("*.html")) == sorted(ALL)
    assert (reports / "runs" / failed["run_id"] / "features.html").is_file()  # a run since the kept one
    # the pages were written again: no link to the removed folder, the first run's page says so
    assert_links_resolve(reports)
    page = (reports / "site" / f"run-{first['run_id']}.html").read_text(encoding="utf-8")
    tasks = page.split('id="tasks"')[1].split("</table>")[0]
    assert "runs/" not in tasks and tasks.count("not kept") == 6, tasks
