"""Who enters a flow beyond events and manual enrollment, and under which policy.

Property triggers enroll a contact when it starts to match a condition (checked on
every contact change made through the API). Date and inactivity triggers are found
by a scan that a Temporal Schedule runs (see ``workflows/scans.py``). The enrollment
policy says whether a contact may enter again, who never enters, and whether a
contact leaves when the trigger stops matching.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nurture.flow.conditions import Condition
from nurture.flow.durations import ClockTime, Offset


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PropertyTrigger(_Model):
    """Enrolls a contact when it starts to match the condition: ``lifecycle_stage eq customer``.

    Contacts that match already when the flow goes live are not enrolled by it; bulk-enroll them.
    """

    type: Literal["property"]
    condition: Condition


class DateTrigger(_Model):
    """Enrolls a contact on the day its date property (plus ``offset``) falls, at ``time`` in its time zone.

    ``renewal_date`` with offset ``-30d`` enrolls thirty days before the renewal; ``yearly``
    enrolls on every anniversary (birthdays). ``condition`` narrows who is enrolled.
    """

    type: Literal["date"]
    property: str = Field(min_length=1, max_length=200)
    offset: Offset | None = None
    time: ClockTime | None = Field(default=None, description="Local time of day; the deployment's default_send_time when omitted.")
    yearly: bool = False
    condition: Condition | None = None


class InactivityTrigger(_Model):
    """Enrolls a contact whose last activity (any event; its creation when it never had one) is ``days`` old."""

    type: Literal["inactivity"]
    days: int = Field(ge=1, le=3650)
    condition: Condition | None = None


SCANNED_TRIGGER_TYPES = ("date", "inactivity")

Reenroll = Literal["never", "after_exit", "after_days"]


class EnrollmentPolicy(_Model):
    """Per-flow enrollment rules; every field is optional."""

    reenroll: Reenroll = Field(
        default="never",
        description="never: once per contact; after_exit: again once the previous enrollment ended; "
        "after_days: again once it ended and reenroll_after_days have passed since it began.",
    )
    reenroll_after_days: int | None = Field(default=None, ge=1, le=3650)
    suppress: list[Condition] = Field(
        default_factory=list, description="A contact matching any of these is never enrolled (e.g. customers)."
    )
    unenroll_when_trigger_stops_matching: bool = Field(
        default=False,
        description="Property triggers: leave when the contact stops matching. Inactivity triggers: leave on the "
        "contact's next activity. The exit reason is criteria_no_longer_match.",
    )


DEFAULT_POLICY = EnrollmentPolicy()
