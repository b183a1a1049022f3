"""The CRM's owners as reps: imported once each into ``crm_owners`` by the CRM sync.

An owner is given the rep id the mapping file names for it, else its email (lowercase), else
``crm-owner-<id>``, and keeps it: a rep whose CRM email changes later, or a CRM that cannot list its
owners for a while, does not move contacts to another rep id. The file's ``owners`` still win.
"""

from __future__ import annotations

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.crm.mapping import UNLISTED_OWNER, CrmMapping
from nurture.db import Database
from nurture.models import CrmOwner


async def import_owners(db: Database, provider: str, mapping: CrmMapping, owners: dict[str, str]) -> int:
    """Add the owners (CRM id -> email) not imported yet; answer how many were added."""
    async with db.session() as session:
        known = set((await session.exec(select(CrmOwner.crm_owner_id).where(CrmOwner.provider == provider))).all())
        added = 0
        for crm_id, email in sorted(owners.items()):
            if crm_id in known:
                continue
            email = (email or "").strip().lower() or None
            rep = mapping.owners.get(crm_id) or email or f"{UNLISTED_OWNER}{crm_id}"
            session.add(CrmOwner(provider=provider, crm_owner_id=crm_id[:100], email=email, rep=rep))
            added += 1
        await session.commit()  # two syncs at once: the primary key refuses the second, which retries
        return added


async def imported_reps(session: AsyncSession, provider: str) -> dict[str, str]:
    """CRM owner id -> rep id, as imported."""
    rows = (await session.exec(select(CrmOwner).where(CrmOwner.provider == provider))).all()
    return {row.crm_owner_id: row.rep for row in rows}
