"""How a contact takes the fields a request or an import sets: one set of rules for both."""

from __future__ import annotations

from typing import Any

from nurture.logging import get_logger
from nurture.models import Contact, SubscriptionStatus, utcnow


class ResubscribeRefused(Exception):
    """An explicit edit tried to subscribe a contact who unsubscribed."""


def apply_contact_changes(contact: Contact, changes: dict[str, Any], *, explicit_edit: bool) -> list[str]:
    """Apply the fields a request set; return the names of those that changed.

    ``explicit_edit`` is a PATCH: re-subscribing an unsubscribed contact raises ResubscribeRefused.
    An upsert (import, form) ignores it instead, HubSpot-style.
    """
    changed: list[str] = []
    for name, value in changes.items():
        if name == "properties":
            if value is None:
                continue
            merged = dict(contact.properties or {})
            for key, item in value.items():
                if item is None:
                    merged.pop(key, None)
                else:
                    merged[key] = item
            if merged != (contact.properties or {}):
                contact.properties = merged  # a new dict: JSON columns do not see in-place changes
                changed.append(name)
        elif name == "subscription_status":
            if value is None or value == contact.subscription_status:
                continue
            if value == SubscriptionStatus.subscribed and contact.subscription_status != SubscriptionStatus.subscribed:
                if explicit_edit and contact.subscription_status == SubscriptionStatus.unsubscribed:
                    raise ResubscribeRefused("the contact unsubscribed: only the contact can subscribe again")
                if not explicit_edit:
                    get_logger(contact_id=contact.id).info(
                        "resubscribe_ignored", status=contact.subscription_status
                    )
                    continue
            contact.subscription_status = value
            changed.append(name)
        elif name == "email":
            if value is None or value == contact.email:
                continue
            contact.email = value
            changed.append(name)
        elif getattr(contact, name) != value:
            setattr(contact, name, value)
            changed.append(name)
    if changed:
        contact.updated_at = utcnow()
    return changed
