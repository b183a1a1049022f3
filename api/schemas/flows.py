from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from api.schemas.common import Id, Out, ProblemOut, Strict


class FlowOut(Out):
    id: int
    name: str
    status: str
    latest_version: int
    active_version: int | None
    trigger_event: str | None = Field(description="The event that enrolls contacts while the flow is active.")
    created_at: datetime
    updated_at: datetime


class VersionSummary(BaseModel):
    version: int
    created_at: datetime
    active: bool


class FlowDetail(FlowOut):
    versions: list[VersionSummary]
    definition_version: int = Field(description="The version `definition` is: the active one, else the latest.")
    definition: dict[str, Any]
    warnings: list[ProblemOut] = Field(
        default_factory=list, description="Problems a draft may have but activation refuses (unknown templates)."
    )


class FlowVersionOut(BaseModel):
    flow_id: int
    version: int
    active: bool
    definition: dict[str, Any]
    created_at: datetime
    warnings: list[ProblemOut] = Field(default_factory=list)


class ValidationOut(BaseModel):
    valid: bool
    problems: list[ProblemOut]


class ActivateIn(Strict):
    version: Id | None = Field(default=None, description="The version to activate; the latest when omitted.")


class DeactivateOut(BaseModel):
    flow: FlowOut
    exited: list[int] = Field(description="Enrollments told to exit (with ?exit_enrolled=true).")
