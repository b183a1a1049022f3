"""The engine sending through one provider's emulator, and that provider's webhooks posted back.

``provider_stack`` (parametrized over the four providers) runs a worker whose sends go to the
emulator and an API with the provider's webhook settings; ``Stack.report`` posts one event about a
sent message the way the vendor posts it (its payload, its signature), ``Stack.forged`` the same
signed with a key that is not the vendor's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from activities.email.providers import provider_from_settings
from api.main import create_app
from nurture.models import Message
from nurture.settings import Settings
from tests.email_emulators.fixtures import running, ses_sent
from tests.email_emulators.loopback import serving
from tests.email_emulators.ses_front import SesThrottlingFront
from tests.email_emulators.sns import SnsEmulator, ses_event
from tests.email_emulators.vendors import Accepted
from worker.main import build_send_worker, build_worker

PROVIDERS = ("ses", "sendgrid", "postmark", "mailgun")
# Our report kinds, in each vendor's words.
VENDOR_KINDS = {
    "ses": {"delivered": "Delivery", "hard_bounce": "Bounce", "complaint": "Complaint", "open": "Open", "click": "Click",
            "unsubscribe": "Subscription"},
    "sendgrid": {"delivered": "delivered", "hard_bounce": "bounce", "complaint": "spamreport", "open": "open",
                 "click": "click", "unsubscribe": "unsubscribe"},
    "postmark": {"delivered": "Delivery", "hard_bounce": "Bounce", "complaint": "SpamComplaint", "open": "Open",
                 "click": "Click", "unsubscribe": "SubscriptionChange"},
    "mailgun": {"delivered": "delivered", "hard_bounce": "failed", "complaint": "complained", "open": "opened",
                "click": "clicked", "unsubscribe": "unsubscribed"},
}
PATHS = {name: f"/webhooks/{name}" for name in PROVIDERS}


@dataclass
class Stack:
    name: str
    emulator: Any  # the vendor's emulator; SnsEmulator for SES (moto holds the sends)
    settings: Settings
    api: httpx.AsyncClient
    moto_url: str | None = None

    ses_front: SesThrottlingFront | None = None

    def throttle(self, count: int, retry_after_seconds: int = 1) -> None:
        """The provider answers the next ``count`` sends with its throttling error and Retry-After."""
        (self.ses_front or self.emulator).throttle(count, retry_after_seconds)

    def sent_count(self) -> int:
        return len(ses_sent(self.moto_url)) if self.moto_url else len(self.emulator.sent)

    def accepted(self, message: Message) -> Accepted:
        """The vendor's record of our message: what its events echo back."""
        metadata = {"nurture_message_id": str(message.id), "nurture_enrollment": message.workflow_id or ""}
        if self.name == "ses":
            return Accepted(message.provider_message_id or "", message.to_email, message.subject or "", {}, metadata)
        [found] = [a for a in self.emulator.sent if a.provider_id == message.provider_message_id]
        return found

    def payload(self, kind: str, message: Message, **extra: Any) -> Any:
        """The vendor's event about the message (unsigned)."""
        accepted = self.accepted(message)
        vendor_kind = VENDOR_KINDS[self.name][kind]
        if kind in ("open", "click"):
            # A reader's open comes a while after the send (one within seconds is taken for a prefetch).
            later = datetime.now(UTC) + timedelta(minutes=1)
            field = {"ses": "timestamp", "sendgrid": "timestamp", "postmark": "ReceivedAt", "mailgun": "timestamp"}[self.name]
            extra.setdefault(field, int(later.timestamp()) if self.name in ("sendgrid", "mailgun") else later.isoformat())
        if self.name == "ses":
            return ses_event(vendor_kind, accepted.provider_id, accepted.to, accepted.metadata, **extra)
        if self.name == "postmark" and kind == "click":
            extra.setdefault("OriginalLink", "https://example.com/a")
        if self.name in ("mailgun", "sendgrid") and kind == "click":
            extra.setdefault("url", "https://example.com/a")
        return self.emulator.event(vendor_kind, accepted, **extra)

    def signed(self, payload: Any, **options: Any) -> dict[str, Any]:
        """The request the vendor makes with the payload."""
        if self.name == "ses":
            return SnsEmulator.post(self.emulator.notification(payload, **options))
        if self.name == "sendgrid":
            return self.emulator.signed([payload], **options)
        if self.name == "postmark":
            s = self.settings.postmark
            auth = self.emulator.basic_auth(options.get("username", s.webhook_username), options.get("password", s.webhook_password))
            return {"content": json.dumps(payload).encode(), "headers": {"content-type": "application/json", **auth}}
        return {"json": self.emulator.signed(payload, **options)}

    async def report(self, kind: str, message: Message, **extra: Any) -> httpx.Response:
        return await self.api.post(PATHS[self.name], **self.signed(self.payload(kind, message, **extra)))

    async def forged(self, kind: str, message: Message) -> httpx.Response:
        """The same event, signed with a key that is not the vendor's (wrong password for Postmark)."""
        payload = self.payload(kind, message)
        if self.name == "ses":
            return await self.api.post(PATHS["ses"], **self.signed(payload, key=rsa.generate_private_key(65537, 2048)))
        if self.name == "sendgrid":
            return await self.api.post(PATHS["sendgrid"], **self.signed(payload, key=ec.generate_private_key(ec.SECP256R1())))
        if self.name == "postmark":
            return await self.api.post(PATHS["postmark"], **self.signed(payload, password="guess"))
        return await self.api.post(PATHS["mailgun"], **self.signed(payload, key="key-" + base64.b16encode(b"guess").decode()))


@pytest.fixture(params=PROVIDERS)
async def provider_stack(request, db, client, settings) -> AsyncIterator[Stack]:
    name = request.param
    if name == "ses":
        # moto's fixtures are synchronous: SES v2 on moto, SNS's signed posts from SnsEmulator.
        moto_url = request.getfixturevalue("moto_server")
        vendor_settings = request.getfixturevalue("ses")
        sns = SnsEmulator()
        front = SesThrottlingFront(moto_url)
        async with serving(sns.app) as sns_url, serving(front.app) as front_url:
            sns.base_url = sns_url
            vendor_settings = vendor_settings.model_copy(update={"base_url": front_url})
            async with _running_stack(name, sns, vendor_settings, db, client, settings, moto_url) as stack:
                stack.ses_front = front
                yield stack
        return
    async with running(name) as (emulator, vendor_settings):
        async with _running_stack(name, emulator, vendor_settings, db, client, settings) as stack:
            yield stack


@asynccontextmanager
async def _running_stack(name, emulator, vendor_settings, db, client, settings, moto_url=None) -> AsyncIterator[Stack]:
    configured = settings.model_copy(update={"email_provider": name, name: vendor_settings, "prefetch_open_seconds": 0.0})
    provider = provider_from_settings(configured)
    try:
        async with build_worker(client, db, provider, configured), build_send_worker(client, db, provider, configured):
            app = create_app(configured, db=db, client=client)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
                yield Stack(name, emulator, configured, http, moto_url)
    finally:
        await provider.aclose()  # type: ignore[attr-defined]
