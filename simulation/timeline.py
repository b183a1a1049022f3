"""A simulated enrollment's timeline, on the simulated calendar.

The test server's clock runs in real time while activities run, so a timer
started after a few sends starts a few milliseconds late, and the error adds
up along a flow. The simulator reports the times a real enrollment would have
if steps took no time at all: everything between two waits happens at the
moment the first wait ended; a wait ends when its timer was due (its start
plus its duration, or the calendar moment it resolved to) or at the scripted
event that ended it.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta

from typing import Any

from nurture.contracts import ContactSnapshot, EnrollmentState, TimelineEntry
from nurture.flow.conditions import EventFact, evaluate, matches_properties
from nurture.flow.durations import format_duration
from nurture.flow.language import (
    DelayStep,
    EventTrigger,
    FlowDefinition,
    GotoStep,
    HandoffToSalesStep,
    WaitForEventStep,
)
from nurture.flow.triggers import PropertyTrigger
from nurture.logging import get_logger
from nurture.simulation_models import (
    ScriptedEvent,
    SimulatedAction,
    SimulatedEvent,
    SimulatedMessage,
    SimulatedStep,
    SimulatedWait,
    SimulationResult,
)
from simulation.stand_ins import World

OUTCOME_KINDS = {"branch", "split", "email", "action", "wait_ended", "wait_skipped", "loop_done"}
MESSAGE_CHANNELS = {"email", "sms", "internal"}
# Further apart than this, the reconstructed clock is wrong, not the test server slow.
CLOCK_MISMATCH = timedelta(seconds=60)


@dataclass
class Delivery:
    """One scripted event: when it was due, when the test server's clock said it was delivered."""

    actual: datetime
    ideal: datetime
    item: ScriptedEvent
    delivered: bool = False
    note: str | None = None


@dataclass
class _OpenWait:
    step_id: str
    type: str
    started: datetime
    due: datetime
    actual_due: datetime  # when the server's timer fires


class _Clock:
    """Maps the test server's times onto the simulated calendar (see the module docstring)."""

    def __init__(self, flow: FlowDefinition, state: EnrollmentState, world: World, deliveries: list[Delivery],
                 start: datetime, horizon: timedelta | None):
        self.start = start
        self.entries = state.timeline
        self.ideal: list[datetime] = []
        self.waits: list[SimulatedWait] = []
        # (server time, simulated time, step): entries, and the moments waits ended (which leave no entry).
        self._points: list[tuple[datetime, datetime, str | None]] = []
        steps = {step.id: step for step in flow.steps}
        delivered = [d for d in deliveries if d.delivered]
        event_times = iter([d.ideal for d in delivered if d.item.type is not None])
        planned, deferrals = iter(world.planned), iter(world.deferrals)
        cursor, waiting = start, None
        last_event: tuple[datetime, datetime] = (state.entered_at, start)
        for entry in self.entries:
            if entry.kind == "event":
                last_event = (entry.at, next(event_times, cursor))
                self.ideal.append(last_event[1])
                continue
            if waiting is not None:
                if (entry.kind == "wait_ended" and entry.detail == "event arrived") or (
                    entry.kind == "handoff_outcome" and entry.detail != "silence"
                ):
                    (actual, cursor), ended_by = last_event, "event"
                elif entry.kind in ("exited", "exit_requested"):
                    actual, cursor = _cause(delivered, entry.at, (entry.at, cursor))
                    ended_by = f"exit: {state.exit_reason}"
                else:
                    actual, cursor, ended_by = waiting.actual_due, waiting.due, "timer"
                self._close(waiting, cursor, ended_by)
                self._points.append((actual, cursor, waiting.step_id))
                waiting = None
            self.ideal.append(cursor)
            self._points.append((entry.at, cursor, entry.step_id))
            step = steps.get(entry.step_id or "")
            if step is None:
                continue
            # A relative wait's timer fires its length after it began on the server (a few ms after its
            # entry); an absolute one (a calendar moment, a deferred send) at that moment on the server.
            length = None
            if entry.kind == "step" and isinstance(step, DelayStep):
                length = step.duration
            elif entry.kind == "step" and isinstance(step, WaitForEventStep):
                length = step.timeout
            elif entry.kind == "step" and isinstance(step, HandoffToSalesStep):
                length = step.silence_limit or flow.silence_limit
            if length is not None:
                waiting = _OpenWait(step.id, step.type, cursor, cursor + length, entry.at + length)
            elif entry.kind in ("wait_planned", "send_deferred"):
                due = next(planned if entry.kind == "wait_planned" else deferrals, cursor)
                kind = step.type if entry.kind == "wait_planned" else "send_deferred"
                waiting = _OpenWait(step.id, kind, cursor, due, due + world.shift)
        self.end = start + horizon if horizon is not None else cursor
        if waiting is not None:
            self._close(waiting, self.end, "horizon" if horizon is not None else "exit")
        self._points.sort(key=lambda point: point[0])
        self._check(state)

    def at(self, actual: datetime) -> tuple[datetime, str | None]:
        """When something that happened at ``actual`` on the server (a send, an action) happened in the
        simulation, and during which step."""
        position = bisect_right([a for a, _, _ in self._points], actual)
        if not position:
            return self.start, None
        _, ideal, step_id = self._points[position - 1]
        return ideal, step_id

    def offset(self, ideal: datetime) -> str:
        return format_duration(ideal - self.start)

    def _close(self, wait: _OpenWait, ended: datetime, ended_by: str) -> None:
        self.waits.append(
            SimulatedWait(
                step_id=wait.step_id, type=wait.type, started_at=wait.started, ended_at=ended,
                start_offset=self.offset(wait.started), end_offset=self.offset(ended),
                duration=format_duration(ended - wait.started), ended_by=ended_by,
            )
        )

    def _check(self, state: EnrollmentState) -> None:
        for entry, ideal in zip(self.entries, self.ideal):
            drift = (entry.at - state.entered_at) - (ideal - self.start)
            if abs(drift) > CLOCK_MISMATCH:
                get_logger(component="simulator").warning(
                    "simulation_clock_mismatch", step_id=entry.step_id, kind=entry.kind, drift=str(drift)
                )
                return


def _cause(
    delivered: list[Delivery], actual: datetime, default: tuple[datetime, datetime]
) -> tuple[datetime, datetime]:
    """The scripted event (or contact change) that made the enrollment exit: the last one delivered by
    then, as (server time, simulated time)."""
    before = [(d.actual, d.ideal) for d in delivered if d.actual <= actual]
    return before[-1] if before else default


def build_result(
    flow: FlowDefinition,
    state: EnrollmentState,
    world: World,
    deliveries: list[Delivery],
    *,
    start: datetime,
    horizon: timedelta | None,
) -> SimulationResult:
    clock = _Clock(flow, state, world, deliveries, start, horizon)
    steps = _steps(flow, state.timeline, clock)
    warnings = []
    if state.timeline and state.timeline[0].kind != "entered":
        warnings.append(f"the enrollment's timeline keeps its last {len(state.timeline)} entries: earlier steps are not shown")
    if horizon is not None:
        warnings.append(f"still in the flow after {format_duration(horizon)}: the simulation stopped there")
    messages, actions = [], []
    for item in world.outgoing:
        ideal, during = clock.at(item.at)
        item.step_id = item.step_id or during or ""
        if item.channel in MESSAGE_CHANNELS:
            messages.append(
                SimulatedMessage(
                    step_id=item.step_id, channel=item.channel, at=ideal, offset=clock.offset(ideal), status=item.status,
                    to=item.to, template=item.template, variant=item.variant, subject=item.subject,
                    text=item.text if item.channel == "sms" else None, detail=item.detail,
                )
            )
            if item.status == "failed":
                warnings.append(f"step '{item.step_id}': {item.detail}")
        else:
            actions.append(
                SimulatedAction(
                    step_id=item.step_id, kind=item.channel,  # type: ignore[arg-type]
                    at=ideal, offset=clock.offset(ideal), status=item.status, target=item.to,
                    detail=(item.subject or item.detail) if item.channel == "task" else item.detail,
                    due_at=ideal + (item.due_at - item.at) if item.due_at else None,
                )
            )
            if item.status == "failed":
                warnings.append(f"step '{item.step_id}': {item.detail}")
    return SimulationResult(
        flow_name=flow.name,
        status="running" if horizon is not None else state.status,
        exit_reason=None if horizon is not None else state.exit_reason,
        started_at=start,
        ended_at=clock.end,
        duration=clock.offset(clock.end),
        duration_seconds=int((clock.end - start).total_seconds()),
        path=[s.step_id for s in steps],
        steps=steps,
        messages=messages,
        waits=clock.waits,
        actions=actions,
        events=[
            SimulatedEvent(
                at=d.ideal, offset=clock.offset(d.ideal), type=d.item.type, step=d.item.step,
                update=d.item.update is not None, delivered=d.delivered, note=d.note,
            )
            for d in deliveries
        ],
        choices=dict(state.choices),
        contact=world.contact,
        warnings=warnings,
    )


def _steps(flow: FlowDefinition, entries: list[TimelineEntry], clock: _Clock) -> list[SimulatedStep]:
    by_id = {step.id: step for step in flow.steps}
    steps: list[SimulatedStep] = []
    for entry, ideal in zip(entries, clock.ideal):
        if entry.kind == "step" and entry.step_id in by_id:
            if steps and steps[-1].outcome is None and isinstance(by_id[steps[-1].step_id], GotoStep):
                steps[-1].outcome = f"back to {entry.step_id}"
            step = by_id[entry.step_id]
            steps.append(
                SimulatedStep(step_id=step.id, type=step.type, name=step.name, at=ideal, offset=clock.offset(ideal))
            )
        elif entry.kind in OUTCOME_KINDS and steps and entry.step_id == steps[-1].step_id:
            steps[-1].outcome = entry.detail
    return steps


def admission_warnings(
    flow: FlowDefinition,
    contact: ContactSnapshot,
    history: list[EventFact] | tuple[EventFact, ...],
    start: datetime,
    trigger_properties: dict[str, Any] | None,
) -> list[str]:
    """Why this contact would not enter the flow by its trigger: the simulation runs it anyway."""
    fields, events = contact.fields(), list(history)
    warnings = []
    if not contact.reachable:
        warnings.append(f"the contact is {contact.subscription_status}: it would not be enrolled")
    policy = flow.enrollment
    for index, condition in enumerate(policy.suppress if policy else []):
        if evaluate(condition, fields, {}, events, start):
            warnings.append(f"enrollment.suppress[{index}] matches the contact: it would not be enrolled")
    trigger = flow.trigger
    if isinstance(trigger, PropertyTrigger) and not evaluate(trigger.condition, fields, {}, events, start):
        warnings.append("the contact does not match the trigger condition: the trigger would not enroll it")
    if isinstance(trigger, EventTrigger) and trigger_properties and not matches_properties(trigger.where, trigger_properties):
        warnings.append(f"trigger_properties do not match the trigger's 'where': a {trigger.event} like this would not enroll")
    return warnings
