"""Keeps the enrollments table (the API's index) in step with the workflow."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from nurture.contracts import RecordProgressInput
from nurture.db import Database
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, EnrollmentStatus, utcnow
from nurture.step_visits import add_step_visit, enters_step


class ProgressActivities:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> None:
        # Upsert by (workflow id, run chain): if the API died between starting the workflow and
        # writing the row, the workflow writes it. A unique-key race fails this attempt; the retry updates.
        async with self.db.session() as session:
            enrollment = await _row_of(session, input)
            if enrollment is None and await session.get(Contact, input.contact_id) is None:
                # Failed on a contact that is gone before any row was written: nothing to index
                # (and a row could not refer to it).
                return
            if enrollment is None:
                enrollment = Enrollment(
                    flow_id=input.flow_id,
                    flow_version=input.flow_version,
                    contact_id=input.contact_id,
                    sequence=await _next_sequence(session, input.flow_id, input.contact_id),
                    workflow_id=input.workflow_id,
                    run_id=input.run_id,
                    started_at=input.entered_at,
                )
            entered = enters_step(enrollment, input)  # per-step statistics (nurture/analytics.py)
            enrollment.run_id = enrollment.run_id or input.run_id
            enrollment.status = input.status
            enrollment.current_step = input.current_step
            enrollment.paused = input.paused
            enrollment.exit_reason = input.exit_reason
            if input.status != "active" and enrollment.ended_at is None:
                enrollment.ended_at = input.at
            enrollment.updated_at = utcnow()
            session.add(enrollment)
            if entered:
                await add_step_visit(session, enrollment, input)
            await session.commit()
        get_logger(flow_id=input.flow_id, enrollment_id=input.workflow_id, contact_id=input.contact_id).debug(
            "progress", status=input.status, step=input.current_step
        )


async def _row_of(session: AsyncSession, input: RecordProgressInput) -> Enrollment | None:
    """This run chain's row: by its run id, else the active row the API wrote without knowing it."""
    same_workflow = select(Enrollment).where(Enrollment.workflow_id == input.workflow_id)
    if input.run_id is None:  # recorded before run ids were passed: the workflow id's latest row
        return (await session.exec(same_workflow.order_by(col(Enrollment.sequence).desc()))).first()
    row = (await session.exec(same_workflow.where(Enrollment.run_id == input.run_id))).first()
    if row is not None:
        return row
    return (
        await session.exec(
            same_workflow.where(col(Enrollment.run_id).is_(None), Enrollment.status == EnrollmentStatus.active)
        )
    ).first()


async def _next_sequence(session: AsyncSession, flow_id: int, contact_id: int) -> int:
    latest = (
        await session.exec(
            select(func.max(Enrollment.sequence)).where(Enrollment.flow_id == flow_id, Enrollment.contact_id == contact_id)
        )
    ).one()
    return (latest or 0) + 1
