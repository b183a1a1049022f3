"""Whether a contact belongs to an audience: trigger conditions, segments and suppression.

The same condition code the enrollment workflow runs, evaluated on the contact's row and,
when a condition looks at events (``had pricing_viewed within 7d``), on the contact's
recent events read from the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.flow.conditions import Condition, EventFact, evaluate, event_lookback
from nurture.flow.triggers import EnrollmentPolicy
from nurture.models import Contact, Event


async def recent_events(session: AsyncSession, contact_id: int, condition: Condition, now: datetime) -> list[EventFact] | None:
    """The events the condition looks at, or None when it looks at none."""
    lookback = event_lookback(condition)
    if not lookback:
        return None
    rows = await session.exec(
        select(Event).where(
            Event.contact_id == contact_id,
            Event.type.in_(sorted(lookback)),  # type: ignore[attr-defined]
            Event.occurred_at >= now - max(lookback.values()),
            Event.occurred_at <= now,
        )
    )
    return [EventFact(type=e.type, at=e.occurred_at, properties=e.properties) for e in rows.all()]


async def matches(
    session: AsyncSession, contact_id: int, fields: dict[str, Any], condition: Condition, now: datetime
) -> bool:
    """Evaluate on the given contact fields (a snapshot: current or previous).

    Email engagement belongs to one enrollment and never holds here (validation refuses it).
    """
    events = await recent_events(session, contact_id, condition, now)
    return evaluate(condition, fields, {}, events, now)


async def suppressing(
    session: AsyncSession, contact_id: int, fields: dict[str, Any], policy: EnrollmentPolicy | None, now: datetime
) -> int | None:
    """The index of the first suppression condition the contact matches, or None."""
    for index, condition in enumerate(policy.suppress if policy else []):
        if await matches(session, contact_id, fields, condition, now):
            return index
    return None


def active_since(contact: Contact) -> datetime:
    """When the contact was last active: its latest event, else its creation."""
    return contact.last_activity_at or contact.created_at
