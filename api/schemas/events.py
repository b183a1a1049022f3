from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from api.schemas.common import Email, Id, Strict, UTCDatetime

EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_.:-]{0,63}$"


class EventIn(Strict):
    event_id: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = Field(
        default=None, description="Your id for the event: sending it again is recognised as a duplicate."
    )
    type: Annotated[str, StringConstraints(pattern=EVENT_TYPE_PATTERN)] = Field(description="e.g. demo_requested")
    email: Email | None = Field(default=None, description="The contact; created when unknown, like a form submission.")
    contact_id: Id | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    occurred_at: UTCDatetime | None = Field(default=None, description="Defaults to now.")

    @model_validator(mode="after")
    def _one_contact(self) -> EventIn:
        if (self.email is None) == (self.contact_id is None):
            raise ValueError("give exactly one of 'email' or 'contact_id'")
        return self


class EventOut(BaseModel):
    event_id: str
    contact_id: int
    duplicate: bool = Field(description="True when this event_id was already received; nothing was done again.")
    contact_created: bool = False
    enrolled: list[int] = Field(default_factory=list, description="Enrollments this event started.")
    signalled: list[int] = Field(default_factory=list, description="Running enrollments told about the event.")
    routed: bool = Field(
        default=True,
        description="False when the answer came before routing (?wait=false): enrolled and signalled are "
        "then empty, and the event is routed right after, in the order the contact's events were accepted.",
    )


class EventBatchResult(BaseModel):
    index: int = Field(description="The event's position in the batch (0-based).")
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="accepted: stored, routed in the background; duplicate: this event_id was already "
        "received (or came earlier in the batch); rejected: invalid, see errors."
    )
    event_id: str | None = None
    contact_id: int | None = None
    contact_created: bool = False
    errors: list[dict[str, Any]] = Field(default_factory=list, description="For a rejected event: loc, msg, type.")


class EventBatchOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: int
    results: list[EventBatchResult]
