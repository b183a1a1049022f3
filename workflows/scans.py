"""The scan a Temporal Schedule starts: enrolls contacts due for date and inactivity triggers.

Deterministic code only. Each page of contacts is one activity; the scan keeps its
place (flow, last contact id) and continues as new on long scans, so a scan over
millions of contacts keeps a short history and resumes where it was after a crash.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from nurture.batch_contracts import (
        TRIGGER_SCAN_WORKFLOW,
        FlowScanTotals,
        ListScanFlowsInput,
        ScanFlows,
        ScanPageInput,
        ScanPageResult,
        ScanProgress,
        TriggerScanInput,
        TriggerScanResult,
        add_counts,
    )

PAGE_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), maximum_interval=timedelta(minutes=2))
PAGE_HEARTBEAT = timedelta(seconds=10)


@workflow.defn(name=TRIGGER_SCAN_WORKFLOW)
class TriggerScanWorkflow:
    @workflow.init
    def __init__(self, input: TriggerScanInput) -> None:
        self._progress: ScanProgress | None = input.carried

    @workflow.query
    def progress(self) -> ScanProgress | None:
        return self._progress

    @workflow.run
    async def run(self, input: TriggerScanInput) -> TriggerScanResult:
        # One "now" for the whole scan, across continue-as-new: every page judges the same instant.
        at = input.at or workflow.now()
        if self._progress is None:
            flows: ScanFlows = await workflow.execute_activity(
                "list_scan_flows",
                ListScanFlowsInput(flow_ids=input.flow_ids),
                result_type=ScanFlows,
                start_to_close_timeout=timedelta(minutes=1),
                retry_policy=PAGE_RETRY,
            )
            self._progress = ScanProgress(
                flow_ids=flows.flow_ids, totals=[FlowScanTotals(flow_id=flow_id) for flow_id in flows.flow_ids]
            )
        else:
            self._progress.runs += 1
        progress = self._progress

        pages = 0
        while progress.index < len(progress.flow_ids):
            if pages >= input.pages_per_run or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(input.model_copy(update={"at": at, "carried": progress}))
            page: ScanPageResult = await workflow.execute_activity(
                "scan_trigger_page",
                ScanPageInput(
                    flow_id=progress.flow_ids[progress.index],
                    at=at,
                    after_contact_id=progress.cursor,
                    limit=input.page_size,
                ),
                result_type=ScanPageResult,
                start_to_close_timeout=timedelta(minutes=30),
                # The worker heartbeats for the page while it runs (activities/heartbeat.py).
                heartbeat_timeout=PAGE_HEARTBEAT,
                retry_policy=PAGE_RETRY,
            )
            pages += 1
            totals = progress.totals[progress.index]
            totals.trigger = page.trigger
            totals.examined += page.examined
            totals.enrolled += page.enrolled
            totals.skipped = add_counts(totals.skipped, page.skipped)
            if page.done:
                progress.index += 1
                progress.cursor = 0
            else:
                progress.cursor = page.next_cursor
        enrolled = sum(t.enrolled for t in progress.totals)
        workflow.logger.info("trigger scan done: %d flows, %d enrolled", len(progress.flow_ids), enrolled)
        return TriggerScanResult(at=at, flows=progress.totals, runs=progress.runs)
