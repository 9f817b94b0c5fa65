"""An ASGI middleware writing the request log: a line a request to the API's routes, answered or refused.

It is the outermost of our parts (among the service's middlewares, and in the prediction chain that
``direct.Front`` runs in front of BentoML's app), so it sees what nothing else of ours does: bodies
refused by the size limit (413), requests BentoML refuses before the handler (400), errors (5xx). It
measures from the request's arrival (its headers read) to the last byte of the answer handed to the
server, takes the status from the answer's start and the request id from the answer's first bytes
(``{"request_id":"<16 hex>"`` opens every prediction: no parsing), and hands a tuple to the recorder's
queue. It never blocks, and nothing of its own can fail a request.

``GetModel`` answers ``GET /model`` (the REST way to read a resource) beside BentoML's ``POST /model``:
BentoML 1.4 routes every ``@bentoml.api`` as POST only (``_bentoml_impl.server.app``: ``methods=["POST"]``)
and ``bentoml.api`` takes no method, so a GET is answered here, before BentoML's router, from the same
description the POST returns.
"""
from __future__ import annotations

import asyncio
import time

from . import metrics
from .limits import send_json

ANSWER_PREFIX = b'{"request_id":"'
ID_LENGTH = 16


class RequestLog:
    """``sink``: anything with ``.recorder`` (None, or an object with ``.request(at, request_id, route,
    status, latency_ms)``), read at each request: the service sets it once its recorder has started.
    ``counted``: also count each request by route and status in /metrics (``metrics.answered``), for the
    routes answered in front of BentoML, whose traffic metrics do not see them."""

    def __init__(self, app, routes, sink, counted: bool = False):
        self.app = app
        self.routes = frozenset(routes)
        self.sink = sink
        self.counted = counted

    async def __call__(self, scope, receive, send):
        if (scope["type"] != "http" or scope.get("path") not in self.routes
                or (self.sink.recorder is None and not self.counted)):
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        state = {"status": None, "request_id": None, "ended": None}

        async def logged_send(message):
            kind = message["type"]
            if kind == "http.response.start":
                state["status"] = message["status"]
            elif kind == "http.response.body":
                body = message.get("body", b"")
                if state["request_id"] is None and state["status"] == 200 and body.startswith(ANSWER_PREFIX):
                    rid = body[len(ANSWER_PREFIX):len(ANSWER_PREFIX) + ID_LENGTH]
                    state["request_id"] = rid.decode("ascii", "replace")
                await send(message)
                if not message.get("more_body", False):
                    state["ended"] = time.perf_counter()
                return
            await send(message)

        try:
            await self.app(scope, receive, logged_send)
        except asyncio.CancelledError:  # BentoML's timeout cancels the request, then answers 504
            if state["status"] is None:
                state["status"] = 504
            raise
        except BaseException:  # Starlette answers 500 for what escapes
            if state["status"] is None:
                state["status"] = 500
            raise
        finally:
            try:
                seconds = (state["ended"] or time.perf_counter()) - started
                status = state["status"] or 500
                if self.counted:
                    metrics.answered(scope["path"], status, seconds)
                recorder = self.sink.recorder
                if recorder is not None:
                    recorder.request(time.time(), state["request_id"], scope["path"], status, seconds * 1000.0)
            except Exception:  # the log must never fail a request
                pass


class GetModel:
    """``GET <route>`` (and HEAD): 200 and the JSON of ``source.describe()`` (None until the service has
    started: 503); POST passes on to the API; any other method is a 405 that names GET, HEAD and POST (the
    app alone would name POST only)."""

    ALLOW = "GET, HEAD, POST"

    def __init__(self, app, route, source):
        self.app = app
        self.route = route
        self.source = source

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") != self.route or scope["method"] == "POST":
            return await self.app(scope, receive, send)
        headers = []
        describe = self.source.describe
        if scope["method"] not in ("GET", "HEAD"):
            status, answer = 405, {"error": f"{self.route} answers {self.ALLOW}; got {scope['method']} instead: "
                                            "send the request with method GET or POST"}
            headers.append((b"allow", self.ALLOW.encode()))
        elif describe is None:
            status, answer = 503, {"error": f"the service is starting: GET {self.route} answers once its models "
                                            "are loaded; retry in a few seconds (GET /readyz says when)"}
        else:
            status, answer = 200, describe()
        await send_json(send, status, answer, headers, body=scope["method"] != "HEAD")
