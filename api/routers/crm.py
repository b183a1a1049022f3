"""The CRM connection: HubSpot's webhooks in, the sync's state, and a full resync on demand (docs/crm.md)."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import func
from sqlmodel import col, select

from api.deps import ClientDep, CrmDep, OptionalCrmDep, SessionDep, SettingsDep, TemporalDep
from api.schemas.crm import CrmFailedWrite, CrmLastSync, CrmResyncOut, CrmStatusOut, CrmWebhookOut, CrmWriteCounts
from nurture.crm import mapping_with_owners
from nurture.crm.connector import CrmAuthFailed, CrmError, CrmUnavailable
from nurture.crm.hubspot_webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    HubSpotEvent,
    HubSpotWebhook,
    SignatureRefused,
    verify_v3,
)
from nurture.crm.inbound import CrmInbound
from nurture.crm.schedule import start_resync
from nurture.enrolling import Enroller
from nurture.logging import get_logger
from nurture.metrics import CRM_INBOUND_SECONDS, CRM_WEBHOOK_EVENTS
from nurture.models import CrmSyncState, CrmWrite, CrmWriteStatus, utcnow

router = APIRouter(tags=["crm"])

# HubSpot sends at most 100 events per delivery.
MAX_EVENTS = 100
EVENTS = TypeAdapter(list[HubSpotEvent])


def _events_schema() -> dict[str, Any]:
    schema = EVENTS.json_schema(by_alias=True)
    schema["maxItems"] = MAX_EVENTS
    return schema


@router.post(
    "/webhooks/crm/hubspot",
    response_model=CrmWebhookOut,
    responses={
        401: {"description": "Missing, wrong or stale X-HubSpot-Signature-v3"},
        404: {"description": "HubSpot is not the connected CRM"},
        503: {"description": "HubSpot or Temporal is unreachable: HubSpot delivers again"},
    },
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _events_schema()}}}},
)
async def hubspot_webhook(
    request: Request, session: SessionDep, settings: SettingsDep, temporal: TemporalDep, crm: CrmDep
) -> CrmWebhookOut:
    """HubSpot's webhook subscriptions: contact created, changed, deleted; deal stage changed.

    Verified with HubSpot's v3 signature (the app's client secret, `crm_hubspot_app_secret`) and a
    five-minute window on `X-HubSpot-Request-Timestamp`. Each changed contact is read through HubSpot's
    API and applied to the contact and its running enrollments; a deal stage change becomes a
    `deal_stage_changed` event for each of the deal's contacts. Answered 503 when HubSpot or Temporal
    cannot be reached, so that HubSpot delivers the events again (they are applied once).
    """
    started = time.monotonic()
    if crm.provider != "hubspot":
        raise HTTPException(status_code=404, detail="HubSpot is not the connected CRM")
    body = await request.body()
    if not settings.crm_hubspot_app_secret:
        raise HTTPException(status_code=401, detail="crm_hubspot_app_secret is not set: no delivery can be verified")
    public = settings.public_base_url.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        verify_v3(
            settings.crm_hubspot_app_secret, request.method, [public, str(request.url)], body,
            request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER),
            time.time(), settings.crm_webhook_tolerance_seconds,
        )
    except SignatureRefused as exc:
        CRM_WEBHOOK_EVENTS.labels("hubspot", "delivery", "refused").inc()
        get_logger(provider="hubspot").warning("crm_webhook_refused", reason=str(exc))
        raise HTTPException(status_code=401, detail=str(exc)) from exc
    try:
        events = EVENTS.validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError(
            [{"type": e["type"], "loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        ) from exc
    if len(events) > MAX_EVENTS:
        raise RequestValidationError(
            [{"type": "too_long", "loc": ("body",), "msg": f"at most {MAX_EVENTS} events per delivery"}]
        )
    client = await temporal.get()
    try:
        inbound = CrmInbound("hubspot", await mapping_with_owners(settings, crm, session), client, Enroller(client, settings))
        done = await HubSpotWebhook(crm, inbound, settings.crm_hubspot_app_id).handle(session, events)
    except CrmUnavailable as exc:
        raise HTTPException(status_code=503, detail=f"HubSpot is unreachable: {exc}") from exc
    except CrmAuthFailed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc
    state = await session.get(CrmSyncState, "hubspot") or CrmSyncState(provider="hubspot")
    state.last_webhook_at = utcnow()
    session.add(state)
    await session.commit()
    for event in events:
        CRM_WEBHOOK_EVENTS.labels("hubspot", event.subscription_type[:60], "received").inc()
    CRM_INBOUND_SECONDS.labels("hubspot").observe(time.monotonic() - started)
    return CrmWebhookOut(contacts=done.contacts, deals=done.deals, events=done.events, ignored=done.ignored)


@router.get("/crm/status", response_model=CrmStatusOut)
async def crm_status(session: SessionDep, settings: SettingsDep, connector: OptionalCrmDep) -> CrmStatusOut:
    """Whether the CRM answers, where the sync stands (cursor, lag, last run), and the write queue."""
    provider = settings.crm_provider
    out = CrmStatusOut(provider=provider, connected=None)
    if provider == "none":
        return out
    if connector is None:
        out.connected, out.error = False, "the connector cannot be built: check the crm_* settings"
    else:
        try:
            await connector.check()
            out.connected = True
        except CrmError as exc:
            out.connected, out.error = False, str(exc)[:500]
    state = await session.get(CrmSyncState, provider)
    if state is not None:
        out.cursor, out.last_run_at, out.last_success_at = state.cursor, state.last_run_at, state.last_success_at
        out.last_error, out.last_webhook_at = state.last_error, state.last_webhook_at
        out.resync_requested_at = state.resync_requested_at
        out.contacts_read, out.contacts_changed = state.contacts_read, state.contacts_changed
        if state.cursor is not None:
            out.lag_seconds = round((utcnow() - state.cursor).total_seconds(), 3)
        if state.last_sync_contacts is not None and state.last_sync_seconds:
            out.last_sync = CrmLastSync(contacts=state.last_sync_contacts, seconds=state.last_sync_seconds,
                                        contacts_per_second=round(state.last_sync_contacts / state.last_sync_seconds, 1))
    counts = dict(
        (await session.exec(
            select(CrmWrite.status, func.count()).where(CrmWrite.provider == provider).group_by(CrmWrite.status)
        )).all()
    )
    out.writes = CrmWriteCounts(**{name: counts.get(name, 0) for name in ("queued", "done", "failed")})
    out.oldest_queued_write_at = (
        await session.exec(
            select(func.min(CrmWrite.created_at)).where(CrmWrite.provider == provider, CrmWrite.status == CrmWriteStatus.queued)
        )
    ).one()
    failed = (
        await session.exec(
            select(CrmWrite).where(CrmWrite.provider == provider, CrmWrite.status == CrmWriteStatus.failed)
            .order_by(col(CrmWrite.id).desc()).limit(20)
        )
    ).all()
    out.failed_writes = [
        CrmFailedWrite(id=w.id, kind=w.kind, contact_id=w.contact_id, attempts=w.attempts, last_error=w.last_error,
                       created_at=w.created_at)
        for w in failed
    ]
    return out


@router.post("/crm/resync", response_model=CrmResyncOut, status_code=status.HTTP_202_ACCEPTED)
async def crm_resync(session: SessionDep, settings: SettingsDep, client: ClientDep, crm: CrmDep) -> CrmResyncOut:
    """Read every CRM contact again (a full reconciliation), as a workflow; asking while one runs finds it."""
    # Noted before the start: the run clears it when it finishes, which may be before we answer.
    state = await session.get(CrmSyncState, crm.provider) or CrmSyncState(provider=crm.provider)
    state.resync_requested_at = utcnow()
    session.add(state)
    await session.commit()
    handle = await start_resync(client, settings)
    get_logger(provider=crm.provider).info("crm_resync_requested", workflow_id=handle.id)
    return CrmResyncOut(workflow_id=handle.id, run_id=handle.result_run_id)
