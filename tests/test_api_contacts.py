"""Contacts over the API: upsert by email, validation, subscriptions, pauses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nurture.models import Contact
from tests.api_support import (  # noqa: F401  (fixtures)
    active_example_flow,
    api,
    count_rows,
    enroll_by_event,
    in_future,
    locs,
    wait_for_step,
    workflow_state,
)
from tests.conftest import eventually


async def test_upsert_by_email_creates_then_updates_case_insensitively(api):
    created = await api.post(
        "/contacts",
        json={"email": "Ada.Lovelace@Example.com", "name": "Ada", "timezone": "Europe/London", "properties": {"plan": "free"}},
    )
    assert created.status_code == 201, created.text
    contact = created.json()
    assert contact["email"] == "ada.lovelace@example.com"
    assert contact["subscription_status"] == "subscribed"

    updated = await api.post(
        "/contacts",
        json={"email": "ADA.LOVELACE@example.COM", "company": "Analytical Engines", "lifecycle_stage": "lead",
              "properties": {"score": 40}},
    )
    assert updated.status_code == 200, updated.text
    again = updated.json()
    assert again["id"] == contact["id"]
    assert again["name"] == "Ada"  # not sent, kept
    assert again["company"] == "Analytical Engines"
    assert again["lifecycle_stage"] == "lead"
    assert again["properties"] == {"plan": "free", "score": 40}  # merged

    found = await api.get("/contacts", params={"email": "ada.lovelace@EXAMPLE.com"})
    assert found.status_code == 200
    assert [c["id"] for c in found.json()["items"]] == [contact["id"]]
    fetched = await api.get(f"/contacts/{contact['id']}")
    assert fetched.json()["company"] == "Analytical Engines"


async def test_invalid_timezone_or_lifecycle_stage_is_422_naming_the_field_and_writes_nothing(api, db):
    bad_zone = await api.post("/contacts", json={"email": "grace@example.com", "timezone": "Mars/Olympus_Mons"})
    assert bad_zone.status_code == 422
    assert locs(bad_zone) == [["body", "timezone"]]
    assert "Mars/Olympus_Mons" in bad_zone.json()["detail"][0]["msg"]

    bad_stage = await api.post("/contacts", json={"email": "grace@example.com", "lifecycle_stage": "prospect"})
    assert bad_stage.status_code == 422
    assert locs(bad_stage) == [["body", "lifecycle_stage"]]
    assert "lifecycle stage" in bad_stage.json()["detail"][0]["msg"]

    bad_email = await api.post("/contacts", json={"email": "not-an-email"})
    assert bad_email.status_code == 422
    assert locs(bad_email) == [["body", "email"]]
    assert await count_rows(db, Contact) == 0

    # The same checks guard PATCH, and a refused PATCH changes nothing.
    contact = (await api.post("/contacts", json={"email": "grace@example.com", "timezone": "America/New_York"})).json()
    patched = await api.patch(f"/contacts/{contact['id']}", json={"timezone": "Nowhere/Land", "name": "Grace"})
    assert patched.status_code == 422
    assert locs(patched) == [["body", "timezone"]]
    unchanged = (await api.get(f"/contacts/{contact['id']}")).json()
    assert unchanged["timezone"] == "America/New_York" and unchanged["name"] is None


async def test_patch_changes_fields_and_unknown_contact_is_404(api):
    contact = (await api.post("/contacts", json={"email": "lin@example.com", "properties": {"a": 1, "b": 2}})).json()
    patched = await api.patch(
        f"/contacts/{contact['id']}", json={"owner": "rep-7", "properties": {"b": None, "c": 3}, "email": "Lin@Example.org"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["owner"] == "rep-7"
    assert patched.json()["properties"] == {"a": 1, "c": 3}
    assert patched.json()["email"] == "lin@example.org"

    other = (await api.post("/contacts", json={"email": "taken@example.com"})).json()
    clash = await api.patch(f"/contacts/{other['id']}", json={"email": "lin@example.org"})
    assert clash.status_code == 409

    assert (await api.get("/contacts/999")).status_code == 404
    assert (await api.patch("/contacts/999", json={"name": "x"})).status_code == 404


async def test_unsubscribed_contact_is_never_resubscribed_by_an_upsert(api):
    contact = (await api.post("/contacts", json={"email": "gone@example.com", "subscription_status": "unsubscribed"})).json()
    assert contact["subscription_status"] == "unsubscribed"

    reimported = await api.post(
        "/contacts", json={"email": "GONE@example.com", "name": "Gone", "subscription_status": "subscribed"}
    )
    assert reimported.status_code == 200
    assert reimported.json()["subscription_status"] == "unsubscribed"
    assert reimported.json()["name"] == "Gone"  # the rest of the import still applies

    patched = await api.patch(f"/contacts/{contact['id']}", json={"subscription_status": "subscribed"})
    assert patched.status_code == 409
    assert (await api.get(f"/contacts/{contact['id']}")).json()["subscription_status"] == "unsubscribed"


async def test_pause_validation(api):
    contact = (await api.post("/contacts", json={"email": "rep-target@example.com"})).json()
    url = f"/contacts/{contact['id']}/pause"
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()

    in_past = await api.post(url, json={"until": past, "reason": "call booked", "paused_by": "rep-1"})
    assert in_past.status_code == 422
    assert locs(in_past) == [["body", "until"]]
    assert "future" in in_past.json()["detail"][0]["msg"]

    no_reason = await api.post(url, json={"duration": "14d", "paused_by": "rep-1"})
    assert no_reason.status_code == 422
    assert locs(no_reason) == [["body", "reason"]]
    blank_reason = await api.post(url, json={"duration": "14d", "reason": "  ", "paused_by": "rep-1"})
    assert blank_reason.status_code == 422
    assert locs(blank_reason) == [["body", "reason"]]

    no_rep = await api.post(url, json={"duration": "14d", "reason": "call"})
    assert locs(no_rep) == [["body", "paused_by"]]

    bad_duration = await api.post(url, json={"duration": "a while", "reason": "call", "paused_by": "rep-1"})
    assert bad_duration.status_code == 422
    assert locs(bad_duration) == [["body", "duration"]]

    both = await api.post(url, json={"duration": "14d", "until": future, "reason": "call", "paused_by": "rep-1"})
    assert both.status_code == 422
    assert "exactly one" in both.json()["detail"][0]["msg"]
    neither = await api.post(url, json={"reason": "call", "paused_by": "rep-1"})
    assert neither.status_code == 422

    unknown = await api.post("/contacts/4242/pause", json={"duration": "14d", "reason": "call", "paused_by": "rep-1"})
    assert unknown.status_code == 404
    assert (await api.post("/contacts/4242/resume", json={"resumed_by": "rep-1"})).status_code == 404

    assert (await api.get(f"/contacts/{contact['id']}")).json()["paused_until"] is None


async def test_pause_and_resume_reach_the_running_enrollment(api, worker, temporal_env, settings):
    # The API checks the length against the wall clock; the test server's clock runs years ahead.
    settings.max_pause_days = 365 * 200
    await active_example_flow(api)
    contact_id, enrollment_id = await enroll_by_event(api, "paused@example.com")
    await wait_for_step(api, enrollment_id, "wait-2d")
    assert (await workflow_state(api, enrollment_id))["paused"] is None

    until = in_future(await temporal_env.get_current_time(), days=30)
    paused = await api.post(
        f"/contacts/{contact_id}/pause", json={"until": until, "reason": "in a deal cycle", "paused_by": "rep-42"}
    )
    assert paused.status_code == 200, paused.text
    assert paused.json()["enrollment_ids"] == [enrollment_id]
    contact = (await api.get(f"/contacts/{contact_id}")).json()
    assert datetime.fromisoformat(contact["paused_until"]) == datetime.fromisoformat(until)
    assert contact["pause_reason"] == "in a deal cycle" and contact["paused_by"] == "rep-42"

    async def paused_in_workflow():
        state = await workflow_state(api, enrollment_id)
        return state if state["paused"] else None

    state = await eventually(paused_in_workflow)
    assert state["paused"]["paused_by"] == "rep-42"
    assert state["paused"]["reason"] == "in a deal cycle"

    resumed = await api.post(f"/contacts/{contact_id}/resume", json={"resumed_by": "rep-42", "reason": "deal lost"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["enrollment_ids"] == [enrollment_id]
    assert (await api.get(f"/contacts/{contact_id}")).json()["paused_until"] is None

    async def resumed_in_workflow():
        state = await workflow_state(api, enrollment_id)
        return state if state["paused"] is None else None

    state = await eventually(resumed_in_workflow)
    kinds = [entry["kind"] for entry in state["timeline"]]
    assert "paused" in kinds and "resumed" in kinds
    assert state["status"] == "active" and state["current_step"] == "wait-2d"


async def test_phone_lists_and_tags_are_kept_and_replaced_as_sets(api):
    created = await api.post("/contacts", json={"email": "lin@example.com", "phone": "+1 555 0100",
                                                "lists": ["newsletter"], "tags": ["vip", "webinar"]})
    assert created.status_code == 201
    body = created.json()
    assert (body["phone"], body["lists"], body["tags"]) == ("+1 555 0100", ["newsletter"], ["vip", "webinar"])

    updated = await api.patch(f"/contacts/{body['id']}", json={"tags": ["vip"]})
    assert (updated.json()["tags"], updated.json()["lists"]) == (["vip"], ["newsletter"])

    bad = await api.post("/contacts", json={"email": "lin@example.com", "phone": "call me"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "phone"
