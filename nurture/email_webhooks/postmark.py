"""Postmark webhooks: one record per post, authenticated by basic auth in the webhook URL.

Postmark signs nothing; the webhook URL set in its console carries a username and password
(``https://user:password@mail.example.com/webhooks/postmark``), checked here in constant time.
Postmark retries a failed post with the same record: a bounce or complaint has its ``ID``, other
records are recognised by their content, and each is recorded once. Our ids ride in ``Metadata``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from nurture.email_webhooks import Mapped, WebhookMalformed, WebhookRefused, our_message_id, parse_time, text

# Bounce types that say the address will never take mail (https://postmarkapp.com/developer/api/bounce-api#bounce-types).
HARD_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated"})


def verify(username: str, password: str, authorization: str | None) -> None:
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise WebhookRefused("basic auth is required (set it in the webhook URL in Postmark)")
    try:
        given_user, _, given_password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise WebhookRefused("the basic auth header is malformed") from exc
    user_ok = hmac.compare_digest(given_user.encode(), username.encode())
    password_ok = hmac.compare_digest(given_password.encode(), password.encode())
    if not (user_ok and password_ok):
        raise WebhookRefused("wrong webhook username or password")


def parse(body: bytes) -> dict[str, Any]:
    try:
        record = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookMalformed("the body is not a Postmark webhook record (JSON)") from exc
    if not isinstance(record, dict) or not isinstance(record.get("RecordType"), str):
        raise WebhookMalformed("RecordType: missing")
    return record


def reports(record: dict[str, Any]) -> Mapped:
    mapped = Mapped()
    kind = record["RecordType"]
    metadata = record.get("Metadata") if isinstance(record.get("Metadata"), dict) else {}
    common = {
        "message_id": our_message_id(metadata.get("nurture_message_id")),
        "provider_message_id": text(record.get("MessageID"), 300),
    }
    if kind == "Delivery":
        mapped.add(kind, type="delivered", occurred_at=parse_time(record.get("DeliveredAt")), **common)
    elif kind == "Bounce":
        bounce = record.get("Type")
        mapped.add(
            kind, type="bounced", id=f"bounce-{record.get('ID')}" if record.get("ID") is not None else None,
            bounce_type="hard" if bounce in HARD_BOUNCES else "soft",
            reason=text(record.get("Details") or record.get("Description")),
            occurred_at=parse_time(record.get("BouncedAt")), **common,
        )
    elif kind == "SpamComplaint":
        mapped.add(kind, type="complained", id=f"complaint-{record.get('ID')}" if record.get("ID") is not None else None,
                   occurred_at=parse_time(record.get("BouncedAt")), **common)
    elif kind == "Open":
        mapped.add(kind, type="opened", user_agent=text(record.get("UserAgent")),
                   occurred_at=parse_time(record.get("ReceivedAt")), **common)
    elif kind == "Click":
        mapped.add(kind, type="clicked", url=text(record.get("OriginalLink"), 4000), user_agent=text(record.get("UserAgent")),
                   occurred_at=parse_time(record.get("ReceivedAt")), **common)
    elif kind == "SubscriptionChange" and record.get("SuppressSending") and record.get("SuppressionReason") == "ManualSuppression":
        # The recipient unsubscribed through Postmark's link; bounces and complaints come as their own records.
        mapped.add(kind, type="unsubscribed", occurred_at=parse_time(record.get("ChangedAt")), **common)
    else:
        mapped.skipped.append(f"{kind}: not an event the engine records")
    return mapped
