"""Feedback (observed outcomes) and the service's logs, for real: POST /feedback of a running `mlops-nb
serve` over HTTP (the session's champion server, shared with test_serving.py), the prediction and request
logs it writes, and `mlops-nb feedback FILE` in a subprocess.

What is checked: outcomes by request id and by key, many at once, duplicates and unknown ids kept; every
malformed body a 4xx naming the problem, nothing written; an outcome is on disk when its answer arrives;
a disk error is a 503, not an acknowledged loss; the prediction log carries key and latency; the request
log has a line a request, refusals included; a file imports once, and bad files are clear errors."""
from __future__ import annotations

import gzip
from collections import Counter
import json
import os
import re
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("served_project")
from served_project import GOOD, MAX_ROWS, client, mlops  # noqa: E402

import conftest  # noqa: E402
from mlops_nb.data import logs  # noqa: E402

pytest_plugins = ["served_project"]
pytestmark = pytest.mark.slow

# the contract the monitor reads: every line has every field, in this order
FEEDBACK_FIELDS = list(logs.FEEDBACK_FIELDS)
PREDICTION_FIELDS = list(logs.PREDICTION_FIELDS)
REQUEST_FIELDS = list(logs.REQUEST_FIELDS)
LOG_WAIT = 20  # seconds: the recorder writes every 2 s


def jsonl(folder: Path, pattern: str = "*.jsonl") -> list[dict]:
    if not folder.is_dir():
        return []
    return [json.loads(line) for f in sorted(folder.glob(pattern)) for line in f.read_text().splitlines()]


def wait_for(fn, timeout: float = LOG_WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


@pytest.fixture(scope="module")
def http(champion_server):
    with client(champion_server) as c:
        yield c


@pytest.fixture(scope="module")
def out(champion_server) -> Path:
    return champion_server.project / "data" / "serving"


def http_feedback(out: Path) -> list[dict]:
    return [line for line in jsonl(out / "feedback") if line["source"] == "http"]


def predict(http, n: int = 1, key: str | None = None, route: str = "/predict") -> dict:
    if route == "/predict":
        body = {"flights": [GOOD] * n}
    else:
        body = {"columns": {k: [v] * n for k, v in GOOD.items()}}
    if key is not None:
        body["key"] = key
    r = http.post(route, json=body)
    assert r.status_code == 200, r.text
    return r.json()


# --------------------------------------------------------------------------------------------------
# POST /feedback


def test_feedback_by_request_id_and_by_key_is_on_disk_when_answered(http, out):
    answer = predict(http, 2, key="fb-customer-1")
    body = {"outcomes": [{"request_id": answer["request_id"], "late": True, "arr_delay": 23.0},
                         {"key": "fb-customer-1", "late": False}]}
    r = http.post("/feedback", json=body)
    # read right after the answer: written (and fsynced) before it
    lines = http_feedback(out)
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["accepted"] == 2 and set(got) == {"accepted", "received_at"}
    mine = [line for line in lines if line["received_at"] == got["received_at"]]
    assert [list(line) for line in mine] == [FEEDBACK_FIELDS] * 2
    by_id = [line for line in mine if line["request_id"] == answer["request_id"]]
    by_key = [line for line in mine if line["key"] == "fb-customer-1"]
    assert by_id == [{"request_id": answer["request_id"], "key": None, "late": True, "arr_delay": 23.0,
                      "received_at": got["received_at"], "source": "http"}]
    assert by_key == [{"request_id": None, "key": "fb-customer-1", "late": False, "arr_delay": None,
                       "received_at": got["received_at"], "source": "http"}]
    files = sorted((out / "feedback").glob("*.jsonl"))
    assert all(re.fullmatch(r"\d{8}-[^/]+-\d+\.jsonl", f.name) for f in files), files


def test_many_outcomes_duplicates_and_unknown_ids_are_kept(http, out):
    answer = predict(http, 1)
    unknown = os.urandom(8).hex()
    outcomes = ([{"request_id": answer["request_id"], "late": True}] * 10          # duplicates
                + [{"request_id": unknown, "late": False, "arr_delay": -4.5}] * 5  # a request never seen
                + [{"key": f"many-{i}", "late": i % 2 == 0, "arr_delay": float(i)} for i in range(MAX_ROWS - 15)])
    assert len(outcomes) == MAX_ROWS
    r = http.post("/feedback", json={"outcomes": outcomes})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == MAX_ROWS
    mine = [line for line in http_feedback(out) if line["received_at"] == r.json()["received_at"]]
    assert len(mine) == MAX_ROWS
    assert sum(line["request_id"] == answer["request_id"] for line in mine) == 10
    assert sum(line["request_id"] == unknown for line in mine) == 5
    assert [line["key"] for line in mine[15:]] == [f"many-{i}" for i in range(MAX_ROWS - 15)]
    # the same again: accepted again, kept twice
    again = http.post("/feedback", json={"outcomes": outcomes[:3]})
    assert again.status_code == 200 and again.json()["accepted"] == 3


_OK = {"request_id": "0123456789abcdef", "late": True}
BAD_FEEDBACK = [
    # id, body (JSON-able, or bytes), content type, words the error must contain
    ("unknown-field", {"outcomes": [{**_OK, "flight": "UA1"}]}, None, ["flight", "Extra inputs"]),
    ("unknown-top-level", {"outcomes": [_OK], "labels": []}, None, ["labels", "Extra inputs"]),
    ("late-missing", {"outcomes": [{"key": "a"}]}, None, ["late", "Field required"]),
    ("late-as-text", {"outcomes": [{"key": "a", "late": "yes"}]}, None, ["late", "valid boolean"]),
    ("late-as-number", {"outcomes": [{"key": "a", "late": 1}]}, None, ["late", "valid boolean"]),
    ("delay-as-text", {"outcomes": [{"key": "a", "late": True, "arr_delay": "soon"}]}, None,
     ["arr_delay", "valid number"]),
    ("delay-nan", b'{"outcomes": [{"key": "a", "late": true, "arr_delay": NaN}]}', None, ["arr_delay", "finite"]),
    ("both-ids", {"outcomes": [{**_OK, "key": "a"}]}, None, ["exactly one of request_id or key", "both"]),
    ("neither-id", {"outcomes": [{"late": False}]}, None, ["exactly one of request_id or key", "neither"]),
    ("bad-request-id", {"outcomes": [{"request_id": "not-an-id", "late": True}]}, None, ["request_id", "pattern"]),
    ("empty-key", {"outcomes": [{"key": "", "late": True}]}, None, ["key", "at least 1 character"]),
    ("empty-list", {"outcomes": []}, None, ["outcomes", "at least 1 item"]),
    ("not-a-list", {"outcomes": _OK}, None, ["outcomes", "valid array"]),
    ("missing-list", {}, None, ["outcomes", "Field required"]),
    ("too-many", {"outcomes": [_OK] * (MAX_ROWS + 1)}, None, ["outcomes", f"at most {MAX_ROWS} items"]),
    ("not-json", b"request_id=0123456789abcdef&late=true", None, ["Invalid JSON"]),
    ("truncated-json", b'{"outcomes": [{"key": "a", "late": tr', None, ["Invalid JSON"]),
    ("multipart-without-boundary", b"--x\r\n", "multipart/form-data", ["application/json"]),
    ("multipart", b'--b\r\nContent-Disposition: form-data; name="outcomes"\r\n\r\n[]\r\n--b--\r\n',
     "multipart/form-data; boundary=b", ["application/json"]),
    ("urlencoded", b"outcomes=1", "application/x-www-form-urlencoded", ["application/json"]),
]


@pytest.mark.parametrize("body, content_type, words", [b[1:] for b in BAD_FEEDBACK], ids=[b[0] for b in BAD_FEEDBACK])
def test_bad_feedback_is_a_4xx_and_writes_nothing(http, out, body, content_type, words):
    before = len(http_feedback(out))
    if isinstance(body, bytes):
        r = http.post("/feedback", content=body, headers={"content-type": content_type or "application/json"})
    else:
        r = http.post("/feedback", json=body)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:2000]}"
    error = r.json()
    assert isinstance(error, dict) and isinstance(error.get("error"), str) and error["error"], r.text
    for word in words:
        assert word in r.text, f"{word!r} not in the error: {r.text[:2000]}"
    assert len(http_feedback(out)) == before
    ok = http.post("/feedback", json={"outcomes": [_OK]})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("route", ["/predict", "/predict_batch"])
def test_form_bodies_are_refused_unread(http, route):
    """BentoML parses form bodies itself, and answers a malformed one with a 500: the API reads JSON."""
    for body, kind in ((b"--x\r\n", "multipart/form-data"), (b"flights=1", "application/x-www-form-urlencoded")):
        r = http.post(route, content=body, headers={"content-type": kind})
        assert r.status_code == 415, f"{r.status_code}: {r.text[:500]}"
        assert "application/json" in r.json()["error"]


def test_a_disk_error_is_a_503_and_no_acknowledged_loss(http, out):
    r = http.post("/feedback", json={"outcomes": [_OK]})
    assert r.status_code == 200, r.text
    (path,) = [p for p in (out / "feedback").glob("*.jsonl") if re.fullmatch(r"\d{8}-[^/]+-\d+\.jsonl", p.name)
               and p.name.startswith(time.strftime("%Y%m%d", time.gmtime()))]
    aside = path.with_name("aside.tmp")
    path.rename(aside)
    path.mkdir()  # the worker's file of the day cannot be opened
    try:
        r = http.post("/feedback", json={"outcomes": [_OK, {"key": "lost?", "late": False}]})
        assert r.status_code == 503, r.text
        assert "not recorded" in r.json()["error"] and "send them again" in r.json()["error"]
    finally:
        path.rmdir()
        aside.rename(path)
    r = http.post("/feedback", json={"outcomes": [{"key": "after-the-error", "late": False}]})
    assert r.status_code == 200, r.text
    assert [line["key"] for line in http_feedback(out)][-1] == "after-the-error"
    assert "lost?" not in [line["key"] for line in http_feedback(out)]


def test_feedback_is_in_the_openapi_schema(http):
    spec = http.get("/docs.json").json()
    assert "/feedback" in spec["paths"]
    assert "outcomes" in json.dumps(spec["paths"]["/feedback"])


# --------------------------------------------------------------------------------------------------
# the prediction log and the request log


def test_prediction_log_lines_carry_key_and_latency(http, out):
    with_key = predict(http, 3, key="log-key-7")
    without = predict(http, 2, route="/predict_batch")
    ids = {with_key["request_id"], without["request_id"]}

    def mine():
        lines = [line for line in jsonl(out / "predictions") if line["request_id"] in ids]
        return lines if len(lines) == 5 else None

    lines = wait_for(mine)
    assert lines, "the prediction log lines did not appear"
    assert all(list(line) == PREDICTION_FIELDS for line in lines), lines[0]
    keyed = sorted((line for line in lines if line["request_id"] == with_key["request_id"]), key=lambda l: l["row"])
    assert [line["key"] for line in keyed] == ["log-key-7"] * 3 and [line["row"] for line in keyed] == [0, 1, 2]
    assert [line["key"] for line in lines if line["request_id"] == without["request_id"]] == [None, None]
    for line in lines:
        assert isinstance(line["latency_ms"], float) and 0 < line["latency_ms"] < 10_000, line
        assert line["shadow"] is None
    # one latency a request, on each of its rows
    assert len({line["latency_ms"] for line in keyed}) == 1


def test_request_log_has_a_line_a_request_refusals_included(http, out):
    started = time.time()
    time.sleep(0.01)
    one = predict(http, 1)
    batch = predict(http, 4, route="/predict_batch")
    assert http.post("/feedback", json={"outcomes": [_OK]}).status_code == 200
    assert http.post("/predict", json={"flights": [{**GOOD, "month": 13}]}).status_code == 400   # by BentoML
    assert http.post("/predict_batch", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert http.post("/feedback", json={"outcomes": []}).status_code == 400
    big = json.dumps({"flights": [GOOD], "key": "k" * (MAX_ROWS * 1024 + 70_000)}).encode()
    assert http.post("/predict", content=big, headers={"content-type": "application/json"}).status_code == 413
    assert http.post("/model").status_code == 200  # not logged
    expected = [("/predict", 200, one["request_id"], 1), ("/predict_batch", 200, batch["request_id"], 4),
                ("/feedback", 200, None, 0), ("/predict", 400, None, 0), ("/predict_batch", 400, None, 0),
                ("/feedback", 400, None, 0), ("/predict", 413, None, 0)]

    def mine():
        lines = [line for line in jsonl(out / "requests") if line["at"] >= _iso(started)]
        return lines if len(lines) >= len(expected) else None

    lines = wait_for(mine)
    assert lines, f"expected {len(expected)} lines in the request log since {_iso(started)}"
    assert all(list(line) == REQUEST_FIELDS for line in lines), lines[0]
    got = Counter((line["route"], line["status"], line["request_id"], line["rows"]) for line in lines)
    assert got == Counter(expected), lines
    for line in lines:
        assert isinstance(line["latency_ms"], float) and 0 < line["latency_ms"] < 10_000, line
    assert "/model" not in {line["route"] for line in lines}


def _iso(at: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------------------------------
# mlops-nb feedback FILE


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A sample project (settings only: the command needs no run)."""
    return conftest.make_project(tmp_path_factory.mktemp("feedback-cli") / "project")


def feedback_files(project: Path) -> dict[str, list[dict]]:
    folder = project / "data" / "serving" / "feedback"
    return {f.name: jsonl(folder, f.name) for f in sorted(folder.glob("*"))} if folder.is_dir() else {}


CSV = ("request_id,key,late,arr_delay\n"
       "0123456789abcdef,,true,23\n"
       ",customer-1,no,\n"
       "fedcba9876543210,,1,-3.5\n"
       ",customer-2,YES,40\n"
       "0123456789abcdef,,False,\n")


def test_csv_imports_once(project):
    path = project / "outcomes.csv"
    path.write_text(CSV)
    first = mlops(project, "feedback", "outcomes.csv")
    assert first.returncode == 0, str(first)
    assert "added 5 outcome(s)" in first.stdout, first.stdout
    (name, lines), = feedback_files(project).items()
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert re.fullmatch(rf"\d{{8}}-file-{sha[:12]}\.jsonl", name), name
    assert [list(line) for line in lines] == [FEEDBACK_FIELDS] * 5
    assert [(l["request_id"], l["key"], l["late"], l["arr_delay"]) for l in lines] == [
        ("0123456789abcdef", None, True, 23.0), (None, "customer-1", False, None),
        ("fedcba9876543210", None, True, -3.5), (None, "customer-2", True, 40.0),
        ("0123456789abcdef", None, False, None)]
    assert {l["source"] for l in lines} == {"file:outcomes.csv"} and len({l["received_at"] for l in lines}) == 1

    again = mlops(project, "feedback", "outcomes.csv", "--json")
    assert again.returncode == 0, str(again)
    report = json.loads(again.stdout)
    assert report["added"] == 0 and report["already_imported"] is True and report["sha256"] == sha
    plain = mlops(project, "feedback", str(path))
    assert plain.returncode == 0 and "nothing added" in plain.stdout, str(plain)
    assert feedback_files(project) == {name: lines}


def test_parquet_and_gzipped_csv(project):
    import pandas as pd

    frame = pd.DataFrame({"key": ["p-1", "p-2", "p-3"], "late": [True, False, True]})
    frame.to_parquet(project / "labels.parquet")
    r = mlops(project, "feedback", "labels.parquet", "--json")
    assert r.returncode == 0, str(r)
    report = json.loads(r.stdout)
    assert report["added"] == 3 and report["already_imported"] is False
    lines = jsonl(Path(report["log"]).parent, Path(report["log"]).name)
    assert [(l["key"], l["late"], l["arr_delay"], l["source"]) for l in lines] == [
        ("p-1", True, None, "file:labels.parquet"), ("p-2", False, None, "file:labels.parquet"),
        ("p-3", True, None, "file:labels.parquet")]

    with gzip.open(project / "labels.csv.gz", "wt") as f:
        f.write("key,late,arr_delay\ng-1,0,3\ng-2,1,99.5\n")
    r = mlops(project, "feedback", "labels.csv.gz")
    assert r.returncode == 0 and "added 2 outcome(s)" in r.stdout, str(r)

    (project / "excel.csv").write_text("\ufeffkey,late\r\nb-1,No\r\n", encoding="utf-8")  # a spreadsheet's
    r = mlops(project, "feedback", "excel.csv", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["added"] == 1, str(r)


BAD_FILES = [
    # id, file name, content, words the error must contain
    ("no-late-column", "a.csv", "request_id,Late\n0123456789abcdef,true\n",
     ["late", "missing", "'request_id', 'Late'", "Did you mean 'late'?"]),
    ("no-id-column", "b.csv", "requestid,late\n0123456789abcdef,true\n",
     ["request_id or key", "missing", "Did you mean 'request_id'?"]),
    ("bad-late", "c.csv", "key,late\nk1,true\nk2,maybe\n", ["row 2 (line 3)", "column late", "'maybe'", "true/false"]),
    ("both-ids", "d.csv", "request_id,key,late\n0123456789abcdef,k,true\n", ["row 1", "exactly one", "both"]),
    ("neither-id", "e.csv", "request_id,key,late\n,,true\n", ["row 1", "exactly one", "neither"]),
    ("bad-delay", "f.csv", "key,late,arr_delay\nk,true,late\nk,false,inf\n",
     ["row 1 (line 2), column arr_delay", "'late'", "row 2", "'inf'", "finite number"]),
    ("bad-request-id", "g.csv", "request_id,late\nabc,true\n", ["column request_id", "16 hex digits", "'abc'"]),
    ("no-rows", "h.csv", "key,late\n", ["no rows"]),
    ("not-csv-or-parquet", "i.xlsx", "key,late\n", [".csv", ".parquet", "i.xlsx"]),
    ("missing-file", None, None, ["No outcome file", "nope.csv"]),
    ("broken-parquet", "j.parquet", "not parquet", ["Could not read j.parquet as PARQUET"]),
]


@pytest.mark.parametrize("name, content, words", [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_clear_errors(project, tmp_path, name, content, words):
    before = feedback_files(project)
    if name is None:
        target = tmp_path / "nope.csv"
    else:
        target = tmp_path / name
        target.write_text(content)
    r = mlops(project, "feedback", str(target))
    assert r.returncode != 0, str(r)
    assert "Traceback" not in r.stderr, str(r)
    for word in words:
        assert word in r.stderr, f"{word!r} not in:\n{r.stderr}"
    assert feedback_files(project) == before
