"""Step entries for the statistics, written by record_progress in the same transaction
as the enrollment row, so a retried activity never counts an entry twice."""

from __future__ import annotations

from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.contracts import RecordProgressInput
from nurture.models import Contact, Enrollment, StepVisit


def enters_step(row: Enrollment | None, input: RecordProgressInput) -> bool:
    """Whether this progress report is the enrollment entering a step (read before the row changes).

    The workflow reports on entering every step, and again for pauses, deferrals and the end;
    only a change of step is an entry. A step is never its own successor without another step
    between (a loop goes through its goto), so consecutive visits always differ.
    """
    if input.status != "active" or input.current_step is None:
        return False
    return row is None or row.current_step != input.current_step


async def add_step_visit(session: AsyncSession, enrollment: Enrollment, input: RecordProgressInput) -> None:
    session.add(enrollment)
    await session.flush()  # the enrollment's id
    assert enrollment.id is not None and input.current_step is not None
    contact = await session.get(Contact, input.contact_id)
    if contact is None:
        return  # deleted under the enrollment: its next activity fails it, and a visit could not refer to it
    session.add(
        StepVisit(
            enrollment_id=enrollment.id,
            flow_id=input.flow_id,
            flow_version=input.flow_version,
            contact_id=input.contact_id,
            step_id=input.current_step,
            lifecycle_stage=contact.lifecycle_stage,
            entered_at=input.at,
        )
    )
