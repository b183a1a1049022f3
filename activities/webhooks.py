"""Webhook steps: a signed JSON POST, refused towards private networks unless allowed."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
from sqlmodel import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import require_contact
from activities.email.rendering import TemplateRenderer, TemplateRenderError, template_failure
from nurture.contracts import ActionResult, WebhookInput
from nurture.db import Database
from nurture.models import WebhookCall, utcnow
from nurture.settings import Settings
from nurture.snapshots import contact_snapshot

def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Header value ``t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">`` (the Stripe scheme)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


async def refuse_private_target(url: str) -> None:
    """Resolve the host and refuse loopback, private, link-local and reserved addresses."""
    host = urlsplit(url).hostname
    if not host:
        raise ApplicationError(f"'{url}' has no host", type="WebhookRefused", non_retryable=True)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise ApplicationError(f"cannot resolve {host}: {exc}", type="WebhookUnreachable") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if (
            address.is_private or address.is_loopback or address.is_link_local
            or address.is_reserved or address.is_multicast or address.is_unspecified
        ):
            raise ApplicationError(
                f"refusing to call {host} ({address}): private and loopback addresses are not allowed "
                "(set NURTURE_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true to allow them)",
                type="WebhookRefused",
                non_retryable=True,
            )


class WebhookActivities:
    def __init__(self, db: Database, settings: Settings, http: httpx.AsyncClient | None = None):
        self.db = db
        self.settings = settings
        self.renderer = TemplateRenderer.from_settings(settings)
        self.http = http or httpx.AsyncClient(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    @activity.defn(name="call_webhook")
    async def call_webhook(self, input: WebhookInput) -> ActionResult:
        async with self.db.session() as session:
            call = (await session.exec(select(WebhookCall).where(WebhookCall.idempotency_key == input.idempotency_key))).first()
            if call is not None and call.completed_at is not None:
                return ActionResult(status="done", detail=f"{input.method} {input.url} -> {call.status_code}", record_id=call.id)
            contact = await require_contact(session, input.contact_id)
            if not self.settings.webhook_allow_private_networks:
                await refuse_private_target(input.url)
            try:
                data = await self.renderer.json(input.body, {"contact": contact_snapshot(contact).fields()})
            except TemplateRenderError as exc:
                raise template_failure(f"the webhook body of step '{input.step_id}'", exc) from exc
            payload = {
                "event": "nurture.step",
                "flow_id": input.flow_id,
                "step_id": input.step_id,
                "enrollment": input.workflow_id,
                "contact": {"id": contact.id, "email": contact.email},
                "data": data,
            }
            body = json.dumps(payload, separators=(",", ":"), default=str).encode()
            call = call or WebhookCall(
                idempotency_key=input.idempotency_key,
                workflow_id=input.workflow_id,
                step_id=input.step_id,
                contact_id=contact.id,
                url=input.url,
            )
            call.attempts += 1
            headers = {
                **input.headers,
                "Content-Type": "application/json",
                "Idempotency-Key": input.idempotency_key,
                "X-Nurture-Signature": sign(self.settings.webhook_secret, int(time.time()), body),
            }
            try:
                response = await self.http.request(input.method, input.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                call.error = f"{type(exc).__name__}: {exc}"
                session.add(call)
                await session.commit()
                raise ApplicationError(call.error, type="WebhookUnreachable") from exc
            call.status_code = response.status_code
            if response.status_code >= 400:
                call.error = f"HTTP {response.status_code}: {response.text[:200]}"
                permanent = response.status_code < 500 and response.status_code not in (408, 409, 425, 429)
                if permanent:
                    call.completed_at = utcnow()
                session.add(call)
                await session.commit()
                raise ApplicationError(call.error, type="WebhookRejected" if permanent else "WebhookFailed", non_retryable=permanent)
            call.error, call.completed_at = None, utcnow()
            session.add(call)
            await session.commit()
            await session.refresh(call)
            return ActionResult(status="done", detail=f"{input.method} {input.url} -> {response.status_code}", record_id=call.id)
