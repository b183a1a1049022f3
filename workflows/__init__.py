"""The workflows, one module each, loaded on first use.

Nothing is imported here eagerly: the sandbox imports this package afresh for every workflow run it
starts (global state isolation), and an enrollment's run has no use for the other workflows'
modules. ``WORKFLOWS`` and the classes are looked up on first access (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "EnrollmentWorkflow": "workflows.enrollment",
    "TriggerScanWorkflow": "workflows.scans",
    "BulkEnrollmentWorkflow": "workflows.bulk",
    "CrmSyncWorkflow": "workflows.crm_sync",
}

__all__ = ["WORKFLOWS", *_HOMES]


def __getattr__(name: str) -> Any:
    if name == "WORKFLOWS":
        return [__getattr__(workflow) for workflow in _HOMES]
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'workflows' has no attribute {name!r}")
