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

Self-contained: the charts are inline SVG (``<svg>`` elements in the page) drawn by this module, with hover
tooltips (``<title>``) on cells, points and alerts. No plotting library is imported, so a report costs milliseconds
(importing and rendering matplotlib took more than half a second, too much for an incremental monitor call). The
style sheet is inline; there is no script, font, stylesheet or image from anywhere else. The page is
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
WIDTH = 1280  # px, the viewBox width of every chart; the same plot area in all, so their time axes line up
PLOT_LEFT, PLOT_RIGHT = 150, 1040  # px; the feature names and y ticks on the left, colour bar and legends right
ROW_PX = 14  # px, a heat-map row
MAX_CELL_TITLES = 5000  # heat-map cells with a hover tooltip; beyond, none, to keep the page small
MAX_POINT_TITLES = 500  # the same for the points of a ROC AUC series
TIME_STEPS = [timedelta(minutes=15), timedelta(minutes=30)] + [timedelta(hours=h) for h in (1, 2, 3, 6, 12)] + \
    [timedelta(days=d) for d in (1, 2, 7, 14)] + [1, 3, 6, 12, 24, 60, 120]  # ints: months
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
svg.chart { width: 100%; height: auto; display: block; }
svg.chart text { font: 10px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; fill: #333; }
svg.chart text.small { font-size: 9px; } svg.chart text.tiny { font-size: 8px; }
svg.chart text.muted { font-size: 12px; fill: #777; }
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
# charts: inline SVG, drawn here (a plotting library would cost more to import than the whole report)


class _Axis:
    """The time axis every chart shares: time -> x in the plot area, and its ticks."""

    def __init__(self, t0: datetime, t1: datetime):
        self.t0, self.span = t0, max((t1 - t0).total_seconds(), 1.0)
        self.ticks = _time_ticks(t0, t1)

    def x(self, t: datetime) -> float:
        return PLOT_LEFT + (t - self.t0).total_seconds() / self.span * (PLOT_RIGHT - PLOT_LEFT)


def _time_ticks(t0: datetime, t1: datetime) -> list[tuple[datetime, str, str]]:
    """(time, label, date line) of the first step of TIME_STEPS that gives at most eight ticks; the date line
    is written under the first sub-day tick and wherever the date changes."""
    for step in TIME_STEPS:
        if isinstance(step, int):  # months
            months = t0.year * 12 + t0.month - 1 + (t0 != datetime(t0.year, t0.month, 1))
            months += -months % step
            ticks = []
            while (t := datetime(months // 12, months % 12 + 1, 1)) <= t1:
                ticks.append(t)
                months += step
        else:
            origin = datetime(1970, 1, 5) if step >= timedelta(days=7) else datetime(1970, 1, 1)  # weeks: Mondays
            t = origin + -((origin - t0) // step) * step
            ticks = []
            while t <= t1:
                ticks.append(t)
                t += step
        if len(ticks) <= 8 or step is TIME_STEPS[-1]:
            break
    out, day = [], None
    for t in ticks:
        if isinstance(step, int):
            out.append((t, t.strftime("%Y-%m"), ""))
        elif step >= timedelta(days=1):
            out.append((t, t.strftime("%Y-%m-%d"), ""))
        else:
            out.append((t, t.strftime("%H:%M"), t.strftime("%Y-%m-%d") if t.date() != day else ""))
            day = t.date()
    return out


def _nice_ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    """About n ticks in [lo, hi] at a 1, 2 or 5 x 10^k step."""
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * 0.999)
    first = math.ceil(lo / step - 1e-9)
    return [round(i * step, 12) for i in range(first, math.floor(hi / step + 1e-9) + 1)]


def _fmt(v: float, ticks: list[float]) -> str:
    """A tick label with the digits its step needs; thousands as k from 10 000 on."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if max(abs(t) for t in ticks) >= 10_000:
        v, step = v / 1000, step / 1000
        return f"{v:.{max(0, -math.floor(math.log10(step)))}f}k"
    return f"{v:.{max(0, -math.floor(math.log10(step)))}f}"


def _n(v: float) -> str:
    """A coordinate: one decimal is finer than a pixel, and keeps the page small."""
    return f"{v:.1f}".removesuffix(".0")


def _path(points) -> str:
    """A polyline's ``d``, broken at every point whose y is None (a gap or a missing value)."""
    out, move = [], True
    for x, y in points:
        if y is None:
            move = True
            continue
        out.append(f"{'M' if move else 'L'}{_n(x)} {_n(y)}")
        move = False
    return "".join(out)


def _line(points, colour: str, dash: str = "", width: float = 1.2) -> str:
    d = _path(points)
    return (f'<path d="{d}" fill="none" stroke="{colour}" stroke-width="{width}"'
            + (f' stroke-dasharray="{dash}"' if dash else "") + "/>") if d else ""


def _marker(shape: str, x: float, y: float, r: float, fill: str, stroke: str, cls: str = "", title: str = "",
            attrs: str = "") -> str:
    """A point: o circle, s square, ^ / v triangle, D diamond; ``title`` is its tooltip."""
    paint = f'fill="{fill}" stroke="{stroke}"' + (f' class="{cls}"' if cls else "") + attrs
    if shape == "o":
        el = f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{r}" {paint}'
    elif shape == "s":
        el = f'<rect x="{_n(x - r)}" y="{_n(y - r)}" width="{2 * r}" height="{2 * r}" {paint}'
    else:
        dy = -r if shape == "^" else r
        d = (f"M{_n(x)} {_n(y - r)}l{r} {r}l{-r} {r}l{-r} {-r}z" if shape == "D" else
             f"M{_n(x)} {_n(y + dy)}L{_n(x + r)} {_n(y - dy)}H{_n(x - r)}z")
        el = f'<path d="{d}" {paint}'
    return f"{el}><title>{_e(title)}</title></{el[1:el.index(' ')]}>" if title else el + "/>"


def _text(x: float, y: float, text: str, anchor: str = "start", cls: str = "", extra: str = "") -> str:
    return (f'<text x="{_n(x)}" y="{_n(y)}"' + (f' text-anchor="{anchor}"' if anchor != "start" else "")
            + (f' class="{cls}"' if cls else "") + extra + f">{_e(text)}</text>")


def _svg(ident: str, height: float, label: str, body: list[str], cls: str = "chart", extra: str = "") -> str:
    height = math.ceil(height)
    return (f'<svg id="{_e(ident)}" class="{cls}" {extra} role="img" aria-label="{_e(label)}" '
            f'viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}"><title>{_e(label)}</title>'
            + "".join(body) + "</svg>")


def _x_axis(axis: _Axis, top: float, bottom: float, labels: bool, grid: bool) -> list[str]:
    """The time ticks of a plot area: grid lines across it, and the labels under it when ``labels``."""
    out = []
    if grid:
        out.append('<path stroke="#e4e4e4" d="' + "".join(f"M{_n(axis.x(t))} {_n(top)}V{_n(bottom)}"
                                                          for t, _, _ in axis.ticks) + '"/>')
    if labels:
        out.append('<path stroke="#555" d="' + "".join(f"M{_n(axis.x(t))} {_n(bottom)}v4" for t, _, _ in axis.ticks)
                   + '"/>')
        for t, label, date in axis.ticks:
            out.append(_text(axis.x(t), bottom + 15, label, "middle"))
            if date:
                out.append(_text(axis.x(t), bottom + 27, date, "middle"))
    return out


def _frame(top: float, height: float) -> str:
    return (f'<rect x="{PLOT_LEFT}" y="{_n(top)}" width="{PLOT_RIGHT - PLOT_LEFT}" height="{_n(height)}" '
            'fill="none" stroke="#999"/>')


def _charts(length: str, windows: list[dict], keys: list[tuple], data: dict) -> list[str]:
    step = STEPS[length]
    alerts = data["alerts"]
    times = [w["window_start"] for w in windows]
    alert_times = [a.window_start + STEPS.get(a.window_length, step) / 2 for a in alerts
                   if isinstance(a.window_start, datetime)]
    t0 = min(times + [t - step / 2 for t in alert_times])
    t1 = max([t + step for t in times] + [t + step / 2 for t in alert_times])
    axis = _Axis(t0, t1)
    colours = _colours(sorted({k[0] for k in keys}))
    out = ["<h2>Drift per feature</h2>",
           "<p class=\"note\">One heat map per version and arm: features in rows, windows in columns on the time "
           "axis of the chart below. Colour: the drift statistic relative to its threshold (statistic / threshold; "
           "chi2: ln p / ln threshold), green below 1, red above (drifted); a cross marks a drifted cell; grey: no "
           "statistic (too few rows, or no reference). Hover a cell for its value.</p>", "<div id=\"drift-heatmaps\">"]
    shown = keys[:MAX_HEATMAPS]
    by_key: dict[tuple, list] = {k: [] for k in shown}
    for row in data["drift"]:
        k = (row[0], row[1])
        if k in by_key:
            by_key[k].append(row)
    for i, k in enumerate(shown):
        out.append(f"<figure><h3>{_e(_series_label(*k))}</h3>")
        if by_key[k]:
            out.append(_heatmap(by_key[k], step, axis, f"heatmap-{i}", f"drift heat map of {_series_label(*k)}",
                                f"data-version=\"{_e(k[0])}\" data-arm=\"{_e(k[1])}\""))
        else:
            out.append("<p class=\"note\">No drift rows for this version and arm.</p>")
        out.append("</figure>")
    if len(keys) > len(shown):
        out.append(f"<p class=\"note\">Heat maps of {len(keys) - len(shown)} older version(s)/arm(s) not drawn: "
                   f"{_e(', '.join(_series_label(*k) for k in keys[len(shown):]))}.</p>")
    out.append("</div>")
    out += ["<h2>ROC AUC, volume, latency and alerts over time</h2>",
            "<figure id=\"timeline\">",
            _timeline(windows, keys, data, step, axis, colours),
            "<figcaption>ROC AUC: realized on the labelled rows (markers, labelled rows written by them when few) "
            "and estimated from the predictions alone (dotted); dashed: the version's reference (test) ROC AUC when "
            "the store holds it. Alerts: filled markers are open, hollow ones acknowledged; open alerts are also "
            "faint red lines across the panels. Times are window starts and ends in UTC.</figcaption></figure>"]
    return out


def _colours(versions: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
               "#bcbd22", "#7f7f7f"]
    return {v: palette[i % len(palette)] for i, v in enumerate(versions)}


def _interpolated(stops: list[str], n: int) -> list[str]:
    rgb = [tuple(int(s[i:i + 2], 16) for i in (1, 3, 5)) for s in stops]
    out = []
    for j in range(n):
        pos = j / (n - 1) * (len(rgb) - 1)
        i = min(int(pos), len(rgb) - 2)
        f = pos - i
        out.append("#" + "".join(f"{round(a + (b - a) * f):02x}" for a, b in zip(rgb[i], rgb[i + 1])))
    return out


# ColorBrewer's RdYlGn reversed, in 65 steps: equal colours for close ratios keep the page small
_HEAT = _interpolated(["#006837", "#1a9850", "#66bd63", "#a6d96a", "#d9ef8b", "#ffffbf", "#fee08b", "#fdae61",
                       "#f46d43", "#d73027", "#a50026"], 65)
NO_STATISTIC = "#d9d9d9"


def _heat_position(ratio: float) -> float:
    """Where a ratio sits on the colour scale: two slopes, 1 (the threshold) at the centre, RATIO_MAX at the top."""
    v = min(max(ratio, 0.0), RATIO_MAX)
    return v / 2 if v <= 1 else 0.5 + 0.5 * (v - 1) / (RATIO_MAX - 1)


def _heat(ratio: float) -> str:
    return _HEAT[round(_heat_position(ratio) * (len(_HEAT) - 1))]


def _heatmap(rows: list, step: timedelta, axis: _Axis, ident: str, label: str, attrs: str) -> str:
    """Features (then the prediction) in rows, one cell a drift row at its window's place on the time axis, so a
    gap in the traffic stays blank; a cross on a drifted cell; the colour bar on the right."""
    order = {c: i for i, c in enumerate(store.INPUT_COLUMNS)}
    features = sorted({r[3] for r in rows}, key=lambda c: (c == PREDICTION, order.get(c, len(order)), c))
    row_of = {c: i for i, c in enumerate(features)}
    top = 8
    row_h = max(ROW_PX, 5 * ROW_PX / len(features))
    bottom = top + row_h * len(features)
    tips = len(rows) <= MAX_CELL_TITLES
    cells, crosses = [], []
    cell_w = axis.x(axis.t0 + step) - axis.x(axis.t0)
    arm = min(0.3 * cell_w, 0.3 * row_h, 4.0)
    x_of = {ws: axis.x(ws) for ws in {r[2] for r in rows}}
    # the attributes shared by a row's or a column's cells, formatted once (thousands of cells)
    size = f'width="{_n(cell_w + 0.5)}" height="{_n(row_h + 0.5)}"'  # half a pixel over the next: no seams
    x_attr = {ws: f'<rect x="{_n(x)}" ' for ws, x in x_of.items()}
    y_attr = [f'y="{_n(top + i * row_h)}" {size} fill="' for i in range(len(features))]
    for _, _, ws, column, ratio, drifted in sorted(rows, key=lambda r: (row_of[r[3]], r[2])):
        v = _num(ratio)
        rect = f'{x_attr[ws]}{y_attr[row_of[column]]}{NO_STATISTIC if v is None else _heat(v)}"'
        if tips:
            value = "no statistic" if v is None else f"{v:.2f} of the threshold" + (", drifted" if drifted else "")
            rect += f"><title>{_e(column)}, {_e(_ts(ws))}: {value}</title></rect>"
        else:
            rect += "/>"
        cells.append(rect)
        if drifted:
            cx, cy = x_of[ws] + cell_w / 2, top + (row_of[column] + 0.5) * row_h
            crosses.append(f"M{_n(cx - arm)} {_n(cy - arm)}l{_n(2 * arm)} {_n(2 * arm)}"
                           f"m0 {_n(-2 * arm)}l{_n(-2 * arm)} {_n(2 * arm)}")
    body = [f'<g class="cells" shape-rendering="crispEdges">{"".join(cells)}</g>']
    if crosses:
        body.append(f'<path class="marks" stroke="#000" stroke-width="0.8" d="{"".join(crosses)}"/>')
    if PREDICTION in row_of and len(features) > 1:
        y = _n(top + row_of[PREDICTION] * row_h)
        body.append(f'<path stroke="#000" stroke-width="1.2" d="M{PLOT_LEFT} {y}H{PLOT_RIGHT}"/>')
    body.append(_frame(top, bottom - top))
    for c, i in row_of.items():
        body.append(_text(PLOT_LEFT - 5, top + (i + 0.5) * row_h + 3.5, c if c != PREDICTION else f"{c} (prediction)",
                          "end", "small"))
    body += _x_axis(axis, top, bottom, labels=True, grid=False)
    # the colour bar: bands of the scale, ticks at 0, 0.5, 1 (the threshold), 2 and RATIO_MAX
    bx, n = PLOT_RIGHT + 16, 32
    band = (bottom - top) / n
    body.append('<g shape-rendering="crispEdges">' + "".join(
        f'<rect x="{bx}" y="{_n(bottom - (j + 1) * band)}" width="12" height="{_n(band + 0.5)}" '
        f'fill="{_HEAT[round((j + 0.5) / n * (len(_HEAT) - 1))]}"/>' for j in range(n)) + "</g>")
    body.append(f'<rect x="{bx}" y="{top}" width="12" height="{_n(bottom - top)}" fill="none" stroke="#999"/>')
    for v in (0.0, 0.5, 1.0, 2.0, RATIO_MAX):
        y = bottom - _heat_position(v) * (bottom - top)
        body.append(f'<path stroke="#555" d="M{bx + 12} {_n(y)}h3"/>' + _text(bx + 18, y + 3.5, f"{v:g}", cls="small"))
    mid = (top + bottom) / 2
    body.append(_text(bx + 48, mid, "statistic / threshold", "middle", "small",
                      f' transform="rotate(-90 {bx + 48} {_n(mid)})"'))
    return _svg(ident, bottom + 34, label, body, "chart heatmap", attrs)


def _timeline(windows: list[dict], keys: list[tuple], data: dict, step: timedelta, axis: _Axis,
              colours: dict[str, str]) -> str:
    """Panels stacked on the time axis: ROC AUC, labelled rows, volume, latency, alerts; legends on the right."""

    def xs(ws):
        return [axis.x(w["window_start"] + step / 2) for w in ws]

    def ys(ws, field):
        return [_num(w.get(field)) for w in ws]

    def with_gaps(ws):
        """The windows with an empty one in each gap, so that lines break where there was no traffic."""
        out = []
        for w in ws:
            if out and w["window_start"] - out[-1]["window_start"] > step:
                out.append({"window_start": out[-1]["window_start"] + step})
            out.append(w)
        return out

    def lines(specs):
        """(label, windows, field, colour, dash, width, marker) with some value: drawn, and in the legend."""
        return [s for s in specs if any(v is not None for v in ys(s[1], s[2]))]

    series = {k: with_gaps([w for w in windows if (w["model_version"], w["arm"]) == k]) for k in keys}
    service = with_gaps([w for w in windows if w["model_version"] == store.ALL])
    alerts = [a for a in data["alerts"] if isinstance(a.window_start, datetime)]
    rules = sorted({a.rule for a in alerts})
    served = [k for k in keys if k[1] != "shadow"]

    labelled = lines([(_series_label(*k), ws, "labelled", colours[k[0]], "", 1.0, ARM_MARKERS.get(k[1], "D"))
                      for k, ws in series.items()])
    volume = lines(([("requests", service, "requests", "#000", "", 1.2, ""),
                     ("rows", service, "rows", "#777", "5 3", 1.0, ""),
                     ("failed requests", service, "errors", "#d62728", "", 1.0, "")] if service else [])
                   + ([(f"{_series_label(*k)} rows", series[k], "rows", colours[k[0]], "", 0.9, "") for k in served]
                      if not service or len(served) > 1 else []))
    lat = [("service", service, "#000")] if any(v is not None for v in ys(service, "latency_p50_ms")) else \
        [(_series_label(*k), series[k], colours[k[0]]) for k in served]
    latency = lines([spec for label, ws, colour in lat for spec in
                     ((f"{label} p50", ws, "latency_p50_ms", colour, "", 1.1, ""),
                      (f"{label} p99", ws, "latency_p99_ms", colour, "5 3", 1.0, ""))])

    # ROC AUC: realized (solid, markers by arm), estimated (dotted), each version's reference (dashed)
    auc_lines, auc_values = [], []
    for k, ws in series.items():
        for field in ("roc_auc", "estimated_roc_auc"):
            if any(v is not None for v in ys(ws, field)):
                auc_lines.append((k, ws, field))
                auc_values += [v for v in ys(ws, field) if v is not None]
    refs = {v: data["references"][v] for v in sorted({k[0] for k in keys}) if v in data["references"]}
    auc_values += list(refs.values())

    def legend_rows(n):
        return 14 + 13 * n

    heights = [max(220, legend_rows(2 * len(auc_lines) + len(refs))), max(80, legend_rows(len(labelled))),
               max(90, legend_rows(len(volume))), max(90, legend_rows(len(latency))), 14 + 18 * max(len(rules), 1)]
    tops, at = [], 10
    for h in heights:
        tops.append(at)
        at += h + 16
    bottom = tops[-1] + heights[-1]
    body = []
    open_x = sorted({axis.x(a.window_start + STEPS.get(a.window_length, step) / 2) for a in alerts
                     if a.acked_at is None})

    def panel(i, ylabel, lo, hi, legend, empty):
        """Frame, grid, y ticks, y label, legend (label, colour, dash or None, marker[, hollow]) and the faint
        open-alert lines of panel i; returns value -> y."""
        top, h = tops[i], heights[i]

        def y(v):
            return top + h * (1 - (v - lo) / (hi - lo))

        body.extend(_x_axis(axis, top, top + h, labels=False, grid=True))
        if open_x and i < 4:
            body.append('<path class="alert-lines" stroke="#d62728" stroke-opacity="0.18" d="'
                        + "".join(f"M{_n(x)} {top}v{h}" for x in open_x) + '"/>')
        ticks = _nice_ticks(lo, hi) if legend and lo is not None else []
        if ticks:
            body.append('<path stroke="#555" d="' + "".join(f"M{PLOT_LEFT - 4} {_n(y(t))}h4" for t in ticks) + '"/>')
            body.extend(_text(PLOT_LEFT - 6, y(t) + 3.5, _fmt(t, ticks), "end") for t in ticks)
        mid = top + h / 2
        body.append(_text(18, mid, ylabel, "middle", "", f' transform="rotate(-90 18 {_n(mid)})"'))
        for j, (label, colour, dash, marker, *hollow) in enumerate(legend):
            ly = top + 8 + 13 * j
            body.append(_line([(PLOT_RIGHT + 10, ly), (PLOT_RIGHT + 32, ly)], colour, dash) if dash is not None else "")
            if marker:
                body.append(_marker(marker, PLOT_RIGHT + 21, ly, 3, "none" if hollow else colour, colour))
            body.append(_text(PLOT_RIGHT + 37, ly + 3, label, cls="small"))
        if not legend:
            body.append(_text((PLOT_LEFT + PLOT_RIGHT) / 2, mid + 4, empty, "middle", "muted"))
        return y

    # ROC AUC
    if auc_values:
        lo, hi = min(auc_values), max(auc_values)
        pad = max((hi - lo) * 0.1, 0.01)
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = 0.4, 1.0
    legend = []
    for k, ws, field in auc_lines:
        marker = ARM_MARKERS.get(k[1], "D") if field == "roc_auc" else "o"
        legend.append((f"{_series_label(*k)} {'realized' if field == 'roc_auc' else 'estimated'}", colours[k[0]],
                       "" if field == "roc_auc" else "1.5 2.5", marker))
    legend += [(f"{v} reference {ref:.3f}", colours[v], "5 3", "") for v, ref in refs.items()]
    y = panel(0, "ROC AUC", lo, hi, legend, "no realized or estimated ROC AUC yet")
    for v, ref in refs.items():
        body.append(f'<path class="reference" data-version="{_e(v)}" stroke="{colours[v]}" stroke-dasharray="5 3" '
                    f'd="M{PLOT_LEFT} {_n(y(ref))}H{PLOT_RIGHT}"/>')
    for k, ws, field in auc_lines:
        colour, values = colours[k[0]], ys(ws, field)
        points = [(x, None if v is None else y(v)) for x, v in zip(xs(ws), values)]
        kind = "realized" if field == "roc_auc" else "estimated"
        group = [f'<g class="{kind}" data-version="{_e(k[0])}" data-arm="{_e(k[1])}">',
                 _line(points, colour, "" if kind == "realized" else "1.5 2.5", 1.4 if kind == "realized" else 1.2)]
        shown = [(x, py, v, w) for (x, py), v, w in zip(points, values, ws) if v is not None]
        for x, py, v, w in shown:
            tip = "" if len(shown) > MAX_POINT_TITLES else \
                f"{_series_label(*k)} {_ts(w['window_start'])}: {kind} ROC AUC {v:.4f}" + \
                (f" (n={w.get('labelled')})" if kind == "realized" else "")
            group.append(_marker(ARM_MARKERS.get(k[1], "D"), x, py, 3, colour, colour, "pt", tip) if kind == "realized"
                         else _marker("o", x, py, 1.6, colour, colour, "pt", tip))
        if kind == "realized" and len(shown) <= ANNOTATE_MAX:
            group += [_text(x, py - 6, f"n={w.get('labelled')}", "middle", "tiny", f' fill="{colour}"')
                      for x, py, _, w in shown]
        body += group + ["</g>"]

    # labelled rows, volume, latency: lines from 0 up
    for i, ylabel, specs, empty in ((1, "labelled rows", labelled, "no labelled rows yet"),
                                    (2, "volume", volume, "no volume: only shadow scores"),
                                    (3, "latency ms", latency, "no latency measured")):
        top_value = max([v for s in specs for v in ys(s[1], s[2]) if v is not None] + [0.0])
        y = panel(i, ylabel, 0.0, top_value * 1.08 or 1.0,
                  [(label, colour, dash, marker) for label, _, _, colour, dash, _, marker in specs], empty)
        for label, ws, field, colour, dash, width, marker in specs:
            points = [(x, None if v is None else y(v)) for x, v in zip(xs(ws), ys(ws, field))]
            body.append(_line(points, colour, dash, width))
            if marker:
                body += [_marker(marker, x, py, 1.8, colour, colour) for x, py in points if py is not None]

    # alerts: one row a rule; open ones filled red, acknowledged ones hollow grey
    legend = [("open", "#d62728", None, "v")] if open_x else []
    legend += [("acknowledged", "#777", None, "v", True)] if any(a.acked_at is not None for a in alerts) else []
    panel(4, "alerts", None, None, legend, "no alerts")
    for j, rule in enumerate(rules):
        body.append(_text(PLOT_LEFT - 6, tops[4] + 19.5 + 18 * j, rule, "end", "small"))
    for a in sorted(alerts, key=lambda a: a.acked_at is None):  # open ones on top
        x = axis.x(a.window_start + STEPS.get(a.window_length, step) / 2)
        is_open = a.acked_at is None
        body.append(_marker("v", x, tops[4] + 16 + 18 * rules.index(a.rule), 4.5,
                            "#d62728" if is_open else "none", "#d62728" if is_open else "#777",
                            f"alert {'open' if is_open else 'acked'}",
                            f"{a.rule}, {a.model_version} ({a.arm}), {_ts(a.window_start)}: {a.message}",
                            f' data-alert-id="{_e(a.alert_id)}"'))
    body += _x_axis(axis, tops[4], bottom, labels=True, grid=False)
    body += [_frame(t, h) for t, h in zip(tops, heights)]
    return _svg("timeline-chart", bottom + 34, "realized and estimated ROC AUC per version, labelled rows, volume, "
                "latency and alerts over time", body)
