"""What the console's pages show, over HTTP: the flows list's numbers, the editor's problems at
their lines, contact search, and the diagram's edges (the browser tests drive the same pages)."""

from __future__ import annotations

import re
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


async def test_a_template_preview_renders_for_a_chosen_contact_and_names_a_broken_part(console, db):
    await add_templates(db)
    ada = await add_contact(db, email="ada@example.com", name="Ada Lovelace")
    csrf = await signed_in_as(console, Role.marketer)
    page = await console.get("/app/templates/demo-welcome")
    assert page.status_code == 200 and 'id="template-form"' in page.text
    body = {"subject": "Hi {{ contact.name }}", "html": "<p>For {{ contact.email }}</p>", "contact_id": ada.id}
    shown = (await console.post("/app/templates/preview", json=body, headers={"X-CSRF-Token": csrf})).json()
    assert (shown["subject"], shown["to"]) == ("Hi Ada Lovelace", "ada@example.com")
    assert "For ada@example.com" in shown["html"] and "For ada@example.com" in shown["text"]
    broken = {**body, "html": "<p>{% if %}</p>"}
    problems = (await console.post("/app/templates/preview", json=broken, headers={"X-CSRF-Token": csrf})).json()["problems"]
    assert problems[0]["field"] == "html"
    await signed_in_as(console, Role.read_only)
    assert 'id="preview-html"' not in (await console.get("/app/templates/demo-welcome")).text
    assert (await console.post("/app/templates/preview", json=body)).status_code == 403


async def test_a_test_send_goes_to_the_signed_in_person_rendered_for_a_contact_and_is_no_flow_send(console, db, settings):
    from email import message_from_bytes, policy

    from sqlmodel import select

    from nurture.models import AuditEntry, Message

    await add_templates(db)
    ada = await add_contact(db, email="ada@example.com", name="Ada Lovelace")
    csrf = await signed_in_as(console, Role.marketer)
    assert 'id="test-send-form"' in (await console.get("/app/templates/demo-welcome")).text
    sent = await console.post("/templates/demo-welcome/test-send", json={"contact_id": ada.id}, headers={"X-CSRF-Token": csrf})
    assert sent.status_code == 200, sent.text
    assert sent.json()["to"] == "marketer@example.com"
    [eml] = list(settings.outbox_dir.glob("*.eml"))
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["To"].addresses[0].addr_spec == "marketer@example.com"  # the person, never the contact
    assert mail["Subject"] == "[Test] Thanks for your demo request, Ada Lovelace"
    assert "Hi Ada Lovelace" in mail.get_body(("html",)).get_content()
    missing = await console.post("/templates/demo-welcome/test-send", json={"contact_id": 99999}, headers={"X-CSRF-Token": csrf})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"][-1] == "contact_id"
    assert (await console.post("/templates/demo-welcome/test-send", json={})).status_code == 403  # no CSRF token
    async with db.session() as session:
        assert (await session.exec(select(Message))).all() == []  # no flow, no message, no statistics
        [audit] = (await session.exec(select(AuditEntry).where(AuditEntry.action == "template.test_sent"))).all()
    assert (audit.actor, audit.subject, audit.detail["contact_id"]) == ("marketer@example.com", "demo-welcome", ada.id)
    reader = await signed_in_as(console, Role.read_only)
    assert 'id="test-send-form"' not in (await console.get("/app/templates/demo-welcome")).text
    refused = await console.post("/templates/demo-welcome/test-send", json={}, headers={"X-CSRF-Token": reader})
    assert refused.status_code == 403 and "read_only" in refused.text
    assert len(list(settings.outbox_dir.glob("*.eml"))) == 1


async def test_the_flow_pages_counts_agree_with_the_flow_statistics(db, settings):
    """The flow page reads grouped counts (live_flow_counts); the API's statistics read every row:
    on the same rows they say the same, engagement recorded by the tracking links included."""
    from nurture.analytics import LiveStepCounts, flow_stats, live_flow_counts
    from nurture.models import Event, Message, StepVisit

    await add_templates(db)
    flow = await add_active_flow(db)
    now = utcnow()
    at_steps = [("active", "wait-2d", None), ("active", "wait-2d", None), ("exited", "wait-for-click", "goal_met"),
                ("completed", "mark-mql", None), ("exited", "case-study", "unsubscribed")]
    contacts = [await add_contact(db, email=f"p{n}@example.com") for n in range(len(at_steps))]
    async with db.session() as session:
        for n, ((status, step, reason), contact) in enumerate(zip(at_steps, contacts, strict=True)):
            enrollment = Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"wf-{n}",
                                    status=status, current_step=step, exit_reason=reason, started_at=now)
            session.add(enrollment)
            await session.flush()
            for visited in ("welcome", "wait-2d", *(["opened-welcome", step] if step != "wait-2d" else [])):
                session.add(StepVisit(enrollment_id=enrollment.id, flow_id=flow.id, flow_version=1,
                                      contact_id=contact.id, step_id=visited))
            message = Message(idempotency_key=f"k{n}", flow_id=flow.id, flow_version=1, step_id="welcome",
                              contact_id=contact.id, to_email=contact.email, template_key="demo-welcome",
                              provider="outbox", status="sent", sent_at=now,
                              opened_at=now if n < 3 else None, clicked_at=now if n == 0 else None)
            session.add(message)
            await session.flush()
            for kind in (["email_opened"] if n < 3 else []) + (["email_clicked"] if n == 0 else []):
                session.add(Event(event_id=f"{kind}-{n}", contact_id=contact.id, type=kind,
                                  properties={"message_id": message.id, "bot": False}, occurred_at=now))
        await session.commit()
        live = await live_flow_counts(session, flow.id)
        stats = await flow_stats(session, settings, flow.id)
    assert (live.entered, live.active, live.completed, live.goal_reached) == (
        stats.totals.entered, stats.totals.active, stats.totals.completed, stats.totals.goal_reached) == (5, 2, 1, 1)
    assert live.exit_reasons == stats.totals.exit_reasons
    for s in stats.steps:
        mine = live.steps.get(s.step_id) or LiveStepCounts(step_id=s.step_id)  # a step nobody reached
        assert (mine.waiting_now, mine.entered, mine.exited_here) == (s.waiting_now, s.entered, s.exited_here), s.step_id
        if s.email is not None and s.email.sent:
            assert (mine.sent, mine.opened, mine.clicked) == (s.email.sent, s.email.opened, s.email.clicked) == (5, 3, 1)


async def test_the_dashboard_shows_each_flows_funnel(console, db):
    from nurture.models import Message

    await add_templates(db)
    flow = await add_active_flow(db)
    now = utcnow()
    contacts = [await add_contact(db, email=f"d{n}@example.com") for n in range(4)]
    async with db.session() as session:
        for n, contact in enumerate(contacts):
            session.add(Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"d-{n}",
                                   status="exited" if n == 0 else "active", exit_reason="goal_met" if n == 0 else None))
            if n < 3:
                session.add(Message(idempotency_key=f"d{n}", flow_id=flow.id, step_id="welcome", contact_id=contact.id,
                                    to_email=contact.email, template_key="demo-welcome", provider="outbox", status="sent",
                                    sent_at=now, opened_at=now if n < 2 else None, clicked_at=now if n < 1 else None))
        await session.commit()
    await signed_in_as(console, Role.read_only)
    page = await console.get("/app/dashboard")
    assert page.status_code == 200
    text = " ".join(re.sub(r"<[^>]+>", " ", page.text).split())
    for stage in ("entered 4", "sent 3 (75.0%)", "opened 2 (50.0%)", "clicked 1 (25.0%)", "reached the goal 1 (25.0%)"):
        assert stage in text, stage
    assert f"{now:%m-%d}" in text  # the day's bar


async def test_the_dashboard_flags_a_flow_whose_bounces_or_unsubscribes_pass_their_thresholds(console, db, settings):
    from nurture.models import Message

    settings.anomaly_min_sample = 4
    await add_templates(db)
    noisy = await add_active_flow(db)
    calm = await add_active_flow(db)
    now = utcnow()
    contacts = [await add_contact(db, email=f"a{n}@example.com") for n in range(8)]
    async with db.session() as session:
        for n, contact in enumerate(contacts):
            flow = noisy if n < 4 else calm
            unsubscribed = n == 0
            session.add(Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"a-{n}",
                                   status="exited" if unsubscribed else "active", exit_reason="unsubscribed" if unsubscribed else None))
            session.add(Message(idempotency_key=f"a{n}", flow_id=flow.id, step_id="welcome", contact_id=contact.id,
                                to_email=contact.email, template_key="demo-welcome", provider="outbox", status="sent", sent_at=now,
                                bounced_at=now if n in (1, 2) else None, complained_at=now if n == 3 else None))
        await session.commit()
    await signed_in_as(console, Role.read_only)
    page = (await console.get("/app/dashboard")).text

    def card(flow_id: int) -> str:
        return page.split(f'<a href="/app/flows/{flow_id}">')[1].split("</section>")[0]

    assert re.findall(r'data-anomaly="(\w+)"', card(noisy.id)) == ["bounce_rate", "unsubscribe_rate"]
    assert "50.0% of sent emails bounced (2 of 4)" in card(noisy.id)
    assert "50.0% of recipients unsubscribed (2 of 4)" in card(noisy.id)  # the exit and the complaint
    assert "data-anomaly" not in card(calm.id)
    settings.anomaly_min_sample = 5  # too few sends to judge: no flag
    assert "data-anomaly" not in (await console.get("/app/dashboard")).text


async def test_a_count_opens_the_enrollments_behind_it(console, db):
    from nurture.models import StepVisit

    await add_templates(db)
    flow = await add_active_flow(db)
    people = [await add_contact(db, email=f"e{n}@example.com", name=f"Person {n}") for n in range(3)]
    async with db.session() as session:
        for n, (contact, step, status) in enumerate(zip(people, ["wait-2d", "wait-2d", "welcome"], ["active", "exited", "active"])):
            enrollment = Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"e-{n}",
                                    status=status, current_step=step, exit_reason="goal_met" if status == "exited" else None)
            session.add(enrollment)
            await session.flush()
            for visited in ["welcome", "wait-2d"][: 2 if step == "wait-2d" else 1]:
                for _ in range(2):  # a step entered twice (a loop) is one enrollment behind "entered"
                    session.add(StepVisit(enrollment_id=enrollment.id, flow_id=flow.id, flow_version=1,
                                          contact_id=contact.id, step_id=visited))
        await session.commit()
    await signed_in_as(console, Role.marketer)

    async def behind(step: str, what: str) -> list[str]:
        page = await console.get(f"/app/flows/{flow.id}/enrollments?step={step}&behind={what}")
        assert page.status_code == 200
        return sorted(re.findall(r">(Person \d)</a>", page.text))

    assert await behind("wait-2d", "waiting") == ["Person 0"]
    assert await behind("wait-2d", "exited") == ["Person 1"]
    assert await behind("wait-2d", "entered") == ["Person 0", "Person 1"]
    assert await behind("welcome", "entered") == ["Person 0", "Person 1", "Person 2"]
    page = await console.get(f"/app/flows/{flow.id}/enrollments?step=welcome&behind=entered")
    assert "3 entered welcome" in page.text


async def test_the_diagram_shows_exits_by_reason_and_each_ab_variants_sends_opens_and_clicks(console, db):
    from html import unescape

    from nurture.models import Message

    await add_templates(db)
    flow = await add_active_flow(db)
    now = utcnow()
    people = [await add_contact(db, email=f"v{n}@example.com", name=f"Person {n}") for n in range(4)]
    async with db.session() as session:
        for n, contact in enumerate(people):
            reason = ["goal_met", "unsubscribed", "goal_met", None][n]
            session.add(Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=f"v-{n}",
                                   status="exited" if reason else "active", current_step="wait-2d", exit_reason=reason))
            session.add(Message(idempotency_key=f"v{n}", flow_id=flow.id, step_id="welcome", variant="a" if n < 3 else "b",
                                contact_id=contact.id, to_email=contact.email, template_key="demo-welcome", provider="outbox",
                                status="sent", sent_at=now, opened_at=now if n < 2 else None, clicked_at=now if n == 0 else None))
        await session.commit()
    await signed_in_as(console, Role.read_only)
    page = (await console.get(f"/app/flows/{flow.id}")).text

    def box(step: str) -> str:
        svg = page.split('<div class="diagram">')[1].split("</svg>")[0]
        return svg.split(f'data-step="{step}"')[1].split("</g>")[0]

    def words(fragment: str) -> str:
        return " ".join(unescape(re.sub(r"<[^>]+>", " ", fragment)).split())

    assert "4 sent · 2 opened · 1 clicked" in words(box("welcome"))
    assert "a: 3 sent · 2 opened · 1 clicked" in words(box("welcome"))
    assert "b: 1 sent · 0 opened · 0 clicked" in words(box("welcome"))
    assert "exited: 2 goal_met · 1 unsubscribed" in words(box("wait-2d"))
    goal = re.search(r'href="([^"]*reason=goal_met)"', box("wait-2d")).group(1)
    behind = await console.get(unescape(goal))
    assert behind.status_code == 200 and "2 exited at wait-2d (goal_met)" in behind.text
    assert sorted(re.findall(r">(Person \d)</a>", behind.text)) == ["Person 0", "Person 2"]


async def test_two_versions_of_a_flow_are_shown_as_a_diff(console, db):
    await add_templates(db)
    csrf = await signed_in_as(console, Role.marketer)
    first = example_definition()
    flow_id = (await console.post("/flows", json=first, headers={"X-CSRF-Token": csrf})).json()["id"]
    second = {**first, "steps": [dict(s, duration="3d") if s["id"] == "wait-2d" else s for s in first["steps"]]}
    made = await console.post(f"/flows/{flow_id}/versions", json=second, headers={"X-CSRF-Token": csrf})
    assert made.status_code == 201, made.text
    assert f"/app/flows/{flow_id}/diff?from=1&to=2" in (await console.get(f"/app/flows/{flow_id}")).text
    diff = await console.get(f"/app/flows/{flow_id}/diff?from=1&to=2")
    assert diff.status_code == 200
    assert '<span class="removed">-  duration: 2d</span>' in diff.text
    assert '<span class="added">+  duration: 3d</span>' in diff.text
    assert (await console.get(f"/app/flows/{flow_id}/diff?from=1&to=9")).status_code == 404


async def test_writers_get_the_contact_and_enroll_forms_and_readers_do_not(console, db):
    await add_templates(db)
    flow = await add_active_flow(db)
    await signed_in_as(console, Role.marketer)
    assert 'id="contact-form"' in (await console.get("/app/contacts")).text
    assert 'id="enroll-form"' in (await console.get(f"/app/flows/{flow.id}")).text
    await signed_in_as(console, Role.read_only)
    assert 'id="contact-form"' not in (await console.get("/app/contacts")).text
    page = (await console.get(f"/app/flows/{flow.id}")).text
    assert 'id="enroll-form"' not in page and 'id="deactivate-form"' not in page and "Edit as a new version" not in page


async def test_writers_get_the_new_template_and_record_an_event_forms_and_readers_do_not(console, db):
    contact = await add_contact(db, email="ada@example.com")
    await signed_in_as(console, Role.marketer)
    templates = (await console.get("/app/templates")).text
    assert 'id="new-template-form"' in templates and 'data-api="/templates"' in templates
    page = (await console.get(f"/app/contacts/{contact.id}")).text
    assert 'id="event-form"' in page and f'name="contact_id" value="{contact.id}"' in page
    await signed_in_as(console, Role.read_only)
    assert 'id="new-template-form"' not in (await console.get("/app/templates")).text
    assert 'id="event-form"' not in (await console.get(f"/app/contacts/{contact.id}")).text


async def test_a_console_page_answers_head_as_it_answers_get(console, db):
    assert (await console.head("/app/flows")).status_code == 303  # a stranger is sent to sign in
    await signed_in_as(console, Role.read_only)
    for path in ("/app/flows", "/app/dashboard", "/app/contacts", "/app/playbooks"):
        head = await console.head(path)
        assert head.status_code == 200 and head.headers["content-type"].startswith("text/html"), path
    assert (await console.head("/app/flows/999999")).status_code == 404
    assert (await console.head("/app/users")).status_code == 403  # the same roles as GET
