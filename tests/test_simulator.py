"""The flow simulator: the README example on simulated time, through the library and through
POST /flows/simulate, and proof that a simulation sends nothing and changes nothing."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nurture.contracts import ContactSnapshot
from nurture.flow import load_flow
from nurture.models import Contact, Enrollment, Event, Message, SmsMessage, Task
from nurture.simulation_models import HypotheticalContact, ScriptedEvent, TemplateText
from simulation.simulator import Simulator
from simulation.stand_ins import SimulationActivities, World
from tests.api_support import api, count_rows, locs  # noqa: F401  (fixture)
from tests.factories import EXAMPLE_TEMPLATES, add_active_flow, add_contact, add_templates, example_definition

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
TEMPLATES = {key: TemplateText(subject, html, subject) for key, (subject, html) in EXAMPLE_TEMPLATES.items()}
ADA = HypotheticalContact(name="Ada", company="Analytical Engines")


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[Simulator]:
    running = Simulator()
    yield running
    await running.shutdown()


async def run_example(simulator: Simulator, *events: dict, **options):
    return await simulator.simulate(
        load_flow(example_definition()), ADA.snapshot(), templates=TEMPLATES,
        events=[ScriptedEvent.model_validate(e) for e in events], start=START, **options,
    )


def day(n: float) -> datetime:
    return START + timedelta(days=n)


async def test_readme_example_without_an_open_resends_the_welcome_and_makes_an_mql(simulator):
    result = await run_example(simulator)

    assert result.path == ["welcome", "wait-2d", "opened-welcome", "resend-welcome", "wait-for-click", "mark-mql"]
    assert [(m.offset, m.template, m.subject) for m in result.messages] == [
        ("0s", "demo-welcome", "Thanks for your demo request, Ada"),
        ("2d", "demo-welcome-resend", "Still curious, Ada?"),
    ]
    assert [(w.step_id, w.started_at, w.ended_at, w.ended_by) for w in result.waits] == [
        ("wait-2d", START, day(2), "timer"),
        ("wait-for-click", day(2), day(5), "timer"),
    ]
    assert next(s for s in result.steps if s.step_id == "opened-welcome").outcome == "else"
    assert (result.status, result.exit_reason, result.duration, result.ended_at) == ("completed", None, "5d", day(5))
    assert result.contact.lifecycle_stage == "marketingqualifiedlead"


async def test_readme_example_with_an_open_sends_the_case_study_and_a_click_ends_the_wait(simulator):
    result = await run_example(
        simulator,
        {"at": "1d", "type": "email_opened", "step": "welcome"},
        {"at": "3d4h", "type": "email_clicked", "step": "case-study"},
    )

    assert result.path == ["welcome", "wait-2d", "opened-welcome", "case-study", "wait-for-click", "mark-mql"]
    assert [(m.at, m.template) for m in result.messages] == [(START, "demo-welcome"), (day(2), "case-study")]
    assert result.messages[1].subject == "How Analytical Engines's peers cut churn by 30%"
    click_wait = result.waits[1]
    assert (click_wait.start_offset, click_wait.end_offset, click_wait.ended_by) == ("2d", "3d4h", "event")
    assert [(e.offset, e.type, e.delivered) for e in result.events] == [
        ("1d", "email_opened", True), ("3d4h", "email_clicked", True)]
    assert result.duration == "3d4h"


async def test_a_goal_event_ends_the_simulation_in_the_middle_of_a_wait(simulator):
    result = await run_example(simulator, {"at": "3d", "type": "meeting_booked"}, {"at": "4d", "type": "email_clicked"})

    assert (result.status, result.exit_reason, result.ended_at) == ("exited", "goal_met", day(3))
    assert result.waits[-1].ended_by == "exit: goal_met"
    assert result.path[-1] == "wait-for-click" and result.contact.lifecycle_stage is None
    assert [(e.type, e.delivered, e.note) for e in result.events][1] == (
        "email_clicked", False, "not delivered: the enrollment had ended")


async def test_a_contact_update_can_meet_a_goal_condition(simulator):
    flow = load_flow({**example_definition(), "goal": {"condition": {"property": "lifecycle_stage", "op": "eq",
                                                                       "value": "customer"}}})
    result = await simulator.simulate(
        flow, ADA.snapshot(), templates=TEMPLATES, start=START,
        events=[ScriptedEvent.model_validate({"at": "1d12h", "update": {"lifecycle_stage": "customer"}})],
    )
    assert (result.exit_reason, result.duration, len(result.messages)) == ("goal_met", "1d12h", 1)


async def test_an_open_of_an_email_not_sent_yet_counts_for_nothing(simulator):
    result = await run_example(simulator, {"at": "1d", "type": "email_opened", "step": "case-study"})
    assert result.path[3] == "resend-welcome"
    assert result.events[0].note == "step 'case-study' had sent no email yet, so this counts for nothing"


async def test_a_send_outside_the_send_window_is_deferred_to_the_next_opening(simulator):
    flow = load_flow({
        "name": "Window", "trigger": {"type": "manual"}, "timezone": "Europe/Berlin",
        "send_window": {"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"},
        "steps": [{"id": "hello", "type": "send_email", "template": "demo-welcome"}],
    })
    saturday_noon = datetime(2026, 3, 7, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
    result = await simulator.simulate(flow, ADA.snapshot(), templates=TEMPLATES, start=saturday_noon)

    monday_nine = datetime(2026, 3, 9, 8, 0, tzinfo=UTC)
    assert [(m.at, m.template) for m in result.messages] == [(monday_nine, "demo-welcome")]
    assert [(w.type, w.started_at, w.ended_at) for w in result.waits] == [("send_deferred", saturday_noon, monday_nine)]


async def test_a_flow_longer_than_the_horizon_is_reported_still_running(simulator):
    flow = load_flow({"name": "Slow", "trigger": {"type": "manual"}, "steps": [
        {"id": "hello", "type": "send_email", "template": "demo-welcome"},
        {"id": "a-year", "type": "delay", "duration": "365d"},
        {"id": "again", "type": "send_email", "template": "demo-welcome-resend"},
    ]})
    result = await simulator.simulate(flow, ADA.snapshot(), templates=TEMPLATES, start=START, horizon=timedelta(days=30))

    assert (result.status, result.ended_at, result.duration) == ("running", day(30), "30d")
    assert [m.template for m in result.messages] == ["demo-welcome"]
    assert result.waits[0].ended_by == "horizon"
    assert result.warnings == ["still in the flow after 30d: the simulation stopped there"]


async def test_a_missing_template_is_reported_and_the_contact_goes_on(simulator):
    result = await run_example(simulator)
    without = await simulator.simulate(
        load_flow(example_definition()), ADA.snapshot(), start=START,
        templates={k: v for k, v in TEMPLATES.items() if k != "demo-welcome-resend"},
    )
    assert [m.status for m in without.messages] == ["sent", "failed"]
    assert without.warnings == ["step 'resend-welcome': template 'demo-welcome-resend' does not exist"]
    assert without.path == result.path


async def test_a_contact_the_flow_would_not_enroll_is_simulated_with_a_warning(simulator):
    flow = load_flow({**example_definition(), "enrollment": {
        "suppress": [{"property": "lifecycle_stage", "op": "eq", "value": "customer"}]}})
    customer = HypotheticalContact(name="Ada", lifecycle_stage="customer").snapshot()
    result = await simulator.simulate(flow, customer, templates=TEMPLATES, start=START)
    assert result.warnings == ["enrollment.suppress[0] matches the contact: it would not be enrolled"]
    assert result.path[0] == "welcome"


def test_the_simulator_has_a_stand_in_for_every_activity_the_workflow_calls():
    called = {method.__temporal_activity_definition.name for method in activity_methods_called()}
    world = World(contact=ContactSnapshot(id=0, email="x@example.com"), templates={}, shift=timedelta(0))
    registered = {fn.__temporal_activity_definition.name for fn in SimulationActivities(world).all()}
    assert called and called <= registered


def activity_methods_called() -> list:
    """Every activity method the workflow's calls module names (``SomeActivities.method``)."""
    import activities
    import workflows.enrollment.calls as calls

    source = Path(calls.__file__).read_text()
    names = set(re.findall(r"\b([A-Z][A-Za-z]*Activities)\.([a-z_]+)\b", source))
    classes = {name: getattr(calls, name) for name, _ in names}
    assert classes and all(c.__module__.startswith(activities.__name__) for c in classes.values())
    return [getattr(classes[cls], method) for cls, method in names]


# --- through the API -------------------------------------------------------------------


async def test_simulate_endpoint_runs_a_stored_flow_for_a_real_contact_and_changes_nothing(api, db, settings):
    await add_templates(db)
    flow = await add_active_flow(db)
    contact = await add_contact(db, email="grace@example.com", name="Grace", lifecycle_stage="lead")

    response = await api.post("/flows/simulate", json={
        "flow_id": flow.id, "contact_id": contact.id, "start": START.isoformat(),
        "events": [{"at": "1d", "type": "email_opened", "step": "welcome"}],
    })

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["path"] == ["welcome", "wait-2d", "opened-welcome", "case-study", "wait-for-click", "mark-mql"]
    assert [(m["offset"], m["subject"]) for m in body["messages"]] == [
        ("0s", "Thanks for your demo request, Grace"), ("2d", "How Analytical Engines's peers cut churn by 30%")]
    assert body["contact"]["lifecycle_stage"] == "marketingqualifiedlead"
    for model in (Message, Enrollment, Event, Task, SmsMessage):
        assert await count_rows(db, model) == 0, model.__name__
    async with db.session() as s:
        assert (await s.get(Contact, contact.id)).lifecycle_stage == "lead"
    assert not settings.outbox_dir.exists() or not any(settings.outbox_dir.iterdir())


async def test_simulate_endpoint_takes_a_draft_definition_and_draft_templates(api):
    response = await api.post("/flows/simulate", json={
        "flow": example_definition(),
        "contact": {"name": "Ada", "company": "Analytical Engines"},
        "templates": {key: {"subject": subject, "html": html} for key, (subject, html) in EXAMPLE_TEMPLATES.items()},
        "start": START.isoformat(),
    })
    assert response.status_code == 200, response.text
    assert [m["subject"] for m in response.json()["messages"]] == ["Thanks for your demo request, Ada", "Still curious, Ada?"]
    assert response.json()["duration"] == "5d"


@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"contact": {}}, 422, ["body"]),  # no flow
        ({"flow": example_definition(), "flow_id": 1, "contact": {}}, 422, ["body"]),
        ({"flow": example_definition()}, 422, ["body"]),  # no contact
        ({"flow": {**example_definition(), "steps": [{"id": "x", "type": "send_email"}]}, "contact": {}},
         422, ["body", "flow", "steps", 0]),
        ({"flow": example_definition(), "contact": {"timezone": "Mars/Olympus"}}, 422, ["body", "contact", "timezone"]),
        ({"flow": example_definition(), "contact": {}, "events": [{"at": "1d", "type": "page_viewed", "step": "welcome"}]},
         422, ["body", "events", 0]),
        ({"flow": example_definition(), "contact": {}, "events": [{"at": "soon", "type": "x"}]},
         422, ["body", "events", 0, "at"]),
    ],
)
async def test_simulate_endpoint_names_the_field_of_bad_input(api, body, status, where):
    response = await api.post("/flows/simulate", json=body)
    assert response.status_code == status, response.text
    assert any(loc[: len(where)] == where for loc in locs(response)), locs(response)


async def test_simulate_endpoint_answers_404_for_unknown_flows_and_contacts(api, db):
    await add_templates(db)
    flow = await add_active_flow(db)
    unknown_flow = await api.post("/flows/simulate", json={"flow_id": 999, "contact": {}})
    unknown_contact = await api.post("/flows/simulate", json={"flow_id": flow.id, "contact_id": 999})
    unknown_version = await api.post("/flows/simulate", json={"flow_id": flow.id, "version": 7, "contact": {}})
    assert [r.status_code for r in (unknown_flow, unknown_contact, unknown_version)] == [404, 404, 404]
    assert await count_rows(db, Enrollment) == 0
