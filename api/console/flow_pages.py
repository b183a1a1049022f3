"""Console pages for marketers: the flows list, a flow drawn with its live counts, the
enrollments behind a count, and one enrollment's timeline from its workflow history."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.service import RPCError

from api import crud
from api.console.diagram import StepCounts, draw
from api.console.rendering import page, require, zone
from api.deps import CallerDep, EnrollmentId, FlowId, SessionDep, SettingsDep, TemporalDep
from nurture.analytics import LiveStepCounts, flow_overviews, flows_email_anomalies, funnels, live_flow_counts, sends_per_day
from nurture.audit import flow_changes
from nurture.enrolling import TemporalUnavailable
from nurture.flow import FlowDefinition
from nurture.history import read_history
from nurture.models import Contact, Enrollment, Flow, StepVisit, utcnow
from nurture.temporal import temporal_ui_url

router = APIRouter(prefix="/app", include_in_schema=False)

Behind = Literal["waiting", "entered", "exited"]


@router.get("")
async def home(caller: CallerDep) -> Response:
    """Reps land on their contacts, everyone else on the flows."""
    return RedirectResponse("/app/my" if caller is not None and caller.is_sales else "/app/flows", status_code=303)


@router.get("/flows", response_class=HTMLResponse)
async def flows(request: Request, session: SessionDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/flows")
    rows = (await session.exec(select(Flow).order_by(Flow.id))).all()
    numbers = await flow_overviews(session, utcnow() - timedelta(days=7))
    return page(request, "flows.html", flows=rows, numbers=numbers)


@router.get("/flows/{flow_id}", response_class=HTMLResponse)
async def flow(
    request: Request,
    flow_id: FlowId,
    session: SessionDep,
    caller: CallerDep,
    version: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> Response:
    require(caller, "GET", "/flows/{flow_id}")
    row = await crud.flow_or_404(session, flow_id)
    shown = version or row.active_version or row.latest_version
    definition = FlowDefinition.model_validate((await crud.version_or_404(session, flow_id, shown)).definition)
    live = await live_flow_counts(session, flow_id)  # all versions: what is running now
    order = [s.id for s in definition.steps] + [step_id for step_id in live.steps if step_id not in definition.step_index()]
    types = {s.id: s.type for s in definition.steps}
    rows = [(step_id, types.get(step_id), live.steps.get(step_id) or LiveStepCounts(step_id=step_id)) for step_id in order]
    emails = {step_id for step_id, kind in types.items() if kind == "send_email"}
    counts = {
        step_id: StepCounts(
            waiting=c.waiting_now, entered=c.entered, exited=sum(c.exited_here.values()), exited_by=dict(c.exited_here),
            variants=[(name, *numbers) for name, numbers in sorted(c.variants.items())],
            sent=c.sent if c.sent is not None or step_id not in emails else 0,
            opened=c.opened or 0, clicked=c.clicked or 0,
        )
        for step_id, _, c in rows
    }

    def link(step_id: str, what: str) -> str:
        behind, _, reason = what.partition(":")
        url = f"/app/flows/{flow_id}/enrollments?{urlencode({'step': step_id, 'behind': behind})}"
        return f"{url}&{urlencode({'reason': reason})}" if reason else url

    return page(
        request,
        "flow.html",
        flow=row,
        shown=shown,
        definition=definition,
        diagram=draw(definition, counts, link),
        live=live,
        rows=rows,
        versions=await crud.versions(session, flow_id),
        changes=await flow_changes(session, flow_id),
    )


@router.get("/flows/{flow_id}/enrollments", response_class=HTMLResponse)
async def enrollments_behind(
    request: Request,
    flow_id: FlowId,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    step: Annotated[str, Query(min_length=1, max_length=200)],
    behind: Behind = "waiting",
    reason: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    offset: Annotated[int, Query(ge=0, le=2_147_483_647)] = 0,
) -> Response:
    """The enrollments behind a count of the flow page: waiting at the step now, entered it, exited there."""
    require(caller, "GET", "/enrollments")
    row = await crud.flow_or_404(session, flow_id)
    query = select(Enrollment, Contact).join(Contact, col(Contact.id) == Enrollment.contact_id).where(
        Enrollment.flow_id == flow_id
    )
    if behind == "entered":
        visited = (
            select(StepVisit.enrollment_id)
            .where(StepVisit.flow_id == flow_id, StepVisit.step_id == step)
            .distinct()
            .subquery()
        )
        query = query.join(visited, visited.c.enrollment_id == Enrollment.id)
    else:
        query = query.where(Enrollment.current_step == step, Enrollment.status == ("active" if behind == "waiting" else "exited"))
        if behind == "exited" and reason is not None:  # the flow page counts exits without a reason as "unknown"
            query = query.where(col(Enrollment.exit_reason).is_(None) if reason == "unknown" else Enrollment.exit_reason == reason)
    total = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    size = settings.console_page_size
    found = (await session.exec(query.order_by(col(Enrollment.id).desc()).offset(offset).limit(size))).all()
    return page(
        request, "enrollments.html", flow=row, step=step, behind=behind, reason=reason, rows=found, total=total, offset=offset, size=size
    )


@router.get("/enrollments/{enrollment_id}", response_class=HTMLResponse)
async def enrollment(
    request: Request,
    enrollment_id: EnrollmentId,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    caller: CallerDep,
) -> Response:
    """The enrollment's timeline, read from its workflow history (what `nurture history` prints)."""
    require(caller, "GET", "/enrollments/{enrollment_id}/history")
    row = await crud.enrollment_or_404(session, enrollment_id)
    contact = await session.get(Contact, row.contact_id)
    flow_row = await session.get(Flow, row.flow_id)
    workflow_id, run_id = row.workflow_id, row.run_id
    await session.commit()  # release the database before waiting on Temporal
    history, error = None, None
    try:
        history = await read_history(await temporal.get(), workflow_id, run_id)
    except (RPCError, TemporalUnavailable) as exc:
        error = f"the workflow history could not be read: {exc}"
    return page(
        request,
        "enrollment.html",
        enrollment=row,
        contact=contact,
        flow=flow_row,
        history=history,
        error=error,
        temporal_url=temporal_ui_url(settings, workflow_id),
        zone=zone(contact.timezone if contact else None),
    )


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> Response:
    """Per flow: entered -> sent -> opened -> clicked -> goal (unique contacts) and its anomalies; sends per day."""
    require(caller, "GET", "/flows")
    flows_by_id = {f.id: f for f in (await session.exec(select(Flow).order_by(Flow.id))).all()}
    found = await funnels(session)
    per_day = await sends_per_day(session, utcnow() - timedelta(days=30))
    flagged = await flows_email_anomalies(session, settings)
    return page(
        request, "dashboard.html", anomalies=flagged,
        funnels=[(flows_by_id[i], f) for i, f in sorted(found.items()) if i in flows_by_id],
        per_day=per_day, busiest=max((n for _, n in per_day), default=0),
    )
