"""Writes to the CRM, queued where they are decided and pushed by the CRM sync.

A flow step that changes a contact, creates a task or hands off to sales adds a row to
``crm_writes`` in its own transaction, keyed by the step's idempotency key: a retried activity
finds the row and adds nothing. The CRM sync (activities/crm.py, activities/crm_push.py) pushes
queued rows in order, in the CRM's batch calls, and marks each done once the CRM has it; while the CRM is down the rows wait, and nothing a flow sends
waits for them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.crm.mapping import CrmMapping
from nurture.history import HistoryEntry
from nurture.models import Contact, CrmWrite, CrmWriteStatus, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

CONTACT, TASK, NOTE = "contact", "task", "note"
# A contact created here, upserted to the CRM by email (pushed in batches: activities/crm.py).
UPSERT = "upsert"


def upsert_key(contact_id: int) -> str:
    return f"crm:upsert:{contact_id}"


async def queue_write(
    session: AsyncSession,
    settings: Settings,
    *,
    key: str,
    kind: str,
    contact_id: int,
    payload: dict[str, Any],
    workflow_id: str | None = None,
) -> CrmWrite | None:
    """Queue one write (not committed); None when no CRM is connected. The same key twice is one write."""
    if settings.crm_provider == "none":
        return None
    existing = (await session.exec(select(CrmWrite).where(CrmWrite.idempotency_key == key))).first()
    if existing is not None:
        return existing
    row = CrmWrite(
        idempotency_key=key, provider=settings.crm_provider, kind=kind, contact_id=contact_id,
        payload=payload, workflow_id=workflow_id,
    )
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return (await session.exec(select(CrmWrite).where(CrmWrite.idempotency_key == key))).first()
    return row


async def queue_contact_update(
    session: AsyncSession, settings: Settings, mapping: CrmMapping, contact: Contact, key: str,
    changed: list[str] | None = None, workflow_id: str | None = None,
) -> CrmWrite | None:
    """The contact's mapped outbound fields (all, or those ``changed``) as they are now."""
    properties = mapping.outbound_properties(contact_snapshot(contact).fields(), changed)
    if not properties or contact.id is None:
        return None
    return await queue_write(
        session, settings, key=key, kind=CONTACT, contact_id=contact.id,
        payload={"properties": properties}, workflow_id=workflow_id,
    )


async def queue_upsert(session: AsyncSession, settings: Settings, contact: Contact) -> CrmWrite | None:
    """A contact created here (POST /contacts, or first seen in POST /events), to be upserted to the CRM
    by its email."""
    if contact.id is None:
        return None
    return await queue_write(
        session, settings, key=upsert_key(contact.id), kind=UPSERT, contact_id=contact.id,
        payload={"email": contact.email},
    )


async def queue_upserts(session: AsyncSession, settings: Settings, dialect: str, contacts: list[tuple[int, str]]) -> None:
    """The contacts an import chunk created ((id, email) each), queued in one statement (not committed)."""
    if settings.crm_provider == "none" or not contacts:
        return
    now = utcnow()
    rows = [
        {"idempotency_key": upsert_key(contact_id), "provider": settings.crm_provider, "kind": UPSERT,
         "contact_id": contact_id, "payload": {"email": email}, "status": CrmWriteStatus.queued.value,
         "attempts": 0, "created_at": now}
        for contact_id, email in contacts
    ]
    table = CrmWrite.__table__  # type: ignore[attr-defined]
    insert = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)).on_conflict_do_nothing(
        index_elements=[table.c.idempotency_key]
    )
    await session.exec(insert, params=rows)  # type: ignore[call-overload]


# How a write reads in the enrollment's history.
WHAT = {CONTACT: "contact update", TASK: "task", NOTE: "timeline note", UPSERT: "contact"}


async def writes_of(session: AsyncSession, workflow_id: str) -> list[CrmWrite]:
    return list((await session.exec(select(CrmWrite).where(CrmWrite.workflow_id == workflow_id).order_by(CrmWrite.id))).all())


def history_entries(rows: list[CrmWrite]) -> list[HistoryEntry]:
    """The enrollment's CRM writes as history entries (GET /enrollments/{id}/history): where each
    stands now, at the time it got there. They are read from ``crm_writes``, as the CRM sync pushes
    them after the step, outside the enrollment's own workflow history."""
    entries = []
    for row in rows:
        what = f"CRM {WHAT.get(row.kind, row.kind)}"
        details = {"provider": row.provider, "status": str(row.status), "key": row.idempotency_key}
        if row.status == CrmWriteStatus.done:
            text = f"{what} written to {row.provider}" + (f" (record {row.crm_record_id})" if row.crm_record_id else "")
            details["crm_record_id"] = row.crm_record_id
        elif row.status == CrmWriteStatus.failed:
            text = f"{what} refused by {row.provider}: {row.last_error}"
        else:
            tried = f", {row.attempts} tries so far: {row.last_error}" if row.attempts and row.last_error else ""
            text = f"{what} queued for {row.provider}{tried}"
        at = row.done_at if row.status == CrmWriteStatus.done and row.done_at is not None else row.created_at
        entries.append(HistoryEntry(at=at, kind="crm_write", text=text, details=details))
    return entries
