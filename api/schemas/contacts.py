from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from api.schemas.common import Email, Id, NonEmpty, Out, Strict, UTCDatetime
from nurture.flow.durations import parse_duration
from nurture.flow.language import LIFECYCLE_STAGES
from nurture.models import SubscriptionStatus, utcnow


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{value}': use an IANA name like Europe/Berlin") from None
    return value


def _stage(value: str) -> str:
    if value not in LIFECYCLE_STAGES:
        raise ValueError(f"'{value}' is not a lifecycle stage ({', '.join(LIFECYCLE_STAGES)})")
    return value


TimeZone = Annotated[str, AfterValidator(_timezone)]
LifecycleStage = Annotated[str, AfterValidator(_stage)]
Text = Annotated[str, Field(max_length=500)]


def _empty_when_null(value: Any) -> Any:
    return [] if value is None else value


# A set of names sent as null is cleared: the stored contact always has a list.
NameSet = Annotated[list[Annotated[str, Field(min_length=1, max_length=100)]] | None, AfterValidator(_empty_when_null)]


class ContactFields(Strict):
    name: Text | None = None
    company: Text | None = None
    timezone: TimeZone | None = Field(default=None, description="IANA time zone, e.g. Europe/Berlin.")
    lifecycle_stage: LifecycleStage | None = Field(default=None, description=", ".join(LIFECYCLE_STAGES))
    owner: Text | None = Field(default=None, description="The owning rep's id (an email address gets owner notifications).")
    phone: Annotated[str, Field(pattern=r"^\+?[0-9 ()-]{5,32}$")] | None = Field(
        default=None, description="For SMS steps, e.g. +15550100."
    )
    lists: NameSet = Field(default=None, description="The lists the contact is on (replaces the whole set; null clears it).")
    tags: NameSet = Field(default=None, description="The contact's tags (replaces the whole set; null clears it).")
    properties: dict[str, Any] | None = Field(
        default=None, description="Merged into the contact's properties; a key set to null is removed."
    )
    subscription_status: SubscriptionStatus | None = Field(
        default=None,
        description="An unsubscribed contact is never re-subscribed by an upsert (the change is ignored); "
        "PATCH answers 409.",
    )


class ContactUpsert(ContactFields):
    email: Email


class ContactUpdate(ContactFields):
    email: Email | None = None


class ContactOut(Out):
    id: int
    email: str
    name: str | None
    company: str | None
    timezone: str | None
    lifecycle_stage: str | None
    owner: str | None
    phone: str | None
    # Rows stored as null by earlier versions read as empty rather than failing every list.
    lists: Annotated[list[str], BeforeValidator(_empty_when_null)]
    tags: Annotated[list[str], BeforeValidator(_empty_when_null)]
    properties: Annotated[dict[str, Any], BeforeValidator(lambda value: {} if value is None else value)]
    subscription_status: str
    paused_until: datetime | None
    pause_reason: str | None
    paused_by: str | None
    last_activity_at: datetime | None
    crm_id: str | None = Field(default=None, description="The contact's record id in the connected CRM (docs/crm.md).")
    created_at: datetime
    updated_at: datetime


class PauseIn(Strict):
    """A sales pause: sends that fall due are held until it ends or the contact is resumed."""

    until: UTCDatetime | None = Field(default=None, description="When the pause ends; in the future.")
    duration: str | None = Field(default=None, description="Or how long it lasts: 14d, 36h, 2w, P14D.")
    reason: NonEmpty
    paused_by: NonEmpty | None = Field(
        default=None,
        description="The rep the pause is for. A sales key always pauses as its own rep (another name is refused, "
        "403); an admin or marketer key may name a rep and is recorded as the one who asked (itself when omitted); "
        "required when the API runs without keys.",
    )
    flow_ids: list[Id] | None = Field(
        default=None, min_length=1, description="Pause only these flows; all flows (and flows entered later) when omitted."
    )

    @field_validator("until")
    @classmethod
    def _in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= utcnow():
            raise ValueError("must be in the future")
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)  # ValueError names the problem
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> PauseIn:
        if (self.until is None) == (self.duration is None):
            raise ValueError("give exactly one of 'until' or 'duration'")
        return self

    def ends_at(self) -> datetime:
        return self.until if self.until is not None else utcnow() + parse_duration(self.duration)


class ResumeIn(Strict):
    resumed_by: NonEmpty | None = Field(
        default=None, description="The rep who resumes; the same rules as a pause's `paused_by`."
    )
    reason: NonEmpty | None = None
    flow_ids: list[Id] | None = Field(default=None, min_length=1)


class PausedEnrollmentOut(Out):
    """One affected enrollment, as the workflow confirmed it."""

    enrollment_id: int
    flow_id: int
    workflow_id: str
    current_step: str | None
    paused_until: datetime | None
    send_deferred: bool
    waiting_until: datetime | None


class PauseLogOut(Out):
    id: int
    action: str
    until: datetime | None
    reason: str | None
    actor: str = Field(description="The rep the pause or resume is for.")
    requested_by: str | None = Field(
        default=None, description="The API key that asked (its name); null without keys or when the engine paused."
    )
    api_key_id: int | None = None
    authenticated: bool | None = Field(
        default=None,
        description="true: an API key asked; false: the API ran without keys, so `actor` is what the body said; "
        "null: the engine paused (a handoff's quiet period).",
    )
    flow_ids: list[int]
    enrollment_ids: list[int]
    at: datetime


class PausedContactOut(Out):
    contact_id: int
    email: str
    name: str | None
    paused_until: datetime
    pause_reason: str | None


class PauseOut(Out):
    contact_id: int
    paused_until: datetime | None
    pause_reason: str | None
    paused_by: str | None
    requested_by: str | None = Field(default=None, description="The API key that asked (its name); null without keys.")
    flow_ids: list[int] | None = None
    enrollment_ids: list[int] = Field(description="Active enrollments that were told.")
    enrollments: list[PausedEnrollmentOut] = Field(default_factory=list, description="Their confirmed new state.")


class MessageOut(Out):
    id: int
    workflow_id: str | None
    flow_id: int | None
    flow_version: int | None
    step_id: str | None
    template_key: str
    kind: str
    variant: str | None
    to_email: str
    subject: str
    status: str
    error: str | None
    provider: str
    provider_message_id: str | None
    attempts: int
    scheduled_at: datetime | None
    sent_at: datetime | None
    created_at: datetime
