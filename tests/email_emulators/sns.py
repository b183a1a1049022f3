"""SNS's HTTP delivery of SES events, signed like SNS signs them, with a test certificate.

moto's SNS signs nothing real (and names a certificate on the internet), so this emulator signs
the messages itself: SignatureVersion 2 (SHA256withRSA) over SNS's documented string to sign,
with the certificate served on loopback at ``cert_url``. ``subscribe_url`` answers like SNS's
ConfirmSubscription and records the tokens confirmed. Message bodies follow SES's event
publishing format (https://docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html).
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nurture.email_webhooks.ses import string_to_sign

TOPIC = "arn:aws:sns:us-east-1:123456789012:ses-events"
CERT_PATH = "/SimpleNotificationService-test.pem"


def _certificate(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.us-east-1.amazonaws.com")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


class SnsEmulator:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = _certificate(self.key)
        self.base_url = ""
        self.cert_fetches = 0
        self.confirmed: list[str] = []
        self.app = Starlette(routes=[Route(CERT_PATH, self.certificate), Route("/", self.confirm_subscription)])

    async def certificate(self, request: Request) -> Response:
        self.cert_fetches += 1
        return Response(self.pem, media_type="application/x-pem-file")

    async def confirm_subscription(self, request: Request) -> Response:
        if request.query_params.get("Action") != "ConfirmSubscription":
            return Response("<ErrorResponse><Error><Code>InvalidAction</Code></Error></ErrorResponse>", 400)
        self.confirmed.append(request.query_params["Token"])
        arn = f"{request.query_params['TopicArn']}:{uuid.uuid4()}"
        return Response(
            f"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>{arn}</SubscriptionArn>"
            "</ConfirmSubscriptionResult></ConfirmSubscriptionResponse>", media_type="text/xml",
        )

    def _signed(self, message: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        message.update({"SignatureVersion": "2", "SigningCertURL": self.base_url + CERT_PATH})
        signature = (key or self.key).sign(string_to_sign(message), padding.PKCS1v15(), hashes.SHA256())
        message["Signature"] = base64.b64encode(signature).decode()
        return message

    def subscription_confirmation(self, topic: str = TOPIC) -> dict[str, Any]:
        token = uuid.uuid4().hex * 2
        return self._signed({
            "Type": "SubscriptionConfirmation", "MessageId": str(uuid.uuid4()), "Token": token, "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.\nTo confirm the subscription, visit the SubscribeURL included in this message.",
            "SubscribeURL": f"{self.base_url}/?Action=ConfirmSubscription&TopicArn={topic}&Token={token}",
            "Timestamp": _now(),
        })

    def notification(self, ses_event: dict[str, Any], topic: str = TOPIC, key: rsa.RSAPrivateKey | None = None) -> dict[str, Any]:
        return self._signed({
            "Type": "Notification", "MessageId": str(uuid.uuid4()), "TopicArn": topic,
            "Message": json.dumps(ses_event), "Timestamp": _now(),
            "UnsubscribeURL": f"{self.base_url}/?Action=Unsubscribe&SubscriptionArn={topic}:x",
        }, key)

    @staticmethod
    def post(message: dict[str, Any]) -> dict[str, Any]:
        """The request SNS makes: the JSON message as text/plain, with its x-amz-sns headers."""
        return {"content": json.dumps(message).encode(), "headers": {
            "content-type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": message["Type"],
            "x-amz-sns-message-id": message["MessageId"], "x-amz-sns-topic-arn": message["TopicArn"],
        }}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def ses_event(kind: str, ses_message_id: str, to: str, tags: dict[str, str], **detail: Any) -> dict[str, Any]:
    """An SES event (event publishing): ``Delivery``, ``Bounce``, ``Complaint``, ``Open``, ``Click``, ``Subscription``."""
    at = _now()
    mail = {"timestamp": at, "source": "marketing@example.com", "messageId": ses_message_id, "destination": [to],
            "headersTruncated": False, "tags": {name: [value] for name, value in tags.items()}}
    bodies: dict[str, dict[str, Any]] = {
        "Delivery": {"timestamp": at, "processingTimeMillis": 546, "recipients": [to], "smtpResponse": "250 ok",
                     "reportingMTA": "a8-70.smtp-out.amazonses.com"},
        "Bounce": {"bounceType": "Permanent", "bounceSubType": "General", "timestamp": at, "feedbackId": str(uuid.uuid4()),
                   "bouncedRecipients": [{"emailAddress": to, "action": "failed", "status": "5.1.1",
                                          "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "Complaint": {"complainedRecipients": [{"emailAddress": to}], "timestamp": at, "feedbackId": str(uuid.uuid4()),
                      "complaintFeedbackType": "abuse"},
        "Open": {"ipAddress": "192.0.2.1", "timestamp": at, "userAgent": "Mozilla/5.0 (Windows NT 10.0)"},
        "Click": {"ipAddress": "192.0.2.1", "timestamp": at, "userAgent": "Mozilla/5.0", "link": "https://example.com/a"},
        "Subscription": {"contactList": "marketing", "timestamp": at, "source": "UnsubscribeHeader",
                         "newTopicPreferences": {"unsubscribeAll": True}},
    }
    body = {**bodies[kind], **detail}
    return {"eventType": kind, "mail": mail, kind.lower(): body}
