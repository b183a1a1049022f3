"""Before going live: how many existing contacts a flow would enroll now, per trigger kind."""

from __future__ import annotations

from datetime import timedelta

from nurture.models import utcnow
from tests.api_support import api, locs, post_event  # noqa: F401  (fixtures)
from tests.factories import add_contact, add_templates
from tests.trigger_support import TEMPLATES, one_email_flow

CUSTOMER = {"property": "lifecycle_stage", "op": "eq", "value": "customer"}


async def draft(api, definition) -> int:
    response = await api.post("/flows", json=definition)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def estimate(api, flow_id: int) -> dict:
    response = await api.post(f"/flows/{flow_id}/estimate")
    assert response.status_code == 200, response.text
    return response.json()


async def test_property_trigger_estimate_counts_who_matches_now_less_exclusions(api, db, worker):
    await add_templates(db, TEMPLATES)
    flow_id = await draft(
        api,
        one_email_flow(
            {"type": "property", "condition": CUSTOMER}, wait="30d", enrollment={"suppress": [{"tag": "churn-risk"}]}
        ),
    )
    happy = [await add_contact(db, f"happy{i}@example.com", lifecycle_stage="customer") for i in range(3)]
    await add_contact(db, "gone@example.com", lifecycle_stage="customer", subscription_status="unsubscribed")
    await add_contact(db, "risky@example.com", lifecycle_stage="customer", tags=["churn-risk"])
    await add_contact(db, "lead@example.com", lifecycle_stage="lead")

    found = await estimate(api, flow_id)
    assert (found["trigger"], found["would_enroll"], found["matching"], found["examined"]) == ("property", 3, 5, 6)
    assert found["excluded"] == {"unsubscribed": 1, "suppressed": 1}
    assert found["sample_contact_ids"] == [c.id for c in happy] and found["flow_id"] == flow_id

    # Once live, a contact enrolled already is no longer counted (the flow never re-enrolls).
    assert (await api.post(f"/flows/{flow_id}/activate")).status_code == 200
    enrolled = await api.post(f"/flows/{flow_id}/enrollments", json={"contact_id": happy[0].id})
    assert enrolled.status_code == 201
    live = await estimate(api, flow_id)
    assert live["would_enroll"] == 2 and live["excluded"] == {"unsubscribed": 1, "suppressed": 1, "already_enrolled": 1}


async def test_inactivity_estimate_of_an_unsaved_flow(api, db):
    now = utcnow()
    await add_contact(db, "idle@example.com", last_activity_at=now - timedelta(days=40))
    await add_contact(db, "silent@example.com", created_at=now - timedelta(days=90))
    await add_contact(db, "busy@example.com", last_activity_at=now - timedelta(days=3))
    await add_contact(db, "fresh@example.com")

    response = await api.post("/flows/estimate", json=one_email_flow({"type": "inactivity", "days": 30}, template="nudge"))
    assert response.status_code == 200, response.text
    found = response.json()
    assert (found["trigger"], found["would_enroll"], found["flow_id"]) == ("inactivity", 2, None)
    assert "30 days" in found["basis"]

    broken = await api.post("/flows/estimate", json=one_email_flow({"type": "inactivity", "days": 0}))
    assert broken.status_code == 422 and locs(broken) == [["body", "trigger", "days"]]


async def test_date_estimate_counts_today_and_the_next_thirty_days(api, db):
    today = utcnow().date()
    await add_contact(db, "due@example.com", timezone="UTC", properties={"renewal_date": (today + timedelta(days=30)).isoformat()})
    await add_contact(db, "soon@example.com", timezone="UTC", properties={"renewal_date": (today + timedelta(days=45)).isoformat()})
    await add_contact(db, "far@example.com", timezone="UTC", properties={"renewal_date": (today + timedelta(days=120)).isoformat()})
    await add_contact(db, "none@example.com", timezone="UTC")
    flow_id = await draft(
        api, one_email_flow({"type": "date", "property": "renewal_date", "offset": "-30d", "time": "00:00"}, template="renewal-soon")
    )

    found = await estimate(api, flow_id)
    assert (found["would_enroll"], found["upcoming_30d"], found["examined"]) == (1, 1, 4)


async def test_event_estimate_counts_contacts_with_the_event_in_the_last_thirty_days(api, db):
    flow_id = await draft(
        api,
        one_email_flow({"type": "event", "event": "page_viewed", "where": [{"property": "url", "op": "matches", "value": "*/pricing*"}]}),
    )
    now = utcnow()
    for email, url, days_ago in (
        ("a@example.com", "https://acme.example/pricing", 2),
        ("a@example.com", "https://acme.example/pricing/enterprise", 1),  # the same contact counts once
        ("b@example.com", "https://acme.example/pricing", 20),
        ("c@example.com", "https://acme.example/pricing", 45),  # too long ago
        ("d@example.com", "https://acme.example/careers", 1),  # another page
    ):
        response = await post_event(
            api, type="page_viewed", email=email, properties={"url": url}, occurred_at=(now - timedelta(days=days_ago)).isoformat()
        )
        assert response.status_code == 202 and response.json()["enrolled"] == []  # a draft enrolls nobody

    found = await estimate(api, flow_id)
    assert (found["would_enroll"], found["matching"]) == (2, 2)
    assert "last 30 days" in found["basis"]


async def test_manual_flow_estimate_is_zero_and_says_why(api, db):
    await add_contact(db)
    flow_id = await draft(api, one_email_flow({"type": "manual"}))
    found = await estimate(api, flow_id)
    assert found["would_enroll"] == 0 and "manual" in found["basis"]
    assert (await api.post("/flows/999/estimate")).status_code == 404
    assert (await api.post(f"/flows/{flow_id}/estimate", json={"version": 7})).status_code == 404
