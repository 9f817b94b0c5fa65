"""An ASGI middleware refusing request bodies over a size, before anything parses them (HTTP 413), and
bodies in a form encoding (HTTP 415): the API reads JSON, and BentoML's form parsing answers a malformed
form (a multipart body without its boundary, say) with a 500."""
from __future__ import annotations

import json

FORMS = {b"multipart/form-data", b"application/x-www-form-urlencoded"}  # BentoML parses these as forms


class BodyLimit:
    """Bodies with a Content-Length over the limit are refused unread; bodies without one (chunked) are
    read up to the limit first, then handed on (the app never sees a refused body). Form bodies
    (multipart, urlencoded) are refused unread."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        length = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = None
            elif name == b"content-type":
                media = value.split(b";")[0].strip().lower()
                if media in FORMS:
                    return await self._refuse(send, 415, f"the body is {media.decode('latin-1')}; the API reads "
                                                         "JSON: send the body as JSON, with content-type "
                                                         "application/json")
        if length is not None:
            if length > self.max_bytes:
                return await self._refuse(send, 413, self._too_big())
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._refuse(send, 413, self._too_big())
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        return await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}],
                                             receive), send)

    def _too_big(self) -> str:
        return (f"request body over {self.max_bytes:,} bytes; send fewer rows a request (serving.max_rows) or "
                "split the batch")

    async def _refuse(self, send, status: int, message: str):
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _replay(messages, then=None):
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
