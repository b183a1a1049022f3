"""Enrollment triggers and per-flow enrollment policies, through the API and the real worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx

from nurture.enrolling import Enroller
from nurture.models import Contact, Flow
from tests.api_support import api, create_template, post_event  # noqa: F401  (fixtures)
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact, add_templates
from tests.trigger_support import TEMPLATES, batches, enrollments_of, one_email_flow  # noqa: F401


async def active_flow(api: httpx.AsyncClient, definition: dict[str, Any]) -> int:
    for step in definition["steps"]:
        key = step.get("template")
        if key and (await api.get(f"/templates/{key}")).status_code == 404:
            await create_template(api, key)
    created = await api.post("/flows", json=definition)
    assert created.status_code == 201, created.text
    activated = await api.post(f"/flows/{created.json()['id']}/activate")
    assert activated.status_code == 200, activated.text
    return created.json()["id"]


async def contact_enrollments(api: httpx.AsyncClient, contact_id: int) -> list[dict]:
    response = await api.get(f"/contacts/{contact_id}/enrollments")
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def flow_of(api: httpx.AsyncClient, enrollment_id: int) -> int:
    return (await api.get(f"/enrollments/{enrollment_id}")).json()["flow_id"]


async def test_event_triggers_filter_on_event_properties(api, worker):
    flows = {
        "pricing": await active_flow(
            api, one_email_flow({"type": "event", "event": "page_viewed", "where": [{"property": "url", "op": "matches", "value": "*/pricing*"}]})
        ),
        "security-guide": await active_flow(
            api, one_email_flow({"type": "event", "event": "content_downloaded", "where": [{"property": "topic", "value": "security"}]})
        ),
        "demo-form": await active_flow(
            api, one_email_flow({"type": "event", "event": "form_submitted", "where": [{"property": "form_id", "value": "demo-form"}]})
        ),
        "detractor": await active_flow(
            api, one_email_flow({"type": "event", "event": "nps_submitted", "where": [{"property": "score", "op": "between", "value": [0, 6]}]})
        ),
        "late-stage": await active_flow(
            api,
            one_email_flow(
                {"type": "event", "event": "deal_stage_changed", "where": [{"property": "to_stage", "op": "in", "value": ["contractsent", "closedwon"]}]}
            ),
        ),
    }
    sent = [
        ("page_viewed", {"url": "https://acme.example/Pricing?plan=pro"}, "pricing"),
        ("page_viewed", {"url": "https://acme.example/blog/pricing"}, "pricing"),
        ("page_viewed", {"url": "https://acme.example/blog/our-prices-explained"}, None),
        ("content_downloaded", {"topic": "Security"}, "security-guide"),
        ("content_downloaded", {"topic": "onboarding"}, None),
        ("form_submitted", {"form_id": "demo-form"}, "demo-form"),
        ("form_submitted", {"form_id": "newsletter"}, None),
        ("nps_submitted", {"score": 4}, "detractor"),
        ("nps_submitted", {"score": 9}, None),
        ("deal_stage_changed", {"to_stage": "closedwon"}, "late-stage"),
        ("deal_stage_changed", {"to_stage": "appointmentscheduled"}, None),
    ]
    for number, (event_type, properties, expected) in enumerate(sent):
        response = await post_event(api, type=event_type, email=f"visitor{number}@example.com", properties=properties)
        assert response.status_code == 202, response.text
        enrolled = [await flow_of(api, e) for e in response.json()["enrolled"]]
        assert enrolled == ([flows[expected]] if expected else []), (event_type, properties)

    async def welcomed(number: int):
        contact = (await api.get("/contacts", params={"email": f"visitor{number}@example.com"})).json()["items"][0]
        items = (await api.get(f"/contacts/{contact['id']}/messages")).json()["items"]
        return items and items[0]["status"] == "sent"

    await eventually(lambda: welcomed(0))  # the enrollment ran in Temporal and sent its email


async def test_property_trigger_enrolls_when_the_contact_starts_to_match_and_unenrolls_when_it_stops(api, worker):
    flow_id = await active_flow(
        api,
        one_email_flow(
            {"type": "property", "condition": {"property": "lifecycle_stage", "op": "eq", "value": "customer"}},
            wait="30d",
            enrollment={"unenroll_when_trigger_stops_matching": True},
        ),
    )
    lead = (await api.post("/contacts", json={"email": "lead@example.com", "lifecycle_stage": "lead"})).json()
    assert await contact_enrollments(api, lead["id"]) == []

    became = await api.patch(f"/contacts/{lead['id']}", json={"lifecycle_stage": "customer"})
    assert became.status_code == 200
    [enrollment] = await contact_enrollments(api, lead["id"])
    assert enrollment["flow_id"] == flow_id and enrollment["status"] == "active"

    async def welcomed():
        items = (await api.get(f"/contacts/{lead['id']}/messages")).json()["items"]
        return items and items[0]["status"] == "sent"

    await eventually(welcomed)
    # Still a customer: another change is no new start.
    await api.patch(f"/contacts/{lead['id']}", json={"company": "Initech"})
    await api.post("/contacts", json={"email": "lead@example.com", "properties": {"plan": "pro"}})
    assert len(await contact_enrollments(api, lead["id"])) == 1

    await api.patch(f"/contacts/{lead['id']}", json={"lifecycle_stage": "evangelist"})

    async def left():
        [row] = await contact_enrollments(api, lead["id"])
        return row if row["status"] == "exited" else None

    row = await eventually(left)
    assert row["exit_reason"] == "criteria_no_longer_match"

    # Created already matching: enrolled at once (a new contact did not match before).
    fresh = await api.post("/contacts", json={"email": "signed@example.com", "lifecycle_stage": "customer"})
    assert fresh.status_code == 201
    [new_enrollment] = await contact_enrollments(api, fresh.json()["id"])
    assert new_enrollment["flow_id"] == flow_id


async def test_suppression_keeps_contacts_out_of_every_kind_of_enrollment(api, worker):
    suppress = {"suppress": [{"property": "lifecycle_stage", "op": "eq", "value": "customer"}, {"tag": "do-not-nurture"}]}
    event_flow = await active_flow(api, one_email_flow({"type": "event", "event": "ebook_downloaded"}, enrollment=suppress))
    manual_flow = await active_flow(api, one_email_flow({"type": "manual"}, enrollment=suppress))

    customer = (await api.post("/contacts", json={"email": "cust@example.com", "lifecycle_stage": "customer"})).json()
    tagged = (await api.post("/contacts", json={"email": "tagged@example.com", "tags": ["do-not-nurture"]})).json()
    prospect = (await api.post("/contacts", json={"email": "prospect@example.com", "lifecycle_stage": "lead"})).json()

    for contact in (customer, tagged):
        response = await post_event(api, type="ebook_downloaded", contact_id=contact["id"])
        assert response.status_code == 202 and response.json()["enrolled"] == []
        refused = await api.post(f"/flows/{manual_flow}/enrollments", json={"contact_id": contact["id"]})
        assert refused.status_code == 409 and "suppression" in refused.json()["detail"]
    welcomed = await post_event(api, type="ebook_downloaded", contact_id=prospect["id"])
    assert [await flow_of(api, e) for e in welcomed.json()["enrolled"]] == [event_flow]
    assert (await api.post(f"/flows/{manual_flow}/enrollments", json={"contact_id": prospect["id"]})).status_code == 201


async def test_reenrollment_after_exit_starts_a_workflow_of_its_own(api, worker, db):
    flow_id = await active_flow(api, one_email_flow({"type": "event", "event": "cart_abandoned"}, enrollment={"reenroll": "after_exit"}))
    first = await post_event(api, type="cart_abandoned", email="shopper@example.com", properties={"cart_value": 80})
    contact_id = first.json()["contact_id"]
    [first_id] = first.json()["enrolled"]

    async def completed(count: int):
        rows = await contact_enrollments(api, contact_id)
        return rows if sum(r["status"] == "completed" for r in rows) >= count else None

    await eventually(lambda: completed(1))
    second = await post_event(api, type="cart_abandoned", contact_id=contact_id, properties={"cart_value": 120})
    [second_id] = second.json()["enrolled"]
    assert second_id != first_id
    rows = await eventually(lambda: completed(2))
    assert [(r["flow_id"], r["sequence"]) for r in rows] == [(flow_id, 1), (flow_id, 2)]
    assert rows[1]["workflow_id"] == f"{rows[0]['workflow_id']}-2" and rows[0]["run_id"] != rows[1]["run_id"]
    # The enrollment's detail and history are its own workflow's.
    for row in rows:
        detail = (await api.get(f"/enrollments/{row['id']}")).json()
        assert detail["workflow"]["workflow_id"] == row["workflow_id"] and detail["workflow"]["status"] == "completed"
        history = (await api.get(f"/enrollments/{row['id']}/history")).json()
        assert history["workflow_id"] == row["workflow_id"] and history["status"] == "completed"

    async def two_sent():
        items = (await api.get(f"/contacts/{contact_id}/messages")).json()["items"]
        return items if len(items) == 2 and all(m["status"] == "sent" for m in items) else None

    assert [m["step_id"] for m in await eventually(two_sent)] == ["send", "send"]  # each enrollment sent once


async def test_never_reenroll_is_the_default(api, worker):
    await active_flow(api, one_email_flow({"type": "event", "event": "purchase"}))
    first = await post_event(api, type="purchase", email="buyer@example.com", properties={"order_id": "A1"})
    contact_id = first.json()["contact_id"]

    async def completed():
        rows = await contact_enrollments(api, contact_id)
        return rows if rows and rows[0]["status"] == "completed" else None

    await eventually(completed)
    again = await post_event(api, type="purchase", contact_id=contact_id, properties={"order_id": "A2"})
    assert again.json()["enrolled"] == []
    assert len(await contact_enrollments(api, contact_id)) == 1


async def test_reenroll_after_days_counts_from_the_previous_start(db, client, settings, worker, temporal_env):
    await add_templates(db, TEMPLATES)
    flow = await add_active_flow(
        db, one_email_flow({"type": "manual"}, enrollment={"reenroll": "after_days", "reenroll_after_days": 7})
    )
    contact = await add_contact(db)
    enroller = Enroller(client, settings)
    start = await temporal_env.get_current_time()

    async def admit(at):
        async with db.session() as s:
            admission = await enroller.admit(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id), now=at)
            await s.commit()
            return admission

    first = await admit(start)
    assert first.created and first.enrollment is not None
    await eventually(lambda: _status(db, flow.id, "completed"))

    too_soon = await admit(start + timedelta(days=6))
    assert not too_soon.created and too_soon.skipped == "already_enrolled"
    later = await admit(start + timedelta(days=7, minutes=1))
    assert later.created and later.enrollment is not None and later.enrollment.sequence == 2


async def _status(db, flow_id: int, status: str) -> bool:
    rows = await enrollments_of(db, flow_id)
    return bool(rows) and rows[-1].status == status


async def test_inactivity_flow_lets_the_contact_go_at_its_next_activity(api, db, batches, temporal_env):
    await add_templates(db, TEMPLATES)
    at = (await temporal_env.get_current_time()).replace(microsecond=0)
    flow = await add_active_flow(
        db,
        one_email_flow(
            {"type": "inactivity", "days": 30}, template="nudge", wait="14d",
            enrollment={"unenroll_when_trigger_stops_matching": True},
        ),
    )
    idle = await add_contact(db, "idle@example.com", last_activity_at=at - timedelta(days=45))
    assert (await batches.scan([flow.id], at)).flows[0].enrolled == 1

    async def sent():
        items = (await api.get(f"/contacts/{idle.id}/messages")).json()["items"]
        return items and items[0]["status"] == "sent"

    await eventually(sent)
    came_back = await post_event(
        api, type="page_viewed", contact_id=idle.id, properties={"url": "/pricing"}, occurred_at=(at + timedelta(minutes=5)).isoformat()
    )
    assert came_back.status_code == 202

    async def left():
        [row] = await contact_enrollments(api, idle.id)
        return row if row["status"] == "exited" else None

    assert (await eventually(left))["exit_reason"] == "criteria_no_longer_match"
