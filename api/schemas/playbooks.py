from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from api.schemas.flows import FlowOut


class PlaybookOut(BaseModel):
    name: str = Field(description="What the endpoints and `nurture load-playbooks` call it.")
    number: int
    title: str = Field(description="The flow's name.")
    description: str | None
    trigger: dict[str, Any]
    goal: dict[str, Any] | None
    steps: int
    templates: list[str] = Field(description="The templates it ships with.")


class PlaybookTemplateOut(BaseModel):
    key: str
    name: str | None
    subject: str
    html: str
    text: str | None


class PlaybookDetail(PlaybookOut):
    definition: dict[str, Any]
    template_bodies: list[PlaybookTemplateOut]


class InstallOut(BaseModel):
    playbook: str
    flow: FlowOut
    created: bool = Field(description="False when a flow with this name existed: it was left as it was.")
    activated: bool
    created_templates: list[str]
    existing_templates: list[str] = Field(description="Templates that existed by key and were not changed.")
