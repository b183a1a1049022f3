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
    ScheduleHandle,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)

from nurture.batch_contracts import TRIGGER_SCAN_WORKFLOW, TriggerScanInput, trigger_scan_schedule_id
from nurture.interval_schedules import ensure_interval_schedule
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
    return await ensure_interval_schedule(
        client, trigger_scan_schedule_id(settings.workflow_id_prefix), trigger_scan_schedule(settings),
        settings.trigger_scan_interval, settings.temporal_task_queue, "trigger_scan_schedule_created",
    )
