"""Statistics per flow, step, email and variant, and activity per contact (nurture/analytics.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api import crud
from api.deps import MAX_ID, ContactDep, FlowId, SessionDep, SettingsDep
from nurture.analytics import ContactActivity, FlowStats, contact_activity, flow_stats

router = APIRouter(tags=["observability"])


@router.get("/flows/{flow_id}/stats", response_model=FlowStats)
async def get_flow_stats(
    flow_id: FlowId,
    session: SessionDep,
    settings: SettingsDep,
    version: Annotated[int | None, Query(ge=1, le=MAX_ID, description="One version; all versions when omitted.")] = None,
    breakdown: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9_.-]{1,64}$",
            description="Also per value of a contact property (`source`, `vertical`, `lifecycle_stage`, `owner` ...) "
            "or per tag (`tag`).",
        ),
    ] = None,
) -> FlowStats:
    """Per step: entered, waiting now, exits by reason, moved to the next lifecycle stage; per email
    step and A/B variant: sent, delivered, opened and clicked (unique contacts), bounced, complained,
    unsubscribed. Per flow: entered, active, completed, goal reached, exits by reason, conversion to
    the goal and to the next lifecycle stage, closed won and lost, median time to goal, and
    `anomalies` when a rate passes its threshold (also logged)."""
    flow = await crud.flow_or_404(session, flow_id)
    if version is not None:
        await crud.version_or_404(session, flow_id, version)
    return await flow_stats(session, settings, flow.id, version, breakdown)  # type: ignore[arg-type]


@router.get("/contacts/{contact_id}/activity", response_model=ContactActivity)
async def get_contact_activity(contact: ContactDep, session: SessionDep) -> ContactActivity:
    """Every marketing email sent to the contact with its engagement (opens, clicks, delivery,
    bounce, complaint, unsubscribe), and the first and last activity dates."""
    return await contact_activity(session, contact)
