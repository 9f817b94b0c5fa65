"""The service reads the online feature store (issue #12, part 4): real `mlops-nb serve` on 127.0.0.1, httpx,
the session project's real DuckDB warehouse and an embedded store materialized from it.

- a request that leaves the store's fields out gets the store's values: its P(late) is bit for bit that of
  the same records sent with those values (read from the store in this process), on /predict and
  /predict_batch alike;
- a value sent wins over the store, and the answer names it;
- stale values (a prediction time past the view's ttl after its as_of) and a store that is not there (the
  shared champion server's project was never materialized) are NaN for the model, named in the answer,
  counted in /metrics per feature and reason and written in the prediction log, whose rows carry the values
  the model took; `mlops-nb monitor` then measures the drift of the store's fields like any input's;
- a project without feature definitions looks nothing up and answers ``features: null``;
- one row or many, records or columns: the same values and reasons (in process, against the real store).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from datetime import datetime

import numpy as np
import pytest

pytest.register_assert_rewrite("served_project")
from served_project import GOOD, as_records, client, mlops_ok, py_json, sample_rows, serve  # noqa: E402
from conftest import run_ok  # noqa: E402

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow

UNTIL = "2013-03-10T12:00:00"    # the store is materialized to this time (a day of the test month)
FRESH_DEPARTURES = [1400, 1425, 1450, 1459]  # prediction times 12:00-12:59: every view fresh
STALE_DEPARTURES = [1530, 1610]  # prediction times 13:30, 14:10: the 1h views stale, the 3h weather fresh
DEPARTURE_VIEWS = ("origin_departures", "carrier_origin_departures")


def store_fields(project) -> dict[str, str]:
    """field -> view: what the service takes from the store in ``project``."""
    from mlops_nb import config
    from mlops_nb.serving import lookup

    return dict(lookup.load(config.load(project / "settings.ini"), False).view_of)


def flights(project, departures: list[int], day: int = 10) -> list[dict]:
    """Real records of the test month moved to 2013-03-``day`` at ``departures`` (HHMM), with no field the
    store provides."""
    provided = store_fields(project)
    rows = as_records(sample_rows(project, 40))
    out = []
    for i, hhmm in enumerate(departures * 3):
        r = {k: v for k, v in rows[i].items() if k not in provided}
        r.update(month=3, day=day, sched_dep_time=hhmm, sched_arr_time=min(2359, hhmm + 200))
        out.append(r)
    return out


def store_values(project, records: list[dict]) -> list[dict]:
    """The store's value of every provided field of each record (None for NaN), read in this process."""
    from mlops_nb import config
    from mlops_nb.featurestore import online
    from mlops_nb.featurestore.definitions import prediction_time
    from mlops_nb.featurestore.store import load_definitions

    settings = config.load(project / "settings.ini")
    reader = online.open_store(settings, load_definitions(settings))
    provided = store_fields(project)
    out = []
    for r in records:
        at = prediction_time(r["year"], r["month"], r["day"], r["sched_dep_time"], settings.features.lead)
        values, _ = reader.lookup({"origin": r["origin"], "carrier": r["carrier"]}, at)
        out.append({f: None if math.isnan(values[f]) else values[f] for f in provided})
    return out


def nan_metrics(http) -> dict[tuple, float]:
    """(route, feature, reason) -> mlops_nb_feature_nan_total, summed over versions and arms."""
    out: dict[tuple, float] = {}
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("mlops_nb_feature_nan_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = (labels["route"], labels["feature"], labels["reason"])
            out[key] = out.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def logged(project, request_ids: set, rows: int, timeout: float = 30) -> list[dict]:
    """The prediction-log lines of ``request_ids`` once ``rows`` of them are written (the recorder writes
    every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for f in (project / "data" / "serving" / "predictions").glob("*.jsonl")
                 for line in f.read_text().splitlines()]
        found = [x for x in lines if x["request_id"] in request_ids]
        if len(found) >= rows or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


@pytest.fixture(scope="module")
def store_server(served, tmp_path_factory):
    """(project, server): a copy of the session project whose online store is materialized to UNTIL, served."""
    root = tmp_path_factory.mktemp("store-server")
    project = served.copy(root / "project")
    shutil.rmtree(project / "data" / "serving", ignore_errors=True)
    mlops_ok(project, "features", "materialize", "--until", UNTIL)
    server = serve(project, root, "store")
    try:
        server.wait_ready()
        yield project, server
    finally:
        server.stop()


def test_left_out_fields_are_the_stores_values(store_server):
    project, server = store_server
    provided = store_fields(project)
    records = flights(project, FRESH_DEPARTURES)
    explicit = [{**r, **v} for r, v in zip(records, store_values(project, records))]
    with client(server) as http:
        looked_up = http.post("/predict", json={"flights": records})
        sent = http.post("/predict", json={"flights": explicit})
        columns = http.post("/predict_batch", json={"columns": {k: [r[k] for r in records] for k in records[0]}})
    assert looked_up.status_code == sent.status_code == columns.status_code == 200, looked_up.text
    a, b, c = looked_up.json(), sent.json(), columns.json()
    assert a["p_late"] == b["p_late"] == c["p_late"]  # bit for bit: the store's values are what the model took
    assert a["features"] == c["features"]
    features = a["features"]
    assert features["provided"] == list(provided)
    assert features["as_of"] == {v: UNTIL for v in dict.fromkeys(provided.values())}
    assert features["sent"] == {} and features["stale"] == {}
    # a NaN from the store (e.g. no gust reading) is missing, and sending null asks the store again
    values = store_values(project, records)
    assert set(features["missing"]) == {f for v in values for f, x in v.items() if x is None}
    assert b["features"]["missing"] == features["missing"]
    for f in provided:
        rows = [i for i, v in enumerate(values) if v[f] is not None]
        assert b["features"]["sent"].get(f) == ("all" if len(rows) == len(records) else rows or None), f


def test_a_sent_value_wins_and_is_named(store_server):
    project, server = store_server
    records = flights(project, FRESH_DEPARTURES)[:2]
    values = store_values(project, records)
    mixed = [dict(records[0], temp=-40.0, origin_dep_delay_2h=600.0), records[1]]
    expected = [{**records[0], **values[0], "temp": -40.0, "origin_dep_delay_2h": 600.0}, {**records[1], **values[1]}]
    with client(server) as http:
        got = http.post("/predict", json={"flights": mixed}).json()
        want = http.post("/predict", json={"flights": expected}).json()
        alone = http.post("/predict", json={"flights": mixed[:1]}).json()
    assert got["p_late"] == want["p_late"]
    assert got["features"]["sent"] == {"temp": [0], "origin_dep_delay_2h": [0]}
    assert alone["features"]["sent"] == {"temp": "all", "origin_dep_delay_2h": "all"}
    assert alone["p_late"] == want["p_late"][:1]


def test_stale_values_are_nan_counted_and_logged_and_monitored(store_server, tmp_path):
    project, server = store_server
    provided = store_fields(project)
    departures = [f for f, v in provided.items() if v in DEPARTURE_VIEWS]
    stale = flights(project, STALE_DEPARTURES)
    fresh = flights(project, FRESH_DEPARTURES)
    # the same records with the stale views' fields unknown (null) and the weather from the store
    expected = [{**r, **{f: (None if f in departures else x) for f, x in v.items()}}
                for r, v in zip(stale, store_values(project, stale))]
    with client(server) as http:
        before = nan_metrics(http)
        answer = http.post("/predict", json={"flights": stale}).json()
        want = http.post("/predict", json={"flights": expected}).json()
        batch = http.post("/predict_batch", json={"columns": {k: [r[k] for r in fresh * 5 + stale * 5]
                                                              for k in stale[0]}})
        assert batch.status_code == 200, batch.text
        after = nan_metrics(http)
    assert answer["p_late"] == want["p_late"]  # stale: NaN for the model, as unknown values are
    assert answer["features"]["stale"] == {f: "all" for f in departures}
    assert not set(answer["features"]["missing"]) & set(departures)
    n = len(stale)
    for f in departures:
        # the two /predict requests: ``expected`` leaves those fields out too (null), so they are stale again
        assert after[("/predict", f, "stale")] - before.get(("/predict", f, "stale"), 0) == 2 * n
        assert after[("/predict_batch", f, "stale")] - before.get(("/predict_batch", f, "stale"), 0) == 5 * n
    rows_of_stale = list(range(len(fresh) * 5, len(fresh) * 5 + 5 * n))
    assert batch.json()["features"]["stale"] == {f: rows_of_stale for f in departures}

    lines = logged(project, {answer["request_id"], batch.json()["request_id"]}, n + 5 * (len(fresh) + n))
    mine = sorted((x for x in lines if x["request_id"] == answer["request_id"]), key=lambda x: x["row"])
    assert len(mine) == n
    for line, v in zip(mine, store_values(project, stale)):
        assert set(line["features"]["stale"]) == set(departures)
        assert set(line["features"]["store"]) | set(line["features"]["missing"]) == set(provided) - set(departures)
        assert line["features"]["sent"] == []
        for f in line["features"]["store"]:  # the inputs as the model took them: the store's values
            assert math.isclose(line["inputs"][f], v[f], rel_tol=1e-12), (f, line["inputs"][f], v[f])
        assert all(line["inputs"][f] is None for f in departures)

    server.stop()  # the recorder writes its last lines; the monitor reads them
    data = run_ok(project, "monitor", "--json", "--window", "1d", env={"MLOPS_NB_MONITOR__MIN_ROWS": "20"}).json()
    champ = max((w for w in data["windows"] if w["arm"] == "champion"), key=lambda w: w["rows"])
    drift = {d["column"]: d for d in champ["drift"]}
    assert drift["temp"]["statistic"] is not None and drift["temp"]["basis"] == "exact", drift["temp"]
    assert drift["origin_dep_delay_2h"]["statistic"] is not None, drift["origin_dep_delay_2h"]
    assert champ["feature_nan"]["origin_dep_delay_2h"]["stale"] >= 6 * n, champ["feature_nan"]


def test_no_store_means_missing_values_counted(served, champion_server):
    """The shared champion server's project has feature definitions and no materialized store: it started,
    and every field a request leaves out is missing."""
    with client(champion_server) as http:
        before = nan_metrics(http)
        body = http.post("/predict", json={"flights": [GOOD, GOOD]}).json()
        after = nan_metrics(http)
    features = body["features"]
    assert set(features["as_of"].values()) == {None}
    assert features["missing"] == {f: "all" for f in features["provided"]}
    for f in features["provided"]:
        assert after[("/predict", f, "missing")] - before.get(("/predict", f, "missing"), 0) == 2


def test_a_project_without_definitions_looks_nothing_up(served, served_copy):
    (served_copy / "features.yaml").unlink()
    code = """
import asyncio, json
from mlops_nb.serving.service import FlightDelay, PredictRequest, LOOKUP
svc = FlightDelay()
answer = asyncio.run(svc.predict(PredictRequest(flights=[json.loads(__import__("sys").argv[1])])))
temp = PredictRequest.model_json_schema()["$defs"]["FlightRecord"]["properties"]["temp"]
print(json.dumps({"lookup": LOOKUP is not None, "features": answer.features, "doc": json.dumps(temp)}))
"""
    out = py_json(served_copy, code, json.dumps(GOOD), env={"MLOPS_NB_SERVING__LOG_PREDICTIONS": "false",
                                                            "MLOPS_NB_SERVING__PROFILE_REQUESTS": "false"})
    assert out["lookup"] is False and out["features"] is None
    assert "feature store" not in out["doc"]


def test_one_row_and_many_rows_agree(store_server):
    """In process, against the materialized store: every row filled alone (the one-row path) equals the rows
    filled at once as records and as columns, values and reasons; the request schema says which fields the
    store provides."""
    from mlops_nb import config
    from mlops_nb.lib.record import RECORD
    from mlops_nb.serving import lookup, schemas

    project, _ = store_server
    lk = lookup.load(config.load(project / "settings.ini"), False)
    rows = []
    for day in (9, 10, 11):
        for r in flights(project, [5, 600, 1000, 1400, 1459, 1530, 2359], day=day):
            rows.append({k: r.get(k) for k in RECORD})
    rows[0]["temp"], rows[1]["origin_dep_delay_2h"] = 12.5, 3.0     # sent
    rows[2].update(month=2, day=30)                                 # no such day: no prediction time
    rows[3]["sched_dep_time"] = 1275                                # no such minute
    rows[4]["origin"] = "ZZZ"                                       # a key the store does not hold
    n = len(rows)
    one = [lk.fill([r], 1) for r in rows]
    many, used = lk.fill(rows, n)
    cols, used_cols = lk.fill({k: [r[k] for r in rows] for k in RECORD}, n)
    codes = np.concatenate([u.codes for _, u in one])
    assert (codes == used.codes).all() and (codes == used_cols.codes).all()
    for i, f in enumerate(lk.names):
        alone = np.array([o[0][f] for o, _ in one], dtype=float)
        assert np.array_equal(alone, np.array([r[f] for r in many], dtype=float), equal_nan=True), f
        assert np.array_equal(alone, np.asarray(cols[f], dtype=float), equal_nan=True), f
    sources = {s: set(np.flatnonzero((codes == k).any(axis=1)).tolist()) for k, s in enumerate(lookup.SOURCES)}
    assert {0, 1} <= sources["sent"] and {2, 3} <= sources["missing"] and sources["stale"] and sources["store"]
    assert (codes[2:4] == lookup.MISSING).all() and (codes[4, [lk.names.index("origin_departures_2h")]] == 0).all()
    assert used.answer() == used_cols.answer() == {
        "provided": list(lk.names), "as_of": {v: UNTIL for v in lk.views},
        **{s: {f: ("all" if len(r) == n else r) for f in lk.names
               if (r := np.flatnonzero(codes[:, lk.names.index(f)] == k).tolist())}
           for k, s in enumerate(lookup.SOURCES) if s != "store"}}
    request, batch = schemas.request_models(10, lk.view_of)
    for f, v in lk.view_of.items():
        doc = request.model_json_schema()["$defs"]["FlightRecord"]["properties"][f]["anyOf"][0]["description"]
        assert f"Provided by the online feature store (view {v})" in doc


@pytest.mark.parametrize("lead", [0, 7200, 86400])
def test_prediction_times_are_prediction_time(lead):
    """The rows' prediction times computed at once equal ``definitions.prediction_time`` row by row, NaT where
    it raises (a day past the month's end, minutes past 59)."""
    from mlops_nb.errors import FeatureStoreError
    from mlops_nb.featurestore.definitions import prediction_time
    from mlops_nb.serving.lookup import prediction_times

    rng = np.random.default_rng(lead)
    n = 5000
    year = rng.choice([2012, 2013, 2016, 2100, 1900], n)
    month = rng.integers(1, 13, n)
    day = rng.integers(1, 32, n)
    hhmm = rng.integers(0, 24, n) * 100 + rng.choice([0, 1, 30, 59, 60, 99], n)
    edges = [(2013, 1, 1, 0), (2013, 12, 31, 2359), (2012, 2, 29, 1200), (2013, 2, 29, 1200), (2013, 4, 31, 900)]
    year, month, day, hhmm = (np.concatenate([a, [e[i] for e in edges]])
                              for i, a in enumerate((year, month, day, hhmm)))
    got = prediction_times(year.astype(float), month.astype(float), day.astype(float), hhmm.astype(float), lead)
    for i in range(len(year)):
        try:
            want = np.datetime64(prediction_time(int(year[i]), int(month[i]), int(day[i]), int(hhmm[i]), lead), "s")
        except FeatureStoreError:
            want = np.datetime64("NaT", "s")
        assert (np.isnat(got[i]) and np.isnat(want)) or got[i] == want, (year[i], month[i], day[i], hhmm[i])
    assert np.isnat(got).sum() > n // 10 and not np.isnat(got[-5:-2]).any() and np.isnat(got[-2:]).all()
    assert got[-4] == np.datetime64(datetime(2013, 12, 31, 23, 59), "s") - np.timedelta64(lead, "s")
