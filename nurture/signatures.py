"""Checking a signed inbound webhook: ``X-Nurture-Signature: t=<unix>,v1=<hex>``.

The same scheme the webhook steps use to sign what they send (activities/webhooks.py,
the Stripe scheme): HMAC-SHA256 of ``"<t>.<raw body>"``. The timestamp bounds replays.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "X-Nurture-Signature"


class SignatureInvalid(Exception):
    pass


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: str, header: str | None, body: bytes, now: float, tolerance_seconds: int) -> None:
    if not header:
        raise SignatureInvalid(f"the {HEADER} header is missing")
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        raise SignatureInvalid(f"the {HEADER} header has no timestamp t=") from None
    if abs(now - timestamp) > tolerance_seconds:
        raise SignatureInvalid("the signature timestamp is too old or in the future")
    expected = signature_header(secret, timestamp, body).split("v1=", 1)[1]
    # Several v1= values are allowed, so a secret can be rotated without downtime.
    if not any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", [])):
        raise SignatureInvalid("the signature does not match the body")
