"""The sales pause as a rep uses it over HTTP: confirmed per enrollment, extended, listed, audited."""

from __future__ import annotations

from datetime import timedelta

from nurture.models import PauseLog
from tests.api_support import active_example_flow, api, count_rows, locs, post_event  # noqa: F401
from tests.conftest import eventually
from tests.factories import add_active_flow, add_contact
from tests.flow_runner import manual_flow


async def enrolled_contact(api) -> tuple[int, int]:
    await active_example_flow(api)
    body = (await post_event(api, type="demo_requested", email="prospect@example.com")).json()
    return body["contact_id"], body["enrolled"][0]


async def waiting(api, enrollment_id):
    detail = (await api.get(f"/enrollments/{enrollment_id}")).json()
    return detail if detail["workflow"] and detail["workflow"]["current_step"] == "wait-2d" else None


async def server_days_ahead(temporal_env, settings, days: int) -> str:
    """A pause end on the test server's clock (years ahead of the wall clock the API checks)."""
    settings.max_pause_days = 365 * 200
    return (await temporal_env.get_current_time() + timedelta(days=days)).isoformat()


async def test_pause_extend_list_resume_and_the_audit_trail(api, worker, temporal_env, settings):
    contact_id, enrollment_id = await enrolled_contact(api)
    await eventually(lambda: waiting(api, enrollment_id))

    paused = await api.post(f"/contacts/{contact_id}/pause",
                            json={"until": await server_days_ahead(temporal_env, settings, 14),
                                  "reason": "Demo call on Thursday", "paused_by": "rep-jane"})
    assert paused.status_code == 200
    [confirmed] = paused.json()["enrollments"]
    assert confirmed["enrollment_id"] == enrollment_id and confirmed["current_step"] == "wait-2d"
    assert confirmed["paused_until"] == paused.json()["paused_until"]

    extended = await api.post(f"/contacts/{contact_id}/pause",
                              json={"until": await server_days_ahead(temporal_env, settings, 21),
                                    "reason": "Legal review", "paused_by": "rep-jane"})
    assert extended.json()["paused_until"] > paused.json()["paused_until"]
    listed = (await api.get("/pauses", params={"rep": "rep-jane"})).json()
    assert [(p["contact_id"], p["pause_reason"]) for p in listed] == [(contact_id, "Legal review")]
    assert (await api.get("/pauses", params={"rep": "rep-bob"})).json() == []

    resumed = await api.post(f"/contacts/{contact_id}/resume", json={"resumed_by": "rep-jane", "reason": "call done"})
    assert resumed.json()["enrollments"][0]["paused_until"] is None
    assert (await api.get("/pauses", params={"rep": "rep-jane"})).json() == []

    trail = (await api.get(f"/contacts/{contact_id}/pauses")).json()
    assert [(t["action"], t["actor"], t["reason"]) for t in trail] == [
        ("pause", "rep-jane", "Demo call on Thursday"),
        ("extend", "rep-jane", "Legal review"),
        ("resume", "rep-jane", "call done"),
    ]
    assert trail[0]["enrollment_ids"] == [enrollment_id]


async def test_a_pause_longer_than_allowed_writes_nothing(api, worker, db, settings):
    contact_id, enrollment_id = await enrolled_contact(api)
    too_long = await api.post(f"/contacts/{contact_id}/pause",
                              json={"duration": f"{settings.max_pause_days + 1}d", "reason": "x", "paused_by": "rep"})
    assert too_long.status_code == 422 and locs(too_long) == [["body", "duration"]]
    past = await api.post(f"/contacts/{contact_id}/pause",
                          json={"until": "2001-01-01T00:00:00Z", "reason": "x", "paused_by": "rep"})
    assert past.status_code == 422 and locs(past) == [["body", "until"]]
    assert (await api.post("/contacts/999999/pause", json={"duration": "1d", "reason": "x", "paused_by": "r"})).status_code == 404

    assert (await api.get(f"/contacts/{contact_id}")).json()["paused_until"] is None
    assert await count_rows(db, PauseLog) == 0
    state = (await api.get(f"/enrollments/{enrollment_id}")).json()["workflow"]
    assert state["paused"] is None


async def test_pausing_named_flows_leaves_the_others_running(api, worker, db, temporal_env, settings):
    contact_id, nurture_enrollment = await enrolled_contact(api)
    other = await add_active_flow(db, manual_flow({"id": "wait", "type": "delay", "duration": "5d"}, name="Onboarding"))
    enrolled = await api.post(f"/flows/{other.id}/enrollments", json={"contact_id": contact_id})
    other_enrollment = enrolled.json()["id"]

    paused = await api.post(f"/contacts/{contact_id}/pause",
                            json={"until": await server_days_ahead(temporal_env, settings, 7), "reason": "only the nurture",
                                  "paused_by": "rep", "flow_ids": [other.id]})

    assert [e["enrollment_id"] for e in paused.json()["enrollments"]] == [other_enrollment]
    assert (await api.get(f"/contacts/{contact_id}")).json()["paused_until"] is None  # not contact-wide
    nurture_state = (await api.get(f"/enrollments/{nurture_enrollment}")).json()["workflow"]
    assert nurture_state["paused"] is None


async def test_without_api_keys_the_body_names_the_rep_and_the_trail_says_it_was_unauthenticated(api, db):
    contact_id = (await add_contact(db, email="open@example.com", owner="rep-jane")).id
    nobody = await api.post(f"/contacts/{contact_id}/pause", json={"duration": "2d", "reason": "call"})
    assert nobody.status_code == 422 and locs(nobody) == [["body", "paused_by"]]

    paused = await api.post(f"/contacts/{contact_id}/pause",
                            json={"duration": "2d", "reason": "call", "paused_by": "rep-jane"})
    assert (paused.json()["paused_by"], paused.json()["requested_by"]) == ("rep-jane", None)
    assert [p["contact_id"] for p in (await api.get("/pauses", params={"rep": "rep-jane"})).json()] == [contact_id]
    assert locs(await api.get("/pauses")) == [["query", "rep"]]
    assert locs(await api.post(f"/contacts/{contact_id}/resume", json={})) == [["body", "resumed_by"]]

    trail = (await api.get(f"/contacts/{contact_id}/pauses")).json()
    assert [(t["actor"], t["requested_by"], t["api_key_id"], t["authenticated"]) for t in trail] == [
        ("rep-jane", None, None, False)
    ]
