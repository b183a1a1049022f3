"""SendGrid v3 Mail Send, Postmark and Mailgun on loopback, after the vendors' API references.

Each emulator checks the vendor's credentials header, validates the request the way the vendor
documents it, answers the vendor's success and error bodies, and can throttle: ``throttle(n)``
answers the next n requests 429 with Retry-After, ``rate_per_second`` answers 429 past that many
requests in any second (the vendor's rate limit). ``sent`` holds what was accepted, as the vendor
recorded it, so a webhook built from it echoes the metadata the vendor was given.
Webhook payloads are built in each vendor's event shape and signed with test keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from email.utils import parseaddr
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Accepted:
    provider_id: str
    to: str
    subject: str
    headers: dict[str, str]
    metadata: dict[str, str]
    body: Any = None


@dataclass
class VendorEmulator:
    credential: str = "test-key"
    rate_per_second: float = 0.0
    retry_after_seconds: int = 1
    sent: list[Accepted] = field(default_factory=list)
    requests: int = 0
    throttled: int = 0
    _throttle_next: int = 0
    _window: deque = field(default_factory=deque)
    admitted: list[float] = field(default_factory=list)  # monotonic time of each request let through

    def __post_init__(self) -> None:  # each vendor builds its app here
        pass

    def throttle(self, count: int, retry_after_seconds: int = 1) -> None:
        self._throttle_next = count
        self.retry_after_seconds = retry_after_seconds

    def _over_limit(self) -> bool:
        self.requests += 1
        if self._throttle_next > 0:
            self._throttle_next -= 1
            self.throttled += 1
            return True
        if self.rate_per_second:
            now = time.monotonic()
            while self._window and now - self._window[0] >= 1.0:
                self._window.popleft()
            if len(self._window) >= self.rate_per_second:
                self.throttled += 1
                return True
            self._window.append(now)
        self.admitted.append(time.monotonic())
        return False

    def busiest_second(self) -> int:
        """The most requests let through within any one second."""
        most, first = 0, 0
        for last, at in enumerate(self.admitted):
            while at - self.admitted[first] >= 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most


# --- SendGrid v3 -------------------------------------------------------------------------------


class SendgridEmulator(VendorEmulator):
    """``POST /v3/mail/send`` (https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send)."""

    def __post_init__(self) -> None:
        self.signing_key = ec.generate_private_key(ec.SECP256R1())
        self.app = Starlette(routes=[Route("/v3/mail/send", self.mail_send, methods=["POST"])])

    @property
    def public_key(self) -> str:
        """The verification key as SendGrid's console shows it: base64 of the DER public key."""
        der = self.signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    @staticmethod
    def _errors(status: int, *errors: tuple[str, str | None], headers: dict | None = None) -> JSONResponse:
        body = {"errors": [{"message": message, "field": where, "help": None} for message, where in errors]}
        return JSONResponse(body, status_code=status, headers=headers)

    async def mail_send(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.credential}":
            return self._errors(401, ("The provided authorization grant is invalid, expired, or revoked", None))
        if self._over_limit():
            reset = int(time.time()) + self.retry_after_seconds
            return self._errors(429, ("too many requests", None), headers={
                "X-RateLimit-Limit": str(int(self.rate_per_second) or 600), "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(reset), "Retry-After": str(self.retry_after_seconds),
            })
        try:
            body = await request.json()
        except ValueError:
            return self._errors(400, ("Bad Request", None))
        personalizations = body.get("personalizations") or []
        if not personalizations or not personalizations[0].get("to"):
            return self._errors(400, ("The personalizations field is required and must have at least one personalization.", "personalizations"))
        if not (body.get("from") or {}).get("email"):
            return self._errors(400, ("The from object must be provided for every email send.", "from.email"))
        to = personalizations[0]["to"][0].get("email", "")
        if "@" not in to or to.endswith("@invalid.test"):
            return self._errors(400, ("Does not contain a valid address.", "personalizations.0.to.0.email"))
        if not body.get("content") or not body.get("subject"):
            return self._errors(400, ("The content value must be a string at least one character in length.", "content.0.value"))
        custom = {**(body.get("custom_args") or {}), **(personalizations[0].get("custom_args") or {})}
        if any(not isinstance(v, str) for v in custom.values()):
            return self._errors(400, ("Custom args must be strings.", "custom_args"))
        provider_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")[:22]
        self.sent.append(Accepted(provider_id, to, body["subject"], body.get("headers") or {}, custom, body))
        return Response(status_code=202, headers={"X-Message-Id": provider_id})

    def event(self, kind: str, accepted: Accepted, **extra) -> dict[str, Any]:
        """One event of the Event Webhook: custom_args at the top level, as SendGrid posts them."""
        event = {
            "email": accepted.to,
            "timestamp": int(time.time()),
            "smtp-id": accepted.headers.get("Message-ID", ""),
            "event": kind,
            "sg_event_id": base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("="),
            "sg_message_id": f"{accepted.provider_id}.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
            **accepted.metadata,
        }
        if kind == "bounce":
            event.update({"type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 The email account does not exist."})
        event.update(extra)
        return event

    def signed(self, events: list[dict], timestamp: int | None = None, key=None) -> dict[str, Any]:
        """The request the Signed Event Webhook makes: ECDSA (P-256, SHA-256) of timestamp + body."""
        body = json.dumps(events).encode()
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = (key or self.signing_key).sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"content": body, "headers": {
            "content-type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        }}


# --- Postmark ----------------------------------------------------------------------------------


class PostmarkEmulator(VendorEmulator):
    """``POST /email`` (https://postmarkapp.com/developer/api/email-api)."""

    def __post_init__(self) -> None:
        self.inactive: set[str] = set()  # recipients Postmark has deactivated (ErrorCode 406)
        self.app = Starlette(routes=[Route("/email", self.email, methods=["POST"])])

    async def email(self, request: Request) -> Response:
        if request.headers.get("x-postmark-server-token") != self.credential:
            return JSONResponse({"ErrorCode": 10, "Message": "Request does not contain a valid Server token."}, 401)
        if self._over_limit():
            return JSONResponse({"ErrorCode": 429, "Message": "Rate limit exceeded."}, 429,
                                headers={"Retry-After": str(self.retry_after_seconds)})
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"ErrorCode": 402, "Message": "Received invalid JSON input."}, 422)
        to = parseaddr(body.get("To") or "")[1]
        if "@" not in to or to.endswith("@invalid.test"):
            return JSONResponse({"ErrorCode": 300, "Message": f"Error parsing 'To': Illegal email address '{to}'."}, 422)
        if not body.get("From"):
            return JSONResponse({"ErrorCode": 300, "Message": "Invalid 'From' address: ''."}, 422)
        if to in self.inactive:
            return JSONResponse({"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as inactive."}, 422)
        metadata = body.get("Metadata") or {}
        if len(metadata) > 10 or any(not isinstance(v, str) or len(v) > 80 for v in metadata.values()):
            return JSONResponse({"ErrorCode": 300, "Message": "Invalid metadata."}, 422)
        provider_id = str(uuid.uuid4())
        headers = {h["Name"]: h["Value"] for h in body.get("Headers") or []}
        self.sent.append(Accepted(provider_id, to, body.get("Subject", ""), headers, metadata, body))
        return JSONResponse({"To": body["To"], "SubmittedAt": "2026-12-06T10:00:00.0000000-05:00",
                             "MessageID": provider_id, "ErrorCode": 0, "Message": "OK"})

    @staticmethod
    def event(record_type: str, accepted: Accepted, **extra) -> dict[str, Any]:
        """A webhook post: one record, in Postmark's shape for that RecordType."""
        base: dict[str, Any] = {"RecordType": record_type, "MessageStream": "outbound", "MessageID": accepted.provider_id,
                                "Metadata": accepted.metadata, "Tag": ""}
        at = "2026-12-06T16:00:00Z"
        shapes: dict[str, dict[str, Any]] = {
            "Delivery": {"ServerID": 23, "Recipient": accepted.to, "DeliveredAt": at, "Details": "Test delivery webhook details"},
            "Bounce": {"ID": secrets.randbelow(2**62), "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce",
                       "Email": accepted.to, "BouncedAt": at, "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
                       "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.", "Inactive": True, "CanActivate": True},
            "SpamComplaint": {"ID": secrets.randbelow(2**62), "Type": "SpamComplaint", "TypeCode": 512, "Name": "Spam complaint",
                              "Email": accepted.to, "BouncedAt": at, "Details": "Test spam complaint details", "Inactive": True},
            "Open": {"FirstOpen": True, "Recipient": accepted.to, "ReceivedAt": at, "UserAgent": "Mozilla/5.0 (Macintosh)", "Platform": "WebMail"},
            "Click": {"ClickLocation": "HTML", "OriginalLink": "https://example.com", "Recipient": accepted.to, "ReceivedAt": at,
                      "UserAgent": "Mozilla/5.0 (Macintosh)", "Platform": "Desktop"},
            "SubscriptionChange": {"Recipient": accepted.to, "ChangedAt": at, "SuppressSending": True, "SuppressionReason": "ManualSuppression"},
        }
        return {**base, **shapes[record_type], **extra}

    @staticmethod
    def basic_auth(username: str, password: str) -> dict[str, str]:
        """Postmark calls the webhook URL with the credentials written into it (https://user:pass@host/...)."""
        return {"authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()}


# --- Mailgun -----------------------------------------------------------------------------------


class MailgunEmulator(VendorEmulator):
    """``POST /v3/<domain>/messages`` (https://documentation.mailgun.com/docs/mailgun/api-reference/openapi-final/tag/Messages/)."""

    domain: str = "mg.example.com"

    def __post_init__(self) -> None:
        self.signing_key = "key-" + secrets.token_hex(16)
        self.app = Starlette(routes=[Route("/v3/{domain}/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"api:{self.credential}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return PlainTextResponse("Forbidden", 401)
        if request.path_params["domain"] != self.domain:
            return JSONResponse({"message": f"Domain not found: {request.path_params['domain']}"}, 404)
        if self._over_limit():
            return JSONResponse({"message": "Too many requests"}, 429, headers={"Retry-After": str(self.retry_after_seconds)})
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return JSONResponse({"message": "unsupported content type (this emulator takes form-urlencoded)"}, 400)
        form = dict(parse_qsl((await request.body()).decode(), keep_blank_values=True))
        for required in ("from", "to"):
            if not form.get(required):
                return JSONResponse({"message": f"'{required}' parameter is missing"}, 400)
        to = parseaddr(str(form["to"]))[1]
        if "@" not in to or to.endswith("@invalid.test"):
            return JSONResponse({"message": "to parameter is not a valid address. please check documentation"}, 400)
        if not (form.get("text") or form.get("html")):
            return JSONResponse({"message": "Need at least one of 'text' or 'html' parameters specified"}, 400)
        headers = {str(k)[2:]: str(v) for k, v in form.items() if str(k).startswith("h:")}
        variables = {str(k)[2:]: str(v) for k, v in form.items() if str(k).startswith("v:")}
        provider_id = headers.get("Message-Id") or f"<{uuid.uuid4().hex}@{self.domain}>"
        self.sent.append(Accepted(provider_id, to, str(form.get("subject", "")), headers, variables, form))
        return JSONResponse({"id": provider_id, "message": "Queued. Thank you."})

    def event(self, kind: str, accepted: Accepted, **extra) -> dict[str, Any]:
        """``event-data`` of a webhook, user variables echoed."""
        data: dict[str, Any] = {
            "event": kind, "id": secrets.token_urlsafe(16), "timestamp": time.time(), "recipient": accepted.to,
            "message": {"headers": {"message-id": accepted.provider_id.strip("<>"), "to": accepted.to,
                                    "subject": accepted.subject}},
            "user-variables": accepted.metadata, "tags": [],
        }
        if kind == "failed":
            data.update({"severity": "permanent", "reason": "bounce",
                         "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist", "description": ""}})
        data.update(extra)
        return data

    def signed(self, event_data: dict[str, Any], timestamp: int | None = None, token: str | None = None,
               key: str | None = None) -> dict[str, Any]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        token = token or secrets.token_hex(25)
        signature = hmac.new((key or self.signing_key).encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
        return {"signature": {"timestamp": stamp, "token": token, "signature": signature}, "event-data": event_data}
