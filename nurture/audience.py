"""Whether a contact belongs to an audience: trigger conditions, segments and suppression.

The same condition code the enrollment workflow runs, evaluated on the contact's row and,
when a condition looks at events (``had pricing_viewed within 7d``), on the contact's
recent events read from the database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import and_, cast, func, or_
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.flow.conditions import (
    AllCondition,
    AnyCondition,
    Condition,
    EventFact,
    ListCondition,
    PropertyCondition,
    TagCondition,
    evaluate,
    event_lookback,
)
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


async def recent_events_of(
    session: AsyncSession, contact_ids: Iterable[int], conditions: Iterable[Condition | None], now: datetime
) -> dict[int, list[EventFact]] | None:
    """The events any of the conditions look at, for many contacts in one query (by contact id),
    or None when none looks at events. Evaluate each contact with ``evaluate_on``."""
    lookback: dict[str, timedelta] = {}
    for condition in conditions:
        for event_type, within in (event_lookback(condition) if condition is not None else {}).items():
            lookback[event_type] = max(lookback.get(event_type, timedelta()), within)
    if not lookback:
        return None
    ids = sorted(set(contact_ids))
    found: dict[int, list[EventFact]] = {contact_id: [] for contact_id in ids}
    if not ids:
        return found
    rows = await session.exec(
        select(Event).where(
            col(Event.contact_id).in_(ids),
            col(Event.type).in_(sorted(lookback)),
            Event.occurred_at >= now - max(lookback.values()),
            Event.occurred_at <= now,
        )
    )
    for event in rows.all():
        found[event.contact_id].append(EventFact(type=event.type, at=event.occurred_at, properties=event.properties))
    return found


def evaluate_on(
    condition: Condition, contact_id: int, fields: dict[str, Any], events: dict[int, list[EventFact]] | None, now: datetime
) -> bool:
    """``matches`` on events read beforehand by ``recent_events_of`` (a superset is fine: each
    event condition picks its own type and window)."""
    return evaluate(condition, fields, {}, events.get(contact_id, []) if events is not None else None, now)


def suppressing_on(
    contact_id: int, fields: dict[str, Any], policy: EnrollmentPolicy | None,
    events: dict[int, list[EventFact]] | None, now: datetime,
) -> int | None:
    """``suppressing`` on events read beforehand by ``recent_events_of``."""
    for index, condition in enumerate(policy.suppress if policy else []):
        if evaluate_on(condition, contact_id, fields, events, now):
            return index
    return None


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


# --- narrowing a scan in SQL ---------------------------------------------------------------

# Built-in text columns: ``ContactSnapshot.fields()`` lets them win over custom properties, so a
# condition on one of these names reads the column.
_TEXT_COLUMNS = {
    name: getattr(Contact, name)
    for name in ("email", "name", "company", "timezone", "lifecycle_stage", "owner", "phone", "subscription_status")
}
_JSON_LISTS = {"list": Contact.lists, "tag": Contact.tags}
# The one character outside ASCII whose Python lowercase is ASCII (KELVIN SIGN -> "k"): a value that
# holds it may equal an ASCII condition value in ``evaluate`` while SQL's lower() leaves it alone.
_KELVIN = "\u212a"


def _plain(value: Any) -> bool:
    """Text SQL lowers as Python does, and JSON stores as it is: printable ASCII, no quote or backslash."""
    return isinstance(value, str) and value.isascii() and value.isprintable() and '"' not in value and "\\" not in value


def _equals_any(column: Any, values: list[str]) -> Any:
    """``column`` equals one of ``values`` ignoring case, as ``evaluate`` compares (a superset of it)."""
    lowered = sorted({v.lower() for v in values})
    return or_(func.lower(column).in_(lowered), col(column).contains(_KELVIN, autoescape=True))


def _holds(column: Any, value: str) -> Any:
    """The JSON list in ``column`` may hold ``value`` (ignoring case): its text contains it."""
    text = func.lower(cast(column, sa.Text))
    return or_(text.contains(value.lower(), autoescape=True), text.contains("\\u212a", autoescape=True))


def prefilter(condition: Condition | None) -> Any | None:
    """A SQL condition that every contact matching ``condition`` meets, or None when none can be said.

    A superset, never exact: the caller still evaluates each row it reads (``evaluate_on``), so
    nobody is matched by SQL alone, and whatever SQL cannot say (custom properties, events,
    negations, other operators) lets rows through instead of ruling them out. What it rules out
    are the contacts a segment plainly excludes (``company eq acme``, ``tag webinar``), so that a
    bulk page does not read, snapshot and evaluate every other contact in the table.
    """
    if condition is None:
        return None
    if isinstance(condition, PropertyCondition):
        column = _TEXT_COLUMNS.get(condition.property)
        if column is None:
            return None
        if condition.op == "eq" and _plain(condition.value):
            return _equals_any(column, [condition.value])
        if condition.op == "in" and isinstance(condition.value, list) and condition.value and all(
            _plain(v) for v in condition.value
        ):
            return _equals_any(column, condition.value)
        return None
    if isinstance(condition, (ListCondition, TagCondition)):
        value = condition.list if isinstance(condition, ListCondition) else condition.tag
        return _holds(_JSON_LISTS[condition.kind], value) if _plain(value) else None
    if isinstance(condition, AllCondition):
        parts = [p for p in (prefilter(c) for c in condition.all) if p is not None]
        return and_(*parts) if parts else None
    if isinstance(condition, AnyCondition):
        parts = [prefilter(c) for c in condition.any]
        return or_(*parts) if parts and all(p is not None for p in parts) else None
    return None
