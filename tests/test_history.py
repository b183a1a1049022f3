"""The enrollment history as a person reads it, drawn from the Temporal history itself."""

from __future__ import annotations

from datetime import timedelta

from nurture.contracts import ContactEventSignal, EnrollmentResult, PauseSignal, ResumeSignal
from nurture.contracts import enrollment_workflow_id
from nurture.history import read_history
from nurture.models import utcnow
from tests.conftest import eventually, result_of, timer_running
from tests.factories import enrollment_input, add_active_flow, add_contact, add_templates, messages_of
from tests.test_workflow_example import enroll
from nurture.enrolling import Enroller


async def test_timeline_tells_what_happened_and_why(db, client, settings, worker, temporal_env):
    await add_templates(db)
    flow, contact = await add_active_flow(db), await add_contact(db)
    enrollment = await enroll(db, Enroller(client, settings), flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    welcome = (await eventually(lambda: messages_of(db, contact.id)))[0]
    await eventually(lambda: timer_running(handle, "wait-2d"))
    now = await temporal_env.get_current_time()
    await handle.signal("pause", PauseSignal(until=now + timedelta(days=30), reason="demo call", paused_by="rep-9"))
    await temporal_env.sleep(timedelta(days=3))
    await handle.signal("resume", ResumeSignal(resumed_by="rep-9", reason="call went well"))
    await eventually(lambda: timer_running(handle, "wait-for-click"))  # the resend went out
    await handle.signal("contact_event", ContactEventSignal(event_id="m1", type="meeting_booked", occurred_at=utcnow()))
    await result_of(temporal_env, handle)

    history = await read_history(client, enrollment.workflow_id)
    texts = [e.text for e in history.entries]
    kinds = [e.kind for e in history.entries]

    assert history.status == "exited" and len(history.runs) == 1
    assert texts[0].startswith(f"Entered flow {flow.id} 'Demo-request nurture' version 1")
    assert f"Sent 'demo-welcome' (message {welcome.id})" in texts
    wait = next(e for e in history.entries if e.kind == "wait" and e.step_id == "wait-2d")
    assert wait.text.startswith("Waiting 2d (wait-2d: delay 2d)")
    assert "Paused by rep-9 until" in next(t for t in texts if t.startswith("Paused"))
    assert "Resumed by rep-9: call went well" in texts
    assert "Event received: meeting_booked" in texts
    assert texts[-1] == "Exited: goal_met (2 emails sent)"
    steps = [e.step_id for e in history.entries if e.kind == "step"]
    assert steps == ["welcome", "wait-2d", "opened-welcome", "resend-welcome", "wait-for-click"]
    assert kinds.index("paused") < kinds.index("resumed") < kinds.index("exited")


async def test_history_spans_continue_as_new_runs(db, client, settings, worker, temporal_env):
    await add_templates(db)
    contact = await add_contact(db)
    definition = {
        "name": "Long",
        "trigger": {"type": "manual"},
        "steps": [{"id": "wait", "type": "delay", "duration": "5d"}, {"id": "hi", "type": "send_email", "template": "case-study"}],
    }
    flow = await add_active_flow(db, definition)
    workflow_id = enrollment_workflow_id(settings.workflow_id_prefix, flow.id, contact.id)
    handle = await client.start_workflow(
        "EnrollmentWorkflow",
        await enrollment_input(db, flow, contact, definition, workflow_id, continue_as_new_after_events=25),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
    )
    for i in range(30):
        await handle.signal("contact_event", ContactEventSignal(event_id=f"v{i}", type="page_viewed", occurred_at=utcnow()))
    await result_of(temporal_env, client.get_workflow_handle(workflow_id))

    history = await read_history(client, workflow_id)

    assert len(history.runs) >= 2
    assert sum(1 for e in history.entries if e.kind == "event") == 30
    assert any(e.kind == "continued" for e in history.entries)
    assert history.entries[-1].text == "Completed the flow (1 emails sent)"
