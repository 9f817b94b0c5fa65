"""The BentoML service three ways: in process, served by `mlops-nb serve`, and built into a Bento served by
`bentoml serve`. Real processes on 127.0.0.1, real HTTP (httpx), the real model store.

What it answers is what the model computes offline (no training/serving skew): exactly (==) on the
scikit-learn path (serving.compiled = false: the input built in NumPy, not pandas), within 1e-12 with the same
decisions on the compiled path (treelite, the default); every answer names
its model version, arm and request id, a canary routes keys stably, a shadow scores silently, requests are
profiled and logged, bad input is a 4xx naming the problem, and an empty project refuses to start."""
from __future__ import annotations

import json
import re
import textwrap
import time

import pytest

pytest.register_assert_rewrite("served_project")
from served_project import (BENTOML, GOOD, MAX_ROWS, MODEL_NAME, Server, aliases, as_columns, as_records, client,
                            make_project, mlops, mlops_ok, offline_p_late, py_json, sample_rows, serve)

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow

REQUEST_ID = re.compile(r"^[0-9a-f]{16}$")


def chunks(seq, n):
    return [seq[i:i + n] for i in range(0, len(seq), n)]


def assert_answer(body: dict, n: int, version: str, arm: str = "champion", threshold: float = 0.5):
    assert set(body) == {"request_id", "model_version", "arm", "p_late", "late", "features"}, body
    # what the online feature store gave the rows (test_serving_features.py): the projects here have feature
    # definitions and no materialized store
    assert body["features"] is None or set(body["features"]) == {"provided", "as_of", "sent", "missing", "stale"}
    assert REQUEST_ID.match(body["request_id"]), body["request_id"]
    assert body["model_version"] == version and body["arm"] == arm, body
    assert len(body["p_late"]) == len(body["late"]) == n
    assert body["late"] == [p >= threshold for p in body["p_late"]]


@pytest.fixture(scope="module")
def rows(served):
    """~200 rows of the test months (split = 'test'), the record's columns, some values missing."""
    frame = sample_rows(served.pristine, 200)
    assert len(frame) == 200 and frame.isna().any().any()
    return frame


@pytest.fixture(scope="module")
def champion_p(served, rows) -> list[float]:
    """The champion's P(late) of ``rows``, computed offline from the stored estimator."""
    return offline_p_late(served.pristine, served.v1, rows)



def assert_p(got: list[float], expected: list[float], exact: bool, threshold: float = 0.5):
    """The service's P(late) against the offline pipeline's: equal, or (compiled) within 1e-12 and on the same
    side of the threshold."""
    if exact:
        assert got == expected
        return
    assert len(got) == len(expected)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-12
    assert [a >= threshold for a in got] == [b >= threshold for b in expected]


def assert_still_answers(http, version):
    r = http.post("/predict", json={"flights": [GOOD]})
    assert r.status_code == 200, r.text
    assert_answer(r.json(), 1, version)


# --------------------------------------------------------------------------------------------------
# (1) in process


IN_PROCESS = textwrap.dedent("""
    import asyncio, json, sys
    from mlops_nb.serving.service import FlightDelay, PredictBatchRequest, PredictRequest

    svc = FlightDelay()
    data = json.load(open(sys.argv[1]))
    async def main():
        one = await svc.predict(PredictRequest(flights=data["records"], key="k"))
        many = await svc.predict_batch(PredictBatchRequest(columns=data["columns"]))
        info = await svc.model()
        return {"predict": one.model_dump(), "predict_batch": many.model_dump(), "model": info.model_dump(),
                "type": type(svc).__name__}
    print(json.dumps(asyncio.run(main())))
""")


def test_in_process(served, served_copy, rows, champion_p, tmp_path):
    data = tmp_path / "rows.json"
    data.write_text(json.dumps({"records": as_records(rows[:40]), "columns": as_columns(rows)}))
    out = py_json(served_copy, IN_PROCESS, data)
    assert out["type"] == "FlightDelay"
    assert_answer(out["predict"], 40, served.v1)
    assert_p(out["predict"]["p_late"], champion_p[:40], exact=False)
    assert_answer(out["predict_batch"], len(rows), served.v1)
    assert_p(out["predict_batch"]["p_late"], champion_p, exact=False)
    assert out["predict"]["request_id"] != out["predict_batch"]["request_id"]
    assert out["model"]["mode"] == "champion" and out["model"]["challenger"] == {}
    assert out["model"]["champion"]["version"] == served.v1
    assert out["model"]["champion"]["inference"].startswith("treelite up to ")


# --------------------------------------------------------------------------------------------------
# (2) served by `mlops-nb serve`


@pytest.fixture(scope="module")
def http(champion_server):
    with client(champion_server) as c:
        yield c


@pytest.fixture(scope="module")
def sklearn_server(served, tmp_path_factory):
    """The champion served with serving.compiled = false: scikit-learn on the NumPy input, no pandas."""
    root = tmp_path_factory.mktemp("sklearn-server")
    server = serve(served.copy(root / "project"), root, "sklearn", SERVING__MAX_ROWS=MAX_ROWS,
                   SERVING__COMPILED="false")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["compiled", "sklearn"])
def path_http(request, champion_server):
    """(client, exact): each inference path of the service, and whether it must equal the pipeline exactly."""
    server = champion_server if request.param == "compiled" else request.getfixturevalue("sklearn_server")
    with client(server) as c:
        yield c, request.param == "sklearn"


def test_model_endpoint(served, http):
    r = http.post("/model")
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["mode"] == "champion" and info["challenger"] == {}
    champ = info["champion"]
    registered = served.version(served.v1)
    assert champ["version"] == served.v1 and champ["tag"] == f"{MODEL_NAME}:{served.v1}"
    assert champ["metrics"] == registered["metrics"]
    assert champ["model_sha256"].startswith(served.v1)
    assert champ["run_id"] == registered["run_id"]
    assert champ["snapshot_id"] == registered["lineage"]["snapshot_id"]
    assert champ["params"] == registered["lineage"]["params"]
    assert "git_commit" in champ["lineage"] and "scikit-learn" in champ["lineage"]["versions"]


def test_prediction_routes_answer_as_bentoml_does(http):
    """/predict and /predict_batch are answered in front of BentoML's app (serving/direct.py): the same input model
    (its OpenAPI schema, its 400 with BentoML's ``error`` and ``detail``), the same answer and headers."""
    from bentoml._internal.server.http import traffic

    from mlops_nb.serving.limits import Deadline
    from mlops_nb.serving.schemas import Prediction
    from mlops_nb.serving.service import FlightDelay

    assert traffic.TimeoutMiddleware is Deadline  # what BentoML builds the app with, once the service is imported

    schema = http.get("/docs.json").json()
    for route, body in (("/predict", {"flights": [GOOD]}), ("/predict_batch", {"columns": _COLUMNS})):
        assert route in schema["paths"], route
        r = http.post(route, json=body)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["server"] == "BentoML Service/flight_delay"
        assert Prediction.model_validate_json(r.content).model_dump_json().encode() == r.content
        assert re.fullmatch(r"[0-9a-f]{16}", r.json()["request_id"])
        bad = http.post(route, json={**body, "unknown": 1})
        title = FlightDelay.apis[route.strip("/")].input_spec.__name__
        assert bad.status_code == 400 and bad.json()["error"] == f"1 validation error for {title}", bad.text
        assert [d["loc"] for d in bad.json()["detail"]] == [["unknown"]], bad.text


def test_predict_has_no_skew(served, path_http, rows, champion_p):
    """The test-set rows through /predict give the offline predictions: exactly (==) on the scikit-learn path."""
    http, exact = path_http
    records = as_records(rows)
    got, ids = [], set()
    for part in chunks(records, MAX_ROWS):
        r = http.post("/predict", json={"flights": part})
        assert r.status_code == 200, r.text
        body = r.json()
        assert_answer(body, len(part), served.v1)
        got += body["p_late"]
        ids.add(body["request_id"])
    assert_p(got, champion_p, exact)
    assert len(ids) == len(chunks(records, MAX_ROWS)), "a request id a request"
    # one row at a time: the same numbers
    for i in range(0, len(records), 25):
        r = http.post("/predict", json={"flights": [records[i]]})
        assert r.status_code == 200, r.text
        assert_p(r.json()["p_late"], [champion_p[i]], exact)


def test_predict_batch_has_no_skew(served, path_http, rows, champion_p):
    http, exact = path_http
    got = []
    for part in chunks(list(range(len(rows))), MAX_ROWS):
        r = http.post("/predict_batch", json={"columns": as_columns(rows.iloc[part]), "key": "some-client"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert_answer(body, len(part), served.v1)
        got += body["p_late"]
    assert_p(got, champion_p, exact)


def test_missing_optional_fields_are_like_nulls(served, path_http, rows, champion_p):
    """A record may leave out what is unknown (plane, weather): the same as sending null."""
    http, exact = path_http
    records = as_records(rows[:MAX_ROWS])
    sparse = [{k: v for k, v in rec.items() if v is not None} for rec in records]
    assert any(len(s) < len(r) for s, r in zip(sparse, records))
    r = http.post("/predict", json={"flights": sparse})
    assert r.status_code == 200, r.text
    assert_p(r.json()["p_late"], champion_p[:MAX_ROWS], exact)


def _record(**changed):
    return {**GOOD, **changed}


def _raw(text: str) -> bytes:
    return text.encode()


_NAN_RECORD = _raw('{"flights": [{"year": 2013, "month": 3, "day": 1, "sched_dep_time": 600, '
                   '"sched_arr_time": 830, "carrier": "UA", "origin": "EWR", "dest": "ORD", "distance": NaN}]}')
_INF_RECORD = _raw('{"flights": [{"year": 2013, "month": 3, "day": 1, "sched_dep_time": 600, '
                   '"sched_arr_time": 830, "carrier": "UA", "origin": "EWR", "dest": "ORD", "distance": 719, '
                   '"temp": Infinity}]}')
_NEG_INF_COLUMNS = _raw('{"columns": {"year": [2013], "month": [3], "day": [1], "sched_dep_time": [600], '
                        '"sched_arr_time": [830], "carrier": ["UA"], "origin": ["EWR"], "dest": ["ORD"], '
                        '"distance": [719], "wind_speed": [-Infinity]}}')
_COLUMNS = {k: [v] for k, v in GOOD.items()}

BAD_INPUT = [
    # id, route, body (JSON-able, or bytes sent as they are), words the error must contain
    ("malformed-json", "/predict", b'{"flights": [{"year": 2013,', ["Invalid JSON"]),
    ("not-json", "/predict_batch", b"year=2013&month=3", ["Invalid JSON"]),
    ("not-an-object", "/predict", [GOOD], ["Input should be an object"]),
    ("missing-field", "/predict", {"flights": [{k: v for k, v in GOOD.items() if k != "carrier"}]},
     ["carrier", "Field required"]),
    ("missing-flights", "/predict", {"key": "a"}, ["flights", "Field required"]),
    ("missing-column", "/predict_batch", {"columns": {k: v for k, v in _COLUMNS.items() if k != "distance"}},
     ["distance", "Field required"]),
    ("extra-field-in-record", "/predict", {"flights": [_record(dep_delay=300.0)]},
     ["dep_delay", "Extra inputs are not permitted"]),
    ("extra-field-at-top-level", "/predict", {"flights": [GOOD], "model": "other"},
     ["model", "Extra inputs are not permitted"]),
    ("extra-column", "/predict_batch", {"columns": {**_COLUMNS, "tailnum": ["N1"]}},
     ["tailnum", "Extra inputs are not permitted"]),
    ("extra-field-at-top-level-batch", "/predict_batch", {"columns": _COLUMNS, "flights": []},
     ["flights", "Extra inputs are not permitted"]),
    ("wrong-type-number", "/predict", {"flights": [_record(year="last year")]}, ["year", "valid integer"]),
    ("wrong-type-string", "/predict", {"flights": [_record(carrier=12)]}, ["carrier", "valid string"]),
    ("wrong-type-list", "/predict", {"flights": GOOD}, ["flights", "valid array"]),
    ("wrong-type-column", "/predict_batch", {"columns": {**_COLUMNS, "distance": 719}}, ["distance", "valid array"]),
    ("fraction-for-integer", "/predict", {"flights": [_record(sched_dep_time=600.5)]},
     ["sched_dep_time", "integer"]),
    ("out-of-range", "/predict", {"flights": [_record(month=13)]}, ["month", "less than or equal to 12"]),
    ("bad-code", "/predict", {"flights": [_record(origin="E W R")]}, ["origin", "pattern"]),
    ("null-required", "/predict", {"flights": [_record(dest=None)]}, ["dest"]),
    ("nan-literal", "/predict", _NAN_RECORD, ["distance", "finite number"]),
    ("infinity-literal", "/predict", _INF_RECORD, ["temp", "finite number"]),
    ("minus-infinity-column", "/predict_batch", _NEG_INF_COLUMNS, ["wind_speed", "finite number"]),
    ("empty-list", "/predict", {"flights": []}, ["flights", "at least 1 item"]),
    ("empty-columns", "/predict_batch", {"columns": {k: [] for k in _COLUMNS}}, ["year", "at least 1 item"]),
    ("ragged-columns", "/predict_batch", {"columns": {**_COLUMNS, "year": [2013, 2013]}},
     ["every column must have as many values"]),
    ("too-many-rows", "/predict", {"flights": [GOOD] * (MAX_ROWS + 1)}, ["flights", f"at most {MAX_ROWS} items"]),
    ("too-many-rows-batch", "/predict_batch", {"columns": {k: v * (MAX_ROWS + 1) for k, v in _COLUMNS.items()}},
     ["columns", f"at most {MAX_ROWS} items", f"not {MAX_ROWS + 1}"]),
    ("key-too-long", "/predict", {"flights": [GOOD], "key": "k" * 201}, ["key", "at most 200 characters"]),
    ("oversized-body", "/predict", {"flights": [GOOD] * 5, "key": "k" * 400_000},
     ["request body over", "serving.max_rows"]),
]


@pytest.mark.parametrize("route, body, words", [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_a_4xx_naming_the_problem(served, http, route, body, words):
    if isinstance(body, bytes):
        r = http.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(route, json=body)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:2000]}"
    assert r.headers["content-type"].startswith("application/json")
    text = r.text
    for word in words:
        assert word in text, f"{word!r} not in the error: {text[:2000]}"
    assert_still_answers(http, served.v1)


@pytest.mark.parametrize("route, body", [b[1:3] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT])
def test_every_refusal_is_an_error_object(served, http, route, body):
    """Clients read ``error`` of a refusal: it is a JSON object with an 'error' message, for every problem."""
    if isinstance(body, bytes):
        r = http.post(route, content=body, headers={"content-type": "application/json"})
    else:
        r = http.post(route, json=body)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:2000]}"
    error = r.json()
    assert isinstance(error, dict), f"the refusal is not a JSON object: {r.text[:500]}"
    assert isinstance(error.get("error"), str) and error["error"], error


def test_oversized_body_is_413_before_parsing(served, http):
    body = json.dumps({"flights": [GOOD] * 5, "key": "k" * 400_000}).encode()
    r = http.post("/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert "request body over" in r.json()["error"]
    assert_still_answers(http, served.v1)


def test_oversized_chunked_body_is_413(served, http):
    body = json.dumps({"flights": [GOOD] * 5, "key": "k" * 400_000}).encode()

    def chunked():
        for i in range(0, len(body), 16384):
            yield body[i:i + 16384]

    r = http.post("/predict", content=chunked(), headers={"content-type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    try:
        assert r.status_code == 413, f"{r.status_code}: {r.text[:500]}"
    finally:
        assert_still_answers(http, served.v1)


def test_other_methods_and_routes(served, http):
    assert http.get("/predict").status_code == 405
    assert http.post("/nope", json={}).status_code == 404
    assert http.get("/livez").status_code == 200
    assert_still_answers(http, served.v1)


def test_health_answers_while_a_big_batch_is_scored(served, tmp_path):
    """A 10,000-row /predict_batch is scored off the event loop: /livez and /readyz keep answering within
    50 ms meanwhile, and the batch's answer is the pipeline's."""
    import statistics
    import threading

    project = served.copy(tmp_path / "project")
    server = serve(project, tmp_path, "big", SERVING__MAX_ROWS=10_000).wait_ready()
    try:
        frame = sample_rows(project, 200)
        columns = {k: v * 50 for k, v in as_columns(frame).items()}
        expected = offline_p_late(project, served.v1, frame) * 50
        answers, done = [], threading.Event()

        def post_batches():
            with client(server) as c:
                for _ in range(3):
                    started = time.perf_counter()
                    r = c.post("/predict_batch", json={"columns": columns})
                    answers.append((r, started, time.perf_counter()))
            done.set()

        thread = threading.Thread(target=post_batches)
        thread.start()
        health = []
        with client(server) as c:
            while not done.is_set():
                for path in ("/livez", "/readyz"):
                    started = time.perf_counter()
                    assert c.get(path).status_code == 200
                    health.append((started, (time.perf_counter() - started) * 1000))
        thread.join()
    finally:
        server.stop()
    for r, _, _ in answers:
        assert r.status_code == 200, r.text[:500]
        assert_answer(r.json(), 10_000, served.v1)
        assert_p(r.json()["p_late"], expected, exact=True)  # more rows than max_rows: scikit-learn
    during = [ms for t, ms in health if any(a <= t <= b for _, a, b in answers)]
    assert len(during) >= 20, f"too few health checks while the batches ran: {len(during)}"
    assert statistics.median(during) < 50 and sorted(during)[int(len(during) * 0.95)] < 50, sorted(during)[-10:]


# --------------------------------------------------------------------------------------------------
# rollouts: canary and shadow, on a copy with the second version as the challenger


@pytest.fixture(scope="module")
def rollout(served, tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    project = served.copy(root / "project")
    mlops_ok(project, "models", "promote", served.v2, "--alias", "challenger")
    assert aliases(project) == {"champion": served.v1, "challenger": served.v2}
    return project


@pytest.fixture(scope="module")
def canary(rollout):
    # its own serving folder, so that the shadow server's profiles and log stay alone in data/serving
    server = serve(rollout, rollout.parent, "canary", SERVING__MODE="canary", SERVING__CANARY_SHARE="0.5",
                   PATHS__SERVING_DIR=str(rollout / "data" / "serving-canary"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_canary_routes_keys_stably(served, canary, rows):
    frame = rows[:3]
    records = as_records(frame)
    expected = {served.v1: offline_p_late(canary.project, served.v1, frame),
                served.v2: offline_p_late(canary.project, served.v2, frame)}
    assert expected[served.v1] != expected[served.v2], "the two versions should score differently"
    arms = {}
    with client(canary) as http:
        for round_ in range(2):
            for i in range(30):
                key = f"customer-{i}"
                route, body = (("/predict", {"flights": records, "key": key}) if (i + round_) % 2 else
                               ("/predict_batch", {"columns": as_columns(frame), "key": key}))
                r = http.post(route, json=body)
                assert r.status_code == 200, r.text
                answer = r.json()
                version = {"champion": served.v1, "challenger": served.v2}[answer["arm"]]
                assert_answer(answer, len(records), version, answer["arm"])
                assert_p(answer["p_late"], expected[version], exact=False)
                arms.setdefault(key, set()).add(answer["arm"])
        info = http.post("/model").json()
    assert all(len(a) == 1 for a in arms.values()), f"a key changed arms: {arms}"
    counts = {arm: sum(a == {arm} for a in arms.values()) for arm in ("champion", "challenger")}
    assert counts["champion"] >= 3 and counts["challenger"] >= 3, counts
    assert info["mode"] == "canary"
    assert info["champion"]["version"] == served.v1 and info["challenger"]["version"] == served.v2


def test_canary_without_key_spreads_requests(served, canary):
    seen = set()
    with client(canary) as http:
        for _ in range(40):
            r = http.post("/predict", json={"flights": [GOOD]})
            assert r.status_code == 200, r.text
            seen.add((r.json()["arm"], r.json()["model_version"]))
    assert seen == {("champion", served.v1), ("challenger", served.v2)}


@pytest.fixture(scope="module")
def shadow_traffic(served, rollout, rows):
    """A shadow server: some requests (records, columns, single rows), then SIGTERM; what came back."""
    server = serve(rollout, rollout.parent, "shadow", SERVING__MODE="shadow")
    requests = []  # (frame, answer)
    try:
        server.wait_ready()
        with client(server) as http:
            info = http.post("/model").json()
            for part, route in ((rows[:30], "/predict"), (rows[30:50], "/predict_batch"), (rows[50:51], "/predict"),
                                (rows[51:52], "/predict_batch"), (rows[52:55], "/predict")):
                body = ({"flights": as_records(part)} if route == "/predict" else {"columns": as_columns(part)})
                r = http.post(route, json={**body, "key": f"k{len(requests)}"})
                assert r.status_code == 200, r.text
                requests.append((part.reset_index(drop=True), r.json()))
        time.sleep(0.5)
    finally:
        code = server.stop()
    return {"server": server, "requests": requests, "info": info, "code": code,
            "out": rollout / "data" / "serving"}


def test_shadow_answers_with_the_champion_and_logs_the_challenger(served, shadow_traffic):
    assert shadow_traffic["info"]["mode"] == "shadow"
    assert shadow_traffic["info"]["challenger"]["version"] == served.v2
    project = shadow_traffic["server"].project
    lines = [json.loads(l) for f in sorted((shadow_traffic["out"] / "predictions").glob("*.jsonl"))
             for l in f.read_text().splitlines()]
    by_request = {}
    for line in lines:
        by_request.setdefault(line["request_id"], []).append(line)
    for frame, answer in shadow_traffic["requests"]:
        assert_answer(answer, len(frame), served.v1, "champion")
        assert_p(answer["p_late"], offline_p_late(project, served.v1, frame), exact=False)
        logged = sorted(by_request[answer["request_id"]], key=lambda l: l["row"])
        shadow_p = offline_p_late(project, served.v2, frame)
        assert [(l["shadow"]["arm"], l["shadow"]["model_version"]) for l in logged] == [
            ("challenger", served.v2)] * len(shadow_p)
        assert_p([l["shadow"]["p_late"] for l in logged], shadow_p, exact=False)
        assert shadow_p != answer["p_late"]


def test_requests_are_profiled_and_logged(served, shadow_traffic):
    from mlops_nb.data import profiles
    from mlops_nb.lib.transforms import RECORD

    sent = sum(len(frame) for frame, _ in shadow_traffic["requests"])
    assert sent == 55
    out = shadow_traffic["out"]
    bins = sorted((out / "profiles").glob("*.bin"))
    assert bins, f"no request profile in {out}:\n{shadow_traffic['server'].log()[-3000:]}"
    counts = {}
    for path in bins:
        view = profiles.read(path)
        assert set(RECORD) | {"p_late", "arm"} <= set(view.get_columns())
        for col, n in view.to_pandas()["counts/n"].items():
            counts[col] = counts.get(col, 0) + int(n)
    assert {col: counts[col] for col in RECORD} == {col: sent for col in RECORD}
    assert counts["p_late"] == sent

    lines = [json.loads(l) for f in sorted((out / "predictions").glob("*.jsonl")) for l in f.read_text().splitlines()]
    assert len(lines) == sent, "one line a row"
    by_key = {(l["request_id"], l["row"]): l for l in lines}
    for frame, answer in shadow_traffic["requests"]:
        for i, record in enumerate(as_records(frame)):
            line = by_key[(answer["request_id"], i)]
            assert line["model_version"] == answer["model_version"] == served.v1
            assert line["arm"] == answer["arm"]
            assert line["p_late"] == answer["p_late"][i]
            # numbers are logged to 15 decimal places (data.logs): the store's means have more
            assert line["inputs"].keys() == record.keys()
            for name, value in record.items():
                assert line["inputs"][name] == (pytest.approx(value, rel=1e-12, abs=1e-15)
                                                if isinstance(value, float) else value), name
            assert line["at"]


# --------------------------------------------------------------------------------------------------
# (3) built into a Bento, served by `bentoml serve TAG`


def test_bento_serves_its_pinned_model(served, tmp_path, rows):
    project = served.copy(tmp_path / "project")
    result = mlops_ok(project, "build", timeout=600)
    tag = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"flight_delay:[a-z0-9]+", tag), str(result)
    assert (project / "data" / "bentoml" / "bentos" / "flight_delay" / tag.split(":")[1]).is_dir()

    # the registry moves on after the build
    mlops_ok(project, "models", "promote", served.v2, "--reason", "newer")
    assert aliases(project)["champion"] == served.v2

    home = project / "data" / "bentoml"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    server = Server([BENTOML, "serve", tag, "--host", "127.0.0.1", "--port", "{port}"], elsewhere,
                    {"BENTOML_HOME": home}, tmp_path / "bento.log", project=project).start()
    frame = rows[:20]
    try:
        server.wait_ready()
        with client(server) as http:
            info = http.post("/model").json()
            r = http.post("/predict", json={"flights": as_records(frame)})
    finally:
        server.stop()
    assert info["champion"]["version"] == served.v1 and info["challenger"] == {}
    assert r.status_code == 200, r.text
    assert_answer(r.json(), len(frame), served.v1)
    assert_p(r.json()["p_late"], offline_p_late(project, served.v1, frame), exact=False)
    # a Bento's own folder is read-only: its log goes under $BENTOML_HOME/serving
    logged = [json.loads(line) for f in (home / "serving" / "predictions").glob("*.jsonl")
              for line in f.read_text().splitlines()]
    assert [l["model_version"] for l in logged] == [served.v1] * len(frame)


# --------------------------------------------------------------------------------------------------
# nothing to serve


def test_serve_refuses_a_project_without_a_run(tmp_path):
    project = make_project(tmp_path / "empty")
    started = time.monotonic()
    result = mlops(project, "serve", "--port", "1", timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode != 0, str(result)
    assert "Traceback" not in result.stderr, str(result)
    assert "run the pipeline first" in result.stderr.lower(), str(result)
    assert "mlops-nb run" in result.stderr


def test_bentoml_serve_of_a_project_without_a_run_does_not_start(tmp_path):
    project = make_project(tmp_path / "empty")
    server = Server([BENTOML, "serve", "mlops_nb.serving.service:FlightDelay", "--host", "127.0.0.1",
                     "--port", "{port}"], project, {}, tmp_path / "empty.log").start()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "Nothing to serve" not in server.log():
            assert not server.ready(), "a service with no model must not report ready"
            if server.proc.poll() is not None:
                break
            time.sleep(0.5)
        log = server.log()
        assert "Nothing to serve" in log and "run the pipeline first (`mlops-nb run`)" in log.lower(), log[-3000:]
        assert not server.ready()
    finally:
        server.stop()


def test_serve_refuses_a_registry_without_a_champion(served, served_copy):
    from mlops_nb import registry
    from mlops_nb.data import warehouse

    with warehouse.connect(write=True, path=served_copy / "data" / "warehouse.duckdb") as con:
        registry.set_alias(con, "champion", None, "retired", actor="test")
        assert registry.aliases(con) == {}
    result = mlops(served_copy, "serve", "--port", "1", timeout=120)
    assert result.returncode == 7, str(result)
    assert "Traceback" not in result.stderr
    assert "No champion" in result.stderr and "mlops-nb run" in result.stderr, str(result)
