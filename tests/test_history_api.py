"""An enrollment's history over the API and on the command line, drawn from Temporal."""

from __future__ import annotations

import io
import socket
from datetime import timedelta

import httpx

from api.main import create_app
from nurture import cli
from nurture.contracts import ContactEventSignal, PauseUpdate, ResumeUpdate, enrollment_workflow_id
from nurture.history import read_history
from nurture.history_command import show_history
from nurture.models import Enrollment, utcnow
from tests.api_support import active_example_flow, api, enroll_by_event, post_event, wait_for_step  # noqa: F401
from tests.conftest import eventually, result_of
from tests.factories import enrollment_input, add_active_flow, add_contact, add_templates


async def test_history_endpoint_and_command_tell_the_same_story(api, worker, db, settings, client, temporal_env):
    await active_example_flow(api)
    contact_id, enrollment_id = await enroll_by_event(api, "hist@example.com", "Hedy")
    state = await wait_for_step(api, enrollment_id, "wait-2d")
    message_id = state["sends"][0]["message_id"]
    opened = await post_event(api, type="email_opened", contact_id=contact_id, properties={"message_id": message_id})
    assert opened.status_code == 202
    # As the pause API does it (a validated update), with the test server's clock, which runs ahead.
    handle = client.get_workflow_handle(state["workflow_id"])
    until = await temporal_env.get_current_time() + timedelta(days=14)
    await handle.execute_update("pause_enrollment", PauseUpdate(until=until, reason="call on Tuesday", paused_by="rep-7"))
    await handle.execute_update("resume_enrollment", ResumeUpdate(resumed_by="rep-7"))
    assert (await post_event(api, type="meeting_booked", contact_id=contact_id)).status_code == 202
    ended = await eventually(lambda: _status(api, enrollment_id, "exited"))

    answer = await api.get(f"/enrollments/{enrollment_id}/history")
    assert answer.status_code == 200, answer.text
    history = answer.json()
    assert history["status"] == "exited" and history["workflow_id"] == ended["workflow_id"]
    assert history["temporal_ui_url"].endswith(f"/workflows/{ended['workflow_id']}")
    kinds = [e["kind"] for e in history["entries"]]
    assert kinds[0] == "entered" and kinds[-1] == "exited"
    assert [e["step_id"] for e in history["entries"] if e["kind"] == "step"] == ["welcome", "wait-2d"]
    sent = next(e for e in history["entries"] if e["kind"] == "email")
    assert sent["details"]["outcome"] == "sent" and sent["details"]["message_id"] >= 1
    wait_end = next(e for e in history["entries"] if e["kind"] == "wait_ended")
    assert wait_end["text"].startswith("Wait ended early at") and "planned" in wait_end["text"]
    texts = [e["text"] for e in history["entries"]]
    assert f"Event received: email_opened of message {message_id}" in texts
    assert next(t for t in texts if t.startswith("Paused")).startswith("Paused by rep-7 until ")
    assert texts.index("Resumed by rep-7") > next(i for i, t in enumerate(texts) if t.startswith("Paused"))
    assert history["lines"][-1].endswith("Exited: goal_met (1 emails sent)")

    printed, errors = io.StringIO(), io.StringIO()
    assert await show_history(settings, str(enrollment_id), printed, errors, client=client, db=db) == 0
    lines = printed.getvalue().splitlines()
    assert lines[0] == f"{ended['workflow_id']}  (exited, 1 run)"
    assert lines[1:] == history["lines"]
    by_workflow_id = io.StringIO()
    assert await show_history(settings, ended["workflow_id"], by_workflow_id, errors, client=client, db=db) == 0
    assert by_workflow_id.getvalue() == printed.getvalue()


async def _status(api, enrollment_id: int, status: str):
    row = (await api.get(f"/enrollments/{enrollment_id}")).json()
    return row if row["status"] == status else None


async def test_unknown_enrollment_is_404_and_temporal_down_is_503(api, db, settings, client):
    assert (await api.get("/enrollments/999999/history")).status_code == 404
    printed, errors = io.StringIO(), io.StringIO()
    assert await show_history(settings, "999999", printed, errors, client=client, db=db) == 1
    assert errors.getvalue() == "no enrollment 999999 in the database\n"
    assert await show_history(settings, "no-such-workflow", printed, errors, client=client, db=db) == 1
    assert "no workflow no-such-workflow" in errors.getvalue()

    await add_templates(db)
    contact = await add_contact(db)
    flow = await add_active_flow(db, _long_flow())
    async with db.session() as s:  # a row whose workflow was never started (or is long gone)
        row = Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id="enrollment-gone-1")
        s.add(row)
        await s.commit()
        await s.refresh(row)
    gone = await api.get(f"/enrollments/{row.id}/history")
    assert gone.status_code == 404 and "no history" in gone.json()["detail"]

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        down = settings.model_copy(update={"temporal_address": f"127.0.0.1:{probe.getsockname()[1]}",
                                           "temporal_step_search_attributes": True})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(down, db=db)), base_url="http://test"
    ) as no_temporal:
        answer = await no_temporal.get(f"/enrollments/{row.id}/history")
        assert answer.status_code == 503 and "Temporal is unavailable" in answer.json()["detail"]
        assert (await no_temporal.get("/enrollments/999999/history")).status_code == 404
        for found_through_visibility in ("count", "search"):
            assert (await no_temporal.get(f"/flows/{flow.id}/enrollments/{found_through_visibility}")).status_code == 503
    assert await show_history(down, row.workflow_id, printed, errors, db=db) == 1
    assert "cannot reach Temporal" in errors.getvalue()


def _long_flow() -> dict:
    return {
        "name": "Long",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "wait", "type": "delay", "duration": "5d"},
            {"id": "hi", "type": "send_email", "template": "case-study"},
        ],
    }


async def test_one_enrollment_chain_is_read_forwards_from_its_first_run(db, client, settings, worker, temporal_env):
    await add_templates(db)
    contact = await add_contact(db)
    flow = await add_active_flow(db, _long_flow())
    workflow_id = enrollment_workflow_id(settings.workflow_id_prefix, flow.id, contact.id)
    handle = await client.start_workflow(
        "EnrollmentWorkflow",
        await enrollment_input(db, flow, contact, _long_flow(), workflow_id, continue_as_new_after_events=20),
        id=workflow_id,
        task_queue=settings.temporal_task_queue,
    )
    for i in range(20):
        await handle.signal("contact_event", ContactEventSignal(event_id=f"v{i}", type="page_viewed", occurred_at=utcnow()))
    await result_of(temporal_env, client.get_workflow_handle(workflow_id))

    backwards = await read_history(client, workflow_id)
    forwards = await read_history(client, workflow_id, handle.first_execution_run_id)

    assert len(forwards.runs) >= 2 and forwards.runs[0] == handle.first_execution_run_id
    assert forwards == backwards
    assert [e.kind for e in forwards.entries].count("event") == 20


def test_the_history_command_is_on_the_command_line():
    args = cli.build_parser().parse_args(["history", "12", "--json"])
    assert (args.command, args.enrollment, args.json) == ("history", "12", True)
