"""Contact events: accepted into the inbox (one insert per event, deduplicated by event_id), then
routed to running enrollments and triggers by nurture.event_inbox, in the order accepted."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from api import crud
from api.deps import DatabaseDep, EnrollerFactoryDep, EventInboxDep, SessionDep, SettingsDep
from api.schemas.events import EventBatchOut, EventBatchResult, EventIn, EventOut
from nurture import event_accept
from nurture.event_inbox import PENDING
from nurture.db import Database
from nurture.event_types import UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.models import Contact, Event, SubscriptionStatus, utcnow
from nurture.settings import Settings

router = APIRouter(prefix="/events", tags=["events"])

WAIT = Query(
    description="Answer once the event is routed, with the enrollments it started and told (the default, "
    "unless the setting events_wait_by_default is false). false: answer as soon as it is stored (202, "
    "`routed: false`); routing follows at once, in the order the contact's events were accepted.",
)
JSON_LINES = ("application/x-ndjson", "application/jsonl", "application/json-lines", "application/x-jsonlines")


def _duplicate(stored: Event) -> JSONResponse:
    body = EventOut(
        event_id=stored.event_id, contact_id=stored.contact_id, duplicate=True, routed=stored.inbox_status != PENDING
    )
    return JSONResponse(status_code=status.HTTP_200_OK, content=body.model_dump(mode="json"))


def _touch(contact: Contact, event: Event) -> None:
    """What an event changes on its contact, written with the event."""
    if contact.last_activity_at is None or event.occurred_at > contact.last_activity_at:
        contact.last_activity_at = event.occurred_at
    if event.type in UNSUBSCRIBE_EVENTS and contact.subscription_status != SubscriptionStatus.unsubscribed:
        contact.subscription_status = SubscriptionStatus.unsubscribed
        contact.updated_at = utcnow()


@router.post(
    "",
    response_model=EventOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": EventOut, "description": "This event_id was already received: nothing was done again"}},
)
async def ingest_event(
    body: EventIn,
    db: DatabaseDep,
    inbox: EventInboxDep,
    get_enroller: EnrollerFactoryDep,
    settings: SettingsDep,
    wait: Annotated[bool | None, WAIT] = None,
):
    """Record a contact event and act on it.

    The event goes to the contact's running enrollments (goals, waits, engagement) and
    enrolls the contact in every active flow it triggers. `unsubscribed` also unsubscribes
    the contact, which makes its enrollments exit. A contact given by email is created when
    unknown. With an `event_id` already received the answer is 200 `duplicate: true`.

    By default the answer comes once the event is routed; when routing cannot finish (Temporal
    unreachable: 503) nothing is kept, so the client's retry is routed. With `?wait=false` the
    answer (202, `routed: false`) comes as soon as the event is stored: it is routed right after,
    and an event answered so is never lost (it stays in the inbox until routed).
    """
    wait = settings.events_wait_by_default if wait is None else wait
    event_id = body.event_id or uuid.uuid4().hex
    occurred_at = body.occurred_at or utcnow()
    quick = None
    if body.type not in UNSUBSCRIBE_EVENTS:
        quick = await event_accept.accept(
            db, contact_id=body.contact_id, email=body.email, event_id=event_id, type=body.type,
            properties=body.properties, occurred_at=occurred_at, status=PENDING,
        )
    if quick is not None:
        if quick.row is None:
            return await _duplicate_of(db, event_id)
        contact_id, event_row, created = quick.contact_id, quick.row, False
    else:
        # No request-wide session (an async dependency per request): only this path needs one.
        async with db.session() as session:
            stored = await _accept_with_orm(session, settings, body, event_id, occurred_at)
        if isinstance(stored, JSONResponse):
            return stored
        contact_id, event_row, created = stored
    answer = EventOut(event_id=event_id, contact_id=contact_id, duplicate=False, contact_created=created)
    if not wait:
        inbox.kick(get_enroller)
        answer.routed = False
        return answer

    try:
        routed = await inbox.routed(get_enroller, event_row)
    except Exception:
        # The client is told it failed: nothing of it stays, so that its retry is routed.
        await crud.forget_event(db, event_row, only_pending=True)
        if created:
            await crud.forget_new_contact(db, contact_id)
        raise
    get_logger(contact_id=contact_id, event_id=event_id).info(
        "event_ingested", type=body.type, contact_created=created, enrolled=routed.enrolled, signalled=routed.signalled
    )
    answer.enrolled, answer.signalled = routed.enrolled, routed.signalled
    return answer


async def _duplicate_of(db: Database, event_id: str) -> JSONResponse:
    async with db.session() as session:
        stored = (await session.exec(select(Event).where(Event.event_id == event_id))).first()
    if stored is None:  # removed again meanwhile (its request failed): the client retries
        raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail="this event_id is being received; retry")
    return _duplicate(stored)


async def _accept_with_orm(
    session, settings: Settings, body: EventIn, event_id: str, occurred_at
) -> tuple[int, int, bool] | JSONResponse:
    """The general accept path: a contact to create (or found by email in another case), or an
    unsubscribe event, which changes the contact's subscription too."""
    if body.contact_id is not None:
        contact, created = await crud.contact_or_404(session, body.contact_id), False
    else:
        assert body.email is not None
        contact, created = await crud.get_or_create_contact(session, body.email)
        if created:  # upserted to the CRM by email when one is connected (docs/crm.md), in this transaction
            await crud.queue_crm_upsert(session, settings, contact)
    event = Event(
        event_id=event_id,
        contact_id=contact.id,  # type: ignore[arg-type]
        type=body.type,
        properties=body.properties,
        occurred_at=occurred_at,
        inbox_status=PENDING,
    )
    session.add(event)
    _touch(contact, event)
    session.add(contact)
    try:
        await session.commit()
    except IntegrityError:
        # This event_id was received before (or just now, by a concurrent request).
        await session.rollback()
        stored = (await session.exec(select(Event).where(Event.event_id == event.event_id))).first()
        if stored is None:
            raise
        return _duplicate(stored)
    assert contact.id is not None and event.id is not None
    return contact.id, event.id, created


BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "A JSON array of events, or JSON lines (one event per line, "
        "Content-Type: application/x-ndjson); each event as for POST /events.",
        "content": {
            # Items are checked one by one (as EventIn): an invalid one is rejected in its result, not
            # the request, so the schema takes any item.
            "application/json": {
                "schema": {"type": "array", "items": {"description": "An event as for POST /events (EventIn)."}}
            },
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}


@router.post(
    "/batch",
    response_model=EventBatchOut,
    openapi_extra=BATCH_BODY,
    responses={413: {"description": "More events than the setting event_batch_max allows (or a body over max_body_bytes)"}},
)
async def ingest_batch(
    request: Request, session: SessionDep, inbox: EventInboxDep, get_enroller: EnrollerFactoryDep, settings: SettingsDep
) -> EventBatchOut:
    """Accept many events at once (CRM connectors, importers, site trackers), with a result per event.

    Each event is validated, deduplicated by `event_id` and stored; the valid ones are stored
    together and routed right after the answer, each contact's in the order of the batch. An
    invalid event is `rejected` with its errors and does not stop the others; an `event_id`
    received before (or earlier in the same batch) is a `duplicate`. At most `event_batch_max`
    events (413 past it).
    """
    raw = _batch_items(await request.body(), request.headers.get("content-type", ""), settings.event_batch_max)
    results: list[EventBatchResult] = []
    valid: list[tuple[int, EventIn]] = []
    for index, item in enumerate(raw):
        try:
            valid.append((index, EventIn.model_validate(item)))
        except ValidationError as exc:
            errors = [
                {"loc": ["body", index, *error["loc"]], "msg": error["msg"], "type": error["type"]}
                for error in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
            results.append(EventBatchResult(index=index, status="rejected", errors=errors))
    for attempt in range(3):
        try:
            accepted, contact_ids = await _store_batch(session, valid, settings)
            break
        except IntegrityError:
            # A concurrent request stored one of these event_ids (or created one of these contacts):
            # read again and store the rest.
            await session.rollback()
            if attempt == 2:
                raise
    results.extend(accepted)
    results.sort(key=lambda r: r.index)
    if contact_ids:
        inbox.kick(get_enroller)
    counts = {kind: sum(1 for r in results if r.status == kind) for kind in ("accepted", "duplicate", "rejected")}
    get_logger(component="events").info("event_batch_ingested", **counts)
    return EventBatchOut(
        accepted=counts["accepted"], duplicates=counts["duplicate"], rejected=counts["rejected"], results=results
    )


def _batch_items(body: bytes, content_type: str, limit: int) -> list[Any]:
    kind = content_type.split(";")[0].strip().lower()
    try:
        if kind in JSON_LINES:
            items = [json.loads(line) for line in body.splitlines() if line.strip()]
        else:
            items = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"the body is neither a JSON array nor JSON lines: {exc}") from exc
    if not isinstance(items, list):
        raise _invalid("a JSON array of events is expected (or JSON lines with Content-Type application/x-ndjson)")
    if len(items) > limit:
        raise HTTPException(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"{len(items)} events in one batch; at most {limit} (setting event_batch_max)",
        )
    return items


def _invalid(message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": message}])


async def _store_batch(
    session, valid: list[tuple[int, EventIn]], settings: Settings
) -> tuple[list[EventBatchResult], list[int]]:
    """Store the batch's valid events in one transaction; answer their results and the contacts to route."""
    results: list[EventBatchResult] = []
    by_id = await _contacts_by_id(session, {e.contact_id for _, e in valid if e.contact_id is not None})
    by_email = await _contacts_by_email(session, {e.email for _, e in valid if e.email is not None})
    given = [e.event_id for _, e in valid if e.event_id is not None]
    known = set()
    for chunk in range(0, len(given), 500):
        known.update((await session.exec(select(Event.event_id).where(col(Event.event_id).in_(given[chunk:chunk + 500])))).all())
    created: set[int] = set()
    touched: dict[int, Contact] = {}
    events: list[Event] = []
    for index, item in valid:
        event_id = item.event_id or uuid.uuid4().hex
        if item.contact_id is not None:
            contact = by_id.get(item.contact_id)
            if contact is None:
                results.append(EventBatchResult(index=index, status="rejected", event_id=event_id, errors=[
                    {"loc": ["body", index, "contact_id"], "msg": f"contact {item.contact_id} does not exist", "type": "not_found"}
                ]))
                continue
        else:
            email = str(item.email)
            contact = by_email.get(email)
            if contact is None:
                contact, made = await crud.get_or_create_contact(session, email)
                by_email[email] = contact
                if made:
                    created.add(id(contact))
                    await crud.queue_crm_upsert(session, settings, contact)  # to the CRM, when one is connected
        if event_id in known:
            results.append(EventBatchResult(index=index, status="duplicate", event_id=event_id, contact_id=contact.id))
            continue
        known.add(event_id)
        event = Event(
            event_id=event_id, contact_id=contact.id, type=item.type, properties=item.properties,  # type: ignore[arg-type]
            occurred_at=item.occurred_at or utcnow(), inbox_status=PENDING,
        )
        events.append(event)
        _touch(contact, event)
        touched[id(contact)] = contact
        results.append(EventBatchResult(
            index=index, status="accepted", event_id=event_id, contact_id=contact.id, contact_created=id(contact) in created
        ))
    session.add_all(events)
    session.add_all(touched.values())
    await session.commit()
    return results, [e.contact_id for e in events]


async def _contacts_by_id(session, ids: set[int]) -> dict[int, Contact]:
    if not ids:
        return {}
    rows = await session.exec(select(Contact).where(col(Contact.id).in_(sorted(ids))))
    return {c.id: c for c in rows.all()}  # type: ignore[misc]


async def _contacts_by_email(session, emails: set[str]) -> dict[str, Contact]:
    if not emails:
        return {}
    wanted = sorted({e.strip().lower() for e in emails})
    rows = await session.exec(select(Contact).where(func.lower(Contact.email).in_(wanted)))
    return {c.email.lower(): c for c in rows.all()}
