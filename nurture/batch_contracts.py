"""Inputs and outputs of the batch workflows: the scheduled trigger scan and bulk enrollment.

One model per workflow, activity, signal and query, so each can grow a field
without breaking histories already recorded.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from nurture.flow.conditions import Condition

TRIGGER_SCAN_WORKFLOW = "TriggerScanWorkflow"
BULK_ENROLLMENT_WORKFLOW = "BulkEnrollmentWorkflow"


def trigger_scan_schedule_id(prefix: str) -> str:
    return f"{prefix}-trigger-scan"


def bulk_workflow_id(prefix: str, bulk_id: str) -> str:
    return f"{prefix}-bulk-{bulk_id}"


def add_counts(total: dict[str, int], more: dict[str, int]) -> dict[str, int]:
    merged = dict(total)
    for reason, count in more.items():
        merged[reason] = merged.get(reason, 0) + count
    return merged


# --- the trigger scan (date and inactivity triggers) ---------------------------


class FlowScanTotals(BaseModel):
    flow_id: int
    trigger: str = ""
    examined: int = 0
    enrolled: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)


class ScanProgress(BaseModel):
    """Where a scan is, carried across continue-as-new."""

    flow_ids: list[int]
    index: int = 0
    cursor: int = 0
    totals: list[FlowScanTotals] = Field(default_factory=list)
    runs: int = 1


class TriggerScanInput(BaseModel):
    """Started by the Schedule with no fields; tests and operators may name flows."""

    flow_ids: list[int] | None = None
    at: datetime | None = None
    page_size: int = Field(default=500, ge=1, le=5000)
    # Continue-as-new after this many pages (the server's suggestion always counts).
    pages_per_run: int = Field(default=200, ge=1)
    carried: ScanProgress | None = None


class TriggerScanResult(BaseModel):
    at: datetime
    flows: list[FlowScanTotals]
    runs: int


class ListScanFlowsInput(BaseModel):
    flow_ids: list[int] | None = None


class ScanFlows(BaseModel):
    flow_ids: list[int]


class ScanPageInput(BaseModel):
    flow_id: int
    at: datetime
    after_contact_id: int = 0
    limit: int = 500


class ScanPageResult(BaseModel):
    trigger: str
    examined: int = 0
    enrolled: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    next_cursor: int = 0
    done: bool = True


# --- bulk enrollment -------------------------------------------------------------


class BulkProgress(BaseModel):
    """What the ``progress`` query answers, and the workflow's result."""

    bulk_id: str
    flow_id: int
    status: Literal["running", "completed", "stopped"] = "running"
    detail: str | None = None
    rate_per_second: float
    requested_by: str
    examined: int = 0
    matched: int = 0
    enrolled: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    cursor: int = 0
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    runs: int = 1


class BulkEnrollmentInput(BaseModel):
    bulk_id: str
    flow_id: int
    segment: Condition | None = None
    rate_per_second: float = Field(gt=0, le=1000)
    requested_by: str = "api"
    # Contacts read per page while looking for matches.
    scan_limit: int = Field(default=1000, ge=1, le=5000)
    pages_per_run: int = Field(default=200, ge=1)
    carried: BulkProgress | None = None
    # A page whose worker died is retried elsewhere after this long (Settings.activity_heartbeat_timeout).
    heartbeat_timeout: timedelta | None = None


class BulkStopSignal(BaseModel):
    requested_by: str
    reason: str | None = None


class BulkPageInput(BaseModel):
    bulk_id: str
    flow_id: int
    segment: Condition | None = None
    after_contact_id: int = 0
    max_enrollments: int = Field(ge=1)
    scan_limit: int = Field(ge=1)
    at: datetime
    bulk_started_at: datetime


class BulkPageResult(BaseModel):
    examined: int = 0
    matched: int = 0
    enrolled: int = 0
    skipped: dict[str, int] = Field(default_factory=dict)
    next_cursor: int = 0
    done: bool = False
    flow_inactive: bool = False
