"""Answers of the observability endpoints: history, visibility search, tracking webhooks."""

from __future__ import annotations

from pydantic import BaseModel, Field

from nurture.history import HistoryEntry
from nurture.visibility import VisibleEnrollment


class EnrollmentHistoryOut(BaseModel):
    enrollment_id: int
    workflow_id: str
    runs: list[str] = Field(description="Run ids of the continue-as-new chain, oldest first.")
    status: str = Field(description="As the history tells it: running, completed, exited, terminated ...")
    temporal_ui_url: str
    entries: list[HistoryEntry]
    lines: list[str] = Field(description="The entries as readable lines (what `nurture history` prints).")


class VisibleEnrollmentOut(VisibleEnrollment):
    enrollment_id: int | None = Field(description="The database row of this enrollment, when it has one.")


class VisibilityPage(BaseModel):
    items: list[VisibleEnrollmentOut]
    count: int = Field(description="Items on this page.")
    next_page_token: str | None = Field(description="Pass as page_token for the next page; null on the last.")
    query: str = Field(description="The visibility query, as `temporal workflow list --query` takes it.")


class WebhookOut(BaseModel):
    recorded: int
    duplicates: int
    ignored: list[str] = Field(description="Reports naming no message of this provider, by position and reason.")
