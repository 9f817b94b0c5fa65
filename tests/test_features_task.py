"""The features task joins the feature store (issue #12, parts 1, 5c and 7): the flight rows of sql/features.sql
get the features of the selected views by the offline point-in-time join, as of each flight's prediction time
(features.lead before its scheduled departure).

On real runs of a small sample project: the task's table equals `mlops-nb features historical` on the same
spine, bit for bit; no event at or after a flight's prediction time changes its features; features.yaml,
features.lead and pushed events make the task stale and give a new feature set (materializing does not);
`features.views = none` trains without them; model.json and the run record name the definitions; gc keeps the
store's files and removes what an interrupted materialize left.
"""
from __future__ import annotations

import hashlib
import json
import textwrap
from datetime import datetime, timedelta
from pathlib import Path

import joblib
import numpy as np
import pytest

from conftest import PRODUCTS, assert_up_to_date, last_run, read_csv_text, read_warehouse, run_ok
from mlops_nb.errors import FeatureStoreError
from mlops_nb.featurestore import definitions, training
from mlops_nb.lib import model

STORE = Path("data") / "featurestore"


def receipt(project: Path) -> dict:
    return json.loads((project / PRODUCTS / "features.json").read_text(encoding="utf-8"))


def table(project: Path, name: str | None = None):
    """The feature set's table (the current one unless named), in its deterministic order."""
    name = name or receipt(project)["table_name"]
    with read_warehouse(project) as con:
        return con.execute(f'SELECT * FROM features."{name}" ORDER BY ALL').df()


def feature_names(project: Path) -> list[str]:
    return definitions.load(project / "features.yaml").feature_names


def bits(values) -> bytes:
    """A column's bytes, every missing value the same NaN."""
    x = np.asarray(values, dtype=float)
    return np.where(np.isnan(x), np.nan, x).astype("<f8").tobytes()


def ran(result) -> set[str]:
    return result.tasks_with("ran")


def model_json(project: Path) -> dict:
    gate = json.loads((project / PRODUCTS / "gate.json").read_text(encoding="utf-8"))
    return json.loads((project / "data" / "bentoml" / "models" / "flight_delay" / gate["version"] / "model.json")
                      .read_text(encoding="utf-8"))


PUSHED = """
  reports:
    description: delays reported by the gates, pushed as they come
    push: true
    timestamp: reported_at
    columns: {origin: text, reported_at: timestamp, delay: number}
"""
PUSHED_VIEW = """
  origin_reports:
    description: the delays reported at the origin just before
    entities: [origin]
    source: reports
    ttl: 1h
    features:
      origin_reported_delay_2h: {aggregation: mean, column: delay, window: 2h}
"""


def add_push_source(project: Path) -> None:
    """features.yaml with a push source and a view of it (appended to its sources and views)."""
    path = project / "features.yaml"
    text = path.read_text(encoding="utf-8")
    text = text.replace("\nviews:\n", PUSHED.rstrip("\n") + "\n\nviews:\n" + PUSHED_VIEW.lstrip("\n"), 1)
    path.write_text(text, encoding="utf-8")
    assert "origin_reports" in definitions.load(path).views


# --------------------------------------------------------------------------------------------------
# the prediction time, defined once


def test_prediction_time_sql_equals_the_python_function():
    """Every flight's prediction time, as the training spine computes it in DuckDB and as the service computes
    it in Python, is the same time: day, month, year and leap-day boundaries, midnight, 23:59, several leads."""
    import duckdb

    rng = np.random.default_rng(12)
    days = [(2013, 1, 1), (2013, 3, 1), (2013, 12, 31), (2016, 2, 29), (2016, 3, 1), (2013, 7, 15)]
    times = [0, 1, 59, 100, 159, 1200, 2259, 2359] + [int(h * 100 + m) for h, m in
                                                     zip(rng.integers(0, 24, 30), rng.integers(0, 60, 30))]
    leads = [0, 1, 90, 3600, 7200, 10800, 86400, 3 * 86400 + 17]
    rows = [(y, m, d, t) for y, m, d in days for t in times]
    con = duckdb.connect()
    con.execute("CREATE TABLE f (year INTEGER, month INTEGER, day INTEGER, sched_dep_time INTEGER)")
    con.executemany("INSERT INTO f VALUES (?, ?, ?, ?)", rows)
    for lead in leads:
        got = con.execute(f"SELECT {definitions.prediction_time_sql(lead)} FROM f ORDER BY rowid").fetchall()
        want = [definitions.prediction_time(y, m, d, t, lead) for y, m, d, t in rows]
        assert [g[0] for g in got] == want, lead
        qualified = con.execute(f"SELECT {definitions.prediction_time_sql(lead, 'x')} FROM f AS x ORDER BY rowid")
        assert [g[0] for g in qualified.fetchall()] == want
    # as the service's records carry them: floats
    assert definitions.prediction_time(2013.0, 1.0, 1.0, 515.0, 7200) == datetime(2013, 1, 1, 3, 15)
    with pytest.raises(FeatureStoreError, match="sched_dep_time=1275"):
        definitions.prediction_time(2013, 1, 1, 1275, 7200)


def test_views_are_checked_against_the_definitions(tmp_path):
    defs = definitions.load(Path(__file__).resolve().parents[1] / "features.yaml")
    assert definitions.selected_views(defs, None) == tuple(defs.views)
    assert definitions.selected_views(defs, []) == ()
    assert definitions.selected_views(defs, ["origin_weather", "origin_departures"]) == ("origin_departures",
                                                                                      "origin_weather")
    with pytest.raises(FeatureStoreError) as e:
        definitions.selected_views(defs, ["origin_wether"])
    assert "'origin_wether'" in str(e.value) and "Did you mean 'origin_weather'?" in str(e.value)


# --------------------------------------------------------------------------------------------------
# the task's table is the offline join


@pytest.mark.slow
def test_the_task_table_equals_features_historical(project, tmp_path):
    """The spine of the task's own table (every column but the features) joined by `mlops-nb features
    historical`: the same features, bit for bit, for every row."""
    import duckdb

    names = feature_names(project)
    ours = table(project)
    assert list(ours.columns[-len(names):]) == names
    assert "temp" in names and "origin_dep_delay_2h" in names
    spine = tmp_path / "spine.parquet"
    frame = ours.drop(columns=names)
    assert list(frame.columns[-1:]) == ["prediction_time"]
    duckdb.from_df(frame).write_parquet(str(spine))
    out = tmp_path / "joined.parquet"
    printed = run_ok(project, "features", "historical", spine, "--timestamp-column", "prediction_time",
                     "--out", out).stdout
    assert f"{len(ours):,} rows with {len(names)} features" in printed
    theirs = duckdb.read_parquet(str(out)).df()
    assert len(theirs) == len(ours)
    for column in frame.columns:
        assert theirs[column].equals(ours[column]), column
    for name in names:
        assert bits(theirs[name]) == bits(ours[name]), name
    # the features are really there: most rows have the weather, many the recent departures
    assert ours["temp"].notna().mean() > 0.9
    assert ours["origin_departures_2h"].gt(0).mean() > 0.5
    # the prediction time is features.lead (2 h) before the scheduled departure
    row = ours.iloc[len(ours) // 2]
    assert row.prediction_time == definitions.prediction_time(row.year, row.month, row.day, row.sched_dep_time, 7200)


@pytest.mark.slow
def test_no_event_at_or_after_the_prediction_time_changes_a_flights_features(project):
    """Events at or after a flight's prediction time T, changed (departures: their delays) or deleted (weather
    observations), at its origin: no flight whose prediction time is at or before T gets another value of any
    feature; later flights at that origin do (the change was seen)."""
    names = feature_names(project)
    before = table(project)
    candidates = before[(before.origin == "EWR") & (before.month == 2) & (before.sched_dep_time % 100 == 0)
                        & before.sched_dep_time.between(1400, 1800)]
    cut = candidates.iloc[0].prediction_time.to_pydatetime()  # on the hour: an observation is exactly at T
    end = cut + timedelta(days=1)

    flights_csv, weather_csv = project / "inputs" / "flights.csv", project / "inputs" / "weather.csv"
    flights, weather = read_csv_text(flights_csv), read_csv_text(weather_csv)
    when = [datetime(int(y), int(m), int(d), int(h)) for y, m, d, h in
            zip(weather.year, weather.month, weather.day, weather.hour)]
    drop = np.array([o == "EWR" and cut <= t < end for o, t in zip(weather.origin, when)])
    assert any(t == cut for t, d in zip(when, drop) if d), "no observation exactly at the prediction time"
    weather[~drop].to_csv(weather_csv, index=False)

    def departed(r):
        if r.dep_delay == "NA":
            return None
        s = int(r.sched_dep_time)
        return datetime(int(r.year), int(r.month), int(r.day), s // 100, s % 100) + timedelta(minutes=int(float(r.dep_delay)))

    later = np.array([r.origin == "EWR" and (t := departed(r)) is not None and cut <= t < end
                      for r in flights.itertuples()])
    assert later.sum() > 10
    flights.loc[later, "dep_delay"] = (flights.loc[later, "dep_delay"].astype(float) + 45).astype(int).astype(str)
    flights.to_csv(flights_csv, index=False)

    result = run_ok(project, "run", "--quiet")
    assert {"ingest", "features"} <= ran(result)
    after = table(project)
    spine = [c for c in before.columns if c not in names]
    assert after[spine].equals(before[spine])  # the same flights, in the same order
    known = (before.prediction_time <= cut).to_numpy()
    assert known.sum() > 1000
    for name in names:
        assert bits(after[name][known]) == bits(before[name][known]), name
    affected = ((before.origin == "EWR") & (before.prediction_time > cut) & (before.prediction_time <= end)).to_numpy()
    changed = [n for n in names if bits(after[n][affected]) != bits(before[n][affected])]
    assert "origin_dep_delay_2h" in changed and "temp" in changed, changed


# --------------------------------------------------------------------------------------------------
# what makes the task stale, and a new feature set


@pytest.mark.slow
def test_definitions_and_lead_make_a_new_feature_set(project):
    first = receipt(project)
    assert first["feature_store"]["digest"] == definitions.load(project / "features.yaml").digest
    assert first["feature_store"]["lead"] == 7200

    path = project / "features.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("ttl: 3h", "ttl: 2h"), encoding="utf-8")
    result = run_ok(project, "run", "--quiet")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    second = receipt(project)
    assert second["feature_set_id"] != first["feature_set_id"]
    assert second["feature_store"]["digest"] == definitions.load(path).digest != first["feature_store"]["digest"]
    assert second["snapshot_id"] == first["snapshot_id"]

    result = run_ok(project, "run", "--quiet", "-p", "features.lead=3h")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    third = receipt(project)
    assert third["feature_set_id"] not in (first["feature_set_id"], second["feature_set_id"])
    assert third["feature_store"]["lead"] == 10800
    rows = table(project)
    row = rows.iloc[0]
    assert row.prediction_time == definitions.prediction_time(row.year, row.month, row.day, row.sched_dep_time, 10800)
    run = last_run(project)
    assert run["features"]["feature_set_id"] == third["feature_set_id"] and run["features"]["lead"] == 10800
    assert run["features"]["digest"] == second["feature_store"]["digest"]
    assert_up_to_date(project, "-p", "features.lead=3h")
    with read_warehouse(project) as con:
        options = json.loads(con.execute("SELECT options FROM feature_sets WHERE feature_set_id = ?",
                                         [third["feature_set_id"]]).fetchone()[0])
    assert options["features"]["lead"] == 10800 and options["features"]["definitions"] == third["feature_store"]["digest"]


@pytest.mark.slow
def test_pushed_events_are_joined_and_fingerprinted_but_materializing_is_not(project, tmp_path):
    add_push_source(project)
    result = run_ok(project, "run", "--quiet")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    without = receipt(project)
    assert without["feature_store"]["pushed_events_sha256"] is None
    assert table(project)["origin_reported_delay_2h"].isna().all()  # nothing pushed yet

    rows = table(project)
    flight = rows[(rows.origin == "EWR") & (rows.month == 2)].iloc[0]
    at = flight.prediction_time.to_pydatetime()
    events = tmp_path / "reports.csv"
    events.write_text("origin,reported_at,delay\n"
                      f"EWR,{at - timedelta(minutes=90)},20\n"
                      f"EWR,{at - timedelta(minutes=30)},10\n"
                      f"EWR,{at},1000\n", encoding="utf-8")  # at the prediction time: not known yet
    run_ok(project, "features", "push", events)
    pushed = project / STORE / "events.duckdb"
    digest = hashlib.sha256(pushed.read_bytes()).hexdigest()
    result = run_ok(project, "run", "--quiet")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    with_events = receipt(project)
    assert with_events["feature_set_id"] != without["feature_set_id"]
    assert with_events["feature_store"]["pushed_events_sha256"] == digest
    assert last_run(project)["features"]["pushed_events_sha256"] == digest
    after = table(project)
    same = after[(after.origin == flight.origin) & (after.prediction_time == flight.prediction_time)]
    assert set(same["origin_reported_delay_2h"]) == {15.0}, same

    # the online store beside the events changes on every materialize: the features task stays up to date
    run_ok(project, "features", "materialize", "--until", "2013-04-01T00:00")
    assert (project / STORE / "online.duckdb").is_file()
    assert_up_to_date(project)


# --------------------------------------------------------------------------------------------------
# the run without the feature store's features, and lineage


@pytest.mark.slow
def test_views_none_trains_without_them_and_lineage_names_the_definitions(project):
    digest = definitions.load(project / "features.yaml").digest
    info = model_json(project)
    assert info["feature_store"]["digest"] == digest
    assert info["feature_store"]["views"] == ["origin_departures", "carrier_origin_departures", "origin_weather"]
    assert info["feature_store"]["lead"] == 7200
    assert info["feature_store"]["definitions"] == definitions.load(project / "features.yaml").to_dict()

    result = run_ok(project, "run", "--quiet", "-p", "features.views=none")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    rows = table(project)
    names = feature_names(project)
    assert rows[names].notna().any().all()  # every view is joined: the champion is compared on its own features
    assert receipt(project)["feature_store"]["views"] == []
    assert receipt(project)["feature_store"]["left_out"] == names
    estimator = joblib.load(project / PRODUCTS / "model.joblib")
    without = rows.copy()
    without[names] = float("nan")
    assert np.array_equal(model.predict_proba(estimator, rows), model.predict_proba(estimator, without))
    info = model_json(project)
    assert info["feature_store"]["digest"] == digest and info["feature_store"]["views"] == []
    metrics = json.loads((project / PRODUCTS / "metrics.json").read_text(encoding="utf-8"))
    assert 0.5 < metrics["test"]["roc_auc"] < 1
    run = last_run(project)
    assert run["features"]["views"] == [] and run["features"]["digest"] == digest
    with read_warehouse(project) as con:
        lineage = json.loads(con.execute("SELECT lineage FROM model_versions WHERE version = ?",
                                         [run["model_version"]]).fetchone()[0])
    assert lineage["feature_store"]["views"] == [] and lineage["feature_store"]["digest"] == digest
    page = (project / "reports" / "site" / f"run-{run['run_id']}.html").read_text(encoding="utf-8")
    assert digest[:12] in page and "views: none" in page
    page = (project / "reports" / "site" / f"model-{run['model_version']}.html").read_text(encoding="utf-8")
    assert digest[:12] in page

    result = run_ok(project, "run", "--quiet", "-p", "features.views=origin_weather")
    assert ran(result) == {"features", "train", "evaluate", "gate"}, str(result)
    weather = [f.name for f in definitions.load(project / "features.yaml").views["origin_weather"].features]
    assert receipt(project)["feature_store"]["left_out"] == [n for n in names if n not in weather]
    estimator = joblib.load(project / PRODUCTS / "model.joblib")
    recent = rows.copy()
    recent[[n for n in names if n not in weather]] = float("nan")
    assert np.array_equal(model.predict_proba(estimator, rows), model.predict_proba(estimator, recent))
    no_weather = rows.copy()
    no_weather[weather] = float("nan")
    assert not np.array_equal(model.predict_proba(estimator, rows), model.predict_proba(estimator, no_weather))


# --------------------------------------------------------------------------------------------------
# gc knows the feature store's files


@pytest.mark.slow
def test_gc_keeps_the_store_and_removes_what_an_interrupted_materialize_left(project, tmp_path):
    add_push_source(project)
    events = tmp_path / "reports.csv"
    events.write_text("origin,reported_at,delay\nEWR,2013-03-01 10:00,12\n", encoding="utf-8")
    run_ok(project, "features", "push", events)
    run_ok(project, "features", "materialize", "--until", "2013-03-01T12:00")
    folder = project / STORE
    online, pushed = folder / "online.duckdb", folder / "events.duckdb"
    kept = {p.name: p.read_bytes() for p in (online, pushed)}
    leftovers = [folder / ".online.4242.tmp.duckdb", folder / ".online.4242.tmp.duckdb.wal"]
    for p in leftovers:
        p.write_bytes(b"\0" * 1000)

    dry = run_ok(project, "gc", "--dry-run", "--json").json()
    removed = {(i["kind"], i["name"]) for i in dry["removed"]}
    assert {("feature store", p.name) for p in leftovers} <= removed
    assert all(p.exists() for p in leftovers)
    assert dry["feature_store_bytes"] == {n: len(b) for n, b in kept.items()}

    done = run_ok(project, "gc", "--json").json()
    assert {("feature store", p.name) for p in leftovers} <= {(i["kind"], i["name"]) for i in done["removed"]}
    assert not any(p.exists() for p in leftovers)
    assert {p.name: p.read_bytes() for p in (online, pushed)} == kept
    assert (folder / ".lock").exists()
    text = run_ok(project, "gc").stdout
    assert "kept feature store online.duckdb" in text and "kept feature store events.duckdb" in text
    assert run_ok(project, "features", "online", "origin=EWR", "--at", "2013-03-01T12:00", "--json").json()[
        "features"]["origin_reported_delay_2h"] == 12.0
