"""Calendar waits resolved to instants, in the contact's time zone, outside the workflow sandbox.

The workflow records the answer in its history, so replays never consult a
time zone database that may have changed since.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from nurture.contracts import RecentEvents, RecentEventsInput, ResolvedTime, ResolveTimeInput
from nurture.db import Database
from nurture.flow.conditions import EventFact
from nurture.flow.language import WEEKDAYS
from nurture.models import Event


def zone_for(contact_zone: str | None, fallback: str) -> ZoneInfo:
    for name in (contact_zone, fallback, "UTC"):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def add_months(day: date, months: int) -> date:
    month_index = day.month - 1 + months
    year, month = day.year + month_index // 12, month_index % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, calendar.monthrange(year, month)[1]))


def on_year(day: date, year: int) -> date:
    """The anniversary in a given year; 29 February falls on the 28th in common years."""
    return day.replace(year=year, day=min(day.day, calendar.monthrange(year, day.month)[1]))


def local_instant(day: date, clock: time, zone: ZoneInfo) -> datetime:
    """A wall-clock time on a day in a zone, as UTC; a time skipped by DST moves forward."""
    naive = datetime.combine(day, clock)
    aware = naive.replace(tzinfo=zone)
    roundtrip = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if roundtrip != naive:  # in the spring-forward gap
        aware = (naive + timedelta(hours=1)).replace(tzinfo=zone)
    return aware.astimezone(UTC)


def parse_clock(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def parse_date_value(value, zone: ZoneInfo) -> tuple[date, time | None] | None:
    """A contact date property ('2026-03-01', an ISO datetime, a datetime) as a local date and time.

    A datetime with an offset is an instant: it is moved into the contact's zone first.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
    if isinstance(value, datetime):
        local = value.astimezone(zone) if value.tzinfo else value
        return local.date(), local.time().replace(tzinfo=None)
    if isinstance(value, date):
        return value, None
    return None


def resolve(spec: ResolveTimeInput, contact_fields: dict, contact_zone: str | None, default_time: str) -> ResolvedTime:
    zone = zone_for(contact_zone, spec.flow_timezone)
    now_local = spec.now.astimezone(zone)
    if spec.kind == "wait_until":
        clock = parse_clock(spec.time or default_time)
        allowed = {WEEKDAYS.index(d) for d in spec.weekdays} or set(range(7))
        for ahead in range(8):
            day = now_local.date() + timedelta(days=ahead)
            candidate = local_instant(day, clock, zone)
            if day.weekday() in allowed and candidate > spec.now:
                return ResolvedTime(at=candidate, timezone=zone.key, detail=f"{WEEKDAYS[day.weekday()]} {spec.time} {zone.key}")
        raise ApplicationError("no weekday matched", type="BadSchedule", non_retryable=True)

    if spec.date is not None:
        base = spec.date if spec.date.tzinfo else spec.date.replace(tzinfo=zone)
        base_local = base.astimezone(zone)
        base_day, base_clock, label = base_local.date(), base_local.time(), spec.date.isoformat()
    else:
        parsed = parse_date_value(contact_fields.get(spec.property or ""), zone)
        if parsed is None:
            return ResolvedTime(at=None, timezone=zone.key, detail=f"the contact has no usable '{spec.property}'")
        base_day, base_clock = parsed
        label = f"{spec.property} {base_day.isoformat()}"
    clock = parse_clock(spec.time) if spec.time else (base_clock or parse_clock(default_time))

    # Whole days move the local date, so "-30d at 09:00" is 09:00 local even across a DST change.
    sign = -1 if spec.offset_seconds < 0 else 1
    offset_days, offset_rest = divmod(abs(spec.offset_seconds), 86400)

    def target_for(day: date) -> datetime:
        shifted = add_months(day, spec.offset_months) + timedelta(days=sign * offset_days)
        return local_instant(shifted, clock, zone) + timedelta(seconds=sign * offset_rest)

    if spec.yearly:
        for year in range(now_local.year - 1, now_local.year + 2):
            candidate = target_for(on_year(base_day, year))
            if candidate > spec.now:
                return ResolvedTime(at=candidate, timezone=zone.key, detail=f"next {label} anniversary")
    target = target_for(base_day)
    if target <= spec.now:
        return ResolvedTime(at=None, timezone=zone.key, detail=f"{label} has passed ({target.isoformat()})")
    return ResolvedTime(at=target, timezone=zone.key, detail=label)


class SchedulingActivities:
    def __init__(self, db: Database, default_send_time: str = "09:00"):
        self.db = db
        self.default_send_time = default_send_time

    @activity.defn(name="resolve_time")
    async def resolve_time(self, input: ResolveTimeInput) -> ResolvedTime:
        """Pure (the contact travels in the input): the workflow runs it as a local activity."""
        return resolve(input, input.contact.fields(), input.contact.timezone, self.default_send_time)

    @activity.defn(name="recent_events")
    async def recent_events(self, input: RecentEventsInput) -> RecentEvents:
        async with self.db.session() as session:
            rows = await session.exec(
                select(Event)
                .where(Event.contact_id == input.contact_id, Event.type.in_(input.types), Event.occurred_at >= input.since)
                .order_by(Event.occurred_at)
                .limit(1000)
            )
            return RecentEvents(
                events=[EventFact(type=e.type, at=e.occurred_at, properties=e.properties) for e in rows.all()]
            )
