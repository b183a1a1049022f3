"""Prometheus metrics of the API process (the worker serves its own on worker_metrics_port)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import select

from api.deps import SessionDep
from nurture.logging import get_logger
from nurture.metrics import record_last_sync
from nurture.models import CrmSyncState

router = APIRouter(tags=["observability"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(session: SessionDep) -> Response:
    """Counters and histograms in the Prometheus text format (docs/observability.md lists them).

    The CRM sync runs in the worker; its last run's gauges (`nurture_crm_last_sync_*`) are read here
    from what it recorded, so the API shows them whichever worker ran it."""
    try:
        for state in (await session.exec(select(CrmSyncState))).all():
            record_last_sync(state.provider, state.last_sync_contacts, state.last_sync_seconds)
    except SQLAlchemyError as exc:  # the rest of the metrics are still worth serving
        get_logger().warning("crm_sync_state_unreadable", error=str(exc)[:300])
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
