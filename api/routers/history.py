"""An enrollment's history, read from its Temporal workflow history (not from the database)."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from temporalio.service import RPCError, RPCStatusCode

from api import crud
from api.deps import EnrollmentId, SessionDep, SettingsDep, TemporalDep
from api.schemas.observability import EnrollmentHistoryOut
from nurture.crm.writes import history_entries, writes_of
from nurture.enrolling import TemporalUnavailable
from nurture.history import format_entry, read_history
from nurture.temporal import temporal_ui_url

router = APIRouter(tags=["observability"])


@router.get(
    "/enrollments/{enrollment_id}/history",
    response_model=EnrollmentHistoryOut,
    responses={404: {"description": "Unknown enrollment, or its workflow history is gone"}, 503: {"description": "Temporal is unreachable"}},
)
async def enrollment_history(
    enrollment_id: EnrollmentId, session: SessionDep, temporal: TemporalDep, settings: SettingsDep
) -> EnrollmentHistoryOut:
    """The enrollment's timeline for people, across continue-as-new runs: entry, each step, waits
    with their planned and actual end, signals (events, pauses by whom and why, resumes), sends
    with message id and outcome, retries and failures with their reason, and the exit with its cause.

    It is read from the workflow history itself, so it can be trusted when the database disagrees;
    with a CRM connected, the CRM writes its steps queued are added from the write queue, each as it
    stands (written with the CRM record id, queued with the last error, or refused and why).
    """
    row = await crud.enrollment_or_404(session, enrollment_id)
    workflow_id, run_id = row.workflow_id, row.run_id
    crm_writes = await writes_of(session, workflow_id) if settings.crm_provider != "none" else []
    await session.commit()  # release the database before waiting on Temporal
    client = await temporal.get()
    try:
        history = await read_history(client, workflow_id, run_id)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(
                status_code=404,
                detail=f"the workflow {workflow_id} of enrollment {enrollment_id} has no history in Temporal "
                "(past the namespace's retention?)",
            ) from exc
        raise TemporalUnavailable(str(exc)) from exc
    # The CRM writes its steps queued, where each stands (pushed by the CRM sync, outside the workflow).
    entries = sorted([*history.entries, *history_entries(crm_writes)], key=lambda e: e.at)
    return EnrollmentHistoryOut(
        enrollment_id=enrollment_id,
        workflow_id=history.workflow_id,
        runs=history.runs,
        status=history.status,
        temporal_ui_url=temporal_ui_url(settings, workflow_id),
        entries=entries,
        lines=[format_entry(e) for e in entries],
    )
