"""When a date or inactivity trigger falls for one contact: pure calendar arithmetic.

A date trigger falls at the contact's date property plus the offset, at the trigger's
time of day in the contact's time zone (the flow's when the contact has none), every
year when ``yearly``. The same rules as a ``delay_until`` step (activities/scheduling.py).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from activities.scheduling import add_months, local_instant, on_year, parse_clock, parse_date_value, zone_for
from nurture.audience import active_since
from nurture.flow.triggers import DateTrigger, InactivityTrigger
from nurture.models import Contact


def date_occurrences(
    trigger: DateTrigger,
    fields: dict[str, Any],
    contact_zone: str | None,
    flow_zone: str,
    start: datetime,
    end: datetime,
    default_time: str,
) -> list[datetime]:
    """The instants in (start, end] at which the trigger falls for this contact, oldest first."""
    zone = zone_for(contact_zone, flow_zone)
    parsed = parse_date_value(fields.get(trigger.property), zone)
    if parsed is None:
        return []
    base_day, base_clock = parsed
    clock = parse_clock(trigger.time) if trigger.time else (base_clock or parse_clock(default_time))
    offset = trigger.offset
    months, seconds = (offset.months, offset.seconds) if offset is not None else (0, 0)
    sign = -1 if seconds < 0 else 1
    days, rest = divmod(abs(seconds), 86400)

    def falls_on(day: date) -> datetime:
        # Whole days move the local date, so "-30d at 09:00" is 09:00 local across a DST change.
        shifted = add_months(day, months) + timedelta(days=sign * days)
        return local_instant(shifted, clock, zone) + timedelta(seconds=sign * rest)

    if trigger.yearly:
        first, last = start.astimezone(zone).year - 1, end.astimezone(zone).year + 1
        candidates = [falls_on(on_year(base_day, year)) for year in range(first, last + 1)]
    else:
        candidates = [falls_on(base_day)]
    return sorted(at for at in candidates if start < at <= end)


def inactive_from(trigger: InactivityTrigger, contact: Contact) -> datetime:
    """The instant the contact has been inactive for ``days``."""
    return active_since(contact) + timedelta(days=trigger.days)
