"""Record workflow histories for the replay test: ``python -m tests.record_histories``.

Re-record only on purpose: a saved history is the proof that workflow code changes
still replay the enrollments already running in production.
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
from nurture.contracts import ContactEventSignal, PauseSignal, ResumeSignal
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow, utcnow
from nurture.settings import Settings
from tests.conftest import _binary, eventually
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from worker.main import build_worker

HISTORIES = Path(__file__).parent / "histories"


async def main() -> None:
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
        flow = await add_active_flow(db)
        contact = await add_contact(db)
        async with build_worker(env.client, db, OutboxProvider(settings.outbox_dir), settings):
            async with db.session() as s:
                enrollment = (await Enroller(env.client, settings).enroll(
                    s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))).enrollment
                await s.commit()
            handle = env.client.get_workflow_handle(enrollment.workflow_id)
            welcome = (await eventually(lambda: messages_of(db, contact.id)))[0]
            await handle.signal("contact_event", ContactEventSignal(
                event_id="open", type="email_opened", properties={"message_id": welcome.id}, occurred_at=utcnow()))
            await handle.signal("pause", PauseSignal(until=utcnow() + timedelta(days=30), reason="call", paused_by="rep"))
            await env.sleep(timedelta(days=3))
            await handle.signal("resume", ResumeSignal(resumed_by="rep"))
            await eventually(lambda: len_at_least(db, contact.id, 2))
            await handle.signal("contact_event", ContactEventSignal(
                event_id="meeting", type="meeting_booked", occurred_at=utcnow()))
            async with env.time_skipping_unlocked():
                await handle.result()
            history = await handle.fetch_history()
        (HISTORIES / "example_opened_paused_goal.json").write_text(history.to_json())
        await db.dispose()
    await env.shutdown()


async def len_at_least(db: Database, contact_id: int, n: int) -> bool:
    return len(await messages_of(db, contact_id)) >= n


if __name__ == "__main__":
    asyncio.run(main())
