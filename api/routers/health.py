from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from api.deps import DatabaseDep, TemporalDep
from nurture.enrolling import TemporalUnavailable
from nurture.logging import get_logger

router = APIRouter(tags=["health"])

CHECK_TIMEOUT_SECONDS = 5.0


class HealthOut(BaseModel):
    database: str = Field(description='"ok" or "unreachable: <why>"')
    temporal: str = Field(description='"ok" or "unreachable: <why>"')


def _why(exc: BaseException) -> str:
    return f"unreachable: {str(exc).strip() or type(exc).__name__}"


@router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut, "description": "Something is down"}})
async def health(db: DatabaseDep, temporal: TemporalDep, response: Response) -> HealthOut:
    """200 when the database and Temporal both answer, else 503 saying which is down."""
    try:
        await asyncio.wait_for(db.ping(), CHECK_TIMEOUT_SECONDS)
        database = "ok"
    except Exception as exc:
        database = _why(exc)
    try:
        client = await temporal.get()
        serving = await client.service_client.check_health(timeout=timedelta(seconds=CHECK_TIMEOUT_SECONDS))
        temporal_state = "ok" if serving else "unreachable: not serving"
    except TemporalUnavailable as exc:
        temporal_state = _why(exc)
    except Exception as exc:
        temporal_state = _why(exc)
    if database != "ok" or temporal_state != "ok":
        response.status_code = 503
        get_logger(component="api").warning("unhealthy", database=database, temporal=temporal_state)
    return HealthOut(database=database, temporal=temporal_state)
