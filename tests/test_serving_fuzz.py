"""Property-based fuzzing of the running service from its own OpenAPI schema (GET /docs.json), with
schemathesis: valid requests and schema-violating ones, against /predict, /predict_batch, /feedback and /model of a
real `mlops-nb serve`, over real HTTP; then, with hypothesis, requests no schema describes, over every route the
schema lists: any method, any content type, extra headers, valid bodies cut, doubled or corrupted, random bytes.
No input may make it answer 5xx, every refusal is a JSON error object, and it must still serve after."""
from __future__ import annotations

import collections
import json

import pytest

pytest.register_assert_rewrite("served_project")
from served_project import client

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow

OPERATIONS = r"^/(predict|predict_batch|feedback|model)$"
MAX_EXAMPLES = 30


@pytest.fixture(scope="module")
def schema(champion_server):
    import schemathesis

    loaded = schemathesis.openapi.from_url(f"{champion_server.url}/docs.json", timeout=30)
    return loaded.include(path_regex=OPERATIONS)


def test_schema_lists_the_api(schema):
    labels = sorted(op.ok().label for op in schema.get_all_operations())
    assert labels == ["POST /feedback", "POST /model", "POST /predict", "POST /predict_batch"]


@pytest.mark.parametrize("mode", ["positive", "negative"])
@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/feedback", "/model"])
def test_fuzz_never_a_server_error(champion_server, schema, path, mode):
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error

    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == path]
    statuses = collections.Counter()
    session = requests.Session()

    @settings(max_examples=MAX_EXAMPLES, deadline=30_000, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)))
    def fuzz(case):
        response = case.call(base_url=champion_server.url, session=session, timeout=60)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    try:
        fuzz()
    finally:
        session.close()
    assert sum(statuses.values()) >= MAX_EXAMPLES // 2, statuses
    assert all(code < 500 for code in statuses), statuses
    if mode == "positive":
        assert statuses[200] > 0, f"no valid request succeeded: {statuses}"
    with client(champion_server) as http:
        assert http.get("/readyz").status_code == 200
        r = http.post("/model")
        assert r.status_code == 200 and r.json()["champion"]["version"]


@pytest.mark.parametrize("path", [
    "/predict", "/predict_batch",
    "/model",
])
def test_successful_answers_match_the_published_schema(champion_server, schema, path):
    import requests
    from hypothesis import HealthCheck, Phase, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import response_schema_conformance

    (operation,) = [r.ok() for r in schema.get_all_operations() if r.ok().path == path]
    ok = []
    session = requests.Session()

    @settings(max_examples=MAX_EXAMPLES, deadline=30_000, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def fuzz(case):
        response = case.call(base_url=champion_server.url, session=session, timeout=60)
        if response.status_code == 200:  # BentoML's generic 400 schema is not the service's to keep
            ok.append(response)
            case.validate_response(response, checks=[response_schema_conformance])

    try:
        fuzz()
    finally:
        session.close()
    assert ok, "no valid request succeeded"


# --------------------------------------------------------------------------------------------------
# beyond the schema: methods, content types, headers and raw bodies, over every route /docs.json lists

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
                 "multipart/form-data", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded",
                 "text/plain", "application/xml", "application/octet-stream", "application/vnd.api+json", "", "*/*"]
HEADER_TEXT = "".join(chr(c) for c in range(0x20, 0x7f))  # what a header value may hold
TOKEN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te", "trailer",
           "keep-alive", "content-type"}  # headers the client sets itself; content-type is drawn apart
RAW_EXAMPLES = 150


@pytest.fixture(scope="module")
def routes(champion_server) -> dict[str, list[str]]:
    """Every route of the service's OpenAPI schema -> its methods."""
    with client(champion_server) as http:
        paths = http.get("/docs.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/feedback", "/model", "/livez", "/readyz"} <= set(paths), list(paths)
    return {path: sorted(m.upper() for m in ops) for path, ops in paths.items()}


@pytest.fixture(scope="module")
def valid_bodies(champion_server, routes):
    """route -> a strategy of valid bodies (bytes) from its schema; b"" for a route that reads none."""
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.core import NOT_SET

    everything = schemathesis.openapi.from_url(f"{champion_server.url}/docs.json", timeout=30)
    out = {path: st.just(b"") for path in routes}
    for result in everything.get_all_operations():
        op = result.ok()
        if op.body:
            cases = op.as_strategy(generation_mode=GenerationMode.POSITIVE)
            out[op.path] = cases.map(lambda c: b"" if c.body is NOT_SET else json.dumps(c.body).encode())
    return out


def mutated_bodies(valid):
    """A valid body as it is, cut short, doubled, with a byte changed or bytes inserted; random bytes; any
    JSON; nothing."""
    from hypothesis import strategies as st

    cut = valid.flatmap(lambda b: st.integers(0, len(b)).map(lambda i: b[:i]))
    changed = valid.flatmap(lambda b: st.tuples(st.integers(0, len(b)), st.integers(0, 255)).map(
        lambda t: b[:t[0]] + bytes([t[1]]) + b[t[0] + 1:]))
    inserted = valid.flatmap(lambda b: st.tuples(st.integers(0, len(b)), st.binary(min_size=1, max_size=8)).map(
        lambda t: b[:t[0]] + t[1] + b[t[0]:]))
    any_json = st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20).map(lambda v: json.dumps(v).encode())
    return st.one_of(valid, cut, valid.map(lambda b: b + b), changed, inserted, st.binary(max_size=500), any_json,
                     st.just(b""))


def raw_requests(routes, valid_bodies, any_method: bool):
    """(method, path, headers, body): a route of the schema with its own method, or (``any_method``) any
    method on a route of the schema or an unknown one; any content type or none, a few extra headers, a body
    valid for the route or mutated."""
    from hypothesis import strategies as st

    content_type = st.one_of(st.none(), st.sampled_from(CONTENT_TYPES), st.text(HEADER_TEXT, max_size=40),
                             st.builds(lambda t, s, p: f"{t}/{s}; {p}", st.text(TOKEN, max_size=12),
                                       st.text(TOKEN, max_size=12), st.text(HEADER_TEXT, max_size=20)))
    extra = st.dictionaries(st.text(TOKEN, min_size=1, max_size=12).filter(lambda k: k.lower() not in FRAMING),
                            st.text(HEADER_TEXT, max_size=40), max_size=3)
    path = st.sampled_from(sorted(routes))
    if any_method:
        path = st.one_of(path, st.text(TOKEN + "/.", min_size=1, max_size=12).map(lambda p: "/" + p))

    @st.composite
    def request(draw):
        where = draw(path)
        method = draw(st.sampled_from(METHODS if any_method else routes[where]))
        body = draw(mutated_bodies(valid_bodies.get(where, st.just(b""))))
        headers = {k.lower(): v.strip() for k, v in draw(extra).items()}
        kind = draw(content_type)
        if kind is not None:
            headers["content-type"] = kind.strip()
        return method, where, headers, body

    return request()


@pytest.mark.parametrize("any_method", [False, True], ids=["own-methods", "any-method"])
def test_fuzz_methods_headers_and_raw_bodies_never_a_server_error(champion_server, routes, valid_bodies, any_method):
    """Never a 5xx; every refusal (but of HEAD, which has no body) a JSON error object; still serving after."""
    from hypothesis import HealthCheck, Phase, given, settings

    statuses = collections.Counter()

    with client(champion_server) as http:
        @settings(max_examples=RAW_EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(req=raw_requests(routes, valid_bodies, any_method))
        def fuzz(req):
            method, path, headers, body = req
            r = http.request(method, path, headers=headers, content=body)
            statuses[r.status_code] += 1
            assert r.status_code < 500, f"{method} {path} {headers} {body[:300]!r}: {r.status_code} {r.text[:500]}"
            if r.status_code >= 400 and method != "HEAD":
                error = r.json()
                assert isinstance(error, dict) and isinstance(error.get("error"), str), (method, path, r.text[:500])

        fuzz()
        assert sum(statuses.values()) >= RAW_EXAMPLES // 2, statuses
        if not any_method:
            assert statuses[200] and statuses[400] and statuses[415], f"too few kinds of answers: {statuses}"
        assert http.get("/readyz").status_code == 200
        r = http.post("/model")
        assert r.status_code == 200 and r.json()["champion"]["version"]
