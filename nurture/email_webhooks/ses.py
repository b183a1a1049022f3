"""Amazon SES events through an SNS HTTP(S) subscription.

SNS signs each message with the key of a certificate it names in ``SigningCertURL``
(https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html): the signed
text is fixed fields, each as ``name\\nvalue\\n``, in a fixed order per message type; version 1
signs with SHA1withRSA, version 2 with SHA256withRSA. The certificate is fetched only from an
``https://sns.<region>.amazonaws.com/`` URL (or a configured prefix, for a test emulator) and
kept. A ``SubscriptionConfirmation`` is confirmed by fetching its ``SubscribeURL``, held to the
same hosts. A ``Notification``'s ``Message`` is the SES event (event publishing's ``eventType``
or identity notifications' ``notificationType``); our ids ride in ``mail.tags``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections import OrderedDict
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from nurture.email_webhooks import Mapped, WebhookMalformed, WebhookRefused, our_message_id, parse_time, text
from nurture.settings import SesSettings

SNS_HOST = re.compile(r"^sns\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}
MAX_CERT_BYTES = 16_384
CACHED_CERTS = 32


def string_to_sign(message: dict[str, Any]) -> bytes:
    fields = SIGNED_FIELDS[message["Type"]]
    return "".join(f"{name}\n{message[name]}\n" for name in fields if name in message).encode()


def trusted_url(url: str, settings: SesSettings) -> bool:
    parts = urlsplit(url)
    if "@" in parts.netloc:  # http://127.0.0.1:@elsewhere/ starts like a trusted prefix but is another host
        return False
    if settings.sns_trusted_url_prefix and url.startswith(settings.sns_trusted_url_prefix):
        return True
    return parts.scheme == "https" and parts.port is None and bool(SNS_HOST.match(parts.hostname or ""))


def parse(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise WebhookMalformed("the body is not an SNS message (JSON)") from exc
    if not isinstance(message, dict) or message.get("Type") not in SIGNED_FIELDS:
        raise WebhookMalformed("Type: not an SNS Notification, SubscriptionConfirmation or UnsubscribeConfirmation")
    for name in ("MessageId", "Timestamp", "TopicArn", "Message", "Signature", "SigningCertURL", "SignatureVersion"):
        if not isinstance(message.get(name), str):
            raise WebhookMalformed(f"{name}: missing or not a string")
    return message


# Signing keys by certificate URL, for the process: SNS publishes a new certificate at a new URL.
_KEYS: OrderedDict[str, rsa.RSAPublicKey] = OrderedDict()


class SnsVerifier:
    """Checks SNS signatures; the signing certificates are fetched once and kept (a few, newest last)."""

    def __init__(self, settings: SesSettings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        self.transport = transport
        self._keys = _KEYS

    async def verify(self, message: dict[str, Any]) -> None:
        if self.settings.sns_topic_arns and message["TopicArn"] not in self.settings.sns_topic_arns:
            raise WebhookRefused(f"TopicArn {message['TopicArn']!r} is not one of ses.sns_topic_arns")
        algorithm = HASHES.get(message["SignatureVersion"])
        if algorithm is None:
            raise WebhookRefused(f"SignatureVersion {message['SignatureVersion']!r} is not 1 or 2")
        url = message["SigningCertURL"]
        if not trusted_url(url, self.settings):
            raise WebhookRefused("SigningCertURL is not an SNS host (https://sns.<region>.amazonaws.com/)")
        try:
            signature = base64.b64decode(message["Signature"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise WebhookRefused("Signature is not base64") from exc
        key = await self._key(url)
        try:
            key.verify(signature, string_to_sign(message), padding.PKCS1v15(), algorithm())
        except (InvalidSignature, KeyError) as exc:
            raise WebhookRefused("the SNS signature does not match the message") from exc

    async def _key(self, url: str) -> rsa.RSAPublicKey:
        if url in self._keys:
            self._keys.move_to_end(url)
            return self._keys[url]
        try:
            async with httpx.AsyncClient(timeout=5.0, transport=self.transport, follow_redirects=False) as http:
                response = await http.get(url)
            if response.status_code != 200 or len(response.content) > MAX_CERT_BYTES:
                raise WebhookRefused(f"the signing certificate could not be fetched ({response.status_code})")
            key = x509.load_pem_x509_certificate(response.content).public_key()
        except (httpx.HTTPError, ValueError) as exc:
            raise WebhookRefused(f"the signing certificate could not be read: {exc}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise WebhookRefused("the signing certificate does not hold an RSA key")
        self._keys[url] = key
        while len(self._keys) > CACHED_CERTS:
            self._keys.popitem(last=False)
        return key

    async def confirm(self, message: dict[str, Any]) -> None:
        """Confirm a subscription: SNS sends the URL to visit (only an SNS host is visited)."""
        url = message.get("SubscribeURL")
        if not isinstance(url, str) or not trusted_url(url, self.settings):
            raise WebhookRefused("SubscribeURL is not an SNS host")
        try:
            async with httpx.AsyncClient(timeout=5.0, transport=self.transport, follow_redirects=False) as http:
                response = await http.get(url)
        except httpx.HTTPError as exc:
            raise WebhookMalformed(f"SNS did not answer the confirmation: {exc}") from exc
        if response.status_code != 200:
            raise WebhookMalformed(f"SNS refused the confirmation ({response.status_code})")


def reports(message: dict[str, Any]) -> Mapped:
    """The SES event in a verified Notification, as normalized reports."""
    mapped = Mapped()
    try:
        event = json.loads(message["Message"])
    except ValueError:
        mapped.skipped.append("Message: not an SES event (JSON)")
        return mapped
    if not isinstance(event, dict) or not isinstance(event.get("mail"), dict):
        mapped.skipped.append("Message: not an SES event (no mail)")
        return mapped
    kind = event.get("eventType") or event.get("notificationType")
    mail = event["mail"]
    tags = mail.get("tags") if isinstance(mail.get("tags"), dict) else {}
    common = {
        "id": message["MessageId"],
        "message_id": our_message_id(tags.get("nurture_message_id")),
        "provider_message_id": text(mail.get("messageId"), 300),
    }
    detail = event.get(str(kind).lower()) if isinstance(event.get(str(kind).lower()), dict) else {}
    at = parse_time(detail.get("timestamp")) or parse_time(mail.get("timestamp"))
    if kind == "Delivery":
        mapped.add(kind, type="delivered", occurred_at=at, **common)
    elif kind == "Bounce":
        recipients = detail.get("bouncedRecipients") or [{}]
        first = recipients[0] if isinstance(recipients[0], dict) else {}
        mapped.add(
            kind, type="bounced", occurred_at=at, **common,
            # Permanent: the address does not exist; Transient and Undetermined may pass later.
            bounce_type="hard" if detail.get("bounceType") == "Permanent" else "soft",
            reason=text(first.get("diagnosticCode") or detail.get("bounceSubType")),
        )
    elif kind == "Complaint":
        mapped.add(kind, type="complained", occurred_at=at, reason=text(detail.get("complaintFeedbackType")), **common)
    elif kind == "Open":
        mapped.add(kind, type="opened", occurred_at=at, user_agent=text(detail.get("userAgent")), **common)
    elif kind == "Click":
        mapped.add(kind, type="clicked", occurred_at=at, url=text(detail.get("link"), 4000),
                   user_agent=text(detail.get("userAgent")), **common)
    elif kind == "Subscription" and (detail.get("newTopicPreferences") or {}).get("unsubscribeAll"):
        mapped.add(kind, type="unsubscribed", occurred_at=at, **common)
    else:
        mapped.skipped.append(f"{kind}: not an event the engine records")
    return mapped
