"""Keeps the enrollments row (the API's index) in step with the workflow that owns it.

The starter creates the row; from then on only the workflow writes it, through the reports
it numbers (``ProgressReport.seq``). A report is applied once: a retried activity, or a late
one overtaken by a newer report, changes nothing. Reports travel inside the send activity a
step already runs, or in the ``record_progress`` local activity before a wait and at the end.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio import activity

from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from nurture.contracts import ProgressReport
from nurture.db import Database
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, StepVisit, utcnow

ENROLLMENTS = Enrollment.__table__
STEP_VISITS = StepVisit.__table__
CONTACTS = Contact.__table__
_CONTACT_EXISTS = sa.select(CONTACTS.c.id).where(CONTACTS.c.id == sa.bindparam("contact"))

# With the retry policies' backoff (1-2 s doubling), about two minutes for the starter to commit.
ROW_WAIT_ATTEMPTS = 8


async def apply_progress(session: AsyncSession, report: ProgressReport, *, contact_exists: bool | None = None) -> bool:
    """Write the report into its row in the caller's transaction; False when the row was ahead.

    The row takes the newest report only (by ``seq``); the steps a report entered are added
    whatever its number, once each, so a late report overtaken by a newer one loses none.
    ``contact_exists``: the caller has just read the contact (the send has), so it is not read again.
    """
    if report.entered and session.bind.dialect.name == "postgresql":
        # The UPDATE, the contact check and the visits' INSERT in one statement (one round trip);
        # a report the row did not take changes nothing there and goes the general way below.
        if await _take_report_and_visits(session, report, contact_exists):
            return True
    applied = await _take_report(session, report)
    if report.entered and contact_exists is None:
        contact_exists = (await session.exec(_CONTACT_EXISTS, params={"contact": report.contact_id})).first() is not None
    if report.entered and not contact_exists:
        report = report.model_copy(update={"entered": []})  # deleted under the enrollment: no visit can refer to it
    if report.entered:  # per-step statistics (nurture/analytics.py), each entry once
        # Each entry rides in exactly one report: one the row took holds only new entries, one it
        # did not (a retried activity, a late report) may hold some already written.
        seen = set() if applied else await _entries_written(session, report)
        visits = [
            {
                "enrollment_id": report.enrollment_id,
                "flow_id": report.flow_id,
                "flow_version": report.flow_version,
                "contact_id": report.contact_id,
                "step_id": entry.step_id,
                "lifecycle_stage": entry.lifecycle_stage,
                "entered_at": entry.at,
            }
            for entry in report.entered
            if (entry.step_id, entry.at) not in seen
        ]
        if visits:  # a plain INSERT: no object to track, nothing read back
            await session.exec(sa.insert(STEP_VISITS), params=visits)
    return applied


def _report_update(ends: bool) -> sa.Update:
    values = {
        "progress_seq": sa.bindparam("seq"),
        "run_id": sa.func.coalesce(ENROLLMENTS.c.run_id, sa.bindparam("run_id")),
        "status": sa.bindparam("status"),
        "current_step": sa.bindparam("current_step"),
        "paused": sa.bindparam("paused"),
        "exit_reason": sa.bindparam("exit_reason"),
        "updated_at": sa.bindparam("now", type_=ENROLLMENTS.c.updated_at.type),
    }
    if ends:
        values["ended_at"] = sa.func.coalesce(ENROLLMENTS.c.ended_at, sa.bindparam("at", type_=ENROLLMENTS.c.ended_at.type))
    return (
        sa.update(ENROLLMENTS)
        .where(ENROLLMENTS.c.id == sa.bindparam("row"), ENROLLMENTS.c.progress_seq < sa.bindparam("seq"))
        .values(values)
    )


# Built once: a report is written at every rest and send of every enrollment.
_TAKE_REPORT = {ends: _report_update(ends) for ends in (False, True)}
_ROW_LOCKED = sa.select(ENROLLMENTS.c.id).where(ENROLLMENTS.c.id == sa.bindparam("row")).with_for_update()


def _report_params(report: ProgressReport) -> dict:
    return {
        "row": report.enrollment_id, "seq": report.seq, "run_id": report.run_id, "status": report.status,
        "current_step": report.current_step, "paused": report.paused, "exit_reason": report.exit_reason,
        "now": utcnow(), "at": report.at,
    }


async def _take_report(session: AsyncSession, report: ProgressReport) -> bool:
    """One conditional UPDATE, which locks the row until the transaction ends as a SELECT FOR UPDATE
    would: the row takes the report unless it already has this one or a newer one."""
    taken = await session.exec(_TAKE_REPORT[report.status != "active"], params=_report_params(report))
    if taken.rowcount:
        return True
    if (await session.exec(_ROW_LOCKED, params={"row": report.enrollment_id})).first() is None:
        raise row_missing(report)
    return False


def _report_and_visits(ends: bool, check_contact: bool) -> sa.Select:
    """PostgreSQL: WITH taken AS (UPDATE ... RETURNING id), visits AS (INSERT INTO step_visits
    SELECT ... FROM unnest(the entries) WHERE EXISTS (SELECT FROM taken) [AND the contact exists])
    SELECT count(*) FROM taken."""
    taken = _report_update(ends).returning(ENROLLMENTS.c.id).cte("taken")
    entries = sa.func.unnest(
        sa.bindparam("steps", type_=ARRAY(sa.String)),
        sa.bindparam("stages", type_=ARRAY(sa.String)),
        sa.bindparam("ats", type_=ARRAY(STEP_VISITS.c.entered_at.type)),
    ).table_valued("step_id", "lifecycle_stage", "entered_at").render_derived(name="entry")
    conditions = [sa.exists(sa.select(taken.c.id))]
    if check_contact:
        conditions.append(sa.exists(sa.select(CONTACTS.c.id).where(CONTACTS.c.id == sa.bindparam("contact"))))
    visits = sa.insert(STEP_VISITS).from_select(
        ["enrollment_id", "flow_id", "flow_version", "contact_id", "step_id", "lifecycle_stage", "entered_at"],
        sa.select(
            *(sa.bindparam(name, type_=sa.Integer) for name in ("row", "flow", "version", "contact")),
            entries.c.step_id, entries.c.lifecycle_stage, entries.c.entered_at,
        ).where(*conditions),
    ).cte("visits")
    return sa.select(sa.func.count()).select_from(taken).add_cte(visits)


_TAKE_REPORT_AND_VISITS = {
    (ends, check): _report_and_visits(ends, check) for ends in (False, True) for check in (False, True)
}


async def _take_report_and_visits(session: AsyncSession, report: ProgressReport, contact_exists: bool | None) -> bool:
    """True when the row took the report and the visits are written (a contact deleted under the
    enrollment gets none); False when the row did not take it, and nothing was written."""
    if contact_exists is False:
        return False  # the general path drops the entries
    params = _report_params(report) | {
        "flow": report.flow_id, "version": report.flow_version, "contact": report.contact_id,
        "steps": [e.step_id for e in report.entered],
        "stages": [e.lifecycle_stage for e in report.entered],
        "ats": [e.at for e in report.entered],
    }
    statement = _TAKE_REPORT_AND_VISITS[report.status != "active", contact_exists is None]
    return bool((await session.execute(statement, params)).scalar_one())


async def _entries_written(session: AsyncSession, report: ProgressReport) -> set[tuple[str, datetime]]:
    return set(
        (
            await session.exec(
                select(StepVisit.step_id, StepVisit.entered_at).where(
                    StepVisit.enrollment_id == report.enrollment_id,
                    col(StepVisit.entered_at) >= min(e.at for e in report.entered),
                )
            )
        ).all()
    )


def row_missing(report: ProgressReport) -> ApplicationError:
    """The starter writes the row in the transaction that starts the workflow, so a first report can
    arrive before that commits: retried. A row that never comes (the starter crashed or rolled back
    after the start, or the row was deleted) means the enrollment is not on record: the workflow
    leaves without sending (EnrollmentNotRecorded), rather than run unseen."""
    attempt = activity.info().attempt
    if attempt >= ROW_WAIT_ATTEMPTS:
        return ApplicationError(
            f"enrollment {report.enrollment_id} is not on record", type="EnrollmentNotRecorded", non_retryable=True
        )
    return ApplicationError(
        f"enrollment {report.enrollment_id} is not committed yet (attempt {attempt})",
        type="EnrollmentRowPending",
        category=ApplicationErrorCategory.BENIGN,
    )


class ProgressActivities:
    def __init__(self, db: Database):
        self.db = db

    @activity.defn(name="record_progress")
    async def record_progress(self, report: ProgressReport) -> ProgressReport:
        """Answers the report: it lands in the history's marker, where the history reader finds the steps."""
        async with self.db.session() as session:
            applied = await apply_progress(session, report)
            await session.commit()
        get_logger(flow_id=report.flow_id, enrollment_id=report.workflow_id, contact_id=report.contact_id).debug(
            "progress", status=report.status, step=report.current_step, seq=report.seq, applied=applied
        )
        return report
