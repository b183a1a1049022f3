from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class CrmWebhookOut(BaseModel):
    contacts: int = Field(description="CRM contacts read and applied.")
    deals: int = Field(description="Deal stage changes handled.")
    events: int = Field(description="deal_stage_changed events recorded (one per contact of a deal).")
    ignored: list[str] = Field(default_factory=list, description="Events left alone, and why.")


class CrmWriteCounts(BaseModel):
    queued: int = 0
    done: int = 0
    failed: int = 0


class CrmFailedWrite(BaseModel):
    id: int
    kind: str
    contact_id: int
    attempts: int
    last_error: str | None
    created_at: datetime


class CrmLastSync(BaseModel):
    contacts: int = Field(description="CRM contacts the last finished sync run read (all of them for an import).")
    seconds: float = Field(description="How long it read the CRM: from its first page asked to its end.")
    contacts_per_second: float = Field(description="The import rate: contacts / seconds.")


class CrmStatusOut(BaseModel):
    provider: str = Field(description="The connected CRM, or none.")
    connected: bool | None = Field(description="Whether the CRM answered an authenticated call just now (None: no CRM).")
    error: str | None = Field(default=None, description="Why the CRM cannot be used now.")
    cursor: datetime | None = Field(default=None, description="Records modified since this are read by the next sync.")
    lag_seconds: float | None = Field(default=None, description="Seconds between now and the cursor.")
    last_run_at: datetime | None = None
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_webhook_at: datetime | None = None
    resync_requested_at: datetime | None = None
    contacts_read: int = 0
    contacts_changed: int = 0
    last_sync: CrmLastSync | None = Field(default=None, description="What the last finished run read, and how fast.")
    writes: CrmWriteCounts = CrmWriteCounts()
    oldest_queued_write_at: datetime | None = None
    failed_writes: list[CrmFailedWrite] = Field(default_factory=list, description="The latest refused writes and why.")


class CrmResyncOut(BaseModel):
    workflow_id: str
    run_id: str | None = None
