"""Email providers' own event webhooks: SES (through SNS), SendGrid, Postmark and Mailgun.

Each endpoint checks the vendor's own scheme (nurture/email_webhooks/), maps its events to the
normalized reports and records them as ``POST /webhooks/email/{provider}`` does: delivered,
bounced (a hard bounce makes the contact ``bounced``), complained and unsubscribed (the contact is
``unsubscribed``), opened and clicked; the contact's enrollments hear of each, and leave on the
ones that end them. A report seen before is counted as a duplicate. Public in the auth policy
(``/webhooks/``): the signature is the credential. A provider whose webhook is not configured
answers 404, naming the setting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from api.deps import SessionDep, SettingsDep, TemporalDep
from api.schemas.observability import WebhookOut
from nurture.email_webhooks import Mapped, WebhookMalformed, WebhookRefused, mailgun, postmark, sendgrid, ses
from nurture.engagement import EngagementRecorder
from nurture.enrolling import Enroller
from nurture.logging import get_logger
from nurture.metrics import EMAIL_WEBHOOK_EVENTS
from nurture.models import WebhookToken, utcnow

router = APIRouter(tags=["provider webhooks"])

REFUSED = {"description": "The vendor's signature or credentials do not check out"}
NOT_CONFIGURED = {"description": "This provider's webhook is not configured (the detail names the setting)"}


def _body(description: str, content_type: str = "application/json") -> dict[str, Any]:
    """The body is read raw (signatures cover the bytes): its schema is declared here."""
    schema = {"type": "array", "items": {"type": "object"}} if "array" in description else {"type": "object"}
    return {"requestBody": {"required": True, "description": description, "content": {content_type: {"schema": schema}}}}


def _not_configured(setting: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"this provider's webhook is not configured: set {setting}")


async def _record(provider: str, mapped: Mapped, session, settings, temporal) -> WebhookOut:
    async def enroller() -> Enroller:
        return Enroller(await temporal.get(), settings)

    recorder = EngagementRecorder(session, settings, enroller)
    done = await recorder.provider_reports(provider, mapped.reports, [f"{provider} event {i}" for i in range(len(mapped.reports))])
    await session.commit()
    for kind in done.recorded:
        EMAIL_WEBHOOK_EVENTS.labels(provider, kind).inc()
    ignored = [*mapped.skipped, *done.ignored]
    get_logger(provider=provider).info(
        "email_webhook", recorded=len(done.recorded), duplicates=done.duplicates, ignored=len(ignored)
    )
    return WebhookOut(recorded=len(done.recorded), duplicates=done.duplicates, ignored=ignored)


@contextmanager
def _vendor_checks(refused_headers: dict[str, str] | None = None) -> Iterator[None]:
    """Around a vendor's verify-and-parse: a signature or credential that does not check out
    answers 401 (with ``refused_headers``), a body that is not the vendor's shape 400."""
    try:
        yield
    except WebhookRefused as exc:
        raise HTTPException(status_code=401, detail=str(exc), headers=refused_headers) from exc
    except WebhookMalformed as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from exc


@router.post(
    "/webhooks/ses",
    response_model=WebhookOut,
    responses={401: REFUSED, 404: NOT_CONFIGURED},
    openapi_extra=_body("An SNS message (Notification or SubscriptionConfirmation) carrying an SES event"),
)
async def ses_webhook(request: Request, session: SessionDep, settings: SettingsDep, temporal: TemporalDep) -> WebhookOut:
    """Amazon SES events through an SNS HTTPS subscription. The SNS signature is checked against its
    signing certificate (fetched from an SNS host, then kept); a subscription confirmation is
    confirmed by visiting its SubscribeURL (on an SNS host only)."""
    # Without the allow-list, any AWS account's topic could subscribe here and post real, signed lies.
    if not settings.ses.sns_topic_arns:
        raise _not_configured("NURTURE_SES__SNS_TOPIC_ARNS")
    with _vendor_checks():
        message = ses.parse(await request.body())
        verifier = ses.SnsVerifier(settings.ses)
        await verifier.verify(message)
        if message["Type"] == "SubscriptionConfirmation":
            await verifier.confirm(message)
            get_logger(provider="ses", topic=message["TopicArn"]).info("sns_subscription_confirmed")
            return WebhookOut(recorded=0, duplicates=0, ignored=[])
    if message["Type"] == "UnsubscribeConfirmation":
        get_logger(provider="ses", topic=message["TopicArn"]).warning("sns_unsubscribed")
        return WebhookOut(recorded=0, duplicates=0, ignored=["UnsubscribeConfirmation: the topic no longer posts here"])
    return await _record("ses", ses.reports(message), session, settings, temporal)


@router.post(
    "/webhooks/sendgrid",
    response_model=WebhookOut,
    responses={401: REFUSED, 404: NOT_CONFIGURED},
    openapi_extra=_body("SendGrid's Event Webhook: a JSON array of events"),
)
async def sendgrid_webhook(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    signature: Annotated[str | None, Header(alias=sendgrid.SIGNATURE_HEADER, max_length=400)] = None,
    timestamp: Annotated[str | None, Header(alias=sendgrid.TIMESTAMP_HEADER, max_length=40)] = None,
) -> WebhookOut:
    """SendGrid's Signed Event Webhook: ECDSA signature of the timestamp and body, with the
    verification key from SendGrid's console (`NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY`)."""
    if not settings.sendgrid.webhook_public_key:
        raise _not_configured("NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY")
    body = await request.body()
    try:
        key = sendgrid.public_key(settings.sendgrid.webhook_public_key)
    except ValueError as exc:
        raise _not_configured(f"NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY correctly ({exc})") from exc
    with _vendor_checks():
        sendgrid.verify(key, signature, timestamp, body, time.time(), settings.email_webhook_tolerance_seconds)
        events = sendgrid.parse(body)
    return await _record("sendgrid", sendgrid.reports(events), session, settings, temporal)


@router.post(
    "/webhooks/postmark",
    response_model=WebhookOut,
    responses={401: REFUSED, 404: NOT_CONFIGURED},
    openapi_extra=_body("One Postmark webhook record (Delivery, Bounce, SpamComplaint, Open, Click, SubscriptionChange)"),
)
async def postmark_webhook(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    authorization: Annotated[str | None, Header(max_length=1000)] = None,
) -> WebhookOut:
    """Postmark's webhooks, authenticated by the basic auth written into the webhook URL
    (`NURTURE_POSTMARK__WEBHOOK_USERNAME`, `NURTURE_POSTMARK__WEBHOOK_PASSWORD`)."""
    s = settings.postmark
    if not (s.webhook_username and s.webhook_password):
        raise _not_configured("NURTURE_POSTMARK__WEBHOOK_USERNAME and NURTURE_POSTMARK__WEBHOOK_PASSWORD")
    with _vendor_checks(refused_headers={"WWW-Authenticate": "Basic"}):
        postmark.verify(s.webhook_username, s.webhook_password, authorization)
        record = postmark.parse(await request.body())
    return await _record("postmark", postmark.reports(record), session, settings, temporal)


@router.post(
    "/webhooks/mailgun",
    response_model=WebhookOut,
    responses={
        401: REFUSED, 404: NOT_CONFIGURED,
        406: {"description": "This signed request was received before (its token is spent): Mailgun does not retry a 406"},
    },
    openapi_extra=_body("A Mailgun webhook: signature and event-data"),
)
async def mailgun_webhook(request: Request, session: SessionDep, settings: SettingsDep, temporal: TemporalDep) -> WebhookOut:
    """Mailgun's webhooks: HMAC-SHA256 of timestamp and token with the webhook signing key
    (`NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY`); a token is taken once, a replay is refused with 406."""
    if not settings.mailgun.webhook_signing_key:
        raise _not_configured("NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY")
    with _vendor_checks():
        signature, event = mailgun.parse(await request.body())
        mailgun.verify(settings.mailgun.webhook_signing_key, signature, time.time(), settings.email_webhook_tolerance_seconds)
    token = signature["token"]
    seen = await session.exec(select(WebhookToken).where(WebhookToken.provider == "mailgun", WebhookToken.token == token))
    if seen.first() is not None:
        raise HTTPException(status_code=406, detail="this webhook's token was used before: a replay is refused")
    # Spent with the reports, in one commit: a request answered 503 leaves it unspent for Mailgun's retry.
    session.add(WebhookToken(provider="mailgun", token=token))
    # A token seen more than twice the tolerance ago can only come back with a timestamp the check
    # above refuses (it was within the tolerance of that sighting): its row is no longer needed.
    forgotten = utcnow() - timedelta(seconds=2 * settings.email_webhook_tolerance_seconds)
    await session.exec(delete(WebhookToken).where(WebhookToken.provider == "mailgun", WebhookToken.seen_at < forgotten))
    try:
        await session.flush()
    except IntegrityError as exc:  # the same request, at the same moment, on another connection
        await session.rollback()
        raise HTTPException(status_code=406, detail="this webhook's token was used before: a replay is refused") from exc
    return await _record("mailgun", mailgun.reports(event), session, settings, temporal)
