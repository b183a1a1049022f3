"""The playbooks gallery: every shipped flow with its diagram, installable in one click."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup
from sqlmodel import select

from api.console.diagram import draw
from api.console.rendering import page, require
from api.deps import CallerDep, SessionDep, SettingsDep
from nurture.models import Flow
from nurture.playbooks import Playbook, PlaybookError, load_playbooks, playbooks_directory

router = APIRouter(prefix="/app", include_in_schema=False)


@router.get("/playbooks", response_class=HTMLResponse)
async def gallery(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/playbooks")
    directory = playbooks_directory(settings)
    try:
        drawn = _drawn(str(directory), _stamp(directory))
    except PlaybookError as exc:
        raise HTTPException(503, f"the playbook files cannot be read: {exc}") from exc
    installed = {name: flow_id for flow_id, name in (await session.exec(select(Flow.id, Flow.name))).all()}
    cards = [{"playbook": p, "diagram": svg, "flow_id": installed.get(p.flow.name)} for p, svg in drawn]
    return page(request, "playbooks.html", cards=cards)


def _stamp(directory: Path) -> tuple:
    """The playbook files' names and change times: a changed file is read and drawn again."""
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.rglob("*") if p.is_file()))


@lru_cache(maxsize=4)
def _drawn(directory: str, stamp: tuple) -> list[tuple[Playbook, Markup]]:
    return [(p, draw(p.flow, compact=True)) for p in load_playbooks(Path(directory))]
