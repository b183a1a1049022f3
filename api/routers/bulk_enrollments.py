"""Bulk enrollment: everyone matching a segment now, as one durable workflow per request."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.exceptions import RequestValidationError
from temporalio.client import WorkflowExecutionStatus
from temporalio.exceptions import TemporalError
from temporalio.service import RPCError, RPCStatusCode

from api import crud
from api.deps import MAX_ID, ClientDep, SessionDep, SettingsDep
from api.errors import path_to_loc
from api.schemas.triggers import BulkEnrollIn, BulkEnrollmentOut, BulkStopIn
from nurture.batch_contracts import (
    BULK_ENROLLMENT_WORKFLOW,
    BulkEnrollmentInput,
    BulkProgress,
    BulkStopSignal,
    bulk_workflow_id,
)
from nurture.enrolling import TemporalUnavailable
from nurture.flow.trigger_checks import contact_condition_problems
from nurture.logging import get_logger
from nurture.models import FlowStatus, utcnow
from nurture.settings import Settings

router = APIRouter(tags=["enrollments"])

BulkId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="The id POST /flows/{id}/bulk-enrollments answered.")]
QUERY_TIMEOUT = timedelta(seconds=5)


def _out(settings: Settings, progress: BulkProgress, status_: str | None = None) -> BulkEnrollmentOut:
    return BulkEnrollmentOut(
        id=progress.bulk_id,
        workflow_id=bulk_workflow_id(settings.workflow_id_prefix, progress.bulk_id),
        **progress.model_dump(exclude={"bulk_id", "cursor", "status"}),
        status=status_ or progress.status,
    )


@router.post(
    "/flows/{flow_id}/bulk-enrollments",
    response_model=BulkEnrollmentOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={409: {"description": "The flow is not active"}},
)
async def start_bulk_enrollment(
    flow_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    body: BulkEnrollIn,
    session: SessionDep,
    client: ClientDep,
    settings: SettingsDep,
) -> BulkEnrollmentOut:
    """Enroll every contact matching `segment` (everyone when omitted), at most `rate_per_second` a second.

    Runs as a durable workflow: it survives restarts, and its progress is at
    GET /bulk-enrollments/{id} while it runs. The flow's suppression and re-enrollment
    rules apply; unsubscribed contacts are skipped.
    """
    if body.segment is not None:
        problems = contact_condition_problems(body.segment, "segment", allow_events=True)
        if problems:
            raise RequestValidationError(
                [{"type": "value_error", "loc": ("body", *path_to_loc(path)), "msg": message} for path, message in problems]
            )
    flow = await crud.flow_or_404(session, flow_id)
    if flow.status != FlowStatus.active:
        raise HTTPException(status_code=409, detail=f"flow {flow_id} is {flow.status}: activate it first")
    await session.commit()  # nothing to write: release the database before calling Temporal

    bulk_id = uuid.uuid4().hex
    workflow_id = bulk_workflow_id(settings.workflow_id_prefix, bulk_id)
    try:
        await client.start_workflow(
            BULK_ENROLLMENT_WORKFLOW,
            BulkEnrollmentInput(
                bulk_id=bulk_id,
                flow_id=flow_id,
                segment=body.segment,
                rate_per_second=body.rate_per_second,
                requested_by=body.requested_by,
                heartbeat_timeout=settings.activity_heartbeat_timeout,
            ),
            id=workflow_id,
            task_queue=settings.temporal_task_queue,
        )
    except RPCError as exc:
        raise TemporalUnavailable(str(exc)) from exc
    get_logger(flow_id=flow_id, bulk_id=bulk_id).info(
        "bulk_enrollment_started", rate_per_second=body.rate_per_second, by=body.requested_by
    )
    now = utcnow()
    return _out(
        settings,
        BulkProgress(
            bulk_id=bulk_id,
            flow_id=flow_id,
            rate_per_second=body.rate_per_second,
            requested_by=body.requested_by,
            started_at=now,
            updated_at=now,
        ),
    )


@router.get("/bulk-enrollments/{bulk_id}", response_model=BulkEnrollmentOut)
async def get_bulk_enrollment(bulk_id: BulkId, client: ClientDep, settings: SettingsDep) -> BulkEnrollmentOut:
    """Progress so far (while it runs) or the final counts."""
    handle = client.get_workflow_handle(bulk_workflow_id(settings.workflow_id_prefix, bulk_id), result_type=BulkProgress)
    try:
        described = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
        if described.status == WorkflowExecutionStatus.COMPLETED:
            return _out(settings, await handle.result(rpc_timeout=QUERY_TIMEOUT))
        progress = await handle.query("progress", result_type=BulkProgress, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status_code=404, detail=f"bulk enrollment {bulk_id} does not exist") from exc
        raise TemporalUnavailable(str(exc)) from exc
    except (TemporalError, asyncio.TimeoutError) as exc:
        raise TemporalUnavailable(f"the bulk enrollment cannot be asked: {exc or type(exc).__name__}") from exc
    running = described.status == WorkflowExecutionStatus.RUNNING
    return _out(settings, progress, None if running else described.status.name.lower())  # type: ignore[union-attr]


@router.post("/bulk-enrollments/{bulk_id}/stop", response_model=BulkEnrollmentOut, status_code=status.HTTP_202_ACCEPTED)
async def stop_bulk_enrollment(bulk_id: BulkId, body: BulkStopIn, client: ClientDep, settings: SettingsDep) -> BulkEnrollmentOut:
    """Stop after the page in progress; contacts enrolled so far stay enrolled."""
    handle = client.get_workflow_handle(bulk_workflow_id(settings.workflow_id_prefix, bulk_id))
    try:
        described = await handle.describe(rpc_timeout=QUERY_TIMEOUT)
        if described.status != WorkflowExecutionStatus.RUNNING:
            raise HTTPException(status_code=409, detail=f"bulk enrollment {bulk_id} already ended")
        await handle.signal("stop", BulkStopSignal(requested_by=body.requested_by, reason=body.reason))
        progress = await handle.query("progress", result_type=BulkProgress, rpc_timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status_code=404, detail=f"bulk enrollment {bulk_id} does not exist") from exc
        raise TemporalUnavailable(str(exc)) from exc
    get_logger(flow_id=progress.flow_id, bulk_id=bulk_id).info("bulk_enrollment_stop_requested", by=body.requested_by)
    return _out(settings, progress)
