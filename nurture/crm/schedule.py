"""The Temporal Schedule of a CRM connector's reconciliation, and a full resync on demand.

One schedule per connector (``<workflow_id_prefix>-crm-sync-<provider>``) starts the CRM sync
workflow every ``crm_sync_interval``; a run still going when the next is due makes the schedule
skip that one. The worker creates it (or brings its interval and task queue up to date) at start.
"""

from __future__ import annotations

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
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from nurture.crm.contracts import CRM_SYNC_WORKFLOW, CrmSyncInput, crm_resync_workflow_id, crm_sync_schedule_id
from nurture.enrolling import TemporalUnavailable
from nurture.interval_schedules import ensure_interval_schedule
from nurture.settings import Settings


def crm_sync_schedule(settings: Settings) -> Schedule:
    every = settings.crm_sync_interval
    return Schedule(
        action=ScheduleActionStartWorkflow(
            CRM_SYNC_WORKFLOW,
            CrmSyncInput(),
            id=crm_sync_schedule_id(settings.workflow_id_prefix, settings.crm_provider),
            task_queue=settings.temporal_task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP, catchup_window=every),
        state=ScheduleState(note=f"Reconciles contacts with {settings.crm_provider} (docs/crm.md)."),
    )


async def ensure_crm_sync_schedule(client: Client, settings: Settings) -> ScheduleHandle | None:
    """Create the schedule, or update it when its interval or task queue changed; None without a CRM."""
    if settings.crm_provider == "none":
        return None
    return await ensure_interval_schedule(
        client, crm_sync_schedule_id(settings.workflow_id_prefix, settings.crm_provider), crm_sync_schedule(settings),
        settings.crm_sync_interval, settings.temporal_task_queue, "crm_sync_schedule_created",
    )


async def start_resync(client: Client, settings: Settings) -> WorkflowHandle:
    """A full resync: every CRM contact read again. One at a time: asking again while one runs finds it."""
    try:
        return await client.start_workflow(
            CRM_SYNC_WORKFLOW,
            CrmSyncInput(full=True),
            id=crm_resync_workflow_id(settings.workflow_id_prefix, settings.crm_provider),
            task_queue=settings.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except RPCError as exc:
        raise TemporalUnavailable(str(exc)) from exc
