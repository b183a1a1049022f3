"""What every activity needs: the contact it acts on, or a final failure."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.exceptions import ApplicationError

from nurture.models import Contact


async def require_contact(session: AsyncSession, contact_id: int, *, lock: bool = False) -> Contact:
    """The contact, or a non-retryable failure: a deleted contact will not come back.

    ``lock`` holds the row until the transaction ends (PostgreSQL; SQLite's write lock already does).
    """
    contact = await session.get(Contact, contact_id, with_for_update=lock or None)
    if contact is None:
        raise ApplicationError(f"contact {contact_id} does not exist", type="ContactMissing", non_retryable=True)
    return contact
