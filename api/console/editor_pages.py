"""The flow editor: YAML with its problems at their lines, the diagram redrawn as you type, and
a simulator beside it. Saving is ``POST /flows`` or ``POST /flows/{id}/versions`` (console.js);
the check below only reads."""

from __future__ import annotations

import difflib
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response

from api import crud
from api.console.diagram import draw
from api.console.rendering import page, require
from api.deps import MAX_ID, CallerDep, FlowId, SessionDep, SettingsDep
from nurture.flow import FlowDefinition, FlowInvalid, load_flow, parse_flow_text
from nurture.flow.source_lines import line_of, syntax_error_line

router = APIRouter(prefix="/app", include_in_schema=False)

STARTER = """name: New flow
description: What this flow does, for whom.
trigger:
  type: event
  event: demo_requested
goal:
  event: meeting_booked
steps:
  - id: welcome
    type: send_email
    template: demo-welcome
  - id: wait-2d
    type: delay
    duration: 2d
"""


def _without_empty(value: Any) -> Any:
    """Stored definitions spell out every default list and mapping: the editor shows what was written."""
    if isinstance(value, dict):
        return {k: _without_empty(v) for k, v in value.items() if v not in ([], {}, None)}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def as_yaml(definition: dict[str, Any]) -> str:
    return yaml.safe_dump(_without_empty(definition), sort_keys=False, allow_unicode=True, width=100)


@router.get("/flows/new", response_class=HTMLResponse)
async def new_flow(request: Request, caller: CallerDep) -> Response:
    require(caller, "POST", "/flows")
    return page(request, "editor.html", flow=None, text=STARTER, save_to="/flows", version=None)


@router.get("/flows/{flow_id}/edit", response_class=HTMLResponse)
async def edit_flow(request: Request, flow_id: FlowId, session: SessionDep, caller: CallerDep) -> Response:
    require(caller, "POST", "/flows/{flow_id}/versions")
    flow = await crud.flow_or_404(session, flow_id)
    latest = await crud.version_or_404(session, flow_id, flow.latest_version)
    return page(
        request, "editor.html", flow=flow, text=as_yaml(latest.definition), save_to=f"/flows/{flow_id}/versions",
        version=flow.latest_version,
    )


@router.post("/flows/check")
async def check(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> JSONResponse:
    """The editor's text checked as activation would (templates included): each problem with its
    line, the diagram of what parses, and the definition as JSON for the simulator."""
    require(caller, "POST", "/flows/validate")
    text = (await request.body()).decode("utf-8", errors="replace")
    limits = settings.flow_limits()
    try:
        document = await run_in_threadpool(parse_flow_text, text, "application/yaml", limits)
    except FlowInvalid as exc:
        problems = [{"path": p.path, "message": p.message, "line": syntax_error_line(p.message)} for p in exc.problems]
        return JSONResponse({"valid": False, "problems": problems, "diagram": None, "definition": None})
    structure: FlowDefinition | None = None
    found: list[dict[str, Any]] = []
    try:
        structure = await run_in_threadpool(load_flow, document, await crud.template_keys(session), limits)
    except FlowInvalid as exc:
        found = [{"path": p.path, "message": p.message, "line": line_of(text, p.path)} for p in exc.problems]
        try:  # what still parses is drawn (a missing template does not stop the diagram)
            structure = await run_in_threadpool(load_flow, document, None, limits)
        except FlowInvalid:
            structure = None
    return JSONResponse(
        {
            "valid": not found,
            "problems": found,
            "diagram": str(draw(structure)) if structure is not None else None,
            "definition": structure.model_dump(mode="json", by_alias=True, exclude_none=True) if structure else None,
        }
    )


@router.get("/flows/{flow_id}/diff", response_class=HTMLResponse)
async def version_diff(
    request: Request,
    flow_id: FlowId,
    session: SessionDep,
    caller: CallerDep,
    before: Annotated[int, Query(ge=1, le=MAX_ID, alias="from")],
    after: Annotated[int, Query(ge=1, le=MAX_ID, alias="to")],
) -> Response:
    """Two versions of a flow side by side as a unified diff of their YAML."""
    require(caller, "GET", "/flows/{flow_id}")
    flow = await crud.flow_or_404(session, flow_id)
    old = as_yaml((await crud.version_or_404(session, flow_id, before)).definition).splitlines()
    new = as_yaml((await crud.version_or_404(session, flow_id, after)).definition).splitlines()
    lines = list(difflib.unified_diff(old, new, f"version {before}", f"version {after}", lineterm="", n=3))
    return page(request, "diff.html", flow=flow, before=before, after=after, lines=lines)
