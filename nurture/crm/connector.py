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

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


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


class CrmConnector(Protocol):
    provider: str

    async def get_contact(self, crm_id: str, properties: list[str]) -> CrmContact | None: ...

    async def get_contacts(self, crm_ids: list[str], properties: list[str]) -> list[CrmContact]: ...

    async def changed_contacts(
        self, since: datetime, properties: list[str], after: str | None, limit: int
    ) -> ContactPage: ...

    async def get_deal(self, deal_id: str) -> CrmDeal | None: ...

    async def changed_deals(self, since: datetime, after: str | None, limit: int) -> tuple[list[CrmDeal], str | None]:
        """Deals modified since ``since`` and where the next page starts, for CRMs that do not push them."""
        ...

    async def upsert_contacts(self, records: list[tuple[str, dict[str, str]]]) -> dict[str, str]:
        """Create or update by email; answer email -> CRM id."""
        ...

    async def update_contact(self, crm_id: str, properties: dict[str, str]) -> None: ...

    async def find_activity(self, activity: CrmActivity) -> str | None: ...

    async def create_activity(self, activity: CrmActivity) -> str: ...

    async def owners(self) -> dict[str, str]:
        """CRM owner id -> the owner's email."""
        ...

    async def check(self) -> None:
        """One cheap authenticated call: raises a CrmError when the CRM cannot be used."""
        ...
