"""Bulk enrollment: everyone matching a segment now, enrolled at a bounded rate.

Deterministic code only. One workflow per request; each page is an activity that
enrolls at most one second's worth of contacts, then the workflow sleeps so the
rate holds. Progress is readable at any time (``progress`` query); a ``stop``
signal ends it between pages; long runs continue as new carrying the progress.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from nurture.batch_contracts import (
        BULK_ENROLLMENT_WORKFLOW,
        BulkEnrollmentInput,
        BulkPageInput,
        BulkPageResult,
        BulkProgress,
        BulkStopSignal,
        add_counts,
    )

PAGE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2))
# The worker heartbeats for every running page (activities/heartbeat.py): a page whose worker
# died moves to another worker after this long.
PAGE_HEARTBEAT = timedelta(seconds=10)
MAX_BATCH = 100
# Since "bulk-pages-of-a-second": a page holds up to a second's worth at the API's highest rate,
# and the pause after it only makes up what the page itself did not take.
MAX_BATCH_SINCE_PACING = 1000


@workflow.defn(name=BULK_ENROLLMENT_WORKFLOW)
class BulkEnrollmentWorkflow:
    @workflow.init
    def __init__(self, input: BulkEnrollmentInput) -> None:
        now = workflow.now()
        self._progress = input.carried or BulkProgress(
            bulk_id=input.bulk_id,
            flow_id=input.flow_id,
            rate_per_second=input.rate_per_second,
            requested_by=input.requested_by,
            started_at=now,
            updated_at=now,
        )
        self._stop: BulkStopSignal | None = None

    @workflow.query
    def progress(self) -> BulkProgress:
        return self._progress

    @workflow.signal
    def stop(self, request: BulkStopSignal) -> None:
        if self._stop is None:
            self._stop = request

    @workflow.run
    async def run(self, input: BulkEnrollmentInput) -> BulkProgress:
        progress = self._progress
        if input.carried is not None:
            progress.runs += 1
        # A page enrolls at most one second's worth, so the rate holds without bursts.
        # The dev server fires a timer under a second only after about a second: pages of 100 with
        # a 0.1 s pause ran near 100 a second whatever the rate asked.
        paced_by_elapsed = workflow.patched("bulk-pages-of-a-second")
        largest = MAX_BATCH_SINCE_PACING if paced_by_elapsed else MAX_BATCH
        batch = max(1, min(largest, math.ceil(input.rate_per_second)))
        pages = 0
        while True:
            if self._stop is not None:
                progress.status = "stopped"
                progress.detail = f"stopped by {self._stop.requested_by}" + (f": {self._stop.reason}" if self._stop.reason else "")
                break
            if pages >= input.pages_per_run or workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(input.model_copy(update={"carried": progress}))
            page_began = workflow.now()
            page: BulkPageResult = await workflow.execute_activity(
                "bulk_enroll_page",
                BulkPageInput(
                    bulk_id=input.bulk_id,
                    flow_id=input.flow_id,
                    segment=input.segment,
                    after_contact_id=progress.cursor,
                    max_enrollments=batch,
                    scan_limit=input.scan_limit,
                    at=workflow.now(),
                    bulk_started_at=progress.started_at,
                ),
                result_type=BulkPageResult,
                start_to_close_timeout=timedelta(minutes=10),
                heartbeat_timeout=input.heartbeat_timeout or PAGE_HEARTBEAT,
                retry_policy=PAGE_RETRY,
            )
            pages += 1
            progress.examined += page.examined
            progress.matched += page.matched
            progress.enrolled += page.enrolled
            progress.skipped = add_counts(progress.skipped, page.skipped)
            progress.cursor = page.next_cursor
            progress.updated_at = workflow.now()
            if page.flow_inactive:
                progress.status = "stopped"
                progress.detail = "the flow is no longer active"
                break
            if page.done:
                progress.status = "completed"
                break
            owed = page.enrolled / input.rate_per_second
            if paced_by_elapsed:
                owed -= (workflow.now() - page_began).total_seconds()
            if page.enrolled and (owed > 0.05 or not paced_by_elapsed):
                try:
                    await workflow.wait_condition(
                        lambda: self._stop is not None,
                        timeout=timedelta(seconds=owed),
                        timeout_summary="rate limit",
                    )
                except asyncio.TimeoutError:
                    pass
        progress.finished_at = progress.updated_at = workflow.now()
        workflow.logger.info("bulk enrollment %s %s: %d enrolled", input.bulk_id, progress.status, progress.enrolled)
        return progress
