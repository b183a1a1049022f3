"""Problems with a flow's trigger and enrollment policy, each as (path, message).

Called by ``validation.semantic_problems``; kept apart so the trigger kinds can grow
without touching the step checks.
"""

from __future__ import annotations

from typing import Any

from nurture.flow.conditions import EmailCondition, EventCondition, PropertyCondition, iter_conditions
from nurture.flow.language import LIFECYCLE_STAGES, EventTrigger, FlowDefinition
from nurture.flow.triggers import DateTrigger, InactivityTrigger, PropertyTrigger

# Built-in contact fields that are never dates: naming one in a date trigger is a mistake.
NOT_DATES = {
    "email", "name", "company", "timezone", "lifecycle_stage", "owner", "phone", "subscription_status", "lists", "tags",
}
UNENROLLING_TRIGGERS = ("property", "inactivity")


def trigger_problems(flow: FlowDefinition) -> list[tuple[str, str]]:
    trigger = flow.trigger
    problems: list[tuple[str, str]] = []
    if isinstance(trigger, EventTrigger):
        for i, condition in enumerate(trigger.where):
            problems += _operand_problems(condition, f"trigger.where[{i}]")
    if isinstance(trigger, PropertyTrigger):
        problems += contact_condition_problems(trigger.condition, "trigger.condition", allow_events=False)
    if isinstance(trigger, (DateTrigger, InactivityTrigger)) and trigger.condition is not None:
        problems += contact_condition_problems(trigger.condition, "trigger.condition", allow_events=True)
    if isinstance(trigger, DateTrigger) and trigger.property.lower() in NOT_DATES:
        problems.append(("trigger.property", f"'{trigger.property}' is not a date: name a date property like renewal_date"))

    policy = flow.enrollment
    if policy is None:
        return problems
    if policy.reenroll == "after_days" and policy.reenroll_after_days is None:
        problems.append(("enrollment.reenroll_after_days", "reenroll: after_days needs reenroll_after_days"))
    if policy.reenroll != "after_days" and policy.reenroll_after_days is not None:
        problems.append(("enrollment.reenroll_after_days", "only used with reenroll: after_days"))
    if isinstance(trigger, DateTrigger) and trigger.yearly and policy.reenroll == "never":
        problems.append(
            ("enrollment.reenroll", "a yearly date trigger enrolls every year: set reenroll to after_exit or after_days")
        )
    for i, condition in enumerate(policy.suppress):
        problems += contact_condition_problems(condition, f"enrollment.suppress[{i}]", allow_events=True)
    if policy.unenroll_when_trigger_stops_matching and trigger.type not in UNENROLLING_TRIGGERS:
        problems.append(
            (
                "enrollment.unenroll_when_trigger_stops_matching",
                f"only property and inactivity triggers can stop matching; this flow's trigger is '{trigger.type}'",
            )
        )
    return problems


def contact_condition_problems(condition, path: str, *, allow_events: bool) -> list[tuple[str, str]]:
    problems = []
    for leaf in iter_conditions(condition):
        if isinstance(leaf, EmailCondition):
            problems.append((path, "email engagement belongs to an enrollment: use it in a branch, not here"))
        if isinstance(leaf, EventCondition) and not allow_events:
            problems.append(
                (path, f"a property trigger is checked when the contact changes, not on events: use an event trigger for '{leaf.event}'")
            )
        if isinstance(leaf, PropertyCondition):
            problems += _operand_problems(leaf, path)
            if leaf.property == "lifecycle_stage" and leaf.op not in ("exists", "not_exists"):
                values = leaf.value if isinstance(leaf.value, list) else [leaf.value]
                for value in values:
                    if value not in LIFECYCLE_STAGES:
                        problems.append((path, f"'{value}' is not a lifecycle stage ({', '.join(LIFECYCLE_STAGES)})"))
    return problems


def _operand_problems(condition: PropertyCondition, path: str) -> list[tuple[str, str]]:
    value: Any = condition.value
    op = condition.op
    if op in ("in", "not_in") and not isinstance(value, list):
        return [(f"{path}.value", f"'{op}' compares with a list of values, like [a, b]")]
    if op == "in" and not value:
        return [(f"{path}.value", f"'{condition.property} in []' can never be true")]
    if op == "between" and not (isinstance(value, list) and len(value) == 2):
        return [(f"{path}.value", "'between' takes [low, high]")]
    if op == "matches" and not isinstance(value, str):
        return [(f"{path}.value", "'matches' takes a pattern such as '*/pricing*'")]
    if op in ("eq", "neq", "gt", "gte", "lt", "lte", "contains") and value is None:
        return [(f"{path}.value", f"'{op}' needs a value")]
    return []
