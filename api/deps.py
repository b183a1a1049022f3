"""Request dependencies, used as ``Annotated`` types in the endpoints.

The ones that only read the app's state are ``async def``: FastAPI runs a plain ``def`` dependency
in its thread pool, a hand-off to a thread and back per dependency per request (a few hundred
microseconds of CPU each on the enrollment path) for a function that never blocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.state import TemporalConnection
from nurture.crm import connector_for
from nurture.crm.connector import CrmConnector, CrmError
from nurture.api_keys import Role
from nurture.audit import Author
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.event_inbox import EventInbox
from nurture.models import ApiKey, Contact
from nurture.pausing import Actor
from nurture.settings import Settings
from nurture.users import SignedIn

# Ids are 32-bit integer columns on PostgreSQL: a larger number is simply unknown.
MAX_ID = 2_147_483_647


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    db: Database | None = request.app.state.db
    if db is None:
        raise HTTPException(status_code=503, detail="the database is not ready yet")
    return db


async def get_session(db: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    """One session per request; endpoints commit once everything (Temporal calls too) succeeded."""
    async with db.session() as session:
        yield session


async def get_temporal(request: Request) -> TemporalConnection:
    return request.app.state.temporal


async def get_client(temporal: Annotated[TemporalConnection, Depends(get_temporal)]) -> Client:
    return await temporal.get()  # TemporalUnavailable -> 503


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
TemporalDep = Annotated[TemporalConnection, Depends(get_temporal)]
ClientDep = Annotated[Client, Depends(get_client)]


async def get_enroller(client: ClientDep, settings: SettingsDep) -> Enroller:
    return Enroller(client, settings)


EnrollerDep = Annotated[Enroller, Depends(get_enroller)]


async def get_event_inbox(request: Request, db: DatabaseDep) -> EventInbox:
    """The process's event inbox (its routing locks and background tasks), on the app's database."""
    inbox: EventInbox | None = getattr(request.app.state, "event_inbox", None)
    if inbox is None or inbox.db is not db:
        inbox = request.app.state.event_inbox = EventInbox(db, request.app.state.settings)
    return inbox


EventInboxDep = Annotated[EventInbox, Depends(get_event_inbox)]


async def enroller_factory(temporal: TemporalDep, settings: SettingsDep) -> Callable[[], Awaitable[Enroller]]:
    """An Enroller made when routing needs it: the request that does not wait needs no Temporal."""

    async def make() -> Enroller:
        return Enroller(await temporal.get(), settings)

    return make


EnrollerFactoryDep = Annotated[Callable[[], Awaitable[Enroller]], Depends(enroller_factory)]


def get_crm(request: Request) -> CrmConnector:
    """The connected CRM's connector (one per app); 404 when no CRM is configured."""
    connector = getattr(request.app.state, "crm", None)
    if connector is None:
        try:
            connector = connector_for(request.app.state.settings)
        except CrmError as exc:
            raise HTTPException(status_code=503, detail=f"the CRM connector is not usable: {exc}") from exc
        if connector is None:
            raise HTTPException(status_code=404, detail="no CRM is connected (setting crm_provider)")
        request.app.state.crm = connector
    return connector


CrmDep = Annotated[CrmConnector, Depends(get_crm)]


def get_optional_crm(request: Request) -> CrmConnector | None:
    """The connector, or None when no CRM is configured or it cannot be built (the answer says why)."""
    try:
        return get_crm(request)
    except HTTPException:
        return None


OptionalCrmDep = Annotated[CrmConnector | None, Depends(get_optional_crm)]


# --- who is asking ---------------------------------------------------------------


SESSION_COOKIE = "nurture_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class Caller:
    """Who is asking, as ``authorize`` resolved it (plain values: its session is closed): an API key,
    or a person signed in to the console (``user_id`` set; ``name`` is then their email)."""

    key_id: int | None
    name: str
    role: Role
    owner: str | None
    user_id: int | None = None
    display_name: str | None = None
    csrf_token: str | None = None

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        return cls(key_id=key.id, name=key.name, role=Role(key.role), owner=key.owner)  # type: ignore[arg-type]

    @classmethod
    def of_user(cls, user: SignedIn) -> Caller:
        return cls(
            key_id=None, name=user.email, role=user.role, owner=user.owner, user_id=user.user_id,
            display_name=user.name or user.email, csrf_token=user.csrf_token,
        )

    @property
    def is_sales(self) -> bool:
        return self.role == Role.sales

    @property
    def is_person(self) -> bool:
        return self.user_id is not None


MAX_FORM_BYTES = 8192


async def form_fields(request: Request) -> dict[str, str]:
    """A URL-encoded form's fields, first value each (the console's own forms are small)."""
    body = await request.body()  # kept on the request: the endpoint reads it again
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "the form is too large")
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}


class SignInRequired(Exception):
    """A console page asked for without a live session: the browser is sent to the sign-in page."""

    def __init__(self, path: str):
        self.path = path


async def get_caller(request: Request) -> Caller | None:
    """None when the route is public or the API runs without keys (``auth_required=false``)."""
    return getattr(request.state, "caller", None)


CallerDep = Annotated[Caller | None, Depends(get_caller)]


async def get_author(caller: CallerDep) -> Author:
    """Whom the audit log records a change under: the person or the key behind the request."""
    if caller is None:
        return Author()
    return Author(name=caller.name, user_id=caller.user_id, api_key_id=caller.key_id)


AuthorDep = Annotated[Author, Depends(get_author)]

NOT_YOURS = "a sales key or user may only act on the contacts their rep owns"

ContactId = Annotated[int, Path(ge=1, le=MAX_ID)]
FlowId = Annotated[int, Path(ge=1, le=MAX_ID)]
VersionNumber = Annotated[int, Path(ge=1, le=MAX_ID)]
EnrollmentId = Annotated[int, Path(ge=1, le=MAX_ID)]


async def resolve_contact(contact_id: ContactId, session: SessionDep, caller: CallerDep) -> Contact:
    """The contact a route acts on, found by its parsed id and checked against a sales key's rep.

    Every route with ``{contact_id}`` in its path takes its contact through this dependency
    (``authorize`` refuses sales keys on any that does not). For a sales key, a contact that does
    not exist answers like another rep's, so a key cannot probe which ids exist.
    """
    contact = await session.get(Contact, contact_id)
    if caller is not None and caller.is_sales:
        if contact is None or caller.owner is None or contact.owner != caller.owner:
            raise HTTPException(status_code=403, detail=NOT_YOURS)
    if contact is None:
        raise HTTPException(status_code=404, detail=f"contact {contact_id} does not exist")
    return contact


ContactDep = Annotated[Contact, Depends(resolve_contact)]


def acting_as(caller: Caller | None, claimed: str | None, field: str) -> Actor:
    """Whom a pause or resume is recorded for, from the key and the rep the body names (``field``).

    A sales key acts as its own rep only; an admin or marketer key may act for a rep (or, naming
    nobody, as itself) and is recorded as the one who asked; without keys the body is all there is.
    """
    if caller is None:
        if claimed is None:
            raise RequestValidationError(
                [{"type": "missing", "loc": ("body", field), "msg": "Field required without an API key"}]
            )
        return Actor(rep=claimed)
    if caller.is_sales:
        if caller.owner is None:
            raise HTTPException(status_code=403, detail="this sales key has no rep to act as")
        if claimed is not None and claimed != caller.owner:
            raise HTTPException(
                status_code=403,
                detail=f"{field}: a sales key acts as its own rep '{caller.owner}', not '{claimed}'; leave {field} out",
            )
        return Actor(
            rep=caller.owner, requested_by=caller.name, api_key_id=caller.key_id, user_id=caller.user_id, authenticated=True
        )
    return Actor(
        rep=claimed or caller.name, requested_by=caller.name, api_key_id=caller.key_id, user_id=caller.user_id,
        authenticated=True,
    )


class Pagination:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Items to skip.")] = 0,
    ):
        self.limit = limit
        self.offset = offset


PaginationDep = Annotated[Pagination, Depends()]
