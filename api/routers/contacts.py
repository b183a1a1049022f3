from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy import func
from sqlmodel import col, select

from api import crud
from api.deps import (
    CallerDep,
    ClientDep,
    ContactDep,
    DatabaseDep,
    EnrollerDep,
    PaginationDep,
    SessionDep,
    SettingsDep,
    acting_as,
)
from api.schemas.common import Page
from api.schemas.contacts import (
    ContactOut,
    ContactUpdate,
    ContactUpsert,
    MessageOut,
    PausedEnrollmentOut,
    PauseIn,
    PauseLogOut,
    PauseOut,
    ResumeIn,
)
from api.schemas.enrollments import EnrollmentOut
from nurture.logging import get_logger
from nurture.models import Contact, Enrollment, Message, PauseLog, utcnow
from nurture.pausing import Actor, Pauser
from nurture.snapshots import contact_snapshot

router = APIRouter(prefix="/contacts", tags=["contacts"])


@router.post(
    "",
    response_model=ContactOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": ContactOut, "description": "An existing contact (same email) was updated"}},
)
async def upsert_contact(
    body: ContactUpsert, session: SessionDep, db: DatabaseDep, enroller: EnrollerDep, settings: SettingsDep
) -> Response:
    """Create the contact, or update the one with this email (case-insensitive): 201 created, 200 updated.

    Only the fields sent are changed; properties are merged. An unsubscribed contact stays
    unsubscribed whatever the import says. Running enrollments are told about the change, and
    flows with a property trigger enroll the contact when it starts to match.
    """
    contact, created = await crud.get_or_create_contact(session, body.email)
    previous = None if created else contact_snapshot(contact)
    changed = crud.apply_contact_changes(contact, body.model_dump(exclude_unset=True, exclude={"email"}), explicit_edit=False)
    session.add(contact)
    await session.flush()
    if created:  # upserted to the CRM by email when one is connected (in this transaction)
        await crud.queue_crm_upsert(session, settings, contact)
    committed_early = created and bool(await enroller.property_trigger_flows(session))
    if committed_early:
        # An enrollment workflow loads the contact on its own connection: it must exist first. Undone on failure.
        await session.commit()
    contact_id = contact.id  # read now: a rollback expires the instance
    after = contact_snapshot(contact)
    try:
        # The answer first: a contact that cannot be shown is refused before any workflow hears of it.
        answer = crud.answer(ContactOut, contact, status.HTTP_201_CREATED if created else status.HTTP_200_OK)
        if changed or created:
            await enroller.contact_changed(session, contact, previous, created=created)
        await session.commit()
    except BaseException:
        if committed_early and contact_id is not None:
            await session.rollback()
            await crud.forget_new_contact(db, contact_id)
        elif previous is not None and changed and contact_id is not None:
            await session.rollback()
            await crud.undo_contact_change(db, contact_id, previous, after, changed)
        raise
    get_logger(contact_id=contact_id).info("contact_upserted", created=created, changed=changed)
    return answer


@router.get("", response_model=Page[ContactOut])
async def list_contacts(
    session: SessionDep,
    page: PaginationDep,
    email: Annotated[str | None, Query(max_length=320, description="Find by email, case-insensitive.")] = None,
) -> dict:
    query = select(Contact)
    if email is not None:
        query = query.where(func.lower(Contact.email) == email.strip().lower())
    count = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    items = (await session.exec(query.order_by(Contact.id).offset(page.offset).limit(page.limit))).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.get("/{contact_id}", response_model=ContactOut)
async def get_contact(contact: ContactDep) -> Contact:
    return contact


@router.patch("/{contact_id}", response_model=ContactOut)
async def update_contact(
    contact: ContactDep, body: ContactUpdate, session: SessionDep, db: DatabaseDep, enroller: EnrollerDep
) -> Response:
    """Change the fields sent. Subscribing an unsubscribed contact is refused with 409."""
    previous = contact_snapshot(contact)
    changes = body.model_dump(exclude_unset=True)
    if changes.get("email") and changes["email"] != contact.email:
        other = await crud.contact_by_email(session, changes["email"])
        if other is not None and other.id != contact.id:
            raise HTTPException(status_code=409, detail=f"contact {other.id} already has the email {changes['email']}")
    changed = crud.apply_contact_changes(contact, changes, explicit_edit=True)
    if not changed:
        return crud.answer(ContactOut, contact)
    session.add(contact)
    await session.flush()
    answer = crud.answer(ContactOut, contact)  # before any workflow hears of the change
    contact_id, after = contact.id, contact_snapshot(contact)
    try:
        await enroller.contact_changed(session, contact, previous)
    except BaseException:
        await session.rollback()
        assert contact_id is not None
        await crud.undo_contact_change(db, contact_id, previous, after, changed)
        raise
    await session.commit()
    get_logger(contact_id=contact_id).info("contact_updated", changed=changed)
    return answer


@router.get("/{contact_id}/messages", response_model=Page[MessageOut])
async def contact_messages(contact: ContactDep, session: SessionDep, page: PaginationDep) -> dict:
    """The emails sent (or tried) to the contact, oldest first."""
    query = select(Message).where(Message.contact_id == contact.id)
    count = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    items = (
        await session.exec(query.order_by(col(Message.created_at), col(Message.id)).offset(page.offset).limit(page.limit))
    ).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.get("/{contact_id}/enrollments", response_model=Page[EnrollmentOut])
async def contact_enrollments(contact: ContactDep, session: SessionDep, page: PaginationDep) -> dict:
    query = select(Enrollment).where(Enrollment.contact_id == contact.id)
    count = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    items = (await session.exec(query.order_by(Enrollment.id).offset(page.offset).limit(page.limit))).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.post("/{contact_id}/pause", response_model=PauseOut)
async def pause_contact(
    contact: ContactDep, body: PauseIn, session: SessionDep, client: ClientDep, settings: SettingsDep, caller: CallerDep
) -> PauseOut:
    """A sales pause, in all flows or the named ones. Sends that fall due are held, not skipped.

    Pausing a paused contact again extends (or shortens) the pause. Every affected enrollment
    confirms its new state before anything is stored. The pause is recorded for the key's rep
    (sales keys) or the rep named in `paused_by`, and the key that asked.
    """
    actor = acting_as(caller, body.paused_by, "paused_by")
    until = body.ends_at()
    if until - utcnow() > timedelta(days=settings.max_pause_days):
        field = "until" if body.until is not None else "duration"
        raise RequestValidationError(
            [{"loc": ("body", field), "msg": f"a pause lasts at most {settings.max_pause_days} days", "type": "value_error"}]
        )
    confirmed = await Pauser(client).pause(session, contact, until, body.reason, actor, body.flow_ids)
    await session.commit()
    get_logger(contact_id=contact.id).info(
        "contact_paused", until=until.isoformat(), by=actor.rep, requested_by=actor.requested_by,
        flows=body.flow_ids, enrollments=len(confirmed),
    )
    return _pause_out(contact, confirmed, body.flow_ids, until if body.flow_ids else None, body, actor)


@router.post("/{contact_id}/resume", response_model=PauseOut)
async def resume_contact(
    contact: ContactDep, body: ResumeIn, session: SessionDep, client: ClientDep, caller: CallerDep
) -> PauseOut:
    """End the pause now (in all flows or the named ones); held sends go out."""
    actor = acting_as(caller, body.resumed_by, "resumed_by")
    confirmed = await Pauser(client).resume(session, contact, actor, body.reason, body.flow_ids)
    await session.commit()
    get_logger(contact_id=contact.id).info(
        "contact_resumed", by=actor.rep, requested_by=actor.requested_by, enrollments=len(confirmed)
    )
    return _pause_out(contact, confirmed, body.flow_ids, None, None, actor)


@router.get("/{contact_id}/pauses", response_model=list[PauseLogOut])
async def pause_history(contact: ContactDep, session: SessionDep) -> list[PauseLog]:
    """The audit trail: who paused, extended or resumed this contact, for which rep, until when and why."""
    rows = await session.exec(select(PauseLog).where(PauseLog.contact_id == contact.id).order_by(PauseLog.id))
    return list(rows.all())


def _pause_out(contact: Contact, confirmed, flow_ids, flow_until, body, actor: Actor) -> PauseOut:
    per_flow = flow_ids is not None
    return PauseOut(
        contact_id=contact.id,
        paused_until=flow_until if per_flow and body else contact.paused_until,
        pause_reason=body.reason if per_flow and body else contact.pause_reason,
        paused_by=actor.rep if per_flow and body else contact.paused_by,
        requested_by=actor.requested_by,
        flow_ids=flow_ids,
        enrollment_ids=[c.enrollment.id for c in confirmed],
        enrollments=[
            PausedEnrollmentOut(
                enrollment_id=c.enrollment.id,
                flow_id=c.enrollment.flow_id,
                workflow_id=c.enrollment.workflow_id,
                current_step=c.state.current_step,
                paused_until=c.state.paused.until if c.state.paused else None,
                send_deferred=c.state.send_deferred,
                waiting_until=c.state.waiting_until,
            )
            for c in confirmed
        ],
    )
