"""The event inbox: POST /events?wait=false answers once the event is stored, routing follows in the
order accepted, an event answered 2xx survives a router that could not route it, and batches."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from nurture.enrolling import Enroller
from nurture.event_inbox import EventInbox
from nurture.models import Enrollment, EnrollmentStatus, Event
from tests.api_support import active_example_flow, count_rows, create_template
from tests.conftest import _binary, eventually

LONG_WAIT_FLOW = {
    "name": "Asleep for a day, until a meeting is booked",
    "trigger": {"type": "manual"},
    "goal": {"event": "meeting_booked"},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "1d"},
        {"id": "hello", "type": "send_email", "template": "hello"},
    ],
}


@pytest.fixture
async def app(db, client, settings):
    return create_app(settings, db=db, client=client)


@pytest.fixture
async def http(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http
    if app.state.event_inbox is not None:
        await app.state.event_inbox.drain()


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


async def sleeping_enrollment(http: httpx.AsyncClient, email: str) -> dict:
    """A contact enrolled by hand in a flow that sleeps a day and ends on meeting_booked."""
    await create_template(http, "hello")
    flow = (await http.post("/flows", json=LONG_WAIT_FLOW)).json()
    assert (await http.post(f"/flows/{flow['id']}/activate")).status_code == 200
    contact = (await http.post("/contacts", json={"email": email})).json()
    enrolled = await http.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]})
    assert enrolled.status_code == 201, enrolled.text
    return enrolled.json()


async def inbox_statuses(db) -> list[str | None]:
    async with db.session() as session:
        return list((await session.exec(select(Event.inbox_status).order_by(col(Event.id)))).all())


async def heard_event_ids(client: Client, workflow_id: str) -> list[str]:
    """The event ids the enrollment's workflow was signalled, in the order its history holds them."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    heard = []
    for event in history.events:
        if event.HasField("workflow_execution_signaled_event_attributes"):
            attributes = event.workflow_execution_signaled_event_attributes
            if attributes.signal_name == "contact_event":
                heard.append(json.loads(attributes.input.payloads[0].data)["event_id"])
    return heard


async def test_without_waiting_the_answer_comes_before_routing_and_the_event_is_routed_after(http, db, worker):
    await active_example_flow(http)
    response = await http.post("/events", params={"wait": "false"}, json={"type": "demo_requested", "email": "fast@example.com", "event_id": "fast-1"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["routed"] is False and body["enrolled"] == [] and body["contact_created"] is True

    async def enrolled() -> bool:
        return len((await http.get("/enrollments")).json()["items"]) == 1

    async def routed() -> bool:
        return await inbox_statuses(db) == ["routed"]

    await eventually(enrolled)
    await eventually(routed)
    again = await http.post("/events", params={"wait": "false"}, json={"type": "demo_requested", "email": "fast@example.com", "event_id": "fast-1"})
    assert again.status_code == 200 and again.json()["duplicate"] is True and again.json()["routed"] is True
    assert await count_rows(db, Event) == 1


async def test_the_events_of_one_contact_reach_the_enrollment_in_the_order_accepted(http, db, client, worker):
    enrollment = await sleeping_enrollment(http, "busy@example.com")
    contact_id = enrollment["contact_id"]
    answers = await asyncio.gather(
        *(
            http.post("/events", params={"wait": "false"}, json={"type": "page_viewed", "contact_id": contact_id, "event_id": f"view-{i}"})
            for i in range(25)
        )
    )
    assert all(a.status_code == 202 for a in answers)

    async def all_routed() -> bool:
        return await inbox_statuses(db) == ["routed"] * 25

    await eventually(all_routed)
    async with db.session() as session:
        accepted = list((await session.exec(select(Event.event_id).order_by(col(Event.id)))).all())
    assert await heard_event_ids(client, enrollment["workflow_id"]) == accepted


async def test_an_event_accepted_while_routing_fails_is_routed_once_by_the_next_router(db, settings, dead_temporal, client, worker):
    live = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=live), base_url="http://test") as http:
        enrollment = await sleeping_enrollment(http, "booked@example.com")

    # The process that accepts it cannot route it (Temporal is gone): still a 202, the event kept.
    down = create_app(settings, db=db, client=dead_temporal)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=down), base_url="http://test") as http:
        response = await http.post(
            "/events", params={"wait": "false"},
            json={"type": "meeting_booked", "contact_id": enrollment["contact_id"], "event_id": "booked-1"},
        )
        assert response.status_code == 202, response.text
        await down.state.event_inbox.drain()
    assert await inbox_statuses(db) == ["pending"]

    # A router started afresh (another process, after a restart) routes it, and only once.
    inbox = EventInbox(db, settings)
    enroller = Enroller(client, settings)
    assert await inbox.sweep(enroller) == 1
    assert await inbox.sweep(enroller) == 0
    assert await inbox_statuses(db) == ["routed"]
    handle = client.get_workflow_handle(enrollment["workflow_id"])
    await handle.result()

    async def closed_by_the_goal() -> bool:
        async with db.session() as session:
            row = await session.get(Enrollment, enrollment["id"])
            return row is not None and row.status != EnrollmentStatus.active

    await eventually(closed_by_the_goal)
    assert await heard_event_ids(client, enrollment["workflow_id"]) == ["booked-1"]


async def test_a_batch_answers_per_event_and_its_events_are_routed(http, db, worker):
    await active_example_flow(http)
    known = (await http.post("/contacts", json={"email": "known@example.com"})).json()
    first = await http.post("/events", json={"type": "page_viewed", "contact_id": known["id"], "event_id": "seen-before"})
    assert first.status_code == 202
    batch = [
        {"type": "demo_requested", "email": "Batch.Lead@Example.com", "event_id": "b-1"},
        {"type": "page_viewed", "contact_id": known["id"], "event_id": "seen-before"},
        {"type": "Not A Type", "contact_id": known["id"]},
        {"type": "page_viewed", "contact_id": 999999, "event_id": "b-4"},
        {"type": "page_viewed", "contact_id": known["id"], "event_id": "b-5"},
        {"type": "page_viewed", "contact_id": known["id"], "event_id": "b-5"},
        "not an event",
    ]
    response = await http.post("/events/batch", json=batch)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 2, 3)
    results = body["results"]
    assert [r["status"] for r in results] == ["accepted", "duplicate", "rejected", "rejected", "accepted", "duplicate", "rejected"]
    assert results[0]["contact_created"] is True and results[0]["event_id"] == "b-1"
    assert results[1]["contact_id"] == known["id"]
    assert results[2]["errors"][0]["loc"] == ["body", 2, "type"]
    assert results[3]["errors"][0]["loc"] == ["body", 3, "contact_id"] and "999999" in results[3]["errors"][0]["msg"]
    assert results[6]["errors"][0]["loc"][:2] == ["body", 6]

    async def enrolled() -> bool:
        return len((await http.get("/enrollments")).json()["items"]) == 1

    await eventually(enrolled)
    lead = (await http.get(f"/contacts/{results[0]['contact_id']}")).json()
    assert lead["email"] == "batch.lead@example.com"
    assert await count_rows(db, Event) == 3

    async def all_routed() -> bool:
        return set(await inbox_statuses(db)) == {"routed"}

    await eventually(all_routed)


async def test_a_batch_in_json_lines(http, db):
    contact = (await http.post("/contacts", json={"email": "lines@example.com"})).json()
    lines = "\n".join(json.dumps({"type": "page_viewed", "contact_id": contact["id"], "event_id": f"l-{i}"}) for i in range(3))
    response = await http.post("/events/batch", content=lines + "\n", headers={"content-type": "application/x-ndjson"})
    assert response.status_code == 200, response.text
    assert [r["event_id"] for r in response.json()["results"]] == ["l-0", "l-1", "l-2"]
    assert await count_rows(db, Event) == 3


async def test_a_batch_over_the_limit_is_refused_naming_the_setting(db, client, settings):
    app = create_app(settings.model_copy(update={"event_batch_max": 3}), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        contact = (await http.post("/contacts", json={"email": "many@example.com"})).json()
        batch = [{"type": "page_viewed", "contact_id": contact["id"]} for _ in range(4)]
        response = await http.post("/events/batch", json=batch)
        assert response.status_code == 413
        assert "event_batch_max" in response.json()["detail"] and "at most 3" in response.json()["detail"]
        not_a_list = await http.post("/events/batch", json={"type": "page_viewed", "contact_id": contact["id"]})
        assert not_a_list.status_code == 422
    assert await count_rows(db, Event) == 0


async def test_a_known_contacts_events_move_its_last_activity_and_a_duplicate_changes_nothing(http, db):
    contact = (await http.post("/contacts", json={"email": "seen@example.com"})).json()

    async def post(event_id: str, at: str, **who) -> httpx.Response:
        return await http.post("/events", params={"wait": "false"},
                               json={"type": "page_viewed", "event_id": event_id, "occurred_at": at, **who})

    first = await post("seen-1", "2026-03-01T00:00:00Z", contact_id=contact["id"])
    assert first.status_code == 202, first.text
    # The same event_id again, later and by email in another case: a duplicate, which moves nothing.
    again = await post("seen-1", "2026-05-01T00:00:00Z", email="Seen@Example.com")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["contact_id"] == contact["id"]
    # An older event of the same contact, found by email: accepted, the last activity stays the newest.
    older = await post("seen-2", "2026-01-01T00:00:00Z", email="SEEN@example.com")
    assert older.status_code == 202 and older.json()["contact_id"] == contact["id"]
    assert older.json()["contact_created"] is False
    shown = (await http.get(f"/contacts/{contact['id']}")).json()
    assert shown["last_activity_at"].startswith("2026-03-01")
    assert await count_rows(db, Event) == 2
    unknown = await post("seen-3", "2026-03-01T00:00:00Z", contact_id=contact["id"] + 1000)
    assert unknown.status_code == 404
    assert await count_rows(db, Event) == 2
