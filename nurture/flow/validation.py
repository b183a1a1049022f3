"""Flow validation that reports every problem at once, each with its path."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import yaml
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
from pydantic import BaseModel, ValidationError

from nurture.flow.conditions import AllCondition, EmailCondition, PropertyCondition, _condition_kind, iter_conditions
from nurture.flow.language import (
    LIFECYCLE_STAGES,
    WAITING_STEPS,
    BranchStep,
    DelayUntilStep,
    FlowDefinition,
    GotoStep,
    SendEmailStep,
    SplitStep,
    SwitchStep,
    UpdateContactStep,
)
from nurture.flow.limits import FlowLimits, InputLimitExceeded, check_json_text, load_yaml, size_problems
from nurture.flow.loops import cycles
from nurture.flow.trigger_checks import trigger_problems


class Problem(BaseModel):
    path: str
    message: str


class FlowInvalid(Exception):
    def __init__(self, problems: list[Problem]):
        super().__init__("; ".join(f"{p.path}: {p.message}" for p in problems))
        self.problems = problems


def parse_flow_text(text: str, content_type: str | None = None, limits: FlowLimits | None = None) -> Any:
    """Read a flow written as JSON or YAML (YAML is a superset, so it parses both), within the limits."""
    limits = limits or FlowLimits()
    try:
        if content_type and "json" in content_type:
            check_json_text(text, limits)
            return json.loads(text)
        return load_yaml(text, limits)
    except InputLimitExceeded as exc:
        raise FlowInvalid([Problem(path="body", message=str(exc))]) from exc
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise FlowInvalid([Problem(path="body", message=f"not valid JSON or YAML: {exc}")]) from exc


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "flow"


def _structural_problems(error: ValidationError, data: Any) -> list[Problem]:
    return [Problem(path=_path(_written_loc(item["loc"], data)), message=item["msg"]) for item in error.errors()]


def _written_loc(loc: tuple, data: Any) -> list:
    """Drop the union tags pydantic puts in a location: keep only what a person wrote.

    A discriminated union's location names the member right after the field that
    holds it (``steps.7.send_email.template``); the member is the node's ``type``
    (steps, triggers) or its condition kind.
    """
    kept: list = []
    node, tag_skipped = data, False
    for part in loc:
        if not tag_skipped and isinstance(node, dict) and isinstance(part, str) and part in _tags_of(node):
            tag_skipped = True
            continue
        if isinstance(node, dict) and part in node:
            node, tag_skipped = node[part], False
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node, tag_skipped = node[part], False
        else:
            node = None
        kept.append(part)
    return kept


def _tags_of(node: dict) -> set[str]:
    tags = {str(node["type"])} if "type" in node else set()
    kind = _condition_kind(node)
    if isinstance(kind, str):  # as written: it may be a list or anything else that is refused
        tags.add(kind)
    return tags


def load_flow(data: Any, known_templates: set[str] | None = None, limits: FlowLimits | None = None) -> FlowDefinition:
    """Parse and check a flow; raise FlowInvalid listing every problem."""
    limits = limits or FlowLimits()
    oversized = size_problems(data, limits)
    if oversized:
        raise FlowInvalid([Problem(path=_path(loc), message=message) for loc, message in oversized])
    try:
        flow = FlowDefinition.model_validate(data, context=limits.validation_context())
    except ValidationError as exc:
        raise FlowInvalid(_structural_problems(exc, data)) from exc
    problems = semantic_problems(flow, known_templates)
    if problems:
        raise FlowInvalid(problems)
    return flow


def semantic_problems(flow: FlowDefinition, known_templates: set[str] | None = None) -> list[Problem]:
    problems: list[Problem] = []
    index: dict[str, int] = {}
    for i, step in enumerate(flow.steps):
        if step.id in index:
            problems.append(Problem(path=f"steps[{i}].id", message=f"duplicate step id '{step.id}'"))
        else:
            index[step.id] = i

    problems += _timezone_problems(flow.timezone, "timezone")
    if flow.send_window is not None and flow.send_window.start >= flow.send_window.end:
        problems.append(Problem(path="send_window.end", message="the window must end after it starts"))
    for i, step in enumerate(flow.steps):
        where = f"steps[{i}]"
        for path, target in _references(step, where):
            if target not in index:
                problems.append(Problem(path=path, message=f"no step has the id '{target}'"))
        if isinstance(step, SendEmailStep):
            problems += _send_problems(step, where, known_templates)
        if isinstance(step, DelayUntilStep):
            if (step.date is None) == (step.property is None):
                problems.append(Problem(path=where, message="delay_until needs exactly one of 'date' or 'property'"))
        if isinstance(step, SwitchStep):
            for c, case in enumerate(step.cases):
                problems += _condition_problems(case.condition, f"{where}.cases[{c}].condition", flow, index, i)
        if isinstance(step, SplitStep):
            total = sum(p.percent for p in step.paths)
            if total != 100:
                problems.append(Problem(path=f"{where}.paths", message=f"percentages add up to {total}, not 100"))
        if isinstance(step, BranchStep):
            if step.next is not None:
                problems.append(Problem(path=f"{where}.next", message="a branch goes on through 'then' and 'else'"))
            if step.then is None and step.else_ is None:
                problems.append(Problem(path=f"{where}.then", message="a branch needs 'then' or 'else'"))
            problems += _condition_problems(step.condition, f"{where}.condition", flow, index, i)
        if isinstance(step, UpdateContactStep):
            if not step.changes_anything():
                problems.append(Problem(path=where, message="update_contact changes nothing"))
            if step.lifecycle_stage is not None and step.lifecycle_stage not in LIFECYCLE_STAGES:
                problems.append(_stage_problem(f"{where}.lifecycle_stage", step.lifecycle_stage))

    if not any(p.message.startswith("duplicate") or p.message.startswith("no step") for p in problems):
        problems += _reachability_problems(flow)
    if flow.goal is not None:
        problems += _goal_problems(flow)
    problems += [Problem(path=path, message=message) for path, message in trigger_problems(flow)]
    return problems


def _references(step, where: str) -> list[tuple[str, str]]:
    refs = []
    for field in ("next", "then", "else_", "on_event", "on_timeout", "default", "target",
                  "on_won", "on_lost", "on_returned", "on_silence"):
        target = getattr(step, field, None)
        if target is not None:
            refs.append((f"{where}.{'else' if field == 'else_' else field}", target))
    for c, case in enumerate(getattr(step, "cases", [])):
        refs.append((f"{where}.cases[{c}].goto", case.goto))
    for p, path in enumerate(getattr(step, "paths", [])):
        refs.append((f"{where}.paths[{p}].goto", path.goto))
    return refs


def _send_problems(step: SendEmailStep, where: str, known_templates: set[str] | None) -> list[Problem]:
    problems = []
    if (step.template is None) == (not step.variants):
        problems.append(Problem(path=where, message="send_email needs a 'template' or 'variants', not both"))
    if step.variants:
        seen: set[str] = set()
        for v, variant in enumerate(step.variants):
            if variant.id in seen:
                problems.append(Problem(path=f"{where}.variants[{v}].id", message=f"duplicate variant id '{variant.id}'"))
            seen.add(variant.id)
    if known_templates is not None:
        if step.template is not None and step.template not in known_templates:
            problems.append(Problem(path=f"{where}.template", message=f"unknown template '{step.template}'"))
        for v, variant in enumerate(step.variants):
            if variant.template not in known_templates:
                problems.append(
                    Problem(path=f"{where}.variants[{v}].template", message=f"unknown template '{variant.template}'")
                )
    return problems


def _timezone_problems(name: str, path: str) -> list[Problem]:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return [Problem(path=path, message=f"'{name}' is not a time zone (use an IANA name like Europe/Berlin)")]
    return []


def _stage_problem(path: str, stage: Any) -> Problem:
    return Problem(path=path, message=f"'{stage}' is not a lifecycle stage ({', '.join(LIFECYCLE_STAGES)})")


def _condition_problems(condition, path: str, flow: FlowDefinition, index: dict[str, int], at: int) -> list[Problem]:
    problems = []
    for leaf in iter_conditions(condition):
        if isinstance(leaf, EmailCondition):
            target = index.get(leaf.step)
            if target is None:
                problems.append(Problem(path=path, message=f"no step has the id '{leaf.step}'"))
            elif not isinstance(flow.steps[target], SendEmailStep):
                problems.append(Problem(path=path, message=f"step '{leaf.step}' does not send an email"))
            elif target >= at:
                problems.append(Problem(path=path, message=f"email step '{leaf.step}' does not come before this branch"))
        if isinstance(leaf, PropertyCondition) and leaf.property == "lifecycle_stage":
            values = leaf.value if isinstance(leaf.value, list) else [leaf.value]
            for value in values:
                if leaf.op not in ("exists", "not_exists") and value not in LIFECYCLE_STAGES:
                    problems.append(_stage_problem(path, value))
    return problems


def _reachability_problems(flow: FlowDefinition) -> list[Problem]:
    index = flow.step_index()
    seen: set[int] = set()
    stack = [0]
    while stack:
        i = stack.pop()
        if i in seen:
            continue
        seen.add(i)
        stack += [index[s] for s in flow.successors(i) if s is not None]
    problems = [
        Problem(path=f"steps[{i}]", message=f"step '{step.id}' can never be reached")
        for i, step in enumerate(flow.steps)
        if i not in seen
    ]
    problems += _loop_problems(flow, index)
    return problems


def _loop_problems(flow: FlowDefinition, index: dict[str, int]) -> list[Problem]:
    """Every loop must be bounded by a goto (its ``max_loops``) and must wait somewhere.

    A loop whose way back is a plain ``next`` (or a branch, a wait's outcome...) runs for as long
    as the contact is enrolled, sending on each turn; one that never waits spins without end.
    """
    edges: list[list[int]] = []
    unbounded: list[list[int]] = []  # every way on but a goto's jump, which max_loops bounds
    for i, step in enumerate(flow.steps):
        targets = [index[s] if s is not None else None for s in flow.successors(i)]
        edges.append([j for j in targets if j is not None])
        ways_on = targets[1:] if isinstance(step, GotoStep) else targets  # successors() lists the jump first
        unbounded.append([j for j in ways_on if j is not None])
    problems = []
    for loop in cycles(unbounded):
        problems.append(Problem(
            path=f"steps[{loop[0]}]",
            message=f"{_loop_path(loop)} is a loop without a bound: loop back with a goto step, "
            "whose max_loops bounds how often it runs",
        ))
    waits = [isinstance(step, WAITING_STEPS) for step in flow.steps]
    spinning = [[] if waits[i] else [j for j in targets if not waits[j]] for i, targets in enumerate(edges)]
    for loop in cycles(spinning):
        problems.append(Problem(
            path=f"steps[{loop[0]}]",
            message=f"step '{flow.steps[loop[0]].id}' is in a loop that never waits ({_loop_path(loop)}): "
            "add a delay or a wait to it",
        ))
    return problems


def _loop_path(loop: list[int]) -> str:
    return " -> ".join(f"steps[{i}]" for i in [*loop, loop[0]])


def _goal_problems(flow: FlowDefinition) -> list[Problem]:
    goal = flow.goal
    assert goal is not None
    if goal.event is None and goal.condition is None:
        return [Problem(path="goal", message="a goal needs an event or a condition, or it can never be met")]
    problems = []
    if goal.where and goal.event is None:
        problems.append(Problem(path="goal.where", message="'where' filters the goal event, but no event is named"))
    if goal.condition is not None:
        problems += _impossible_condition(goal.condition, "goal.condition")
    return problems


def _impossible_condition(condition, path: str) -> list[Problem]:
    """Catch goals no contact can ever meet: a value that is no stage, an empty 'in', contradictory equals."""
    problems = []
    for leaf in iter_conditions(condition):
        if isinstance(leaf, EmailCondition):
            problems.append(Problem(path=path, message="a goal cannot depend on email engagement; use a goal event"))
        if isinstance(leaf, PropertyCondition):
            if leaf.op == "in" and not leaf.value:
                problems.append(Problem(path=path, message=f"'{leaf.property} in []' can never be true"))
            if leaf.property == "lifecycle_stage" and leaf.op in ("eq", "in"):
                values = leaf.value if isinstance(leaf.value, list) else [leaf.value]
                if not any(v in LIFECYCLE_STAGES for v in values):
                    problems.append(_stage_problem(path, leaf.value))

    if isinstance(condition, AllCondition):
        wanted: dict[str, set] = {}
        for leaf in condition.all:
            if isinstance(leaf, PropertyCondition) and leaf.op == "eq":
                wanted.setdefault(leaf.property, set()).add(str(leaf.value).lower())
        for prop, values in wanted.items():
            if len(values) > 1:
                problems.append(Problem(path=path, message=f"'{prop}' cannot equal {sorted(values)} at once"))
    return problems
