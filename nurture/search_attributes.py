"""The custom search attributes every enrollment workflow carries, as plain data.

Names and Temporal type names only (``Keyword``, ``Int``, ``Bool`` ...), so any
process can use them: the stack registers them on the dev server, the compose
file and the docs register them on a real cluster, and workflow code may build
its ``SearchAttributeKey`` objects from them. Imports only the standard library and
``temporalio.common``: this module is safe inside the workflow sandbox.
"""

from __future__ import annotations

from typing import NamedTuple

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes


class SearchAttribute(NamedTuple):
    name: str
    type: str  # a Temporal type name: Text, Keyword, Int, Double, Bool, Datetime, KeywordList


FLOW_ID = SearchAttribute("NurtureFlowId", "Keyword")
FLOW_VERSION = SearchAttribute("NurtureFlowVersion", "Int")
CONTACT_ID = SearchAttribute("NurtureContactId", "Keyword")
STEP = SearchAttribute("NurtureStep", "Keyword")
STATUS = SearchAttribute("NurtureStatus", "Keyword")
PAUSED = SearchAttribute("NurturePaused", "Bool")

SEARCH_ATTRIBUTES: tuple[SearchAttribute, ...] = (FLOW_ID, FLOW_VERSION, CONTACT_ID, STEP, STATUS, PAUSED)

FLOW_ID_KEY = SearchAttributeKey.for_keyword(FLOW_ID.name)
FLOW_VERSION_KEY = SearchAttributeKey.for_int(FLOW_VERSION.name)
CONTACT_ID_KEY = SearchAttributeKey.for_keyword(CONTACT_ID.name)
STEP_KEY = SearchAttributeKey.for_keyword(STEP.name)
STATUS_KEY = SearchAttributeKey.for_keyword(STATUS.name)
PAUSED_KEY = SearchAttributeKey.for_bool(PAUSED.name)
SEARCH_ATTRIBUTE_KEYS = (FLOW_ID_KEY, FLOW_VERSION_KEY, CONTACT_ID_KEY, STEP_KEY, STATUS_KEY, PAUSED_KEY)


def start_attributes(flow_id: int, flow_version: int, contact_id: int) -> TypedSearchAttributes:
    """What an enrollment carries from its start (free: set at start, not upserted)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(FLOW_ID_KEY, str(flow_id)),
            SearchAttributePair(FLOW_VERSION_KEY, flow_version),
            SearchAttributePair(CONTACT_ID_KEY, str(contact_id)),
            SearchAttributePair(PAUSED_KEY, False),
        ]
    )
