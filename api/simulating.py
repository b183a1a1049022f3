"""Running the simulator for a request: the flow simulator as a dependency, and one run for a real or hypothetical contact.

POST /flows/simulate and POST /playbooks/{name}/simulate both answer through ``run_simulation``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from activities.email.rendering import TemplateRenderer
from api import crud
from api.schemas.simulations import SimulationScript
from nurture.flow import FlowDefinition
from nurture.flow.conditions import EventFact
from nurture.models import Event
from nurture.settings import Settings
from nurture.simulation_models import SimulationResult, TemplateText
from nurture.snapshots import contact_snapshot
from simulation.simulator import SimulationError, Simulator, shared_simulator
from simulation.stand_ins import SendRules

HISTORY_LIMIT = 1000


def get_simulator() -> Simulator:
    return shared_simulator()


SimulatorDep = Annotated[Simulator, Depends(get_simulator)]


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
