"""Flow language v1: a flow is a trigger, an optional goal and a list of steps.

Steps run in list order unless a step names where to go next (``next``, a
branch's ``then``/``else``, a wait's ``on_event``/``on_timeout``). Every step
has a stable id; running enrollments keep their place by it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from nurture.flow.conditions import Condition, PropertyCondition
from nurture.flow.durations import Duration

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

StepId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
EventType = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_.:-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class _Step(_Model):
    id: StepId
    name: str | None = None
    next: StepId | None = Field(
        default=None, description="Step to run after this one; the following step in the list when omitted."
    )


class SendEmailStep(_Step):
    type: Literal["send_email"]
    template: str = Field(min_length=1, description="Key of a template that exists before the flow goes live.")


class DelayStep(_Step):
    type: Literal["delay"]
    duration: Duration


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


class UpdateContactStep(_Step):
    type: Literal["update_contact"]
    set: dict[str, Any] = Field(default_factory=dict)
    clear: list[str] = Field(default_factory=list)
    lifecycle_stage: str | None = None


class ExitStep(_Step):
    type: Literal["exit"]
    reason: str = "exit_step"


Step = Annotated[
    Union[SendEmailStep, DelayStep, WaitForEventStep, BranchStep, UpdateContactStep, ExitStep],
    Field(discriminator="type"),
]


class EventTrigger(_Model):
    type: Literal["event"]
    event: EventType
    where: list[PropertyCondition] = Field(default_factory=list)


class ManualTrigger(_Model):
    type: Literal["manual"]


Trigger = Annotated[Union[EventTrigger, ManualTrigger], Field(discriminator="type")]


class Goal(_Model):
    """The contact leaves the flow at once when the event arrives or the condition holds."""

    event: EventType | None = None
    where: list[PropertyCondition] = Field(default_factory=list)
    condition: Condition | None = None


class FlowDefinition(_Model):
    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    trigger: Trigger
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
        return [default]

    def longest_wait(self) -> timedelta:
        total = timedelta()
        for step in self.steps:
            if isinstance(step, DelayStep):
                total += step.duration
            elif isinstance(step, WaitForEventStep):
                total += step.timeout
        return total
