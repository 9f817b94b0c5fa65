"""Property-based fuzzing of the running service from its own OpenAPI schema (GET /docs.json), with
schemathesis: valid requests and schema-violating ones, against /predict, /predict_batch, /feedback and /model of a
real `mlops-nb serve`, over real HTTP. No input may make it answer 5xx, and it must still serve after."""
from __future__ import annotations

import collections

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
