"""What the engine asks of a CRM, whichever it is; one module per CRM implements it.

Errors say what the caller should do: ``CrmUnavailable`` is worth retrying (after
``retry_after`` seconds when the CRM said so), ``CrmAuthFailed`` and ``CrmRejected`` are not
(a person must fix the token or the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

ActivityKind = Literal["task", "note"]


class CrmError(Exception):
    pass


class CrmUnavailable(CrmError):
    """Down, overloaded or rate limited: try again, after ``retry_after`` seconds when given."""

    def __init__(self, message: str, retry_after: float | None = None, rate_limited: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        # A 429: the CRM is up and asks us to slow down, so waiting Retry-After and going on is right.
        self.rate_limited = rate_limited


class CrmAuthFailed(CrmError):
    """The CRM refused our credentials (401/403)."""


class CrmRejected(CrmError):
    """The CRM refused the request itself (a 4xx other than auth and rate limits)."""


@dataclass
class CrmContact:
    id: str
    properties: dict[str, Any]
    updated_at: datetime | None = None
    archived: bool = False

    # The record's email, as the connector read it (each CRM names the field its own way).
    email_address: str | None = None

    @property
    def email(self) -> str | None:
        value = self.email_address or self.properties.get("email")
        return str(value).strip().lower() if value else None


@dataclass
class ContactPage:
    contacts: list[CrmContact]
    # Where the next page starts (the CRM's paging cursor), None when this was the last.
    after: str | None = None
    # The CRM's search cap was reached: search again from the newest modification seen.
    capped: bool = False


@dataclass
class CrmDeal:
    id: str
    stage: str
    contact_ids: list[str] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)
    # When the CRM last modified the deal (the deal sync's cursor).
    updated_at: datetime | None = None


@dataclass
class CrmActivity:
    """A task for the owner or a note on the contact's timeline, found again by ``key``."""

    kind: ActivityKind
    key: str
    contact_crm_id: str
    subject: str
    body: str
    owner_crm_id: str | None = None
    due_at: datetime | None = None
    # An earlier call carrying it may have made it, its answer lost: look for it before making it.
    maybe_created: bool = False


class CrmConnector(Protocol):
    provider: str
    # Records per write call: the push (activities/crm_push.py) commits after each call.
    upsert_batch: int
    update_batch: int
    activity_batch: int

    async def get_contact(self, crm_id: str, properties: list[str]) -> CrmContact | None: ...

    async def get_contacts(self, crm_ids: list[str], properties: list[str]) -> list[CrmContact]: ...

    async def changed_contacts(
        self, since: datetime, properties: list[str], after: str | None, limit: int
    ) -> ContactPage: ...

    async def get_deal(self, deal_id: str) -> CrmDeal | None: ...

    async def changed_deals(self, since: datetime, after: str | None, limit: int) -> tuple[list[CrmDeal], str | None]:
        """Deals modified since ``since`` and where the next page starts, for CRMs that do not push them."""
        ...

    # The batch writes below answer per record: the CRM id, or the CRM's refusal of that record
    # (``CrmRejected``). A CRM that cannot be used raises for the whole call instead.

    async def upsert_contacts(self, records: list[tuple[str, dict[str, str]]]) -> dict[str, str | CrmRejected]:
        """Create or update by email (email -> CRM id, or why that record was refused)."""
        ...

    async def update_contacts(self, updates: list[tuple[str, dict[str, str]]]) -> dict[str, CrmRejected | None]:
        """Write these properties on these CRM contacts (CRM id -> None when written, or the refusal)."""
        ...

    async def create_activities(self, activities: list[CrmActivity]) -> dict[str, str | CrmRejected]:
        """Tasks and notes, each created once however often asked (key -> CRM id, or the refusal)."""
        ...

    async def owners(self) -> dict[str, str]:
        """CRM owner id -> the owner's email."""
        ...

    async def check(self) -> None:
        """One cheap authenticated call: raises a CrmError when the CRM cannot be used."""
        ...
