from __future__ import annotations

from datetime import datetime

from pydantic import Field, model_validator

from api.schemas.common import Email, Id, NonEmpty, Out, Strict
from nurture.contracts import EnrollmentState


class EnrollmentOut(Out):
    id: int
    flow_id: int
    flow_version: int
    contact_id: int
    sequence: int = Field(default=1, description="1 for the contact's first enrollment in the flow, 2 for a re-enrollment ...")
    workflow_id: str
    run_id: str | None = Field(default=None, description="The first run id of this enrollment's workflow run chain.")
    status: str
    current_step: str | None
    paused: bool
    exit_reason: str | None
    started_at: datetime
    ended_at: datetime | None
    updated_at: datetime


class EnrollmentDetail(EnrollmentOut):
    workflow: EnrollmentState | None = Field(description="Live state from the workflow; null when it cannot be asked.")
    workflow_error: str | None = None
    temporal_ui_url: str


class ManualEnrollIn(Strict):
    contact_id: Id | None = None
    email: Email | None = None

    @model_validator(mode="after")
    def _one_contact(self) -> ManualEnrollIn:
        if (self.email is None) == (self.contact_id is None):
            raise ValueError("give exactly one of 'contact_id' or 'email'")
        return self


class ExitIn(Strict):
    requested_by: NonEmpty
    reason: NonEmpty = "manual"
