"""The CRM sync's side effects: push queued writes, read changed CRM contacts, log engagement.

Each write goes out once: a contact update first reads the CRM record and writes only what
differs, a task or note is searched by its key before it is created, and a row is marked done in
its own commit as soon as the CRM has it. A CRM that is down or rate limited (429, 5xx) fails the
activity with Temporal retrying after the CRM's ``Retry-After``; the rows wait in ``crm_writes``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select
from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from nurture.crm import mapping_for, mapping_with_owners
from nurture.crm.connector import CrmActivity, CrmAuthFailed, CrmConnector, CrmRejected, CrmUnavailable
from nurture.crm.contracts import (
    OwnerImportInput,
    OwnerImportResult,
    PushWritesInput,
    PushWritesResult,
    SyncFinishInput,
    SyncPageInput,
    SyncPageResult,
    SyncStart,
    SyncStartInput,
)
from nurture.crm.inbound import CrmInbound
from nurture.crm.owners import import_owners
from nurture.crm.mapping import parse_crm_time
from nurture.crm.writes import CONTACT, NOTE, UPSERT, queue_write
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.event_types import EMAIL_BOUNCED, EMAIL_CLICKED, EMAIL_COMPLAINED, EMAIL_OPENED, UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.metrics import CRM_SYNC_CONTACTS, CRM_WRITES
from nurture.models import Contact, CrmSyncState, CrmWrite, CrmWriteStatus, Event, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Engagement worth a line on the CRM timeline.
TIMELINE_EVENTS = {EMAIL_OPENED, EMAIL_CLICKED, EMAIL_BOUNCED, EMAIL_COMPLAINED, *UNSUBSCRIBE_EVENTS}


def _heartbeat() -> None:
    if activity.in_activity():
        activity.heartbeat()


class CrmActivities:
    def __init__(self, db: Database, connector: CrmConnector, client: Client | None, settings: Settings):
        self.db = db
        self.connector = connector
        self.client = client
        self.settings = settings

    # --- outbound --------------------------------------------------------------

    @activity.defn(name="push_crm_writes")
    async def push_crm_writes(self, input: PushWritesInput) -> PushWritesResult:
        result = PushWritesResult()
        async with self.db.session() as session:
            rows = (
                await session.exec(
                    select(CrmWrite)
                    .where(CrmWrite.status == CrmWriteStatus.queued, CrmWrite.provider == self.connector.provider)
                    .order_by(col(CrmWrite.id))  # in the order decided: per contact too
                    .limit(input.limit)
                )
            ).all()
            upserts = [row for row in rows if row.kind == UPSERT]
            if len(upserts) > 1:
                result.pushed += await self._upsert_batch(session, upserts)
            for row in rows:
                if row.status != CrmWriteStatus.queued:
                    continue  # pushed in the batch above
                _heartbeat()
                log = get_logger(contact_id=row.contact_id, key=row.idempotency_key, kind=row.kind)
                try:
                    row.crm_record_id = await self._push(session, row)
                except CrmUnavailable as exc:
                    await self._attempt_failed(session, row, str(exc))
                    CRM_WRITES.labels(self.connector.provider, "retried").inc()
                    wait = min(exc.retry_after or 0, self.settings.crm_max_retry_after_seconds)
                    log.warning("crm_write_deferred", error=str(exc), retry_after=exc.retry_after)
                    raise ApplicationError(
                        str(exc), type="CrmUnavailable", next_retry_delay=timedelta(seconds=wait) if wait else None
                    ) from exc
                except CrmAuthFailed as exc:
                    await self._attempt_failed(session, row, str(exc))
                    raise ApplicationError(str(exc), type="CrmAuthFailed", non_retryable=True) from exc
                except CrmRejected as exc:
                    row.attempts += 1
                    row.status, row.last_error = CrmWriteStatus.failed, str(exc)[:1000]
                    session.add(row)
                    await session.commit()
                    CRM_WRITES.labels(self.connector.provider, "failed").inc()
                    log.warning("crm_write_refused", error=str(exc))
                    result.failed += 1
                    continue
                row.attempts += 1
                row.status, row.done_at, row.last_error = CrmWriteStatus.done, utcnow(), None
                session.add(row)
                await session.commit()  # each write's own commit: a crash after it does not repeat it
                CRM_WRITES.labels(self.connector.provider, "done").inc()
                log.info("crm_write_done", record=row.crm_record_id)
                result.pushed += 1
            result.remaining = (
                await session.exec(
                    select(func.count()).select_from(CrmWrite).where(
                        CrmWrite.status == CrmWriteStatus.queued, CrmWrite.provider == self.connector.provider
                    )
                )
            ).one()
        return result

    async def _upsert_batch(self, session, rows: list[CrmWrite]) -> int:
        """Contacts created here, upserted by email in the CRM's batch calls (HubSpot: 100 a call).

        A CRM that is down leaves the rows queued (the loop after tries each and defers); a batch
        the CRM refuses is left to that loop too, which finds the one record it refuses.
        """
        ids = [row.contact_id for row in rows]
        contacts = {c.id: c for c in (await session.exec(select(Contact).where(col(Contact.id).in_(ids)))).all()}
        mapping = mapping_for(self.settings)
        records = {
            c.email.lower(): mapping.outbound_properties(contact_snapshot(c).fields()) for c in contacts.values()
        }
        _heartbeat()
        try:
            answered = await self.connector.upsert_contacts(list(records.items()))
        except (CrmUnavailable, CrmRejected) as exc:
            get_logger(provider=self.connector.provider).warning("crm_upsert_batch_failed", rows=len(rows), error=str(exc))
            return 0
        done, pushed = utcnow(), 0
        for row in rows:
            contact = contacts.get(row.contact_id)
            crm_id = answered.get(contact.email.lower()) if contact is not None else None
            if contact is None or crm_id is None:
                continue  # the loop after says why, row by row
            contact.crm_id = crm_id
            session.add(contact)
            row.attempts += 1
            row.status, row.done_at, row.last_error, row.crm_record_id = CrmWriteStatus.done, done, None, crm_id
            session.add(row)
            CRM_WRITES.labels(self.connector.provider, "done").inc()
            pushed += 1
        await session.commit()  # the batch's own commit: a crash after it does not repeat it
        return pushed

    async def _push(self, session, row: CrmWrite) -> str:
        contact = await session.get(Contact, row.contact_id)
        if contact is None:
            raise CrmRejected(f"contact {row.contact_id} no longer exists")
        if row.kind == UPSERT:
            return await self._upserted(session, contact)
        crm_id = await self._crm_id(session, contact)
        if row.kind == CONTACT:
            wanted: dict[str, str] = dict(row.payload.get("properties") or {})
            current = await self.connector.get_contact(crm_id, sorted(wanted))
            have = current.properties if current is not None else {}
            differing = {name: value for name, value in wanted.items() if str(have.get(name) or "") != value}
            if differing:  # what the CRM already holds is not written again
                await self.connector.update_contact(crm_id, differing)
            return crm_id
        mapping = await mapping_with_owners(self.settings, self.connector, session)
        due = row.payload.get("due_at")
        planned = CrmActivity(
            kind="task" if row.kind == "task" else "note",
            key=row.idempotency_key,
            contact_crm_id=crm_id,
            subject=str(row.payload.get("subject") or ""),
            body=str(row.payload.get("body") or ""),
            owner_crm_id=mapping.crm_owner_for(row.payload.get("owner")),
            due_at=parse_crm_time(due) if due else None,
        )
        found = await self.connector.find_activity(planned)
        return found or await self.connector.create_activity(planned)

    async def _crm_id(self, session, contact: Contact) -> str:
        """The contact's CRM id; a contact the CRM does not have yet is upserted there by email."""
        if contact.crm_id:
            return contact.crm_id
        return await self._upserted(session, contact)

    async def _upserted(self, session, contact: Contact) -> str:
        mapping = mapping_for(self.settings)
        properties = mapping.outbound_properties(contact_snapshot(contact).fields())
        ids = await self.connector.upsert_contacts([(contact.email.lower(), properties)])
        crm_id = ids.get(contact.email.lower())
        if crm_id is None:
            raise CrmRejected(f"the CRM did not answer an id for {contact.email}")
        contact.crm_id = crm_id
        session.add(contact)
        await session.commit()
        return crm_id

    async def _attempt_failed(self, session, row: CrmWrite, error: str) -> None:
        row.attempts += 1
        row.last_error = error[:1000]
        session.add(row)
        await session.commit()

    @activity.defn(name="queue_crm_engagement")
    async def queue_crm_engagement(self, input: PushWritesInput) -> PushWritesResult:
        """Opens, clicks, bounces and unsubscribes since the last run, as one note per contact."""
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
            per_contact: dict[int, list[Event]] = {}
            for event, contact in rows:
                if event.type == EMAIL_OPENED and (event.properties or {}).get("bot"):
                    continue
                per_contact.setdefault(contact.id, []).append(event)  # type: ignore[arg-type]
            for contact_id, events in per_contact.items():
                lines = [f"{e.occurred_at:%Y-%m-%d %H:%M} UTC {e.type}" + _about(e) for e in events]
                await queue_write(
                    session, self.settings, key=f"crm:engagement:{contact_id}:{events[0].id}-{events[-1].id}",
                    kind=NOTE, contact_id=contact_id,
                    payload={"subject": "Email engagement (nurture)", "body": "\n".join(lines)},
                )
            if rows:
                state.engagement_cursor = rows[-1][0].id or state.engagement_cursor
                session.add(state)
            await session.commit()
            return PushWritesResult(pushed=len(per_contact))

    # --- inbound ----------------------------------------------------------------

    async def _mapping(self):
        async with self.db.session() as session:
            return await mapping_with_owners(self.settings, self.connector, session)

    @activity.defn(name="import_crm_owners")
    async def import_crm_owners(self, input: OwnerImportInput) -> OwnerImportResult:
        """The CRM's owners not imported yet become reps (nurture/crm/owners.py)."""
        try:
            owners = await self.connector.owners()
        except CrmUnavailable as exc:
            wait = min(exc.retry_after or 0, self.settings.crm_max_retry_after_seconds)
            raise ApplicationError(
                str(exc), type="CrmUnavailable", next_retry_delay=timedelta(seconds=wait) if wait else None
            ) from exc
        except (CrmAuthFailed, CrmRejected) as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        imported = await import_owners(self.db, self.connector.provider, mapping_for(self.settings), owners)
        if imported:
            get_logger(provider=self.connector.provider).info("crm_owners_imported", imported=imported, listed=len(owners))
        return OwnerImportResult(imported=imported)

    @activity.defn(name="start_crm_sync")
    async def start_crm_sync(self, input: SyncStartInput) -> SyncStart:
        async with self.db.session() as session:
            state = await _state(session, self.connector.provider)
            state.last_run_at = utcnow()
            session.add(state)
            await session.commit()
            since = EPOCH if input.full or state.cursor is None else state.cursor
            deal_since = EPOCH if input.full or state.deal_cursor is None else state.deal_cursor
            return SyncStart(since=since, deal_since=deal_since)

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
        except CrmUnavailable as exc:
            wait = min(exc.retry_after or 0, self.settings.crm_max_retry_after_seconds)
            raise ApplicationError(
                str(exc), type="CrmUnavailable", next_retry_delay=timedelta(seconds=wait) if wait else None
            ) from exc
        except (CrmAuthFailed, CrmRejected) as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        inbound = CrmInbound(self.connector.provider, mapping, self.client, Enroller(self.client, self.settings))
        result = SyncPageResult(after=page.after, capped=page.capped)
        # One transaction for the page (enrolling commits earlier where a contact starts a flow): a
        # page that fails is read and applied again, which changes nothing twice.
        async with self.db.session() as session:
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
        except CrmUnavailable as exc:
            wait = min(exc.retry_after or 0, self.settings.crm_max_retry_after_seconds)
            raise ApplicationError(
                str(exc), type="CrmUnavailable", next_retry_delay=timedelta(seconds=wait) if wait else None
            ) from exc
        except (CrmAuthFailed, CrmRejected) as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
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
    async def finish_crm_sync(self, input: SyncFinishInput) -> None:
        async with self.db.session() as session:
            state = await _state(session, self.connector.provider)
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


async def _state(session, provider: str) -> CrmSyncState:
    state = await session.get(CrmSyncState, provider)
    if state is None:
        state = CrmSyncState(provider=provider)
        session.add(state)
        await session.flush()
    return state


def _about(event: Event) -> str:
    properties = event.properties or {}
    parts = [f"{name}={properties[name]}" for name in ("template", "url", "bounce_type", "flow_id") if properties.get(name)]
    return (" (" + ", ".join(parts) + ")") if parts else ""
