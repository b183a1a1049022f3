"""How many existing contacts a flow would enroll now: the "before going live" estimate.

Counted the way the triggers enroll: the contacts the trigger picks now, less those
that are not subscribed, those the flow suppresses, and those its re-enrollment policy
keeps out because they are (or were) enrolled already.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.enrolling import date_window, due_since
from activities.occurrences import date_occurrences
from nurture import audience
from nurture.enrolling import may_reenroll
from nurture.flow.conditions import matches_properties
from nurture.flow.language import EventTrigger, FlowDefinition
from nurture.flow.triggers import DateTrigger, InactivityTrigger, PropertyTrigger
from nurture.models import Contact, Enrollment, Event, SubscriptionStatus
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

EVENT_LOOKBACK = timedelta(days=30)
UPCOMING = timedelta(days=30)
PAGE = 1000
SAMPLE = 10


class Estimate(BaseModel):
    trigger: str
    would_enroll: int = Field(description="Contacts the trigger would enroll now, after every exclusion.")
    matching: int = Field(description="Contacts the trigger picks now, before exclusions.")
    excluded: dict[str, int] = Field(
        default_factory=dict, description="Why matching contacts would not enroll: unsubscribed, bounced, suppressed, already_enrolled."
    )
    examined: int = Field(description="Contacts looked at.")
    upcoming_30d: int | None = Field(
        default=None, description="Date triggers: contacts whose date falls in the next 30 days (not excluded)."
    )
    basis: str = Field(description="What 'now' means for this trigger.")
    sample_contact_ids: list[int] = Field(default_factory=list, description="Some of the contacts that would enroll.")
    at: datetime


def basis_of(definition: FlowDefinition, settings: Settings) -> str:
    trigger = definition.trigger
    if isinstance(trigger, EventTrigger):
        return f"contacts who had '{trigger.event}' (with its filters) in the last 30 days"
    if isinstance(trigger, PropertyTrigger):
        return "contacts who match the condition now (the trigger enrolls them when they start to match; bulk-enroll those who already do)"
    if isinstance(trigger, DateTrigger):
        hours = int(date_window(settings).total_seconds() // 3600)
        return f"contacts whose '{trigger.property}' date (with offset) fell in the last {hours} hours, as the next scan would enroll them"
    if isinstance(trigger, InactivityTrigger):
        return f"contacts without activity for {trigger.days} days who were not enrolled since"
    return "a manual flow enrolls only through the API or a bulk enrollment"


async def estimate(
    session: AsyncSession, definition: FlowDefinition, flow_id: int | None, now: datetime, settings: Settings
) -> Estimate:
    trigger = definition.trigger
    result = Estimate(trigger=trigger.type, would_enroll=0, matching=0, examined=0, basis=basis_of(definition, settings), at=now)
    if trigger.type == "manual":
        return result
    if isinstance(trigger, DateTrigger):
        result.upcoming_30d = 0
    latest = await _latest_enrollments(session, flow_id)
    with_events = await _contacts_with_event(session, trigger, now) if isinstance(trigger, EventTrigger) else None

    cursor = 0
    while True:
        query = select(Contact).where(Contact.id > cursor).order_by(Contact.id).limit(PAGE)
        if with_events is not None:
            query = query.where(col(Contact.id).in_(sorted(with_events)))
        contacts = list((await session.exec(query)).all())
        scanned = isinstance(trigger, (DateTrigger, InactivityTrigger))
        events = await audience.recent_events_of(session, [c.id for c in contacts], [trigger.condition], now) if scanned else None  # type: ignore[union-attr]
        for contact in contacts:
            assert contact.id is not None
            result.examined += 1
            fields = contact_snapshot(contact).fields()
            since: datetime | None = None
            if isinstance(trigger, (DateTrigger, InactivityTrigger)):
                since = due_since(definition, contact, now, settings, events)
                if since is None:
                    if isinstance(trigger, DateTrigger) and await _upcoming(session, definition, trigger, contact, now, settings):
                        result.upcoming_30d = (result.upcoming_30d or 0) + 1
                    continue
            elif isinstance(trigger, PropertyTrigger):
                if not await audience.matches(session, contact.id, fields, trigger.condition, now):
                    continue
            result.matching += 1
            reason = await _exclusion(session, definition, contact, latest.get(contact.id), since, now)
            if reason is not None:
                result.excluded[reason] = result.excluded.get(reason, 0) + 1
                continue
            result.would_enroll += 1
            if len(result.sample_contact_ids) < SAMPLE:
                result.sample_contact_ids.append(contact.id)
        if len(contacts) < PAGE:
            return result
        cursor = contacts[-1].id  # type: ignore[assignment]


async def _exclusion(
    session: AsyncSession,
    definition: FlowDefinition,
    contact: Contact,
    latest: Enrollment | None,
    since: datetime | None,
    now: datetime,
) -> str | None:
    """Why the contact would not enroll, in the order the enroller checks: status, suppression, policy."""
    if contact.subscription_status != SubscriptionStatus.subscribed:
        return str(contact.subscription_status)
    if await _suppressed(session, definition, contact, now):
        return "suppressed"
    if latest is not None:
        if since is not None and latest.started_at >= since:
            return "already_enrolled"
        if not may_reenroll(definition.enrollment, latest, now):
            return "already_enrolled"
    return None


async def _suppressed(session: AsyncSession, definition: FlowDefinition, contact: Contact, now: datetime) -> bool:
    assert contact.id is not None
    fields = contact_snapshot(contact).fields()
    return await audience.suppressing(session, contact.id, fields, definition.enrollment, now) is not None


async def _upcoming(
    session: AsyncSession, definition: FlowDefinition, trigger: DateTrigger, contact: Contact, now: datetime, settings: Settings
) -> bool:
    """Whether the date falls in the next 30 days for a contact who could then be enrolled."""
    fields = contact_snapshot(contact).fields()
    falls = date_occurrences(trigger, fields, contact.timezone, definition.timezone, now, now + UPCOMING, settings.default_send_time)
    if not falls or contact.subscription_status != SubscriptionStatus.subscribed:
        return False
    assert contact.id is not None
    if trigger.condition is not None and not await audience.matches(session, contact.id, fields, trigger.condition, now):
        return False
    return not await _suppressed(session, definition, contact, now)


async def _latest_enrollments(session: AsyncSession, flow_id: int | None) -> dict[int, Enrollment]:
    if flow_id is None:
        return {}
    latest: dict[int, Enrollment] = {}
    for row in (await session.exec(select(Enrollment).where(Enrollment.flow_id == flow_id))).all():
        if row.contact_id not in latest or row.sequence > latest[row.contact_id].sequence:
            latest[row.contact_id] = row
    return latest


async def _contacts_with_event(session: AsyncSession, trigger: EventTrigger, now: datetime) -> set[int]:
    rows = await session.exec(
        select(Event).where(Event.type == trigger.event, Event.occurred_at >= now - EVENT_LOOKBACK, Event.occurred_at <= now)
    )
    return {e.contact_id for e in rows.all() if matches_properties(trigger.where, e.properties)}
