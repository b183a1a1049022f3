"""HubSpot webhooks: the v3 signature, and what each subscription event does here.

HubSpot signs a delivery with the app's client secret: ``X-HubSpot-Signature-v3`` is the base64
HMAC-SHA256 of ``method + uri + body + timestamp``, with ``X-HubSpot-Request-Timestamp`` in
milliseconds; a delivery more than five minutes old is refused (a replay). One delivery carries up to
100 events. A changed contact is read once through the client, whatever number of its properties
changed, and applied like the reconciliation sync applies it (nurture/crm/inbound.py).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.crm.connector import CrmConnector
from nurture.crm.inbound import CrmInbound
from nurture.logging import get_logger
from nurture.models import Contact

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
# Changes this app made itself (a write of ours) come back with one of these sources.
OWN_SOURCES = {"INTEGRATION", "API"}


class SignatureRefused(Exception):
    pass


def v3_signature(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = method.upper().encode() + uri.encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_v3(
    secret: str, method: str, uris: list[str], body: bytes, signature: str | None, timestamp: str | None,
    now: float, tolerance_seconds: int,
) -> None:
    """Raise SignatureRefused unless one of ``uris`` (as HubSpot may have called us) matches the signature."""
    if not signature or not timestamp:
        raise SignatureRefused(f"the {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers are required")
    try:
        sent = int(timestamp) / 1000
    except ValueError:
        raise SignatureRefused(f"{TIMESTAMP_HEADER} is not a time in milliseconds") from None
    if abs(now - sent) > tolerance_seconds:
        raise SignatureRefused(f"the delivery is older than {tolerance_seconds} seconds (or from the future)")
    if not any(hmac.compare_digest(v3_signature(secret, method, uri, body, timestamp), signature) for uri in uris):
        raise SignatureRefused("the signature does not match the delivery")


class HubSpotEvent(BaseModel):
    """One event of a delivery, as HubSpot's webhooks API documents it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    event_id: int = Field(alias="eventId", ge=0)
    subscription_type: str = Field(alias="subscriptionType", max_length=100)
    object_id: int = Field(alias="objectId", ge=0)
    occurred_at: int = Field(alias="occurredAt", ge=0)
    property_name: str | None = Field(default=None, alias="propertyName", max_length=200)
    property_value: str | None = Field(default=None, alias="propertyValue", max_length=10_000)
    change_source: str | None = Field(default=None, alias="changeSource", max_length=100)
    source_id: str | None = Field(default=None, alias="sourceId", max_length=200)
    app_id: int | None = Field(default=None, alias="appId")

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.occurred_at / 1000, UTC)


@dataclass
class Delivery:
    contacts: int = 0
    deals: int = 0
    events: int = 0
    ignored: list[str] = field(default_factory=list)
    signalled: int = 0


class HubSpotWebhook:
    def __init__(self, connector: CrmConnector, inbound: CrmInbound, app_id: str | None):
        self.connector = connector
        self.inbound = inbound
        self.app_id = app_id

    def is_own_write(self, event: HubSpotEvent) -> bool:
        return (
            self.app_id is not None
            and (event.change_source or "").upper() in OWN_SOURCES
            and (event.source_id or "").removeprefix("app:") == self.app_id
        )

    async def handle(self, session: AsyncSession, events: list[HubSpotEvent]) -> Delivery:
        done = Delivery()
        properties = self.inbound.mapping.crm_properties()
        changed_contacts: list[str] = []
        deleted: list[str] = []
        deals: list[HubSpotEvent] = []
        for index, event in enumerate(events):
            kind = event.subscription_type
            if self.is_own_write(event):
                done.ignored.append(f"[{index}]: our own write")
            elif kind in ("contact.creation", "contact.propertyChange", "contact.restore"):
                if str(event.object_id) not in changed_contacts:
                    changed_contacts.append(str(event.object_id))
            elif kind in ("contact.deletion", "contact.privacyDeletion"):
                deleted.append(str(event.object_id))
            elif kind == "deal.propertyChange" and event.property_name == "dealstage" or kind == "deal.creation":
                deals.append(event)
            else:
                done.ignored.append(f"[{index}]: {kind} {event.property_name or ''}".rstrip())
        records = await self.connector.get_contacts(changed_contacts, properties) if changed_contacts else []
        missing = set(changed_contacts) - {r.id for r in records}
        done.ignored.extend(f"contact {crm_id}: no longer in the CRM" for crm_id in changed_contacts if crm_id in missing)
        for record in records:
            applied = await self.inbound.contact_record(session, record)
            done.contacts += 1
            done.signalled += applied.told
        for crm_id in deleted:
            await self.inbound.contact_deleted(session, crm_id)
            done.contacts += 1
        for event in deals:
            deal = await self.connector.get_deal(str(event.object_id))
            if deal is None:
                done.ignored.append(f"deal {event.object_id}: no longer in the CRM")
                continue
            if event.property_value:
                deal.stage = event.property_value  # the stage this change set (a later one may have followed)
            contacts = [c for c in [await self._contact(session, crm_id, properties) for crm_id in deal.contact_ids] if c]
            # only_if_moved: a stage the sync already read from the deal (this webhook came late) is not recorded again.
            recorded = await self.inbound.deal_stage(
                session, deal, contacts, f"deal:{event.event_id}", event.when, only_if_moved=True
            )
            done.deals += 1
            done.events += len(recorded)
        get_logger(provider="hubspot").info(
            "crm_webhook", contacts=done.contacts, deals=done.deals, events=done.events, ignored=len(done.ignored)
        )
        return done

    async def _contact(self, session: AsyncSession, crm_id: str, properties: list[str]) -> Contact | None:
        contact = await self.inbound.by_crm_id(session, crm_id)
        if contact is not None:
            return contact
        record = await self.connector.get_contact(crm_id, properties)
        return (await self.inbound.contact_record(session, record)).contact if record is not None else None
