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
    ActionResult,
    ContactChangedSignal,
    ContactEventSignal,
    CreateTaskInput,
    EnrollInFlowInput,
    EnrollmentInput,
    EnrollmentResult,
    ExitSignal,
    NotifyOwnerInput,
    PauseSignal,
    PauseUpdate,
    QuietPeriodInput,
    ProgressReport,
    ResumeSignal,
    ResumeUpdate,
    SendEmailInput,
    SendEmailResult,
    SendSmsInput,
    UpdateContactInput,
    WebhookInput,
)
from nurture.flow.durations import format_duration

SIGNAL_TYPES: dict[str, type[BaseModel]] = {
    "contact_event": ContactEventSignal,
    "contact_changed": ContactChangedSignal,
    "pause": PauseSignal,
    "resume": ResumeSignal,
    "exit": ExitSignal,
}
UPDATE_TYPES: dict[str, type[BaseModel]] = {
    "pause_enrollment": PauseUpdate,
    "resume_enrollment": ResumeUpdate,
}
ACTIVITY_INPUTS: dict[str, type[BaseModel]] = {
    "send_email": SendEmailInput,
    "update_contact": UpdateContactInput,
    "quiet_period": QuietPeriodInput,
    "notify_owner": NotifyOwnerInput,
    "create_task": CreateTaskInput,
    "call_webhook": WebhookInput,
    "send_sms": SendSmsInput,
    "enroll_in_flow": EnrollInFlowInput,
}
LOCAL_ACTIVITY_MARKER = "core_local_activity"
# Side steps answer an ActionResult: shown as "<what> <status>: <detail>".
ACTION_NAMES = {
    "notify_owner": "Owner notification",
    "create_task": "Task",
    "call_webhook": "Webhook",
    "send_sms": "SMS",
    "enroll_in_flow": "Enrollment in another flow",
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


async def read_history(client: Client, workflow_id: str, first_run_id: str | None = None) -> EnrollmentHistory:
    """The timeline of one enrollment: all runs of its continue-as-new chain, oldest first.

    ``first_run_id`` picks the chain (a re-enrollment reuses the workflow id with a new
    chain) and is read forwards; without it the latest chain is read backwards. A missing
    workflow raises temporalio's RPCError (NOT_FOUND).
    """
    if first_run_id is not None:
        runs = await _runs_from(client, workflow_id, first_run_id)
    else:
        runs = await _runs_back_from_latest(client, workflow_id)
    reader = _Reader(client.data_converter)
    for number, (_, events) in enumerate(runs, start=1):
        await reader.read_run(number, events)
    return EnrollmentHistory(
        workflow_id=workflow_id, runs=[r for r, _ in runs], status=reader.status, entries=reader.entries
    )


async def _runs_back_from_latest(client: Client, workflow_id: str) -> list[tuple[str, list[HistoryEvent]]]:
    runs: list[tuple[str, list[HistoryEvent]]] = []
    run_id: str | None = None
    while True:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        events = list((await handle.fetch_history()).events)
        runs.append((run_id or (await handle.describe()).run_id, events))
        previous = events[0].workflow_execution_started_event_attributes.continued_execution_run_id
        if not previous:
            break
        run_id = previous
    runs.reverse()
    return runs


async def _runs_from(client: Client, workflow_id: str, run_id: str) -> list[tuple[str, list[HistoryEvent]]]:
    runs: list[tuple[str, list[HistoryEvent]]] = []
    current: str | None = run_id
    while current:
        events = list((await client.get_workflow_handle(workflow_id, run_id=current).fetch_history()).events)
        runs.append((current, events))
        last = events[-1] if events else None
        current = (
            last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
            if last is not None and last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW
            else None
        )
    return runs


def _describe_event(event: ContactEventSignal) -> str:
    """Engagement names its email (and link); other events show their properties."""
    props = event.properties
    if event.type.startswith("email_") and "message_id" in props:
        text = f"{event.type} of message {props['message_id']}"
        if props.get("step_id"):
            text += f" (step {props['step_id']})"
        if props.get("url"):
            text += f" -> {props['url']}"
        return text
    return f"{event.type} {props}" if props else event.type


def format_entry(entry: HistoryEntry) -> str:
    """One line for people: ``2026-03-02 09:00:00  welcome           Sent 'demo-welcome' (message 1)``."""
    return f"{entry.at:%Y-%m-%d %H:%M:%S}  {(entry.step_id or '-'):<16}  {entry.text}"


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
            self.add(event, "event", f"Event received: {_describe_event(data)}", event_id=data.event_id, type=data.type)
        elif isinstance(data, (PauseSignal, ResumeSignal)):
            self.pause_changed(event, data)
        elif isinstance(data, ExitSignal):
            self.add(event, "exit_requested", f"Exit requested by {data.requested_by}: {data.reason}")
        elif isinstance(data, ContactChangedSignal):
            c = data.contact
            self.add(
                event,
                "contact_changed",
                f"Contact data changed: {c.subscription_status}, stage {c.lifecycle_stage or '-'}",
                subscription_status=c.subscription_status,
                lifecycle_stage=c.lifecycle_stage,
            )
        else:
            self.add(event, "signal", f"Signal {attrs.signal_name}")

    def pause_changed(self, event: HistoryEvent, data: PauseSignal | PauseUpdate | ResumeSignal | ResumeUpdate) -> None:
        """A sales pause or resume, whether it came as a signal or as a confirmed update."""
        if isinstance(data, (PauseSignal, PauseUpdate)):
            self.add(
                event,
                "paused",
                f"Paused by {data.paused_by} until {data.until:%Y-%m-%d %H:%M} UTC: {data.reason}",
                paused_by=data.paused_by,
                until=data.until.isoformat(),
                reason=data.reason,
            )
        else:
            self.add(event, "resumed", f"Resumed by {data.resumed_by}" + (f": {data.reason}" if data.reason else ""))

    async def update_accepted(self, event: HistoryEvent) -> None:
        request = event.workflow_execution_update_accepted_event_attributes.accepted_request.input
        kind = UPDATE_TYPES.get(request.name)
        data = await self.decode(request.args, kind) if kind else None
        if isinstance(data, (PauseUpdate, ResumeUpdate)):
            self.pause_changed(event, data)
        else:
            self.add(event, "update", f"Update {request.name}")

    async def activity_scheduled(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_scheduled_event_attributes
        name = attrs.activity_type.name
        kind = ACTIVITY_INPUTS.get(name)
        data = await self.decode(attrs.input, kind) if kind else None
        self.activities[event.event_id] = (name, data)
        if isinstance(data, SendEmailInput) and data.progress is not None:
            self.progress(event, data.progress)

    async def marker_recorded(self, event: HistoryEvent) -> None:
        """A local activity's marker: the progress reports carry the steps entered since the last."""
        attrs = event.marker_recorded_event_attributes
        if attrs.marker_name != LOCAL_ACTIVITY_MARKER or "result" not in attrs.details:
            return
        report = await self.decode(attrs.details["result"], ProgressReport)
        if isinstance(report, ProgressReport) and report.seq > 0:
            self.progress(event, report)

    def progress(self, event: HistoryEvent, report: ProgressReport) -> None:
        for entry in report.entered:
            self.step = entry.step_id
            self.entries.append(
                HistoryEntry(at=entry.at, kind="step", text=f"Step {entry.step_id}", step_id=entry.step_id, run=self.run)
            )

    async def activity_completed(self, event: HistoryEvent) -> None:
        attrs = event.activity_task_completed_event_attributes
        name, data = self.activities.get(attrs.scheduled_event_id, ("?", None))
        if isinstance(data, SendEmailInput):
            result = await self.decode(attrs.result, SendEmailResult)
            if isinstance(result, SendEmailResult) and result.status == "deferred" and result.defer_until:
                self.add(
                    event,
                    "send_deferred",
                    f"Send of '{data.template}' deferred until {result.defer_until:%Y-%m-%d %H:%M} UTC: {result.detail}",
                    defer_until=result.defer_until.isoformat(),
                    reason=result.detail,
                )
            elif isinstance(result, SendEmailResult):
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
        elif isinstance(data, QuietPeriodInput):
            if data.start:
                self.add(event, "quiet", f"Quiet in every flow until {data.until:%Y-%m-%d %H:%M} UTC: {data.reason}")
            else:
                self.add(event, "quiet_ended", f"Quiet period ended: {data.reason}")
        elif name in ACTION_NAMES:
            result = await self.decode(attrs.result, ActionResult)
            if isinstance(result, ActionResult):
                self.add(
                    event,
                    "action",
                    f"{ACTION_NAMES[name]} {result.status}: {result.detail}",
                    activity=name,
                    outcome=result.status,
                    record_id=result.record_id,
                )

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
        start, duration, _ = self.timers.get(timer_id, (None, None, None))
        actual = event.event_time.ToDatetime().replace(tzinfo=_UTC)
        planned_end = start + duration if start is not None and duration is not None else None
        planned = f", planned {planned_end:%Y-%m-%d %H:%M} UTC" if planned_end else ""
        self.add(
            event,
            "wait_ended",
            f"Wait ended {how} at {actual:%Y-%m-%d %H:%M} UTC{planned}",
            planned_end=planned_end.isoformat() if planned_end else None,
            actual_end=actual.isoformat(),
        )

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
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: _Reader.update_accepted,
    EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: _Reader.activity_scheduled,
    EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: _Reader.activity_started,
    EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: _Reader.activity_completed,
    EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED: _Reader.activity_failed,
    EventType.EVENT_TYPE_ACTIVITY_TASK_TIMED_OUT: _Reader.activity_timed_out,
    EventType.EVENT_TYPE_MARKER_RECORDED: _Reader.marker_recorded,
    EventType.EVENT_TYPE_TIMER_STARTED: _Reader.timer_started,
    EventType.EVENT_TYPE_TIMER_FIRED: _Reader.timer_fired,
    EventType.EVENT_TYPE_TIMER_CANCELED: _Reader.timer_canceled,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: _Reader.completed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED: _Reader.terminated,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED: _Reader.failed,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT: _Reader.timed_out,
}
