"""Signed, expiring tokens for the open pixel and click redirects.

A token is ``<payload>.<signature>``: the payload is base64url JSON naming the
message, the kind of hit and, for a click, the target URL; the signature is an
HMAC-SHA256 of the payload with the tracking secret. The redirect target is read
from the signed payload only, so a changed URL breaks the signature and is refused.
A signature alone is not enough for a redirect: the token must also be one of the links
the message was sent with (``sent_with``), so even a leaked secret cannot turn the click
endpoint into an open redirect.

Consent links (unsubscribe, double opt-in confirmation; docs/consent.md) use the same format
under their own signing context and name the contact with the message or the flow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from datetime import datetime, timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ValidationError

# Part of the signed text, so a signature made for another purpose never verifies here.
_CONTEXT = b"nurture-tracking-v1."


class TokenInvalid(Exception):
    """Not a token we signed (tampered, truncated, another secret)."""


class TokenExpired(Exception):
    """A token we signed, past its expiry."""


class TrackingToken(BaseModel):
    kind: Literal["open", "click"]
    message_id: int
    url: str | None = None
    expires: int  # unix seconds


def trackable_url(url: str) -> bool:
    """Only web links are tracked and redirected to: never mailto:, javascript: or relative links."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def click_path(token: str) -> str:
    return f"/t/c/{token}"


def sent_with(message_html: str, token: str) -> bool:
    """Whether the stored (tracked) body of a message carries this click link. The token holds
    only base64url characters and a dot, which the rewrite never escapes."""
    return click_path(token) in message_html


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), _CONTEXT + payload.encode(), hashlib.sha256).digest())


def make_token(secret: str, token: TrackingToken) -> str:
    if token.kind == "click" and (token.url is None or not trackable_url(token.url)):
        raise ValueError(f"a click token needs an http(s) URL, got {token.url!r}")
    short = {"k": token.kind[0], "m": token.message_id, "x": token.expires}
    if token.url is not None:
        short["u"] = token.url
    payload = _b64(json.dumps(short, separators=(",", ":")).encode())
    return f"{payload}.{_signature(secret, payload)}"


def open_token(secret: str, message_id: int, expires_at: datetime) -> str:
    return make_token(secret, TrackingToken(kind="open", message_id=message_id, expires=int(expires_at.timestamp())))


def click_token(secret: str, message_id: int, url: str, expires_at: datetime) -> str:
    return make_token(
        secret, TrackingToken(kind="click", message_id=message_id, url=url, expires=int(expires_at.timestamp()))
    )


def expiry(sent_at: datetime, days: int) -> datetime:
    return sent_at + timedelta(days=days)


def read_token(secret: str, token: str, kind: Literal["open", "click"], now: datetime) -> TrackingToken:
    """The verified token; TokenInvalid unless we signed it for this kind, TokenExpired when too old."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not hmac.compare_digest(signature.encode(), _signature(secret, payload).encode()):
        raise TokenInvalid("bad signature")
    try:
        short = json.loads(_unb64(payload))
        parsed = TrackingToken(
            kind={"o": "open", "c": "click"}[short["k"]], message_id=short["m"], url=short.get("u"), expires=short["x"]
        )
    except (binascii.Error, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise TokenInvalid(f"unreadable payload: {exc}") from exc
    if parsed.kind != kind or (kind == "click" and not trackable_url(parsed.url or "")):
        raise TokenInvalid(f"not a {kind} token")
    if parsed.expires < now.timestamp():
        raise TokenExpired(f"expired at {datetime.fromtimestamp(parsed.expires).isoformat()}")
    return parsed


# --- consent links: one-click unsubscribe and double opt-in confirmation ----------------------
# Signed under their own context, so neither a tracking token nor one of the other consent kind
# ever verifies as one of these.
_CONSENT_CONTEXT = b"nurture-consent-v1."


class ConsentToken(BaseModel):
    kind: Literal["unsubscribe", "optin"]
    contact_id: int
    message_id: int | None = None  # unsubscribe: the email the link came in
    flow_id: int | None = None  # optin: the flow that asked for the confirmation
    expires: int  # unix seconds


def _consent_signature(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), _CONSENT_CONTEXT + payload.encode(), hashlib.sha256).digest())


def _make_consent(secret: str, short: dict) -> str:
    payload = _b64(json.dumps(short, separators=(",", ":")).encode())
    return f"{payload}.{_consent_signature(secret, payload)}"


def unsubscribe_token(secret: str, contact_id: int, message_id: int, expires_at: datetime) -> str:
    return _make_consent(secret, {"k": "u", "c": contact_id, "m": message_id, "x": int(expires_at.timestamp())})


def optin_token(secret: str, contact_id: int, flow_id: int, expires_at: datetime) -> str:
    return _make_consent(secret, {"k": "i", "c": contact_id, "f": flow_id, "x": int(expires_at.timestamp())})


def read_consent_token(
    secret: str, token: str, kind: Literal["unsubscribe", "optin"], now: datetime
) -> ConsentToken:
    """The verified token; TokenInvalid unless we signed it for this kind, TokenExpired when too old."""
    payload, dot, signature = token.partition(".")
    if not dot or not payload or not hmac.compare_digest(
        signature.encode(), _consent_signature(secret, payload).encode()
    ):
        raise TokenInvalid("bad signature")
    try:
        short = json.loads(_unb64(payload))
        parsed = ConsentToken(
            kind={"u": "unsubscribe", "i": "optin"}[short["k"]],
            contact_id=short["c"],
            message_id=short.get("m"),
            flow_id=short.get("f"),
            expires=short["x"],
        )
    except (binascii.Error, ValueError, KeyError, TypeError, ValidationError) as exc:
        raise TokenInvalid(f"unreadable payload: {exc}") from exc
    if parsed.kind != kind:
        raise TokenInvalid(f"not an {kind} token")
    if parsed.expires < now.timestamp():
        raise TokenExpired(f"expired at {datetime.fromtimestamp(parsed.expires).isoformat()}")
    return parsed
