"""SMS steps through a provider interface; the local outbox keeps each text as a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from sqlmodel import select
from temporalio import activity

from activities.common import require_contact
from activities.email.providers import _safe_name
from activities.email.rendering import TemplateRenderer, TemplateRenderError, template_failure
from nurture.contracts import ActionResult, SendSmsInput
from nurture.db import Database
from nurture.models import MessageStatus, SmsMessage, utcnow
from nurture.snapshots import contact_snapshot


class SmsProvider(Protocol):
    name: str

    async def send(self, to: str, text: str, idempotency_key: str) -> str: ...


class SmsOutboxProvider:
    name = "outbox"

    def __init__(self, directory: Path):
        self.directory = directory

    async def send(self, to: str, text: str, idempotency_key: str) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.directory / f"{_safe_name(idempotency_key)}.txt"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(f"To: {to}\n\n{text}\n")
        os.replace(tmp, target)
        return target.name


class SmsActivities:
    def __init__(self, db: Database, provider: SmsProvider, renderer: TemplateRenderer | None = None):
        self.db = db
        self.provider = provider
        self.renderer = renderer or TemplateRenderer()

    @activity.defn(name="send_sms")
    async def send_sms(self, input: SendSmsInput) -> ActionResult:
        async with self.db.session() as session:
            sms = (await session.exec(select(SmsMessage).where(SmsMessage.idempotency_key == input.idempotency_key))).first()
            if sms is not None and sms.status == MessageStatus.sent:
                return ActionResult(status="done", detail=f"sms sent to {sms.to_phone}", record_id=sms.id)
            contact = await require_contact(session, input.contact_id)
            if contact.subscription_status != "subscribed" or contact.properties.get("sms_opt_out"):
                return ActionResult(status="skipped", detail="the contact does not receive SMS")
            if not contact.phone:
                return ActionResult(status="skipped", detail="the contact has no phone number")
            try:
                text = await self.renderer.text(input.text, {"contact": contact_snapshot(contact).fields()})
            except TemplateRenderError as exc:
                raise template_failure(f"the text of step '{input.step_id}'", exc) from exc
            sms = sms or SmsMessage(
                idempotency_key=input.idempotency_key,
                workflow_id=input.workflow_id,
                flow_id=input.flow_id,
                step_id=input.step_id,
                contact_id=contact.id,
                to_phone=contact.phone,
                text=text,
                provider=self.provider.name,
                scheduled_at=input.at,
            )
            session.add(sms)
            await session.commit()
            await self.provider.send(contact.phone, text, input.idempotency_key)
            sms.status, sms.sent_at = MessageStatus.sent, utcnow()
            session.add(sms)
            await session.commit()
            await session.refresh(sms)
            return ActionResult(status="done", detail=f"sms sent to {contact.phone}", record_id=sms.id)
