"""The Temporal Schedule behind date and inactivity triggers, on the real dev server.

The time-skipping test server has no Schedules; the scan workflow itself is tested there
(test_trigger_scans.py). Here: activation creates the schedule, and a run of it enrolls.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from temporalio.client import Client, ScheduleActionStartWorkflow

from activities.email.providers import OutboxProvider
from api.main import create_app
from nurture.batch_contracts import TRIGGER_SCAN_WORKFLOW, trigger_scan_schedule_id
from nurture.models import utcnow
from nurture.trigger_schedule import ensure_trigger_scan_schedule
from tests.conftest import eventually
from tests.factories import add_contact, add_templates
from tests.trigger_support import TEMPLATES, enrolled_contacts, one_email_flow
from worker.main import build_worker




async def schedule_of(client: Client, settings):
    return await client.get_schedule_handle(trigger_scan_schedule_id(settings.workflow_id_prefix)).describe()


async def test_activating_an_inactivity_flow_schedules_the_scan_that_enrolls_idle_contacts(dev_env, db, settings):
    client = dev_env.client
    settings = settings.model_copy(update={"trigger_scan_interval": timedelta(hours=6)})
    await add_templates(db, TEMPLATES)
    idle = await add_contact(db, "idle@example.com", last_activity_at=utcnow() - timedelta(days=45))
    await add_contact(db, "busy@example.com", last_activity_at=utcnow() - timedelta(days=1))
    app = create_app(settings, db=db, client=client)
    schedule = client.get_schedule_handle(trigger_scan_schedule_id(settings.workflow_id_prefix))
    try:
        async with (
            build_worker(client, db, OutboxProvider(settings.outbox_dir), settings),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api,
        ):
            created = await api.post("/flows", json=one_email_flow({"type": "inactivity", "days": 30}, template="nudge"))
            flow_id = created.json()["id"]
            assert (await api.post(f"/flows/{flow_id}/activate")).status_code == 200

            described = await schedule_of(client, settings)
            assert [i.every for i in described.schedule.spec.intervals] == [timedelta(hours=6)]
            action = described.schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.task_queue) == (TRIGGER_SCAN_WORKFLOW, settings.temporal_task_queue)

            await schedule.trigger()  # what the schedule does every six hours, now
            assert await eventually(lambda: enrolled_contacts(db, flow_id), timeout=30) == [idle.id]

            async def welcomed():
                items = (await api.get(f"/contacts/{idle.id}/messages")).json()["items"]
                return items and items[0]["status"] == "sent"

            await eventually(welcomed, timeout=30)
            assert (await schedule_of(client, settings)).info.recent_actions

            # Ensuring again with another interval updates the one schedule.
            await ensure_trigger_scan_schedule(client, settings.model_copy(update={"trigger_scan_interval": timedelta(hours=1)}))
            assert [i.every for i in (await schedule_of(client, settings)).schedule.spec.intervals] == [timedelta(hours=1)]
    finally:
        await schedule.delete()
