"""Starting enrollments and telling running ones about a contact.

Used by the API and, later, by batch and scheduled enrollment activities. The
workflow id per (flow, contact) makes starting idempotent; the enrollments row
is an index the workflow itself keeps current (see ``record_progress``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nurture.contracts import (
    ENROLLMENT_WORKFLOW,
    ContactChangedSignal,
    ContactEventSignal,
    EnrollmentInput,
    ExitSignal,
    PauseSignal,
    PauseState,
    ResumeSignal,
    enrollment_workflow_id,
)
from nurture.flow.conditions import matches_properties
from nurture.flow.language import EventTrigger, FlowDefinition
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, EnrollmentStatus, Event, Flow, FlowStatus, FlowVersion, Message, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

ENGAGEMENT_EVENTS = {"email_opened", "email_clicked"}


class TemporalUnavailable(Exception):
    """Temporal could not be reached; nothing was committed."""


@dataclass
class EnrollOutcome:
    enrollment: Enrollment
    created: bool


@dataclass
class RouteOutcome:
    enrolled: list[Enrollment] = field(default_factory=list)
    signalled: list[Enrollment] = field(default_factory=list)


class Enroller:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    # --- enrolling ---------------------------------------------------------

    async def enroll(self, session: AsyncSession, flow: Flow, contact: Contact) -> EnrollOutcome:
        """Enroll a contact in the flow's active version; a second call returns the first enrollment."""
        assert flow.id is not None and contact.id is not None and flow.active_version is not None
        existing = await self._enrollment(session, flow.id, contact.id)
        if existing is not None:
            return EnrollOutcome(existing, created=False)

        version = (
            await session.exec(
                select(FlowVersion).where(FlowVersion.flow_id == flow.id, FlowVersion.version == flow.active_version)
            )
        ).one()
        workflow_id = enrollment_workflow_id(self.settings.workflow_id_prefix, flow.id, contact.id)
        pause = None
        if contact.paused_until is not None and contact.paused_until > utcnow():
            pause = PauseState(
                until=contact.paused_until, reason=contact.pause_reason or "", paused_by=contact.paused_by or ""
            )
        started_at = utcnow()
        try:
            await self.client.start_workflow(
                ENROLLMENT_WORKFLOW,
                EnrollmentInput(
                    flow_id=flow.id,
                    flow_version=version.version,
                    contact_id=contact.id,
                    flow=FlowDefinition.model_validate(version.definition),
                    paused=pause,
                    search_attributes=self.settings.temporal_search_attributes,
                ),
                id=workflow_id,
                task_queue=self.settings.temporal_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            )
        except WorkflowAlreadyStartedError:
            pass  # a finished enrollment of this contact: v1 never re-enrolls
        except RPCError as exc:
            raise TemporalUnavailable(str(exc)) from exc

        enrollment = Enrollment(
            flow_id=flow.id,
            flow_version=version.version,
            contact_id=contact.id,
            workflow_id=workflow_id,
            started_at=started_at,
        )
        try:
            async with session.begin_nested():
                session.add(enrollment)
        except IntegrityError:
            # The workflow (or a concurrent request) wrote the row first.
            enrollment = await self._enrollment(session, flow.id, contact.id)  # type: ignore[assignment]
            assert enrollment is not None
            return EnrollOutcome(enrollment, created=False)
        get_logger(flow_id=flow.id, enrollment_id=workflow_id, contact_id=contact.id).info(
            "enrolled", version=version.version, paused=pause is not None
        )
        return EnrollOutcome(enrollment, created=True)

    async def _enrollment(self, session: AsyncSession, flow_id: int, contact_id: int) -> Enrollment | None:
        return (
            await session.exec(
                select(Enrollment).where(Enrollment.flow_id == flow_id, Enrollment.contact_id == contact_id)
            )
        ).first()

    # --- events --------------------------------------------------------------

    async def route_event(self, session: AsyncSession, contact: Contact, event: Event) -> RouteOutcome:
        """Forward the event to the enrollments it concerns, then enroll per matching triggers."""
        outcome = RouteOutcome()
        signal = ContactEventSignal(
            event_id=event.event_id, type=event.type, properties=event.properties, occurred_at=event.occurred_at
        )
        for enrollment in await self._event_recipients(session, contact, event):
            await self._signal(enrollment.workflow_id, "contact_event", signal)
            outcome.signalled.append(enrollment)

        if contact.subscription_status != "subscribed":
            return outcome
        flows = (
            await session.exec(
                select(Flow).where(Flow.status == FlowStatus.active, Flow.trigger_event == event.type)
            )
        ).all()
        for flow in flows:
            version = (
                await session.exec(
                    select(FlowVersion).where(
                        FlowVersion.flow_id == flow.id, FlowVersion.version == flow.active_version
                    )
                )
            ).one()
            trigger = FlowDefinition.model_validate(version.definition).trigger
            if isinstance(trigger, EventTrigger) and matches_properties(trigger.where, event.properties):
                result = await self.enroll(session, flow, contact)
                if result.created:
                    outcome.enrolled.append(result.enrollment)
        return outcome

    async def _event_recipients(self, session: AsyncSession, contact: Contact, event: Event) -> list[Enrollment]:
        active = select(Enrollment).where(
            Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active
        )
        message_id = event.properties.get("message_id")
        if event.type in ENGAGEMENT_EVENTS and message_id is not None:
            # An open or click concerns the enrollment that sent that email, not every flow.
            message = await session.get(Message, _as_int(message_id))
            if message is None or message.contact_id != contact.id or message.workflow_id is None:
                return []
            active = active.where(Enrollment.workflow_id == message.workflow_id)
        return list((await session.exec(active)).all())

    # --- telling running enrollments ----------------------------------------

    async def contact_changed(self, session: AsyncSession, contact: Contact) -> list[Enrollment]:
        return await self._signal_active(
            session, contact, "contact_changed", ContactChangedSignal(contact=contact_snapshot(contact))
        )

    async def pause(
        self, session: AsyncSession, contact: Contact, until: datetime, reason: str, paused_by: str,
        exclude: str | None = None,
    ) -> list[Enrollment]:
        return await self._signal_active(
            session, contact, "pause", PauseSignal(until=until, reason=reason, paused_by=paused_by), exclude
        )

    async def resume(
        self, session: AsyncSession, contact: Contact, resumed_by: str, reason: str | None, exclude: str | None = None
    ) -> list[Enrollment]:
        return await self._signal_active(
            session, contact, "resume", ResumeSignal(resumed_by=resumed_by, reason=reason), exclude
        )

    async def exit(self, enrollment: Enrollment, reason: str, requested_by: str) -> None:
        await self._signal(enrollment.workflow_id, "exit", ExitSignal(reason=reason, requested_by=requested_by))

    async def _signal_active(
        self, session: AsyncSession, contact: Contact, name: str, payload, exclude: str | None = None
    ) -> list[Enrollment]:
        enrollments = [
            e
            for e in (
                await session.exec(
                    select(Enrollment).where(
                        Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active
                    )
                )
            ).all()
            if e.workflow_id != exclude
        ]
        for enrollment in enrollments:
            await self._signal(enrollment.workflow_id, name, payload)
        return enrollments

    async def _signal(self, workflow_id: str, name: str, payload) -> None:
        try:
            await self.client.get_workflow_handle(workflow_id).signal(name, payload)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return  # finished between our read and the signal: nothing left to tell
            raise TemporalUnavailable(str(exc)) from exc


def _as_int(value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return -1
    # Ids are 32-bit columns on PostgreSQL: a bigger number matches no row (and must not reach the query).
    return number if 0 < number < 2**31 else -1
