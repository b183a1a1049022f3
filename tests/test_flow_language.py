"""The flow language: what a marketer may write, and the problems they are told about."""

from __future__ import annotations

from datetime import timedelta

import pytest

from nurture.flow import FlowInvalid, load_flow, parse_flow_text
from nurture.flow.conditions import evaluate
from nurture.flow.durations import parse_duration
from tests.factories import EXAMPLE_FLOW, EXAMPLE_TEMPLATES, example_definition


def problems_of(definition, templates=None) -> dict[str, str]:
    with pytest.raises(FlowInvalid) as caught:
        load_flow(definition, templates)
    return {p.path: p.message for p in caught.value.problems}


def test_the_readme_example_is_valid_yaml_and_json():
    flow = load_flow(parse_flow_text(EXAMPLE_FLOW.read_text()), set(EXAMPLE_TEMPLATES))
    assert [s.id for s in flow.steps][:3] == ["welcome", "wait-2d", "opened-welcome"]
    as_json = flow.model_dump_json(by_alias=True)
    assert load_flow(parse_flow_text(as_json, "application/json"), set(EXAMPLE_TEMPLATES)) == flow


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2d", 172800), ("1d12h", 129600), ("90m", 5400), ("1w", 604800), ("P2D", 172800), ("PT36H", 129600), (45, 45)],
)
def test_durations_read_the_way_marketers_write_them(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["", "2 days", "0d", "-1d", "d"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_problem_is_reported_with_its_path():
    flow = example_definition()
    flow["steps"][3]["next"] = "nowhere"
    flow["steps"][4]["id"] = "welcome"
    problems = problems_of(flow, templates={"demo-welcome"})

    assert problems["steps[3].next"] == "no step has the id 'nowhere'"
    assert problems["steps[4].id"] == "duplicate step id 'welcome'"
    assert problems["steps[3].template"] == "unknown template 'case-study'"


def test_structural_errors_name_the_field():
    flow = example_definition()
    flow["steps"][1]["duration"] = "two days"
    flow["steps"].append({"id": "x", "type": "teleport"})
    del flow["trigger"]["event"]
    problems = problems_of(flow)

    assert "not a duration" in problems["steps[1].duration"]
    assert "teleport" in problems["steps[7]"]
    assert problems["trigger.event"] == "Field required"


def test_unreachable_step_is_reported():
    flow = example_definition()
    flow["steps"].insert(4, {"id": "orphan", "type": "delay", "duration": "1d", "next": "mark-mql"})
    flow["steps"][3]["next"] = "wait-for-click"  # case-study already jumps; resend follows orphan now
    flow["steps"][2]["else"] = "case-study"
    problems = problems_of(flow)
    assert problems["steps[4]"] == "step 'orphan' can never be reached"
    assert problems["steps[5]"] == "step 'resend-welcome' can never be reached"


def test_goal_that_can_never_be_met_is_reported():
    flow = example_definition()
    flow["goal"] = {}
    assert "can never be met" in problems_of(flow)["goal"]
    flow["goal"] = {"condition": {"all": [
        {"property": "lifecycle_stage", "value": "customer"},
        {"property": "lifecycle_stage", "value": "lead"},
    ]}}
    assert "cannot equal" in problems_of(flow)["goal.condition"]
    flow["goal"] = {"condition": {"property": "lifecycle_stage", "value": "king"}}
    assert "not a lifecycle stage" in problems_of(flow)["goal.condition"]


def test_a_loop_that_never_waits_is_refused():
    flow = {
        "name": "spin",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "a", "type": "send_email", "template": "t"},
            {"id": "b", "type": "update_contact", "set": {"x": 1}, "next": "a"},
        ],
    }
    assert "loop that never waits" in problems_of(flow)["steps[0]"]


def test_engagement_branch_must_look_back_at_an_email_step():
    flow = example_definition()
    flow["steps"][2]["condition"] = {"step": "wait-2d", "engagement": "opened"}
    assert problems_of(flow)["steps[2].condition"] == "step 'wait-2d' does not send an email"


def test_conditions_on_contact_properties_and_engagement():
    contact = {"lifecycle_stage": "lead", "score": "72", "industry": "SaaS", "tags": ["webinar"]}
    parse = lambda c: load_flow(  # noqa: E731
        {"name": "n", "trigger": {"type": "manual"}, "steps": [
            {"id": "e", "type": "send_email", "template": "t"},
            {"id": "b", "type": "branch", "condition": c, "then": "e2"},
            {"id": "e2", "type": "send_email", "template": "t"},
        ]}
    ).steps[1].condition
    assert evaluate(parse({"property": "score", "op": "gte", "value": 70}), contact)
    assert not evaluate(parse({"property": "score", "op": "lt", "value": 70}), contact)
    assert evaluate(parse({"property": "industry", "op": "in", "value": ["saas", "fintech"]}), contact)
    assert evaluate(parse({"property": "tags", "op": "contains", "value": "webinar"}), contact)
    assert evaluate(parse({"not": {"property": "owner", "op": "exists"}}), contact)
    clicked = parse({"step": "e", "engagement": "opened"})
    assert evaluate(clicked, contact, {"e": ["clicked"]})  # a click implies an open
    assert not evaluate(clicked, contact, {})


def test_paths_name_fields_that_share_a_name_with_their_union_member():
    flow = example_definition()
    flow["trigger"]["event"] = 123
    flow["steps"][2]["condition"] = {"step": "welcome", "engagement": "forwarded"}
    problems = problems_of(flow)
    assert set(problems) == {"trigger.event", "steps[2].condition.engagement"}


def test_a_date_property_with_an_offset_is_an_instant_in_the_contacts_zone():
    from datetime import UTC, datetime

    from activities.scheduling import resolve
    from nurture.contracts import ContactSnapshot, ResolveTimeInput

    spec = ResolveTimeInput(contact=ContactSnapshot(id=1, email="a@example.com"), flow_timezone="UTC", now=datetime(2026, 3, 1, tzinfo=UTC),
                            kind="delay_until", property="webinar_at", offset_seconds=-3600)
    resolved = resolve(spec, {"webinar_at": "2026-03-20T15:00:00Z"}, "Europe/Berlin", "09:00")
    assert resolved.at == datetime(2026, 3, 20, 14, 0, tzinfo=UTC)  # an hour before, whatever the zone
