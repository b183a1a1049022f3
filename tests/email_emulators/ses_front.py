"""SES v2's throttling answer in front of moto (which never throttles).

Requests pass through to moto unchanged, except that ``throttle(n)`` answers the next n with what
SES v2 answers past the account's sending rate: HTTP 429, ``x-amzn-ErrorType:
TooManyRequestsException`` and ``{"message": "Maximum sending rate exceeded."}``
(https://docs.aws.amazon.com/ses/latest/APIReference-V2/CommonErrors.html).
Each SendEmail that moto accepted is kept in ``sends``: its request (EmailTags, the raw MIME) and
SES's MessageId, since moto's own record of a raw send drops the tags.
"""

from __future__ import annotations

import base64
import json
from email import message_from_bytes
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

HOP_BY_HOP = {"host", "content-length", "connection", "transfer-encoding"}


class SesThrottlingFront:
    def __init__(self, moto_url: str):
        self.moto_url = moto_url
        self.throttled = 0
        self.sends: list[dict[str, Any]] = []
        self._throttle_next = 0
        self._retry_after = 1
        self.app = Starlette(routes=[Route("/{path:path}", self.forward, methods=["GET", "POST", "PUT", "DELETE"])])

    def throttle(self, count: int, retry_after_seconds: int = 1) -> None:
        self._throttle_next, self._retry_after = count, retry_after_seconds

    async def forward(self, request: Request) -> Response:
        if self._throttle_next > 0 and request.url.path.startswith("/v2/email/outbound-emails"):
            self._throttle_next -= 1
            self.throttled += 1
            return JSONResponse(
                {"message": "Maximum sending rate exceeded."}, 429,
                headers={"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": str(self._retry_after)},
            )
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        async with httpx.AsyncClient(base_url=self.moto_url) as http:
            answer = await http.request(
                request.method, request.url.path, params=request.query_params, headers=headers, content=await request.body()
            )
        if request.url.path.startswith("/v2/email/outbound-emails") and answer.status_code == 200:
            self.sends.append(_send_record(await request.body(), answer.json()))
        passed = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        return Response(answer.content, answer.status_code, headers=passed)


def _send_record(body: bytes, answer: dict[str, Any]) -> dict[str, Any]:
    """What the SendEmail request carried: the tags (our metadata), the recipient and the Message-ID."""
    request = json.loads(body)
    raw = request.get("Content", {}).get("Raw", {}).get("Data", "")
    mime = message_from_bytes(base64.b64decode(raw)) if raw else None
    return {
        "message_id": answer.get("MessageId"),
        "to": (request.get("Destination") or {}).get("ToAddresses", [""])[0],
        "tags": {tag["Name"]: tag["Value"] for tag in request.get("EmailTags") or []},
        "headers": {"Message-ID": mime["Message-ID"]} if mime is not None else {},
        "configuration_set": request.get("ConfigurationSetName"),
    }
