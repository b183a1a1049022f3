"""The shipped playbooks (docs/playbooks.md): list, read, install, simulate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from api.deps import AuthorDep, PaginationDep, SessionDep, SettingsDep, TemporalDep
from api.schemas.common import Page
from api.schemas.flows import FlowOut
from api.schemas.playbooks import InstallOut, PlaybookDetail, PlaybookOut, PlaybookTemplateOut
from api.schemas.simulations import SimulationScript
from api.simulating import SimulatorDep, run_simulation
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES
from nurture.playbooks import Playbook, PlaybookError, PlaybookNotFound, install_playbook, load_playbook, load_playbooks
from nurture.playbooks import playbooks_directory
from nurture.settings import Settings
from nurture.simulation_models import SimulationResult

router = APIRouter(prefix="/playbooks", tags=["playbooks"])

PlaybookName = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=100)]


def _all(settings: Settings) -> list[Playbook]:
    try:
        return load_playbooks(playbooks_directory(settings))
    except PlaybookError as exc:
        raise HTTPException(status_code=503, detail=f"the playbook files cannot be read: {exc}") from exc


def _one(settings: Settings, name: str) -> Playbook:
    try:
        return load_playbook(name, playbooks_directory(settings))
    except PlaybookNotFound:
        known = ", ".join(p.name for p in _all(settings))
        raise HTTPException(status_code=404, detail=f"no playbook named '{name}' (known: {known})") from None
    except PlaybookError as exc:
        raise HTTPException(status_code=503, detail=f"the playbook files cannot be read: {exc}") from exc


def _summary(playbook: Playbook) -> dict:
    flow = playbook.flow
    return {
        "name": playbook.name,
        "number": playbook.number,
        "title": flow.name,
        "description": flow.description,
        "trigger": flow.trigger.model_dump(mode="json", exclude_none=True),
        "goal": flow.goal.model_dump(mode="json", exclude_none=True, by_alias=True) if flow.goal else None,
        "steps": len(flow.steps),
        "templates": [t.key for t in playbook.templates],
    }


@router.get("", response_model=Page[PlaybookOut])
async def list_playbooks(settings: SettingsDep, page: PaginationDep) -> dict:
    """The ready-made flows of the seeds, in order: fifteen HubSpot-style workflows and six campaign types."""
    playbooks = _all(settings)
    items = [_summary(p) for p in playbooks[page.offset : page.offset + page.limit]]
    return {"items": items, "count": len(playbooks), "limit": page.limit, "offset": page.offset}


@router.get("/{name}", response_model=PlaybookDetail)
async def get_playbook(name: PlaybookName, settings: SettingsDep) -> dict:
    """The playbook's flow definition and the templates it ships with."""
    playbook = _one(settings, name)
    return {
        **_summary(playbook),
        "definition": playbook.definition,
        "template_bodies": [PlaybookTemplateOut(**t.model_dump()) for t in playbook.templates],
    }


@router.post(
    "/{name}/install",
    response_model=InstallOut,
    status_code=status.HTTP_201_CREATED,
    responses={200: {"model": InstallOut, "description": "A flow with this name existed: nothing was duplicated"}},
)
async def install(
    name: PlaybookName,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    response: Response,
    author: AuthorDep,
    activate: Annotated[bool, Query(description="Also activate the flow.")] = False,
) -> InstallOut:
    """Create the playbook's templates that do not exist yet and its flow as a draft (201).

    A flow with the playbook's name is not created twice (200, `created: false`); templates that
    exist by key are left unchanged. `?activate=true` activates the flow too (a date or inactivity
    trigger needs Temporal for its schedule: 503 when it is down, and nothing is written).
    """
    playbook = _one(settings, name)
    client = await temporal.get() if activate and playbook.flow.trigger.type in SCANNED_TRIGGER_TYPES else None
    outcome = await install_playbook(
        session, playbook, activate=activate, client=client, settings=settings, author=author
    )
    response.status_code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
    return InstallOut(
        playbook=outcome.playbook,
        flow=FlowOut.model_validate(outcome.flow),
        created=outcome.created,
        activated=outcome.activated,
        created_templates=outcome.created_templates,
        existing_templates=outcome.existing_templates,
    )


@router.post("/{name}/simulate", response_model=SimulationResult)
async def simulate_playbook(
    name: PlaybookName, body: SimulationScript, session: SessionDep, settings: SettingsDep, simulator: SimulatorDep
) -> SimulationResult:
    """Run the playbook as shipped (its own templates) for one contact on simulated time; see POST /flows/simulate."""
    playbook = _one(settings, name)
    return await run_simulation(session, simulator, settings, playbook.flow, body, playbook.template_texts)
