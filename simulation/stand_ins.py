"""Stand-ins for every enrollment activity, for the flow simulator.

They are registered under the same names as the real activities, so the real
EnrollmentWorkflow runs unchanged. They work on one in-memory world per
simulation (a copy of the contact, the templates, the events): they render
what would be sent with the real rendering code, and send and write nothing.

Times: the simulator's private Temporal test server has its own clock. The
world keeps ``shift`` (server time minus simulated time) so that calendar
waits are resolved against the simulated calendar, not the server's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from temporalio import activity
from temporalio.common import RawValue
from temporalio.exceptions import ApplicationError

from activities.contacts import _apply as apply_members
from activities.email.rendering import TemplateRenderer, TemplateRenderError, template_failure
from activities.governance import next_open_slot
from activities.scheduling import parse_clock, resolve, zone_for
from nurture.contracts import (
    ActionResult,
    ContactSnapshot,
    CreateTaskInput,
    EnrollInFlowInput,
    NotifyOwnerInput,
    QuietPeriodInput,
    RecentEvents,
    RecentEventsInput,
    ProgressReport,
    ResolvedTime,
    ResolveTimeInput,
    SendEmailInput,
    SendEmailResult,
    SendSmsInput,
    UpdateContactInput,
    WebhookInput,
)
from nurture.flow.conditions import EventFact
from nurture.simulation_models import TemplateText


@dataclass
class Outgoing:
    """Something the flow would have sent or done, as the simulator reports it."""

    channel: str  # email, sms, internal, task, webhook, enrollment, contact_update, quiet_period
    step_id: str
    at: datetime  # server time
    status: str
    to: str | None = None
    template: str | None = None
    variant: str | None = None
    subject: str | None = None
    text: str | None = None
    detail: str | None = None
    message_id: int | None = None
    due_at: datetime | None = None  # server time, like ``at``


@dataclass
class SendRules:
    """The deployment's send governance (settings), applied to simulated sends as to real ones."""

    quiet_hours: tuple[time, time] | None = None
    holidays: set[date] = field(default_factory=set)
    frequency_cap: int = 0
    cap_window: timedelta = timedelta(hours=168)

    @classmethod
    def from_settings(cls, settings: Any) -> SendRules:
        quiet = None
        if settings.quiet_hours_start and settings.quiet_hours_end:
            quiet = parse_clock(settings.quiet_hours_start), parse_clock(settings.quiet_hours_end)
        return cls(
            quiet_hours=quiet,
            holidays=set(settings.holidays),
            frequency_cap=settings.frequency_cap,
            cap_window=timedelta(hours=settings.frequency_cap_window_hours),
        )


@dataclass
class World:
    """Everything one simulation's activities see and change."""

    contact: ContactSnapshot
    templates: dict[str, TemplateText]
    shift: timedelta
    default_send_time: str = "09:00"
    rules: SendRules = field(default_factory=SendRules)
    events: list[EventFact] = field(default_factory=list)
    outgoing: list[Outgoing] = field(default_factory=list)
    # Calendar waits resolved so far and sends deferred, in simulated time, in the order they happened.
    planned: list[datetime] = field(default_factory=list)
    deferrals: list[datetime] = field(default_factory=list)

    def messages_of(self, step_id: str) -> list[Outgoing]:
        return [o for o in self.outgoing if o.channel == "email" and o.step_id == step_id and o.message_id is not None]

    def _next_message_id(self) -> int:
        return 1 + sum(1 for o in self.outgoing if o.message_id is not None)

    def context(self) -> dict[str, Any]:
        return {"contact": self.contact.fields()}


class SimulationActivities:
    def __init__(self, world: World, renderer: TemplateRenderer | None = None):
        self.world = world
        self.renderer = renderer or TemplateRenderer()

    @activity.defn(name="update_contact")
    async def update_contact(self, input: UpdateContactInput) -> ContactSnapshot:
        self.world.contact = updated_contact(
            self.world.contact,
            set=input.set,
            clear=input.clear,
            add_to_lists=input.add_to_lists,
            remove_from_lists=input.remove_from_lists,
            add_tags=input.add_tags,
            remove_tags=input.remove_tags,
            fields={"lifecycle_stage": input.lifecycle_stage},
        )
        self.world.outgoing.append(
            Outgoing(channel="contact_update", step_id=_step_of(input.idempotency_key), at=_now(), status="done",
                     detail=_describe_update(input))
        )
        return self.world.contact.model_copy(deep=True)

    @activity.defn(name="send_email")
    async def send_email(self, input: SendEmailInput) -> SendEmailResult:
        world = self.world
        if world.contact.reachable:
            deferral = self._gate(input)
            if deferral is not None:
                return deferral
        sent = Outgoing(channel="email", step_id=input.step_id, at=input.scheduled_at, status="sent",
                        to=world.contact.email, template=input.template, variant=input.variant)
        world.outgoing.append(sent)
        if not world.contact.reachable:
            sent.status, sent.detail = "refused", f"contact is {world.contact.subscription_status}"
            return SendEmailResult(message_id=None, status="refused", detail=sent.detail)
        template = world.templates.get(input.template)
        if template is None:
            sent.status, sent.detail = "failed", f"template '{input.template}' does not exist"
            raise ApplicationError(sent.detail, type="TemplateError", non_retryable=True)
        try:
            rendered = await self.renderer.email(template.subject, template.html, template.text, world.context())
        except TemplateRenderError as exc:
            sent.status, sent.detail = "failed", f"template '{input.template}' does not render: {exc}"
            raise ApplicationError(sent.detail, type="TemplateError", non_retryable=True) from exc
        sent.subject, sent.text, sent.message_id = rendered.subject, rendered.text, world._next_message_id()
        return SendEmailResult(message_id=sent.message_id, status="sent", provider_message_id="simulated")

    def _gate(self, input: SendEmailInput) -> SendEmailResult | None:
        """Windows, quiet hours, holidays and the cap, as the real gate; the cap sees this flow's sends only."""
        world, rules = self.world, self.world.rules
        now = input.scheduled_at - world.shift
        zone = zone_for(world.contact.timezone, input.flow_timezone)
        quiet = None if input.transactional else rules.quiet_hours
        holidays = set() if input.transactional else rules.holidays
        slot = next_open_slot(now, zone, input.window, quiet, holidays)
        if slot > now:
            reason = "outside the send window" if input.window else "quiet hours or a holiday"
            return self._defer(slot, reason)
        if rules.frequency_cap and not input.transactional:
            recent = sorted(
                o.at - world.shift for o in world.outgoing
                if o.channel == "email" and o.status == "sent" and o.at - world.shift > now - rules.cap_window
            )
            if len(recent) >= rules.frequency_cap:
                hours = int(rules.cap_window.total_seconds() // 3600)
                reason = f"frequency cap: {rules.frequency_cap} in {hours}h"
                return self._defer(recent[len(recent) - rules.frequency_cap] + rules.cap_window, reason)
        return None

    def _defer(self, until: datetime, reason: str) -> SendEmailResult:
        self.world.deferrals.append(until)
        return SendEmailResult(message_id=None, status="deferred", defer_until=until + self.world.shift, detail=reason)

    @activity.defn(name="quiet_period")
    async def quiet_period(self, input: QuietPeriodInput) -> None:
        detail = (
            f"quiet period in every flow until {_iso(input.until - self.world.shift)}" if input.start
            else "quiet period ended"
        )
        self.world.outgoing.append(
            Outgoing(channel="quiet_period", step_id="", at=_now(), status="simulated", detail=f"{detail}: {input.reason}")
        )

    @activity.defn(dynamic=True)
    async def unknown(self, args: Sequence[RawValue]) -> None:
        # Fail the simulation at once rather than retrying an activity that will never be registered.
        raise ApplicationError(
            f"the simulator has no stand-in for the activity '{activity.info().activity_type}'",
            type="NotSimulated", non_retryable=True,
        )

    @activity.defn(name="record_progress")
    async def record_progress(self, input: ProgressReport) -> ProgressReport:
        return input  # the simulated enrollment has no row to keep current

    @activity.defn(name="resolve_time")
    async def resolve_time(self, input: ResolveTimeInput) -> ResolvedTime:
        world = self.world
        simulated = input.model_copy(update={"now": input.now - world.shift})
        resolved = resolve(simulated, world.contact.fields(), world.contact.timezone, world.default_send_time)
        if resolved.at is not None:
            world.planned.append(resolved.at)
            resolved.at = resolved.at + world.shift
        return resolved

    @activity.defn(name="recent_events")
    async def recent_events(self, input: RecentEventsInput) -> RecentEvents:
        return RecentEvents(
            events=[e for e in self.world.events if e.type in input.types and e.at >= input.since]
        )

    @activity.defn(name="notify_owner")
    async def notify_owner(self, input: NotifyOwnerInput) -> ActionResult:
        contact = self.world.contact
        to = contact.owner if contact.owner and "@" in contact.owner else input.fallback_to
        if not to:
            return self._record("internal", input.step_id, input.at, "skipped", "the contact has no owner with an email address")
        try:
            subject = await self.renderer.line(input.subject, self.world.context())
        except TemplateRenderError as exc:
            raise self._failed("internal", input.step_id, input.at, template_failure("the notification", exc))
        self.world.outgoing.append(
            Outgoing(channel="internal", step_id=input.step_id, at=input.at, status="sent", to=to, subject=subject)
        )
        return ActionResult(status="done", detail=f"owner notified ({to})")

    @activity.defn(name="create_task")
    async def create_task(self, input: CreateTaskInput) -> ActionResult:
        contact = self.world.contact
        assignee = (contact.owner or "unassigned") if input.assignee == "owner" else input.assignee
        try:
            title = await self.renderer.line(input.title, self.world.context(), "title")
        except TemplateRenderError as exc:
            raise self._failed("task", input.step_id, input.at, template_failure("the task", exc))
        self.world.outgoing.append(
            Outgoing(channel="task", step_id=input.step_id, at=input.at, status="done", to=assignee, subject=title,
                     detail=f"{input.kind}, {input.priority} priority",
                     due_at=input.due_at)
        )
        return ActionResult(status="done", detail=f"{input.kind} '{title}' for {assignee}")

    @activity.defn(name="call_webhook")
    async def call_webhook(self, input: WebhookInput) -> ActionResult:
        try:
            body = await self.renderer.json(input.body, self.world.context())
        except TemplateRenderError as exc:
            raise self._failed("webhook", input.step_id, input.at, template_failure("the webhook body", exc))
        detail = f"{input.method} {input.url} (not called in a simulation)"
        self.world.outgoing.append(
            Outgoing(channel="webhook", step_id=input.step_id, at=input.at, status="simulated", to=input.url,
                     text=str(body), detail=detail)
        )
        return ActionResult(status="done", detail=detail)

    @activity.defn(name="send_sms")
    async def send_sms(self, input: SendSmsInput) -> ActionResult:
        contact = self.world.contact
        if not contact.reachable or contact.properties.get("sms_opt_out"):
            return self._record("sms", input.step_id, input.at, "skipped", "the contact does not receive SMS")
        if not contact.phone:
            return self._record("sms", input.step_id, input.at, "skipped", "the contact has no phone number")
        try:
            text = await self.renderer.text(input.text, self.world.context())
        except TemplateRenderError as exc:
            raise self._failed("sms", input.step_id, input.at, template_failure("the text", exc))
        self.world.outgoing.append(
            Outgoing(channel="sms", step_id=input.step_id, at=input.at, status="sent", to=contact.phone, text=text)
        )
        return ActionResult(status="done", detail=f"sms sent to {contact.phone}")

    @activity.defn(name="enroll_in_flow")
    async def enroll_in_flow(self, input: EnrollInFlowInput) -> ActionResult:
        detail = f"would enroll in flow {input.target_flow_id} (not simulated)"
        return self._record("enrollment", input.step_id, input.at, "simulated", detail)

    def _record(self, channel: str, step_id: str, at: datetime, status: str, detail: str) -> ActionResult:
        self.world.outgoing.append(Outgoing(channel=channel, step_id=step_id, at=at, status=status, detail=detail))
        return ActionResult(status="skipped" if status == "skipped" else "done", detail=detail)

    def _failed(self, channel: str, step_id: str, at: datetime, error: ApplicationError) -> ApplicationError:
        """Record a step whose template does not render, as the real activity fails it."""
        self.world.outgoing.append(Outgoing(channel=channel, step_id=step_id, at=at, status="failed", detail=error.message))
        return error

    def all(self) -> list:
        return [
            self.update_contact, self.send_email, self.record_progress, self.resolve_time,
            self.recent_events, self.notify_owner, self.create_task, self.call_webhook, self.send_sms,
            self.enroll_in_flow, self.quiet_period, self.unknown,
        ]


def updated_contact(
    contact: ContactSnapshot,
    *,
    set: dict[str, Any] | None = None,
    clear: list[str] | None = None,
    add_to_lists: list[str] | None = None,
    remove_from_lists: list[str] | None = None,
    add_tags: list[str] | None = None,
    remove_tags: list[str] | None = None,
    fields: dict[str, Any] | None = None,
) -> ContactSnapshot:
    """A changed copy of the contact, with the same list and tag rules as the real update_contact."""
    properties = {**contact.properties, **(set or {})}
    for name in clear or []:
        properties.pop(name, None)
    changes: dict[str, Any] = {
        "properties": properties,
        "lists": apply_members(contact.lists, add_to_lists or [], remove_from_lists or []),
        "tags": apply_members(contact.tags, add_tags or [], remove_tags or []),
    }
    changes.update({name: value for name, value in (fields or {}).items() if value is not None})
    return contact.model_copy(update=changes)


def _now() -> datetime:
    return activity.info().current_attempt_scheduled_time


def _step_of(idempotency_key: str) -> str:
    """Keys are ``<workflow>/<run>/<step>/<visit>``."""
    parts = idempotency_key.split("/")
    return parts[-2] if len(parts) >= 2 else idempotency_key


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def _describe_update(input: UpdateContactInput) -> str:
    parts = []
    if input.lifecycle_stage:
        parts.append(f"lifecycle stage {input.lifecycle_stage}")
    parts += [f"set {k}={v!r}" for k, v in input.set.items()]
    parts += [f"clear {k}" for k in input.clear]
    parts += [f"add to list {m}" for m in input.add_to_lists] + [f"remove from list {m}" for m in input.remove_from_lists]
    parts += [f"add tag {m}" for m in input.add_tags] + [f"remove tag {m}" for m in input.remove_tags]
    return ", ".join(parts)
