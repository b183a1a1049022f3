"""What the CRM tests share: a backlog of queued writes, the write queue as it stands, and waits on
an enrollment (tests/test_crm_hubspot.py, tests/test_crm_salesforce.py, tests/test_crm_outage.py)."""

from __future__ import annotations

from collections.abc import Callable

from sqlmodel import col, select

from nurture.contracts import EnrollmentState
from nurture.crm.writes import CONTACT, queue_write
from nurture.db import Database
from nurture.models import Contact, CrmWrite
from nurture.settings import Settings


async def queued_backlog(db: Database, settings: Settings, count: int, add_crm_contact: Callable[[str], str],
                         properties: dict[str, str]) -> list[Contact]:
    """``count`` contacts that the CRM and the engine both have (``add_crm_contact``: email -> CRM id),
    each with one queued write of ``properties``, as that many update_contact steps would queue them."""
    async with db.session() as s:
        people = [Contact(email=f"backlog{n}@example.com", crm_id=add_crm_contact(f"backlog{n}@example.com"))
                  for n in range(count)]
        s.add_all(people)
        await s.flush()
        for person in people:
            await queue_write(s, settings, key=f"crm:mql:{person.id}", kind=CONTACT, contact_id=person.id,
                              payload={"properties": dict(properties)})
        await s.commit()
    return people


async def crm_writes(db: Database) -> list[CrmWrite]:
    """The write queue, in the order queued."""
    async with db.session() as s:
        return list((await s.exec(select(CrmWrite).order_by(col(CrmWrite.id)))).all())


async def paused_by(db: Database, contact_id: int, who: str) -> bool:
    async with db.session() as s:
        return (await s.get(Contact, contact_id)).paused_by == who


async def at_step(handle, step: str) -> bool:
    """The enrollment waits at ``step`` with its timer started."""
    state = await handle.query("state", result_type=EnrollmentState)
    return state.current_step == step and state.waiting_until is not None
