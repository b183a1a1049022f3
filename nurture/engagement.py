"""Opens, clicks and provider reports become events on the contact and signals to its enrollment.

Every hit or report is an ``Event`` row (``email_opened``, ``email_clicked``,
``email_delivered``, ``email_bounced``, ``email_complained``) whose properties name the
message, routed with ``Enroller.route_event`` like any event, so the enrollment that sent
the message hears about it. The message row keeps the first open, click and delivery.
A hard bounce or a complaint also changes the contact's subscription and tells its
enrollments, which then exit. Bot and prefetch opens are recorded, flagged ``bot: true``,
and neither signalled nor counted as engagement. Nothing here commits: the caller does,
after Temporal was told (unless the event enrolls the contact in a flow it triggers: an
enrollment's row is committed before its workflow starts, see nurture/enrolling.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.enrolling import Enroller
from nurture.event_types import (
    EMAIL_BOUNCED,
    EMAIL_CLICKED,
    EMAIL_COMPLAINED,
    EMAIL_DELIVERED,
    EMAIL_OPENED,
    UNSUBSCRIBED,
)
from nurture.logging import get_logger
from nurture.models import Contact, Event, Message, SubscriptionStatus, utcnow
from nurture.settings import Settings

GetEnroller = Callable[[], Awaitable[Enroller]]


@dataclass
class Recorded:
    event: Event | None  # None: a duplicate report, or a message we do not know
    bot_reason: str | None = None
    duplicate: bool = False


def bot_reason(message: Message, user_agent: str | None, at: datetime, settings: Settings) -> str | None:
    """Why an open looks automatic, or None for a person.

    A security scanner fetches images right after the send; a prefetching client (Apple
    Mail Privacy Protection, some webmails) fetches them on delivery, whoever the reader.
    """
    agent = (user_agent or "").lower()
    if message.sent_at is not None and (at - message.sent_at).total_seconds() <= settings.scanner_open_seconds:
        if any(marker.lower() in agent for marker in settings.scanner_user_agents):
            return "scanner"
    delivered = message.delivered_at or message.sent_at
    if delivered is not None and (at - delivered).total_seconds() < settings.prefetch_open_seconds:
        return "prefetch"
    return None


class ProviderEvent(BaseModel):
    """One report in a provider webhook, in the normalized shape (docs/observability.md)."""

    id: str | None = Field(default=None, max_length=200, description="The provider's event id: a resent report is ignored.")
    type: Literal["delivered", "bounced", "complained", "opened", "clicked", "unsubscribed"]
    message_id: int | None = Field(default=None, ge=1, le=2_147_483_647, description="Our message id.")
    provider_message_id: str | None = Field(default=None, max_length=300, description="Or the provider's (Message-ID).")
    bounce_type: Literal["hard", "soft"] = "hard"
    reason: str | None = Field(default=None, max_length=1000)
    occurred_at: datetime | None = None
    # Opens and clicks the provider tracked (leave its tracking off when ours is on: each counts).
    url: str | None = Field(default=None, max_length=4000, description="The link clicked.")
    user_agent: str | None = Field(default=None, max_length=1000)


@dataclass
class ReportsRecorded:
    recorded: list[str] = field(default_factory=list)  # the type of each report recorded
    duplicates: int = 0
    ignored: list[str] = field(default_factory=list)


class ProviderBatch(BaseModel):
    events: list[ProviderEvent] = Field(min_length=1, max_length=1000)


class EngagementRecorder:
    def __init__(self, session: AsyncSession, settings: Settings, get_enroller: GetEnroller):
        self.session = session
        self.settings = settings
        self.get_enroller = get_enroller

    async def message(self, message_id: int) -> Message | None:
        return await self.session.get(Message, message_id) if 0 < message_id < 2**31 else None

    async def opened(
        self, message: Message, user_agent: str | None, at: datetime, event_id: str | None = None, **extra: Any
    ) -> Recorded:
        reason = bot_reason(message, user_agent, at, self.settings)
        properties = {**_about(message), **extra, "user_agent": (user_agent or "")[:300], "bot": reason is not None}
        if reason is not None:
            properties["bot_reason"] = reason
        event_id = event_id or f"open:{message.id}:{uuid.uuid4().hex}"
        event = await self._event(message, EMAIL_OPENED, event_id, properties, at)
        if reason is None:
            message.opened_at = message.opened_at or at
            await self._engaged(message, event)
        return Recorded(event, bot_reason=reason)

    async def clicked(
        self, message: Message, url: str, user_agent: str | None, at: datetime, event_id: str | None = None, **extra: Any
    ) -> Recorded:
        properties = {**_about(message), **extra, "url": url, "user_agent": (user_agent or "")[:300]}
        event_id = event_id or f"click:{message.id}:{uuid.uuid4().hex}"
        event = await self._event(message, EMAIL_CLICKED, event_id, properties, at)
        message.clicked_at = message.clicked_at or at
        await self._engaged(message, event)
        return Recorded(event)

    async def provider_event(self, provider: str, report: ProviderEvent) -> Recorded:
        message = await self._reported_message(provider, report)
        if message is None:
            return Recorded(None)
        event_id = f"{provider}:{report.id or _digest(report)}"
        if (await self.session.exec(select(Event.id).where(Event.event_id == event_id))).first() is not None:
            return Recorded(None, duplicate=True)
        at = report.occurred_at or utcnow()
        if report.type == "opened":
            return await self.opened(message, report.user_agent, at, event_id, provider=provider)
        if report.type == "clicked":
            return await self.clicked(message, report.url or "", report.user_agent, at, event_id, provider=provider)
        properties: dict[str, Any] = {**_about(message), "provider": provider}
        if report.reason:
            properties["reason"] = report.reason
        contact = await self.session.get(Contact, message.contact_id)
        assert contact is not None
        if report.type == "unsubscribed":
            # Through the provider's own unsubscribe link or list-unsubscribe handling: the same
            # consent as ours (api/routers/consent.py), so every enrollment of the contact exits.
            event = await self._event(message, UNSUBSCRIBED, event_id, {**properties, "source": provider}, at)
            contact.last_activity_at = max(contact.last_activity_at or at, at)
            await self._unreachable(contact, SubscriptionStatus.unsubscribed)
        elif report.type == "delivered":
            event = await self._event(message, EMAIL_DELIVERED, event_id, properties, at)
            message.delivered_at = message.delivered_at or at
        elif report.type == "bounced":
            properties["bounce_type"] = report.bounce_type
            event = await self._event(message, EMAIL_BOUNCED, event_id, properties, at)
            message.bounced_at = message.bounced_at or at
            message.bounce_type = report.bounce_type if message.bounce_type != "hard" else "hard"
            if report.bounce_type == "hard":
                await self._unreachable(contact, SubscriptionStatus.bounced)
        else:
            event = await self._event(message, EMAIL_COMPLAINED, event_id, properties, at)
            message.complained_at = message.complained_at or at
            await self._unreachable(contact, SubscriptionStatus.unsubscribed)
        self.session.add(message)
        await (await self.get_enroller()).route_event(self.session, contact, event)
        return Recorded(event)

    async def provider_reports(self, provider: str, reports: list[ProviderEvent], where: list[str]) -> ReportsRecorded:
        """Record a webhook's reports (``where`` names each in the answer); nothing is committed."""
        done = ReportsRecorded()
        for report, name in zip(reports, where, strict=True):
            outcome = await self.provider_event(provider, report)
            if outcome.duplicate:
                done.duplicates += 1
            elif outcome.event is None:
                done.ignored.append(f"{name}: no message of provider '{provider}' matches")
            else:
                done.recorded.append(report.type)
        return done

    async def _reported_message(self, provider: str, report: ProviderEvent) -> Message | None:
        if report.message_id is not None:
            message = await self.message(report.message_id)
            return message if message is not None and message.provider == provider else None
        if report.provider_message_id:
            return (
                await self.session.exec(
                    select(Message).where(
                        Message.provider == provider, Message.provider_message_id == report.provider_message_id
                    )
                )
            ).first()
        return None

    async def _event(self, message: Message, kind: str, event_id: str, properties: dict[str, Any], at: datetime) -> Event:
        event = Event(event_id=event_id, contact_id=message.contact_id, type=kind, properties=properties, occurred_at=at)
        self.session.add(event)
        await self.session.flush()
        return event

    async def _engaged(self, message: Message, event: Event) -> None:
        """The contact did something: note it and tell the enrollment that sent the message."""
        contact = await self.session.get(Contact, message.contact_id)
        assert contact is not None
        if contact.last_activity_at is None or event.occurred_at > contact.last_activity_at:
            contact.last_activity_at = event.occurred_at
        self.session.add(contact)
        self.session.add(message)
        await (await self.get_enroller()).route_event(self.session, contact, event)

    async def _unreachable(self, contact: Contact, status: SubscriptionStatus) -> None:
        """A hard bounce or a complaint: no more email; running enrollments exit."""
        if contact.subscription_status == status or contact.subscription_status == SubscriptionStatus.unsubscribed:
            return
        contact.subscription_status = status
        contact.updated_at = utcnow()
        self.session.add(contact)
        await self.session.flush()
        told = await (await self.get_enroller()).contact_changed(self.session, contact)
        get_logger(contact_id=contact.id).info("contact_unreachable", status=str(status), enrollments=[e.id for e in told])


def _about(message: Message) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "flow_id": message.flow_id,
        "step_id": message.step_id,
        "variant": message.variant,
        "template": message.template_key,
    }


def _digest(report: ProviderEvent) -> str:
    """A stable id for a report without one, so a resent webhook is still recognised."""
    data = json.dumps(report.model_dump(mode="json", exclude={"id"}), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:32]
