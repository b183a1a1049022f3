"""Conditions on contact properties, event properties and email engagement.

Pure functions: the enrollment workflow evaluates them inside its sandbox, and
the API evaluates trigger filters with the same code, so both agree.
"""

from __future__ import annotations

import fnmatch
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from nurture.flow.durations import Duration

Operator = Literal[
    "eq", "neq", "in", "not_in", "exists", "not_exists", "gt", "gte", "lt", "lte", "between", "contains", "matches"
]
Engagement = Literal["opened", "clicked"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class PropertyCondition(_Strict):
    """``lifecycle_stage eq customer``, ``score gte 50``, ``industry in [saas, fintech]``."""

    kind: Literal["property"] = "property"
    property: str = Field(min_length=1)
    op: Operator = "eq"
    value: Any = None


class EmailCondition(_Strict):
    """Whether the contact opened or clicked the email sent by an earlier step."""

    kind: Literal["email"] = "email"
    step: str
    engagement: Engagement = "opened"


class ListCondition(_Strict):
    """The contact is on a static or smart list."""

    kind: Literal["list"] = "list"
    list: str = Field(min_length=1)


class TagCondition(_Strict):
    kind: Literal["tag"] = "tag"
    tag: str = Field(min_length=1)


class EventCondition(_Strict):
    """The contact had the event (optionally filtered) within the last ``within``."""

    kind: Literal["event"] = "event"
    event: str = Field(min_length=1)
    within: Duration
    where: list[PropertyCondition] = Field(default_factory=list)
    at_least: int = Field(default=1, ge=1)


class AllCondition(_Strict):
    kind: Literal["all"] = "all"
    all: list[Condition] = Field(min_length=1)


class AnyCondition(_Strict):
    kind: Literal["any"] = "any"
    any: list[Condition] = Field(min_length=1)


class NotCondition(_Strict):
    kind: Literal["not"] = "not"
    not_: Condition = Field(alias="not")


def _condition_kind(value: Any) -> str | None:
    """Authors may omit ``kind``: the keys they wrote say which condition it is."""
    if isinstance(value, BaseModel):
        return getattr(value, "kind", None)
    if not isinstance(value, dict):
        return None
    if "kind" in value:
        return value["kind"]
    keys = (
        ("property", "property"), ("step", "email"), ("list", "list"), ("tag", "tag"), ("event", "event"),
        ("all", "all"), ("any", "any"), ("not", "not"),
    )
    for key, kind in keys:
        if key in value:
            return kind
    return None


Condition = Annotated[
    Union[
        Annotated[PropertyCondition, Tag("property")],
        Annotated[EmailCondition, Tag("email")],
        Annotated[ListCondition, Tag("list")],
        Annotated[TagCondition, Tag("tag")],
        Annotated[EventCondition, Tag("event")],
        Annotated[AllCondition, Tag("all")],
        Annotated[AnyCondition, Tag("any")],
        Annotated[NotCondition, Tag("not")],
    ],
    Discriminator(_condition_kind),
]

AllCondition.model_rebuild()
AnyCondition.model_rebuild()
NotCondition.model_rebuild()


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if op == "exists":
        return actual not in (None, "", [])
    if op == "not_exists":
        return actual in (None, "", [])
    if op == "eq":
        return _normal(actual) == _normal(expected)
    if op == "neq":
        return _normal(actual) != _normal(expected)
    if op == "in":
        return _normal(actual) in [_normal(v) for v in (expected or [])]
    if op == "not_in":
        return _normal(actual) not in [_normal(v) for v in (expected or [])]
    if op == "matches":
        # Glob patterns, as marketers write URL filters: "*/pricing*", "https://acme.com/blog/*".
        return isinstance(actual, str) and fnmatch.fnmatchcase(actual.lower(), str(expected).lower())
    if op == "between":
        low, high = (expected or [None, None])[:2] if isinstance(expected, (list, tuple)) else (None, None)
        value, low, high = _number(actual), _number(low), _number(high)
        return None not in (value, low, high) and low <= value <= high  # type: ignore[operator]
    if op == "contains":
        if isinstance(actual, (list, tuple, set)):
            return _normal(expected) in [_normal(v) for v in actual]
        return isinstance(actual, str) and str(expected).lower() in actual.lower()
    left, right = _number(actual), _number(expected)
    if left is None or right is None:
        return False
    return {"gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[op]


def _normal(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def matches_properties(conditions: list[PropertyCondition], properties: dict[str, Any]) -> bool:
    return all(_compare(properties.get(c.property), c.op, c.value) for c in conditions)


class EventFact(BaseModel):
    """One contact event, as the workflow sees it when evaluating an event condition."""

    type: str
    at: datetime
    properties: dict[str, Any] = Field(default_factory=dict)


def evaluate(
    condition: Condition,
    contact: dict[str, Any],
    engagement: dict[str, list[str]] | None = None,
    events: list[EventFact] | None = None,
    now: datetime | None = None,
) -> bool:
    """Evaluate a condition on a flattened contact, the enrollment's engagement so far,
    and (for event conditions) the contact's recent events as of ``now``."""
    engagement = engagement or {}
    if isinstance(condition, ListCondition):
        return condition.list.lower() in [str(v).lower() for v in contact.get("lists") or []]
    if isinstance(condition, TagCondition):
        return condition.tag.lower() in [str(v).lower() for v in contact.get("tags") or []]
    if isinstance(condition, EventCondition):
        if now is None or events is None:
            raise ValueError("an event condition needs the contact's recent events")
        since = now - condition.within
        hits = [
            e for e in events
            if e.type == condition.event and since <= e.at <= now and matches_properties(condition.where, e.properties)
        ]
        return len(hits) >= condition.at_least
    if isinstance(condition, PropertyCondition):
        return _compare(contact.get(condition.property), condition.op, condition.value)
    if isinstance(condition, EmailCondition):
        seen = engagement.get(condition.step, [])
        # A click implies the email was opened, even when the pixel was blocked.
        return condition.engagement in seen or (condition.engagement == "opened" and "clicked" in seen)
    if isinstance(condition, AllCondition):
        return all(evaluate(c, contact, engagement, events, now) for c in condition.all)
    if isinstance(condition, AnyCondition):
        return any(evaluate(c, contact, engagement, events, now) for c in condition.any)
    if isinstance(condition, NotCondition):
        return not evaluate(condition.not_, contact, engagement, events, now)
    raise TypeError(f"unknown condition {condition!r}")


def iter_conditions(condition: Condition):
    """Every leaf and combinator in a condition tree, for validation."""
    yield condition
    children: list = []
    if isinstance(condition, AllCondition):
        children = condition.all
    elif isinstance(condition, AnyCondition):
        children = condition.any
    elif isinstance(condition, NotCondition):
        children = [condition.not_]
    for child in children:
        yield from iter_conditions(child)


def event_lookback(condition: Condition) -> dict[str, timedelta]:
    """The event types a condition looks at and how far back, so the workflow fetches only those."""
    wanted: dict[str, timedelta] = {}
    for leaf in iter_conditions(condition):
        if isinstance(leaf, EventCondition):
            wanted[leaf.event] = max(wanted.get(leaf.event, timedelta()), leaf.within)
    return wanted
