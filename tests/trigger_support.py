"""Helpers for the trigger tests: run the scan and bulk workflows on the test server and clean up after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from sqlmodel import select
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from nurture.batch_contracts import (
    BULK_ENROLLMENT_WORKFLOW,
    TRIGGER_SCAN_WORKFLOW,
    BulkEnrollmentInput,
    BulkProgress,
    TriggerScanInput,
    TriggerScanResult,
    bulk_workflow_id,
)
from nurture.contracts import EnrollmentInput
from nurture.db import Database
from nurture.models import Contact, Enrollment
from nurture.settings import Settings

TEMPLATES = {
    "nudge": ("We miss you, {{ contact.name }}", "<p>Come back.</p>"),
    "renewal-soon": ("Your renewal is coming up, {{ contact.name }}", "<p>Renew now.</p>"),
    "happy-birthday": ("Happy birthday, {{ contact.name }}!", "<p>A gift for you.</p>"),
    "hello": ("Hello {{ contact.name }}", "<p>Hello.</p>"),
}


def one_email_flow(trigger: dict[str, Any], template: str = "hello", wait: str | None = None, **extra: Any) -> dict[str, Any]:
    """A flow that sends one email (and then waits, when asked, so the enrollment stays active)."""
    steps: list[dict[str, Any]] = [{"id": "send", "type": "send_email", "template": template}]
    if wait:
        steps.append({"id": "linger", "type": "delay", "duration": wait})
    return {"name": f"{trigger['type']} flow", "trigger": trigger, "steps": steps, **extra}


class Batches:
    """Starts scan and bulk workflows on the worker's task queue; whatever still runs is terminated at the end.

    Results are awaited in real time, without time skipping: these workflows start enrollment
    workflows from their activities, and the test server, skipping time while one of those
    has its first workflow task in flight, can time that task (and the workflow) out. The
    batch workflows wait on no long timers, so nothing needs skipping.
    """

    def __init__(self, client: Client, settings: Settings):
        self.client = client
        self.settings = settings
        self.handles: list[WorkflowHandle] = []

    async def scan(self, flow_ids: list[int] | None, at: datetime, **options: Any) -> TriggerScanResult:
        handle = await self.client.start_workflow(
            TRIGGER_SCAN_WORKFLOW,
            TriggerScanInput(flow_ids=flow_ids, at=at, **options),
            id=f"{self.settings.workflow_id_prefix}-scan-{uuid.uuid4().hex[:8]}",
            task_queue=self.settings.temporal_task_queue,
        )
        self.handles.append(handle)
        return await self.result(handle.id, TriggerScanResult)

    async def start_bulk(self, flow_id: int, **options: Any) -> WorkflowHandle:
        bulk_id = uuid.uuid4().hex
        handle = await self.client.start_workflow(
            BULK_ENROLLMENT_WORKFLOW,
            BulkEnrollmentInput(bulk_id=bulk_id, flow_id=flow_id, **options),
            id=bulk_workflow_id(self.settings.workflow_id_prefix, bulk_id),
            task_queue=self.settings.temporal_task_queue,
            result_type=BulkProgress,
        )
        self.handles.append(handle)
        return handle

    async def result(self, workflow_id: str, result_type: type = BulkProgress):
        """The workflow's result, waited for in real time (a handle from get_workflow_handle never skips)."""
        plain = self.client.get_workflow_handle(workflow_id, result_type=result_type)
        return await asyncio.wait_for(plain.result(), timeout=60)

    def track(self, workflow_id: str) -> WorkflowHandle:
        handle = self.client.get_workflow_handle(workflow_id, result_type=BulkProgress)
        self.handles.append(handle)
        return handle

    async def close(self) -> None:
        for handle in self.handles:
            try:
                await handle.terminate("test finished")
            except RPCError:
                pass  # completed already


@pytest.fixture
async def batches(client, settings, worker) -> AsyncIterator[Batches]:
    running = Batches(client, settings)
    yield running
    await running.close()  # before the worker stops


async def enrollments_of(db: Database, flow_id: int) -> list[Enrollment]:
    async with db.session() as s:
        rows = await s.exec(select(Enrollment).where(Enrollment.flow_id == flow_id).order_by(Enrollment.contact_id, Enrollment.sequence))
        return list(rows.all())


async def enrolled_contacts(db: Database, flow_id: int) -> list[int]:
    return sorted({e.contact_id for e in await enrollments_of(db, flow_id)})


async def set_contact(db: Database, contact_id: int, **fields: Any) -> None:
    async with db.session() as s:
        contact = await s.get(Contact, contact_id)
        assert contact is not None
        for name, value in fields.items():
            setattr(contact, name, value)
        s.add(contact)
        await s.commit()


async def started_with(client: Client, workflow_id: str) -> EnrollmentInput:
    """The input the enrollment workflow was started with, read from its history."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    [value] = await client.data_converter.decode(started.input.payloads, [EnrollmentInput])
    return value


async def run_of(client: Client, workflow_id: str) -> str | None:
    """The run id of the workflow (none of these continue as new), None when there is none."""
    try:
        return (await client.get_workflow_handle(workflow_id).describe()).run_id
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
