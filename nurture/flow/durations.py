"""Durations written the way marketers write them: ``2d``, ``1d12h``, ``90m``, ``1w``.

ISO 8601 (``P2D``, ``PT36H``) and plain seconds are accepted too.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, PlainSerializer

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
        seconds = sum(int(g or 0) * u for g, u in zip(match.groups(), _UNITS.values()))
    else:
        raise ValueError("a duration is a string like 2d, 36h or 90m, or a number of seconds")
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:  # pydantic reports ValueError as a validation problem, anything else as a crash
        raise ValueError(f"'{value}' is too long for a duration") from None


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
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]


_OFFSET = re.compile(r"^([+-])?(?:(\d+)y)?(?:(\d+)mo)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?$")


class CalendarOffset(BaseModel):
    """An offset from a date: calendar months and years stay calendar-true (Jan 31 + 1mo = Feb 28)."""

    months: int = 0
    seconds: int = 0

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
        return CalendarOffset(seconds=int(value))
    text = str(value).strip().lower().replace(" ", "")
    match = _OFFSET.match(text)
    if not text or not match or not any(match.groups()[1:]):
        raise ValueError(f"'{value}' is not an offset: write it like -30d, +5mo, 1y or -2w")
    sign = -1 if match.group(1) == "-" else 1
    years, months, weeks, days, hours, minutes = (int(g or 0) for g in match.groups()[1:])
    seconds = weeks * 604800 + days * 86400 + hours * 3600 + minutes * 60
    return CalendarOffset(months=sign * (years * 12 + months), seconds=sign * seconds)


Offset = Annotated[
    CalendarOffset,
    BeforeValidator(parse_offset),
    PlainSerializer(str, return_type=str, when_used="json"),
]

_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: Any) -> str:
    text = str(value).strip()
    if not _CLOCK.match(text):
        raise ValueError(f"'{value}' is not a time of day: write it as HH:MM, like 09:30")
    return text


ClockTime = Annotated[str, BeforeValidator(parse_clock)]
