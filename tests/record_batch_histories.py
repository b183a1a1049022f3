"""Record histories of the batch workflows for the replay test: ``python -m tests.record_batch_histories``.

A trigger scan over several pages and a rate-limited bulk enrollment that is stopped
part-way. Re-record only on purpose (see tests/record_histories.py).
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.email.providers import OutboxProvider
from nurture.batch_contracts import (
    BULK_ENROLLMENT_WORKFLOW,
    TRIGGER_SCAN_WORKFLOW,
    BulkEnrollmentInput,
    BulkProgress,
    BulkStopSignal,
    TriggerScanInput,
    TriggerScanResult,
)
from nurture.db import Database
from nurture.settings import Settings
from tests.conftest import _binary, eventually
from tests.factories import add_active_flow, add_contact, add_templates
from tests.trigger_support import TEMPLATES, one_email_flow
from worker.main import build_worker

HISTORIES = Path(__file__).parent / "histories"


async def main() -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    client = env.client
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/record.db")
        await db.create_all()
        settings = Settings(
            _env_file=None, data_dir=Path(tmp), temporal_search_attributes=False, temporal_task_queue=f"record-{uuid.uuid4()}",
            tracking_secret=uuid.uuid4().hex * 2, email_webhook_secret=uuid.uuid4().hex * 2, webhook_secret=uuid.uuid4().hex * 2,
        )
        await add_templates(db, TEMPLATES)
        now = await env.get_current_time()
        idle = await add_active_flow(db, one_email_flow({"type": "inactivity", "days": 30}, template="nudge"))
        manual = await add_active_flow(db, one_email_flow({"type": "manual"}))
        for number in range(6):
            await add_contact(db, f"idle{number}@example.com", last_activity_at=now - timedelta(days=40), tags=["webinar"])
        async with build_worker(client, db, OutboxProvider(settings.outbox_dir), settings):
            scan = await client.start_workflow(
                TRIGGER_SCAN_WORKFLOW,
                TriggerScanInput(flow_ids=[idle.id], at=now, page_size=1),
                id=f"record-scan-{uuid.uuid4().hex[:8]}",
                task_queue=settings.temporal_task_queue,
            )
            await client.get_workflow_handle(scan.id, result_type=TriggerScanResult).result()
            (HISTORIES / "trigger_scan_six_pages.json").write_text((await scan.fetch_history()).to_json())

            bulk = await client.start_workflow(
                BULK_ENROLLMENT_WORKFLOW,
                BulkEnrollmentInput(bulk_id=uuid.uuid4().hex, flow_id=manual.id, segment={"tag": "webinar"}, rate_per_second=2),
                id=f"record-bulk-{uuid.uuid4().hex[:8]}",
                task_queue=settings.temporal_task_queue,
            )

            async def enrolled_some() -> bool:
                return (await bulk.query("progress", result_type=BulkProgress)).enrolled >= 4

            await eventually(enrolled_some)
            await bulk.signal("stop", BulkStopSignal(requested_by="recorder", reason="enough"))
            await client.get_workflow_handle(bulk.id, result_type=BulkProgress).result()
            (HISTORIES / "bulk_enrollment_stopped.json").write_text((await bulk.fetch_history()).to_json())
        await db.dispose()
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
