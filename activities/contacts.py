"""Changing the contact an enrollment is about (the enrollment carries its snapshot)."""

from __future__ import annotations

from temporalio import activity

from activities.common import require_contact
from nurture.contracts import ContactSnapshot, UpdateContactInput
from nurture.crm import mapping_for
from nurture.crm.writes import queue_contact_update
from nurture.db import Database
from nurture.logging import get_logger
from nurture.models import utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot


class ContactActivities:
    def __init__(self, db: Database, settings: Settings | None = None):
        self.db = db
        self.settings = settings

    @activity.defn(name="update_contact")
    async def update_contact(self, input: UpdateContactInput) -> ContactSnapshot:
        # Setting and clearing are idempotent, so a retry with the same key changes nothing more.
        async with self.db.session() as session:
            contact = await require_contact(session, input.contact_id)
            properties = dict(contact.properties or {})
            properties.update(input.set)
            for name in input.clear:
                properties.pop(name, None)
            contact.properties = properties
            if input.lifecycle_stage is not None:
                contact.lifecycle_stage = input.lifecycle_stage
            contact.lists = _apply(contact.lists, input.add_to_lists, input.remove_from_lists)
            contact.tags = _apply(contact.tags, input.add_tags, input.remove_tags)
            contact.updated_at = utcnow()
            session.add(contact)
            if self.settings is not None:
                # Written back to the CRM by the CRM sync, once per step (the step's key).
                changed = [*input.set, *input.clear] + (["lifecycle_stage"] if input.lifecycle_stage is not None else [])
                await queue_contact_update(
                    session, self.settings, mapping_for(self.settings), contact, f"crm:{input.idempotency_key}", changed,
                    workflow_id=activity.info().workflow_id if activity.in_activity() else None,  # shown in its history
                )
            await session.commit()
            await session.refresh(contact)
            get_logger(contact_id=contact.id, key=input.idempotency_key).info("contact_updated")
            return contact_snapshot(contact)


def _apply(current: list[str] | None, add: list[str], remove: list[str]) -> list[str]:
    """Add and remove members, keeping order and ignoring case when matching."""
    dropped = {r.lower() for r in remove}
    kept = [m for m in current or [] if m.lower() not in dropped]
    for member in add:
        if member.lower() not in {m.lower() for m in kept}:
            kept.append(member)
    return kept
