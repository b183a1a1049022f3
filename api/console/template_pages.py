"""Templates in the console: the list, and an editor with a live preview rendered for a chosen
contact in the same sandbox and budget as sending. Saving is ``PUT /templates/{key}`` (console.js)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import TemplateError
from pydantic import Field
from sqlmodel import select

from activities.email.rendering import SAMPLE_CONTACT, SAMPLE_LINKS, TemplateRenderer
from api.console.rendering import page, require
from api.deps import MAX_ID, CallerDep, SessionDep, SettingsDep
from api.schemas.common import Strict
from api.schemas.templates import KEY_PATTERN
from nurture.models import Contact, Template
from nurture.snapshots import contact_snapshot

router = APIRouter(prefix="/app", include_in_schema=False)

TemplateKey = Annotated[str, Path(pattern=KEY_PATTERN, max_length=100)]


class PreviewIn(Strict):
    subject: str = Field(max_length=998)
    html: str = Field(max_length=1_000_000)
    text: str | None = Field(default=None, max_length=1_000_000)
    contact_id: int | None = Field(default=None, ge=1, le=MAX_ID)


@router.get("/templates", response_class=HTMLResponse)
async def templates_list(request: Request, session: SessionDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/templates")
    rows = (await session.exec(select(Template).order_by(Template.key))).all()
    return page(request, "templates.html", templates=rows)


@router.get("/templates/{key}", response_class=HTMLResponse)
async def template_page(request: Request, key: TemplateKey, session: SessionDep, caller: CallerDep) -> Response:
    require(caller, "GET", "/templates/{key}")
    row = (await session.exec(select(Template).where(Template.key == key))).first()
    if row is None:
        raise HTTPException(404, f"template '{key}' does not exist")
    return page(request, "template.html", template=row)


@router.post("/templates/preview")
async def preview(body: PreviewIn, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> JSONResponse:
    """The template rendered for a contact (the sample contact when none is named), or what is wrong
    with each part, as sending would say it."""
    require(caller, "PUT", "/templates/{key}")
    contact = SAMPLE_CONTACT
    if body.contact_id is not None:
        found = await session.get(Contact, body.contact_id)
        if found is None:
            return JSONResponse({"problems": [{"field": "contact_id", "message": f"contact {body.contact_id} does not exist"}]})
        contact = contact_snapshot(found)
    await session.commit()
    renderer = TemplateRenderer.from_settings(settings)
    try:
        rendered = await renderer.email(body.subject, body.html, body.text, {"contact": contact.fields(), **SAMPLE_LINKS})
    except TemplateError as exc:
        return JSONResponse({"problems": [{"field": getattr(exc, "field", "html"), "message": str(exc)}]})
    return JSONResponse({"subject": rendered.subject, "html": rendered.html, "text": rendered.text, "to": contact.email})
