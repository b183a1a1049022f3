from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from sqlalchemy import func
from sqlmodel import select

from api import crud
from activities.email.rendering import TemplateRenderer
from api.deps import AuthorDep, PaginationDep, SessionDep, SettingsDep
from api.schemas.common import Page
from api.schemas.templates import KEY_PATTERN, TemplateBody, TemplateCreate, TemplateOut
from nurture.audit import Change, record
from nurture.logging import get_logger
from nurture.models import Template, utcnow

router = APIRouter(prefix="/templates", tags=["templates"])

TemplateKeyPath = Annotated[str, Path(pattern=KEY_PATTERN, max_length=100)]


async def _by_key(session, key: str) -> Template | None:
    return (await session.exec(select(Template).where(Template.key == key))).first()


@router.post("", response_model=TemplateOut, status_code=status.HTTP_201_CREATED)
async def create_template(body: TemplateCreate, session: SessionDep, settings: SettingsDep, author: AuthorDep) -> Template:
    """Create a template. It is rendered for a sample contact within the render budget (time,
    size): a syntax error, a failure or a part over budget is a 422 naming the field."""
    renderer = TemplateRenderer.from_settings(settings)
    if (error := await crud.template_error(renderer, body.subject, body.html, body.text)) is not None:
        raise error
    if await _by_key(session, body.key) is not None:
        raise HTTPException(status_code=409, detail=f"template '{body.key}' already exists: PUT /templates/{body.key} changes it")
    template = Template(**body.model_dump())
    session.add(template)
    record(session, author, Change("template.created", subject=body.key))
    await session.commit()
    get_logger(template=body.key).info("template_created")
    return template


@router.get("", response_model=Page[TemplateOut])
async def list_templates(session: SessionDep, page: PaginationDep) -> dict:
    count = (await session.exec(select(func.count()).select_from(Template))).one()
    items = (await session.exec(select(Template).order_by(Template.key).offset(page.offset).limit(page.limit))).all()
    return {"items": items, "count": count, "limit": page.limit, "offset": page.offset}


@router.get("/{key}", response_model=TemplateOut)
async def get_template(key: TemplateKeyPath, session: SessionDep) -> Template:
    template = await _by_key(session, key)
    if template is None:
        raise HTTPException(status_code=404, detail=f"template '{key}' does not exist")
    return template


@router.put(
    "/{key}",
    response_model=TemplateOut,
    responses={201: {"model": TemplateOut, "description": "The template did not exist and was created"}},
)
async def put_template(
    key: TemplateKeyPath, body: TemplateBody, session: SessionDep, settings: SettingsDep, response: Response,
    author: AuthorDep,
) -> Template:
    """Replace the template (create it when missing: 201), checked as on create. Emails not yet
    sent use the new text."""
    renderer = TemplateRenderer.from_settings(settings)
    if (error := await crud.template_error(renderer, body.subject, body.html, body.text)) is not None:
        raise error
    template = await _by_key(session, key)
    created = template is None
    if template is None:
        template = Template(key=key, **body.model_dump())
    else:
        for name, value in body.model_dump().items():
            setattr(template, name, value)
        template.updated_at = utcnow()
    session.add(template)
    record(session, author, Change("template.created" if created else "template.saved", subject=key))
    await session.commit()
    get_logger(template=key).info("template_saved", created=created)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return template
