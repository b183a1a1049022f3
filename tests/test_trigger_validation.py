"""Validation of the trigger kinds and enrollment policies: every problem, with its path."""

from __future__ import annotations

from typing import Any

import pytest

from nurture.flow import FlowInvalid, load_flow
from nurture.flow.triggers import DateTrigger, EnrollmentPolicy, InactivityTrigger, PropertyTrigger
from tests.api_support import api  # noqa: F401  (fixture)

STEPS = [{"id": "hello", "type": "send_email", "template": "hello"}]


def flow(trigger: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "Triggers", "trigger": trigger, "steps": STEPS, **extra}


def problems(definition: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(FlowInvalid) as caught:
        load_flow(definition)
    return [(p.path, p.message) for p in caught.value.problems]


def paths(definition: dict[str, Any]) -> list[str]:
    return [path for path, _ in problems(definition)]


def test_every_trigger_kind_loads():
    date = load_flow(flow({"type": "date", "property": "renewal_date", "offset": "-30d", "time": "09:00"})).trigger
    assert isinstance(date, DateTrigger) and date.offset is not None and date.offset.seconds == -30 * 86400
    birthday = load_flow(
        flow({"type": "date", "property": "birthday", "yearly": True}, enrollment={"reenroll": "after_exit"})
    )
    assert isinstance(birthday.trigger, DateTrigger) and birthday.trigger.yearly
    assert isinstance(birthday.enrollment, EnrollmentPolicy) and birthday.enrollment.reenroll == "after_exit"
    inactive = load_flow(flow({"type": "inactivity", "days": 90, "condition": {"property": "lifecycle_stage", "value": "customer"}}))
    assert isinstance(inactive.trigger, InactivityTrigger) and inactive.trigger.days == 90
    segment = load_flow(
        flow(
            {"type": "property", "condition": {"all": [{"list": "trial-users"}, {"property": "score", "op": "gte", "value": 50}]}},
            enrollment={"unenroll_when_trigger_stops_matching": True, "suppress": [{"tag": "competitor"}]},
        )
    )
    assert isinstance(segment.trigger, PropertyTrigger)


def test_shape_problems_name_the_trigger_field():
    assert paths(flow({"type": "date", "property": "renewal_date", "offset": "-30x"})) == ["trigger.offset"]
    assert paths(flow({"type": "date", "property": "renewal_date", "time": "9am"})) == ["trigger.time"]
    assert paths(flow({"type": "date"})) == ["trigger.property"]
    assert paths(flow({"type": "inactivity", "days": 0})) == ["trigger.days"]
    assert paths(flow({"type": "property"})) == ["trigger.condition"]
    [(path, message)] = problems(flow({"type": "segment", "condition": {"tag": "x"}}))
    assert path == "trigger" and "'property'" in message and "'inactivity'" in message
    assert paths(flow({"type": "manual"}, enrollment={"reenroll": "sometimes"})) == ["enrollment.reenroll"]
    assert paths(flow({"type": "manual"}, enrollment={"reenroll_after_days": -1})) == ["enrollment.reenroll_after_days"]
    assert paths(flow({"type": "manual"}, enrollment={"suppres": []})) == ["enrollment.suppres"]


def test_meaning_problems_are_listed_together():
    found = problems(
        flow(
            {"type": "date", "property": "email", "yearly": True, "condition": {"step": "hello", "engagement": "opened"}},
            enrollment={
                "reenroll_after_days": 30,
                "suppress": [{"property": "lifecycle_stage", "value": "client"}],
                "unenroll_when_trigger_stops_matching": True,
            },
        )
    )
    assert [path for path, _ in found] == [
        "trigger.condition",
        "trigger.property",
        "enrollment.reenroll_after_days",
        "enrollment.reenroll",
        "enrollment.suppress[0]",
        "enrollment.unenroll_when_trigger_stops_matching",
    ]
    messages = dict(found)
    assert "not a date" in messages["trigger.property"]
    assert "every year" in messages["enrollment.reenroll"]
    assert "'client' is not a lifecycle stage" in messages["enrollment.suppress[0]"]


def test_property_triggers_and_event_filters_are_checked():
    assert problems(flow({"type": "property", "condition": {"event": "page_viewed", "within": "7d"}}))[0][0] == "trigger.condition"
    assert paths(flow({"type": "manual"}, enrollment={"reenroll": "after_days"})) == ["enrollment.reenroll_after_days"]
    assert paths(flow({"type": "event", "event": "page_viewed", "where": [{"property": "url", "op": "matches", "value": 3}]})) == [
        "trigger.where[0].value"
    ]
    assert paths(flow({"type": "event", "event": "nps_submitted", "where": [{"property": "score", "op": "between", "value": 6}]})) == [
        "trigger.where[0].value"
    ]


async def test_validate_endpoint_reports_trigger_problems_with_paths(api):
    response = await api.post(
        "/flows/validate",
        json=flow({"type": "inactivity", "days": 30}, enrollment={"reenroll": "after_days", "unenroll_when_trigger_stops_matching": True}),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["valid"] is False
    assert [p["path"] for p in body["problems"]] == ["steps[0].template", "enrollment.reenroll_after_days"]
