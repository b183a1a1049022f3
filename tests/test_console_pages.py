"""What the console's pages show, over HTTP: the flows list's numbers, the editor's problems at
their lines, contact search, and the diagram's edges (the browser tests drive the same pages)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from api.console.diagram import draw
from nurture.flow import load_flow
from nurture.models import Enrollment, utcnow
from tests.factories import add_active_flow, add_contact, add_templates, example_definition
from tests.test_console_auth import console, signed_in_as  # noqa: F401  (the fixture)
from nurture.api_keys import Role

pytestmark = pytest.mark.usefixtures("console")


async def test_the_flows_list_counts_active_recent_and_goal_per_flow(console, db):
    await add_templates(db)
    flow = await add_active_flow(db)
    now = utcnow()
    rows = [("active", None, now), ("active", None, now - timedelta(days=30)), ("exited", "goal_met", now - timedelta(days=2)),
            ("exited", "unsubscribed", now - timedelta(days=40))]
    async with db.session() as session:
        for n, (status, reason, started) in enumerate(rows):
            contact = await add_contact(db, email=f"c{n}@example.com")
            session.add(Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"wf-{n}",
                                   status=status, exit_reason=reason, started_at=started))
        await session.commit()
    await signed_in_as(console, Role.read_only)
    page = await console.get("/app/flows")
    assert page.status_code == 200
    cells = [c.strip() for c in page.text.split(f'href="/app/flows/{flow.id}"')[1].split("</tr>")[0].split('class="num">')[1:]]
    # active, entered in the last 7 days, entered, reached the goal, conversion
    assert [c.split("<")[0] for c in cells] == ["2", "2", "4", "1", "25.0%"]
    assert "New flow" not in page.text  # a read-only user is offered no write


async def test_the_editor_check_puts_each_problem_at_its_line(console, db):
    csrf = await signed_in_as(console, Role.marketer)
    text = (
        "name: Draft\n"                      # 1
        "trigger: {type: event, event: demo_requested}\n"
        "steps:\n"                           # 3
        "  - id: hello\n"                    # 4
        "    type: send_email\n"             # 5
        "    template: no-such-template\n"   # 6
        "  - id: pick\n"                     # 7
        "    type: branch\n"                 # 8
        "    condition: {step: hello, engagement: opened}\n"
        "    then: nowhere\n"                # 10
        "  - id: bye\n"
        "    type: exit\n"
    )
    headers = {"X-CSRF-Token": csrf, "Content-Type": "application/yaml"}
    checked = (await console.post("/app/flows/check", content=text, headers=headers)).json()
    assert not checked["valid"]
    assert {(p["path"], p["line"]) for p in checked["problems"]} >= {("steps[1].then", 10)}
    fixed = text.replace("then: nowhere", "then: bye")
    checked = (await console.post("/app/flows/check", content=fixed, headers=headers)).json()
    assert [(p["path"], p["line"]) for p in checked["problems"]] == [("steps[0].template", 6)]
    assert 'data-step="pick"' in checked["diagram"] and checked["definition"]["name"] == "Draft"
    broken = (await console.post("/app/flows/check", content="name: [unclosed\n", headers=headers)).json()
    assert broken["problems"][0]["line"] == 2 and broken["diagram"] is None
    refused = await console.post("/app/flows/check", content=text, headers={"Content-Type": "application/yaml"})
    assert refused.status_code == 403  # no CSRF token


async def test_a_read_only_user_cannot_open_the_editor(console, db):
    await signed_in_as(console, Role.read_only)
    assert (await console.get("/app/flows/new")).status_code == 403
    assert (await console.post("/app/flows/check", content="name: x")).status_code == 403


async def test_contact_search_by_name_tag_and_owner(console, db):
    await add_contact(db, email="ada@example.com", name="Ada Lovelace", tags=["vip", "beta"], owner="rep-1")
    await add_contact(db, email="grace@example.com", name="Grace Hopper", tags=["beta"], owner="rep-2")
    await signed_in_as(console, Role.marketer)

    async def found(query: str) -> set[str]:
        page = await console.get(f"/app/contacts?{query}")
        return {name for name in ("Ada Lovelace", "Grace Hopper") if name in page.text}

    assert await found("q=LOVE") == {"Ada Lovelace"}
    assert await found("q=grace@") == {"Grace Hopper"}
    assert await found("tag=beta") == {"Ada Lovelace", "Grace Hopper"}
    assert await found("tag=vip") == {"Ada Lovelace"}
    assert await found("tag=vi") == set()  # a whole tag, not a part of one
    assert await found("owner=rep-2") == {"Grace Hopper"}


def test_the_diagram_labels_branches_waits_and_loops_and_shows_the_goal():
    svg = str(draw(load_flow(example_definition())))
    for label in ("yes", "no", "after 2d", "email_clicked / no email_clicked in 3d", "goal: meeting_booked", "when demo_requested"):
        assert f">{label}" in svg, label
    assert svg.count('class="node ') == 8  # seven steps and the end
