"""Flow steps that act for the sales team: notify the owner, create a task, enroll elsewhere."""

from __future__ import annotations

from html import escape

from sqlmodel import select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.common import require_contact
from activities.email.providers import EmailProvider, OutgoingEmail
from activities.email.rendering import TemplateRenderer, TemplateRenderError, template_failure
from nurture.contracts import ActionResult, CreateTaskInput, EnrollInFlowInput, NotifyOwnerInput
from nurture.crm.writes import TASK, queue_write
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.logging import get_logger
from nurture.models import Event, Flow, FlowStatus, Message, MessageStatus, Task, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot


class ActionActivities:
    def __init__(self, db: Database, provider: EmailProvider, client: Client | None, settings: Settings):
        self.db = db
        self.provider = provider
        self.client = client
        self.settings = settings
        self.renderer = TemplateRenderer.from_settings(settings)

    @activity.defn(name="notify_owner")
    async def notify_owner(self, input: NotifyOwnerInput) -> ActionResult:
        """An internal email to the sales owner with what the contact did lately."""
        async with self.db.session() as session:
            done = (await session.exec(select(Message).where(Message.idempotency_key == input.idempotency_key))).first()
            if done is not None and done.status == MessageStatus.sent:
                return ActionResult(status="done", detail=f"owner notified ({done.to_email})", record_id=done.id)
            contact = await require_contact(session, input.contact_id)
            to = contact.owner if contact.owner and "@" in contact.owner else input.fallback_to
            if not to:
                return ActionResult(status="skipped", detail="the contact has no owner with an email address")
            events = (
                await session.exec(
                    select(Event).where(Event.contact_id == contact.id).order_by(Event.occurred_at.desc()).limit(10)
                )
            ).all()
            fields = contact_snapshot(contact).fields()
            try:
                subject = await self.renderer.line(input.subject, {"contact": fields})
                body = await self.renderer.text(input.message, {"contact": fields}, "message") if input.message else ""
            except TemplateRenderError as exc:
                raise template_failure(f"the notification of step '{input.step_id}'", exc) from exc
            activity_lines = [f"{e.occurred_at:%Y-%m-%d %H:%M} {e.type} {e.properties or ''}" for e in events]
            text = (
                f"{body}\n\nContact: {contact.name or ''} <{contact.email}> {contact.company or ''}\n"
                f"Lifecycle stage: {contact.lifecycle_stage or '-'}\n\nRecent activity:\n"
                + ("\n".join(activity_lines) or "none")
            )
            html = "<pre>" + escape(text) + "</pre>"
            message = done or Message(
                idempotency_key=input.idempotency_key,
                workflow_id=input.workflow_id,
                flow_id=input.flow_id,
                step_id=input.step_id,
                contact_id=contact.id,
                to_email=to,
                template_key=f"notify_owner:{input.step_id}",
                kind="internal",
                provider=self.provider.name,
                scheduled_at=input.at,
            )
            message.subject, message.text, message.html = subject, text, html
            message.attempts += 1
            session.add(message)
            crm = await self._queue_crm_task(session, input, contact, subject, f"Flow {input.flow_id}, step '{input.step_id}'.\n\n{text}")
            await session.commit()
            await self.provider.deliver(
                OutgoingEmail(
                    idempotency_key=input.idempotency_key,
                    sender=self.settings.email_from,
                    to=to,
                    subject=subject,
                    html=html,
                    text=text,
                )
            )
            message.status, message.sent_at = MessageStatus.sent, utcnow()
            session.add(message)
            await session.commit()
            return ActionResult(status="done", detail=f"owner notified ({to}){crm}", record_id=message.id)

    @activity.defn(name="create_task")
    async def create_task(self, input: CreateTaskInput) -> ActionResult:
        async with self.db.session() as session:
            existing = (await session.exec(select(Task).where(Task.idempotency_key == input.idempotency_key))).first()
            if existing is not None:
                return ActionResult(status="done", detail=f"{existing.kind} for {existing.assignee}", record_id=existing.id)
            contact = await require_contact(session, input.contact_id)
            assignee = (contact.owner or "unassigned") if input.assignee == "owner" else input.assignee
            fields = contact_snapshot(contact).fields()
            try:
                title = await self.renderer.line(input.title, {"contact": fields}, "title")
                description = (
                    await self.renderer.text(input.description, {"contact": fields}, "description")
                    if input.description else ""
                )
            except TemplateRenderError as exc:
                raise template_failure(f"the task of step '{input.step_id}'", exc) from exc
            task = Task(
                idempotency_key=input.idempotency_key,
                kind=input.kind,
                title=title,
                description=description,
                contact_id=contact.id,
                assignee=assignee,
                priority=input.priority,
                due_at=input.due_at,
                workflow_id=input.workflow_id,
                flow_id=input.flow_id,
                step_id=input.step_id,
            )
            session.add(task)
            recent = await _recent_activity(session, contact.id)
            crm = await self._queue_crm_task(
                session, input, contact, title,
                f"{description}\n\nFlow {input.flow_id}, step '{input.step_id}'.\nRecent activity:\n{recent}",
                due_at=input.due_at,
            )
            await session.commit()
            await session.refresh(task)
            get_logger(flow_id=input.flow_id, enrollment_id=input.workflow_id, contact_id=contact.id).info(
                "task_created", task_id=task.id, assignee=assignee
            )
            return ActionResult(status="done", detail=f"{task.kind} '{title}' for {assignee}{crm}", record_id=task.id)

    async def _queue_crm_task(self, session, input, contact, subject: str, body: str, due_at=None) -> str:
        """The same task for the contact's owner in the CRM, pushed by the CRM sync (nurture/crm/writes.py);
        what the enrollment's timeline says of it."""
        queued = await queue_write(
            session, self.settings, key=f"crm:{input.idempotency_key}", kind=TASK, contact_id=contact.id,
            workflow_id=input.workflow_id,
            payload={
                "subject": subject[:500], "body": body[:60_000], "owner": contact.owner,
                "due_at": due_at.isoformat() if due_at else None,
            },
        )
        return f"; CRM task queued for {self.settings.crm_provider}" if queued is not None else ""

    @activity.defn(name="enroll_in_flow")
    async def enroll_in_flow(self, input: EnrollInFlowInput) -> ActionResult:
        if self.client is None:
            raise ApplicationError("this worker has no Temporal client for enrolling", non_retryable=True)
        async with self.db.session() as session:
            flow = await session.get(Flow, input.target_flow_id)
            if flow is None or flow.status != FlowStatus.active:
                return ActionResult(status="skipped", detail=f"flow {input.target_flow_id} is not active")
            contact = await require_contact(session, input.contact_id)
            if contact.subscription_status != "subscribed":
                return ActionResult(status="skipped", detail=f"contact is {contact.subscription_status}")
            outcome = await Enroller(self.client, self.settings).enroll(session, flow, contact)
            await session.commit()
            verb = "enrolled in" if outcome.created else "already in"
            return ActionResult(status="done", detail=f"{verb} flow {flow.id}", record_id=outcome.enrollment.id)


async def _recent_activity(session, contact_id: int, limit: int = 10) -> str:
    events = (
        await session.exec(select(Event).where(Event.contact_id == contact_id).order_by(Event.occurred_at.desc()).limit(limit))
    ).all()
    return "\n".join(f"{e.occurred_at:%Y-%m-%d %H:%M} {e.type} {e.properties or ''}" for e in events) or "none"
