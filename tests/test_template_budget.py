"""Templates with a budget: a template that runs too long, renders too much or cannot render is
refused when saved, fails its send for good (recorded, not retried), shows as a simulator
warning, and never holds up the API while it renders."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from nurture.models import Template
from nurture.settings import Settings
from tests.api_support import api, count_rows, locs  # noqa: F401  (fixture)
from tests.factories import add_templates
from tests.flow_runner import manual_flow, run_flow

# About ten seconds of CPU without a budget, and no output at all: a time check between
# yielded chunks would never run.
NESTED_LOOPS = "{% for a in range(100000) %}{% for b in range(3000) %}{% endfor %}{% endfor %}<p>done</p>"
HUGE_STRING = "{{ 'x' * 10**6 }}"
HUGE_RANGE = "{% for i in range(10**9) %}{{ i }}{% endfor %}"
HUGE_POWER = "{{ 9 ** 999999 }}"  # Jinja's ** is left-associative: no 10**7 here
TIMEOUT = 1.0


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"template_render_timeout_seconds": TIMEOUT})


def template_body(**fields) -> dict:
    return {"subject": "Hello {{ contact.name }}", "html": "<p>Hello {{ contact.name }}</p>", **fields}


# --- saving ------------------------------------------------------------------------


async def test_a_template_that_runs_past_the_budget_is_refused_when_saved(api, db):
    response = await api.post("/templates", json={"key": "loops", **template_body(html=NESTED_LOOPS)})

    assert response.status_code == 422, response.text
    assert locs(response) == [["body", "html"]]
    assert f"did not finish within {TIMEOUT:g}s" in response.json()["detail"][0]["msg"]
    assert await count_rows(db, Template) == 0


@pytest.mark.parametrize(
    ("field", "source", "reason"),
    [
        ("subject", HUGE_STRING, "too large"),
        ("html", HUGE_STRING, "too large"),
        ("text", HUGE_RANGE, "range"),
        ("html", HUGE_POWER, "too large"),
    ],
)
async def test_a_template_that_renders_too_much_or_fails_is_refused_naming_the_field(api, db, field, source, reason):
    created = await api.post("/templates", json={"key": "big", **template_body(**{field: source})})
    replaced = await api.put("/templates/big", json=template_body(**{field: source}))

    for response in (created, replaced):
        assert response.status_code == 422, response.text
        assert locs(response) == [["body", field]]
        assert reason in response.json()["detail"][0]["msg"].lower()
    assert await count_rows(db, Template) == 0


async def test_a_template_using_properties_the_sample_contact_lacks_is_accepted(api):
    response = await api.post("/templates", json={
        "key": "plan",
        **template_body(html="<p>{{ contact.plan.name | default('your plan') }} renews {{ contact.renewal_date }}</p>"),
    })
    assert response.status_code == 201, response.text


async def test_health_answers_while_a_hostile_template_renders(api):
    hostile = asyncio.create_task(api.post("/templates", json={"key": "loops", **template_body(html=NESTED_LOOPS)}))
    await asyncio.sleep(0.3)  # let the save reach its render

    health = await api.get("/health")

    assert health.status_code == 200, health.text
    assert not hostile.done()  # /health did not wait for the render
    assert (await hostile).status_code == 422


# --- sending ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "reason"),
    [(NESTED_LOOPS, f"did not finish within {TIMEOUT:g}s"), (HUGE_RANGE, "range"), (HUGE_STRING, "too large")],
)
async def test_a_stored_hostile_template_fails_its_send_for_good(db, client, settings, temporal_env, worker, html, reason):
    # Stored behind the API's back (or changed after activation): the send is where it shows.
    await add_templates(db, {"hostile": ("Hello {{ contact.name }}", html)})

    run = await run_flow(db, client, settings, temporal_env, manual_flow(
        {"id": "welcome", "type": "send_email", "template": "hostile"},
    ))

    [message] = run.messages
    assert (message.status, message.attempts) == ("failed", 1)  # recorded and not retried
    assert message.error.startswith("template 'hostile' does not render: html: ")
    assert reason in message.error.lower()
    assert run.result.status == "completed" and run.result.emails_sent == 0  # the contact went on


@pytest.mark.parametrize(
    ("step", "what"),
    [
        ({"type": "send_sms", "text": HUGE_RANGE}, "the text of step 'side' does not render: text: "),
        ({"type": "notify_owner", "subject": HUGE_RANGE}, "the notification of step 'side' does not render: subject: "),
        ({"type": "create_task", "title": HUGE_RANGE}, "the task of step 'side' does not render: title: "),
        ({"type": "webhook", "url": "http://127.0.0.1:9/hook", "body": {"who": HUGE_RANGE}},
         "the webhook body of step 'side' does not render: body: "),
    ],
    ids=["sms", "notify_owner", "create_task", "webhook"],
)
async def test_a_step_whose_text_does_not_render_fails_once_and_the_flow_goes_on(
    db, client, settings, temporal_env, worker, step, what
):
    settings.webhook_allow_private_networks = True  # the body fails before any call is made
    await add_templates(db)

    run = await run_flow(db, client, settings, temporal_env, manual_flow(
        {"id": "side", **step}, {"id": "hello", "type": "send_email", "template": "demo-welcome"},
    ), phone="+15550100", owner="rep@example.com")

    action = next(e for e in run.state.timeline if e.kind == "action")
    assert f"failed: {what}OverflowError: Range too big" in action.detail
    history = await client.get_workflow_handle(run.workflow_id).fetch_history()
    attempts = [e.activity_task_started_event_attributes.attempt for e in history.events
                if e.HasField("activity_task_started_event_attributes")]
    assert attempts and max(attempts) == 1  # no activity was retried
    assert [m.status for m in run.messages if m.template_key == "demo-welcome"] == ["sent"]


# --- simulating -------------------------------------------------------------------


@pytest.mark.parametrize(("subject", "reason"), [(HUGE_STRING, "too large"), (NESTED_LOOPS, "did not finish")])
async def test_the_simulator_reports_a_hostile_template_as_a_warning(api, subject, reason):
    response = await api.post("/flows/simulate", json={
        "flow": manual_flow({"id": "welcome", "type": "send_email", "template": "draft"}),
        "contact": {"name": "Ada"},
        "templates": {"draft": {"subject": subject, "html": "<p>Hi</p>"}},
        "start": datetime(2026, 3, 2, 9, tzinfo=UTC).isoformat(),
    })

    assert response.status_code == 200, response.text
    [message] = response.json()["messages"]
    assert message["status"] == "failed" and message["subject"] is None
    [warning] = response.json()["warnings"]
    assert warning.startswith("step 'welcome': template 'draft' does not render: subject: ")
    assert reason in warning
