"""Events, enrollments and health over the API, against the real worker and test server."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from nurture.contracts import enrollment_workflow_id
from nurture.db import Database
from nurture.models import Contact, Enrollment, Event, Flow, FlowStatus, FlowVersion
from tests.api_support import (  # noqa: F401  (fixtures)
    active_example_flow,
    api,
    count_rows,
    create_template,
    enroll_by_event,
    locs,
    post_event,
    wait_for_step,
    workflow_state,
)
from tests.conftest import _binary, eventually
from tests.trigger_support import run_of, started_with


async def enrollments(api, **filters) -> list[dict]:
    response = await api.get("/enrollments", params=filters)
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_trigger_event_enrolls_the_contact_and_the_workflow_runs(api, worker, settings):
    flow_id = await active_example_flow(api)
    response = await post_event(
        api, type="demo_requested", email="New.Lead@Example.com", properties={"source": "pricing page"}
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["duplicate"] is False and body["contact_created"] is True
    assert len(body["enrolled"]) == 1 and body["signalled"] == []
    enrollment_id = body["enrolled"][0]

    contact = (await api.get(f"/contacts/{body['contact_id']}")).json()
    assert contact["email"] == "new.lead@example.com"
    assert contact["last_activity_at"] is not None
    [row] = await enrollments(api, flow_id=flow_id)
    assert row["id"] == enrollment_id and row["contact_id"] == body["contact_id"] and row["status"] == "active"

    state = await wait_for_step(api, enrollment_id, "wait-2d")  # welcome sent, now waiting two days
    assert state["status"] == "active" and state["current_step_type"] == "delay"
    assert [s["step_id"] for s in state["sends"]] == ["welcome"]
    detail = (await api.get(f"/enrollments/{enrollment_id}")).json()
    assert detail["workflow_error"] is None
    assert detail["temporal_ui_url"] == (
        f"http://127.0.0.1:8233/namespaces/default/workflows/{settings.workflow_id_prefix}-{flow_id}-{body['contact_id']}"
    )
    assert [e["id"] for e in (await api.get(f"/contacts/{body['contact_id']}/enrollments")).json()["items"]] == [enrollment_id]


async def test_same_event_id_twice_is_a_duplicate_and_does_nothing_again(api, worker, db):
    await active_example_flow(api)
    first = await post_event(api, event_id="form-123", type="demo_requested", email="dup@example.com")
    assert first.status_code == 202 and len(first.json()["enrolled"]) == 1

    second = await post_event(api, event_id="form-123", type="demo_requested", email="dup@example.com")
    assert second.status_code == 200
    assert second.json() == {
        "event_id": "form-123",
        "contact_id": first.json()["contact_id"],
        "duplicate": True,
        "contact_created": False,
        "enrolled": [],
        "signalled": [],
        "routed": True,
    }
    assert len(await enrollments(api)) == 1
    assert await count_rows(db, Event) == 1


async def test_trigger_twice_with_different_ids_still_enrolls_once(api, worker, db):
    await active_example_flow(api)
    first = await post_event(api, type="demo_requested", email="eager@example.com")
    [enrollment_id] = first.json()["enrolled"]
    second = await post_event(api, type="demo_requested", email="eager@example.com")
    assert second.status_code == 202
    assert second.json()["enrolled"] == []
    assert second.json()["signalled"] == [enrollment_id]  # running enrollments hear about every event
    assert [e["id"] for e in await enrollments(api)] == [enrollment_id]
    assert await count_rows(db, Event) == 2


async def test_event_of_another_type_enrolls_nothing(api, worker):
    await active_example_flow(api)
    response = await post_event(api, type="webinar_attended", email="other@example.com")
    assert response.status_code == 202
    assert response.json()["enrolled"] == [] and response.json()["signalled"] == []
    assert (await api.get(f"/contacts/{response.json()['contact_id']}")).status_code == 200
    assert await enrollments(api) == []


async def test_event_validation(api, db):
    contact = (await api.post("/contacts", json={"email": "v@example.com"})).json()
    both = await post_event(api, type="demo_requested", email="v@example.com", contact_id=contact["id"])
    assert both.status_code == 422 and "exactly one" in both.json()["detail"][0]["msg"]
    neither = await post_event(api, type="demo_requested")
    assert neither.status_code == 422
    bad_type = await post_event(api, type="Demo Requested!", contact_id=contact["id"])
    assert bad_type.status_code == 422 and locs(bad_type) == [["body", "type"]]
    bad_email = await post_event(api, type="demo_requested", email="nobody")
    assert bad_email.status_code == 422 and locs(bad_email) == [["body", "email"]]
    unknown = await post_event(api, type="demo_requested", contact_id=9999)
    assert unknown.status_code == 404
    assert await count_rows(db, Event) == 0


async def test_manual_enrollment(api, worker, db):
    for key in ("check-in",):
        await create_template(api, key)
    manual_flow = {
        "name": "Account check-in",
        "trigger": {"type": "manual"},
        "steps": [{"id": "check-in", "type": "send_email", "template": "check-in"}, {"id": "pause", "type": "delay", "duration": "7d"}],
    }
    flow = (await api.post("/flows", json=manual_flow)).json()
    contact = (await api.post("/contacts", json={"email": "key.account@example.com", "name": "Kay"})).json()

    draft = await api.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]})
    assert draft.status_code == 409 and "draft" in draft.json()["detail"]
    activated = await api.post(f"/flows/{flow['id']}/activate")
    assert activated.status_code == 200 and activated.json()["trigger_event"] is None

    created = await api.post(f"/flows/{flow['id']}/enrollments", json={"email": "Key.Account@example.com"})
    assert created.status_code == 201, created.text
    assert created.json()["contact_id"] == contact["id"] and created.json()["status"] == "active"
    again = await api.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]})
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    await wait_for_step(api, created.json()["id"], "pause")

    gone = (await api.post("/contacts", json={"email": "gone@example.com", "subscription_status": "unsubscribed"})).json()
    refused = await api.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": gone["id"]})
    assert refused.status_code == 409
    missing = await api.post(f"/flows/{flow['id']}/enrollments", json={"email": "stranger@example.com"})
    assert missing.status_code == 404
    assert await count_rows(db, Enrollment) == 1


async def test_two_requests_enrolling_one_contact_at_once_make_one_enrollment(api, worker, db, client, settings):
    await create_template(api, "check-in")
    flow = (await api.post("/flows", json={
        "name": "Check-in", "trigger": {"type": "manual"},
        "steps": [{"id": "check-in", "type": "send_email", "template": "check-in"}, {"id": "pause", "type": "delay", "duration": "7d"}],
    })).json()
    assert (await api.post(f"/flows/{flow['id']}/activate")).status_code == 200
    contact = (await api.post("/contacts", json={"email": "twice@example.com", "name": "Tess"})).json()

    first, second = await asyncio.gather(
        api.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]}),
        api.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]}),
    )

    assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
    assert first.json()["id"] == second.json()["id"]
    [row] = await enrollments(api, flow_id=flow["id"])
    assert row["workflow_id"] == enrollment_workflow_id(settings.workflow_id_prefix, flow["id"], contact["id"])
    state = await wait_for_step(api, row["id"], "pause")
    assert [s["step_id"] for s in state["sends"]] == ["check-in"]  # one workflow: one email
    started = await started_with(client, row["workflow_id"])
    assert (started.enrollment_id, started.contact.email) == (row["id"], "twice@example.com")  # type: ignore[union-attr]
    assert await run_of(client, f"{row['workflow_id']}-2") is None


async def test_unsubscribed_event_makes_the_enrollment_exit(api, worker):
    await active_example_flow(api)
    contact_id, enrollment_id = await enroll_by_event(api, "leaving@example.com")
    await wait_for_step(api, enrollment_id, "wait-2d")

    response = await post_event(api, type="unsubscribed", contact_id=contact_id)
    assert response.status_code == 202
    assert response.json()["signalled"] == [enrollment_id]
    assert (await api.get(f"/contacts/{contact_id}")).json()["subscription_status"] == "unsubscribed"

    async def exited():
        [row] = await enrollments(api, contact_id=contact_id)
        return row if row["status"] == "exited" else None

    row = await eventually(exited)
    assert row["exit_reason"] == "unsubscribed" and row["ended_at"] is not None
    assert [e["id"] for e in await enrollments(api, status="exited")] == [enrollment_id]
    assert await enrollments(api, status="active") == []

    # Neither a new trigger nor an import brings the contact back.
    again = await post_event(api, type="demo_requested", contact_id=contact_id)
    assert again.json()["enrolled"] == []
    reimport = await api.post("/contacts", json={"email": "leaving@example.com", "subscription_status": "subscribed"})
    assert reimport.json()["subscription_status"] == "unsubscribed"


async def test_messages_of_a_contact_after_the_first_email(api, worker):
    await active_example_flow(api)
    contact_id, enrollment_id = await enroll_by_event(api, "reader@example.com", name="Rea")

    async def sent():
        items = (await api.get(f"/contacts/{contact_id}/messages")).json()["items"]
        return items if items and items[0]["status"] == "sent" else None

    [message] = await eventually(sent)
    assert message["step_id"] == "welcome" and message["template_key"] == "demo-welcome"
    assert message["subject"] == "demo-welcome for Rea"
    assert message["to_email"] == "reader@example.com" and message["provider"] == "outbox"
    assert message["workflow_id"] == (await api.get(f"/enrollments/{enrollment_id}")).json()["workflow_id"]
    assert message["sent_at"] is not None and message["error"] is None
    assert (await api.get("/contacts/555/messages")).status_code == 404


async def test_exit_endpoint_stops_the_enrollment(api, worker):
    await active_example_flow(api)
    _, enrollment_id = await enroll_by_event(api, "manual-exit@example.com")
    await wait_for_step(api, enrollment_id, "wait-2d")

    assert (await api.post(f"/enrollments/{enrollment_id}/exit", json={})).status_code == 422  # requested_by required
    response = await api.post(f"/enrollments/{enrollment_id}/exit", json={"requested_by": "rep-9", "reason": "bought"})
    assert response.status_code == 202, response.text

    async def exited():
        state = await workflow_state(api, enrollment_id)
        row = (await api.get(f"/enrollments/{enrollment_id}")).json()
        return state if state["status"] == "exited" and row["status"] == "exited" else None

    state = await eventually(exited)
    assert state["exit_reason"] == "bought"
    again = await api.post(f"/enrollments/{enrollment_id}/exit", json={"requested_by": "rep-9"})
    assert again.status_code == 409
    assert (await api.get("/enrollments/31337")).status_code == 404


async def test_enrollment_without_a_workflow_still_answers_from_the_database(api, db):
    async with db.session() as s:
        contact = Contact(email="orphan@example.com")
        flow = Flow(name="old", status=FlowStatus.active, active_version=1)
        s.add(contact)
        s.add(flow)
        await s.flush()
        s.add(FlowVersion(flow_id=flow.id, version=1, definition={}))
        s.add(Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id="enrollment-gone"))
        await s.commit()
        enrollment_id = (await s.exec(select(Enrollment.id))).one()
    response = await api.get(f"/enrollments/{enrollment_id}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "active" and body["workflow"] is None
    assert body["workflow_error"]


async def test_health_ok(api):
    response = await api.get("/health")
    assert response.status_code == 200
    assert response.json() == {"database": "ok", "temporal": "ok"}


async def test_health_names_an_unreachable_database(client, settings):
    dead = Database("postgresql://nobody@127.0.0.1:1/none")
    app = create_app(settings, db=dead, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        response = await http.get("/health")
    await dead.dispose()
    assert response.status_code == 503
    assert response.json()["database"].startswith("unreachable: ")
    assert response.json()["temporal"] == "ok"


@pytest.fixture
async def dead_temporal() -> Client:
    """A client whose Temporal server has gone away."""
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_binary("temporal-test-server"), data_converter=pydantic_data_converter
    )
    target = env.client.service_client.config.target_host
    client = await Client.connect(
        target, data_converter=pydantic_data_converter, retry_config=RetryConfig(max_retries=1, max_elapsed_time_millis=200)
    )
    await env.shutdown()
    return client


async def test_temporal_down_is_503_and_nothing_is_committed(db, settings, dead_temporal):
    app = create_app(settings, db=db, client=dead_temporal)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        await active_example_flow(http)
        response = await post_event(http, event_id="while-down", type="demo_requested", email="waiting@example.com")
        assert response.status_code == 503, response.text
        assert "Temporal" in response.json()["detail"]
        assert await count_rows(db, Contact) == 0
        assert await count_rows(db, Event) == 0
        assert await count_rows(db, Enrollment) == 0

        health = await http.get("/health")
        assert health.status_code == 503
        assert health.json()["database"] == "ok" and health.json()["temporal"].startswith("unreachable: ")


async def test_temporal_down_leaves_no_enrollment_row_and_no_half_made_change(db, settings, dead_temporal, client, worker):
    property_flow = {
        "name": "New customers", "trigger": {"type": "property", "condition": {"property": "lifecycle_stage", "op": "eq", "value": "customer"}},
        "steps": [{"id": "hello", "type": "send_email", "template": "hello"}],
    }
    manual_flow = {"name": "By hand", "trigger": {"type": "manual"}, "steps": [{"id": "hello", "type": "send_email", "template": "hello"}]}
    down = create_app(settings, db=db, client=dead_temporal)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://test") as http:
        await create_template(http, "hello")
        flow_ids = []
        for definition in (property_flow, manual_flow):
            flow = (await http.post("/flows", json=definition)).json()
            assert (await http.post(f"/flows/{flow['id']}/activate")).status_code == 200
            flow_ids.append(flow["id"])
        contact = (await http.post("/contacts", json={"email": "lead@example.com", "lifecycle_stage": "lead"})).json()

        by_hand = await http.post(f"/flows/{flow_ids[1]}/enrollments", json={"contact_id": contact["id"]})
        assert by_hand.status_code == 503, by_hand.text
        became_customer = await http.patch(f"/contacts/{contact['id']}", json={"lifecycle_stage": "customer"})
        assert became_customer.status_code == 503, became_customer.text
        assert await count_rows(db, Enrollment) == 0
        # The change is not kept either: the client's retry is a change, and the trigger fires then.
        assert (await http.get(f"/contacts/{contact['id']}")).json()["lifecycle_stage"] == "lead"

    up = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=up), base_url="http://test") as http:
        retried = await http.patch(f"/contacts/{contact['id']}", json={"lifecycle_stage": "customer"})
        assert retried.status_code == 200, retried.text
        [row] = await enrollments(http, flow_id=flow_ids[0])
        assert row["contact_id"] == contact["id"] and row["sequence"] == 1
