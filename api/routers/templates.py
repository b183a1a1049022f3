from __future__ import annotations

from typing import Annotated

from uuid import uuid4

from fastapi import APIRouter, HTTPException, Path, Response, status
from fastapi.exceptions import RequestValidationError
from jinja2 import TemplateError
from sqlalchemy import func
from sqlmodel import select

from api import crud
from activities.email.providers import OutgoingEmail, PermanentDeliveryError, TemporaryDeliveryError, provider_from_settings
from activities.email.rendering import SAMPLE_CONTACT, SAMPLE_LINKS, TemplateRenderer
from api.deps import AuthorDep, CallerDep, PaginationDep, SessionDep, SettingsDep
from api.schemas.common import Page
from api.schemas.templates import KEY_PATTERN, TemplateBody, TemplateCreate, TemplateOut, SendTestIn, SendTestOut
from nurture.audit import Change, record
from nurture.logging import get_logger
from nurture.models import Contact, Template, utcnow
from nurture.snapshots import contact_snapshot

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


@router.post(
    "/{key}/test-send",
    response_model=SendTestOut,
    responses={409: {"description": "The caller is an API key, not a person with an email"}},
)
async def test_send(
    key: TemplateKeyPath, body: SendTestIn, session: SessionDep, settings: SettingsDep, caller: CallerDep,
    author: AuthorDep,
) -> SendTestOut:
    """Send the saved template, rendered for a contact (a sample one when none is named), to the
    signed-in person's own email through the configured provider, subject prefixed "[Test]". It is
    recorded in the audit log as a test send, never as a message of a flow (no flow statistics count it)."""
    if caller is None or not caller.is_person:
        raise HTTPException(409, "a test send goes to the signed-in person's own email: sign in to the console (an API key has no email)")
    template = await _by_key(session, key)
    if template is None:
        raise HTTPException(404, f"template '{key}' does not exist")
    contact = SAMPLE_CONTACT
    if body.contact_id is not None:
        found = await session.get(Contact, body.contact_id)
        if found is None:
            raise RequestValidationError([{"type": "not_found", "loc": ("body", "contact_id"), "msg": f"contact {body.contact_id} does not exist"}])
        contact = contact_snapshot(found)
    renderer = TemplateRenderer.from_settings(settings)
    try:
        rendered = await renderer.email(template.subject, template.html, template.text, {"contact": contact.fields(), **SAMPLE_LINKS})
    except TemplateError as exc:
        field = getattr(exc, "field", "html")
        raise RequestValidationError([{"type": "template_render", "loc": ("body", field), "msg": f"the template does not render: {exc}"}]) from exc
    idempotency_key = f"test-send-{key}-{uuid4().hex}"  # every test send is a message of its own
    try:
        provider_id = await provider_from_settings(settings).deliver(OutgoingEmail(
            idempotency_key=idempotency_key, sender=settings.email_from, to=caller.name, to_name=caller.display_name,
            subject=f"[Test] {rendered.subject}", html=rendered.html, text=rendered.text,
            headers={"X-Nurture-Test-Send": key},
        ))
    except PermanentDeliveryError as exc:
        raise HTTPException(422, f"the email provider refused the test send: {exc}") from exc
    except TemporaryDeliveryError as exc:
        raise HTTPException(503, f"the email provider could not take the test send now: {exc}") from exc
    record(session, author, Change("template.test_sent", subject=key,
                                   detail={"to": caller.name, "contact_id": body.contact_id, "provider_message_id": provider_id}))
    await session.commit()
    get_logger(template=key).info("template_test_sent", contact_id=body.contact_id)
    return SendTestOut(to=caller.name, subject=f"[Test] {rendered.subject}", provider_message_id=provider_id)
