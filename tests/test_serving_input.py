"""Malformed requests of every kind against a real `mlops-nb serve` (issue #9: "no 5xx on any input").

Content types that are not JSON, bodies that are not UTF-8 or nest too deep, numbers out of range, empty
bodies, wrong methods and routes, bodies that never arrive or stop half-way: each is a 4xx with a JSON error
object whose message names the problem, and the server answers a good request right after."""
from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.register_assert_rewrite("served_project")
from served_project import GOOD, client

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow

PREDICT = json.dumps({"flights": [GOOD]}).encode()
BATCH = json.dumps({"columns": {k: [v] for k, v in GOOD.items()}}).encode()
FEEDBACK = b'{"outcomes": [{"key": "k", "late": true, "arr_delay": 3.0}]}'
JSON = {"content-type": "application/json"}
API_ROUTES = ["/predict", "/predict_batch", "/feedback", "/model"]
HUGE = "1" + "0" * 9_999  # an integer of 10,000 digits
DEEP = b"[" * 100_000


def with_value(body: bytes, field: str, value: str) -> bytes:
    """``body`` with the (first) value of ``field`` replaced by ``value``, written as it is."""
    text = body.decode()
    start = text.index(f'"{field}": ') + len(f'"{field}": ')
    end = min(i for i in (text.find(",", start), text.find("}", start), text.find("]", start)) if i >= 0)
    if text[start] == "[":  # a column: its first value
        start, end = start + 1, min(i for i in (text.find(",", start), text.find("]", start)) if i >= 0)
    return (text[:start] + value + text[end:]).encode()


def ct(value: str) -> dict:
    return {"content-type": value}


NOT_JSON = ["content-type must be application/json"]

CASES = [
    # id, method, route, headers, body, status, words the error must contain
    ("multipart-without-boundary", "POST", "/predict", ct("multipart/form-data"), PREDICT, 415,
     NOT_JSON + ["multipart/form-data", "a form"]),
    ("multipart-broken-boundary", "POST", "/predict", ct("multipart/form-data; boundary=xyz"), b"--abc\r\nx", 415,
     NOT_JSON + ["boundary=xyz"]),
    ("urlencoded", "POST", "/predict_batch", ct("application/x-www-form-urlencoded"), b"year=2013", 415,
     NOT_JSON + ["a form"]),
    ("text-plain", "POST", "/predict", ct("text/plain"), PREDICT, 415, NOT_JSON + ["text/plain"]),
    ("xml", "POST", "/predict", ct("application/xml"), b"<flights/>", 415, NOT_JSON + ["application/xml"]),
    ("octet-stream", "POST", "/feedback", ct("application/octet-stream"), FEEDBACK, 415, NOT_JSON),
    ("json-suffix", "POST", "/predict", ct("application/vnd.api+json"), PREDICT, 415, NOT_JSON),
    ("garbage-content-type", "POST", "/predict", ct(";;;==="), PREDICT, 415, NOT_JSON + [";;;==="]),
    ("text-on-model", "POST", "/model", ct("text/plain"), b"hi", 415, NOT_JSON),
    ("charset-latin-1", "POST", "/predict", ct("application/json; charset=latin-1"), PREDICT, 415,
     ["charset", "must be utf-8", "latin-1"]),
    ("charset-utf-16", "POST", "/predict", ct("application/json; charset=utf-16"), PREDICT, 415,
     ["charset", "must be utf-8"]),
    ("invalid-utf8", "POST", "/predict", JSON, b'{"key": "\xff"}', 400, ["must be UTF-8", "0xff"]),
    ("invalid-utf8-in-valid-request", "POST", "/predict", JSON, PREDICT[:-1] + b', "key": "caf\xe9"}', 400,
     ["must be UTF-8", "0xe9"]),
    ("utf16-body", "POST", "/predict", JSON, PREDICT.decode().encode("utf-16"), 400, ["must be UTF-8"]),
    ("byte-order-mark", "POST", "/predict", JSON, b"\xef\xbb\xbf" + PREDICT, 400, ["byte order mark"]),
    ("nested-100000-deep", "POST", "/predict", JSON, DEEP, 400, ["nested at most 64 levels"]),
    ("nested-deep-batch", "POST", "/predict_batch", JSON, DEEP, 400, ["nested at most 64 levels"]),
    ("nested-deep-feedback", "POST", "/feedback", JSON, DEEP, 400, ["nested at most 64 levels"]),
    ("nested-deep-model", "POST", "/model", JSON, DEEP, 400, ["nested at most 64 levels"]),
    ("nested-objects", "POST", "/predict", JSON, b'{"a":' * 100 + b"1" + b"}" * 100, 400,
     ["nested at most 64 levels"]),
    ("nested-in-a-field", "POST", "/predict", JSON, PREDICT[:-1] + b', "key": ' + b"[" * 70 + b"]" * 70 + b"}",
     400, ["nested at most 64 levels"]),
    ("nested-too-deep-and-too-big", "POST", "/predict", JSON, DEEP + b"]" * 100_000, 413, ["request body over"]),
    ("huge-string", "POST", "/predict", JSON, json.dumps({"flights": [GOOD], "key": "k" * 200_000}).encode(), 413,
     ["request body over", "serving.max_rows"]),
    ("1e400-in-a-float-field", "POST", "/predict", JSON, with_value(PREDICT, "distance", "1e400"), 400,
     ["distance", "finite number"]),
    ("minus-1e400", "POST", "/predict", JSON, with_value(PREDICT, "distance", "-1e400"), 400,
     ["distance", "finite number"]),
    ("1e400-in-an-int-field", "POST", "/predict", JSON, with_value(PREDICT, "year", "1e400"), 400,
     ["year", "finite number"]),
    ("1e400-in-a-column", "POST", "/predict_batch", JSON, with_value(BATCH, "distance", "1e400"), 400,
     ["distance", "finite number"]),
    ("1e400-in-feedback", "POST", "/feedback", JSON, with_value(FEEDBACK, "arr_delay", "1e400"), 400,
     ["arr_delay", "finite number"]),
    ("10000-digits-in-a-float-field", "POST", "/predict", JSON, with_value(PREDICT, "distance", HUGE), 400,
     ["'distance'", "at most 4,300 digits", "10,000 digits"]),
    ("10000-digits-in-an-int-field", "POST", "/predict", JSON, with_value(PREDICT, "year", HUGE), 400,
     ["'year'", "at most 4,300 digits"]),
    ("10000-digits-negative", "POST", "/predict", JSON, with_value(PREDICT, "distance", "-" + HUGE), 400,
     ["'distance'", "at most 4,300 digits"]),
    ("10000-digits-in-a-column", "POST", "/predict_batch", JSON, with_value(BATCH, "year", HUGE), 400,
     ["'year'", "at most 4,300 digits"]),
    ("10000-digits-in-feedback", "POST", "/feedback", JSON, with_value(FEEDBACK, "arr_delay", HUGE), 400,
     ["'arr_delay'", "at most 4,300 digits"]),
    ("400-digits-in-an-int-field", "POST", "/predict", JSON, with_value(PREDICT, "year", HUGE[:400]), 400,
     ["year", "less than or equal to"]),
    ("empty-body", "POST", "/predict", JSON, b"", 400, ["flights", "Field required"]),
    ("empty-body-no-content-type", "POST", "/predict_batch", {}, b"", 400, ["columns", "Field required"]),
    ("empty-body-feedback", "POST", "/feedback", JSON, b"", 400, ["outcomes", "Field required"]),
    ("whitespace-body", "POST", "/predict", JSON, b" \n\t ", 400, ["Invalid JSON"]),
    ("null-body", "POST", "/predict", JSON, b"null", 400, ["Input should be an object"]),
    ("string-body", "POST", "/predict", JSON, b'"flights"', 400, ["Input should be an object"]),
    ("trailing-garbage", "POST", "/predict", JSON, PREDICT + b"xx", 400, ["trailing characters"]),
    ("two-documents", "POST", "/predict", JSON, PREDICT + PREDICT, 400, ["trailing characters"]),
    ("nul-bytes", "POST", "/predict", JSON, b"\x00" * 100, 400, ["Invalid JSON"]),
    ("bad-json-to-model", "POST", "/model", JSON, b'{"a": ', 400, ["Invalid JSON"]),
    *[(f"{method}-{route}", method, route, JSON, PREDICT if method in ("PUT", "PATCH") else None, 405,
       [f"{route} answers {'GET, HEAD, POST' if route == '/model' else 'POST'}", f"got {method}"])
      for route in API_ROUTES for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS")
      if (method, route) != ("GET", "/model")],  # GET /model reads the model (access.GetModel)
    *[(f"POST-{route}", "POST", route, JSON, b"{}", 405, [f"{route} answers GET", "got POST"])
      for route in ("/livez", "/readyz", "/metrics", "/docs.json")],
    ("DELETE-livez", "DELETE", "/livez", {}, None, 405, ["/livez answers GET", "got DELETE"]),
    ("GET-unknown-route", "GET", "/nope", {}, None, 404, ["no route /nope"]),
    ("POST-unknown-route", "POST", "/nope", JSON, b"{}", 404, ["no route /nope"]),
]


@pytest.fixture(scope="module")
def http(champion_server):
    with client(champion_server) as c:
        yield c


def assert_still_answers(http):
    r = http.post("/predict", json={"flights": [GOOD]})
    assert r.status_code == 200, r.text
    assert len(r.json()["p_late"]) == 1


def assert_error(r, status: int, words=()):
    """``r`` is a ``status`` with a JSON error object whose message (or detail) has every one of ``words``."""
    assert r.status_code == status, f"{r.status_code} (expected {status}): {r.text[:1000]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    error = r.json()
    assert isinstance(error, dict) and isinstance(error.get("error"), str) and error["error"], r.text[:1000]
    for word in words:
        assert word in r.text, f"{word!r} not in the error: {r.text[:1000]}"


@pytest.mark.parametrize("method, route, headers, body, status, words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_malformed_request_is_a_4xx_naming_the_problem(http, method, route, headers, body, status, words):
    r = http.request(method, route, headers=headers, content=body)
    assert_error(r, status, words)
    if status == 405:
        assert r.headers["allow"] in ("POST", "GET, HEAD", "GET, HEAD, POST"), r.headers
    assert_still_answers(http)


@pytest.mark.parametrize("route", API_ROUTES)
def test_head_is_a_405_without_a_body(http, route):
    """HEAD of a POST route is a 405 without a body; /model, which GET reads too, answers HEAD as GET."""
    r = http.head(route)
    if route == "/model":
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) > 100, r.headers
    else:
        assert r.status_code == 405 and r.headers["allow"] == "POST", r.headers
        assert r.content == b""
    assert r.headers["content-type"] == "application/json"
    assert_still_answers(http)


@pytest.mark.parametrize("headers", [{}, JSON, ct("application/json; charset=utf-8"),
                                     ct("Application/JSON;charset=UTF8"), ct('application/json; charset="utf-8"')],
                         ids=["no-content-type", "json", "json-utf-8", "json-upper-case", "json-quoted-charset"])
def test_json_in_utf8_is_read(http, headers):
    """What BentoML read as JSON before (no content type at all included) is still read."""
    r = http.post("/predict", headers=headers, content=PREDICT[:-1] + ', "key": "café [{"}'.encode())
    assert r.status_code == 200, r.text
    r = http.post("/model", headers=headers)
    assert r.status_code == 200, r.text


def raw(server, data: bytes, timeout: float = 30) -> tuple[int, dict, bytes]:
    """Sends ``data`` as it is on a fresh connection; (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            assert chunk, f"the server closed the connection without an answer: {answer!r}"
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split()[1]), headers, body


def post_head(length: str | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json", "Connection: close"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_body_that_never_arrives_is_a_408(champion_server, http):
    """A Content-Length longer than the body, headers without their body, a chunk that stops short: a 408
    after 10 s, not the traffic timeout's 504 after 60 s. The three wait side by side."""
    slow = [post_head(str(len(PREDICT) + 50)) + PREDICT, post_head(str(len(PREDICT))),
            post_head(chunked=True) + b"100\r\nabc\r\n"]
    started = time.monotonic()
    with ThreadPoolExecutor(len(slow)) as pool:
        answers = list(pool.map(lambda data: raw(champion_server, data), slow))
    assert time.monotonic() - started < 30
    for status, headers, body in answers:
        assert status == 408, (status, body)
        assert headers["content-type"] == "application/json"
        assert "the body must arrive within 10 s" in json.loads(body)["error"]
    assert f"got {len(PREDICT)} bytes of the {len(PREDICT) + 50} bytes" in answers[0][2].decode(), answers[0]
    assert_still_answers(http)


def test_a_shorter_content_length_is_read_as_a_shorter_body(champion_server, http):
    status, headers, body = raw(champion_server, post_head("10") + PREDICT)
    assert status == 400 and headers["content-type"] == "application/json", body
    assert "Invalid JSON" in json.loads(body)["detail"][0]["msg"]
    assert_still_answers(http)


def test_a_client_leaving_half_way_is_no_server_error(champion_server, http):
    """The client closes the connection in the middle of its body: no traceback in the server's log (the
    request log counts it as a 400, the client's doing)."""
    before = champion_server.log().count("ClientDisconnect")
    with socket.create_connection(("127.0.0.1", champion_server.port), timeout=10) as s:
        s.sendall(post_head(str(len(PREDICT) + 50)) + PREDICT)
        time.sleep(0.5)
    time.sleep(1)
    assert champion_server.log().count("ClientDisconnect") == before, champion_server.log()[-3000:]
    assert_still_answers(http)


@pytest.mark.parametrize("data", [
    post_head("abc") + PREDICT,
    post_head("-1") + PREDICT,
    post_head(chunked=True) + b"zz\r\nabc\r\n0\r\n\r\n",
    post_head(str(len(PREDICT)), chunked=True) + PREDICT,
    b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HELLO\r\n\r\n",
], ids=["content-length-not-a-number", "content-length-negative", "chunk-size-not-hex",
        "content-length-and-chunked", "unknown-method", "no-http-at-all"])
def test_requests_that_are_not_http_are_400(champion_server, http, data):
    """Refused by the HTTP server (uvicorn) before the app sees them: a 400 in plain text, which no
    middleware can change."""
    status, headers, body = raw(champion_server, data)
    assert status == 400, (status, body)
    assert_still_answers(http)
