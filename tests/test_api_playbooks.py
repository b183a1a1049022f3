"""Playbooks through the API (list, read, install, simulate) and through `nurture load-playbooks`."""

from __future__ import annotations

import io

from sqlmodel import select

from nurture.models import Flow, FlowVersion, Template
from nurture.playbooks import load_playbooks
from nurture.playbooks_command import load_playbooks_command
from tests.api_support import api, count_rows  # noqa: F401  (fixture)

PLAYBOOKS = load_playbooks()
TOTAL_TEMPLATES = sum(len(p.templates) for p in PLAYBOOKS)


async def test_list_and_read_playbooks(api):
    listed = await api.get("/playbooks", params={"limit": 100})
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert body["count"] == 21
    assert [(p["number"], p["name"]) for p in body["items"]] == [(p.number, p.name) for p in PLAYBOOKS]
    cart = next(p for p in body["items"] if p["name"] == "abandoned-cart")
    assert (cart["trigger"]["event"], cart["goal"]["event"], cart["steps"]) == ("cart_abandoned", "purchase_completed", 8)

    detail = await api.get("/playbooks/birthday")
    assert detail.status_code == 200
    assert detail.json()["definition"]["trigger"] == {"type": "date", "property": "birthday", "yearly": True, "time": "09:00"}
    assert [t["key"] for t in detail.json()["template_bodies"]] == ["birthday-greeting", "birthday-gift-reminder"]
    assert (await api.get("/playbooks/no-such-playbook")).status_code == 404
    assert (await api.get("/playbooks/Not_A_Name")).status_code == 422


async def test_install_creates_the_missing_templates_and_a_draft_once(api, db):
    await api.post("/templates", json={"key": "cart-reminder", "subject": "Our own reminder", "html": "<p>mine</p>"})

    first = await api.post("/playbooks/abandoned-cart/install")
    assert first.status_code == 201, first.text
    assert first.json()["created_templates"] == ["cart-discount", "cart-last-chance"]
    assert first.json()["existing_templates"] == ["cart-reminder"]
    flow = first.json()["flow"]
    assert (flow["status"], flow["name"], flow["latest_version"]) == ("draft", "Abandoned cart", 1)
    async with db.session() as s:
        kept = (await s.exec(select(Template).where(Template.key == "cart-reminder"))).one()
        stored = (await s.exec(select(FlowVersion).where(FlowVersion.flow_id == flow["id"]))).one()
    assert kept.subject == "Our own reminder"
    assert [step["id"] for step in stored.definition["steps"]][:2] == ["wait-1h", "reminder"]

    again = await api.post("/playbooks/abandoned-cart/install")
    assert again.status_code == 200 and again.json()["created"] is False and again.json()["flow"]["id"] == flow["id"]
    assert await count_rows(db, Flow) == 1

    activated = await api.post("/playbooks/abandoned-cart/install", params={"activate": "true"})
    assert activated.json()["activated"] is True and activated.json()["flow"]["status"] == "active"
    assert activated.json()["flow"]["trigger_event"] == "cart_abandoned"


async def test_an_installed_playbook_activates_through_the_flows_api(api):
    installed = await api.post("/playbooks/welcome-double-opt-in/install")
    response = await api.post(f"/flows/{installed.json()['flow']['id']}/activate")
    assert response.status_code == 200, response.text
    assert response.json()["trigger_event"] == "newsletter_signup"


async def test_simulate_a_playbook_as_shipped(api, db):
    response = await api.post("/playbooks/abandoned-cart/simulate", json={
        "contact": {"name": "Ada", "phone": "+15550100"}, "start": "2026-03-02T09:00:00Z",
        "events": [{"at": "1d6h", "type": "purchase_completed"}],
    })
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(m["offset"], m["template"]) for m in body["messages"]] == [("1h", "cart-reminder"), ("1d", "cart-discount")]
    assert (body["exit_reason"], body["duration"]) == ("goal_met", "1d6h")
    assert await count_rows(db, Flow) == 0 and await count_rows(db, Template) == 0


async def test_load_playbooks_command_installs_all_once(db, settings):
    out, err = io.StringIO(), io.StringIO()
    assert await load_playbooks_command(settings, out, err, db=db) == 0
    assert len(out.getvalue().splitlines()) == 21 and err.getvalue() == ""
    async with db.session() as s:
        flows = (await s.exec(select(Flow).order_by(Flow.id))).all()
    assert [f.name for f in flows] == [p.flow.name for p in PLAYBOOKS]
    assert {f.status for f in flows} == {"draft"}
    assert await count_rows(db, Template) == TOTAL_TEMPLATES

    again = io.StringIO()
    assert await load_playbooks_command(settings, again, err, db=db) == 0
    assert await count_rows(db, Flow) == 21
    assert all("exists" in line for line in again.getvalue().splitlines())


async def test_load_playbooks_command_activates_and_names_unknown_playbooks(db, settings):
    settings.temporal_address = "127.0.0.1:1"  # nothing listens: date and inactivity triggers stay drafts
    out, err = io.StringIO(), io.StringIO()
    assert await load_playbooks_command(settings, out, err, activate=True, names=["birthday", "upsell"], db=db) == 0
    async with db.session() as s:
        status = {f.name: f.status for f in (await s.exec(select(Flow))).all()}
    assert status == {"Birthday": "draft", "Upsell - Starter to Pro": "active"}
    assert "Temporal is unreachable" in err.getvalue()

    unknown = io.StringIO()
    assert await load_playbooks_command(settings, out, unknown, names=["nope"], db=db) == 2
    assert "no playbook named nope" in unknown.getvalue()
