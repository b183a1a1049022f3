"""Finding enrollments through Temporal visibility, on the real dev server (the test server has no
custom search attributes), checked against the database index the API's own pages use."""

from __future__ import annotations

from collections import Counter

import httpx

from activities.email.providers import OutboxProvider
from api.main import create_app
from tests.api_support import create_template
from tests.conftest import eventually
from worker.main import build_worker

FLOW = {
    "name": "Visible",
    "trigger": {"type": "manual"},
    "goal": {"event": "meeting_booked"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "hello"},
        {"id": "route", "type": "branch", "condition": {"property": "fast", "op": "eq", "value": True}, "then": "bye", "else": "hold"},
        {"id": "hold", "type": "delay", "duration": "1h"},
        {"id": "bye", "type": "send_email", "template": "bye"},
    ],
}




async def database_groups(api: httpx.AsyncClient, flow_id: int) -> Counter:
    page = (await api.get("/enrollments", params={"flow_id": flow_id, "limit": 500})).json()
    return Counter((row["current_step"], row["status"]) for row in page["items"])


async def visibility_groups(api: httpx.AsyncClient, flow_id: int) -> Counter:
    answer = (await api.get(f"/flows/{flow_id}/enrollments/count")).json()
    return Counter({(g["step"], g["status"]): g["count"] for g in answer["groups"]})


async def test_visibility_and_the_database_index_agree_per_step_and_status(dev_env, db, settings):
    settings = settings.model_copy(update={"temporal_search_attributes": True, "temporal_step_search_attributes": True})
    app = create_app(settings, db=db, client=dev_env.client)
    async with (
        build_worker(dev_env.client, db, OutboxProvider(settings.outbox_dir), settings),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api,
    ):
        for key in ("hello", "bye"):
            await create_template(api, key)
        flow_id = (await api.post("/flows", json=FLOW)).json()["id"]
        assert (await api.post(f"/flows/{flow_id}/activate")).status_code == 200
        contacts = {}
        for name, fast in (("ann", True), ("bob", True), ("cy", False), ("dee", False), ("eve", False)):
            contact = (await api.post("/contacts", json={"email": f"{name}@example.com", "properties": {"fast": fast}})).json()
            enrolled = await api.post(f"/flows/{flow_id}/enrollments", json={"contact_id": contact["id"]})
            assert enrolled.status_code == 201, enrolled.text
            contacts[name] = (contact["id"], enrolled.json()["id"])
        expected = Counter({("hold", "active"): 3, (None, "completed"): 2})
        await eventually(lambda: _equal(database_groups(api, flow_id), expected), timeout=20)
        await api.post("/events", json={"type": "meeting_booked", "contact_id": contacts["eve"][0]})
        expected = Counter({("hold", "active"): 2, ("hold", "exited"): 1, (None, "completed"): 2})
        await eventually(lambda: _equal(database_groups(api, flow_id), expected), timeout=20)

        # Visibility catches up with the index within moments, and then they agree.
        await eventually(lambda: _equal(visibility_groups(api, flow_id), expected), timeout=20)
        counted = (await api.get(f"/flows/{flow_id}/enrollments/count")).json()
        assert (counted["total"], counted["by_status"]) == (5, {"active": 2, "completed": 2, "exited": 1, "failed": 0})
        assert f"NurtureFlowId = '{flow_id}'" in counted["query"]

        waiting = (await api.get(f"/flows/{flow_id}/enrollments/search", params={"step": "hold", "status": "active"})).json()
        assert sorted((i["contact_id"], i["enrollment_id"]) for i in waiting["items"]) == sorted(
            [contacts["cy"], contacts["dee"]]
        )
        assert all(i["execution_status"] == "Running" and i["paused"] is False for i in waiting["items"])
        assert waiting["next_page_token"] is None and "NurtureStep = 'hold'" in waiting["query"]
        done = (await api.get(f"/flows/{flow_id}/enrollments/search", params={"status": "completed"})).json()
        assert sorted(i["contact_id"] for i in done["items"]) == sorted([contacts["ann"][0], contacts["bob"][0]])
        assert all(i["execution_status"] == "Completed" and i["step"] is None for i in done["items"])

        first = (await api.get(f"/flows/{flow_id}/enrollments/search", params={"paused": "false", "limit": 3})).json()
        rest = (
            await api.get(
                f"/flows/{flow_id}/enrollments/search",
                params={"paused": "false", "limit": 3, "page_token": first["next_page_token"]},
            )
        ).json()
        seen = [i["workflow_id"] for i in first["items"] + rest["items"]]
        assert (first["count"], len(seen), len(set(seen))) == (3, 5, 5)

        bad = await api.get(f"/flows/{flow_id}/enrollments/search", params={"step": "hold' OR 1=1"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "step"]
        bad = await api.get(f"/flows/{flow_id}/enrollments/search", params={"page_token": "%%%"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "page_token"]
        assert (await api.get("/flows/999999/enrollments/count")).status_code == 404


async def _equal(groups, expected: Counter) -> bool:
    return await groups == expected


async def test_without_step_attributes_step_and_status_queries_point_to_the_database(dev_env, db, settings):
    """The default deployment does not pay a visibility upsert per wait: asking visibility for a step
    or a status is refused with where to look instead, and the other filters still answer."""
    app = create_app(settings.model_copy(update={"temporal_search_attributes": True}), db=db, client=dev_env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as api:
        flow_id = (await api.post("/flows", json=FLOW)).json()["id"]
        for path, params in ((f"/flows/{flow_id}/enrollments/count", {}),
                             (f"/flows/{flow_id}/enrollments/search", {"step": "hold"}),
                             (f"/flows/{flow_id}/enrollments/search", {"status": "active"})):
            refused = await api.get(path, params=params)
            assert refused.status_code == 409, refused.text
            assert "NURTURE_TEMPORAL_STEP_SEARCH_ATTRIBUTES" in refused.json()["detail"]
        by_pause = await api.get(f"/flows/{flow_id}/enrollments/search", params={"paused": "false"})
        assert by_pause.status_code == 200 and by_pause.json()["items"] == []
