"""Database rows turned into the snapshots workflows carry."""

from __future__ import annotations

from nurture.contracts import ContactSnapshot
from nurture.models import Contact


def contact_snapshot(contact: Contact) -> ContactSnapshot:
    assert contact.id is not None
    return ContactSnapshot(
        id=contact.id,
        email=contact.email,
        name=contact.name,
        company=contact.company,
        timezone=contact.timezone,
        lifecycle_stage=contact.lifecycle_stage,
        owner=contact.owner,
        phone=contact.phone,
        lists=list(contact.lists or []),
        tags=list(contact.tags or []),
        subscription_status=contact.subscription_status,
        properties=dict(contact.properties or {}),
    )
