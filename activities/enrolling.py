"""Enrolling many contacts: the scheduled scan for date and inactivity triggers, and bulk enrollment.

Each call reads one page of contacts by id and enrolls the ones due, committing
after each so the row lock (SQLite) is never held while Temporal is called for
the next. Starting an enrollment is idempotent (one workflow id per flow and
contact), so a retried page enrolls nobody twice.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import and_, col, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity
from temporalio.client import Client

from activities.occurrences import date_occurrences, inactive_from
from nurture import audience
from nurture.batch_contracts import (
    BulkPageInput,
    BulkPageResult,
    ListScanFlowsInput,
    ScanFlows,
    ScanPageInput,
    ScanPageResult,
)
from nurture.db import Database
from nurture.enrolling import Admission, Enroller, active_version
from nurture.flow.language import FlowDefinition
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES, DateTrigger, InactivityTrigger
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, Flow, FlowStatus, SubscriptionStatus
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot


def date_window(settings: Settings) -> timedelta:
    """How late a date trigger may still enroll: a day, or one scan interval when that is longer."""
    return max(timedelta(days=1), settings.trigger_scan_interval)


async def due_since(
    session: AsyncSession, definition: FlowDefinition, contact: Contact, at: datetime, settings: Settings
) -> datetime | None:
    """When this contact became due for the flow's date or inactivity trigger, or None when it is not due.

    The instant also keys the occurrence: an enrollment that began at or after it already served it.
    """
    trigger = definition.trigger
    assert contact.id is not None
    fields = contact_snapshot(contact).fields()
    if isinstance(trigger, DateTrigger):
        falls = date_occurrences(
            trigger, fields, contact.timezone, definition.timezone, at - date_window(settings), at, settings.default_send_time
        )
        since = falls[-1] if falls else None
    elif isinstance(trigger, InactivityTrigger):
        since = audience.active_since(contact) if inactive_from(trigger, contact) <= at else None
    else:
        return None
    condition = trigger.condition
    if since is not None and condition is not None and not await audience.matches(session, contact.id, fields, condition, at):
        return None
    return since


def count_skip(skipped: dict[str, int], admission: Admission) -> None:
    if admission.skipped:
        skipped[admission.skipped] = skipped.get(admission.skipped, 0) + 1


class EnrollingActivities:
    def __init__(self, db: Database, client: Client | None, settings: Settings):
        self.db = db
        self.client = client
        self.settings = settings

    def _enroller(self) -> Enroller:
        if self.client is None:
            raise RuntimeError("this worker has no Temporal client for enrolling")
        return Enroller(self.client, self.settings)

    @activity.defn(name="list_scan_flows")
    async def list_scan_flows(self, input: ListScanFlowsInput) -> ScanFlows:
        """Active flows whose trigger is a date or inactivity trigger."""
        async with self.db.session() as session:
            query = select(Flow).where(Flow.status == FlowStatus.active, col(Flow.trigger_event).is_(None))
            if input.flow_ids is not None:
                query = query.where(col(Flow.id).in_(input.flow_ids))
            found = []
            for flow in (await session.exec(query.order_by(Flow.id))).all():
                definition = FlowDefinition.model_validate((await active_version(session, flow)).definition)
                if definition.trigger.type in SCANNED_TRIGGER_TYPES:
                    found.append(flow.id)
            return ScanFlows(flow_ids=found)

    @activity.defn(name="scan_trigger_page")
    async def scan_trigger_page(self, input: ScanPageInput) -> ScanPageResult:
        """Enroll the contacts of one page that are due for the flow's date or inactivity trigger."""
        enroller = self._enroller()
        async with self.db.session() as session:
            flow = await session.get(Flow, input.flow_id)
            if flow is None or flow.status != FlowStatus.active:
                return ScanPageResult(trigger="inactive", done=True)
            version = await active_version(session, flow)
            definition = FlowDefinition.model_validate(version.definition)
            trigger = definition.trigger
            if not isinstance(trigger, (DateTrigger, InactivityTrigger)):
                return ScanPageResult(trigger=trigger.type, done=True)
            query = select(Contact).where(
                Contact.id > input.after_contact_id, Contact.subscription_status == SubscriptionStatus.subscribed
            )
            if isinstance(trigger, InactivityTrigger):
                cutoff = input.at - timedelta(days=trigger.days)
                query = query.where(
                    or_(
                        col(Contact.last_activity_at) <= cutoff,
                        and_(col(Contact.last_activity_at).is_(None), col(Contact.created_at) <= cutoff),
                    )
                )
            contacts = list((await session.exec(query.order_by(Contact.id).limit(input.limit))).all())
            await session.commit()  # end the read before enrolling: SQLite holds its lock until then

            result = ScanPageResult(
                trigger=trigger.type,
                examined=len(contacts),
                next_cursor=contacts[-1].id if contacts else input.after_contact_id,
                done=len(contacts) < input.limit,
            )
            for contact in contacts:
                activity.heartbeat(contact.id)
                since = await due_since(session, definition, contact, input.at, self.settings)
                if since is None:
                    continue
                admission = await enroller.admit(session, flow, contact, version=version, now=input.at, since=since)
                await session.commit()
                if admission.created or enrolled_at(admission, input.at):
                    result.enrolled += 1
                else:
                    count_skip(result.skipped, admission)
        get_logger(flow_id=input.flow_id).info(
            "trigger_scan_page", trigger=result.trigger, examined=result.examined, enrolled=result.enrolled,
            skipped=result.skipped, cursor=result.next_cursor,
        )
        return result

    @activity.defn(name="bulk_enroll_page")
    async def bulk_enroll_page(self, input: BulkPageInput) -> BulkPageResult:
        """Enroll the next contacts matching the segment, at most ``max_enrollments`` of them."""
        enroller = self._enroller()
        async with self.db.session() as session:
            flow = await session.get(Flow, input.flow_id)
            if flow is None or flow.status != FlowStatus.active:
                return BulkPageResult(done=True, flow_inactive=True, next_cursor=input.after_contact_id)
            version = await active_version(session, flow)
            query = select(Contact).where(Contact.id > input.after_contact_id).order_by(Contact.id).limit(input.scan_limit)
            contacts = list((await session.exec(query)).all())
            await session.commit()

            result = BulkPageResult(next_cursor=input.after_contact_id, done=len(contacts) < input.scan_limit)
            for position, contact in enumerate(contacts):
                activity.heartbeat(contact.id)
                assert contact.id is not None
                result.examined += 1
                result.next_cursor = contact.id
                segment = input.segment
                fields = contact_snapshot(contact).fields()
                if segment is not None and not await audience.matches(session, contact.id, fields, segment, input.at):
                    continue
                result.matched += 1
                admission = await enroller.admit(session, flow, contact, version=version, now=input.at)
                await session.commit()
                if admission.created or enrolled_at(admission, input.at):
                    result.enrolled += 1
                else:
                    count_skip(result.skipped, admission)
                if result.enrolled >= input.max_enrollments:
                    result.done = result.done and position == len(contacts) - 1
                    break
        get_logger(flow_id=input.flow_id, bulk_id=input.bulk_id).info(
            "bulk_enroll_page", examined=result.examined, enrolled=result.enrolled, skipped=result.skipped,
            cursor=result.next_cursor,
        )
        return result


def enrolled_at(admission: Admission, at: datetime) -> bool:
    """Enrolled by this very scan or page: a retried page finds what its failed attempt started."""
    enrollment: Enrollment | None = admission.enrollment
    return admission.skipped == "already_enrolled" and enrollment is not None and enrollment.started_at >= at
