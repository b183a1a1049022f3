"""What the flow simulator takes (a contact, scripted events) and what it answers (a timeline)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_validator, model_validator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from nurture.contracts import ContactSnapshot
from nurture.event_types import ENGAGEMENT_KINDS
from nurture.flow.durations import Duration, format_duration, parse_duration
from nurture.flow.language import LIFECYCLE_STAGES, EventType, StepId


@dataclass
class TemplateText:
    """A template as the simulator renders it: a saved one, one given in the request, or a playbook's."""

    subject: str
    html: str
    text: str | None = None


def _elapsed(value: Any) -> timedelta:
    """Like a duration, but zero is allowed: an event at the very start."""
    if value in (0, "0", "0s", "PT0S"):
        return timedelta(0)
    return parse_duration(value)


Elapsed = Annotated[
    timedelta, BeforeValidator(_elapsed), PlainSerializer(format_duration, return_type=str, when_used="json")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PastEvent(_Strict):
    """Something the contact did before the simulated enrollment starts (for 'event within' conditions)."""

    type: EventType
    ago: Duration = Field(description="How long before the start, like 2d.")
    properties: dict[str, Any] = Field(default_factory=dict)


def _check_timezone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"'{value}' is not a time zone (use an IANA name like Europe/Berlin)") from None
    return value


def _check_stage(value: str | None) -> str | None:
    if value is not None and value not in LIFECYCLE_STAGES:
        raise ValueError(f"'{value}' is not a lifecycle stage ({', '.join(LIFECYCLE_STAGES)})")
    return value


class HypotheticalContact(_Strict):
    """A contact that exists only for the simulation."""

    email: str = Field(default="preview@example.com", min_length=3, max_length=320)
    name: str | None = None
    company: str | None = None
    timezone: str | None = None
    lifecycle_stage: str | None = None
    owner: str | None = None
    phone: str | None = None
    subscription_status: Literal["subscribed", "unsubscribed", "bounced"] = "subscribed"
    properties: dict[str, Any] = Field(default_factory=dict)
    lists: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    events: list[PastEvent] = Field(default_factory=list, description="What the contact did before the start.")

    _timezone = field_validator("timezone")(_check_timezone)
    _stage = field_validator("lifecycle_stage")(_check_stage)

    def snapshot(self) -> ContactSnapshot:
        return ContactSnapshot(id=0, **self.model_dump(exclude={"events"}))


class ContactChange(_Strict):
    """A change to the contact at a moment of the simulation, as the CRM or the API would make it."""

    lifecycle_stage: str | None = None
    subscription_status: Literal["subscribed", "unsubscribed", "bounced"] | None = None
    owner: str | None = None
    timezone: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict, description="Merged; a null value removes the key.")
    add_to_lists: list[str] = Field(default_factory=list)
    remove_from_lists: list[str] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)

    _timezone = field_validator("timezone")(_check_timezone)
    _stage = field_validator("lifecycle_stage")(_check_stage)


class ScriptedEvent(_Strict):
    """``{"at": "2d3h", "type": "email_opened", "step": "welcome"}``: what happens, when after the start."""

    at: Elapsed = Field(description="Time after the enrollment starts: 0, 90m, 2d3h.")
    type: EventType | None = Field(default=None, description="The event, as POST /events would receive it.")
    step: StepId | None = Field(default=None, description="For email_opened/email_clicked: the step whose email it was.")
    properties: dict[str, Any] = Field(default_factory=dict)
    update: ContactChange | None = Field(default=None, description="A change to the contact at that moment.")

    @model_validator(mode="after")
    def _says_something(self) -> ScriptedEvent:
        if self.type is None and self.update is None:
            raise ValueError("a scripted event needs a 'type', an 'update', or both")
        if self.step is not None and self.type not in ENGAGEMENT_KINDS:
            raise ValueError("'step' names the email an email_opened or email_clicked event is about")
        return self


# --- the answer ------------------------------------------------------------------


class SimulatedStep(BaseModel):
    step_id: str
    type: str
    name: str | None = None
    at: datetime
    offset: str
    outcome: str | None = Field(default=None, description="The branch taken, the send status, the action's result.")


class SimulatedMessage(BaseModel):
    step_id: str
    channel: Literal["email", "sms", "internal"]
    at: datetime
    offset: str
    status: str
    to: str | None = None
    template: str | None = None
    variant: str | None = None
    subject: str | None = None
    text: str | None = Field(default=None, description="The SMS text; the plain-text body of an email.")
    detail: str | None = None


class SimulatedWait(BaseModel):
    step_id: str
    type: str = Field(description="The step type, or send_deferred for a send held by the send rules.")
    started_at: datetime
    ended_at: datetime
    start_offset: str
    end_offset: str
    duration: str
    ended_by: str = Field(description="timer, event, exit (with the reason), or horizon.")


class SimulatedAction(BaseModel):
    step_id: str
    kind: Literal["task", "webhook", "enrollment", "contact_update", "quiet_period"]
    at: datetime
    offset: str
    status: str
    target: str | None = Field(default=None, description="The assignee of a task, the URL of a webhook.")
    detail: str | None = Field(default=None, description="The title of a task; what the other actions did.")
    due_at: datetime | None = Field(default=None, description="When a task is due.")


class SimulatedEvent(BaseModel):
    at: datetime
    offset: str
    type: str | None
    step: str | None = None
    update: bool = False
    delivered: bool
    note: str | None = None


class SimulationResult(BaseModel):
    flow_name: str
    status: Literal["completed", "exited", "running"] = Field(
        description="running: still in the flow when the simulation horizon was reached."
    )
    exit_reason: str | None
    started_at: datetime
    ended_at: datetime
    duration: str
    duration_seconds: int
    path: list[str] = Field(description="Step ids in the order the contact went through them.")
    steps: list[SimulatedStep]
    messages: list[SimulatedMessage]
    waits: list[SimulatedWait]
    actions: list[SimulatedAction]
    events: list[SimulatedEvent]
    choices: dict[str, str] = Field(description="A/B variants and split paths drawn, per step.")
    contact: ContactSnapshot = Field(description="The contact as the flow left it (the real one is unchanged).")
    warnings: list[str] = Field(default_factory=list)
