"""Reads and writes shared by the routers. Nothing here commits: the endpoint does, once."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.email.rendering import TemplateRenderer
from nurture import contact_changes
from nurture.db import Database
from nurture.flow import FlowDefinition, Problem
from nurture.flow.language import EventTrigger, SendEmailStep
from nurture.contracts import ContactSnapshot
from nurture.logging import get_logger
from nurture.crm.writes import UPSERT, queue_upsert as queue_crm_upsert  # noqa: F401 (for the routers)
from nurture.models import Contact, CrmWrite, Enrollment, Event, Flow, FlowVersion, Template, utcnow
from nurture.snapshots import contact_snapshot


# --- answers -------------------------------------------------------------------


def answer(model: type[BaseModel], row: Any, status_code: int = 200) -> Response:
    """The response for ``row``, rendered now: call it before the commit, so that nothing is
    stored whose own answer cannot be produced (the request is refused with a 422 instead)."""
    try:
        body = model.model_validate(row).model_dump_json()
    except (ValueError, RecursionError) as exc:  # pydantic's ValidationError and PydanticSerializationError are ValueErrors
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("body",), "msg": f"the request cannot be stored: its answer cannot be produced ({exc})"[:500]}]
        ) from exc
    return Response(content=body, status_code=status_code, media_type="application/json")


# --- contacts ----------------------------------------------------------------


async def contact_or_404(session: AsyncSession, contact_id: int) -> Contact:
    contact = await session.get(Contact, contact_id)
    if contact is None:
        raise HTTPException(status_code=404, detail=f"contact {contact_id} does not exist")
    return contact


async def contact_by_email(session: AsyncSession, email: str) -> Contact | None:
    return (await session.exec(select(Contact).where(func.lower(Contact.email) == email.strip().lower()))).first()


async def get_or_create_contact(session: AsyncSession, email: str) -> tuple[Contact, bool]:
    """The contact with this email, created (not committed) when there is none."""
    existing = await contact_by_email(session, email)
    if existing is not None:
        return existing, False
    contact = Contact(email=email.strip().lower())
    try:
        async with session.begin_nested():
            session.add(contact)
    except IntegrityError:
        # A concurrent request created it first.
        existing = await contact_by_email(session, email)
        if existing is None:
            raise
        return existing, False
    return contact, True


async def forget_new_contact(db: Database, contact_id: int) -> None:
    """Undo a contact committed early by a request that then failed, unless something uses it by now."""
    try:
        async with db.session() as session:
            contact = await session.get(Contact, contact_id)
            if contact is not None:
                # Its queued CRM upsert goes with it (and stays when the contact must).
                await session.exec(sa.delete(CrmWrite).where(CrmWrite.contact_id == contact_id, CrmWrite.kind == UPSERT))
                await session.delete(contact)
                await session.commit()
    except IntegrityError:
        pass  # events or enrollments of a concurrent request refer to it: it stays
    except Exception as exc:  # the original error is what the client must see
        get_logger(contact_id=contact_id).warning("contact_cleanup_failed", error=str(exc))


async def undo_contact_change(
    db: Database, contact_id: int, before: ContactSnapshot, after: ContactSnapshot, changed: list[str]
) -> None:
    """Put back what a request that then failed changed, when enrolling had committed it (property
    triggers do), so that the client's retry is a change again; a field changed since is left alone."""
    try:
        async with db.session() as session:
            contact = await session.get(Contact, contact_id)
            if contact is None:
                return
            now = contact_snapshot(contact)
            undone = [n for n in changed if getattr(now, n) == getattr(after, n) != getattr(before, n)]
            for name in undone:
                setattr(contact, name, getattr(before, name))
            if undone:
                contact.updated_at = utcnow()
                session.add(contact)
                await session.commit()
    except Exception as exc:  # the original error is what the client must see
        get_logger(contact_id=contact_id).warning("contact_change_undo_failed", error=str(exc))


async def forget_event(db: Database, event_row_id: int, *, only_pending: bool = False) -> None:
    """Undo an event committed by a request that then failed, so that the client's retry
    (the same event_id) is routed instead of answered as a duplicate. ``only_pending``: unless a
    router routed it meanwhile (then it stays, and the retry is a duplicate)."""
    try:
        async with db.session() as session:
            event = await session.get(Event, event_row_id)
            if event is not None and (not only_pending or event.inbox_status == "pending"):
                await session.delete(event)
                await session.commit()
    except Exception as exc:  # the original error is what the client must see
        get_logger(event_id=event_row_id).warning("event_cleanup_failed", error=str(exc))


def apply_contact_changes(contact: Contact, changes: dict[str, Any], *, explicit_edit: bool) -> list[str]:
    """nurture.contact_changes.apply_contact_changes (imports share it); a refused re-subscription is 409."""
    try:
        return contact_changes.apply_contact_changes(contact, changes, explicit_edit=explicit_edit)
    except contact_changes.ResubscribeRefused as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc


# --- templates ---------------------------------------------------------------


async def template_keys(session: AsyncSession) -> set[str]:
    return set((await session.exec(select(Template.key))).all())


async def template_error(
    renderer: TemplateRenderer, subject: str, html: str, text: str | None
) -> RequestValidationError | None:
    """A 422 naming each part that does not parse or does not render for a sample contact within
    the render budget, or None."""
    problems = await renderer.problems(subject, html, text)
    if not problems:
        return None
    return RequestValidationError(
        [
            {
                "type": "template_syntax" if problem.reason.startswith("syntax error") else "template_render",
                "loc": ("body", problem.field),
                "msg": f"the template does not render: {problem.reason}",
            }
            for problem in problems
        ]
    )


# --- flows -------------------------------------------------------------------


async def flow_or_404(session: AsyncSession, flow_id: int) -> Flow:
    flow = await session.get(Flow, flow_id)
    if flow is None:
        raise HTTPException(status_code=404, detail=f"flow {flow_id} does not exist")
    return flow


async def flow_for_enrolling(
    session: AsyncSession, flow_id: int, contact_id: int | None = None
) -> tuple[Flow, FlowVersion | None, Contact | None]:
    """The flow (404 when there is none), its active version (None when it has none) and the
    contact ``contact_id`` (None when not asked for or when there is none), in one statement:
    what an enrollment request reads before it checks anything, in one round trip, not three."""
    query = select(Flow, FlowVersion).outerjoin(
        FlowVersion, sa.and_(FlowVersion.flow_id == Flow.id, FlowVersion.version == Flow.active_version)
    )
    if contact_id is not None:
        query = query.add_columns(Contact).outerjoin(Contact, Contact.id == contact_id)
    found = (await session.exec(query.where(Flow.id == flow_id))).first()
    if found is None:
        raise HTTPException(status_code=404, detail=f"flow {flow_id} does not exist")
    return found[0], found[1], found[2] if contact_id is not None else None


async def version_or_404(session: AsyncSession, flow_id: int, version: int) -> FlowVersion:
    row = (
        await session.exec(select(FlowVersion).where(FlowVersion.flow_id == flow_id, FlowVersion.version == version))
    ).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"flow {flow_id} has no version {version}")
    return row


async def versions(session: AsyncSession, flow_id: int) -> list[FlowVersion]:
    return list(
        (await session.exec(select(FlowVersion).where(FlowVersion.flow_id == flow_id).order_by(FlowVersion.version))).all()
    )


def stored_definition(flow: FlowDefinition) -> dict[str, Any]:
    """The normalized form kept in flow_versions; FlowDefinition.model_validate reads it back."""
    return flow.model_dump(mode="json", by_alias=True, exclude_none=True)


def template_problems(flow: FlowDefinition, known: set[str]) -> list[Problem]:
    return [
        Problem(path=f"steps[{i}].template", message=f"unknown template '{step.template}': create it before activating")
        for i, step in enumerate(flow.steps)
        if isinstance(step, SendEmailStep) and step.template not in known
    ]


def trigger_event(flow: FlowDefinition) -> str | None:
    return flow.trigger.event if isinstance(flow.trigger, EventTrigger) else None


# --- enrollments ---------------------------------------------------------------


async def enrollment_or_404(session: AsyncSession, enrollment_id: int) -> Enrollment:
    enrollment = await session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise HTTPException(status_code=404, detail=f"enrollment {enrollment_id} does not exist")
    return enrollment
