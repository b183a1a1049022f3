"""Consent links from the emails: one-click unsubscribe (RFC 8058) and double opt-in confirmation.

Both are public and carry signed, expiring tokens (nurture/tracking.py). A GET only shows a page
with a button: mail scanners follow links, so only a POST changes anything. A tampered token is
404, an expired one 410, both as a small HTML page.

An unsubscription is committed before any workflow is told, so it is never lost: with Temporal
unreachable the answer is still 200, and the enrollments stop at their next send anyway (send_email
refuses an unsubscribed contact). A repeated POST signals again and records nothing new.
"""

from __future__ import annotations

import html
import uuid
from typing import Annotated, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse
from sqlmodel import select

from api.deps import SessionDep, SettingsDep, TemporalDep
from nurture.enrolling import Enroller, TemporalUnavailable
from nurture.event_types import UNSUBSCRIBED
from nurture.logging import get_logger
from nurture.models import Contact, Event, SubscriptionStatus, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot
from nurture.tracking import ConsentToken, TokenExpired, TokenInvalid, read_consent_token

router = APIRouter(tags=["consent"])

Token = Annotated[str, Path(min_length=3, max_length=4000)]
NO_STORE = {"Cache-Control": "no-store, private"}
PAGE = {"content": {"text/html": {}}}
OPTIN_PROPERTY = "double_opt_in_confirmed_at"


class _Refused(Exception):
    def __init__(self, response: HTMLResponse):
        self.response = response


def _page(title: str, message: str, status_code: int = 200, button: str | None = None) -> HTMLResponse:
    form = (
        f'<form method="post"><input type="hidden" name="confirm" value="yes">'
        f'<button type="submit">{html.escape(button)}</button></form>'
        if button
        else ""
    )
    body = (
        '<!doctype html><html><head><meta charset="utf-8"><meta name="robots" content="noindex">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
        '</head><body style="font-family:sans-serif;max-width:32em;margin:4em auto;padding:0 1em">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>{form}</body></html>"
    )
    return HTMLResponse(body, status_code=status_code, headers=NO_STORE)


def _verified(settings: Settings, token: str, kind: Literal["unsubscribe", "optin"]) -> ConsentToken:
    try:
        return read_consent_token(settings.tracking_secret, token, kind, utcnow())
    except TokenInvalid as exc:
        raise _Refused(_page("Link not recognised", "This link is not valid. Please use the link from the email.", 404)) from exc
    except TokenExpired as exc:
        raise _Refused(_page("Link expired", "This link has expired. Please use the link from a more recent email.", 410)) from exc


async def _contact(session, parsed: ConsentToken, lock: bool = False) -> Contact:
    query = select(Contact).where(Contact.id == parsed.contact_id)
    contact = (await session.exec(query.with_for_update() if lock else query)).first()
    if contact is None:
        raise _Refused(_page("Link not recognised", "We have no subscription for this link.", 404))
    return contact


def _masked(email: str) -> str:
    name, _, domain = email.partition("@")
    return f"{name[:1]}***@{domain}" if domain else "your address"


# --- unsubscribe ---------------------------------------------------------------------------


@router.get("/u/{token}", response_class=HTMLResponse, responses={404: PAGE, 410: PAGE})
async def unsubscribe_page(token: Token, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The link in the email footer: a confirmation page with a button. Changes nothing."""
    try:
        contact = await _contact(session, _verified(settings, token, "unsubscribe"))
    except _Refused as refused:
        return refused.response
    if contact.subscription_status == SubscriptionStatus.unsubscribed:
        return _page("You are unsubscribed", f"{_masked(contact.email)} gets no more marketing email from us.")
    return _page(
        "Unsubscribe?", f"Stop all marketing email to {_masked(contact.email)}.", button="Unsubscribe"
    )


@router.post("/u/{token}", response_class=HTMLResponse, responses={404: PAGE, 410: PAGE})
async def unsubscribe(
    token: Token, request: Request, session: SessionDep, settings: SettingsDep, temporal: TemporalDep
) -> HTMLResponse:
    """Unsubscribe the contact: the target of `List-Unsubscribe` (body `List-Unsubscribe=One-Click`)
    and of the page's button. Every running enrollment of the contact exits. Idempotent."""
    try:
        parsed = _verified(settings, token, "unsubscribe")
        contact = await _contact(session, parsed, lock=True)
    except _Refused as refused:
        return refused.response
    fields = parse_qs((await request.body())[:2000].decode("utf-8", "replace"))
    source = "one_click" if fields.get("List-Unsubscribe") == ["One-Click"] else "link"
    log = get_logger(contact_id=contact.id, message_id=parsed.message_id)

    event: Event | None = None
    if contact.subscription_status != SubscriptionStatus.unsubscribed:
        now = utcnow()
        contact.subscription_status = SubscriptionStatus.unsubscribed
        contact.updated_at = now
        contact.last_activity_at = max(contact.last_activity_at or now, now)
        event = Event(
            event_id=f"unsubscribe-{uuid.uuid4().hex}",
            contact_id=contact.id,  # type: ignore[arg-type]
            type=UNSUBSCRIBED,
            properties={"message_id": parsed.message_id, "source": source},
            occurred_at=now,
        )
        session.add(contact)
        session.add(event)
        await session.commit()  # consent first: whatever happens to the signals below
        log.info("contact_unsubscribed", source=source)

    try:
        enroller = Enroller(await temporal.get(), settings)
        told = await enroller.contact_changed(session, contact)
        if event is not None:
            await enroller.route_event(session, contact, event)
        await session.commit()
        log.info("unsubscribe_signalled", enrollments=[e.id for e in told])
    except TemporalUnavailable as exc:
        # Recorded anyway: send_email refuses an unsubscribed contact, so nothing more goes out.
        await session.rollback()
        log.warning("unsubscribe_not_signalled", error=str(exc))
    return _page("You are unsubscribed", f"{_masked(contact.email)} gets no more marketing email from us.")


# --- double opt-in -------------------------------------------------------------------------


def _optin_event_id(parsed: ConsentToken) -> str:
    return f"optin:{parsed.flow_id}:{parsed.contact_id}"


@router.get("/optin/{token}", response_class=HTMLResponse, responses={404: PAGE, 410: PAGE})
async def optin_page(token: Token, session: SessionDep, settings: SettingsDep) -> HTMLResponse:
    """The confirmation link of a double opt-in email: a page with a button. Changes nothing."""
    try:
        parsed = _verified(settings, token, "optin")
        contact = await _contact(session, parsed)
    except _Refused as refused:
        return refused.response
    if (await session.exec(select(Event.id).where(Event.event_id == _optin_event_id(parsed)))).first() is not None:
        return _page("Subscription confirmed", "You have already confirmed. Thank you!")
    return _page(
        "Confirm your subscription", f"Confirm that {_masked(contact.email)} wants our emails.", button="Confirm"
    )


@router.post("/optin/{token}", response_class=HTMLResponse, responses={404: PAGE, 409: PAGE, 410: PAGE, 503: PAGE})
async def confirm_optin(token: Token, session: SessionDep, settings: SettingsDep, temporal: TemporalDep) -> HTMLResponse:
    """Record `optin_confirmed` (once per contact and flow), set the contact property
    `double_opt_in_confirmed_at` and tell the enrollments, so a `wait_for_event: optin_confirmed`
    ends at once. 503 when Temporal is unreachable: the confirmation is kept and a retry tells
    the enrollments."""
    try:
        parsed = _verified(settings, token, "optin")
        contact = await _contact(session, parsed, lock=True)
    except _Refused as refused:
        return refused.response
    if contact.subscription_status == SubscriptionStatus.unsubscribed:
        return _page("You are unsubscribed", "You unsubscribed after this request: we will not email you.", 409)
    log = get_logger(contact_id=contact.id, flow_id=parsed.flow_id)
    event = (await session.exec(select(Event).where(Event.event_id == _optin_event_id(parsed)))).first()
    first = event is None
    previous = contact_snapshot(contact)
    if event is None:
        now = utcnow()
        contact.properties = {**(contact.properties or {}), OPTIN_PROPERTY: now.isoformat()}
        contact.updated_at = now
        contact.last_activity_at = max(contact.last_activity_at or now, now)
        event = Event(
            event_id=_optin_event_id(parsed),
            contact_id=contact.id,  # type: ignore[arg-type]
            type="optin_confirmed",
            properties={"flow_id": parsed.flow_id},
            occurred_at=now,
        )
        session.add(contact)
        session.add(event)
        # Committed before the workflows hear it, so their own contact updates come after ours.
        await session.commit()
        log.info("optin_confirmed")
    try:
        enroller = Enroller(await temporal.get(), settings)
        if first:
            await enroller.contact_changed(session, contact, previous)
            await enroller.route_event(session, contact, event)
        else:
            await enroller.forward_event(session, contact, event)
        await session.commit()
    except TemporalUnavailable as exc:
        await session.rollback()
        log.warning("optin_not_signalled", error=str(exc))
        return _page("Please try again", "We recorded your confirmation but could not finish: please click again in a minute.", 503, button="Confirm")
    return _page("Subscription confirmed", "Thank you! Your subscription is confirmed.")
