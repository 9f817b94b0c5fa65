"""The service's traffic timeout (``serving.limits.Deadline``, in place of BentoML 1.4.40's
``TimeoutMiddleware``): a request whose answer has not started in time is a 504 JSON error, an answer that
has started is left alone, and no request leaves its timer in the event loop (BentoML's left each one
there for the whole timeout: memory and garbage-collection time grew with the request rate)."""
from __future__ import annotations

import asyncio
import json

from mlops_nb.serving.limits import Deadline


def call(app, timeout: float) -> tuple[list[dict], asyncio.AbstractEventLoop]:
    """Run one HTTP request through Deadline(app) on a fresh loop: the messages sent, and the loop."""
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main():
        await Deadline(app, timeout)({"type": "http", "method": "POST", "path": "/predict"}, receive, send)
        return asyncio.get_running_loop()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        live = [h for h in loop._scheduled if not h.cancelled()]
    finally:
        loop.close()
    return sent, live


async def quick(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def never_answers(scope, receive, send):
    await asyncio.sleep(30)


async def slow_body(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"late but started"})


def test_an_answer_in_time_passes_and_leaves_no_timer():
    for _ in range(3):
        sent, live = call(quick, 60)
        assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"ok"
        assert live == []  # BentoML's middleware left a 60 s timer here


def test_no_answer_in_time_is_a_504_json_error():
    sent, live = call(never_answers, 0.1)
    assert sent[0]["status"] == 504
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.1 seconds"}
    assert live == []


def test_an_answer_that_started_is_not_cut():
    sent, _ = call(slow_body, 0.1)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"late but started"
