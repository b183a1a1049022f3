"""Inputs and outputs of the enrollment workflow, its signals, query and activities.

One model per workflow, activity, signal and query, so each can grow a field
without breaking histories already recorded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from nurture.flow.conditions import EventFact
from nurture.flow.language import FlowDefinition, SendWindow

ENROLLMENT_WORKFLOW = "EnrollmentWorkflow"


def enrollment_workflow_id(prefix: str, flow_id: int, contact_id: int, sequence: int = 1) -> str:
    """One workflow id per enrollments row: the contact's first in the flow, or its n-th (``-n``),
    so starting a row's workflow twice finds the one already started."""
    base = f"{prefix}-{flow_id}-{contact_id}"
    return base if sequence == 1 else f"{base}-{sequence}"


class ContactSnapshot(BaseModel):
    id: int
    email: str
    name: str | None = None
    company: str | None = None
    timezone: str | None = None
    lifecycle_stage: str | None = None
    owner: str | None = None
    phone: str | None = None
    subscription_status: str = "subscribed"
    properties: dict[str, Any] = Field(default_factory=dict)
    lists: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    def fields(self) -> dict[str, Any]:
        """Custom properties and built-in fields in one namespace; built-ins win."""
        return {**self.properties, **self.model_dump(exclude={"properties"})}

    @property
    def reachable(self) -> bool:
        return self.subscription_status == "subscribed"


class PauseState(BaseModel):
    until: datetime
    reason: str
    paused_by: str


# --- signals -----------------------------------------------------------------


class ContactEventSignal(BaseModel):
    """A contact event: a goal, the event a wait is for, or engagement with a sent email."""

    event_id: str
    type: str
    properties: dict[str, Any] = Field(default_factory=dict)
    occurred_at: datetime


class ContactChangedSignal(BaseModel):
    contact: ContactSnapshot


class PauseSignal(BaseModel):
    until: datetime
    reason: str
    paused_by: str


class ResumeSignal(BaseModel):
    resumed_by: str
    reason: str | None = None


class PauseUpdate(BaseModel):
    """A sales pause the caller wants confirmed: answered with the enrollment's new state."""

    until: datetime
    reason: str
    paused_by: str


class ResumeUpdate(BaseModel):
    resumed_by: str
    reason: str | None = None


class ExitSignal(BaseModel):
    reason: str = "manual"
    requested_by: str


# --- workflow state ----------------------------------------------------------


class TimelineEntry(BaseModel):
    at: datetime
    kind: str
    step_id: str | None = None
    detail: str | None = None


class StepEntry(BaseModel):
    """A step entered, for the per-step statistics (nurture/analytics.py)."""

    step_id: str
    at: datetime
    lifecycle_stage: str | None = None


class SentEmail(BaseModel):
    step_id: str
    message_id: int | None
    status: str
    at: datetime


class CarriedState(BaseModel):
    """Everything an enrollment knows, carried across continue-as-new."""

    entered_at: datetime
    contact: ContactSnapshot
    current_step: str | None = None
    step_deadline: datetime | None = None
    visits: dict[str, int] = Field(default_factory=dict)
    engagement: dict[str, list[str]] = Field(default_factory=dict)
    # Opens and clicks on a message whose send result has not come back yet, by message id.
    early_engagement: dict[str, list[str]] = Field(default_factory=dict)
    # A/B variants and random split paths drawn, per step: fixed for the whole enrollment.
    choices: dict[str, str] = Field(default_factory=dict)
    sends: list[SentEmail] = Field(default_factory=list)
    paused: PauseState | None = None
    seen_event_ids: list[str] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    runs: int = 1
    # The enrollments row is written from reports numbered here; steps entered since the last one.
    progress_seq: int = 0
    reported: str | None = None
    unreported: list[StepEntry] = Field(default_factory=list)


class ActivityTimeouts(BaseModel):
    """Timeouts sized from the deployment's settings (workflow code cannot read them)."""

    send: timedelta = timedelta(minutes=1)
    heartbeat: timedelta = timedelta(seconds=10)


class EnrollmentInput(BaseModel):
    flow_id: int
    flow_version: int
    contact_id: int
    flow: FlowDefinition
    # The enrollments row this run owns (written by the starter, then only by the workflow's
    # activities, by primary key) and the contact as it was at enrollment: the first task
    # needs no database read.
    enrollment_id: int
    contact: ContactSnapshot
    paused: PauseState | None = None
    search_attributes: bool = False
    # Also keep CurrentStep and Status current in visibility (one upsert, one billable action, per
    # wait); the static attributes are set when the workflow starts.
    step_search_attributes: bool = False
    # Continue-as-new also happens at this history length (the server's suggestion always counts).
    continue_as_new_after_events: int | None = None
    carried: CarriedState | None = None
    timeouts: ActivityTimeouts = Field(default_factory=ActivityTimeouts)
    # Sends go to this task queue, rate-limited per provider (settings.send_task_queue); None: the
    # enrollment's own queue, as every enrollment started before it existed keeps doing.
    send_task_queue: str | None = None


class EnrollmentState(BaseModel):
    """What the ``state`` query answers: where the enrollment is and what happened so far."""

    workflow_id: str
    flow_id: int
    flow_version: int
    contact_id: int
    status: Literal["active", "completed", "exited", "failed"]
    current_step: str | None
    current_step_type: str | None
    waiting_until: datetime | None
    waiting_for: str | None
    paused: PauseState | None
    send_deferred: bool
    deferred_until: datetime | None = None
    deferred_reason: str | None = None
    exit_reason: str | None
    entered_at: datetime
    visits: dict[str, int]
    engagement: dict[str, list[str]]
    choices: dict[str, str] = Field(default_factory=dict)
    sends: list[SentEmail]
    timeline: list[TimelineEntry]
    runs: int


class EnrollmentResult(BaseModel):
    status: Literal["completed", "exited"]
    exit_reason: str | None
    steps_run: int
    emails_sent: int


# --- activities --------------------------------------------------------------


class ProgressReport(BaseModel):
    """What the enrollment's row says now, applied once (by ``seq``) to the row ``enrollment_id``.

    The workflow is the row's only writer after the starter created it: a report travels in the
    activity a step already runs (a send) or in a local activity before a wait and at the end.
    """

    enrollment_id: int
    workflow_id: str
    run_id: str
    flow_id: int
    flow_version: int
    contact_id: int
    seq: int
    status: Literal["active", "completed", "exited", "failed"]
    current_step: str | None
    paused: bool = False
    exit_reason: str | None = None
    entered: list[StepEntry] = Field(default_factory=list)
    at: datetime


class UpdateContactInput(BaseModel):
    contact_id: int
    set: dict[str, Any] = Field(default_factory=dict)
    clear: list[str] = Field(default_factory=list)
    lifecycle_stage: str | None = None
    add_to_lists: list[str] = Field(default_factory=list)
    remove_from_lists: list[str] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)
    idempotency_key: str


class SendEmailInput(BaseModel):
    idempotency_key: str
    workflow_id: str
    flow_id: int
    flow_version: int
    step_id: str
    contact_id: int
    template: str
    variant: str | None = None
    scheduled_at: datetime
    # The retry policy's attempt count, so the last attempt records a temporary failure as final
    # (not every server hands the policy to the activity). 0: unknown, every attempt may retry.
    max_attempts: int = 0
    # The send gate (windows, quiet hours, holidays, frequency cap), checked before the message
    # is reserved, in the same activity: a send is one activity unless it must wait.
    flow_timezone: str = "UTC"
    window: SendWindow | None = None
    transactional: bool = False
    progress: ProgressReport | None = None


class SendEmailResult(BaseModel):
    message_id: int | None
    status: Literal["sent", "refused", "failed", "deferred"]
    provider_message_id: str | None = None
    detail: str | None = None
    # "deferred": nothing was reserved or sent; ask again at defer_until.
    defer_until: datetime | None = None


class ResolveTimeInput(BaseModel):
    """Turn a calendar wait into an instant; time zones are resolved outside the sandbox."""

    contact: ContactSnapshot
    flow_timezone: str
    now: datetime
    kind: Literal["delay_until", "wait_until"]
    date: datetime | None = None
    property: str | None = None
    offset_months: int = 0
    offset_seconds: int = 0
    time: str | None = None
    yearly: bool = False
    weekdays: list[str] = Field(default_factory=list)


class ResolvedTime(BaseModel):
    at: datetime | None
    timezone: str
    detail: str


class RecentEventsInput(BaseModel):
    contact_id: int
    types: list[str]
    since: datetime


class RecentEvents(BaseModel):
    events: list[EventFact]


class StepActionInput(BaseModel):
    """Common to every side-effecting step: who, where, and the key that makes it happen once."""

    idempotency_key: str
    workflow_id: str
    flow_id: int
    step_id: str
    contact_id: int
    at: datetime


class NotifyOwnerInput(StepActionInput):
    subject: str
    message: str = ""
    fallback_to: str | None = None


class CreateTaskInput(StepActionInput):
    kind: str = "task"
    title: str
    description: str = ""
    assignee: str = "owner"
    due_at: datetime | None = None
    priority: str = "normal"


class WebhookInput(StepActionInput):
    url: str
    method: str = "POST"
    body: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)


class SendSmsInput(StepActionInput):
    text: str


class EnrollInFlowInput(StepActionInput):
    target_flow_id: int


class ActionResult(BaseModel):
    """What a side-effecting step did, for the timeline and the history."""

    status: Literal["done", "skipped", "failed"]
    detail: str
    record_id: int | None = None


class QuietPeriodInput(BaseModel):
    """A handoff's quiet period: the contact is paused in every flow until ``until``."""

    contact_id: int
    workflow_id: str
    until: datetime
    reason: str
    start: bool = True
