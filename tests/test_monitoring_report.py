"""The monitoring report (mlops_nb/monitoring/report.py): a real DuckDB monitoring store filled with windows,
drift rows and alerts (store.connect, alerts.record), the page written by report.write, then opened in a
real headless Chromium (Debian's `chromium`; `make browser` installs it): the heat maps, the ROC AUC chart and
the alerts table are in the DOM, every image decoded, nothing was fetched, and a screenshot is not blank."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from conftest import write_settings
from mlops_nb import config
from mlops_nb.errors import SettingsError
from mlops_nb.monitoring import alerts, report, store

START = datetime(2013, 11, 1, 0)
HOUR = timedelta(hours=1)
FEATURES = list(store.INPUT_COLUMNS)
CATEGORIES = {c for c, t in store.INPUT_COLUMNS.items() if t == "VARCHAR"}
REFERENCE_AUC = 0.75


@pytest.fixture
def settings(tmp_path):
    write_settings(tmp_path / "settings.ini", {})
    return config.load(tmp_path / "settings.ini", environ={})


def window(start, version, arm, **values) -> dict:
    row = {"window_length": "1h", "window_start": start, "model_version": version, "arm": arm, "requests": 100,
           "rows": 120, "errors": 0, "latency_p50_ms": 8.0, "latency_p99_ms": 30.0, "p_mean": 0.2, "labelled": 0,
           "roc_auc": None, "estimated_roc_auc": None, "threshold": 0.5, "drifted": "[]",
           "computed_at": START, "computed_seq": 1}
    row.update(values)
    return row


def drift_rows(start, version, arm, strength: float) -> list[dict]:
    """Drift of every input feature and the prediction; ``strength`` scales the statistics (1: at the
    threshold). plane_year has no statistic (a note instead), as when too few rows have the value."""
    out = []
    for i, column in enumerate(FEATURES + [alerts.PREDICTION]):
        base = {"window_length": "1h", "window_start": start, "model_version": version, "arm": arm,
                "column": column, "basis": "exact", "n_reference": 5000, "n_analysis": 120, "note": None}
        s = strength * (0.4 + 1.2 * ((i * 7) % 10) / 10)
        if column == "plane_year":
            out.append({**base, "method": "ks", "statistic": None, "p_value": None, "threshold": 0.1,
                        "drifted": None, "note": "fewer than monitor.min_rows values"})
        elif column in CATEGORIES:
            p = 0.05 ** s  # ln p / ln threshold = s
            out.append({**base, "method": "chi2", "statistic": 10 * s, "p_value": p, "threshold": 0.05,
                        "drifted": p < 0.05})
        else:
            out.append({**base, "method": "ks", "statistic": 0.1 * s, "p_value": 0.5, "threshold": 0.1,
                        "drifted": 0.1 * s > 0.1})
    return out


def insert(con, table: str, rows: list[dict]) -> None:
    cols = list(rows[0])
    names = ", ".join('"' + c + '"' for c in cols)
    con.executemany(f"INSERT INTO {table} ({names}) "
                    f"VALUES ({', '.join('?' * len(cols))})", [[r[c] for c in cols] for r in rows])


def fill(settings) -> dict:
    """Twelve hourly windows but one (a gap at 05:00): v1 champion in all, v2 challenger in the last six, the
    whole service ('*'); labels only from the fourth window on (one realized ROC AUC NaN), drift growing, and
    the alerts the rules raise, one acknowledged."""
    hours = [h for h in range(12) if h != 5]
    windows, drift = [], []
    for h in hours:
        start = START + h * HOUR
        labelled = h >= 3
        windows.append(window(start, "v1", "champion", labelled=150 if labelled else 0,
                              roc_auc=(float("nan") if h == 4 else 0.74 - 0.01 * h) if labelled else None,
                              estimated_roc_auc=None if h == 2 else 0.73 - 0.008 * h,
                              latency_p99_ms=30.0 + (400.0 if h == 9 else 0.0)))
        drift += drift_rows(start, "v1", "champion", 0.5 + 0.1 * h)
        if h == 8:  # a NaN statistic (not NULL) is shown as no statistic
            drift[-3]["statistic"] = float("nan")
        if h >= 6:
            windows.append(window(start, "v2", "challenger", requests=10, rows=12, labelled=40 if h >= 10 else 0,
                                  roc_auc=0.71 if h >= 10 else None, estimated_roc_auc=0.72,
                                  latency_p50_ms=None, latency_p99_ms=None))
            drift += drift_rows(start, "v2", "challenger", 0.3)
        windows.append(window(start, store.ALL, store.ALL, requests=110, rows=132, errors=1 if h == 7 else 0,
                              labelled=0, p_mean=None, threshold=None, drifted=None))
    with store.connect(settings) as con:
        insert(con, "windows", windows)
        insert(con, "drift", drift)
        raised = []
        for w in windows:
            if w["model_version"] == store.ALL:
                continue
            rows = [d for d in drift if (d["window_start"], d["model_version"], d["arm"])
                    == (w["window_start"], w["model_version"], w["arm"])]
            w = {**w, "roc_auc": None if w["roc_auc"] is None or math.isnan(w["roc_auc"]) else w["roc_auc"]}
            raised += alerts.evaluate(w, rows, REFERENCE_AUC, settings)
        new = alerts.record(con, raised, settings)
        acked = alerts.acknowledge(con, new[0].alert_id, "tester")
    return {"windows": windows, "drift": drift, "alerts": new, "acked": acked.alert_id}


# --------------------------------------------------------------------------------------------------
# Chromium


def chromium() -> str:
    """Debian's chromium (`make browser` installs it); the test is skipped only when there is none."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.skip("Chromium not found (/usr/bin/chromium or chromium on PATH): `make browser` installs Debian's "
                "chromium; the page could not be opened in a browser")


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    cmd = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
           "--disable-background-networking", "--disable-component-update", "--mute-audio",
           # nothing remote can load: a page that needed the network would show broken images
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


# Injected into a copy of the page (the page itself has no script): after load, every image decoded or
# not, the resources the page fetched, and the parts found, as JSON in <pre id="probe">.
PROBE = """<script>
window.addEventListener('load', () => {
  // synchronous on purpose: --dump-dom does not wait for promises; at 'load' a data: image is decoded
  // when it has a natural size
  const imgs = [...document.images].map((i) => {
    const decoded = i.complete && i.naturalWidth > 0;
    const box = i.getBoundingClientRect();
    return {id: i.id, cls: i.className, complete: i.complete, decoded, w: i.naturalWidth, h: i.naturalHeight,
            shownW: box.width, shownH: box.height};
  });
  const out = {
    imgs,
    resources: performance.getEntriesByType('resource').map((e) => e.name),
    heatmaps: [...document.querySelectorAll('#drift-heatmaps img.heatmap')].map((i) => i.dataset.version + '/' + i.dataset.arm),
    timeline: !!document.querySelector('#timeline img#timeline-chart'),
    alertIds: [...document.querySelectorAll('#alerts tbody tr')].map((r) => r.dataset.alertId),
    openRows: document.querySelectorAll('#alerts tbody tr.open').length,
    versionsRows: document.querySelectorAll('#versions tbody tr').length,
    empty: !!document.querySelector('#empty'),
    header: document.querySelector('#header') ? document.querySelector('#header').innerText : null,
  };
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def probe(page: Path, tmp_path: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    assert text.count("</body>") == 1
    copy = tmp_path / "probe.html"
    copy.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = run_chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()).stdout
    m = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert m, f"the probe did not run; the DOM Chromium dumped starts:\n{dom[:2000]}"
    import html

    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, tmp_path: Path, size=(1400, 2600)):
    """The page as Chromium draws it, as an RGB array in [0, 1]."""
    import matplotlib.image

    out = tmp_path / "screenshot.png"
    run_chromium(tmp_path, "--hide-scrollbars", f"--window-size={size[0]},{size[1]}", f"--screenshot={out}",
                 page.as_uri())
    assert out.is_file() and out.stat().st_size > 0, "Chromium wrote no screenshot"
    return matplotlib.image.imread(str(out))[..., :3]


def assert_offline(text: str) -> None:
    """Nothing the browser would fetch: every src/href is a data: URI or a fragment; no script, stylesheet
    link, CSS url() or @import; no http(s) address at all."""
    assert not re.search(r"https?:", text, re.I), re.search(r".{60}https?:.{60}", text, re.I | re.S)
    assert not re.search(r"<\s*(script|link|iframe|object|embed|base)\b", text, re.I)
    assert not re.search(r"url\s*\(|@import", text, re.I)
    for attr, value in re.findall(r"\b(src|href|srcset|action|poster)\s*=\s*[\"']?([^\"'\s>]*)", text, re.I):
        assert value.startswith(("data:image/png;base64,", "#")), (attr, value[:80])


# --------------------------------------------------------------------------------------------------
# tests


def test_the_page_renders_in_chromium_offline(settings, tmp_path):
    made = fill(settings)
    assert len(made["alerts"]) >= 5, [a.rule for a in made["alerts"]]
    page = report.write(settings)
    assert page == settings.path("reports_dir") / "monitoring.html"
    text = page.read_text(encoding="utf-8")
    assert_offline(text)
    assert not list(page.parent.glob(".monitoring.html.*")), "the temporary file was left behind"

    found = probe(page, tmp_path)
    # every image (2 heat maps + the timeline) loaded and decoded, and is drawn at a real size
    assert len(found["imgs"]) == 3, found["imgs"]
    for img in found["imgs"]:
        assert img["complete"] and img["decoded"] and img["w"] > 500 and img["h"] > 150, img
        assert img["shownW"] > 300 and img["shownH"] > 50, img
    assert sorted(found["heatmaps"]) == ["v1/champion", "v2/challenger"]
    assert found["timeline"]
    assert not [r for r in found["resources"] if not r.startswith("data:")], found["resources"]
    # the alerts table: every alert, one acknowledged
    assert sorted(found["alertIds"]) == sorted(a.alert_id for a in made["alerts"])
    assert found["openRows"] == len(made["alerts"]) - 1
    assert found["versionsRows"] == 2 and not found["empty"]
    for words in ("window length", "1h", "v1 (champion)", "v2 (challenger)", str(store.store_path(settings))):
        assert words in found["header"], (words, found["header"])

    # what a reader sees: a drawn page, with the heat maps' and the alerts' colours on it
    pixels = screenshot(page, tmp_path)
    white = (pixels > 0.97).all(axis=-1)
    assert white.mean() < 0.97, "the screenshot is (nearly) blank"
    reds = (pixels[..., 0] > 0.7) & (pixels[..., 1] < 0.4) & (pixels[..., 2] < 0.4)
    greens = (pixels[..., 1] > 0.5) & (pixels[..., 0] < 0.5) & (pixels[..., 2] < 0.5)
    assert reds.sum() > 500 and greens.sum() > 500, (reds.sum(), greens.sum())


def test_the_page_says_what_the_store_holds(settings):
    made = fill(settings)
    text = report.write(settings).read_text(encoding="utf-8")
    # the reference ROC AUC, found in the evidence of the roc_auc_drop alerts (the store has no other)
    assert any(a.rule == "roc_auc_drop" for a in made["alerts"])
    assert f"{REFERENCE_AUC:.4f}" in text
    # windows without labels do not stop the page; v1's last realized ROC AUC and its labelled rows
    assert "0.6300 (n=150, 2013-11-01 11:00 UTC)" in text
    # the acknowledged alert says by whom; every alert's message is there, escaped
    assert "by tester" in text
    for a in made["alerts"]:
        assert f'data-alert-id="{a.alert_id}"' in text
    assert "watched feature" not in text  # no rule of a feature nobody watches

    # a reference_roc_auc column in the windows (should the store carry one) is read before the alerts' evidence
    with store.connect(settings) as con:
        con.execute("ALTER TABLE windows ADD COLUMN reference_roc_auc DOUBLE")
        con.execute("UPDATE windows SET reference_roc_auc = 0.7777 WHERE model_version = 'v2'")
    text = report.write(settings).read_text(encoding="utf-8")
    assert "0.7777" in text and "not in the store" not in text


def test_an_empty_or_missing_store_gives_a_page_that_says_so(settings, tmp_path):
    page = report.write(settings)  # no store file at all: the report does not create one
    assert not store.store_path(settings).exists()
    text = page.read_text(encoding="utf-8")
    assert 'id="empty"' in text and "does not exist yet" in text
    assert_offline(text)

    with store.connect(settings):  # the schema, no rows
        pass
    text = report.write(settings).read_text(encoding="utf-8")
    assert 'id="empty"' in text and "No monitoring windows of length 1h" in text and "<img" not in text
    assert 'id="no-alerts"' in text

    fill(settings)  # windows of 1h only: a 1d page says so and names the other length
    text = report.write(settings, "1d").read_text(encoding="utf-8")
    assert "No monitoring windows of length 1d" in text and "--window 1h" in text
    assert 'id="alerts"' in text  # the alerts are listed all the same

    with pytest.raises(SettingsError, match="2h"):
        report.write(settings, "2h")

    found = probe(report.write(settings, "1d"), tmp_path)
    assert found["empty"] and found["imgs"] == [] and len(found["alertIds"]) > 0


def test_a_thousand_windows_of_twenty_features_take_under_two_seconds(settings):
    n = 1000
    cols = ", ".join(f"'{c}'" for c in FEATURES + [alerts.PREDICTION])
    with store.connect(settings) as con:
        for version, arm, skip in (("v1", "champion", 0), ("v2", "challenger", 600), (store.ALL, store.ALL, 0)):
            con.execute(f"""INSERT INTO windows (window_length, window_start, model_version, arm, requests, "rows",
                                errors, latency_p50_ms, latency_p99_ms, labelled, roc_auc, estimated_roc_auc,
                                computed_at, computed_seq)
                            SELECT '1h', TIMESTAMP '2013-01-01' + i * INTERVAL 1 HOUR, ?, ?, 100 + i % 17, 120,
                                   i % 50 = 0, 8 + i % 5, 40 + i % 30, CASE WHEN i % 3 = 0 THEN 0 ELSE 150 END,
                                   CASE WHEN i % 3 = 0 THEN NULL ELSE 0.7 + (i % 11) / 200 END,
                                   0.7 + (i % 7) / 200, TIMESTAMP '2013-03-01', 1
                            FROM range(?, {n}) t(i)""", [version, arm, skip])
            if version != store.ALL:
                con.execute(f"""INSERT INTO drift
                                SELECT '1h', TIMESTAMP '2013-01-01' + i * INTERVAL 1 HOUR, ?, ?, c,
                                       'ks', s, 0.5, 0.1, s > 0.1, 'exact', 5000, 120, NULL
                                FROM range(?, {n}) t(i), unnest([{cols}]) u(c),
                                     LATERAL (SELECT ((hash(i, c) % 1000) / 4000.0)::DOUBLE AS s)""",
                            [version, arm, skip])
        assert con.execute("SELECT count(*) FROM drift").fetchone()[0] == (n + n - 600) * 21
        fired = alerts.evaluate(window(datetime(2013, 1, 2), "v1", "champion", latency_p99_ms=900.0), [], None, settings)
        alerts.record(con, fired, settings)
    # CPU time: the machine is shared with other test runs (wall time is bounded loosely as well)
    wall, cpu = time.perf_counter(), time.process_time()
    page = report.write(settings)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cpu < 2.0 and wall < 6.0, f"report.write took {cpu:.2f} s CPU, {wall:.2f} s wall for {n} windows x 20 features"
    text = page.read_text(encoding="utf-8")
    assert text.count('class="chart heatmap"') == 2 and 'id="timeline-chart"' in text
    assert_offline(text)
