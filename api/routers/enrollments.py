"""Enrollments: the database index of enrollment workflows, plus each workflow's live state."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status
from sqlalchemy import func
from sqlmodel import select
from temporalio.exceptions import TemporalError

from api import crud
from api.deps import MAX_ID, EnrollerDep, EnrollmentId, PaginationDep, SessionDep, SettingsDep, TemporalDep
from api.schemas.common import Page
from api.schemas.enrollments import EnrollmentDetail, EnrollmentOut, ExitIn, ManualEnrollIn
from nurture.contracts import EnrollmentState
from nurture.enrolling import TemporalUnavailable, active_version
from nurture.logging import get_logger
from nurture.models import Enrollment, EnrollmentStatus, FlowStatus, SubscriptionStatus
from nurture.temporal import temporal_ui_url

router = APIRouter(tags=["enrollments"])

QUERY_TIMEOUT = timedelta(seconds=5)


@router.post(
    "/flows/{flow_id}/enrollments",
    response_model=EnrollmentOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": EnrollmentOut, "description": "The contact was already enrolled in this flow"},
        409: {"description": "The flow is not active, the contact cannot receive email, or the flow suppresses it"},
    },
)
async def enroll_contact(
    flow_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: ManualEnrollIn,
    session: SessionDep,
    enroller: EnrollerDep,
    response: Response,
) -> Enrollment:
    """Enroll a contact by hand in an active flow (any trigger). Enrolling twice answers the first enrollment."""
    flow, version, contact = await crud.flow_for_enrolling(session, flow_id, body.contact_id)
    if body.contact_id is not None:
        if contact is None:
            raise HTTPException(status_code=404, detail=f"contact {body.contact_id} does not exist")
    else:
        assert body.email is not None
        contact = await crud.contact_by_email(session, body.email)
        if contact is None:
            raise HTTPException(status_code=404, detail=f"no contact has the email {body.email}")
    if flow.status != FlowStatus.active:
        raise HTTPException(status_code=409, detail=f"flow {flow_id} is {flow.status}: activate it first")
    if contact.subscription_status != SubscriptionStatus.subscribed:
        raise HTTPException(
            status_code=409, detail=f"contact {contact.id} is {contact.subscription_status} and cannot be enrolled"
        )
    if version is None:
        version = await active_version(session, flow)  # an active flow has one: this raises
    suppressed_by = await enroller.suppressed(session, flow, contact, version=version)
    if suppressed_by is not None:
        raise HTTPException(
            status_code=409, detail=f"contact {contact.id} matches the flow's suppression criteria (enrollment.suppress[{suppressed_by}])"
        )
    outcome = await enroller.enroll(session, flow, contact, version=version)
    await session.commit()
    response.status_code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
    return outcome.enrollment


@router.get("/enrollments", response_model=Page[EnrollmentOut])
async def list_enrollments(
    session: SessionDep,
    page: PaginationDep,
    flow_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    contact_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    status_: Annotated[EnrollmentStatus | None, Query(alias="status")] = None,
) -> dict:
    """Enrollments from the database index (kept current by the workflows), newest first."""
    query = select(Enrollment)
    if flow_id is not None:
        query = query.where(Enrollment.flow_id == flow_id)
    if contact_id is not None:
        query = query.where(Enrollment.contact_id == contact_id)
    if status_ is not None:
        query = query.where(Enrollment.status == status_)
    count = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    items = (await session.exec(query.order_by(Enrollment.id.desc()).offset(page.offset).limit(page.limit))).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.get("/enrollments/{enrollment_id}", response_model=EnrollmentDetail)
async def get_enrollment(
    enrollment_id: EnrollmentId, session: SessionDep, temporal: TemporalDep, settings: SettingsDep
) -> EnrollmentDetail:
    """The database row plus `workflow`, the workflow's own answer to the `state` query
    (current step, pause, what it waits for, timeline). When the workflow cannot be asked
    (worker or Temporal down) `workflow` is null and `workflow_error` says why."""
    row = EnrollmentOut.model_validate(await crud.enrollment_or_404(session, enrollment_id))
    await session.commit()  # release the database before waiting on Temporal
    state: EnrollmentState | None = None
    error: str | None = None
    try:
        client = await temporal.get()
        state = await client.get_workflow_handle(row.workflow_id).query(
            "state", result_type=EnrollmentState, rpc_timeout=QUERY_TIMEOUT
        )
    except (TemporalError, TemporalUnavailable, asyncio.TimeoutError) as exc:
        error = str(exc) or type(exc).__name__
        get_logger(enrollment_id=row.workflow_id).info("state_query_failed", error=error)
    return EnrollmentDetail(
        **row.model_dump(),
        workflow=state,
        workflow_error=error,
        temporal_ui_url=temporal_ui_url(settings, row.workflow_id),
    )


@router.post("/enrollments/{enrollment_id}/exit", response_model=EnrollmentOut, status_code=status.HTTP_202_ACCEPTED)
async def exit_enrollment(enrollment_id: EnrollmentId, body: ExitIn, session: SessionDep, enroller: EnrollerDep) -> Enrollment:
    """Tell the enrollment to exit now; its row shows `exited` once the workflow has stopped."""
    enrollment = await crud.enrollment_or_404(session, enrollment_id)
    if enrollment.status != EnrollmentStatus.active:
        raise HTTPException(status_code=409, detail=f"enrollment {enrollment_id} already {enrollment.status}")
    await enroller.exit(enrollment, body.reason, body.requested_by)
    await session.commit()
    get_logger(enrollment_id=enrollment.workflow_id).info("exit_requested", reason=body.reason, by=body.requested_by)
    return enrollment
