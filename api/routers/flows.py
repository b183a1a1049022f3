"""Flows and their immutable versions. A flow is sent as JSON or YAML (Content-Type decides)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func
from sqlmodel import select

from activities.estimates import estimate
from api import crud
from api.deps import AuthorDep, FlowId, PaginationDep, SessionDep, SettingsDep, TemporalDep, VersionNumber
from api.errors import flow_problems_error
from api.schemas.common import Page, ProblemOut
from api.schemas.flows import (
    ActivateIn,
    DeactivateOut,
    FlowDetail,
    FlowOut,
    FlowVersionOut,
    ValidationOut,
    VersionSummary,
)
from api.schemas.triggers import EstimateIn, EstimateOut
from nurture.audit import Change, record
from nurture.enrolling import Enroller
from nurture.flow import FlowDefinition, FlowInvalid, Problem, load_flow, parse_flow_text
from nurture.flow.limits import FlowLimits
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES
from nurture.logging import get_logger
from nurture.models import Enrollment, EnrollmentStatus, Flow, FlowStatus, FlowVersion, utcnow
from nurture.trigger_schedule import ensure_trigger_scan_schedule

router = APIRouter(prefix="/flows", tags=["flows"])

JSON_TYPES = {"application/json"}
YAML_TYPES = {"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml", "text/plain"}

# The body is read raw (JSON or YAML), so its schema is declared by hand; main.py adds
# FlowDefinition and its parts to the OpenAPI components.
FLOW_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A flow definition, as JSON or as YAML (Content-Type: application/yaml).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/FlowDefinition"}},
            "application/yaml": {"schema": {"$ref": "#/components/schemas/FlowDefinition"}},
        },
    }
}


# /flows/validate lists a flow's problems rather than refusing them: any document is a valid request.
DOCUMENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A flow definition to check (see FlowDefinition), as JSON or YAML: its problems are listed.",
        "content": {media: {"schema": {"type": "object"}} for media in ("application/json", "application/yaml")},
    }
}


async def read_flow_body(request: Request) -> Any:
    """The request body as data; FlowInvalid when it is neither JSON nor YAML."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not (content_type in JSON_TYPES or content_type.endswith("+json") or content_type in YAML_TYPES):
        raise HTTPException(
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"send the flow as application/json or application/yaml, not {content_type}",
        )
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FlowInvalid([Problem(path="body", message="the body is not UTF-8 text")]) from None
    if not text.strip():
        raise FlowInvalid([Problem(path="body", message="the body is empty: send a flow definition")])
    # Parsing and checking run in a thread: a large flow never holds up the event loop (/health).
    return await run_in_threadpool(parse_flow_text, text, content_type or None, flow_limits(request))


def flow_limits(request: Request) -> FlowLimits:
    return request.app.state.settings.flow_limits()


async def parse_flow_request(request: Request) -> FlowDefinition:
    """Parse and check the structure (templates are not checked): 422 listing every problem."""
    try:
        return await run_in_threadpool(load_flow, await read_flow_body(request), None, flow_limits(request))
    except FlowInvalid as exc:
        raise flow_problems_error(exc.problems, "body") from exc


def _problems(problems: list[Problem]) -> list[ProblemOut]:
    return [ProblemOut(path=p.path, message=p.message) for p in problems]


async def flow_detail(session, flow: Flow, warnings: list[Problem] | None = None) -> FlowDetail:
    rows = await crud.versions(session, flow.id)
    shown = flow.active_version or flow.latest_version
    definition = next((v.definition for v in rows if v.version == shown), {})
    return FlowDetail(
        **FlowOut.model_validate(flow).model_dump(),
        versions=[VersionSummary(version=v.version, created_at=v.created_at, active=v.version == flow.active_version) for v in rows],
        definition_version=shown,
        definition=definition,
        warnings=_problems(warnings or []),
    )


def version_out(flow: Flow, row: FlowVersion, warnings: list[Problem] | None = None) -> FlowVersionOut:
    return FlowVersionOut(
        flow_id=flow.id,
        version=row.version,
        active=flow.status == FlowStatus.active and flow.active_version == row.version,
        definition=row.definition,
        created_at=row.created_at,
        warnings=_problems(warnings or []),
    )


@router.post("", response_model=FlowDetail, status_code=status.HTTP_201_CREATED, openapi_extra=FLOW_BODY)
async def create_flow(request: Request, session: SessionDep, author: AuthorDep) -> FlowDetail:
    """Create a draft flow and its version 1.

    Structural problems are a 422 listing each with its path. Templates that do not exist
    yet are allowed in a draft and come back as `warnings`; activation requires them.
    """
    definition = await parse_flow_request(request)
    flow = Flow(name=definition.name, status=FlowStatus.draft, latest_version=1)
    session.add(flow)
    await session.flush()
    session.add(FlowVersion(flow_id=flow.id, version=1, definition=crud.stored_definition(definition)))
    warnings = crud.template_problems(definition, await crud.template_keys(session))
    record(session, author, Change("flow.created", flow_id=flow.id, subject="version 1"))
    await session.commit()
    get_logger(flow_id=flow.id).info("flow_created", name=flow.name, warnings=len(warnings))
    return await flow_detail(session, flow, warnings)


@router.post("/validate", response_model=ValidationOut, openapi_extra=DOCUMENT_BODY)
async def validate_flow(request: Request, session: SessionDep) -> ValidationOut:
    """Check a flow fully, templates included, without saving it: 200 listing its problems.

    A body that is not a JSON object or YAML mapping at all is a 422, as for POST /flows.
    """
    try:
        document = await read_flow_body(request)
    except FlowInvalid as exc:
        raise flow_problems_error(exc.problems, "body") from exc
    if not isinstance(document, dict):
        raise flow_problems_error([Problem(path="body", message="send a flow definition: a JSON object or a YAML mapping")])
    try:
        await run_in_threadpool(load_flow, document, await crud.template_keys(session), flow_limits(request))
    except FlowInvalid as exc:
        return ValidationOut(valid=False, problems=_problems(exc.problems))
    return ValidationOut(valid=True, problems=[])


@router.get("", response_model=Page[FlowOut])
async def list_flows(
    session: SessionDep,
    page: PaginationDep,
    status_: Annotated[FlowStatus | None, Query(alias="status")] = None,
) -> dict:
    query = select(Flow)
    if status_ is not None:
        query = query.where(Flow.status == status_)
    count = (await session.exec(select(func.count()).select_from(query.subquery()))).one()
    items = (await session.exec(query.order_by(Flow.id).offset(page.offset).limit(page.limit))).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.get("/{flow_id:int}", response_model=FlowDetail)  # /flows/validate is not a flow id: 405
async def get_flow(flow_id: FlowId, session: SessionDep) -> FlowDetail:
    """The flow, its versions, and the definition of its active version (the latest while draft)."""
    return await flow_detail(session, await crud.flow_or_404(session, flow_id))


@router.post("/{flow_id}/versions", response_model=FlowVersionOut, status_code=status.HTTP_201_CREATED, openapi_extra=FLOW_BODY)
async def create_version(flow_id: FlowId, request: Request, session: SessionDep, author: AuthorDep) -> FlowVersionOut:
    """Save an edit as a new version (latest + 1). Running enrollments keep the version they started on;
    activate the new one to enroll new contacts on it."""
    flow = await crud.flow_or_404(session, flow_id)
    definition = await parse_flow_request(request)
    flow.latest_version += 1
    flow.name = definition.name
    flow.updated_at = utcnow()
    row = FlowVersion(flow_id=flow.id, version=flow.latest_version, definition=crud.stored_definition(definition))
    session.add(flow)
    session.add(row)
    warnings = crud.template_problems(definition, await crud.template_keys(session))
    record(session, author, Change("flow.version_created", flow_id=flow.id, subject=f"version {row.version}"))
    await session.commit()
    get_logger(flow_id=flow.id).info("flow_version_created", version=row.version)
    return version_out(flow, row, warnings)


@router.get("/{flow_id}/versions/{version}", response_model=FlowVersionOut)
async def get_version(flow_id: FlowId, version: VersionNumber, session: SessionDep) -> FlowVersionOut:
    flow = await crud.flow_or_404(session, flow_id)
    return version_out(flow, await crud.version_or_404(session, flow_id, version))


@router.post("/{flow_id}/activate", response_model=FlowDetail)
async def activate_flow(
    flow_id: FlowId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    author: AuthorDep,
    body: ActivateIn | None = None,
) -> FlowDetail:
    """Make a version (default: the latest) the one new contacts enroll in.

    The version is validated in full, including that every template exists (create assets
    first): problems are a 422 whose `loc` starts with "definition", and the flow is unchanged.
    A date or inactivity trigger also needs Temporal, for the schedule that checks it (503 when down).
    """
    flow = await crud.flow_or_404(session, flow_id)
    number = body.version if body is not None and body.version is not None else flow.latest_version
    row = await crud.version_or_404(session, flow_id, number)
    try:
        definition = await run_in_threadpool(load_flow, row.definition, await crud.template_keys(session), flow_limits(request))
    except FlowInvalid as exc:
        raise flow_problems_error(exc.problems, "definition") from exc
    if definition.trigger.type in SCANNED_TRIGGER_TYPES:
        await ensure_trigger_scan_schedule(await temporal.get(), settings)
    flow.status = FlowStatus.active
    flow.active_version = number
    flow.trigger_event = crud.trigger_event(definition)
    flow.updated_at = utcnow()
    session.add(flow)
    record(session, author, Change("flow.activated", flow_id=flow.id, subject=f"version {number}"))
    await session.commit()
    get_logger(flow_id=flow.id).info("flow_activated", version=number, trigger_event=flow.trigger_event)
    return await flow_detail(session, flow)


@router.post("/{flow_id}/deactivate", response_model=DeactivateOut)
async def deactivate_flow(
    flow_id: FlowId,
    session: SessionDep,
    settings: SettingsDep,
    temporal: TemporalDep,
    author: AuthorDep,
    exit_enrolled: Annotated[bool, Query(description="Also make its active enrollments exit now.")] = False,
    requested_by: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Who the exits are recorded for (default: the caller).")
    ] = None,
) -> DeactivateOut:
    """Stop enrolling: new events no longer start the flow. Running enrollments go on unless
    `exit_enrolled=true`, which tells each to exit (reason `flow_deactivated`)."""
    flow = await crud.flow_or_404(session, flow_id)
    exited: list[int] = []
    if exit_enrolled:
        enroller = Enroller(await temporal.get(), settings)
        active = (
            await session.exec(
                select(Enrollment).where(Enrollment.flow_id == flow_id, Enrollment.status == EnrollmentStatus.active)
            )
        ).all()
        await enroller.exit_all(active, "flow_deactivated", requested_by or author.name)
        exited = [enrollment.id for enrollment in active]  # type: ignore[misc]
    flow.status = FlowStatus.inactive
    flow.updated_at = utcnow()
    session.add(flow)
    record(session, author, Change("flow.deactivated", flow_id=flow.id, detail={"exited": len(exited)}))
    await session.commit()
    get_logger(flow_id=flow.id).info("flow_deactivated", exited=len(exited))
    return DeactivateOut(flow=FlowOut.model_validate(flow), exited=exited)


# --- before going live: how many would enroll -------------------------------------


@router.post("/estimate", response_model=EstimateOut, openapi_extra=FLOW_BODY)
async def estimate_unsaved_flow(request: Request, session: SessionDep, settings: SettingsDep) -> EstimateOut:
    """How many existing contacts the flow in the body would enroll now (nothing is saved).

    Structural problems are a 422 listing each with its path, as for POST /flows.
    """
    definition = await parse_flow_request(request)
    found = await estimate(session, definition, None, utcnow(), settings)
    return EstimateOut(**found.model_dump(), flow_id=None, version=None)


@router.post("/{flow_id}/estimate", response_model=EstimateOut)
async def estimate_flow(
    flow_id: FlowId, session: SessionDep, settings: SettingsDep, body: EstimateIn | None = None
) -> EstimateOut:
    """How many existing contacts a version (default: the active one, else the latest) would enroll now.

    Per trigger: event, contacts who had the event in the last 30 days; property, those who
    match now; date, those whose date fell within the last day; inactivity, those inactive
    long enough and not enrolled since. Unsubscribed, suppressed and already enrolled
    contacts are counted apart in `excluded`.
    """
    flow = await crud.flow_or_404(session, flow_id)
    number = body.version if body is not None and body.version is not None else (flow.active_version or flow.latest_version)
    row = await crud.version_or_404(session, flow_id, number)
    definition = FlowDefinition.model_validate(row.definition)
    found = await estimate(session, definition, flow_id, utcnow(), settings)
    return EstimateOut(**found.model_dump(), flow_id=flow_id, version=number)
