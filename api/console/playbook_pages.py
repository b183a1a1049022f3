"""The playbooks gallery: every shipped flow with its diagram, installable in one click."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from sqlmodel import select

from api.console.diagram import draw
from api.console.rendering import page, require
from api.deps import CallerDep, SessionDep, SettingsDep
from nurture.models import Flow
from nurture.playbooks import PlaybookError, load_playbooks, playbooks_directory

router = APIRouter(prefix="/app", include_in_schema=False)


@router.get("/playbooks", response_class=HTMLResponse)
async def gallery(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/playbooks")
    try:
        playbooks = load_playbooks(playbooks_directory(settings))
    except PlaybookError as exc:
        raise HTTPException(503, f"the playbook files cannot be read: {exc}") from exc
    installed = {name: flow_id for flow_id, name in (await session.exec(select(Flow.id, Flow.name))).all()}
    cards = [
        {
            "playbook": p,
            "diagram": draw(p.flow, compact=True),
            "flow_id": installed.get(p.flow.name),
        }
        for p in playbooks
    ]
    return page(request, "playbooks.html", cards=cards)
