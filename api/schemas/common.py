from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, EmailStr, Field, StringConstraints

from api.deps import MAX_ID

T = TypeVar("T")

Id = Annotated[int, Field(ge=1, le=MAX_ID)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


def _lower(value: str) -> str:
    return value.strip().lower()


# Emails are kept lowercase: ``Ada@Example.com`` and ``ada@example.com`` are one contact.
Email = Annotated[EmailStr, AfterValidator(_lower)]


def as_utc(value: datetime) -> datetime:
    """A datetime without a zone is read as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UTCDatetime = Annotated[datetime, AfterValidator(as_utc)]


class Page(BaseModel, Generic[T]):
    items: list[T]
    count: int = Field(description="Items matching the filters, on all pages.")
    limit: int
    offset: int


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class Strict(BaseModel):
    """Request bodies reject unknown fields, so a misspelt field is reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ProblemOut(BaseModel):
    path: str = Field(description="Where in the flow, e.g. steps[2].template.")
    message: str
