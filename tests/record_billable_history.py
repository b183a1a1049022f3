"""Record the history tests/test_billable_actions.py counts: ``python -m tests.record_billable_history``.

Runs tests/billable_workflow.py once on a dev server (updates and search attributes need one)
and saves its first run's history. Re-record only on purpose: the test's numbers are counted
by hand from this file.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from temporalio.client import Client, WorkflowHistory
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.billable_workflow import BILLABLE_WORKFLOW, STEP, BillableKindsWorkflow, KindsInput, echo, flaky
from tests.conftest import dev_server_path
from workflows.enrollment import SEARCH_ATTRIBUTES

SAVED = Path(__file__).parent / "histories" / "billable" / "every_kind.json"


async def run_billable(client: Client) -> tuple[WorkflowHistory, WorkflowHistory]:
    """Run the workflow to its end; answer the histories of its first and second run."""
    queue = f"billable-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[BillableKindsWorkflow], activities=[echo, flaky]):
        handle = await client.start_workflow(
            BILLABLE_WORKFLOW, KindsInput(), id=queue, task_queue=queue,
            # Given at start: free.
            search_attributes=TypedSearchAttributes([SearchAttributePair(STEP, "started")]),
        )
        await handle.execute_update("bump")
        await handle.signal("go")
        await handle.result()  # follows the continue-as-new to the second run's end
        first_run = client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        first = await first_run.fetch_history()
        second = await client.get_workflow_handle(handle.id).fetch_history()
    return first, second


async def main() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=dev_server_path(), data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
    )
    try:
        first, _ = await run_billable(env.client)
    finally:
        await env.shutdown()
    SAVED.parent.mkdir(parents=True, exist_ok=True)
    SAVED.write_text(first.to_json())
    print(f"written to {SAVED}")


if __name__ == "__main__":
    asyncio.run(main())
