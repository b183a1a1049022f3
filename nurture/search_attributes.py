"""The custom search attributes every enrollment workflow carries, as plain data.

Names and Temporal type names only (``Keyword``, ``Int``, ``Bool`` ...), so any
process can use them: the stack registers them on the dev server, the compose
file and the docs register them on a real cluster, and workflow code may build
its ``SearchAttributeKey`` objects from them. No imports beyond the standard
library: this module is safe inside the workflow sandbox.
"""

from __future__ import annotations

from typing import NamedTuple


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
