"""Mailgun webhooks: ``{"signature": {timestamp, token, signature}, "event-data": {...}}``.

``signature`` is the hex HMAC-SHA256 of ``timestamp + token`` with the webhook signing key
(https://documentation.mailgun.com/docs/mailgun/user-manual/webhooks/securing-webhooks). A
timestamp outside the tolerance is refused, and so is a token seen before (the caller keeps
them: ``WebhookToken``), so a captured request cannot be played again. Our ids ride as ``v:``
variables, which come back in ``user-variables``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from nurture.email_webhooks import Mapped, WebhookMalformed, WebhookRefused, our_message_id, parse_time, text


def parse(body: bytes) -> tuple[dict[str, str], dict[str, Any]]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookMalformed("the body is not a Mailgun webhook (JSON)") from exc
    signature = payload.get("signature") if isinstance(payload, dict) else None
    event = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(signature, dict) or not all(isinstance(signature.get(k), str) for k in ("timestamp", "token", "signature")):
        raise WebhookRefused("signature: timestamp, token and signature are required")
    if not isinstance(event, dict):
        raise WebhookMalformed("event-data: missing")
    if not 1 <= len(signature["token"]) <= 200:
        raise WebhookRefused("signature.token: 1 to 200 characters")
    return signature, event


def verify(signing_key: str, signature: dict[str, str], now: float, tolerance_seconds: int) -> None:
    expected = hmac.new(
        signing_key.encode(), (signature["timestamp"] + signature["token"]).encode(), hashlib.sha256
    ).hexdigest()
    if not hmac.compare_digest(expected, signature["signature"]):
        raise WebhookRefused("the signature does not match the timestamp and token")
    try:
        stamp = float(signature["timestamp"])
    except ValueError as exc:
        raise WebhookRefused("signature.timestamp is not a number") from exc
    if abs(now - stamp) > tolerance_seconds:
        raise WebhookRefused("the signature timestamp is too old or in the future")


def reports(event: dict[str, Any]) -> Mapped:
    mapped = Mapped()
    kind = event.get("event")
    variables = event.get("user-variables") if isinstance(event.get("user-variables"), dict) else {}
    message = event.get("message") if isinstance(event.get("message"), dict) else {}
    headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
    header_id = headers.get("message-id")
    client = event.get("client-info") if isinstance(event.get("client-info"), dict) else {}
    common = {
        "id": text(event.get("id"), 200),
        "message_id": our_message_id(variables.get("nurture_message_id")),
        # The send answered the id in angle brackets; events name it without them.
        "provider_message_id": f"<{str(header_id)[:290]}>" if header_id else None,
        "occurred_at": parse_time(event.get("timestamp")),
    }
    where = str(kind)[:40]
    if kind == "delivered":
        mapped.add(where, type="delivered", **common)
    elif kind == "failed":
        status = event.get("delivery-status") if isinstance(event.get("delivery-status"), dict) else {}
        reason = " ".join(str(status[k]) for k in ("code", "message", "description") if status.get(k)) or event.get("reason")
        mapped.add(where, type="bounced", bounce_type="hard" if event.get("severity") == "permanent" else "soft",
                   reason=text(reason), **common)
    elif kind == "complained":
        mapped.add(where, type="complained", **common)
    elif kind == "opened":
        mapped.add(where, type="opened", user_agent=text(client.get("user-agent")), **common)
    elif kind == "clicked":
        mapped.add(where, type="clicked", url=text(event.get("url"), 4000), user_agent=text(client.get("user-agent")), **common)
    elif kind == "unsubscribed":
        mapped.add(where, type="unsubscribed", **common)
    else:
        mapped.skipped.append(f"{where}: not an event the engine records")
    return mapped
