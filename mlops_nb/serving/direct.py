"""The prediction routes answered without BentoML's endpoint machinery: the same input model, the same method
of the service, the same answer bytes, for a fraction of the CPU.

Of a one-row ``POST /predict``'s server CPU, BentoML's endpoint (a Starlette ``Request``, the serde lookup,
the IO descriptor, the service context, ``_local_call``'s signature inspection on every call, a response
object with background tasks) took about a third (py-spy, bench/serving.py). ``Direct`` sits innermost of
the service's middlewares, after ``RequestGuard`` has buffered and checked the body: it validates the body
with the route's own BentoML input model (``Service.apis[name].input_spec``: the same model the OpenAPI
schema and a Python client use, so a refusal is the same 400 with the same ``detail``), awaits the service's
method with it, and writes the answer as BentoML's JSON serde does (``model_dump_json``, its ``Server``
header). What BentoML wraps around every request (its traffic metrics, tracing exclusion, timeout) and our
request log and guard still run. In process (``FlightDelay().predict(...)``) nothing changes.
"""
from __future__ import annotations

import logging

from pydantic import ValidationError

from .limits import send_json

logger = logging.getLogger("bentoml._internal.server.http_app")  # where BentoML logs its refusals
UNEXPECTED = "An unexpected error has occurred, please check the server log."  # BentoML's 500 text


class Direct:
    """``routes``: path -> the name of the service's ``@bentoml.api`` method answering it. ``source``: anything
    with ``.instance`` (None until the service has started, then the service object): until then requests
    pass on to BentoML."""

    def __init__(self, app, service, routes: dict[str, str], source):
        self.app = app
        self.source = source
        self.routes = {path: (service.apis[name].input_spec, service.apis[name].func)
                       for path, name in routes.items()}
        self.server = [(b"server", f"BentoML Service/{service.name}".encode())]  # BentoML's answers carry it

    async def __call__(self, scope, receive, send):
        route = self.routes.get(scope.get("path")) if scope["type"] == "http" and scope["method"] == "POST" else None
        instance = self.source.instance
        if route is None or instance is None:
            return await self.app(scope, receive, send)
        model, func = route
        body = await _body(receive)
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
