"""Enrolling many contacts: the scheduled scan for date and inactivity triggers, and bulk enrollment.

Each call reads one page of contacts by id, decides who is due in a few queries, writes the
page's enrollments rows in one transaction and then starts their workflows concurrently
(``Enroller.admit_many``). A start that fails even after its retries keeps its row: the page
fails after logging what it did, Temporal retries it, and the retry counts the rows it finds
from its earlier attempt (begun at the page's ``at``) as its own and starts their workflows
again. Starting is idempotent per row (one workflow id each), so nobody is enrolled twice and
nobody is dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlmodel import and_, col, or_, select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

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
from nurture.enrolling import Admission, Enroller, PageAdmissions, active_version
from nurture.flow.conditions import EventFact
from nurture.flow.language import FlowDefinition
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES, DateTrigger, InactivityTrigger
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, Flow, FlowStatus, SubscriptionStatus
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot


def date_window(settings: Settings) -> timedelta:
    """How late a date trigger may still enroll: a day, or one scan interval when that is longer."""
    return max(timedelta(days=1), settings.trigger_scan_interval)


def due_since(
    definition: FlowDefinition,
    contact: Contact,
    at: datetime,
    settings: Settings,
    events: dict[int, list[EventFact]] | None,
) -> datetime | None:
    """When this contact became due for the flow's date or inactivity trigger, or None when it is not due.

    The instant also keys the occurrence: an enrollment that began at or after it already served it.
    ``events``: the page's recent events (``audience.recent_events_of`` for the trigger's condition).
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
    if since is not None and condition is not None and not audience.evaluate_on(condition, contact.id, fields, events, at):
        return None
    return since


def count_skip(skipped: dict[str, int], admission: Admission) -> None:
    if admission.skipped:
        skipped[admission.skipped] = skipped.get(admission.skipped, 0) + 1


def raise_if_starts_failed(page: PageAdmissions, log, what: str) -> None:
    """Fail the page (Temporal retries it) when a workflow did not start; its row is kept."""
    failed = page.failed
    if not failed:
        return
    for admission in failed:
        assert admission.enrollment is not None
        log.warning(
            "enrollment_start_pending", contact_id=admission.enrollment.contact_id,
            enrollment_id=admission.enrollment.workflow_id, error=admission.start_failed,
        )
    raise ApplicationError(
        f"{len(failed)} of the {what}'s enrollment workflows did not start ({failed[0].start_failed}); "
        "their rows are kept and the retried page starts them",
        type="EnrollmentStartsFailed",
    )


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
            enroller = self._enroller()
            for flow in (await session.exec(query.order_by(Flow.id))).all():
                definition = enroller.definition(await active_version(session, flow))
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
            definition = enroller.definition(version)
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

            result = ScanPageResult(
                trigger=trigger.type,
                examined=len(contacts),
                next_cursor=contacts[-1].id if contacts else input.after_contact_id,
                done=len(contacts) < input.limit,
            )
            events = await audience.recent_events_of(session, [c.id for c in contacts], [trigger.condition], input.at)
            due: dict[int, datetime] = {}
            for contact in contacts:
                since = due_since(definition, contact, input.at, self.settings, events)
                if since is not None:
                    due[contact.id] = since  # type: ignore[index]
            page = await enroller.admit_many(
                session, flow, version, [c for c in contacts if c.id in due], at=input.at, since=due,
                on_progress=lambda: activity.heartbeat(result.next_cursor),
            )
            for admission in page.admissions:
                if admission.created or enrolled_at(admission, input.at):
                    result.enrolled += 1
                else:
                    count_skip(result.skipped, admission)
            log = get_logger(flow_id=input.flow_id)
            raise_if_starts_failed(page, log.bind(enrolled=result.enrolled, cursor=result.next_cursor), "scan page")
        get_logger(flow_id=input.flow_id).info(
            "trigger_scan_page", trigger=result.trigger, examined=result.examined, enrolled=result.enrolled,
            skipped=result.skipped, cursor=result.next_cursor, restarted=page.restarted,
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
            # One contact more than the page scans: when there is none, this page is the last, and the
            # bulk workflow completes without running one more page that finds nothing (seconds on a
            # worker busy with the enrollments this page just started).
            query = select(Contact).where(Contact.id > input.after_contact_id)
            # The contacts the segment plainly excludes stay in the database: with many others in the
            # table, pages of them read, snapshotted and evaluated only to match nobody were most of a
            # bulk run's time. What is read is still evaluated below: the narrowing is a superset.
            narrowed = audience.prefilter(input.segment)
            if narrowed is not None:
                query = query.where(narrowed)
            contacts = list((await session.exec(query.order_by(Contact.id).limit(input.scan_limit + 1))).all())
            more = len(contacts) > input.scan_limit
            contacts = contacts[: input.scan_limit]

            result = BulkPageResult(next_cursor=input.after_contact_id, done=not more)
            segment = input.segment
            if segment is not None:
                events = await audience.recent_events_of(session, [c.id for c in contacts], [segment], input.at)
                matching = [
                    c for c in contacts
                    if audience.evaluate_on(segment, c.id, contact_snapshot(c).fields(), events, input.at)  # type: ignore[arg-type]
                ]
            else:
                matching = contacts
            page = await enroller.admit_many(
                session, flow, version, matching, at=input.at, limit=input.max_enrollments,
                on_progress=lambda: activity.heartbeat(result.next_cursor),
            )
            considered = len(page.admissions)
            for admission in page.admissions:
                if admission.created or enrolled_at(admission, input.at):
                    result.enrolled += 1
                else:
                    count_skip(result.skipped, admission)
            result.matched = considered
            if considered < len(matching):
                # Stopped at max_enrollments: the next page begins after the last contact enrolled.
                last = matching[considered - 1]
                result.next_cursor = last.id  # type: ignore[assignment]
                result.examined = contacts.index(last) + 1
                result.done = False
            else:
                result.examined = len(contacts)
                result.next_cursor = contacts[-1].id if contacts else input.after_contact_id  # type: ignore[assignment]
            log = get_logger(flow_id=input.flow_id, bulk_id=input.bulk_id)
            raise_if_starts_failed(page, log.bind(enrolled=result.enrolled, cursor=result.next_cursor), "bulk page")
        get_logger(flow_id=input.flow_id, bulk_id=input.bulk_id).info(
            "bulk_enroll_page", examined=result.examined, enrolled=result.enrolled, skipped=result.skipped,
            cursor=result.next_cursor, restarted=page.restarted,
        )
        return result


def enrolled_at(admission: Admission, at: datetime) -> bool:
    """Enrolled by this very scan or page: a retried page finds what its failed attempt started."""
    enrollment: Enrollment | None = admission.enrollment
    return admission.skipped == "already_enrolled" and enrollment is not None and enrollment.started_at >= at
