"""The Temporal Schedule that checks date and inactivity triggers.

One schedule per deployment (``<workflow_id_prefix>-trigger-scan``). Every
``trigger_scan_interval`` it starts the trigger scan workflow, which finds the active
flows with such triggers and enrolls the contacts due. A scan still running when the
next is due makes the schedule skip that one. Activating a flow with such a trigger
creates the schedule, or brings its interval and task queue up to date.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError

from nurture.batch_contracts import TRIGGER_SCAN_WORKFLOW, TriggerScanInput, trigger_scan_schedule_id
from nurture.enrolling import TemporalUnavailable
from nurture.logging import get_logger
from nurture.settings import Settings


def trigger_scan_schedule(settings: Settings) -> Schedule:
    every = settings.trigger_scan_interval
    return Schedule(
        action=ScheduleActionStartWorkflow(
            TRIGGER_SCAN_WORKFLOW,
            TriggerScanInput(),
            id=trigger_scan_schedule_id(settings.workflow_id_prefix),
            task_queue=settings.temporal_task_queue,
            # A scan never runs into the next one: the schedule would skip that one anyway.
            execution_timeout=max(every, timedelta(minutes=10)) * 2,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        # After an outage, one catch-up scan covers what was missed (a scan looks back a day).
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=max(every, timedelta(minutes=1))),
        state=ScheduleState(note="Enrolls contacts due for date and inactivity triggers (docs/triggers.md)."),
    )


async def ensure_trigger_scan_schedule(client: Client, settings: Settings) -> ScheduleHandle:
    """Create the schedule, or update it when its interval or task queue changed. Idempotent."""
    schedule_id = trigger_scan_schedule_id(settings.workflow_id_prefix)
    wanted = trigger_scan_schedule(settings)
    log = get_logger(component="trigger_schedule", schedule_id=schedule_id)
    try:
        try:
            handle = await client.create_schedule(schedule_id, wanted)
            log.info("trigger_scan_schedule_created", every=str(settings.trigger_scan_interval))
            return handle
        except ScheduleAlreadyRunningError:
            handle = client.get_schedule_handle(schedule_id)

        def update(current: ScheduleUpdateInput) -> ScheduleUpdate | None:
            schedule = current.description.schedule
            action = schedule.action
            same = (
                [i.every for i in schedule.spec.intervals] == [settings.trigger_scan_interval]
                and isinstance(action, ScheduleActionStartWorkflow)
                and action.task_queue == settings.temporal_task_queue
            )
            return None if same else ScheduleUpdate(schedule=wanted)

        await handle.update(update)
        return handle
    except RPCError as exc:
        raise TemporalUnavailable(str(exc)) from exc
