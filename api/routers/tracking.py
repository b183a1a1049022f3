"""Engagement tracking: the open pixel, click redirects and email provider webhooks.

Pixel and click links are public (they are in the emails) and carry signed, expiring
tokens (nurture/tracking.py). A bad token is 404, an expired one 410; a click is only
ever redirected to the URL inside its signed token, never to one from the request, and only
when that link is one the message was sent with (else 404).
Provider webhooks are signed with ``email_webhook_secret`` (nurture/signatures.py).
"""

from __future__ import annotations

import base64
import time
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from api.deps import SessionDep, SettingsDep, TemporalDep
from api.schemas.observability import WebhookOut
from nurture.engagement import EngagementRecorder, ProviderBatch
from nurture.enrolling import Enroller, TemporalUnavailable
from nurture.logging import get_logger
from nurture.metrics import EMAIL_WEBHOOK_EVENTS, TRACKING_HITS, TRACKING_UNRECORDED
from nurture.models import utcnow
from nurture.signatures import HEADER, SignatureInvalid, verify
from nurture.tracking import TokenExpired, TokenInvalid, read_token, sent_with

router = APIRouter(tags=["tracking"])

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_STORE = {"Cache-Control": "no-store, no-cache, must-revalidate, private", "Pragma": "no-cache"}
Token = Annotated[str, Path(min_length=3, max_length=4000)]


def _pixel(status_code: int = 200) -> Response:
    return Response(content=PIXEL, media_type="image/gif", status_code=status_code, headers=NO_STORE)


def _batch_schema() -> dict:
    """The body is read raw (its signature covers the bytes): its schema is declared by hand, inlined."""
    schema = ProviderBatch.model_json_schema()
    report = schema.pop("$defs")["ProviderEvent"]
    schema["properties"]["events"]["items"] = report
    return schema


def _enroller_of(temporal, settings):
    async def get() -> Enroller:
        return Enroller(await temporal.get(), settings)

    return get


@router.get(
    "/t/o/{token}.gif",
    response_class=Response,
    responses={200: {"content": {"image/gif": {}}, "description": "A 1x1 GIF, whatever happens"}, 404: {}, 410: {}},
)
async def open_pixel(
    token: Token,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    user_agent: Annotated[str | None, Header()] = None,
) -> Response:
    """Records an open of the message in the token and answers a 1x1 GIF (also with 404 for a
    bad token and 410 for an expired one, so the email never shows a broken image)."""
    now = utcnow()
    try:
        parsed = read_token(settings.tracking_secret, token, "open", now)
    except TokenInvalid:
        TRACKING_UNRECORDED.labels("invalid").inc()
        return _pixel(404)
    except TokenExpired:
        TRACKING_UNRECORDED.labels("expired").inc()
        return _pixel(410)
    recorder = EngagementRecorder(session, settings, _enroller_of(temporal, settings))
    message = await recorder.message(parsed.message_id)
    if message is None:
        TRACKING_UNRECORDED.labels("unknown_message").inc()
        return _pixel()
    try:
        recorded = await recorder.opened(message, user_agent, now)
        await session.commit()
    except TemporalUnavailable as exc:
        # The reader still gets the image; the open is not half-recorded without its signal.
        await session.rollback()
        TRACKING_UNRECORDED.labels("temporal_unavailable").inc()
        get_logger(message_id=parsed.message_id).warning("open_not_recorded", error=str(exc))
        return _pixel()
    TRACKING_HITS.labels("open", str(recorded.bot_reason is not None).lower()).inc()
    get_logger(contact_id=message.contact_id, message_id=message.id).info("email_opened", bot=recorded.bot_reason)
    return _pixel()


@router.get(
    "/t/c/{token}",
    status_code=302,
    response_class=RedirectResponse,
    responses={302: {"description": "To the link's URL, from the signed token"}, 404: {}, 410: {}},
)
async def click_redirect(
    token: Token,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    user_agent: Annotated[str | None, Header()] = None,
) -> RedirectResponse:
    """Records a click and redirects to the URL signed into the token. A tampered token, or one that
    is not a link of a sent message, is 404 and an expired one 410: none of them ever redirects."""
    now = utcnow()
    try:
        parsed = read_token(settings.tracking_secret, token, "click", now)
    except TokenInvalid as exc:
        TRACKING_UNRECORDED.labels("invalid").inc()
        raise HTTPException(status_code=404, detail="unknown link") from exc
    except TokenExpired as exc:
        TRACKING_UNRECORDED.labels("expired").inc()
        raise HTTPException(status_code=410, detail="this link has expired") from exc
    assert parsed.url is not None
    recorder = EngagementRecorder(session, settings, _enroller_of(temporal, settings))
    message = await recorder.message(parsed.message_id)
    if message is None or not sent_with(message.html, token):
        TRACKING_UNRECORDED.labels("unknown_message" if message is None else "unknown_link").inc()
        raise HTTPException(status_code=404, detail="unknown link")
    target = RedirectResponse(parsed.url, status_code=302, headers=NO_STORE)
    try:
        await recorder.clicked(message, parsed.url, user_agent, now)
        await session.commit()
    except TemporalUnavailable as exc:
        await session.rollback()
        TRACKING_UNRECORDED.labels("temporal_unavailable").inc()
        get_logger(message_id=parsed.message_id).warning("click_not_recorded", error=str(exc))
        return target
    TRACKING_HITS.labels("click", "false").inc()
    get_logger(contact_id=message.contact_id, message_id=message.id).info("email_clicked", url=parsed.url)
    return target


@router.post(
    "/webhooks/email/{provider}",
    response_model=WebhookOut,
    responses={401: {"description": "Missing or wrong signature"}, 503: {"description": "Temporal is unreachable: retry"}},
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _batch_schema()}}}},
)
async def email_webhook(
    provider: Annotated[str, Path(pattern=r"^[a-z0-9_-]{1,40}$")],
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
) -> WebhookOut:
    """Delivery reports from the email provider: `delivered`, `bounced` (hard or soft), `complained`,
    `opened`, `clicked`, `unsubscribed`. (SES, SendGrid, Postmark and Mailgun post their own format
    to their own endpoints: `/webhooks/ses` ...)

    Signed like our own webhooks: `X-Nurture-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
    with `email_webhook_secret`. Each report becomes an event on the contact and is routed to its
    enrollments; a hard bounce makes the contact `bounced`, a complaint `unsubscribed`, and its
    enrollments exit. A report already received (same `id`) is counted as a duplicate. All or
    nothing: when Temporal is unreachable the answer is 503 and the provider should retry.
    """
    body = await request.body()
    try:
        verify(settings.email_webhook_secret, request.headers.get(HEADER), body, time.time(), settings.email_webhook_tolerance_seconds)
    except SignatureInvalid as exc:
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    try:
        batch = ProviderBatch.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        ) from exc
    recorder = EngagementRecorder(session, settings, _enroller_of(temporal, settings))
    done = await recorder.provider_reports(provider, batch.events, [f"events[{i}]" for i in range(len(batch.events))])
    await session.commit()
    for kind in done.recorded:
        EMAIL_WEBHOOK_EVENTS.labels(provider, kind).inc()
    get_logger(provider=provider).info(
        "email_webhook", recorded=len(done.recorded), duplicates=done.duplicates, ignored=len(done.ignored)
    )
    return WebhookOut(recorded=len(done.recorded), duplicates=done.duplicates, ignored=done.ignored)
