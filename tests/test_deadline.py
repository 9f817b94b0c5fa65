"""The service's traffic timeout (``serving.limits.Deadline``, in place of BentoML 1.4.40's
``TimeoutMiddleware``): a request whose answer has not started in time is a 504 JSON error, an answer that
has started is left alone, and no request leaves its timer in the event loop (BentoML's left each one
there for the whole timeout: memory and garbage-collection time grew with the request rate)."""
from __future__ import annotations

import asyncio
import json

from mlops_nb.serving.limits import Deadline


def call(app, timeout: float, requests: int = 1) -> tuple[list[dict], Deadline, list]:
    """Run HTTP requests one after another through one Deadline(app) on a fresh loop: the messages sent,
    the middleware, and the loop's timers still live once they are answered."""
    sent = []
    deadline = Deadline(app, timeout)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def main():
        for _ in range(requests):
            await deadline({"type": "http", "method": "POST", "path": "/predict"}, receive, send)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        live = [h for h in loop._scheduled if not h.cancelled()]
    finally:
        loop.close()
    return sent, deadline, live


async def quick(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def never_answers(scope, receive, send):
    await asyncio.sleep(30)


async def slow_body(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await asyncio.sleep(1.5)  # past the timeout and a check of the late tasks
    await send({"type": "http.response.body", "body": b"late but started"})


def test_answers_in_time_pass_and_leave_nothing_behind():
    sent, deadline, live = call(quick, 60, requests=50)
    assert [m.get("status") for m in sent] == [200, None] * 50 and sent[1]["body"] == b"ok"
    assert deadline.late.due == {}
    assert len(live) <= 1  # the one check of late tasks; BentoML's middleware left 50 timers of 60 s here


def test_no_answer_in_time_is_a_504_json_error():
    sent, deadline, _ = call(never_answers, 0.1)
    assert sent[0]["status"] == 504
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "Not able to process the request in 0.1 seconds"}
    assert deadline.late.due == {}


def test_an_answer_that_started_is_not_cut():
    sent, _, _ = call(slow_body, 0.1)
    assert [m.get("status") for m in sent] == [200, None] and sent[1]["body"] == b"late but started"
