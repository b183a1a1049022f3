"""Durations written the way marketers write them: ``2d``, ``1d12h``, ``90m``, ``1w``.

ISO 8601 (``P2D``, ``PT36H``) and plain seconds are accepted too.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, PlainSerializer, ValidationInfo

# A hard ceiling for every duration and offset, whatever the settings say: a century keeps every
# date computed from one (now + a delay, a pause's end) far from datetime's year 9999.
MAX_DURATION_DAYS = 36_500
_CEILING_SECONDS = MAX_DURATION_DAYS * 86400
_CEILING_MONTHS = MAX_DURATION_DAYS * 12 // 365
# Validation context key for the deployment's own, lower, bound (FlowLimits.validation_context()).
DURATION_LIMIT = "max_duration_days"
_MAX_DIGITS = 15

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_COMPACT = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ISO = re.compile(r"^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        match = _COMPACT.match(text.lower()) or _ISO.match(text.upper())
        if not text or not match or not any(match.groups()):
            raise ValueError(f"'{value}' is not a duration: write it like 2d, 36h, 90m, 1w2d or P2D")
        if any(g is not None and len(g) > _MAX_DIGITS for g in match.groups()):
            raise _too_long(value)
        seconds = sum(int(g or 0) * u for g, u in zip(match.groups(), _UNITS.values()))
    else:
        raise ValueError("a duration is a string like 2d, 36h or 90m, or a number of seconds")
    if seconds != seconds or seconds <= 0:  # NaN compares false to everything
        raise ValueError("a duration must be longer than zero")
    if seconds > _CEILING_SECONDS:
        raise _too_long(value)
    return timedelta(seconds=seconds)


def _too_long(value: Any) -> ValueError:
    return ValueError(f"'{value}' is too long: a duration or offset is at most {MAX_DURATION_DAYS} days")


def _within_limit(value: Any, length: timedelta, info: ValidationInfo) -> None:
    """The deployment's bound (a setting), when the caller validates with one in the context."""
    limit = (info.context or {}).get(DURATION_LIMIT)
    if limit is not None and length > timedelta(days=limit):
        raise ValueError(f"'{value}' is longer than {limit} days (the max_duration_days limit)")


def _bounded_duration(value: Any, info: ValidationInfo) -> timedelta:
    duration = parse_duration(value)
    _within_limit(value, duration, info)
    return duration


def format_duration(value: timedelta) -> str:
    remaining = int(value.total_seconds())
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(_bounded_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


_OFFSET = re.compile(r"^([+-])?(?:(\d+)y)?(?:(\d+)mo)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


class CalendarOffset(BaseModel):
    """An offset from a date: calendar months and years stay calendar-true (Jan 31 + 1mo = Feb 28)."""

    months: int = Field(default=0, ge=-_CEILING_MONTHS, le=_CEILING_MONTHS)
    seconds: int = Field(default=0, ge=-_CEILING_SECONDS, le=_CEILING_SECONDS)

    def length(self) -> timedelta:
        """About how far it reaches (a month counted as 30 days), to compare with a bound."""
        return timedelta(days=abs(self.months) * 30, seconds=abs(self.seconds))

    def __str__(self) -> str:
        sign = "-" if self.months < 0 or self.seconds < 0 else "+"
        months, seconds = abs(self.months), abs(self.seconds)
        text = (f"{months // 12}y" if months // 12 else "") + (f"{months % 12}mo" if months % 12 else "")
        text += format_duration(timedelta(seconds=seconds)) if seconds else ""
        return sign + (text or "0d")


def parse_offset(value: Any) -> CalendarOffset:
    if isinstance(value, CalendarOffset):
        return value
    if isinstance(value, dict):
        return CalendarOffset.model_validate(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not abs(value) <= _CEILING_SECONDS:
            raise _too_long(value)
        return CalendarOffset(seconds=int(value))
    text = str(value).strip().lower().replace(" ", "")
    match = _OFFSET.match(text)
    if not text or not match or not any(match.groups()[1:]):
        raise ValueError(f"'{value}' is not an offset: write it like -30d, +5mo, 1y or -2w")
    if any(g is not None and len(g) > _MAX_DIGITS for g in match.groups()[1:]):
        raise _too_long(value)
    sign = -1 if match.group(1) == "-" else 1
    years, months, weeks, days, hours, minutes = (int(g or 0) for g in match.groups()[1:])
    months += years * 12
    seconds = weeks * 604800 + days * 86400 + hours * 3600 + minutes * 60
    if months > _CEILING_MONTHS or seconds > _CEILING_SECONDS:
        raise _too_long(value)
    return CalendarOffset(months=sign * months, seconds=sign * seconds)


def _bounded_offset(value: Any, info: ValidationInfo) -> CalendarOffset:
    offset = parse_offset(value)
    _within_limit(value, offset.length(), info)
    return offset


Offset = Annotated[
    CalendarOffset,
    BeforeValidator(_bounded_offset),
    PlainSerializer(str, return_type=str, when_used="json"),
]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: Any) -> str:
    text = str(value).strip()
    if not _CLOCK.match(text):
        raise ValueError(f"'{value}' is not a time of day: write it as HH:MM, like 09:30")
    return text


ClockTime = Annotated[str, BeforeValidator(parse_clock)]
