"""Starting enrollments and telling running ones about a contact.

Used by the API and by the batch and scheduled enrollment activities. The
workflow id per (flow, contact) makes starting idempotent; a re-enrollment is a
new run of the same workflow id once the previous one closed, and a new row
(``sequence`` + 1). The enrollments row is an index the workflow itself keeps
current (see ``record_progress``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from nurture import audience
from nurture.contracts import (
    ENROLLMENT_WORKFLOW,
    ActivityTimeouts,
    ContactChangedSignal,
    ContactEventSignal,
    ContactSnapshot,
    EnrollmentInput,
    ExitSignal,
    PauseSignal,
    PauseState,
    ResumeSignal,
    enrollment_workflow_id,
)
from nurture.flow.conditions import matches_properties
from nurture.flow.language import EventTrigger, FlowDefinition
from nurture.flow.triggers import EnrollmentPolicy, InactivityTrigger, PropertyTrigger
from nurture.event_types import MESSAGE_EVENTS
from nurture.logging import get_logger
from nurture.models import (
    Contact,
    Enrollment,
    EnrollmentStatus,
    Event,
    Flow,
    FlowStatus,
    FlowVersion,
    Message,
    SubscriptionStatus,
    utcnow,
)
from nurture.settings import Settings
from nurture.search_attributes import start_attributes
from nurture.snapshots import contact_snapshot

# The exit reason when a flow's trigger no longer matches a contact it enrolled.
CRITERIA_NO_LONGER_MATCH = "criteria_no_longer_match"


class TemporalUnavailable(Exception):
    """Temporal could not be reached; nothing was committed."""


@dataclass
class EnrollOutcome:
    enrollment: Enrollment
    created: bool


@dataclass
class Admission:
    """What an automatic enrollment (trigger, scan, bulk) did: enrolled, or why not."""

    enrollment: Enrollment | None = None
    skipped: str | None = None  # "unsubscribed", "bounced", "suppressed", "already_enrolled"

    @property
    def created(self) -> bool:
        return self.skipped is None and self.enrollment is not None


@dataclass
class RouteOutcome:
    enrolled: list[Enrollment] = field(default_factory=list)
    signalled: list[Enrollment] = field(default_factory=list)


def may_reenroll(policy: EnrollmentPolicy | None, latest: Enrollment, now: datetime) -> bool:
    """Whether the flow's policy lets a contact whose latest enrollment is ``latest`` enroll again."""
    if latest.status == EnrollmentStatus.active or policy is None or policy.reenroll == "never":
        return False
    if policy.reenroll == "after_days":
        return now >= latest.started_at + timedelta(days=policy.reenroll_after_days or 0)
    return True


async def active_version(session: AsyncSession, flow: Flow) -> FlowVersion:
    return (
        await session.exec(
            select(FlowVersion).where(FlowVersion.flow_id == flow.id, FlowVersion.version == flow.active_version)
        )
    ).one()


async def latest_enrollment(session: AsyncSession, flow_id: int, contact_id: int) -> Enrollment | None:
    return (
        await session.exec(
            select(Enrollment)
            .where(Enrollment.flow_id == flow_id, Enrollment.contact_id == contact_id)
            .order_by(col(Enrollment.sequence).desc())
        )
    ).first()


class Enroller:
    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings

    # --- enrolling ---------------------------------------------------------

    async def enroll(
        self,
        session: AsyncSession,
        flow: Flow,
        contact: Contact,
        *,
        now: datetime | None = None,
        version: FlowVersion | None = None,
    ) -> EnrollOutcome:
        """Enroll a contact in the flow's active version.

        While an enrollment runs, or when the flow's re-enrollment policy does not allow
        another, the latest enrollment is returned (``created`` False).
        """
        assert flow.id is not None and contact.id is not None and flow.active_version is not None
        now = now or utcnow()
        version = version or await active_version(session, flow)
        definition = FlowDefinition.model_validate(version.definition)
        latest = await latest_enrollment(session, flow.id, contact.id)
        if latest is not None and not may_reenroll(definition.enrollment, latest, now):
            return EnrollOutcome(latest, created=False)

        sequence = latest.sequence + 1 if latest is not None else 1
        workflow_id = enrollment_workflow_id(self.settings.workflow_id_prefix, flow.id, contact.id)
        pause = None
        if contact.paused_until is not None and contact.paused_until > utcnow():
            pause = PauseState(
                until=contact.paused_until, reason=contact.pause_reason or "", paused_by=contact.paused_by or ""
            )
        snapshot = contact_snapshot(contact)
        # The row first, in the caller's transaction: the workflow updates it by id from its first
        # report on, waiting (retrying) until the caller commits; taken back if Temporal does not
        # take the start, so the caller's rollback on an error leaves nothing behind.
        enrollment = Enrollment(
            flow_id=flow.id,
            flow_version=version.version,
            contact_id=contact.id,
            sequence=sequence,
            workflow_id=workflow_id,
            started_at=now,
        )
        try:
            async with session.begin_nested():
                session.add(enrollment)
        except IntegrityError:
            written = await latest_enrollment(session, flow.id, contact.id)  # a concurrent request won
            assert written is not None
            return EnrollOutcome(written, created=False)
        assert enrollment.id is not None
        try:
            await self.client.start_workflow(
                ENROLLMENT_WORKFLOW,
                EnrollmentInput(
                    flow_id=flow.id,
                    flow_version=version.version,
                    contact_id=contact.id,
                    enrollment_id=enrollment.id,
                    contact=snapshot,
                    flow=definition,
                    paused=pause,
                    search_attributes=self.settings.temporal_search_attributes,
                    step_search_attributes=self.settings.temporal_step_search_attributes,
                    timeouts=ActivityTimeouts(
                        send=self.settings.send_activity_timeout, heartbeat=self.settings.activity_heartbeat_timeout
                    ),
                ),
                id=workflow_id,
                task_queue=self.settings.temporal_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                # A new run of a closed workflow id only when re-enrolling: the policy was checked above.
                id_reuse_policy=(
                    WorkflowIDReusePolicy.ALLOW_DUPLICATE if latest is not None else WorkflowIDReusePolicy.REJECT_DUPLICATE
                ),
                search_attributes=(
                    start_attributes(flow.id, version.version, contact.id)
                    if self.settings.temporal_search_attributes else None
                ),
            )
        except WorkflowAlreadyStartedError:
            await self._forget(session, enrollment)
            # The previous run has not closed yet (its row is ahead of it): not now.
            latest = await latest_enrollment(session, flow.id, contact.id)
            assert latest is not None
            return EnrollOutcome(latest, created=False)
        except RPCError as exc:
            await self._forget(session, enrollment)
            raise TemporalUnavailable(str(exc)) from exc
        get_logger(flow_id=flow.id, enrollment_id=workflow_id, contact_id=contact.id).info(
            "enrolled", version=version.version, sequence=enrollment.sequence, paused=pause is not None
        )
        return EnrollOutcome(enrollment, created=True)

    @staticmethod
    async def _forget(session: AsyncSession, enrollment: Enrollment) -> None:
        await session.delete(enrollment)
        await session.flush()

    async def admit(
        self,
        session: AsyncSession,
        flow: Flow,
        contact: Contact,
        *,
        version: FlowVersion | None = None,
        now: datetime | None = None,
        since: datetime | None = None,
    ) -> Admission:
        """Enroll automatically (a trigger, a scan, a bulk run) unless the contact may not be.

        Never: a contact that is not subscribed, one that matches the flow's suppression
        criteria, one enrolled already (per the re-enrollment policy) or, with ``since``, one
        whose latest enrollment began at or after ``since`` (this date or inactivity spell).
        """
        assert flow.id is not None and contact.id is not None
        now = now or utcnow()
        if contact.subscription_status != SubscriptionStatus.subscribed:
            return Admission(skipped=str(contact.subscription_status))
        version = version or await active_version(session, flow)
        definition = FlowDefinition.model_validate(version.definition)
        fields = contact_snapshot(contact).fields()
        if await audience.suppressing(session, contact.id, fields, definition.enrollment, now) is not None:
            return Admission(skipped="suppressed")
        if since is not None:
            latest = await latest_enrollment(session, flow.id, contact.id)
            if latest is not None and latest.started_at >= since:
                return Admission(latest, skipped="already_enrolled")
        outcome = await self.enroll(session, flow, contact, now=now, version=version)
        return Admission(outcome.enrollment, skipped=None if outcome.created else "already_enrolled")

    async def suppressed(self, session: AsyncSession, flow: Flow, contact: Contact) -> int | None:
        """The index of the flow's suppression condition the contact matches, or None."""
        assert contact.id is not None
        definition = FlowDefinition.model_validate((await active_version(session, flow)).definition)
        fields = contact_snapshot(contact).fields()
        return await audience.suppressing(session, contact.id, fields, definition.enrollment, utcnow())

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

        await self._unenroll_active_again(session, contact, event)
        if contact.subscription_status != SubscriptionStatus.subscribed:
            return outcome
        flows = (
            await session.exec(
                select(Flow).where(Flow.status == FlowStatus.active, Flow.trigger_event == event.type)
            )
        ).all()
        for flow in flows:
            version = await active_version(session, flow)
            trigger = FlowDefinition.model_validate(version.definition).trigger
            if isinstance(trigger, EventTrigger) and matches_properties(trigger.where, event.properties):
                admission = await self.admit(session, flow, contact, version=version)
                if admission.created and admission.enrollment is not None:
                    outcome.enrolled.append(admission.enrollment)
        return outcome

    async def forward_event(self, session: AsyncSession, contact: Contact, event: Event) -> list[Enrollment]:
        """Tell the running enrollments only, no trigger: for an event routed before whose signals
        may have been lost (the workflows ignore an event id they already heard)."""
        signal = ContactEventSignal(
            event_id=event.event_id, type=event.type, properties=event.properties, occurred_at=event.occurred_at
        )
        recipients = await self._event_recipients(session, contact, event)
        for enrollment in recipients:
            await self._signal(enrollment.workflow_id, "contact_event", signal)
        return recipients

    async def _unenroll_active_again(self, session: AsyncSession, contact: Contact, event: Event) -> None:
        """Any event since the enrollment began is activity: inactivity flows that unenroll when their
        trigger stops matching let the contact go."""
        rows = await session.exec(
            select(Enrollment, FlowVersion)
            .join(
                FlowVersion,
                (FlowVersion.flow_id == Enrollment.flow_id) & (FlowVersion.version == Enrollment.flow_version),
            )
            .where(Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active)
        )
        for enrollment, version in rows.all():
            definition = FlowDefinition.model_validate(version.definition)
            policy = definition.enrollment
            if (
                isinstance(definition.trigger, InactivityTrigger)
                and policy is not None
                and policy.unenroll_when_trigger_stops_matching
                and event.occurred_at > enrollment.started_at
            ):
                await self.exit(enrollment, CRITERIA_NO_LONGER_MATCH, "trigger")

    async def _event_recipients(self, session: AsyncSession, contact: Contact, event: Event) -> list[Enrollment]:
        active = select(Enrollment).where(
            Enrollment.contact_id == contact.id, Enrollment.status == EnrollmentStatus.active
        )
        message_id = event.properties.get("message_id")
        if event.type in MESSAGE_EVENTS and message_id is not None:
            # An open or click concerns the enrollment that sent that email, not every flow.
            message = await session.get(Message, _as_int(message_id))
            if message is None or message.contact_id != contact.id or message.workflow_id is None:
                return []
            active = active.where(Enrollment.workflow_id == message.workflow_id)
        return list((await session.exec(active)).all())

    # --- telling running enrollments ----------------------------------------

    async def contact_changed(
        self,
        session: AsyncSession,
        contact: Contact,
        previous: ContactSnapshot | None = None,
        *,
        created: bool = False,
    ) -> list[Enrollment]:
        """Tell running enrollments; with the contact as it was before (or ``created``), run property triggers.

        Property triggers go first, so an enrollment they start hears the new data too.
        """
        if previous is not None or created:
            await self.apply_property_triggers(session, contact, previous)
        return await self._signal_active(
            session, contact, "contact_changed", ContactChangedSignal(contact=contact_snapshot(contact))
        )

    async def property_trigger_flows(self, session: AsyncSession) -> list[tuple[Flow, FlowVersion, FlowDefinition]]:
        rows = await session.exec(
            select(Flow, FlowVersion)
            .join(FlowVersion, (FlowVersion.flow_id == Flow.id) & (FlowVersion.version == Flow.active_version))
            .where(Flow.status == FlowStatus.active, col(Flow.trigger_event).is_(None))
            .order_by(Flow.id)
        )
        found = []
        for flow, version in rows.all():
            definition = FlowDefinition.model_validate(version.definition)
            if isinstance(definition.trigger, PropertyTrigger):
                found.append((flow, version, definition))
        return found

    async def apply_property_triggers(
        self, session: AsyncSession, contact: Contact, previous: ContactSnapshot | None
    ) -> list[Enrollment]:
        """Enroll where the contact starts to match a property trigger; unenroll where it stopped, if asked.

        Only the change counts: a contact that matched before and still does is left alone.
        """
        assert contact.id is not None
        now = utcnow()
        current = contact_snapshot(contact).fields()
        before = previous.fields() if previous is not None else None
        enrolled: list[Enrollment] = []
        for flow, version, definition in await self.property_trigger_flows(session):
            condition = definition.trigger.condition  # type: ignore[union-attr]
            matched = before is not None and await audience.matches(session, contact.id, before, condition, now)
            matching = await audience.matches(session, contact.id, current, condition, now)
            log = get_logger(flow_id=flow.id, contact_id=contact.id)
            if matching and not matched:
                admission = await self.admit(session, flow, contact, version=version, now=now)
                log.info("property_trigger_matched", enrolled=admission.created, skipped=admission.skipped)
                if admission.created and admission.enrollment is not None:
                    enrolled.append(admission.enrollment)
            elif matched and not matching and definition.enrollment and definition.enrollment.unenroll_when_trigger_stops_matching:
                latest = await latest_enrollment(session, flow.id, contact.id)  # type: ignore[arg-type]
                if latest is not None and latest.status == EnrollmentStatus.active:
                    await self.exit(latest, CRITERIA_NO_LONGER_MATCH, "trigger")
                    log.info("property_trigger_unmatched", enrollment_id=latest.workflow_id)
        return enrolled

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
