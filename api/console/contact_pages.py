"""Console pages for reps and everyone who looks up a contact: search, the contact page with its
enrollments, messages, activity and Pause / Resume, a rep's home, and the users page (admins).

A sales user sees only their own contacts: the search is limited to their rep id, and the
contact page takes its contact through ``ContactDep``, as every API contact route does.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import String, cast, func, or_
from sqlmodel import col, select
from temporalio.exceptions import TemporalError

from api.console.rendering import local, page, require, zone
from api.deps import CallerDep, ContactDep, SessionDep, SettingsDep, TemporalDep
from nurture.analytics import contact_activity
from nurture.contracts import EnrollmentState
from nurture.enrolling import TemporalUnavailable
from nurture.models import Contact, Enrollment, Event, Flow, PauseLog, User, utcnow

router = APIRouter(prefix="/app", include_in_schema=False)

STATE_TIMEOUT = timedelta(seconds=3)
SearchText = Annotated[str | None, Query(max_length=320)]


@router.get("/contacts", response_class=HTMLResponse)
async def contacts(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    q: SearchText = None,
    tag: SearchText = None,
    owner: SearchText = None,
    offset: Annotated[int, Query(ge=0, le=2_147_483_647)] = 0,
) -> Response:
    """Search by email or name (part of either), tag and owner; a sales user searches their own contacts."""
    require(caller, "GET", "/contacts/{contact_id}")
    query = select(Contact)
    if caller is not None and caller.is_sales:
        owner = caller.owner or ""
    if q and q.strip():
        pattern = f"%{q.strip().lower()}%"
        query = query.where(or_(func.lower(Contact.email).like(pattern), func.lower(Contact.name).like(pattern)))
    if tag and tag.strip():
        # Tags are a JSON list: its text holds the tag in quotes on SQLite and PostgreSQL alike.
        query = query.where(cast(Contact.tags, String).like(f'%"{tag.strip()}"%'))
    if owner is not None and owner.strip() != "":
        query = query.where(Contact.owner == owner.strip())
    size = settings.console_page_size
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    rows = (await session.exec(query.order_by(Contact.id).offset(offset).limit(size))).all()
    return page(
        request, "contacts.html", rows=rows, total=total, q=q or "", tag=tag or "", owner=owner or "",
        offset=offset, size=size,
    )


@dataclass
class EnrollmentView:
    enrollment: Enrollment
    flow_name: str
    state: EnrollmentState | None
    error: str | None


async def _state(temporal, enrollment: Enrollment) -> tuple[EnrollmentState | None, str | None]:
    if enrollment.status != "active":
        return None, None
    try:
        client = await temporal.get()
        state = await client.get_workflow_handle(enrollment.workflow_id).query(
            "state", result_type=EnrollmentState, rpc_timeout=STATE_TIMEOUT
        )
        return state, None
    except (TemporalError, TemporalUnavailable, asyncio.TimeoutError) as exc:
        return None, str(exc) or type(exc).__name__


@router.get("/contacts/{contact_id}", response_class=HTMLResponse)
async def contact_page(
    request: Request, contact: ContactDep, session: SessionDep, temporal: TemporalDep, caller: CallerDep
) -> Response:
    require(caller, "GET", "/contacts/{contact_id}")
    rows = (
        await session.exec(
            select(Enrollment, Flow.name)
            .join(Flow, col(Flow.id) == Enrollment.flow_id)
            .where(Enrollment.contact_id == contact.id)
            .order_by(col(Enrollment.id).desc())
        )
    ).all()
    activity = await contact_activity(session, contact)
    pauses = (
        await session.exec(select(PauseLog).where(PauseLog.contact_id == contact.id).order_by(col(PauseLog.id).desc()))
    ).all()
    events = (
        await session.exec(
            select(Event).where(Event.contact_id == contact.id).order_by(col(Event.occurred_at).desc()).limit(50)
        )
    ).all()
    people = {
        u.id: u
        for u in (
            await session.exec(select(User).where(col(User.id).in_({p.user_id for p in pauses if p.user_id})))
        ).all()
    }
    await session.commit()  # release the database before asking the workflows
    states = await asyncio.gather(*(_state(temporal, e) for e, _ in rows))
    views = [EnrollmentView(e, name, state, error) for (e, name), (state, error) in zip(rows, states, strict=True)]
    where = zone(contact.timezone)
    timeline: list[tuple[datetime, str, str]] = []
    for p in pauses:
        who = p.actor
        asked = people[p.user_id].name or people[p.user_id].email if p.user_id in people else p.requested_by
        if asked and asked != who:
            who = f"{who} (asked by {asked})"
        until = f" until {local(p.until, where)}" if p.until else ""
        timeline.append((p.at, "pause", f"{p.action}{until} by {who}" + (f": {p.reason}" if p.reason else "")))
    for m in activity.messages:
        if m.sent_at:
            timeline.append((m.sent_at, "email", f"sent “{m.subject}” ({m.template_key})"))
    for ev in events:
        timeline.append((ev.occurred_at, "event", ev.type))
    timeline.sort(key=lambda item: item[0], reverse=True)
    return page(
        request,
        "contact.html",
        contact=contact,
        enrollments=views,
        activity=activity,
        timeline=timeline,
        zone=where,
        paused_now=contact.paused_until is not None and contact.paused_until > utcnow(),
    )


@router.get("/my", response_class=HTMLResponse)
async def my_contacts(
    request: Request,
    session: SessionDep,
    caller: CallerDep,
    rep: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
) -> Response:
    """A rep's home: their contacts that are paused or in a sales handoff, the soonest to resume first."""
    require(caller, "GET", "/pauses")
    if caller is not None and caller.is_sales:
        rep = caller.owner
    rows = []
    if rep:
        rows = (
            await session.exec(
                select(Contact)
                .where(Contact.owner == rep, Contact.paused_until > utcnow())
                .order_by(col(Contact.paused_until))
            )
        ).all()
    return page(request, "my.html", rep=rep, rows=rows)


@router.get("/users", response_class=HTMLResponse)
async def users(request: Request, session: SessionDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/users")
    return page(request, "users.html", users=(await session.exec(select(User).order_by(User.id))).all())
