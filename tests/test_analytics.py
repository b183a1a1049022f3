"""Flow, step, email and variant statistics and per-contact activity, after real enrollments.

One flow, six contacts with different fates; every number the endpoints show is checked
against what happened, the per-step numbers add up to the flow's, the breakdown segments
add up to the whole, and the contact activity agrees with the flow statistics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import httpx
import pytest
from structlog.testing import capture_logs

from api.main import create_app
from nurture.analytics import flow_stats
from nurture.contracts import EnrollmentResult
from nurture.models import Enrollment
from tests.api_support import create_template, wait_for_step
from tests.conftest import eventually, result_of
from tests.tracking_support import first_message, links_of

STATS_FLOW = {
    "name": "Stats",
    "trigger": {"type": "manual"},
    "goal": {"event": "meeting_booked"},
    "steps": [
        {
            "id": "hello",
            "type": "send_email",
            "variants": [{"id": "a", "template": "hello-a"}, {"id": "b", "template": "hello-b"}],
        },
        {
            "id": "wait-click",
            "type": "wait_for_event",
            "event": "email_clicked",
            "timeout": "1d",
            "on_event": "promote",
            "on_timeout": "bye",
        },
        {"id": "promote", "type": "update_contact", "lifecycle_stage": "marketingqualifiedlead"},
        {"id": "bye", "type": "send_email", "template": "bye"},
    ],
}
COUNTS = ("sent", "failed", "refused", "delivered", "opened", "clicked", "bounced", "complained", "unsubscribed", "bot_opens")


@pytest.fixture
async def api(db, client, settings) -> AsyncIterator[httpx.AsyncClient]:
    # Opens right after the send are this test's own reads, not prefetches.
    app = create_app(settings.model_copy(update={"prefetch_open_seconds": 0.0}), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json() if response.headers.get("content-type") == "application/json" else {}


async def add(api, email: str, **fields) -> int:
    body = await ok(await api.post("/contacts", json={"email": email, "lifecycle_stage": "lead", **fields}), 201)
    return body["id"]


async def enroll(api, flow_id: int, contact_id: int) -> int:
    return (await ok(await api.post(f"/flows/{flow_id}/enrollments", json={"contact_id": contact_id}), 201))["id"]


async def test_statistics_follow_what_happened_and_add_up(api, worker, db, client, settings, temporal_env):
    for key in ("hello-a", "hello-b", "bye"):
        await create_template(api, key)
    await api.put("/templates/hello-a", json={"subject": "A", "html": '<a href="https://example.com/demo">Book</a>'})
    await api.put("/templates/hello-b", json={"subject": "B", "html": '<a href="https://example.com/demo">Book</a>'})
    flow_id = (await ok(await api.post("/flows", json=STATS_FLOW), 201))["id"]
    await ok(await api.post(f"/flows/{flow_id}/activate"))

    clicker = await add(api, "clicker@example.com", properties={"source": "ads"}, tags=["vip"])
    reader = await add(api, "reader@example.com", properties={"source": "ads"})
    booker = await add(api, "booker@example.com", properties={"source": "blog"}, tags=["vip", "webinar"])
    leaver = await add(api, "leaver@example.com", properties={"source": "blog"})
    scanned = await add(api, "scanned@example.com")
    enrollments = {c: await enroll(api, flow_id, c) for c in (clicker, reader, booker, leaver, scanned)}
    messages = {}
    for contact, enrollment in enrollments.items():
        await wait_for_step(api, enrollment, "wait-click")
        messages[contact] = await first_message(db, contact)

    # What the five contacts do while the flow waits for a click.
    await ok(await api.get(links_of(messages[clicker])[1][0]), 302)
    await ok(await api.get(links_of(messages[reader])[0]))
    await ok(await api.get(links_of(messages[scanned])[0], headers={"user-agent": "Mimecast Security Scanner"}))
    await ok(await api.post("/events", json={"type": "meeting_booked", "contact_id": booker}), 202)
    await ok(await api.post("/events", json={"type": "unsubscribed", "contact_id": leaver}), 202)
    for contact in enrollments:
        async with db.session() as s:
            workflow_id = (await s.get(Enrollment, enrollments[contact])).workflow_id
        await result_of(temporal_env, client.get_workflow_handle(workflow_id, result_type=EnrollmentResult))
    await ok(await api.patch(f"/contacts/{booker}", json={"lifecycle_stage": "customer"}))
    started = (await ok(await api.get(f"/enrollments/{enrollments[scanned]}")))["started_at"]
    await ok(await api.post("/events", json={"type": "deal_stage_changed", "contact_id": clicker, "properties": {"stage": "closedwon"}}), 202)
    await ok(await api.post("/events", json={"type": "deal_stage_changed", "contact_id": reader, "properties": {"stage": "closedlost"}}), 202)
    await ok(await api.post("/events", json={  # won before this enrollment: not the flow's doing
        "type": "deal_stage_changed", "contact_id": scanned, "properties": {"stage": "closedwon"},
        "occurred_at": _before(started)}), 202)
    late = await add(api, "late@example.com", properties={"source": "ads"})
    await wait_for_step(api, await enroll(api, flow_id, late), "wait-click")
    await eventually(lambda: first_message(db, late))

    stats = await ok(await api.get(f"/flows/{flow_id}/stats"))
    totals, steps = stats["totals"], {s["step_id"]: s for s in stats["steps"]}

    assert list(steps) == ["hello", "wait-click", "promote", "bye"]
    assert (totals["entered"], totals["active"], totals["completed"], totals["exited"]) == (6, 1, 3, 2)
    assert totals["exit_reasons"] == {"goal_met": 1, "unsubscribed": 1}
    assert (totals["goal_reached"], totals["conversion_to_goal"]) == (1, round(1 / 6, 4))
    assert totals["median_time_to_goal_seconds"] > 0
    assert (totals["closed_won"], totals["closed_lost"]) == (1, 1)
    assert (totals["moved_to_next_stage"], totals["conversion_to_next_stage"]) == (2, round(2 / 6, 4))
    assert totals["waiting_now"] == {"wait-click": 1}
    assert [steps[s]["entered"] for s in steps] == [6, 6, 1, 3]
    assert [steps[s]["moved_to_next_stage"] for s in steps] == [2, 2, 1, 0]
    assert steps["wait-click"]["exited_here"] == {"goal_met": 1, "unsubscribed": 1}
    hello, bye = steps["hello"]["email"], steps["bye"]["email"]
    assert (hello["sent"], hello["opened"], hello["clicked"], hello["bot_opens"], hello["unsubscribed"]) == (6, 1, 1, 1, 1)
    assert (bye["sent"], bye["opened"], bye["clicked"]) == (3, 0, 0)
    assert steps["wait-click"]["email"] is None and steps["hello"]["type"] == "send_email"
    assert stats["anomalies"] == []  # 9 sends: below the minimum sample

    # The parts add up to the whole.
    for name in COUNTS:
        assert totals["emails"][name] == sum(s["email"][name] for s in steps.values() if s["email"]), name
        assert hello[name] == sum(v[name] for v in steps["hello"]["variants"]), name
    assert {v["variant"] for v in steps["hello"]["variants"]} <= {"a", "b"}
    assert sum(s["waiting_now"] for s in steps.values()) == totals["active"]
    assert sum(sum(s["exited_here"].values()) for s in steps.values()) == totals["exited"]
    assert steps["hello"]["entered"] == totals["entered"]

    # The same numbers per source (one value per contact, so the segments add up), and per tag.
    by_source = await ok(await api.get(f"/flows/{flow_id}/stats", params={"breakdown": "source"}))
    segments = {s["value"]: s for s in by_source["segments"]}
    assert list(segments) == ["ads", "blog", "(none)"]
    assert by_source["totals"] == totals
    for field in ("entered", "active", "completed", "exited", "goal_reached", "closed_won", "closed_lost", "moved_to_next_stage"):
        assert sum(s["totals"][field] for s in segments.values()) == totals[field], field
    for name in COUNTS:
        assert sum(s["totals"]["emails"][name] for s in segments.values()) == totals["emails"][name], name
    assert (segments["ads"]["totals"]["entered"], segments["blog"]["totals"]["goal_reached"]) == (3, 1)
    assert segments["ads"]["totals"]["emails"]["clicked"] == 1 and segments["(none)"]["totals"]["emails"]["bot_opens"] == 1
    by_tag = {s["value"]: s["totals"] for s in (await ok(await api.get(f"/flows/{flow_id}/stats?breakdown=tag")))["segments"]}
    assert {k: v["entered"] for k, v in by_tag.items()} == {"vip": 2, "webinar": 1, "(none)": 4}
    assert (by_tag["vip"]["goal_reached"], by_tag["vip"]["emails"]["clicked"]) == (1, 1)

    # Per contact, the same engagement the flow statistics count.
    activities = {c: await ok(await api.get(f"/contacts/{c}/activity")) for c in (*enrollments, late)}
    mine = [m for a in activities.values() for m in a["messages"] if m["flow_id"] == flow_id]
    assert len(mine) == totals["emails"]["sent"]
    assert sum(1 for m in mine if m["opened_at"]) == totals["emails"]["opened"]
    assert sum(1 for m in mine if m["clicked_at"]) == totals["emails"]["clicked"]
    assert sum(m["bot_opens"] for m in mine) == totals["emails"]["bot_opens"]
    assert sum(1 for m in mine if m["unsubscribed_at"]) == totals["emails"]["unsubscribed"]
    click = activities[clicker]
    assert click["messages"][0]["clicked_urls"] == ["https://example.com/demo"]
    assert click["first_activity_at"] <= click["last_activity_at"] and click["emails"]["sent"] == 2
    assert click["first_email_at"] < click["last_email_at"]
    assert activities[late]["first_activity_at"] is None and activities[late]["emails"]["sent"] == 1

    # A flow whose rates pass lowered thresholds is flagged, and says so in the log.
    strict = settings.model_copy(update={"anomaly_min_sample": 5, "anomaly_unsubscribe_rate": 0.05})
    with capture_logs() as logs:
        async with db.session() as s:
            flagged = await flow_stats(s, strict, flow_id)
    [anomaly] = flagged.anomalies
    assert (anomaly.kind, anomaly.sample, anomaly.rate) == ("unsubscribe_rate", 9, round(1 / 9, 4))
    assert [(e["event"], e["log_level"], e["kind"]) for e in logs if e["event"] == "flow_anomaly"] == [
        ("flow_anomaly", "warning", "unsubscribe_rate")
    ]


def _before(iso: str) -> str:
    return (datetime.fromisoformat(iso) - timedelta(hours=1)).isoformat()


async def test_stats_input_is_checked(api):
    assert (await api.get("/flows/999999/stats")).status_code == 404
    flow_id = (await ok(await api.post("/flows", json={**STATS_FLOW, "steps": [{"id": "w", "type": "delay", "duration": "1d"}]}), 201))["id"]
    empty = await ok(await api.get(f"/flows/{flow_id}/stats"))
    assert empty["totals"]["entered"] == 0 and empty["totals"]["conversion_to_goal"] is None
    assert [s["step_id"] for s in empty["steps"]] == ["w"]
    assert (await api.get(f"/flows/{flow_id}/stats?version=7")).status_code == 404
    bad = await api.get(f"/flows/{flow_id}/stats", params={"breakdown": "source; drop table"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "breakdown"]
    assert (await api.get("/contacts/999999/activity")).status_code == 404
