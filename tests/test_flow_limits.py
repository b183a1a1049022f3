"""Bounded flows: size, depth, aliases, durations and loops are refused with the limit named."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from nurture.flow import FlowInvalid, load_flow, parse_flow_text
from nurture.flow.durations import parse_duration, parse_offset
from nurture.flow.limits import FlowLimits
from nurture.json_depth import JsonDepthGauge


def problems_of(definition, limits: FlowLimits | None = None) -> dict[str, str]:
    with pytest.raises(FlowInvalid) as caught:
        load_flow(definition, limits=limits)
    return {p.path: p.message for p in caught.value.problems}


def text_problems(text: str, content_type: str | None = None, limits: FlowLimits | None = None) -> dict[str, str]:
    with pytest.raises(FlowInvalid) as caught:
        parse_flow_text(text, content_type, limits=limits)
    return {p.path: p.message for p in caught.value.problems}


def flow_of(steps: list[dict]) -> dict:
    return {"name": "bounded", "trigger": {"type": "manual"}, "steps": steps}


def sends(count: int) -> list[dict]:
    return [{"id": f"s{i}", "type": "send_email", "template": "t"} for i in range(count)]


ALIAS_BOMB = """\
name: bomb
trigger: {type: manual}
x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
x1: &x1 [*x0, *x0, *x0, *x0, *x0, *x0, *x0, *x0, *x0]
x2: &x2 [*x1, *x1, *x1, *x1, *x1, *x1, *x1, *x1, *x1]
x3: &x3 [*x2, *x2, *x2, *x2, *x2, *x2, *x2, *x2, *x2]
x4: &x4 [*x3, *x3, *x3, *x3, *x3, *x3, *x3, *x3, *x3]
x5: &x5 [*x4, *x4, *x4, *x4, *x4, *x4, *x4, *x4, *x4]
x6: &x6 [*x5, *x5, *x5, *x5, *x5, *x5, *x5, *x5, *x5]
x7: &x7 [*x6, *x6, *x6, *x6, *x6, *x6, *x6, *x6, *x6]
x8: &x8 [*x7, *x7, *x7, *x7, *x7, *x7, *x7, *x7, *x7]
steps:
  - {id: a, type: update_contact, set: {x: *x8}}
"""


# --- parsing: aliases and depth ------------------------------------------------------


def test_a_yaml_alias_bomb_is_refused_naming_the_alias_budget():
    problems = text_problems(ALIAS_BOMB, "application/yaml")
    assert "max_yaml_alias_values" in problems["body"]


def test_a_few_yaml_aliases_are_fine():
    text = """\
name: reuse
trigger: {type: manual}
steps:
  - {id: a, type: update_contact, set: &values {plan: pro, seats: 3}}
  - {id: b, type: update_contact, set: *values}
"""
    assert load_flow(parse_flow_text(text)).steps[1].set == {"plan": "pro", "seats": 3}


def test_a_recursive_yaml_alias_is_refused():
    assert "alias" in text_problems("name: &n [*n]\n")["body"]


def test_yaml_nested_10000_deep_is_refused_naming_the_depth_limit():
    deep = "name: deep\ntrigger: {type: manual}\nsteps: " + "[" * 10_000 + "]" * 10_000 + "\n"
    assert "max_nesting_depth" in text_problems(deep, "application/yaml")["body"]
    block = "name: deep\n" + "".join(" " * i + f"k{i}:\n" for i in range(2_000)) + " " * 2_000 + "v: 1\n"
    assert "max_nesting_depth" in text_problems(block)["body"]


def test_json_nested_5000_deep_is_refused_naming_the_depth_limit():
    deep = '{"name": "deep", "steps": ' + "[" * 5_000 + "]" * 5_000 + "}"
    assert "max_nesting_depth" in text_problems(deep, "application/json")["body"]


def test_brackets_inside_json_strings_do_not_count_as_depth():
    flow = flow_of([{"id": "a", "type": "update_contact", "set": {"note": "[" * 100 + '\\"{{' * 50}}])
    assert load_flow(parse_flow_text(json.dumps(flow), "application/json")).steps[0].set["note"].startswith("[[[")


def test_the_depth_limit_is_a_setting():
    nested: dict = {"v": 1}
    for _ in range(10):
        nested = {"k": nested}
    flow = flow_of([{"id": "a", "type": "update_contact", "set": nested}])
    load_flow(flow)
    assert "max_nesting_depth" in text_problems(json.dumps(flow), "application/json", FlowLimits(max_nesting_depth=8))["body"]
    problems = problems_of(flow, FlowLimits(max_nesting_depth=8))
    assert [path for path, message in problems.items() if "max_nesting_depth" in message] == ["steps[0].set.k.k.k.k.k"]


# --- size: steps and strings --------------------------------------------------------------


def test_10000_steps_are_refused_naming_the_step_limit():
    problems = problems_of(flow_of(sends(10_000)))
    assert problems["steps"] == "a flow has at most 500 steps (the max_flow_steps limit); this one has 10000"


def test_a_flow_at_the_step_limit_validates():
    steps = []
    for i in range(250):
        steps += [{"id": f"s{i}", "type": "send_email", "template": "t"}, {"id": f"d{i}", "type": "delay", "duration": "1d"}]
    assert len(load_flow(flow_of(steps)).steps) == FlowLimits().max_flow_steps == 500
    assert "max_flow_steps" in problems_of(flow_of(steps), FlowLimits(max_flow_steps=499))["steps"]


def test_long_strings_are_refused_naming_the_string_limit():
    flow = flow_of([{"id": "a", "type": "update_contact", "set": {"note": "x" * 10_001}}])
    assert "max_flow_string_length" in problems_of(flow)["steps[0].set.note"]
    flow = flow_of(sends(1))
    flow["description"] = "y" * 10_001
    assert "max_flow_string_length" in problems_of(flow)["description"]


# --- durations --------------------------------------------------------------------------


@pytest.mark.parametrize("huge", ["99999999d", "P99999999D", "9999999999999999999999s", 10**30, "999999999w"])
def test_durations_past_any_sane_bound_are_refused_not_overflowed(huge):
    with pytest.raises(ValueError, match="at most"):
        parse_duration(huge)


@pytest.mark.parametrize("huge", ["+99999999d", "-99999999y", "+9999999999mo"])
def test_offsets_past_any_sane_bound_are_refused(huge):
    with pytest.raises(ValueError, match="at most"):
        parse_offset(huge)


def test_a_huge_delay_is_refused_at_its_path_naming_the_limit():
    flow = flow_of([{"id": "a", "type": "send_email", "template": "t"}, {"id": "w", "type": "delay", "duration": "99999999d"}])
    assert "at most" in problems_of(flow)["steps[1].duration"]
    flow["steps"][1]["duration"] = "3651d"
    assert "max_duration_days" in problems_of(flow)["steps[1].duration"]
    flow["steps"][1]["duration"] = "3650d"
    assert load_flow(flow).steps[1].duration == timedelta(days=3650)
    assert "max_duration_days" in problems_of(flow, FlowLimits(max_duration_days=30))["steps[1].duration"]


def test_every_duration_and_offset_in_a_flow_is_bounded():
    flow = flow_of([
        {"id": "w", "type": "wait_for_event", "event": "replied", "timeout": "4000d"},
        {"id": "u", "type": "delay_until", "property": "renewal", "offset": "-4000d"},
        {"id": "t", "type": "create_task", "title": "call", "due_in": "4000d"},
    ])
    flow["silence_limit"] = "4000d"
    problems = problems_of(flow)
    for path in ("steps[0].timeout", "steps[1].offset", "steps[2].due_in", "silence_limit"):
        assert "max_duration_days" in problems[path], path


# --- loops ------------------------------------------------------------------------------


def test_a_next_loop_that_waits_but_has_no_bound_is_refused_with_its_path():
    flow = flow_of([
        {"id": "send", "type": "send_email", "template": "t"},
        {"id": "pause", "type": "delay", "duration": "1s", "next": "send"},
    ])
    problem = problems_of(flow)["steps[0]"]
    assert "steps[0] -> steps[1] -> steps[0]" in problem and "max_loops" in problem


def test_a_loop_through_branches_is_refused_with_the_loop_path():
    flow = flow_of([
        {"id": "start", "type": "send_email", "template": "t"},
        {"id": "wait", "type": "wait_for_event", "event": "clicked", "timeout": "2d", "on_timeout": "again"},
        {"id": "done", "type": "exit"},
        {"id": "again", "type": "branch", "condition": {"property": "x", "op": "exists"}, "then": "start", "else": "done"},
    ])
    assert "steps[0] -> steps[1] -> steps[3] -> steps[0]" in problems_of(flow)["steps[0]"]


def test_a_goto_loop_that_waits_is_bounded_and_valid():
    flow = flow_of([
        {"id": "send", "type": "send_email", "template": "t"},
        {"id": "pause", "type": "delay", "duration": "1d"},
        {"id": "again", "type": "goto", "target": "send", "max_loops": 3},
    ])
    assert load_flow(flow).steps[2].max_loops == 3


def test_a_goto_whose_way_on_loops_back_too_is_unbounded():
    flow = flow_of([
        {"id": "send", "type": "send_email", "template": "t"},
        {"id": "pause", "type": "delay", "duration": "1d"},
        {"id": "again", "type": "goto", "target": "send", "max_loops": 3, "next": "send"},
    ])
    assert "steps[0] -> steps[1] -> steps[2] -> steps[0] is a loop without a bound" in problems_of(flow)["steps[0]"]


def test_a_goto_loop_that_never_waits_is_refused():
    flow = flow_of([
        {"id": "send", "type": "send_email", "template": "t"},
        {"id": "again", "type": "goto", "target": "send", "max_loops": 3},
    ])
    assert "loop that never waits" in problems_of(flow)["steps[0]"]


def test_a_long_chain_of_bounded_loops_validates():
    steps = []
    for i in range(166):
        steps += [
            {"id": f"s{i}", "type": "send_email", "template": "t"},
            {"id": f"d{i}", "type": "delay", "duration": "1d"},
            {"id": f"g{i}", "type": "goto", "target": f"s{i}", "max_loops": 2},
        ]
    assert len(load_flow(flow_of(steps)).steps) == 498


def test_the_depth_gauge_reads_a_body_in_any_chunks():
    text = json.dumps({"a": ["[[[", '\\"{', {"b": [[["x\\\\"]]]}]}).encode()  # depth 6; brackets in strings
    for size in (1, 2, 3, 7, len(text)):
        for limit, fits in ((6, True), (5, False)):
            gauge = JsonDepthGauge(limit)
            results = [gauge.feed(text[i : i + size]) for i in range(0, len(text), size)]
            assert all(results) is fits, (size, limit)
