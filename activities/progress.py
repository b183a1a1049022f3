"""Keeps the enrollments table (the API's index) in step with the workflow."""

from __future__ import annotations

from sqlmodel import select
from temporalio import activity

from nurture.contracts import RecordProgressInput
from nurture.db import Database
from nurture.logging import get_logger
from nurture.models import Enrollment, utcnow


class ProgressActivities:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn(name="record_progress")
    async def record_progress(self, input: RecordProgressInput) -> None:
        # Upsert by workflow id: if the API died between starting the workflow and writing
        # the row, the workflow writes it. A unique-key race fails this attempt; the retry updates.
        async with self.db.session() as session:
            enrollment = (
                await session.exec(select(Enrollment).where(Enrollment.workflow_id == input.workflow_id))
            ).first()
            if enrollment is None:
                enrollment = Enrollment(
                    flow_id=input.flow_id,
                    flow_version=input.flow_version,
                    contact_id=input.contact_id,
                    workflow_id=input.workflow_id,
                    started_at=input.entered_at,
                )
            enrollment.status = input.status
            enrollment.current_step = input.current_step
            enrollment.paused = input.paused
            enrollment.exit_reason = input.exit_reason
            if input.status != "active" and enrollment.ended_at is None:
                enrollment.ended_at = input.at
            enrollment.updated_at = utcnow()
            session.add(enrollment)
            await session.commit()
        get_logger(flow_id=input.flow_id, enrollment_id=input.workflow_id, contact_id=input.contact_id).debug(
            "progress", status=input.status, step=input.current_step
        )
