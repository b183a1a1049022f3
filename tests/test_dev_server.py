"""On the real dev server (not the test server): the workflow keeps its search attributes
current, so enrollments can be found by flow, step and status through Temporal visibility."""

from __future__ import annotations


from temporalio.client import Client

from activities.email.providers import OutboxProvider
from nurture.contracts import EnrollmentResult
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from worker.main import build_worker

SHORT_FLOW = {
    "name": "Short",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "demo-welcome"},
        {"id": "pause-a-moment", "type": "delay", "duration": "3s"},
        {"id": "again", "type": "send_email", "template": "case-study"},
    ],
}




async def count(client: Client, query: str) -> int:
    return (await client.count_workflows(query)).count


async def test_enrollments_are_found_by_flow_step_and_status(dev_env, db, settings):
    settings = settings.model_copy(update={"temporal_search_attributes": True, "temporal_step_search_attributes": True})
    client = dev_env.client
    await add_templates(db)
    flow, contact = await add_active_flow(db, SHORT_FLOW), await add_contact(db)
    prefix = settings.workflow_id_prefix

    async with build_worker(client, db, OutboxProvider(settings.outbox_dir), settings):
        async with db.session() as s:
            enrollment = (
                await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
            ).enrollment
            await s.commit()
        mine = f"WorkflowId = '{enrollment.workflow_id}'"
        waiting = f"{mine} AND NurtureFlowId = '{flow.id}' AND NurtureStep = 'pause-a-moment' AND NurtureStatus = 'active'"
        await eventually(lambda: count(client, waiting), timeout=15)

        result = await client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult).result()

    assert result.emails_sent == 2
    done = f"{mine} AND NurtureContactId = '{contact.id}' AND NurtureStatus = 'completed' AND NurturePaused = false"
    assert await eventually(lambda: count(client, done), timeout=15) == 1
    assert await count(client, f"WorkflowId STARTS_WITH '{prefix}' AND NurtureStatus = 'active'") == 0
    assert len(await messages_of(db, contact.id)) == 2
