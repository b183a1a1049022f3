"""One enrollment's Temporal history, across continue-as-new runs, as a timeline for people.

It reads the workflow history itself, not the database, so it can be trusted
when the two disagree.
"""

from __future__ import annotations

from datetime import UTC as _UTC
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.converter import DataConverter

from nurture.contracts import (
    ContactEventSignal,
    EnrollmentInput,
    EnrollmentResult,
    ExitSignal,
    PauseSignal,
    RecordProgressInput,
    ResumeSignal,
    SendEmailInput,
    SendEmailResult,
    UpdateContactInput,
)
from nurture.flow.durations import format_duration

SIGNAL_TYPES: dict[str, type[BaseModel]] = {
    "contact_event": ContactEventSignal,
    "pause": PauseSignal,
    "resume": ResumeSignal,
    "exit": ExitSignal,
}
ACTIVITY_INPUTS: dict[str, type[BaseModel]] = {
    "send_email": SendEmailInput,
    "update_contact": UpdateContactInput,
    "record_progress": RecordProgressInput,
}


class HistoryEntry(BaseModel):
    at: datetime
    kind: str
    text: str
    step_id: str | None = None
    run: int = 1
    details: dict[str, Any] = Field(default_factory=dict)


class EnrollmentHistory(BaseModel):
    workflow_id: str
    runs: list[str]
    status: str
    entries: list[HistoryEntry]


async def read_history(client: Client, workflow_id: str) -> EnrollmentHistory:
    """Walk back from the latest run through continue-as-new links, then read oldest first."""
    runs: list[tuple[str, list[HistoryEvent]]] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = await handle.fetch_history()
        events = list(history.events)
        started = events[0].workflow_execution_started_event_attributes
        runs.append((run_id or (await handle.describe()).run_id, events))
        previous = started.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    runs.reverse()
    reader = _Reader(client.data_converter)
    for number, (_, events) in enumerate(runs, start=1):
        await reader.read_run(number, events)
    return EnrollmentHistory(
        workflow_id=workflow_id, runs=[r for r, _ in runs], status=reader.status, entries=reader.entries
    )


class _Reader:
    def __init__(self, converter: DataConverter):
        self.converter = converter
        self.entries: list[HistoryEntry] = []
        self.status = "running"
        self.activities: dict[int, tuple[str, BaseModel | None]] = {}
        self.timers: dict[str, tuple[datetime, timedelta, str | None]] = {}
        self.step: str | None = None
        self.run = 1

    async def decode(self, payloads, kind: type[BaseModel]) -> BaseModel | None:
        if not payloads.payloads:
            return None
        try:
            return (await self.converter.decode(payloads.payloads, [kind]))[0]
        except Exception:  # an older shape we no longer parse: show the event without details
            return None

    def add(self, event: HistoryEvent, kind: str, text: str, **details: Any) -> None:
        self.entries.append(
            HistoryEntry(
                at=event.event_time.ToDatetime().replace(tzinfo=_UTC),
                kind=kind,
                text=text,
                step_id=self.step,
                run=self.run,
                details={k: v for k, v in details.items() if v is not None},
            )
        )

    async def read_run(self, run: int, events: list[HistoryEvent]) -> None:
        self.run = run
        for event in events:
            handler = _HANDLERS.get(event.event_type)
            if handler is not None:
                await handler(self, event)

    async def started(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_started_event_attributes
        if self.run > 1:
            self.add(event, "continued", f"Continued as new (run {self.run}) to keep the history short")
            return
        data = await self.decode(attrs.input, EnrollmentInput)
        if isinstance(data, EnrollmentInput):
            self.add(
                event,
                "entered",
                f"Entered flow {data.flow_id} '{data.flow.name}' version {data.flow_version} (contact {data.contact_id})"
                + (f", paused until {data.paused.until:%Y-%m-%d %H:%M} UTC" if data.paused else ""),
                flow_id=data.flow_id,
                flow_version=data.flow_version,
                contact_id=data.contact_id,
            )
        else:
            self.add(event, "entered", "Entered the flow")

    async def signaled(self, event: HistoryEvent) -> None:
        attrs = event.workflow_execution_signaled_event_attributes
        kind = SIGNAL_TYPES.get(attrs.signal_name)
        data = await self.decode(attrs.input, kind) if kind else None
        if isinstance(data, ContactEventSignal):
            props = f" {data.properties}" if data.properties else ""
            self.add(event, "event", f"Event received: {data.type}{props}", event_id=data.event_id, type=data.type)
        elif isinstance(data, PauseSignal):
            self.add(
                event,
                "paused",
                f"Paused by {data.paused_by} until {data.until:%Y-%m-%d %H:%M} UTC: {data.reason}",
                paused_by=data.paused_by,
                until=data.until.isoformat(),
                reason=data.reason,
            )
        elif isinstance(data, ResumeSignal):
            self.add(event, "resumed", f"Resumed by {data.resumed_by}" + (f": {data.reason}" if data.reason else ""))
        elif isinstance(data, ExitSignal):
            self.add(event, "exit_requested", f"Exit requested by {data.requested_by}: {data.reason}")
        else:
            self.add(event, "signal", f"Signal {attrs.signal_name}")

    async def activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        name = attrs.activity_type.name
        kind = ACTIVITY_INPUTS.get(name)
        data = await self.decode(attrs.input, kind) if kind else None
        self.activities[event.event_id] = (name, data)
        if isinstance(data, RecordProgressInput) and data.status == "active" and data.current_step != self.step:
            self.step = data.current_step
            self.add(event, "step", f"Step {data.current_step}")

    async def activity_completed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_completed_event_attributes
        name, data = self.activities.get(attrs.scheduled_event_id, ("?", None))
        if isinstance(data, SendEmailInput):
            result = await self.decode(attrs.result, SendEmailResult)
            if isinstance(result, SendEmailResult):
                verb = {"sent": "Sent", "refused": "Refused to send", "failed": "Failed to send"}[result.status]
                self.add(
                    event,
                    "email",
                    f"{verb} '{data.template}' (message {result.message_id})"
                    + (f": {result.detail}" if result.detail else ""),
                    message_id=result.message_id,
                    template=data.template,
                    outcome=result.status,
                    provider_message_id=result.provider_message_id,
                )
        elif isinstance(data, UpdateContactInput):
            changes = {**data.set, **({"lifecycle_stage": data.lifecycle_stage} if data.lifecycle_stage else {})}
            cleared = f", cleared {data.clear}" if data.clear else ""
            self.add(event, "contact_updated", f"Contact updated: {changes}{cleared}")

    async def activity_failed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_failed_event_attributes
        name, data = self.activities.get(attrs.scheduled_event_id, ("?", None))
        failure = attrs.failure
        cause = failure.message or failure.cause.message
        what = f"'{data.template}'" if isinstance(data, SendEmailInput) else name
        self.add(event, "failed", f"{name} {what} failed for good: {cause}", activity=name, reason=cause)

    async def activity_timed_out(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_timed_out_event_attributes
        name, _ = self.activities.get(attrs.scheduled_event_id, ("?", None))
        self.add(event, "failed", f"{name} timed out", activity=name)

    async def activity_started(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_started_event_attributes
        if attrs.attempt > 1:
            name, data = self.activities.get(attrs.scheduled_event_id, ("?", None))
            reason = attrs.last_failure.message if attrs.HasField("last_failure") else None
            self.add(
                event,
                "retry",
                f"{name} retried (attempt {attrs.attempt})" + (f" after: {reason}" if reason else ""),
                activity=name,
                attempt=attrs.attempt,
                reason=reason,
            )

    async def timer_started(self, event: HistoryEvent) -> None:
        attrs = event.timer_started_event_attributes
        duration = attrs.start_to_fire_timeout.ToTimedelta()
        start = event.event_time.ToDatetime().replace(tzinfo=_UTC)
        summary = await self._summary(event)
        self.timers[attrs.timer_id] = (start, duration, summary)
        self.add(
            event,
            "wait",
            f"Waiting {format_duration(duration)}" + (f" ({summary})" if summary else "")
            + f", planned to end {start + duration:%Y-%m-%d %H:%M} UTC",
            planned_end=(start + duration).isoformat(),
        )

    async def timer_fired(self, event: HistoryEvent) -> None:
        self._timer_end(event, event.timer_fired_event_attributes.timer_id, "as planned")

    async def timer_canceled(self, event: HistoryEvent) -> None:
        self._timer_end(event, event.timer_canceled_event_attributes.timer_id, "early")

    def _timer_end(self, event: HistoryEvent, timer_id: str, how: str) -> None:
        start, duration, summary = self.timers.get(timer_id, (None, None, None))
        planned = f" (planned {start + duration:%Y-%m-%d %H:%M} UTC)" if start and duration else ""
        self.add(event, "wait_ended", f"Wait ended {how}{planned}", planned_end=(start + duration).isoformat() if start and duration else None)

    async def _summary(self, event: HistoryEvent) -> str | None:
        if not event.HasField("user_metadata") or not event.user_metadata.HasField("summary"):
            return None
        try:
            return (await self.converter.decode([event.user_metadata.summary], [str]))[0]
        except Exception:
            return None

    async def completed(self, event: HistoryEvent) -> None:
        result = await self.decode(event.workflow_execution_completed_event_attributes.result, EnrollmentResult)
        if isinstance(result, EnrollmentResult):
            self.status = result.status
            text = "Completed the flow" if result.status == "completed" else f"Exited: {result.exit_reason}"
            self.add(event, result.status, text + f" ({result.emails_sent} emails sent)", exit_reason=result.exit_reason)
        else:
            self.status = "completed"
            self.add(event, "completed", "Completed")

    async def terminated(self, event: HistoryEvent) -> None:
        self.status = "terminated"
        self.add(event, "terminated", f"Terminated: {event.workflow_execution_terminated_event_attributes.reason}")

    async def failed(self, event: HistoryEvent) -> None:
        self.status = "failed"
        self.add(event, "workflow_failed", f"Failed: {event.workflow_execution_failed_event_attributes.failure.message}")

    async def timed_out(self, event: HistoryEvent) -> None:
        self.status = "timed_out"
        self.add(event, "workflow_failed", "Timed out")


_HANDLERS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: _Reader.started,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: _Reader.signaled,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: _Reader.activity_scheduled,
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: _Reader.activity_started,
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: _Reader.activity_completed,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: _Reader.activity_failed,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: _Reader.activity_timed_out,
    EventType.EVENT_TYPE_TIMER_STARTED: _Reader.timer_started,
    EventType.EVENT_TYPE_TIMER_FIRED: _Reader.timer_fired,
    EventType.EVENT_TYPE_TIMER_CANCELED: _Reader.timer_canceled,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: _Reader.completed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: _Reader.terminated,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: _Reader.failed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: _Reader.timed_out,
}
