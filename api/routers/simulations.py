"""POST /flows/simulate: one contact's path through a flow on simulated time. Sends nothing, changes nothing."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from sqlmodel import select

from api import crud
from api.deps import SessionDep, SettingsDep
from api.errors import path_to_loc
from api.schemas.simulations import SimulateIn
from api.simulating import SimulatorDep, run_simulation
from nurture.flow import FlowDefinition, FlowInvalid, load_flow
from nurture.models import Template
from nurture.simulation_models import SimulationResult, TemplateText

router = APIRouter(prefix="/flows", tags=["flows"])


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
