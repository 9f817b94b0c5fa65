"""An ASGI middleware guarding the API from malformed requests, so that every one of them is a 4xx with a
JSON error object (``{"error": "..."}``) naming the problem, never a 5xx nor a plain-text answer.

What it refuses before anything parses the body, from cheap byte checks of the body it buffers anyway:
bodies over a size (413); a content type other than JSON (415: BentoML would parse a form, and answers a
malformed one, a multipart body without its boundary say, with a 500); invalid UTF-8, a byte order mark,
JSON nested deeper than ``MAX_DEPTH`` and integers too long for the JSON parser (400, naming the field).
A body that does not arrive within ``BODY_SECONDS`` is a 408 (not the traffic timeout's 504), a client that
leaves half-way a 400 (not BentoML's 500 and traceback). What the app refuses in plain text (a wrong method,
405; an unknown route, 404) is rewritten as a JSON error, its status and ``Allow`` header kept. An empty body
is left to BentoML, which reads it as ``{}`` (POST /model reads nothing; the other routes name the fields
missing). Valid bodies pass through unchanged: the JSON is parsed once, by the app.
"""
from __future__ import annotations

import asyncio
import json
import re

FORMS = {b"multipart/form-data", b"application/x-www-form-urlencoded"}  # BentoML parses these as forms
JSON = b"application/json"
UTF8 = {b"utf-8", b"utf8"}
BOM = b"\xef\xbb\xbf"
MAX_DEPTH = 64  # a request is at most 3 levels deep; pydantic's parser gives up at 200, naming no field
MAX_DIGITS = 4300  # pydantic's parser refuses longer integers ("number out of range"), naming no field
SHOWN = 60  # characters of a client's header value quoted in an error
BODY_SECONDS = 10  # a body slower than this is refused (408); under the service's traffic timeout (a 504)
USUAL_JSON = {b"application/json", b"application/json; charset=utf-8", b"application/json;charset=utf-8",
              b"application/json; charset=UTF-8"}  # accepted without parsing them
SLOW_BODY = "the request body is late"  # the message of the cancellation by that deadline
LATE_ANSWER = "the answer is late"  # the message of the traffic timeout's cancellation (Deadline)

_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
# whatever is not a bracket outside a string: strings (an unterminated one runs to the end) and other bytes
_NOT_BRACKETS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[^"\[\]{}]+', re.S)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_DIGITS_RUN = b"0" * (MAX_DIGITS + 1)
# a string, and whether it is a key; or an over-long integer (strings first: digits in them are no number)
_KEYS_AND_LONG_INTEGERS = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*(:)?|(?<![\d.eE+\-])-?\d{%d,}' % (MAX_DIGITS + 1),
                                     re.S)


class RequestGuard:
    """Bodies of POST requests are read (up to ``max_bytes``: a Content-Length over it is refused unread, a
    chunked body is refused once it passes it; within ``BODY_SECONDS``), checked, then handed on; answers of
    every request pass through a check of their status that rewrites plain-text 4xx as JSON errors."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes
        self.late = LateTasks()  # the requests reading their body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] != "POST":
            return await self.app(scope, receive, _json_errors(scope, send))
        length = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:  # the server refuses it first; a chunked body is still counted
                    length = None
            elif name == b"content-type" and value not in USUAL_JSON:
                problem = _content_type_problem(value)
                if problem:
                    return await _refuse(send, 415, problem)
        if length is not None and length > self.max_bytes:
            return await _refuse(send, 413, self._too_big())
        task = asyncio.current_task()
        self.late.watch(task, BODY_SECONDS, SLOW_BODY)
        chunks, size, message = [], 0, {"type": "http.request", "more_body": True}
        try:
            while message["type"] == "http.request" and message.get("more_body", False):
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                chunks.append(chunk)
                if size > self.max_bytes:
                    break
        except asyncio.CancelledError as e:
            if e.args != (SLOW_BODY,):
                raise
            task.uncancel()
            promised = f"of the {length:,} bytes its Content-Length promised " if length is not None else ""
            return await _refuse(send, 408, f"the body must arrive within {BODY_SECONDS} s; got {size:,} bytes "
                                            f"{promised}instead: send the whole body at once, with a "
                                            "Content-Length that is its size in bytes")
        finally:
            self.late.forget(task, SLOW_BODY)
        if message["type"] != "http.request":  # the client left: no one reads the answer but the request log
            return await _refuse(send, 400, f"the body must be complete; got {size:,} bytes, then the client "
                                            "closed the connection: send the whole body")
        if size > self.max_bytes:
            return await _refuse(send, 413, self._too_big())
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        problem = body_problem(body)
        if problem:
            return await _refuse(send, 400, problem)
        request = {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, _replay(request, receive), _json_errors(scope, send))

    def _too_big(self) -> str:
        return (f"request body over {self.max_bytes:,} bytes; send fewer rows a request (serving.max_rows) or "
                "split the batch")


class Deadline:
    """BentoML's traffic timeout (``traffic.timeout``: a request whose answer has not started after that many
    seconds is cancelled and answered 504), without the cost of BentoML 1.4.40's ``TimeoutMiddleware``: that
    one schedules a timer a request that it never cancels, with a future and a task of its own, so at 5,000
    requests a second some 300,000 timers and futures wait out their 60 s in the event loop's heap (the
    worker's memory grew by about 0.75 KiB a request for a minute, every garbage collection walked them,
    and /predict_batch's rows/s fell 12% after a burst of one-row requests). Here the request runs in the
    server's task, watched by ``LateTasks`` (as the guard watches bodies) until its answer starts; the 504
    comes within a second of the timeout. ``service.py`` puts it in BentoML's place
    (``bentoml._internal.server.http.traffic.TimeoutMiddleware``, looked up when the app is built)."""

    def __init__(self, app, timeout: float):
        self.app = app
        self.timeout = timeout
        self.late = LateTasks()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        task = asyncio.current_task()
        self.late.watch(task, self.timeout, LATE_ANSWER)
        started = False

        async def timed_send(message):
            nonlocal started
            if not started:
                started = True
                self.late.forget(task, LATE_ANSWER)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except asyncio.CancelledError as e:
            if e.args != (LATE_ANSWER,) or started:
                raise
            task.uncancel()
            await send_json(send, 504, {"error": f"Not able to process the request in {self.timeout} seconds"})
        finally:
            self.late.forget(task, LATE_ANSWER)


class LateTasks:
    """Tasks to cancel, each with its message, once their time has passed: one timer for all of them, every
    second while there are some (cheaper a request than a timer of its own, and nothing is left behind
    when a request ends). Used on the event loop only."""

    def __init__(self):
        self.due = {}  # (task, message) -> when it is late (loop time)
        self.timer = None  # the next call of _cancel_late, while some task is due

    def watch(self, task, seconds: float, message: str) -> None:
        loop = asyncio.get_running_loop()
        self.due[task, message] = loop.time() + seconds
        if self.timer is None:
            self.timer = loop.call_later(1, self._cancel_late, loop)

    def forget(self, task, message: str) -> None:
        self.due.pop((task, message), None)

    def _cancel_late(self, loop) -> None:
        now = loop.time()
        for (task, message), late in list(self.due.items()):
            if late <= now:
                del self.due[task, message]
                task.cancel(message)
        self.timer = loop.call_later(1, self._cancel_late, loop) if self.due else None


def _content_type_problem(value: bytes) -> str | None:
    """Why a Content-Type is not JSON in UTF-8, or None. No Content-Type at all is read as JSON (BentoML's
    own reading): only a stated one is checked."""
    media, _, params = value.partition(b";")
    media = media.strip().lower()
    shown = value.decode("latin-1")[:SHOWN]  # a header is bytes: latin-1 shows every one
    if media != JSON:
        kind = "a form" if media in FORMS else "not JSON"
        return (f"content-type must be application/json; got {shown!r} instead, {kind}: send the body as "
                "JSON, with content-type application/json")
    for param in params.split(b";"):
        name, _, charset = param.partition(b"=")
        if name.strip().lower() == b"charset" and charset.strip().strip(b'"').lower() not in UTF8:
            return (f"the charset of a JSON body must be utf-8; got content-type {shown!r} instead: encode "
                    "the body as UTF-8, with content-type application/json")
    return None


def body_problem(body: bytes) -> str | None:
    """Why a body cannot be the JSON the API reads, from byte checks only, or None. What the checks cost
    grows only for bodies that need them: a one-row request is ASCII, has a few brackets and is short."""
    if not body.isascii():
        if body.startswith(BOM):
            return "the body must be JSON without a byte order mark; got one (EF BB BF): send the body without it"
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            return (f"the body must be UTF-8; got byte 0x{body[e.start]:02x} at offset {e.start} instead, which "
                    "is not UTF-8 there: encode the JSON as UTF-8 (text in strings included)")
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH and too_deep(body):
        return (f"the JSON must be nested at most {MAX_DEPTH} levels deep; got deeper instead: a request is "
                "an object of lists of objects (see /docs.json)")
    if len(body) > MAX_DIGITS and _DIGITS_RUN in body.translate(_DIGITS_AS_ZERO):
        found = long_integer(body)
        if found:
            key, digits = found
            where = f"the value of {key!r}" if key is not None else "a value"
            return (f"{where} must be a number of at most {MAX_DIGITS:,} digits; got an integer of "
                    f"{digits:,} digits instead: no field takes a value that large")
    return None


def too_deep(body: bytes) -> bool:
    """Whether the JSON nests deeper than ``MAX_DEPTH``: first counting every bracket (fast, C), then, if
    that says so, only those outside strings (slow, a regex). Closing brackets in strings can hide depth
    from the first count: the JSON parser's own limit (200) still refuses such a body, with a 400."""
    return (nesting(body.translate(None, _NOT_A_BRACKET)) > MAX_DEPTH
            and (b'"' not in body or nesting(_NOT_BRACKETS.sub(b"", body)) > MAX_DEPTH))


def nesting(brackets: bytes) -> int:
    """How deep a sequence of brackets nests; counts no further than ``MAX_DEPTH + 1``."""
    depth = deepest = 0
    for byte in brackets:
        if byte == 91 or byte == 123:  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    break
        else:
            depth -= 1
    return deepest


def long_integer(body: bytes) -> tuple[str | None, int] | None:
    """(the key it is the value of, its number of digits) of the first integer too long for the JSON
    parser, outside strings; None if there is none."""
    key = None
    for m in _KEYS_AND_LONG_INTEGERS.finditer(body):
        if m.group(1) is not None:
            if m.group(2):
                key = m.group(1).decode("utf-8", "replace")
        else:
            return key, len(m.group(0).lstrip(b"-"))
    return None


def _json_errors(scope, send):
    """``send``, but a plain-text 4xx answer of the app (Starlette's 404 and 405) is sent as a JSON error."""
    rewritten = False

    async def checked_send(message):
        nonlocal rewritten
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            headers = message.get("headers", [])
            if not any(n.lower() == b"content-type" and v.startswith(JSON) for n, v in headers):
                rewritten = True
                allow = next((v.decode("latin-1") for n, v in headers if n.lower() == b"allow"), None)
                if allow:  # Starlette lists a route's methods from a set: in an order that changes a process
                    allow = ", ".join(sorted(m.strip() for m in allow.split(",")))
                return await _refuse(send, message["status"], _app_refusal(scope, message["status"], allow),
                                     [(b"allow", allow.encode("latin-1"))] if allow else [])
        if rewritten:  # the plain-text body of the rewritten answer
            return None
        return await send(message)

    return checked_send


def _app_refusal(scope, status: int, allow: str | None) -> str:
    method, path = scope["method"], scope["path"]
    if status == 405:
        return (f"{path} answers {allow or 'other methods'}; got {method} instead: send the request with "
                f"method {allow or 'the one in /docs.json'}")
    if status == 404:
        return f"there is no route {path}; got {method} {path}: the API's routes are listed in /docs.json"
    return f"the request {method} {path} was refused (HTTP {status}): see /docs.json for what the API reads"


async def send_json(send, status: int, answer, headers=(), body: bool = True):
    """A whole JSON answer through an ASGI ``send`` (``body`` False for HEAD: its length, no bytes)."""
    data = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *headers]})
    await send({"type": "http.response.body", "body": data if body else b""})


async def _refuse(send, status: int, message: str, headers=()):
    await send_json(send, status, {"error": message}, headers)


def _replay(message, then):
    """``receive`` for the app: ``message`` first, then the server's (a disconnect)."""
    first = message

    async def receive():
        nonlocal first
        if first is None:
            return await then()
        message, first = first, None
        return message

    return receive
