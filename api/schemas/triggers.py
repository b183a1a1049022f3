from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from activities.estimates import Estimate
from api.schemas.common import Id, NonEmpty, Strict
from nurture.flow.conditions import Condition


class BulkEnrollIn(Strict):
    segment: Condition | None = Field(
        default=None,
        description="Who to enroll, as a condition on contacts (lists, tags, properties, recent events); everyone when omitted.",
    )
    rate_per_second: float = Field(default=10.0, gt=0, le=1000, description="At most this many enrollments per second.")
    requested_by: NonEmpty = "api"


class BulkStopIn(Strict):
    requested_by: NonEmpty
    reason: NonEmpty | None = None


class BulkEnrollmentOut(BaseModel):
    id: str = Field(description="The bulk enrollment's id, for GET /bulk-enrollments/{id}.")
    workflow_id: str
    flow_id: int
    status: str = Field(description="running, completed, stopped, or how the workflow ended (failed, terminated ...).")
    detail: str | None = None
    rate_per_second: float
    requested_by: str
    examined: int = Field(description="Contacts looked at so far.")
    matched: int = Field(description="Of those, the ones matching the segment.")
    enrolled: int
    skipped: dict[str, int] = Field(description="Matching contacts not enrolled, by reason.")
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    runs: int = Field(description="Workflow runs so far (long bulk enrollments continue as new).")


class EstimateIn(Strict):
    version: Id | None = Field(default=None, description="The version to estimate; the active one, else the latest.")


class EstimateOut(Estimate):
    flow_id: int | None = Field(default=None, description="The flow estimated; null for a flow sent in the body.")
    version: int | None = None
