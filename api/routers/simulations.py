"""POST /flows/simulate: one contact's path through a flow on simulated time. Sends nothing, changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.email.rendering import TemplateRenderer
from api import crud
from api.deps import SessionDep, SettingsDep
from api.errors import path_to_loc
from api.schemas.simulations import SimulateIn, SimulationScript
from nurture.flow import FlowDefinition, FlowInvalid, load_flow
from nurture.flow.conditions import EventFact
from nurture.models import Event, Template
from nurture.settings import Settings
from nurture.simulation_models import SimulationResult, TemplateText
from nurture.snapshots import contact_snapshot
from simulation.simulator import SimulationError, Simulator, shared_simulator
from simulation.stand_ins import SendRules

router = APIRouter(prefix="/flows", tags=["flows"])

HISTORY_LIMIT = 1000


def get_simulator() -> Simulator:
    return shared_simulator()


SimulatorDep = Annotated[Simulator, Depends(get_simulator)]


@router.post(
    "/simulate",
    response_model=SimulationResult,
    responses={404: {"description": "Unknown flow, version or contact"}, 503: {"description": "The simulator could not answer"}},
)
async def simulate_flow(
    body: SimulateIn, session: SessionDep, settings: SettingsDep, simulator: SimulatorDep
) -> SimulationResult:
    """Run a flow for one contact, real or hypothetical, on simulated time, and return the timeline.

    The real enrollment workflow runs on a private time-skipping Temporal server, so months
    of waits take a second or two. Each step, each message (with its rendered subject), each
    wait (with its start and end) and the exit are reported at simulated times. Scripted
    events arrive at their offsets: `{"at": "2d3h", "type": "email_opened", "step": "welcome"}`
    opens the email that step sent; `{"at": "5d", "update": {"lifecycle_stage": "customer"}}`
    changes the contact. Nothing is sent, no contact or enrollment is written, and stored
    templates are read as they are (`templates` in the body previews drafts).
    """
    if body.flow is not None:
        try:
            flow = await run_in_threadpool(load_flow, body.flow, None, settings.flow_limits())
        except FlowInvalid as exc:
            raise RequestValidationError(
                [
                    {"type": "flow_invalid", "loc": ("body", "flow", *path_to_loc(p.path)), "msg": p.message, "path": p.path}
                    for p in exc.problems
                ]
            ) from exc
        flow_id, version = 0, 0
    else:
        assert body.flow_id is not None
        stored = await crud.flow_or_404(session, body.flow_id)
        version = body.version or stored.active_version or stored.latest_version
        flow = FlowDefinition.model_validate((await crud.version_or_404(session, stored.id, version)).definition)
        flow_id = stored.id
    templates = {t.key: TemplateText(t.subject, t.html, t.text) for t in (await session.exec(select(Template))).all()}
    templates.update({key: TemplateText(t.subject, t.html, t.text) for key, t in body.templates.items()})
    return await run_simulation(
        session, simulator, settings, flow, body, templates, flow_id=flow_id, flow_version=version
    )


async def run_simulation(
    session: AsyncSession,
    simulator: Simulator,
    settings: Settings,
    flow: FlowDefinition,
    script: SimulationScript,
    templates: dict[str, TemplateText],
    *,
    flow_id: int = 0,
    flow_version: int = 0,
) -> SimulationResult:
    """Read the contact (and its recent events) if it is a real one, release the database, simulate."""
    history: list[EventFact] = []
    if script.contact_id is not None:
        contact = contact_snapshot(await crud.contact_or_404(session, script.contact_id))
        rows = await session.exec(
            select(Event).where(Event.contact_id == contact.id).order_by(Event.occurred_at.desc()).limit(HISTORY_LIMIT)
        )
        history = [EventFact(type=e.type, at=e.occurred_at, properties=e.properties) for e in reversed(rows.all())]
    else:
        assert script.contact is not None
        contact = script.contact.snapshot()
    await session.commit()  # nothing was written; do not hold a connection through the simulation
    start = script.start or datetime.now(UTC)
    if script.contact is not None:
        history = [EventFact(type=e.type, at=start - e.ago, properties=e.properties) for e in script.contact.events]
    try:
        return await simulator.simulate(
            flow, contact, templates=templates, events=script.events, history=history, start=start,
            trigger_properties=script.trigger_properties, horizon=script.horizon,
            flow_id=flow_id, flow_version=flow_version,
            rules=SendRules.from_settings(settings), default_send_time=settings.default_send_time,
            renderer=TemplateRenderer.from_settings(settings),
        )
    except SimulationError as exc:
        if exc.caused_by_flow:
            raise RequestValidationError(
                [{"type": "simulation_failed", "loc": ("body", "flow"), "msg": f"the flow cannot run: {exc}"}]
            ) from exc
        raise HTTPException(status_code=503, detail=f"the simulator could not answer: {exc}") from exc
