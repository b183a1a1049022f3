"""One batch of queued CRM writes, pushed in as few calls as the CRM allows (activities/crm.py drains
the queue batch after batch).

The rows keep their order per contact: first the contact itself where the CRM must have it (created
here, or written to before it had a CRM id: batch upserts by email), then its field updates (merged
in the order queued, read in batch and written where they differ), then its tasks and notes. Each
CRM call's rows are marked done or failed in their own commit as soon as it answers, so a retry
repeats at most the call that was cut off, and that call finds what it had written: upserts are by
email, updates write only what differs, and tasks and notes are marked sent (their ``attempts``
counted) in a commit before their call goes, so that a task or note whose answer was lost is looked
for by its key before it is made again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from nurture.crm import mapping_for, mapping_with_owners
from nurture.crm.connector import CrmActivity, CrmConnector, CrmError, CrmRejected, CrmUnavailable
from nurture.crm.contracts import PushWritesResult
from nurture.crm.mapping import parse_crm_time
from nurture.crm.writes import CONTACT, NOTE, TASK, UPSERT
from nurture.logging import get_logger
from nurture.metrics import CRM_WRITES
from nurture.models import Contact, CrmWrite, CrmWriteStatus, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

# 429s waited out in a row inside one push before the activity fails and Temporal's retry policy
# takes over (each wait is the CRM's Retry-After).
RATE_LIMIT_WAITS = 5
# A push stops this long before its start-to-close timeout, so that it ends with its rows marked.
TIME_MARGIN_SECONDS = 60.0


def heartbeat() -> None:
    if activity.in_activity():
        activity.heartbeat()


async def pause(seconds: float) -> None:
    """Sleep, heartbeating, so that the worker is not thought dead while it obeys a Retry-After."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        heartbeat()
        await asyncio.sleep(min(left, 2.0))


def deadline() -> float | None:
    """When a push should stop taking new batches (monotonic clock); None outside an activity."""
    if not activity.in_activity():
        return None
    timeout = activity.info().start_to_close_timeout
    if not timeout:
        return None
    seconds = timeout.total_seconds()
    return time.monotonic() + max(seconds - TIME_MARGIN_SECONDS, seconds / 2)


class WriteBatch:
    def __init__(
        self, connector: CrmConnector, settings: Settings, session: AsyncSession, rows: list[CrmWrite],
        result: PushWritesResult,
    ):
        self.connector, self.settings, self.session, self.rows, self.result = connector, settings, session, rows, result
        self.contacts: dict[int, Contact] = {}
        # Rows whose attempt in this push is already counted (tasks and notes, before their call).
        self.counted: set[int] = set()
        self.log = get_logger(provider=connector.provider)

    async def push(self) -> None:
        ids = sorted({row.contact_id for row in self.rows})
        found = (await self.session.exec(select(Contact).where(col(Contact.id).in_(ids)))).all()
        self.contacts = {c.id: c for c in found}  # type: ignore[misc]
        for row in self.rows:
            if row.contact_id not in self.contacts:
                self._failed(row, f"contact {row.contact_id} no longer exists")
            elif row.kind not in (UPSERT, CONTACT, TASK, NOTE):
                self._failed(row, f"unknown write kind {row.kind!r}")
        await self.session.commit()
        for phase in (self._upserts, self._updates, self._activities):
            try:
                await phase()
            except CrmError as exc:
                if not isinstance(exc, CrmRejected):
                    await self._attempt_failed(str(exc))
                raise

    # --- the phases ---------------------------------------------------------------

    async def _upserts(self) -> None:
        """Contacts created here, and those written to before the CRM had them, upserted by email."""
        wanted: dict[str, Contact] = {}
        for row in self._queued():
            contact = self.contacts[row.contact_id]
            if row.kind == UPSERT or not contact.crm_id:
                wanted.setdefault(contact.email.lower(), contact)
        if not wanted:
            return
        mapping = mapping_for(self.settings)
        records = [(email, mapping.outbound_properties(contact_snapshot(c).fields())) for email, c in wanted.items()]
        size = self.connector.upsert_batch
        for start in range(0, len(records), size):
            chunk = records[start : start + size]
            answered = await self._call(self.connector.upsert_contacts, chunk)
            emails = {email for email, _ in chunk}
            for email in emails:
                got = answered.get(email)
                if isinstance(got, str):
                    wanted[email].crm_id = got
                    self.session.add(wanted[email])
            for row in self._queued():
                email = self.contacts[row.contact_id].email.lower()
                if email not in emails:
                    continue
                got = answered.get(email) or CrmRejected(f"the CRM answered no id for {email}")
                if isinstance(got, CrmRejected):
                    self._failed(row, str(got))  # no write for a contact the CRM refuses can go out
                elif row.kind == UPSERT:
                    self._done(row, got)
            await self.session.commit()

    async def _updates(self) -> None:
        """Field updates, merged per contact in queue order, written where the CRM differs."""
        rows = [row for row in self._queued() if row.kind == CONTACT]
        if not rows:
            return
        wanted: dict[str, dict[str, str]] = {}
        for row in rows:
            crm_id = self.contacts[row.contact_id].crm_id
            assert crm_id is not None  # given by _upserts, or the row failed there
            wanted.setdefault(crm_id, {}).update(row.payload.get("properties") or {})
        names = sorted({name for properties in wanted.values() for name in properties})
        current = {c.id: c.properties for c in await self._call(self.connector.get_contacts, list(wanted), names)}
        differing = {
            crm_id: changed
            for crm_id, properties in wanted.items()
            if (changed := {n: v for n, v in properties.items() if str(current.get(crm_id, {}).get(n) or "") != v})
        }
        updates = list(differing.items())
        size = self.connector.update_batch
        written: set[str] = set()
        for start in range(0, len(updates), size):
            chunk = updates[start : start + size]
            answered = await self._call(self.connector.update_contacts, chunk)
            written.update(crm_id for crm_id, _ in chunk)
            self._settle(rows, lambda row: self.contacts[row.contact_id].crm_id, answered, written)
            await self.session.commit()
        # What the CRM already holds is not written again: those rows are done as they are.
        self._settle(rows, lambda row: self.contacts[row.contact_id].crm_id, {}, set(wanted) - set(differing))
        await self.session.commit()

    async def _activities(self) -> None:
        """Tasks and notes, in the CRM's batch calls. A call's rows are marked sent (``attempts``
        counted) in a commit before it goes: a row sent before whose answer never came (a timeout, a
        5xx, a crash) is looked for by its key before it is made (``maybe_created``)."""
        rows = [row for row in self._queued() if row.kind in (TASK, NOTE)]
        if not rows:
            return
        mapping = await mapping_with_owners(self.settings, self.connector, self.session)
        size = self.connector.activity_batch
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            planned = []
            for row in chunk:
                due = row.payload.get("due_at")
                planned.append(CrmActivity(
                    kind="task" if row.kind == TASK else "note",
                    key=row.idempotency_key,
                    contact_crm_id=self.contacts[row.contact_id].crm_id or "",
                    subject=str(row.payload.get("subject") or ""),
                    body=str(row.payload.get("body") or ""),
                    owner_crm_id=mapping.crm_owner_for(row.payload.get("owner")),
                    due_at=parse_crm_time(due) if due else None,
                    maybe_created=row.attempts > 0,
                ))
                self._count(row)
                self.session.add(row)
            await self.session.commit()

            def sent_again() -> None:  # a 429 midway: what went before it may be there now
                for one in planned:
                    one.maybe_created = True

            answered = await self._call(self.connector.create_activities, planned, before_retry=sent_again)
            # A row the CRM's answer does not name stays queued (and is looked for next time).
            self._settle(chunk, lambda row: row.idempotency_key, answered, set(answered))
            await self.session.commit()

    # --- bookkeeping --------------------------------------------------------------

    async def _call(
        self, call: Callable[..., Awaitable[Any]], *args: Any, before_retry: Callable[[], None] | None = None
    ) -> Any:
        """``call``, waiting out the CRM's 429s (its Retry-After, heartbeating) so that a long drain is
        not ended by Temporal's attempt count; an outage (5xx) ends the push at once."""
        waits = 0
        while True:
            heartbeat()
            try:
                return await call(*args)
            except CrmUnavailable as exc:
                if not exc.rate_limited or waits >= RATE_LIMIT_WAITS:
                    raise
                waits += 1
                if before_retry is not None:
                    before_retry()
                CRM_WRITES.labels(self.connector.provider, "retried").inc()
                wait = min(exc.retry_after or 1.0, self.settings.crm_max_retry_after_seconds)
                self.log.info("crm_rate_limited", retry_after=wait, waits=waits)
                await pause(wait)

    def _queued(self) -> list[CrmWrite]:
        return [row for row in self.rows if row.status == CrmWriteStatus.queued]

    def _settle(self, rows: list[CrmWrite], key_of, answered: dict[str, Any], asked: set[str]) -> None:
        """Rows whose key was ``asked``: failed with the CRM's refusal, else done."""
        for row in rows:
            key = key_of(row)
            if row.status != CrmWriteStatus.queued or key not in asked:
                continue
            got = answered.get(key)
            if isinstance(got, CrmRejected):
                self._failed(row, str(got))
            else:
                self._done(row, got if isinstance(got, str) else self.contacts[row.contact_id].crm_id)

    def _count(self, row: CrmWrite) -> None:
        """One more attempt for ``row``, once per push."""
        if row.id not in self.counted:
            row.attempts += 1
            if row.id is not None:
                self.counted.add(row.id)

    def _done(self, row: CrmWrite, record: str | None) -> None:
        self._count(row)
        row.status, row.done_at, row.last_error, row.crm_record_id = CrmWriteStatus.done, utcnow(), None, record
        self.session.add(row)
        CRM_WRITES.labels(self.connector.provider, "done").inc()
        self.result.pushed += 1

    def _failed(self, row: CrmWrite, reason: str) -> None:
        self._count(row)
        row.status, row.last_error = CrmWriteStatus.failed, reason[:1000]
        self.session.add(row)
        CRM_WRITES.labels(self.connector.provider, "failed").inc()
        self.log.warning("crm_write_refused", contact_id=row.contact_id, key=row.idempotency_key, error=reason)
        self.result.failed += 1

    async def _attempt_failed(self, error: str) -> None:
        """The CRM could not be used: the rows still queued wait for the next try, saying why. A task or
        note counts an attempt only when a call carried it (then it may be in the CRM: see _activities)."""
        for row in self._queued():
            if row.kind not in (TASK, NOTE):
                self._count(row)
            row.last_error = error[:1000]
            self.session.add(row)
        await self.session.commit()
