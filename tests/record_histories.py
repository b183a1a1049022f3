"""Record enrollment histories for the replay test: ``python -m tests.record_histories``.

One history per feature path of the interpreter (FEATURE_PATHS), recorded from today's code on
the time-skipping test server with the real activities. Re-record only on purpose: a saved
history is the proof that a change to workflow code still replays the enrollments already
running in production (docs/workflow-versioning.md). A path whose code changes keeps its old
history beside the new one (``<path>.json`` -> ``<path>-before-<patch>.json``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from activities.email.providers import OutboxProvider
from nurture.contracts import (
    ContactEventSignal,
    EnrollmentResult,
    EnrollmentState,
    PauseSignal,
    PauseUpdate,
    ResumeSignal,
    ResumeUpdate,
)
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow, utcnow
from nurture.settings import Settings
from tests.conftest import _binary, eventually, timer_running
from tests.factories import add_active_flow, add_contact, add_templates, enrollment_input, example_definition
from worker.main import build_worker

HISTORIES = Path(__file__).parent / "histories"

WAIT_SEND_WAIT = {
    "name": "Wait, send, wait",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "5d"},
        {"id": "hello", "type": "send_email", "template": "case-study"},
        {"id": "later", "type": "delay", "duration": "2d"},
    ],
}
HANDOFF = {
    "name": "Handoff",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "handoff", "type": "handoff_to_sales", "silence_limit": "7d",
         "on_won": "won", "on_lost": "lost", "on_returned": "returned", "on_silence": "silent"},
        {"id": "won", "type": "exit", "reason": "customer"},
        {"id": "lost", "type": "delay", "duration": "1d", "next": "bye"},
        {"id": "returned", "type": "send_email", "template": "case-study", "next": "bye"},
        {"id": "silent", "type": "delay", "duration": "1d"},
        {"id": "bye", "type": "exit", "reason": "done"},
    ],
}
SPLIT = {
    "name": "A/B split",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "ab", "type": "split",
         "paths": [{"name": "a", "percent": 50, "goto": "a"}, {"name": "b", "percent": 50, "goto": "b"}]},
        {"id": "a", "type": "send_email", "template": "demo-welcome", "next": "end"},
        {"id": "b", "type": "send_email", "template": "case-study"},
        {"id": "end", "type": "delay", "duration": "1d"},
    ],
}


class Recorder:
    def __init__(self, env: WorkflowEnvironment, db: Database, settings: Settings):
        self.env, self.db, self.settings = env, db, settings
        self.client: Client = env.client

    async def enroll(self, definition: dict, **contact_fields) -> tuple[WorkflowHandle, Contact]:
        flow = await add_active_flow(self.db, definition)
        contact = await add_contact(self.db, email=f"{uuid.uuid4().hex[:8]}@example.com", **contact_fields)
        async with self.db.session() as s:
            outcome = await Enroller(self.client, self.settings).enroll(
                s, await s.get(Flow, flow.id), await s.get(Contact, contact.id)
            )
            await s.commit()
        return self.client.get_workflow_handle(outcome.enrollment.workflow_id, result_type=EnrollmentResult), contact

    async def finish(self, handle: WorkflowHandle) -> None:
        async with self.env.time_skipping_unlocked():
            try:
                await handle.result()
            except Exception:  # the failure path fails on purpose
                pass

    async def event(self, handle: WorkflowHandle, type: str, **properties) -> None:
        await handle.signal(
            "contact_event",
            ContactEventSignal(event_id=uuid.uuid4().hex, type=type, properties=properties, occurred_at=utcnow()),
        )

    # --- the feature paths -------------------------------------------------------

    async def goal_mid_wait(self) -> WorkflowHandle:
        """The README's example: an open, a sales pause by signal and its resume, a goal in a wait."""
        handle, _ = await self.enroll(example_definition())
        await eventually(lambda: timer_running(handle, "wait-2d"))
        now = await self.env.get_current_time()
        await handle.signal("pause", PauseSignal(until=now + timedelta(days=30), reason="call", paused_by="rep"))
        await self.env.sleep(timedelta(days=3))
        await handle.signal("resume", ResumeSignal(resumed_by="rep"))
        await eventually(lambda: timer_running(handle, "wait-for-click"))
        await self.event(handle, "meeting_booked")
        await self.finish(handle)
        return handle

    async def pause_by_update(self) -> WorkflowHandle:
        handle, _ = await self.enroll(WAIT_SEND_WAIT)
        await eventually(lambda: timer_running(handle, "wait"))
        now = await self.env.get_current_time()
        await handle.execute_update(
            "pause_enrollment", PauseUpdate(until=now + timedelta(days=9), reason="call", paused_by="rep"),
            result_type=EnrollmentState,
        )
        await self.env.sleep(timedelta(days=6))
        await handle.execute_update("resume_enrollment", ResumeUpdate(resumed_by="rep"), result_type=EnrollmentState)
        await self.finish(handle)
        return handle

    async def continue_as_new(self) -> WorkflowHandle:
        """A burst of events past the history limit: the first run hands over mid-wait."""
        flow = await add_active_flow(self.db, WAIT_SEND_WAIT)
        contact = await add_contact(self.db, email="can@example.com")
        workflow_id = f"{self.settings.workflow_id_prefix}-{flow.id}-{contact.id}"
        short = await self.client.start_workflow(
            "EnrollmentWorkflow",
            await enrollment_input(self.db, flow, contact, WAIT_SEND_WAIT, workflow_id, continue_as_new_after_events=20),
            id=workflow_id,
            task_queue=self.settings.temporal_task_queue,
            result_type=EnrollmentResult,
        )
        for number in range(20):
            await self.event(short, "page_viewed", n=number)
        await eventually(lambda: _continued(self.client, short))
        await self.finish(self.client.get_workflow_handle(short.id, result_type=EnrollmentResult))
        return self.client.get_workflow_handle(short.id, run_id=short.result_run_id)

    async def handoff(self, outcome: str) -> WorkflowHandle:
        handle, _ = await self.enroll(HANDOFF, owner="rep@example.com")
        await eventually(lambda: timer_running(handle, "handoff"))
        if outcome in ("won", "lost"):
            await self.event(handle, "deal_stage_changed", stage="demo scheduled")
            await self.event(handle, "deal_stage_changed", stage=f"closed {outcome}")
        elif outcome == "returned":
            await self.event(handle, "returned_to_marketing", reason="not now")
        await self.finish(handle)
        return handle

    async def split(self) -> WorkflowHandle:
        handle, _ = await self.enroll(SPLIT)
        await self.finish(handle)
        return handle

    async def deferred_send(self) -> WorkflowHandle:
        """A send window that opens in three hours: the send waits for it, then goes."""
        now = await self.env.get_current_time()
        opens = (now + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
        window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                  "start": opens.strftime("%H:%M"), "end": (opens + timedelta(hours=1)).strftime("%H:%M")}
        handle, _ = await self.enroll({**WAIT_SEND_WAIT, "steps": WAIT_SEND_WAIT["steps"][1:], "send_window": window},
                                      timezone="UTC")
        await self.finish(handle)
        return handle

    async def failure(self) -> WorkflowHandle:
        """The contact deleted under a waiting enrollment: the next send fails it, with the reason."""
        handle, contact = await self.enroll(WAIT_SEND_WAIT)
        await eventually(lambda: timer_running(handle, "wait"))
        with sqlite3.connect(make_url(self.db.url).database) as conn:  # as an operator in the sqlite3 shell
            conn.execute("DELETE FROM contacts WHERE id = ?", (contact.id,))
        await self.finish(handle)
        return handle


async def _continued(client: Client, first: WorkflowHandle) -> bool:
    return (await client.get_workflow_handle(first.id).describe()).run_id != first.result_run_id


FEATURE_PATHS: dict[str, Callable[[Recorder], Awaitable[WorkflowHandle]]] = {
    "goal_mid_wait": Recorder.goal_mid_wait,
    "pause_by_update": Recorder.pause_by_update,
    "continue_as_new": Recorder.continue_as_new,
    "handoff_won": lambda r: r.handoff("won"),
    "handoff_lost": lambda r: r.handoff("lost"),
    "handoff_returned": lambda r: r.handoff("returned"),
    "handoff_silence": lambda r: r.handoff("silence"),
    "split": Recorder.split,
    "deferred_send": Recorder.deferred_send,
    "failure": Recorder.failure,
}


async def main(only: list[str]) -> None:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/record.db")
        await db.create_all()
        settings = Settings(_env_file=None, data_dir=Path(tmp), temporal_search_attributes=False,
                            temporal_task_queue=f"record-{uuid.uuid4()}", tracking_secret=uuid.uuid4().hex * 2,
                            email_webhook_secret=uuid.uuid4().hex * 2, webhook_secret=uuid.uuid4().hex * 2)
        await add_templates(db)
        recorder = Recorder(env, db, settings)
        async with build_worker(env.client, db, OutboxProvider(settings.outbox_dir), settings):
            for name, record in FEATURE_PATHS.items():
                if only and name not in only:
                    continue
                handle = await record(recorder)
                history = await handle.fetch_history()
                (HISTORIES / f"enrollment_{name}.json").write_text(history.to_json())
                print(f"{name}: {len(history.events)} events")  # noqa: T201  (a developer's script)
        await db.dispose()
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
