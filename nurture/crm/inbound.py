"""What the CRM says, applied here: one path for webhooks and for the reconciliation sync.

A CRM contact record becomes a contact (found by CRM id, then by email; created when new) through
the same rules as ``POST /contacts`` (nurture/contact_changes.py), and its running enrollments hear
of a change through ``Enroller.contact_changed`` (property triggers and branches see it). The CRM's
unsubscribe or hard bounce suppresses the contact; its "pause nurture until" property pauses the
contact through the pause API's path (``Pauser``) under the contact's owner. A deal stage change
becomes a ``deal_stage_changed`` event per associated contact, routed like any event
(``Enroller.route_event``). A write of our own that comes back carries values the contact already
has, so it changes nothing and tells nobody (no echo).

Enrolling commits the caller's session (see nurture/enrolling.py); the caller commits at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from nurture.contact_changes import apply_contact_changes
from nurture.crm.connector import CrmContact, CrmDeal
from nurture.crm.mapping import CrmMapping
from nurture.enrolling import Enroller
from nurture.event_types import DEAL_STAGE_CHANGED
from nurture.logging import get_logger
from nurture.models import Contact, Event, PauseLog, SubscriptionStatus, utcnow
from nurture.pausing import Actor, Pauser
from nurture.snapshots import contact_snapshot

# The rep a CRM pause is recorded for when the contact has no owner.
UNOWNED = "crm"


@dataclass
class Applied:
    contact: Contact | None
    created: bool = False
    changed: list[str] = field(default_factory=list)
    paused_until: datetime | None = None
    told: int = 0  # running enrollments signalled


class CrmInbound:
    def __init__(self, provider: str, mapping: CrmMapping, client: Client, enroller: Enroller):
        self.provider = provider
        self.mapping = mapping
        self.client = client
        self.enroller = enroller
        # A sync page's contacts, looked up together (prefetch): by CRM id, and by email.
        self._prefetched: tuple[dict[str, Contact], dict[str, Contact]] | None = None

    async def prefetch(self, session: AsyncSession, records: list[CrmContact]) -> None:
        """Find a page's contacts here in two queries, not two per record (the import's round trips).
        A record not found is new: it is inserted, and one added meanwhile is found on the conflict."""
        ids = [r.id for r in records]
        emails = sorted({e for r in records if (e := r.email)})
        by_id = {c.crm_id: c for c in (await session.exec(select(Contact).where(col(Contact.crm_id).in_(ids)))).all()
                 if c.crm_id is not None}
        by_email: dict[str, Contact] = {}
        if emails:
            found = (await session.exec(select(Contact).where(func.lower(Contact.email).in_(emails)))).all()
            by_email = {c.email.lower(): c for c in found}
        self._prefetched = (by_id, by_email)

    async def contact_record(self, session: AsyncSession, record: CrmContact) -> Applied:
        """Apply one CRM contact as it is now; idempotent (the same record twice changes nothing)."""
        if record.archived:
            return await self.contact_deleted(session, record.id)
        contact, created = await self._contact_for(session, record)
        if contact is None:
            return Applied(None)
        log = get_logger(contact_id=contact.id, crm_id=record.id, provider=self.provider)
        previous = None if created else contact_snapshot(contact)
        changes = self.mapping.inbound_changes(record.properties)
        suppressed = self.mapping.suppressed(record.properties)
        if suppressed is not None and contact.subscription_status == SubscriptionStatus.subscribed:
            changes["subscription_status"] = suppressed
        changed = apply_contact_changes(contact, changes, explicit_edit=False)
        if contact.crm_id != record.id:
            contact.crm_id = record.id
        session.add(contact)
        await session.flush()
        applied = Applied(contact, created=created, changed=changed)
        if changed or created:
            applied.told = len(await self.enroller.contact_changed(session, contact, previous, created=created))
            log.info("crm_contact_applied", created=created, changed=changed, told=applied.told)
        pause = self.mapping.pause_request(record.properties, utcnow())
        if pause is None and await self._paused_from_crm(session, contact):
            # The rep cleared the property (or its date passed): the pause the CRM set ends.
            actor = Actor(rep=contact.paused_by or UNOWNED, requested_by=self.provider, authenticated=True)
            confirmed = await Pauser(self.client).resume(session, contact, actor, "pause property cleared in the CRM")
            log.info("crm_pause_ended", enrollments=len(confirmed))
        longest = timedelta(days=self.enroller.settings.max_pause_days)
        if pause is not None and pause[0] - utcnow() > longest:
            # The pause API refuses such a pause too (max_pause_days): the CRM's is not applied.
            log.warning("crm_pause_too_long", until=pause[0].isoformat(), max_pause_days=self.enroller.settings.max_pause_days)
            pause = None
        elif pause is not None and contact.paused_until != pause[0]:
            until, reason = pause
            rep = contact.owner or UNOWNED
            actor = Actor(rep=rep, requested_by=self.provider, authenticated=True)
            confirmed = await Pauser(self.client).pause(session, contact, until, reason, actor)
            applied.paused_until = until
            log.info("crm_pause_applied", until=until.isoformat(), by=rep, enrollments=len(confirmed))
        return applied

    async def _paused_from_crm(self, session: AsyncSession, contact: Contact) -> bool:
        """Whether the contact is paused now by a pause this CRM set (the latest pause entry is ours)."""
        if contact.paused_until is None or contact.paused_until <= utcnow():
            return False
        latest = (
            await session.exec(
                select(PauseLog).where(PauseLog.contact_id == contact.id).order_by(col(PauseLog.id).desc())
            )
        ).first()
        return (
            latest is not None and not latest.flow_ids and latest.action in ("pause", "extend")
            and latest.requested_by == self.provider
        )

    async def contact_deleted(self, session: AsyncSession, crm_id: str) -> Applied:
        """The CRM deleted the record: the contact stays (its history is ours) but loses the link."""
        contact = await self.by_crm_id(session, crm_id)
        if contact is not None:
            contact.crm_id = None
            contact.updated_at = utcnow()
            session.add(contact)
            get_logger(contact_id=contact.id, crm_id=crm_id).info("crm_contact_unlinked")
        return Applied(contact)

    async def deal_stage(
        self, session: AsyncSession, deal: CrmDeal, contacts: list[Contact], event_key: str, occurred_at: datetime,
        *, only_if_moved: bool = False,
    ) -> list[Event]:
        """One ``deal_stage_changed`` event per contact of the deal, routed to its enrollments.

        ``event_key`` names the CRM's change: delivered twice, it is recorded and routed once. With
        ``only_if_moved`` (a deal read by the sync, whatever changed on it) only a stage other than
        the last one recorded for the deal counts.
        """
        recorded = []
        for contact in contacts:
            event_id = f"{self.provider}:{event_key}:{contact.id}"[:200]
            if (await session.exec(select(Event.id).where(Event.event_id == event_id))).first() is not None:
                continue
            if only_if_moved and await self._last_stage(session, contact, deal.id) == deal.stage:
                continue
            properties = {**self.mapping.deal_stage(deal.stage), "deal_id": deal.id, "source": self.provider}
            if deal.properties.get("dealname"):
                properties["deal_name"] = str(deal.properties["dealname"])[:300]
            event = Event(
                event_id=event_id, contact_id=contact.id, type=DEAL_STAGE_CHANGED, properties=properties,
                occurred_at=occurred_at,
            )
            try:
                async with session.begin_nested():
                    session.add(event)
            except IntegrityError:
                continue  # the same change, delivered twice at once: the other delivery routes it
            outcome = await self.enroller.route_event(session, contact, event)
            get_logger(contact_id=contact.id, deal_id=deal.id).info(
                "crm_deal_stage", stage=properties["stage"], signalled=[e.id for e in outcome.signalled]
            )
            recorded.append(event)
        return recorded

    async def _last_stage(self, session: AsyncSession, contact: Contact, deal_id: str) -> str | None:
        rows = await session.exec(
            select(Event).where(Event.contact_id == contact.id, Event.type == DEAL_STAGE_CHANGED)
            .order_by(col(Event.id).desc()).limit(50)
        )
        for event in rows.all():
            if str((event.properties or {}).get("deal_id")) == deal_id:
                return str(event.properties.get("crm_stage"))
        return None

    async def by_crm_id(self, session: AsyncSession, crm_id: str) -> Contact | None:
        return (await session.exec(select(Contact).where(Contact.crm_id == crm_id))).first()

    async def _contact_for(self, session: AsyncSession, record: CrmContact) -> tuple[Contact | None, bool]:
        by_id, by_email = self._prefetched if self._prefetched is not None else (None, None)
        contact = by_id.get(record.id) if by_id is not None else await self.by_crm_id(session, record.id)
        if contact is not None:
            return contact, False
        email = record.email
        if not email:
            return None, False  # nothing to identify the contact by: a CRM record without an email is not ours
        if by_email is not None:
            contact = by_email.get(email)
        else:
            contact = (await session.exec(select(Contact).where(func.lower(Contact.email) == email))).first()
        if contact is not None:
            return contact, False
        contact = Contact(email=email, crm_id=record.id)
        try:
            async with session.begin_nested():
                session.add(contact)
        except IntegrityError:
            contact = (await session.exec(select(Contact).where(func.lower(Contact.email) == email))).first()
            return contact, False
        return contact, True
