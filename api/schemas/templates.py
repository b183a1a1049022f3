from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, StringConstraints

from api.schemas.common import Out, Strict

KEY_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
TemplateKey = Annotated[str, StringConstraints(pattern=KEY_PATTERN, max_length=100)]


class TemplateBody(Strict):
    name: Annotated[str, Field(max_length=200)] | None = None
    subject: Annotated[str, Field(min_length=1, max_length=998, description="Jinja2, e.g. Hi {{ contact.name }}")]
    html: Annotated[str, Field(min_length=1, description="Jinja2 HTML body; contact fields are under `contact`.")]
    text: str | None = Field(default=None, description="Plain-text alternative (Jinja2).")


class TemplateCreate(TemplateBody):
    key: TemplateKey = Field(description="Lowercase letters, digits, - and _; what flows refer to.")


class TemplateOut(Out):
    id: int
    key: str
    name: str | None
    subject: str
    html: str
    text: str | None
    created_at: datetime
    updated_at: datetime


class SendTestIn(Strict):
    contact_id: int | None = Field(default=None, ge=1, le=2_147_483_647, description="Render for this contact; a sample contact when absent.")


class SendTestOut(BaseModel):
    to: str
    subject: str
    provider_message_id: str
