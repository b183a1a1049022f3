"""Create a Temporal Schedule that starts one workflow every interval, or bring it up to date.

The trigger scan and the CRM reconciliation each keep one such schedule; both are created at
start and updated only when their interval or task queue changed, so calling this is idempotent.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from nurture.enrolling import TemporalUnavailable
from nurture.logging import get_logger


async def ensure_interval_schedule(
    client: Client, schedule_id: str, wanted: Schedule, every: timedelta, task_queue: str, created_event: str
) -> ScheduleHandle:
    """``wanted`` under ``schedule_id``: created, or updated when its interval or task queue differ."""
    try:
        try:
            handle = await client.create_schedule(schedule_id, wanted)
            get_logger(schedule_id=schedule_id).info(created_event, every=str(every))
            return handle
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(schedule_id)

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
            schedule = current.description.schedule
            action = schedule.action
            same = (
                [i.every for i in schedule.spec.intervals] == [every]
                and isinstance(action, ScheduleActionStartWorkflow)
                and action.task_queue == task_queue
            )
            return None if same else ScheduleUpdate(schedule=wanted)

        await handle.update(update)
        return handle
    except RPCError as exc:
        raise TemporalUnavailable(str(exc)) from exc
