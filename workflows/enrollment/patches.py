"""Every patch in the workflows' code, where it stands (docs/workflow-versioning.md).

``ACTIVE``: guarded by ``workflow.patched(id)``; the old branch stays until no running enrollment
started before ``deployed`` (the visibility query in the doc answers 0).
``DEPRECATED``: ``workflow.deprecate_patch(id)``; removed once no running enrollment started
before the deprecation was deployed. tests/test_replay.py checks the code agrees with this file
and that each active patch keeps a history recorded before it.
"""

from __future__ import annotations

from typing import NamedTuple


class Patch(NamedTuple):
    id: str
    deployed: str  # ISO date the patched code went out
    why: str


ACTIVE: tuple[Patch, ...] = (
    Patch("bulk-pages-of-a-second", "2026-11-26",
          "bulk enrollment pages of up to 1,000 and a pause that only makes up the rest of the second"),
)
DEPRECATED: tuple[Patch, ...] = ()
