"""How big a flow may be: steps, nesting, strings, YAML aliases and durations.

Every bound is a setting (``Settings.flow_limits()``); the defaults leave room for any real
flow many times over (the largest shipped playbook has a dozen steps). The checks run before
the flow's model is built and cost one pass over what was sent, so an oversized flow is
refused in milliseconds with the limit named.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import yaml
from pydantic import BaseModel, Field

from nurture.flow.durations import DURATION_LIMIT, MAX_DURATION_DAYS
from nurture.json_depth import nests_deeper_than

# Python's parsers recurse once per level; far below this they never hit the recursion limit.
MAX_NESTING_CEILING = 200


class FlowLimits(BaseModel):
    max_flow_steps: int = Field(default=500, ge=1, le=100_000)
    max_nesting_depth: int = Field(default=32, ge=8, le=MAX_NESTING_CEILING)
    max_flow_string_length: int = Field(default=10_000, ge=100)
    max_yaml_alias_values: int = Field(default=1_000, ge=0)
    max_duration_days: int = Field(default=3_650, ge=1, le=MAX_DURATION_DAYS)

    def validation_context(self) -> dict[str, Any]:
        return {DURATION_LIMIT: self.max_duration_days}

    @property
    def max_duration(self) -> timedelta:
        return timedelta(days=self.max_duration_days)


class InputLimitExceeded(ValueError):
    """A text that breaks a limit before it is even parsed; the message names the limit."""


def too_deep(limits: FlowLimits) -> str:
    return f"nests deeper than {limits.max_nesting_depth} levels (the max_nesting_depth limit)"


def check_json_text(text: str, limits: FlowLimits) -> None:
    if nests_deeper_than(text, limits.max_nesting_depth):
        raise InputLimitExceeded(f"the JSON {too_deep(limits)}")


def load_yaml(text: str, limits: FlowLimits) -> Any:
    """``yaml.safe_load`` that refuses alias bombs, recursive aliases and deep nesting."""
    loader = _BoundedLoader(text, limits)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """Counts, while composing, how many values aliases repeat (each alias counts the whole
    value it stands for, so an alias of an alias counts the expansion) and how deep it nests."""

    def __init__(self, text: str, limits: FlowLimits):
        super().__init__(text)
        self._limits = limits
        self._depth = 0
        self._repeated = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it holds once expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise InputLimitExceeded("a YAML alias refers to a value that contains it")
            self._repeated += size
            if self._repeated > self._limits.max_yaml_alias_values:
                raise InputLimitExceeded(
                    f"YAML aliases repeat more than {self._limits.max_yaml_alias_values} values "
                    "(the max_yaml_alias_values limit): write the values out"
                )
            return node
        opens = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if opens:
            self._depth += 1
            if self._depth > self._limits.max_nesting_depth:
                raise InputLimitExceeded(f"the YAML {too_deep(self._limits)}")
        node = super().compose_node(parent, index)
        if opens:
            self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return node.value
    return []


def size_problems(data: Any, limits: FlowLimits) -> list[tuple[tuple, str]]:
    """(location, message) for each part of ``data`` past a limit, in one pass, without recursion."""
    steps = data.get("steps") if isinstance(data, dict) else None
    if isinstance(steps, list) and len(steps) > limits.max_flow_steps:
        return [(("steps",), f"a flow has at most {limits.max_flow_steps} steps (the max_flow_steps limit); "
                             f"this one has {len(steps)}")]
    problems: list[tuple[tuple, str]] = []
    longest = limits.max_flow_string_length
    too_long = f"is longer than {longest} characters (the max_flow_string_length limit)"
    pending: list[tuple[Any, tuple, int]] = [(data, (), 1)]
    while pending:
        node, loc, depth = pending.pop()
        if isinstance(node, (dict, list)):
            if depth > limits.max_nesting_depth:
                problems.append((loc, f"this value {too_deep(limits)}"))
                continue
            items = list(node.items() if isinstance(node, dict) else enumerate(node))
            for key, value in reversed(items):
                if isinstance(key, str) and len(key) > longest:
                    problems.append((loc, f"a key {too_long}"))
                    continue
                pending.append((value, (*loc, key), depth + 1))
        elif isinstance(node, str) and len(node) > longest:
            problems.append((loc, f"the text {too_long}"))
    return problems
