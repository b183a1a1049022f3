"""Request bodies with a size and a nesting limit, checked as the bytes arrive (pure ASGI).

A declared Content-Length over the limit is refused before anything is read; a body sent
without one (chunked, streamed) is counted chunk by chunk and refused as soon as it passes
the limit. JSON bodies (and bodies without a Content-Type, which FastAPI reads as JSON) are
measured for depth before any parser sees them, so no body can make a parser recurse too far.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nurture.json_depth import JsonDepthGauge


class BodyRefused(HTTPException):
    """Raised while the body is read. FastAPI re-raises an HTTPException met while it parses a
    body (anything else becomes a vague 400), so its handler answers with this status."""


def too_large(max_bytes: int, setting: str = "max_body_bytes") -> BodyRefused:
    return BodyRefused(413, f"the request body is larger than {max_bytes} bytes (the {setting} limit)")


def too_deep(max_depth: int) -> BodyRefused:
    message = f"the JSON body nests deeper than {max_depth} levels (the max_nesting_depth limit)"
    return BodyRefused(422, [{"type": "too_deep", "loc": ["body"], "msg": message}])


def not_utf8() -> BodyRefused:
    # json.loads also reads UTF-16 and UTF-32, whose bytes the depth gauge cannot follow; every
    # such body has NUL bytes (its ASCII punctuation), which UTF-8 JSON never has.
    message = "a JSON body is UTF-8 text: NUL bytes (UTF-16, UTF-32) are refused"
    return BodyRefused(422, [{"type": "not_utf8", "loc": ["body"], "msg": message}])


def _reads_as_json(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


class BodyLimitMiddleware:
    """``own_limits`` maps a path to its own (bytes, setting name): a file upload that the route
    reads as it streams in may be larger than any other body."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, max_depth: int, own_limits: Mapping[str, tuple[int, str]] | None = None
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        self.own_limits = dict(own_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        max_bytes, setting = self.own_limits.get(scope["path"], (self.max_bytes, "max_body_bytes"))
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            await _answer(too_large(max_bytes, setting), scope, receive, send)
            return
        gauge = JsonDepthGauge(self.max_depth) if _reads_as_json(headers.get("content-type")) else None
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                if received > max_bytes:
                    raise too_large(max_bytes, setting)
                if gauge is not None and b"\x00" in chunk:
                    raise not_utf8()
                if gauge is not None and not gauge.feed(chunk):
                    raise too_deep(self.max_depth)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, watched_send)
        except BodyRefused as refused:  # read outside an endpoint, where no handler answered it
            if started:
                raise
            await _answer(refused, scope, receive, send)


async def _answer(refused: BodyRefused, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": refused.detail}, status_code=refused.status_code)(scope, receive, send)
