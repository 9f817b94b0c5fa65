"""The prediction routes answered in front of BentoML's app: the same input model, the same method of the
service, the same answer bytes, for a fraction of the CPU.

Of a one-row ``POST /predict``'s server CPU, BentoML's endpoint (a Starlette ``Request``, the serde lookup,
the IO descriptor, the service context, ``_local_call``'s signature inspection on every call, a response
object with background tasks) took about a third, and the middlewares BentoML wraps around every request
(prometheus_client's traffic metrics, four labelled writes to multiprocess files a request; OpenTelemetry's
URL exclusion check, a regex over the rebuilt URL; Starlette's error middleware) as much again (py-spy,
bench/serving.py). So ``Front`` wraps BentoML's whole app: ``POST /predict`` and ``POST /predict_batch``
of a started service go to the prediction chain that ``service.py`` builds of our own parts (the traffic
timeout ``limits.Deadline``, the request log, the request guard, then ``Direct``); everything else, those
routes' other methods included, goes to BentoML's app as before. ``Direct`` validates the body with the
route's own BentoML input model (``Service.apis[name].input_spec``: the model of the OpenAPI schema and of a
Python client, so a refusal is the same 400 with the same ``detail``), awaits the service's method with it,
and writes the answer as BentoML's JSON serde does (``model_dump_json``, its ``Server`` header). What the
chain does not do for these routes: BentoML's traffic metrics (``metrics.answered`` counts them instead,
by status), tracing (excluded for the API routes anyway) and its access log (``serving.access_log`` on
sends every request through BentoML). In process (``FlightDelay().predict(...)``) nothing changes.
"""
from __future__ import annotations

import logging

from pydantic import ValidationError

from .limits import send_json

logger = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML logs its refusals
UNEXPECTED = "An unexpected error has occurred, please check the server log."  # BentoML's 500 text


class Front:
    """``app``: BentoML's app; ``fast``: the ASGI app answering ``POST`` to ``routes`` while
    ``source.instance`` is set (the service has started and not stopped)."""

    def __init__(self, app, fast, routes, source):
        self.app = app
        self.fast = fast
        self.routes = frozenset(routes)
        self.source = source

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.routes
                and self.source.instance is not None):
            return await self.fast(scope, receive, send)
        return await self.app(scope, receive, send)


class Direct:
    """The ASGI endpoint of the prediction routes. ``routes``: path -> the name of the service's
    ``@bentoml.api`` method answering it; ``source``: anything with ``.instance`` (the service object, None
    once it has stopped: then a 503)."""

    def __init__(self, service, routes: dict[str, str], source):
        self.source = source
        self.routes = {path: (service.apis[name].input_spec, service.apis[name].func)
                       for path, name in routes.items()}
        self.server = [(b"server", f"BentoML Service/{service.name}".encode())]  # BentoML's answers carry it

    async def __call__(self, scope, receive, send):
        model, func = self.routes[scope["path"]]
        body = await _body(receive)
        instance = self.source.instance
        if instance is None:
            return await send_json(send, 503, {"error": "the service is stopping: send the request again (to "
                                                        "another replica, or once it has restarted)"}, self.server)
        try:
            request = model.model_validate_json(body or b"{}")  # an empty body is {}, as BentoML reads it
        except ValidationError as exc:
            logger.info("Exception on %s [POST]: refused, %d validation error(s)", scope["path"], exc.error_count())
            return await send_json(send, 400, {"error": f"{exc.error_count()} validation error for {exc.title}",
                                               "detail": exc.errors(include_context=False, include_input=False)},
                                   self.server)
        try:
            answer = await func(instance, request)
        except Exception:
            logger.exception("Exception on %s [POST]", scope["path"])
            return await send_json(send, 500, {"error": UNEXPECTED}, self.server)
        data = answer.model_dump_json().encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), *self.server,
                                (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})


async def _body(receive) -> bytes:
    """The whole request body (RequestGuard hands it on as one message)."""
    message = await receive()
    body = message.get("body", b"")
    while message.get("more_body", False):
        message = await receive()
        body += message.get("body", b"")
    return body
