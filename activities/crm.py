"""The CRM sync's side effects: push queued writes, read changed CRM contacts, log engagement.

The push drains the queue in batches (activities/crm_push.py says how each goes out once). A 429
is waited out inside the push (its ``Retry-After``), so a backlog of thousands drains in one run at
the CRM's pace; a CRM that is down (5xx) fails the activity, Temporal retrying after the CRM's
``Retry-After``, and the rows wait in ``crm_writes``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from activities.crm_push import WriteBatch, deadline
from nurture.crm import mapping_for, mapping_with_owners
from nurture.crm.connector import CrmConnector, CrmError, CrmUnavailable
from nurture.crm.contracts import (
    OwnerImportInput,
    OwnerImportResult,
    PushWritesInput,
    PushWritesResult,
    SyncFinishInput,
    SyncFinishResult,
    SyncPageInput,
    SyncPageResult,
    SyncStart,
    SyncStartInput,
)
from nurture.crm.inbound import CrmInbound
from nurture.crm.owners import import_owners
from nurture.crm.mapping import parse_crm_time
from nurture.crm.writes import NOTE, queue_write
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.event_types import EMAIL_BOUNCED, EMAIL_CLICKED, EMAIL_COMPLAINED, EMAIL_OPENED, UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.metrics import CRM_SYNC_CONTACTS, CRM_WRITES, record_last_sync
from nurture.models import Contact, CrmSyncState, CrmWrite, CrmWriteStatus, Event, Message, MessageStatus, utcnow
from nurture.settings import Settings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Engagement worth a line on the CRM timeline.
TIMELINE_EVENTS = {EMAIL_OPENED, EMAIL_CLICKED, EMAIL_BOUNCED, EMAIL_COMPLAINED, *UNSUBSCRIBE_EVENTS}


class CrmActivities:
    def __init__(self, db: Database, connector: CrmConnector, client: Client | None, settings: Settings):
        self.db = db
        self.connector = connector
        self.client = client
        self.settings = settings

    # --- outbound --------------------------------------------------------------

    @activity.defn(name="push_crm_writes")
    async def push_crm_writes(self, input: PushWritesInput) -> PushWritesResult:
        """Every queued write, ``crm_write_batch`` rows at a time, until none is left or the activity's
        time is nearly up (the next run goes on from there)."""
        result = PushWritesResult()
        stop_at = deadline()
        after = 0
        provider = self.connector.provider
        while stop_at is None or time.monotonic() < stop_at:
            async with self.db.session() as session:
                rows = list(
                    (
                        await session.exec(
                            select(CrmWrite)
                            .where(CrmWrite.status == CrmWriteStatus.queued, CrmWrite.provider == provider,
                                   col(CrmWrite.id) > after)
                            .order_by(col(CrmWrite.id))  # in the order decided: per contact too
                            .limit(self.settings.crm_write_batch)
                        )
                    ).all()
                )
                if not rows:
                    break
                after = rows[-1].id or after
                try:
                    await WriteBatch(self.connector, self.settings, session, rows, result).push()
                except CrmError as exc:
                    if isinstance(exc, CrmUnavailable):
                        CRM_WRITES.labels(provider, "retried").inc()
                    get_logger(provider=provider).warning("crm_write_deferred", error=str(exc))
                    raise self._failure(exc) from exc
        async with self.db.session() as session:
            result.remaining = (
                await session.exec(
                    select(func.count()).select_from(CrmWrite).where(
                        CrmWrite.status == CrmWriteStatus.queued, CrmWrite.provider == provider
                    )
                )
            ).one()
        return result

    @activity.defn(name="queue_crm_engagement")
    async def queue_crm_engagement(self, input: PushWritesInput) -> PushWritesResult:
        """Sends, opens, clicks, bounces and unsubscribes since the last run, as one note per contact."""
        async with self.db.session() as session:
            state = await _state(session, self.connector.provider)
            rows = (
                await session.exec(
                    select(Event, Contact)
                    .join(Contact, Contact.id == Event.contact_id)
                    .where(Event.id > state.engagement_cursor, col(Event.type).in_(sorted(TIMELINE_EVENTS)))
                    .order_by(col(Event.id))
                    .limit(input.limit * 10)
                )
            ).all()
            lines: dict[int, list[tuple[datetime, str]]] = {}
            for event, contact in rows:
                if event.type == EMAIL_OPENED and (event.properties or {}).get("bot"):
                    continue
                line = f"{event.occurred_at:%Y-%m-%d %H:%M} UTC {event.type}" + _about(event)
                lines.setdefault(contact.id, []).append((event.occurred_at, line))  # type: ignore[arg-type]
            sends, send_cursor = await _sends_since(session, state.send_cursor, input.limit * 10)
            for message in sends:
                line = f"{message.sent_at:%Y-%m-%d %H:%M} UTC email_sent (template={message.template_key}, subject={message.subject})"
                lines.setdefault(message.contact_id, []).append((message.sent_at, line))  # type: ignore[arg-type]
            # The note's key names the range of events and sends it holds: a retried run queues it once.
            span = f"{state.engagement_cursor + 1}-{rows[-1][0].id if rows else state.engagement_cursor}:s{state.send_cursor + 1}-{send_cursor}"
            for contact_id, entries in lines.items():
                await queue_write(
                    session, self.settings, key=f"crm:engagement:{contact_id}:{span}", kind=NOTE, contact_id=contact_id,
                    payload={"subject": "Email engagement (nurture)",
                             "body": "\n".join(line for _, line in sorted(entries, key=lambda e: e[0]))},
                )
            if rows:
                state.engagement_cursor = rows[-1][0].id or state.engagement_cursor
            state.send_cursor = send_cursor
            session.add(state)
            await session.commit()
            return PushWritesResult(pushed=len(lines))

    def _failure(self, exc: CrmError) -> ApplicationError:
        """The activity's failure for a CRM error: an outage or rate limit is retried (after the CRM's
        Retry-After, at most ``crm_max_retry_after_seconds``); a refused token or request is not."""
        if isinstance(exc, CrmUnavailable):
            wait = min(exc.retry_after or 0, self.settings.crm_max_retry_after_seconds)
            return ApplicationError(
                str(exc), type="CrmUnavailable", next_retry_delay=timedelta(seconds=wait) if wait else None
            )
        return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)

    # --- inbound ----------------------------------------------------------------

    async def _mapping(self):
        async with self.db.session() as session:
            return await mapping_with_owners(self.settings, self.connector, session)

    @activity.defn(name="import_crm_owners")
    async def import_crm_owners(self, input: OwnerImportInput) -> OwnerImportResult:
        """The CRM's owners not imported yet become reps (nurture/crm/owners.py)."""
        try:
            owners = await self.connector.owners()
        except CrmError as exc:
            raise self._failure(exc) from exc
        imported = await import_owners(self.db, self.connector.provider, mapping_for(self.settings), owners)
        if imported:
            get_logger(provider=self.connector.provider).info("crm_owners_imported", imported=imported, listed=len(owners))
        return OwnerImportResult(imported=imported)

    @activity.defn(name="start_crm_sync")
    async def start_crm_sync(self, input: SyncStartInput) -> SyncStart:
        async with self.db.session() as session:
            state = await _state(session, self.connector.provider)
            state.last_run_at = started_at = utcnow()
            session.add(state)
            await session.commit()
            since = EPOCH if input.full or state.cursor is None else state.cursor
            deal_since = EPOCH if input.full or state.deal_cursor is None else state.deal_cursor
            return SyncStart(since=since, deal_since=deal_since, started_at=started_at)

    @activity.defn(name="sync_crm_page")
    async def sync_crm_page(self, input: SyncPageInput) -> SyncPageResult:
        """One page of CRM contacts modified since ``input.since``, applied like webhooks are."""
        if self.client is None:
            raise ApplicationError("this worker has no Temporal client", non_retryable=True)
        mapping = await self._mapping()
        try:
            page = await self.connector.changed_contacts(
                input.since, mapping.crm_properties(), input.after, self.settings.crm_batch_size
            )
        except CrmError as exc:
            raise self._failure(exc) from exc
        inbound = CrmInbound(self.connector.provider, mapping, self.client, Enroller(self.client, self.settings))
        result = SyncPageResult(after=page.after, capped=page.capped)
        # One transaction for the page (enrolling commits earlier where a contact starts a flow): a
        # page that fails is read and applied again, which changes nothing twice.
        async with self.db.session() as session:
            await inbound.prefetch(session, [r for r in page.contacts if not r.archived])
            for record in page.contacts:
                applied = await inbound.contact_record(session, record)
                result.read += 1
                if applied.created or applied.changed:
                    result.changed += 1
                if record.updated_at is not None and (result.newest is None or record.updated_at > result.newest):
                    result.newest = record.updated_at
            await session.commit()
        CRM_SYNC_CONTACTS.labels(self.connector.provider, "read").inc(result.read)
        CRM_SYNC_CONTACTS.labels(self.connector.provider, "changed").inc(result.changed)
        return result

    @activity.defn(name="sync_crm_deals")
    async def sync_crm_deals(self, input: SyncPageInput) -> SyncPageResult:
        """One page of deals modified since ``input.since`` (Salesforce opportunities, which are not
        pushed; HubSpot deals, whose webhooks may be missed): a stage that moved becomes a
        deal_stage_changed event, once, whichever way it arrived first."""
        if self.client is None:
            raise ApplicationError("this worker has no Temporal client", non_retryable=True)
        mapping = await self._mapping()
        try:
            deals, after = await self.connector.changed_deals(input.since, input.after, self.settings.crm_batch_size)
        except CrmError as exc:
            raise self._failure(exc) from exc
        inbound = CrmInbound(self.connector.provider, mapping, self.client, Enroller(self.client, self.settings))
        result = SyncPageResult(after=after)
        properties = mapping.crm_properties()
        for deal in deals:
            async with self.db.session() as session:
                contacts = []
                for crm_id in deal.contact_ids:
                    contact = await inbound.by_crm_id(session, crm_id)
                    if contact is None:
                        record = await self.connector.get_contact(crm_id, properties)
                        contact = (await inbound.contact_record(session, record)).contact if record else None
                    if contact is not None:
                        contacts.append(contact)
                modified = deal.updated_at or parse_crm_time(str(deal.properties.get("SystemModstamp") or "")) or utcnow()
                recorded = await inbound.deal_stage(
                    session, deal, contacts, f"deal:{deal.id}:{modified.isoformat()}", modified, only_if_moved=True
                )
                await session.commit()
            result.read += 1
            result.changed += 1 if recorded else 0
            if result.newest is None or modified > result.newest:
                result.newest = modified
        return result

    @activity.defn(name="finish_crm_sync")
    async def finish_crm_sync(self, input: SyncFinishInput) -> SyncFinishResult | None:
        """Move the cursors, and record what the run read and how fast (from the run's start to now)."""
        async with self.db.session() as session:
            state = await _state(session, self.connector.provider)
            # From the run's own start: another run (a resync beside the schedule's) may have moved last_run_at.
            began = input.started_at or state.last_run_at
            seconds = max((utcnow() - began).total_seconds(), 0.001) if began else 0.001
            finished = SyncFinishResult(contacts=input.read, seconds=round(seconds, 3),
                                        contacts_per_second=round(input.read / seconds, 1))
            state.last_sync_contacts, state.last_sync_seconds = finished.contacts, finished.seconds
            if input.cursor is not None and (state.cursor is None or input.cursor > state.cursor):
                state.cursor = input.cursor
            if input.deal_cursor is not None and (state.deal_cursor is None or input.deal_cursor > state.deal_cursor):
                state.deal_cursor = input.deal_cursor
            if input.error is None:
                state.last_success_at, state.last_error = utcnow(), None
                if input.full:
                    state.resync_requested_at = None
            else:
                state.last_error = input.error[:1000]
            state.contacts_read += input.read
            state.contacts_changed += input.changed
            session.add(state)
            await session.commit()
        record_last_sync(self.connector.provider, finished.contacts, finished.seconds)
        get_logger(provider=self.connector.provider).info(
            "crm_sync_finished", full=input.full, contacts=finished.contacts, changed=input.changed,
            seconds=finished.seconds, contacts_per_second=finished.contacts_per_second, error=input.error,
        )
        return finished


async def _state(session, provider: str) -> CrmSyncState:
    state = await session.get(CrmSyncState, provider)
    if state is None:
        state = CrmSyncState(provider=provider)
        session.add(state)
        await session.flush()
    return state


# A message still being sent after this long is taken as never to be sent: it no longer holds the cursor back.
STUCK_SEND = timedelta(hours=1)


async def _sends_since(session, cursor: int, limit: int) -> tuple[list[Message], int]:
    """Marketing emails sent after message ``cursor``, and where the cursor goes: up to the first
    message still being sent (its send is logged in a later run), so that none is skipped."""
    messages = (
        await session.exec(select(Message).where(Message.id > cursor).order_by(col(Message.id)).limit(limit))
    ).all()
    sent: list[Message] = []
    for message in messages:
        if message.status in (MessageStatus.reserved, MessageStatus.sending) and message.created_at > utcnow() - STUCK_SEND:
            break
        cursor = message.id or cursor
        if message.status == MessageStatus.sent and message.kind == "marketing" and message.sent_at is not None:
            sent.append(message)
    return sent, cursor


def _about(event: Event) -> str:
    properties = event.properties or {}
    parts = [f"{name}={properties[name]}" for name in ("template", "url", "bounce_type", "flow_id") if properties.get(name)]
    return (" (" + ", ".join(parts) + ")") if parts else ""
