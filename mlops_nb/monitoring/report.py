"""The monitoring report: ``<paths.reports_dir>/monitoring.html``, one page readable offline.

``write(settings)`` reads the monitoring store (a read-only connection, ``store.connect``) and shows, for one
window length (``monitor.window`` unless given):

- a header: the project, when the page was made, the window length, the versions seen, the store's path and
  its last monitor call;
- a table of each model version and arm: windows, rows, labelled rows, its last realized and estimated
  ROC AUC, its reference (test) ROC AUC when the store holds it, the features drifted in its last window;
- one drift heat map per version and arm: input features (and the prediction, ``p_late``) in rows, windows
  in columns, placed on the time axis (a gap in the traffic is a blank column). A cell's colour is the
  drift statistic relative to its threshold, so that 1 is the threshold whatever the method:
  statistic / threshold (ks, js, hellinger, psi), ln(p) / ln(threshold) for chi2 (which is judged on its
  p-value); drifted cells carry a mark; a cell without a statistic (too few rows, no reference) is grey;
- one chart over the same time axis: realized ROC AUC (markers; the labelled rows of each point written by
  it when there are few) and estimated ROC AUC (dotted) of each version and arm, each version's reference
  ROC AUC as a dashed line; labelled rows; volume (requests, rows, failed requests); latency p50 and p99;
  the alerts as markers (open: filled, acknowledged: hollow), open ones also as faint lines across the
  panels above;
- the alerts: id, rule, window, version and arm, message, open or acknowledged.

The reference ROC AUC is read from the store only (a ``reference_roc_auc`` column of ``windows`` or of another
table keyed by ``model_version``, else the evidence of a ``roc_auc_drop`` / ``estimated_drop`` alert): the
report never opens the model registry. Missing values (windows without labels, NaN) are gaps, never errors.

Self-contained: the charts are matplotlib PNGs (``Figure``, Agg; no pyplot) embedded as base64 ``data:`` URIs,
the style sheet is inline, there is no script, font, stylesheet or image from anywhere else. The page is
written to a temporary file in the same folder and renamed over the old one, so a reader sees a whole page.
An empty store, or one without windows of the length, gives a page that says so.
"""
from __future__ import annotations

import html
import math
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from . import alerts as alerts_mod
from . import store

REPORT_FILE = "monitoring.html"
STEPS = {"1h": timedelta(hours=1), "1d": timedelta(days=1)}
PREDICTION = alerts_mod.PREDICTION
RATIO_MAX = 3.0  # heat-map colours saturate at three times the threshold
MAX_HEATMAPS = 12  # version/arm heat maps drawn (the newest); the others are named
MAX_ALERT_ROWS = 500  # alerts listed (the newest); the others are counted
FIG_WIDTH = 13.0  # inches; every chart has the same width and margins, so their time axes line up
LEFT, RIGHT = 0.12, 0.83
DPI = 96
ANNOTATE_MAX = 24  # realized points of a series annotated with their labelled rows
ARM_MARKERS = {"champion": "o", "challenger": "s", "shadow": "^"}

WINDOW_FIELDS = ("window_start", "model_version", "arm", "requests", "rows", "errors", "latency_p50_ms",
                 "latency_p99_ms", "labelled", "roc_auc", "estimated_roc_auc", "estimate_method", "realized_note",
                 "reference_roc_auc")

# the drift statistic relative to its threshold: 1 at the threshold, above 1 drifted (chi2: on its p-value)
_RATIO_SQL = f"""CASE WHEN method = 'chi2' THEN
        CASE WHEN p_value IS NULL OR isnan(p_value) OR threshold IS NULL OR NOT (threshold > 0 AND threshold < 1)
             THEN NULL WHEN p_value <= 0 THEN {RATIO_MAX} ELSE ln(p_value) / ln(threshold) END
    ELSE CASE WHEN statistic IS NULL OR isnan(statistic) OR threshold IS NULL OR NOT threshold > 0 THEN NULL
              ELSE statistic / threshold END END"""


def report_path(settings) -> Path:
    return settings.path("reports_dir") / REPORT_FILE


def write(settings, length: str | None = None) -> Path:
    """Write ``<reports_dir>/monitoring.html`` from the monitoring store; returns its path. Call it when no
    connection writes the store (DuckDB lets no reader in beside another process's writer)."""
    length = length or settings.monitor.window
    if length not in STEPS:
        from ..errors import SettingsError

        raise SettingsError(f"The window must be one of {', '.join(repr(k) for k in STEPS)}; got {length!r} instead.")
    data = _read(settings, length)
    page = _page(settings, length, data)
    out = report_path(settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------
# reading the store


def _num(value) -> float | None:
    """A finite float, or None (NULL, NaN, infinities)."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read(settings, length: str) -> dict:
    path = store.store_path(settings)
    data = {"store": path, "exists": path.exists(), "windows": [], "drift": [], "alerts": [], "lengths": {},
            "last_call": None, "references": {}}
    if not data["exists"]:
        return data
    import duckdb

    from ..errors import DataError

    try:
        return _read_store(settings, length, data)
    except duckdb.IOException as e:  # another process holds the store open for writing
        raise DataError(f"The monitoring store {path} could not be opened for reading ({e}); write the report "
                        "when no monitor call is writing it.") from None


def _read_store(settings, length: str, data: dict) -> dict:
    with store.connect(settings, read_only=True) as con:
        columns: dict[str, set[str]] = {}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns "
                                         "WHERE table_schema = 'main'").fetchall():
            columns.setdefault(table, set()).add(column)
        if "windows" in columns:
            fields = [c for c in WINDOW_FIELDS if c in columns["windows"]]
            cur = con.execute(f"SELECT {', '.join(_q(c) for c in fields)} FROM windows WHERE window_length = ? "
                              "ORDER BY window_start, model_version, arm", [length])
            data["windows"] = [dict(zip(fields, r)) for r in cur.fetchall()]
            data["lengths"] = dict(con.execute("SELECT window_length, count(DISTINCT window_start) FROM windows "
                                               "GROUP BY 1 ORDER BY 1").fetchall())
        if "drift" in columns:
            data["drift"] = con.execute(
                f"""SELECT model_version, arm, window_start, "column", {_RATIO_SQL} AS ratio, drifted
                    FROM drift WHERE window_length = ?""", [length]).fetchall()
        if "calls" in columns:
            data["last_call"] = con.execute("SELECT seq, finished_at, window_length FROM calls ORDER BY seq DESC "
                                            "LIMIT 1").fetchone()
        data["alerts"] = alerts_mod.listing(con)
        data["references"] = _references(con, columns, data["alerts"])
    return data


def _references(con, columns: dict[str, set[str]], alerts: list) -> dict[str, float]:
    """version -> reference (test) ROC AUC, from what the store holds: a ``reference_roc_auc`` column (of
    windows first, the newest value), else the evidence of the alerts that compared against it."""
    out: dict[str, float] = {}
    tables = sorted(columns, key=lambda t: t != "windows")
    for table in tables:
        if {"model_version", "reference_roc_auc"} <= columns[table]:
            order = "window_start" if "window_start" in columns[table] else "reference_roc_auc"
            for version, value in con.execute(
                    f"SELECT model_version, arg_max(reference_roc_auc, {_q(order)}) FROM {_q(table)} "
                    "WHERE reference_roc_auc IS NOT NULL AND NOT isnan(reference_roc_auc) GROUP BY 1").fetchall():
                if _num(value) is not None:
                    out.setdefault(version, float(value))
    for a in sorted(alerts, key=lambda a: a.window_start):  # the newest evidence last, so it wins
        value = _num((a.evidence or {}).get("reference_roc_auc"))
        if value is not None and a.model_version not in out:
            out[a.model_version] = value
    return out


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------------------------------
# the page


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #222;
       margin: 24px auto; max-width: 1300px; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 4px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 16px; margin: 8px 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.open td.status { color: #b00; font-weight: 600; } tr.acked td { color: #777; }
figure { margin: 0 0 12px; }
img.chart { width: 100%; height: auto; display: block; }
p.note, figcaption { color: #555; font-size: 13px; }
p.empty { font-size: 16px; padding: 12px; background: #fff8e1; border: 1px solid #f0d070; }
code { font-size: 12px; }
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _ts(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M") + " UTC"
    return str(value)


def _f(value, digits: int = 4) -> str:
    v = _num(value)
    return "" if v is None else f"{v:.{digits}f}"


def _series_label(version: str, arm: str) -> str:
    return f"{version} ({arm})"


def _page(settings, length: str, data: dict) -> str:
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    windows = data["windows"]
    served = [w for w in windows if w["model_version"] != store.ALL]
    keys = sorted({(w["model_version"], w["arm"]) for w in served},
                  key=lambda k: (-max(w["window_start"].timestamp() for w in served
                                      if (w["model_version"], w["arm"]) == k), k))
    starts = sorted({w["window_start"] for w in windows})

    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>Monitoring: {_e(settings.registry.model_name)}</title><style>{CSS}</style></head><body>",
             f"<h1>Monitoring: {_e(settings.registry.model_name)}</h1>",
             "<dl class=\"meta\" id=\"header\">",
             f"<dt>project</dt><dd>{_e(settings.root.name)} <code>{_e(settings.root)}</code></dd>",
             f"<dt>generated at</dt><dd>{_e(_ts(now))}</dd>",
             f"<dt>window length</dt><dd>{_e(length)}"
             + (f" ({len(starts)} windows, {_e(_ts(starts[0]))} to {_e(_ts(starts[-1] + STEPS[length]))})"
                if starts else "") + "</dd>",
             f"<dt>versions seen</dt><dd>{_e(', '.join(_series_label(*k) for k in keys) or 'none')}</dd>",
             f"<dt>store</dt><dd><code>{_e(data['store'])}</code></dd>"]
    if data["last_call"]:
        seq, finished, call_length = data["last_call"]
        parts.append(f"<dt>last monitor call</dt><dd>#{_e(seq)}, {_e(_ts(finished))} ({_e(call_length)} windows)</dd>")
    parts.append("</dl>")

    if not data["exists"]:
        parts.append("<p class=\"empty\" id=\"empty\">The monitoring store does not exist yet: nothing has been "
                     "monitored. <code>mlops-nb monitor</code> creates it from the service's logs.</p>")
    elif not windows:
        others = {k: v for k, v in data["lengths"].items() if k != length}
        hint = "".join(f" It holds {n} window(s) of length {_e(k)} (<code>mlops-nb monitor --window {_e(k)}</code>)."
                       for k, n in others.items())
        parts.append(f"<p class=\"empty\" id=\"empty\">No monitoring windows of length {_e(length)} in the store "
                     f"yet: no predictions have been monitored.{hint}</p>")
    else:
        parts += _versions_table(keys, served, data)
        parts += _charts(length, windows, keys, data)
    parts += _alerts_table(data["alerts"])
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _versions_table(keys, served, data) -> list[str]:
    refs = data["references"]
    rows = ["<h2>Versions</h2>", "<table id=\"versions\"><thead><tr><th>version</th><th>arm</th><th>windows</th>"
            "<th>first window</th><th>last window</th><th>rows</th><th>labelled</th>"
            "<th>last realized ROC AUC</th><th>last estimated ROC AUC</th><th>reference ROC AUC</th>"
            "<th>drifted in its last window</th></tr></thead><tbody>"]
    last_drifted: dict[tuple, list[str]] = {}
    latest: dict[tuple, datetime] = {}
    for version, arm, ws, column, _, drifted in data["drift"]:
        k = (version, arm)
        if latest.get(k) is None or ws > latest[k]:
            latest[k], last_drifted[k] = ws, []
        if ws == latest[k] and drifted:
            last_drifted[k].append(column)
    for k in keys:
        ws = [w for w in served if (w["model_version"], w["arm"]) == k]
        realized = [w for w in ws if _num(w.get("roc_auc")) is not None]
        estimated = [w for w in ws if _num(w.get("estimated_roc_auc")) is not None]
        last_r = (f"{_f(realized[-1]['roc_auc'])} (n={_e(realized[-1].get('labelled'))}, "
                  f"{_e(_ts(realized[-1]['window_start']))})") if realized else "no labels yet"
        last_e = f"{_f(estimated[-1]['estimated_roc_auc'])}" if estimated else ""
        ref = refs.get(k[0])
        rows.append(
            f"<tr><td>{_e(k[0])}</td><td>{_e(k[1])}</td><td class=\"num\">{len(ws)}</td>"
            f"<td>{_e(_ts(ws[0]['window_start']))}</td><td>{_e(_ts(ws[-1]['window_start']))}</td>"
            f"<td class=\"num\">{sum(int(w.get('rows') or 0) for w in ws)}</td>"
            f"<td class=\"num\">{sum(int(w.get('labelled') or 0) for w in ws)}</td>"
            f"<td>{last_r}</td><td class=\"num\">{last_e}</td>"
            f"<td class=\"num\">{_f(ref) if ref is not None else 'not in the store'}</td>"
            f"<td>{_e(', '.join(sorted(last_drifted.get(k, []))) or 'none')}</td></tr>")
    rows.append("</tbody></table>")
    return rows


def _alerts_table(alerts: list) -> list[str]:
    n_open = sum(1 for a in alerts if a.acked_at is None)
    out = [f"<h2>Alerts</h2><p class=\"note\">{len(alerts)} alert(s), {n_open} open "
           "(<code>mlops-nb alerts ack ID</code> acknowledges one).</p>"]
    out.append("<table id=\"alerts\"><thead><tr><th>id</th><th>rule</th><th>window</th><th>version</th>"
               "<th>message</th><th>status</th><th>fired at</th></tr></thead><tbody>")
    for a in alerts[:MAX_ALERT_ROWS]:
        status = "open" if a.acked_at is None else f"acked {_ts(a.acked_at)}" + (f" by {a.acked_by}" if a.acked_by else "")
        out.append(f"<tr class=\"{'open' if a.acked_at is None else 'acked'}\" data-alert-id=\"{_e(a.alert_id)}\">"
                   f"<td><code>{_e(a.alert_id)}</code></td><td>{_e(a.rule)}</td>"
                   f"<td>{_e(a.window_length)} {_e(_ts(a.window_start))}</td>"
                   f"<td>{_e(a.model_version)} ({_e(a.arm)})</td><td>{_e(a.message)}</td>"
                   f"<td class=\"status\">{_e(status)}</td><td>{_e(_ts(a.fired_at))}</td></tr>")
    out.append("</tbody></table>")
    if len(alerts) > MAX_ALERT_ROWS:
        out.append(f"<p class=\"note\">{len(alerts) - MAX_ALERT_ROWS} older alert(s) not listed; "
                   "<code>mlops-nb alerts</code> lists them all.</p>")
    if not alerts:
        out.append("<p class=\"note\" id=\"no-alerts\">No alerts.</p>")
    return out


# --------------------------------------------------------------------------------------------------
# charts


def _png(fig) -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, ident: str, alt: str, cls: str = "chart", extra: str = "") -> str:
    w, h = fig.get_size_inches()
    return (f"<img id=\"{_e(ident)}\" class=\"{cls}\" alt=\"{_e(alt)}\" width=\"{round(w * DPI)}\" "
            f"height=\"{round(h * DPI)}\" {extra} src=\"{_png(fig)}\">")


def _time_axis(ax, x0, x1) -> None:
    import matplotlib.dates as mdates

    ax.set_xlim(x0, x1)
    locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.grid(True, axis="x", color="#e4e4e4", linewidth=0.6)


def _charts(length: str, windows: list[dict], keys: list[tuple], data: dict) -> list[str]:
    import matplotlib.dates as mdates
    import numpy as np

    step = STEPS[length]
    alerts = data["alerts"]
    times = [w["window_start"] for w in windows]
    alert_times = [a.window_start + STEPS.get(a.window_length, step) / 2 for a in alerts
                   if isinstance(a.window_start, datetime)]
    t0 = min(times + [t - step / 2 for t in alert_times])
    t1 = max([t + step for t in times] + [t + step / 2 for t in alert_times])
    x0, x1 = mdates.date2num(np.array([t0, t1], dtype="datetime64[us]"))
    colours = _colours(sorted({k[0] for k in keys}))
    out = ["<h2>Drift per feature</h2>",
           "<p class=\"note\">One heat map per version and arm: features in rows, windows in columns on the time "
           "axis of the chart below. Colour: the drift statistic relative to its threshold (statistic / threshold; "
           "chi2: ln p / ln threshold), green below 1, red above (drifted); a cross marks a drifted cell; grey: no "
           "statistic (too few rows, or no reference).</p>", "<div id=\"drift-heatmaps\">"]
    shown = keys[:MAX_HEATMAPS]
    by_key: dict[tuple, list] = {k: [] for k in shown}
    for row in data["drift"]:
        k = (row[0], row[1])
        if k in by_key:
            by_key[k].append(row)
    for i, k in enumerate(shown):
        out.append(f"<figure><h3>{_e(_series_label(*k))}</h3>")
        if by_key[k]:
            fig = _heatmap(by_key[k], step, x0, x1)
            out.append(_img(fig, f"heatmap-{i}", f"drift heat map of {_series_label(*k)}", "chart heatmap",
                            f"data-version=\"{_e(k[0])}\" data-arm=\"{_e(k[1])}\""))
        else:
            out.append("<p class=\"note\">No drift rows for this version and arm.</p>")
        out.append("</figure>")
    if len(keys) > len(shown):
        out.append(f"<p class=\"note\">Heat maps of {len(keys) - len(shown)} older version(s)/arm(s) not drawn: "
                   f"{_e(', '.join(_series_label(*k) for k in keys[len(shown):]))}.</p>")
    out.append("</div>")
    fig = _timeline(windows, keys, data, step, x0, x1, colours)
    out += ["<h2>ROC AUC, volume, latency and alerts over time</h2>",
            "<figure id=\"timeline\">",
            _img(fig, "timeline-chart", "realized and estimated ROC AUC per version, labelled rows, volume, latency "
                 "and alerts over time"),
            "<figcaption>ROC AUC: realized on the labelled rows (markers, labelled rows written by them when few) "
            "and estimated from the predictions alone (dotted); dashed: the version's reference (test) ROC AUC when "
            "the store holds it. Alerts: filled markers are open, hollow ones acknowledged; open alerts are also "
            "faint red lines across the panels. Times are window starts and ends in UTC.</figcaption></figure>"]
    return out


def _colours(versions: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    return {v: palette[i % len(palette)] for i, v in enumerate(versions)}


def _heatmap(rows: list, step: timedelta, x0: float, x1: float):
    import matplotlib.dates as mdates
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    order = {c: i for i, c in enumerate(store.INPUT_COLUMNS)}
    features = sorted({r[3] for r in rows}, key=lambda c: (c == PREDICTION, order.get(c, len(order)), c))
    row_of = {c: i for i, c in enumerate(features)}
    starts = sorted({r[2] for r in rows})
    # columns on the time axis: one a window, and one blank column for each gap between windows
    edges, col_of, gaps = [starts[0]], {}, []
    for s in starts:
        if s > edges[-1]:
            gaps.append((edges[-1], s))
            edges.append(s)
        col_of[s] = len(edges) - 1
        edges.append(s + step)
    grid = np.full((len(features), len(edges) - 1), np.nan)
    marks_x, marks_y = [], []
    for _, _, ws, column, ratio, drifted in rows:
        r, c = row_of[column], col_of[ws]
        v = _num(ratio)
        if v is not None:
            grid[r, c] = min(max(v, 0.0), RATIO_MAX)
        if drifted:
            marks_x.append(ws + step / 2)
            marks_y.append(r + 0.5)
    height = 0.9 + 0.17 * len(features)
    fig = Figure(figsize=(FIG_WIDTH, height))
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=1 - 0.15 / height, bottom=0.55 / height)
    ax = fig.add_subplot()
    cmap = colormaps["RdYlGn_r"].with_extremes(bad="#d9d9d9")
    xe = mdates.date2num(np.array(edges, dtype="datetime64[us]"))
    mesh = ax.pcolorfast(xe, np.arange(len(features) + 1), np.ma.masked_invalid(grid), cmap=cmap,
                         norm=TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=RATIO_MAX))
    for a, b in gaps:  # no windows there: blank, not grey (grey is a window without a statistic)
        ga, gb = mdates.date2num(np.array([a, b], dtype="datetime64[us]"))
        ax.axvspan(ga, gb, color="white", zorder=2)
    if marks_x:
        span_pt = FIG_WIDTH * 72 * (RIGHT - LEFT) * (step.total_seconds() / 86400) / max(x1 - x0, 1e-9)
        size = min(max(0.6 * min(span_pt, 0.17 * 72), 1.5), 7.0) ** 2
        ax.scatter(mdates.date2num(np.array(marks_x, dtype="datetime64[us]")), marks_y, marker="x", s=size,
                   c="black", linewidths=0.7)
    ax.set_ylim(len(features), 0)
    ax.set_yticks(np.arange(len(features)) + 0.5, [c if c != PREDICTION else f"{c} (prediction)" for c in features],
                  fontsize=7)
    if PREDICTION in row_of and len(features) > 1:
        ax.axhline(row_of[PREDICTION], color="black", linewidth=0.8)
    _time_axis(ax, x0, x1)
    ax.grid(False)
    ax.tick_params(axis="x", labelsize=8)
    cax = fig.add_axes([RIGHT + 0.015, 0.55 / height, 0.01, 1 - 0.7 / height])
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label("statistic / threshold", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    return fig


def _timeline(windows: list[dict], keys: list[tuple], data: dict, step: timedelta, x0: float, x1: float,
              colours: dict[str, str]):
    import matplotlib.dates as mdates
    import numpy as np
    from matplotlib.figure import Figure

    def xs(ws):
        return mdates.date2num(np.array([w["window_start"] + step / 2 for w in ws], dtype="datetime64[us]"))

    def ys(ws, field):
        return np.array([np.nan if _num(w.get(field)) is None else float(w[field]) for w in ws])

    def with_gaps(ws):
        """The windows with an empty one in each gap, so that lines break where there was no traffic."""
        out = []
        for w in ws:
            if out and w["window_start"] - out[-1]["window_start"] > step:
                out.append({"window_start": out[-1]["window_start"] + step})
            out.append(w)
        return out

    series = {k: with_gaps([w for w in windows if (w["model_version"], w["arm"]) == k]) for k in keys}
    service = with_gaps([w for w in windows if w["model_version"] == store.ALL])
    alerts = [a for a in data["alerts"] if isinstance(a.window_start, datetime)]
    rules = sorted({a.rule for a in alerts})
    ratios = [3.2, 1.1, 1.3, 1.3, 0.35 + 0.22 * max(len(rules), 1)]
    height = 1.0 + sum(ratios) * 1.0
    fig = Figure(figsize=(FIG_WIDTH, height))
    fig.subplots_adjust(left=LEFT, right=RIGHT, top=1 - 0.25 / height, bottom=0.5 / height, hspace=0.18)
    axes = fig.subplots(len(ratios), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    ax_auc, ax_lab, ax_vol, ax_lat, ax_alert = axes

    # ROC AUC: realized (markers), estimated (dotted), reference (dashed)
    for k, ws in series.items():
        colour, marker = colours[k[0]], ARM_MARKERS.get(k[1], "D")
        x, realized, estimated = xs(ws), ys(ws, "roc_auc"), ys(ws, "estimated_roc_auc")
        if np.isfinite(realized).any():
            ax_auc.plot(x, realized, color=colour, marker=marker, markersize=4, linewidth=1.4,
                        label=f"{_series_label(*k)} realized")
            points = [(xi, yi, w.get("labelled")) for xi, yi, w in zip(x, realized, ws) if np.isfinite(yi)]
            if len(points) <= ANNOTATE_MAX:
                for xi, yi, n in points:
                    ax_auc.annotate(f"n={n}", (xi, yi), textcoords="offset points", xytext=(0, 5), fontsize=6,
                                    ha="center", color=colour)
        if np.isfinite(estimated).any():
            ax_auc.plot(x, estimated, color=colour, linestyle=":", marker=".", markersize=3, linewidth=1.2,
                        label=f"{_series_label(*k)} estimated")
    for version in sorted({k[0] for k in keys}):
        ref = data["references"].get(version)
        if ref is not None:
            ax_auc.axhline(ref, color=colours[version], linestyle="--", linewidth=1.0,
                           label=f"{version} reference {ref:.3f}")
    ax_auc.set_ylabel("ROC AUC")
    if not ax_auc.get_legend_handles_labels()[0]:
        ax_auc.text(0.5, 0.5, "no realized or estimated ROC AUC yet", transform=ax_auc.transAxes, ha="center",
                    va="center", color="#777")
        ax_auc.set_ylim(0.4, 1.0)

    # labelled rows
    for k, ws in series.items():
        ax_lab.plot(xs(ws), ys(ws, "labelled"), color=colours[k[0]], marker=ARM_MARKERS.get(k[1], "D"),
                    markersize=2.5, linewidth=1.0, label=f"{_series_label(*k)}")
    ax_lab.set_ylabel("labelled\nrows")
    ax_lab.set_ylim(bottom=0)

    # volume: the whole service when the request log gave its windows, else the served arms (no shadow)
    served = [k for k in keys if k[1] != "shadow"]
    if service:
        x = xs(service)
        ax_vol.plot(x, ys(service, "requests"), color="black", linewidth=1.2, label="requests")
        ax_vol.plot(x, ys(service, "rows"), color="#777", linestyle="--", linewidth=1.0, label="rows")
        ax_vol.plot(x, ys(service, "errors"), color="#d62728", linewidth=1.0, label="failed requests")
    if not service or len(served) > 1:
        for k in served:
            ax_vol.plot(xs(series[k]), ys(series[k], "rows"), color=colours[k[0]], linewidth=0.9, alpha=0.8,
                        label=f"{_series_label(*k)} rows")
    ax_vol.set_ylabel("volume")
    ax_vol.set_ylim(bottom=0)

    # latency: p50 solid, p99 dashed
    lat = [("service", service, "black")] if service and np.isfinite(ys(service, "latency_p50_ms")).any() else \
        [(_series_label(*k), series[k], colours[k[0]]) for k in served]
    for label, ws, colour in lat:
        x = xs(ws)
        ax_lat.plot(x, ys(ws, "latency_p50_ms"), color=colour, linewidth=1.1, label=f"{label} p50")
        ax_lat.plot(x, ys(ws, "latency_p99_ms"), color=colour, linestyle="--", linewidth=1.0, label=f"{label} p99")
    ax_lat.set_ylabel("latency\nms")
    ax_lat.set_ylim(bottom=0)

    # alerts: one row a rule; open ones filled (and a faint line across the panels), acknowledged hollow
    y_of = {r: i for i, r in enumerate(rules)}
    if alerts:
        ax_arr = mdates.date2num(np.array([a.window_start + STEPS.get(a.window_length, step) / 2 for a in alerts],
                                          dtype="datetime64[us]"))
        is_open = np.array([a.acked_at is None for a in alerts])
        y_arr = np.array([y_of[a.rule] for a in alerts])
        if is_open.any():
            ax_alert.scatter(ax_arr[is_open], y_arr[is_open], marker="v", s=36, c="#d62728", label="open",
                             zorder=3)
            for panel in (ax_auc, ax_lab, ax_vol, ax_lat):
                panel.vlines(np.unique(ax_arr[is_open]), 0, 1, transform=panel.get_xaxis_transform(), colors="#d62728",
                             alpha=0.18, linewidth=1.0, zorder=0)
        if (~is_open).any():
            ax_alert.scatter(ax_arr[~is_open], y_arr[~is_open], marker="v", s=36, facecolors="none",
                             edgecolors="#777", label="acknowledged", zorder=3)
        ax_alert.set_yticks(range(len(rules)), rules, fontsize=7)
        ax_alert.set_ylim(len(rules) - 0.5, -0.5)
    else:
        ax_alert.set_yticks([])
        ax_alert.text(0.5, 0.5, "no alerts", transform=ax_alert.transAxes, ha="center", va="center", color="#777")
    ax_alert.set_ylabel("alerts")

    for panel, what in ((ax_vol, "no volume: only shadow scores"), (ax_lat, "no latency measured")):
        if not panel.get_legend_handles_labels()[0]:
            panel.text(0.5, 0.5, what, transform=panel.transAxes, ha="center", va="center", color="#777")
    for panel in axes:
        _time_axis(panel, x0, x1)
        panel.tick_params(labelsize=8)
        if panel.get_legend_handles_labels()[0]:
            panel.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, frameon=False,
                         borderaxespad=0.0)
    return fig
