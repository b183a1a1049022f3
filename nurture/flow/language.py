"""Flow language v1: a flow is a trigger, an optional goal and a list of steps.

Steps run in list order unless a step names where to go next (``next``, a
branch's ``then``/``else``, a wait's ``on_event``/``on_timeout``). Every step
has a stable id; running enrollments keep their place by it.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from nurture.flow.conditions import Condition, PropertyCondition
from nurture.flow.durations import ClockTime, Duration, Offset
from nurture.flow.triggers import DateTrigger, EnrollmentPolicy, InactivityTrigger, PropertyTrigger

LIFECYCLE_STAGES = (
    "subscriber",
    "lead",
    "marketingqualifiedlead",
    "salesqualifiedlead",
    "opportunity",
    "customer",
    "evangelist",
    "other",
)

_STEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _check_step_id(value: Any) -> Any:
    if isinstance(value, str) and not _STEP_ID.match(value):
        raise ValueError(f"'{value}' is not a step id: use letters, digits, '_', '.' and '-' (at most 64), like 'wait-2d'")
    return value


StepId = Annotated[str, AfterValidator(_check_step_id)]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Step(_Model):
    id: StepId
    name: str | None = None
    next: StepId | None = Field(
        default=None, description="Step to run after this one; the following step in the list when omitted."
    )


class EmailVariant(_Model):
    """One arm of an A/B test: its own template (and so its own subject), and a weight."""

    id: StepId
    template: str = Field(min_length=1)
    weight: int = Field(default=1, ge=1)


class SendEmailStep(_Step):
    type: Literal["send_email"]
    template: str | None = Field(
        default=None, min_length=1, description="Key of a template that exists before the flow goes live."
    )
    variants: list[EmailVariant] = Field(default_factory=list, description="A/B test: one is drawn per enrollment.")

    def templates(self) -> list[str]:
        return [v.template for v in self.variants] if self.variants else [self.template or ""]


class DelayStep(_Step):
    type: Literal["delay"]
    duration: Duration


class DelayUntilStep(_Step):
    """Until a date, or a date property of the contact plus or minus an offset, at a local time.

    ``yearly`` waits for the next anniversary (birthdays). When the moment has passed
    already, ``if_passed`` says whether to go on at once or leave the flow.
    """

    type: Literal["delay_until"]
    date: datetime | None = None
    property: str | None = None
    offset: Offset | None = None
    time: ClockTime | None = Field(default=None, description="Local time of day in the contact's time zone.")
    yearly: bool = False
    if_passed: Literal["continue", "exit"] = "continue"


class WaitUntilStep(_Step):
    """Until the next listed weekday at a time of day, in the contact's time zone."""

    type: Literal["wait_until"]
    weekdays: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    time: ClockTime


class WaitForEventStep(_Step):
    type: Literal["wait_for_event"]
    event: EventType
    where: list[PropertyCondition] = Field(default_factory=list, description="Filter on the event's properties.")
    timeout: Duration
    on_event: StepId | None = None
    on_timeout: StepId | None = None


class BranchStep(_Step):
    type: Literal["branch"]
    condition: Condition
    then: StepId | None = None
    else_: StepId | None = Field(default=None, alias="else")


class SwitchCase(_Model):
    name: str | None = None
    condition: Condition
    goto: StepId


class SwitchStep(_Step):
    """Multi-way branch: the first case whose condition holds, else ``default``."""

    type: Literal["switch"]
    cases: list[SwitchCase] = Field(min_length=1)
    default: StepId | None = None


class SplitPath(_Model):
    name: str
    percent: int = Field(ge=0, le=100)
    goto: StepId


class SplitStep(_Step):
    """Random split for A/B tests; the draw is fixed per enrollment (replays draw the same)."""

    type: Literal["split"]
    paths: list[SplitPath] = Field(min_length=2)


class UpdateContactStep(_Step):
    type: Literal["update_contact"]
    set: dict[str, Any] = Field(default_factory=dict)
    clear: list[str] = Field(default_factory=list)
    lifecycle_stage: str | None = None
    add_to_lists: list[str] = Field(default_factory=list)
    remove_from_lists: list[str] = Field(default_factory=list)
    add_tags: list[str] = Field(default_factory=list)
    remove_tags: list[str] = Field(default_factory=list)

    def changes_anything(self) -> bool:
        return bool(
            self.set or self.clear or self.lifecycle_stage or self.add_to_lists or self.remove_from_lists
            or self.add_tags or self.remove_tags
        )


class NotifyOwnerStep(_Step):
    """An internal email to the contact's sales owner, with the contact's recent activity."""

    type: Literal["notify_owner"]
    subject: str = Field(min_length=1)
    message: str = ""
    fallback_to: str | None = Field(default=None, description="Address used when the contact has no owner.")


class CreateTaskStep(_Step):
    type: Literal["create_task"]
    kind: Literal["task", "ticket"] = "task"
    title: str = Field(min_length=1)
    description: str = ""
    assignee: str = Field(default="owner", description="'owner' or a queue name such as 'support'.")
    due_in: Duration | None = None
    priority: Literal["low", "normal", "high"] = "normal"


class WebhookStep(_Step):
    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://")
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    body: dict[str, Any] = Field(default_factory=dict, description="Strings are templates over the contact's fields.")
    headers: dict[str, str] = Field(default_factory=dict)


class SendSmsStep(_Step):
    type: Literal["send_sms"]
    text: str = Field(min_length=1, max_length=1600)


class EnrollInFlowStep(_Step):
    type: Literal["enroll_in_flow"]
    flow_id: int = Field(ge=1)


class GotoStep(_Step):
    """Jump back to loop; after ``max_loops`` jumps the flow goes on past this step.

    A loop must also wait somewhere (validation refuses one that never waits).
    """

    type: Literal["goto"]
    target: StepId
    max_loops: int = Field(default=3, ge=1, le=100)


class HandoffToSalesStep(_Step):
    """Hand the contact to sales: notify the owner, go quiet in every flow, wait for the outcome.

    Each outcome (deal won, lost, or returned to marketing) continues on its own path; when
    no outcome arrives within ``silence_limit`` (the flow's when omitted) the re-engagement
    path runs: re-engagement in the middle of the lifecycle, not at its end.
    """

    type: Literal["handoff_to_sales"]
    subject: str = "New sales handoff: {{ contact.name or contact.email }}"
    message: str = ""
    silence_limit: Duration | None = None
    on_won: StepId | None = None
    on_lost: StepId | None = None
    on_returned: StepId | None = None
    on_silence: StepId | None = None


class ExitStep(_Step):
    type: Literal["exit"]
    reason: str = "exit_step"


Step = Annotated[
    Union[
        SendEmailStep,
        DelayStep,
        DelayUntilStep,
        WaitUntilStep,
        WaitForEventStep,
        BranchStep,
        SwitchStep,
        SplitStep,
        UpdateContactStep,
        NotifyOwnerStep,
        CreateTaskStep,
        WebhookStep,
        SendSmsStep,
        EnrollInFlowStep,
        GotoStep,
        HandoffToSalesStep,
        ExitStep,
    ],
    Field(discriminator="type"),
]

WAITING_STEPS = (DelayStep, DelayUntilStep, WaitUntilStep, WaitForEventStep, HandoffToSalesStep)


class SendWindow(_Model):
    """When this flow may send, in the contact's local time (the flow's time zone as fallback)."""

    days: list[Weekday] = Field(default_factory=lambda: ["mon", "tue", "wed", "thu", "fri"], min_length=1)
    start: ClockTime = "09:00"
    end: ClockTime = "17:00"


class EventTrigger(_Model):
    type: Literal["event"]
    event: EventType
    where: list[PropertyCondition] = Field(default_factory=list)


class ManualTrigger(_Model):
    type: Literal["manual"]


Trigger = Annotated[
    Union[EventTrigger, ManualTrigger, PropertyTrigger, DateTrigger, InactivityTrigger], Field(discriminator="type")
]


class Goal(_Model):
    """The contact leaves the flow at once when the event arrives or the condition holds."""

    event: EventType | None = None
    where: list[PropertyCondition] = Field(default_factory=list)
    condition: Condition | None = None


class FlowDefinition(_Model):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    timezone: str = Field(default="UTC", description="Used for contacts whose own time zone is unknown.")
    send_window: SendWindow | None = None
    transactional: bool = Field(
        default=False, description="Transactional messages skip the frequency cap and the global quiet hours."
    )
    silence_limit: Duration = Field(
        default=timedelta(days=30), description="How long a sales handoff may stay silent before re-engagement."
    )
    trigger: Trigger
    enrollment: EnrollmentPolicy | None = Field(
        default=None, description="Re-enrollment, suppression and unenrollment rules (see docs/triggers.md)."
    )
    goal: Goal | None = None
    steps: list[Step] = Field(min_length=1)

    def step_index(self) -> dict[str, int]:
        return {step.id: i for i, step in enumerate(self.steps)}

    def following(self, index: int) -> str | None:
        return self.steps[index + 1].id if index + 1 < len(self.steps) else None

    def successors(self, index: int) -> list[str | None]:
        """Where control can go after the step at ``index`` (None ends the flow)."""
        step = self.steps[index]
        default = step.next or self.following(index)
        if isinstance(step, ExitStep):
            return []
        if isinstance(step, BranchStep):
            return [step.then or default, step.else_ or default]
        if isinstance(step, WaitForEventStep):
            return [step.on_event or default, step.on_timeout or default]
        if isinstance(step, SwitchStep):
            return [case.goto for case in step.cases] + [step.default or default]
        if isinstance(step, SplitStep):
            return [path.goto for path in step.paths]
        if isinstance(step, GotoStep):
            return [step.target, default]
        if isinstance(step, HandoffToSalesStep):
            return [step.on_won or default, step.on_lost or default, step.on_returned or default,
                    step.on_silence or default]
        return [default]

    def longest_wait(self) -> timedelta:
        total = timedelta()
        for step in self.steps:
            if isinstance(step, DelayStep):
                total += step.duration
            elif isinstance(step, WaitForEventStep):
                total += step.timeout
        return total
