"""Parsed flow versions, kept per process.

Routing an event or enrolling a page parses each candidate flow's definition; a version never
changes once written, so the parsed model is kept (a few hundred, least recently used first out).
The key carries the row id and creation instant besides (flow, version): two databases in one
process (tests, tools) have the same small ids for different flows.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime

from nurture.flow.language import FlowDefinition
from nurture.models import FlowVersion

_Key = tuple[int, int, int, datetime | None]
_parsed: OrderedDict[_Key, FlowDefinition] = OrderedDict()


def version_key(flow_id: int, version: int, row_id: int, created_at: datetime | None) -> _Key:
    return (flow_id, version, row_id, created_at)


def cached_definition(key: _Key) -> FlowDefinition | None:
    """The parsed definition of the version with this key, if this process parsed it already."""
    found = _parsed.get(key)
    if found is not None:
        _parsed.move_to_end(key)
    return found


def parsed_definition(version: FlowVersion, keep: int = 256) -> FlowDefinition:
    """The version's definition as a model; callers must not change it (it is shared)."""
    if version.id is None:  # not written yet: nothing stable to key it by
        return FlowDefinition.model_validate(version.definition)
    key = (version.flow_id, version.version, version.id, version.created_at)
    found = _parsed.get(key)
    if found is not None:
        _parsed.move_to_end(key)
        return found
    definition = FlowDefinition.model_validate(version.definition)
    if keep > 0:
        _parsed[key] = definition
        while len(_parsed) > keep:
            _parsed.popitem(last=False)
    return definition
