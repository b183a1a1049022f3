"""The CRM reconciliation a Temporal Schedule starts (or POST /crm/resync): push, then pull.

Deterministic code only. First the queued writes go out (and the engagement since the last run is
queued as timeline notes); a CRM that stays down fails only this run, its rows wait for the next.
The CRM's owners not imported yet become reps (nurture/crm/owners.py).
Then the contacts modified since the cursor are read page by page (a full resync starts from the
beginning), continuing as new every ``pages_per_run`` pages so the history stays short. HubSpot's
search stops at 10,000 results: past it the run searches again from the newest change it saw.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.crm import CrmActivities
    from nurture.crm.contracts import (
        CRM_SYNC_WORKFLOW,
        CrmSyncInput,
        CrmSyncResult,
        OwnerImportInput,
        PushWritesInput,
        PushWritesResult,
        SyncFinishInput,
        SyncPageInput,
        SyncPageResult,
        SyncStart,
        SyncStartInput,
    )

# A CRM that is down is asked again a few times (after its Retry-After when it gives one); then the
# run records the error and the next scheduled run carries on.
def crm_retry(attempts: int) -> RetryPolicy:
    return RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                       maximum_interval=timedelta(minutes=2), maximum_attempts=attempts)
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
HEARTBEAT = timedelta(seconds=10)


@workflow.defn(name=CRM_SYNC_WORKFLOW)
class CrmSyncWorkflow:
    @workflow.init
    def __init__(self, input: CrmSyncInput) -> None:
        self._progress = input

    @workflow.query
    def progress(self) -> CrmSyncInput:
        return self._progress

    @workflow.run
    async def run(self, input: CrmSyncInput) -> CrmSyncResult:
        progress = self._progress
        pushed = 0
        if not input.started:
            error = None
            try:
                await workflow.execute_activity_method(
                    CrmActivities.queue_crm_engagement, PushWritesInput(),
                    start_to_close_timeout=timedelta(minutes=2), retry_policy=DB_RETRY,
                )
                done: PushWritesResult = await workflow.execute_activity_method(
                    CrmActivities.push_crm_writes, PushWritesInput(),
                    start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=HEARTBEAT,
                    retry_policy=crm_retry(input.crm_attempts),
                )
                pushed = done.pushed
            except ActivityError as err:
                error = f"push: {_cause(err)}"
            # No patch guard: this workflow is new on this branch (no recorded runs to keep replaying).
            try:
                await workflow.execute_activity_method(
                    CrmActivities.import_crm_owners, OwnerImportInput(),
                    start_to_close_timeout=timedelta(minutes=2), retry_policy=crm_retry(input.crm_attempts),
                )
            except ActivityError as err:
                error = "; ".join(filter(None, [error, f"owners: {_cause(err)}"]))
            start: SyncStart = await workflow.execute_activity_method(
                CrmActivities.start_crm_sync, SyncStartInput(full=input.full),
                start_to_close_timeout=timedelta(minutes=1), retry_policy=DB_RETRY,
            )
            progress = input.model_copy(update={"since": start.since, "deal_since": start.deal_since, "started": True,
                                                "error": error, "pushed": pushed, "started_at": start.started_at})
            self._progress = progress

        pages = 0
        while progress.phase in ("contacts", "deals"):
            if pages >= progress.pages_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(progress)
            contacts = progress.phase == "contacts"
            since = progress.since if contacts else progress.deal_since
            assert since is not None
            try:
                page: SyncPageResult = await workflow.execute_activity_method(
                    CrmActivities.sync_crm_page if contacts else CrmActivities.sync_crm_deals,
                    SyncPageInput(since=since, after=progress.after),
                    start_to_close_timeout=timedelta(minutes=10), heartbeat_timeout=HEARTBEAT,
                    retry_policy=crm_retry(input.crm_attempts),
                )
            except ActivityError as err:
                progress = progress.model_copy(update={
                    "error": "; ".join(filter(None, [progress.error, f"sync {progress.phase}: {_cause(err)}"])),
                    "phase": "done",
                })
                break
            pages += 1
            newest_name = "newest" if contacts else "deal_newest"
            newest = getattr(progress, newest_name)
            if page.newest is not None and (newest is None or page.newest > newest):
                newest = page.newest
            progress = progress.model_copy(
                update={"after": page.after, newest_name: newest, "read": progress.read + page.read,
                        "changed": progress.changed + page.changed}
            )
            if page.after is None:
                if contacts and page.capped and newest is not None and newest > since:
                    # The search's cap, not the end: search again from the newest change seen.
                    progress = progress.model_copy(update={"since": newest})
                else:
                    progress = progress.model_copy(update={"phase": "deals" if contacts else "done", "after": None})
            self._progress = progress

        # Older runs' histories answered None here; the rate is then left unreported.
        finished = await workflow.execute_activity_method(
            CrmActivities.finish_crm_sync,
            SyncFinishInput(cursor=progress.newest, deal_cursor=progress.deal_newest, read=progress.read,
                            changed=progress.changed, full=progress.full, error=progress.error,
                            started_at=progress.started_at),
            start_to_close_timeout=timedelta(minutes=1), retry_policy=DB_RETRY,
        )
        return CrmSyncResult(pushed=progress.pushed, read=progress.read, changed=progress.changed,
                             cursor=progress.newest, error=progress.error,
                             seconds=finished.seconds if finished else None,
                             contacts_per_second=finished.contacts_per_second if finished else None)


def _cause(err: ActivityError) -> str:
    return (err.cause.message if err.cause is not None else str(err))[:500]
