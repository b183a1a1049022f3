"""SendGrid's Signed Event Webhook.

SendGrid signs ``<X-Twilio-Email-Event-Webhook-Timestamp><raw body>`` with ECDSA (P-256,
SHA-256) and sends the base64 DER signature in ``X-Twilio-Email-Event-Webhook-Signature``; the
verification key is the base64 DER public key its console shows. A timestamp outside the
tolerance is refused (a captured request cannot be played later); within it, a resent event has
the same ``sg_event_id`` and is recorded once. Our ids ride as ``custom_args``, which SendGrid
puts at the top level of each event.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from nurture.email_webhooks import Mapped, WebhookMalformed, WebhookRefused, our_message_id, parse_time, text

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
MAX_EVENTS = 1000


def public_key(encoded: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("sendgrid.webhook_public_key is not a base64 DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("sendgrid.webhook_public_key is not an ECDSA key")
    return key


def verify(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, body: bytes,
           now: float, tolerance_seconds: int) -> None:
    if not signature or not timestamp:
        raise WebhookRefused(f"the {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers are required")
    try:
        stamp = int(timestamp)
        raw = base64.b64decode(signature, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise WebhookRefused("the signature headers are malformed") from exc
    try:
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise WebhookRefused("the signature does not match the body") from exc
    if abs(now - stamp) > tolerance_seconds:
        raise WebhookRefused("the signature timestamp is too old or in the future")


def parse(body: bytes) -> list[dict[str, Any]]:
    try:
        events = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookMalformed("the body is not a JSON array of events") from exc
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise WebhookMalformed("the body is not a JSON array of events")
    if not 1 <= len(events) <= MAX_EVENTS:
        raise WebhookMalformed(f"a post holds 1 to {MAX_EVENTS} events")
    return events


def reports(events: list[dict[str, Any]]) -> Mapped:
    mapped = Mapped()
    for index, event in enumerate(events):
        where = f"[{index}] {str(event.get('event'))[:40]}"
        kind = event.get("event")
        sg_message_id = event.get("sg_message_id")
        common = {
            "id": text(event.get("sg_event_id"), 200),
            "message_id": our_message_id(event.get("nurture_message_id")),
            # sg_message_id is the X-Message-Id of the send, followed by a dot and the relay's name.
            "provider_message_id": text(str(sg_message_id).split(".")[0], 300) if sg_message_id else None,
            "occurred_at": parse_time(event.get("timestamp")),
        }
        if kind == "delivered":
            mapped.add(where, type="delivered", **common)
        elif kind == "bounce":
            # type "bounce": the address refused for good; "blocked": this message, this time.
            mapped.add(where, type="bounced", bounce_type="soft" if event.get("type") == "blocked" else "hard",
                       reason=text(event.get("reason")), **common)
        elif kind == "spamreport":
            mapped.add(where, type="complained", **common)
        elif kind == "open":
            mapped.add(where, type="opened", user_agent=text(event.get("useragent")), **common)
        elif kind == "click":
            mapped.add(where, type="clicked", url=text(event.get("url"), 4000), user_agent=text(event.get("useragent")), **common)
        elif kind in ("unsubscribe", "group_unsubscribe"):
            mapped.add(where, type="unsubscribed", **common)
        else:
            mapped.skipped.append(f"{where}: not an event the engine records")
    return mapped
