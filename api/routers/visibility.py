"""Finding a flow's enrollments through Temporal visibility (the custom search attributes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError
from sqlmodel import col, select
from temporalio.service import RPCError

from api import crud
from api.deps import MAX_ID, FlowId, SessionDep, SettingsDep, TemporalDep
from api.schemas.observability import VisibilityPage, VisibleEnrollmentOut
from nurture.analytics import flow_steps
from nurture.enrolling import TemporalUnavailable
from nurture.models import Enrollment, EnrollmentStatus
from nurture.visibility import (
    BadPageToken,
    VisibilityCounts,
    count_by_step_and_status,
    decode_page_token,
    encode_page_token,
    enrollment_query,
    search,
)

router = APIRouter(tags=["observability"])

StepQuery = Annotated[
    str | None, Query(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="NurtureStep: the current step id.")
]
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_ID, description="NurtureFlowVersion.")]
RESPONSES = {
    409: {"description": "Step and status are not kept in visibility (NURTURE_TEMPORAL_STEP_SEARCH_ATTRIBUTES off)"},
    503: {"description": "Temporal is unreachable"},
}


def _needs_step_attributes(settings) -> None:
    """Step and status live in the enrollments table unless the deployment pays for them in visibility."""
    if not settings.temporal_step_search_attributes:
        raise HTTPException(
            status_code=409,
            detail="enrollments keep their step and status in the database, not in Temporal visibility: "
            "use GET /enrollments?flow_id=&status= or GET /flows/{id}/stats, or set "
            "NURTURE_TEMPORAL_STEP_SEARCH_ATTRIBUTES=true",
        )


@router.get("/flows/{flow_id}/enrollments/search", response_model=VisibilityPage, responses=RESPONSES)
async def search_enrollments(
    flow_id: FlowId,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    step: StepQuery = None,
    status: Annotated[EnrollmentStatus | None, Query(description="NurtureStatus.")] = None,
    paused: Annotated[bool | None, Query(description="NurturePaused.")] = None,
    version: VersionQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    page_token: Annotated[str | None, Query(max_length=4000)] = None,
) -> VisibilityPage:
    """The flow's enrollments as Temporal visibility sees them, filtered by the search attributes.

    Visibility lags the workflows by about a second. Each item names its database row
    (`enrollment_id`) when there is one. Page with `next_page_token`.
    """
    await crud.flow_or_404(session, flow_id)
    if step is not None or status is not None:
        _needs_step_attributes(settings)
    try:
        token = decode_page_token(page_token)
    except BadPageToken as exc:
        raise _bad_page_token(str(exc)) from exc
    query = enrollment_query(
        settings.workflow_id_prefix, flow_id, version=version, step=step, status=status.value if status else None, paused=paused
    )
    client = await temporal.get()
    try:
        found, next_token = await search(client, query, limit, token)
    except RPCError as exc:
        if token is not None and await _answers_without_token(client, query):
            raise _bad_page_token("not a page token from a previous answer (Temporal refused it)") from exc
        raise TemporalUnavailable(str(exc)) from exc
    rows = (
        await session.exec(
            select(Enrollment.id, Enrollment.workflow_id, Enrollment.run_id).where(
                col(Enrollment.workflow_id).in_({f.workflow_id for f in found})
            )
        )
    ).all()
    by_run = {(workflow_id, run_id): id_ for id_, workflow_id, run_id in rows}
    latest = {workflow_id: id_ for id_, workflow_id, _ in sorted(rows)}
    items = [
        VisibleEnrollmentOut(
            **f.model_dump(), enrollment_id=by_run.get((f.workflow_id, f.first_run_id)) or latest.get(f.workflow_id)
        )
        for f in found
    ]
    return VisibilityPage(items=items, count=len(items), next_page_token=encode_page_token(next_token), query=query)


def _bad_page_token(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", "page_token"), "msg": message}])


async def _answers_without_token(client, query: str) -> bool:
    """Temporal answers the same query from its first page: then the token was the problem, not Temporal
    (which answers a forged token with an internal error, like an outage)."""
    try:
        await search(client, query, 1, None)
    except RPCError:
        return False
    return True


@router.get("/flows/{flow_id}/enrollments/count", response_model=VisibilityCounts, responses=RESPONSES)
async def count_enrollments(
    flow_id: FlowId, session: SessionDep, settings: SettingsDep, temporal: TemporalDep, version: VersionQuery = None
) -> VisibilityCounts:
    """How many of the flow's enrollments are at each step, per status, from Temporal visibility.

    `GET /enrollments?flow_id=` answers the same from the database index; the two agree once
    visibility has caught up (about a second).
    """
    await crud.flow_or_404(session, flow_id)
    _needs_step_attributes(settings)
    steps = await flow_steps(session, flow_id, version)
    await session.commit()
    client = await temporal.get()
    try:
        return await count_by_step_and_status(client, settings.workflow_id_prefix, flow_id, steps, version)
    except RPCError as exc:
        raise TemporalUnavailable(str(exc)) from exc
