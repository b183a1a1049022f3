"""Contact events: stored once per event_id, then routed to running enrollments and triggers."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from api import crud
from api.deps import DatabaseDep, EnrollerDep, SessionDep
from api.schemas.events import EventIn, EventOut
from nurture.event_types import UNSUBSCRIBE_EVENTS
from nurture.logging import get_logger
from nurture.models import Event, Flow, FlowStatus, SubscriptionStatus, utcnow

router = APIRouter(prefix="/events", tags=["events"])


def _duplicate(stored: Event) -> JSONResponse:
    body = EventOut(event_id=stored.event_id, contact_id=stored.contact_id, duplicate=True)
    return JSONResponse(status_code=status.HTTP_200_OK, content=body.model_dump(mode="json"))


@router.post(
    "",
    response_model=EventOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": EventOut, "description": "This event_id was already received: nothing was done again"}},
)
async def ingest_event(body: EventIn, session: SessionDep, db: DatabaseDep, enroller: EnrollerDep):
    """Record a contact event and act on it.

    The event goes to the contact's running enrollments (goals, waits, engagement) and
    enrolls the contact in every active flow it triggers. `unsubscribed` also unsubscribes
    the contact, which makes its enrollments exit. A contact given by email is created when
    unknown. With an `event_id` already received the answer is 200 `duplicate: true`.
    """
    if body.event_id is not None:
        stored = (await session.exec(select(Event).where(Event.event_id == body.event_id))).first()
        if stored is not None:
            return _duplicate(stored)

    created = False
    if body.contact_id is not None:
        contact = await crud.contact_or_404(session, body.contact_id)
    else:
        assert body.email is not None
        contact, created = await crud.get_or_create_contact(session, body.email)
        if created and await _enrolls_somewhere(session, body.type):
            # The enrollment workflow loads the contact on its own connection, possibly before
            # this request commits: the new contact must be visible first. Undone on failure.
            await session.commit()

    contact_id = contact.id  # read now: a rollback expires the instance
    # Enrolling commits (a row must be visible to its workflow before it starts): then the
    # event is committed first and forgotten again should routing fail, so a retry routes it.
    committed: list[int] = []
    try:
        return await _record_and_route(body, session, enroller, contact, created, committed)
    except BaseException:
        if created or committed:
            await session.rollback()
            for event_row in committed:
                await crud.forget_event(db, event_row)
            if created and contact_id is not None:
                await crud.forget_new_contact(db, contact_id)
        raise


async def _enrolls_somewhere(session, event_type: str) -> bool:
    flow = (
        await session.exec(select(Flow.id).where(Flow.status == FlowStatus.active, Flow.trigger_event == event_type))
    ).first()
    return flow is not None


async def _record_and_route(body: EventIn, session, enroller, contact, created: bool, committed: list[int]):
    occurred_at = body.occurred_at or utcnow()
    event = Event(
        event_id=body.event_id or uuid.uuid4().hex,
        contact_id=contact.id,
        type=body.type,
        properties=body.properties,
        occurred_at=occurred_at,
    )
    try:
        async with session.begin_nested():
            session.add(event)
    except IntegrityError:
        # The same event_id, sent twice at once: the other request handles it.
        stored = (await session.exec(select(Event).where(Event.event_id == event.event_id))).first()
        if stored is None:
            raise
        return _duplicate(stored)

    if contact.last_activity_at is None or occurred_at > contact.last_activity_at:
        contact.last_activity_at = occurred_at
    if body.type in UNSUBSCRIBE_EVENTS and contact.subscription_status != SubscriptionStatus.unsubscribed:
        contact.subscription_status = SubscriptionStatus.unsubscribed
        contact.updated_at = utcnow()
        session.add(contact)
        await enroller.contact_changed(session, contact)
    session.add(contact)
    if await _enrolls_somewhere(session, body.type):
        await session.commit()
        committed.append(event.id)

    outcome = await enroller.route_event(session, contact, event)
    await session.commit()
    get_logger(contact_id=contact.id, event_id=event.event_id).info(
        "event_ingested",
        type=event.type,
        contact_created=created,
        enrolled=[e.id for e in outcome.enrolled],
        signalled=[e.id for e in outcome.signalled],
    )
    return EventOut(
        event_id=event.event_id,
        contact_id=contact.id,
        duplicate=False,
        contact_created=created,
        enrolled=[e.id for e in outcome.enrolled],
        signalled=[e.id for e in outcome.signalled],
    )
