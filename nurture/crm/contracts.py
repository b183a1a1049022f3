"""Inputs and outputs of the CRM sync workflow and its activities: one model each."""

from __future__ import annotations

from datetime import datetime

from typing import Literal

from pydantic import BaseModel

CRM_SYNC_WORKFLOW = "CrmSyncWorkflow"


def crm_sync_schedule_id(prefix: str, provider: str) -> str:
    return f"{prefix}-crm-sync-{provider}"


def crm_resync_workflow_id(prefix: str, provider: str) -> str:
    return f"{prefix}-crm-resync-{provider}"


class CrmSyncInput(BaseModel):
    """Started by the Schedule with no fields (incremental) or by POST /crm/resync (full)."""

    full: bool = False
    # Carried across continue-as-new: where the run is (contacts first, then deals).
    phase: Literal["contacts", "deals", "done"] = "contacts"
    since: datetime | None = None
    deal_since: datetime | None = None
    after: str | None = None
    newest: datetime | None = None
    deal_newest: datetime | None = None
    read: int = 0
    changed: int = 0
    pushed: int = 0
    error: str | None = None
    started: bool = False
    # When the run began reading the CRM (start_crm_sync's clock): its seconds and rate count from here.
    started_at: datetime | None = None
    pages_per_run: int = 50
    # Tries of each CRM call before the run records the error and leaves the rest to the next run.
    crm_attempts: int = 5


class CrmSyncResult(BaseModel):
    pushed: int = 0
    read: int = 0
    changed: int = 0
    cursor: datetime | None = None
    error: str | None = None
    # How long reading the CRM took (from the first page asked to the cursor moved), and its rate.
    seconds: float | None = None
    contacts_per_second: float | None = None


class PushWritesInput(BaseModel):
    # The engagement run reads up to ten times this many events and sends; the push drains the whole
    # queue, crm_write_batch rows at a time.
    limit: int = 100


class PushWritesResult(BaseModel):
    pushed: int = 0
    failed: int = 0
    remaining: int = 0


class SyncStartInput(BaseModel):
    full: bool = False


class SyncStart(BaseModel):
    since: datetime
    deal_since: datetime
    started_at: datetime | None = None


class OwnerImportInput(BaseModel):
    pass


class OwnerImportResult(BaseModel):
    imported: int = 0


class SyncPageInput(BaseModel):
    since: datetime
    after: str | None = None


class SyncPageResult(BaseModel):
    read: int = 0
    changed: int = 0
    after: str | None = None
    # The newest last-modified time on the page: where a capped search starts again.
    newest: datetime | None = None
    # The CRM's search stopped at its cap: more records are there, past ``newest``.
    capped: bool = False


class SyncFinishInput(BaseModel):
    cursor: datetime | None = None
    deal_cursor: datetime | None = None
    read: int = 0
    changed: int = 0
    full: bool = False
    error: str | None = None
    # The run's start (runs started before this field: crm_sync_state.last_run_at stands in).
    started_at: datetime | None = None


class SyncFinishResult(BaseModel):
    """What the run measured, as recorded on crm_sync_state (GET /crm/status, /metrics)."""

    contacts: int = 0
    seconds: float = 0.0
    contacts_per_second: float = 0.0
