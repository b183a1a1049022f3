"""The shipped playbooks: ready flows in ``flows/``, their templates in ``flows/templates/``.

``flows/NN-<name>.yaml`` is a flow definition; ``flows/templates/<name>.yaml`` maps each
template key the flow sends to its ``name``, ``subject``, ``html`` and ``text``.
Installing a playbook creates the templates that do not exist yet (existing ones are
left as they are: they may have been edited) and the flow as a draft, once per flow name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field, ValidationError
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from nurture.audit import Author, Change, record
from nurture.flow import FlowDefinition, FlowInvalid, load_flow
from nurture.flow.language import EventTrigger, SendEmailStep
from nurture.flow.triggers import SCANNED_TRIGGER_TYPES
from nurture.logging import get_logger
from nurture.models import Flow, FlowStatus, FlowVersion, Template, utcnow
from nurture.settings import Settings
from nurture.simulation_models import TemplateText
from nurture.trigger_schedule import ensure_trigger_scan_schedule

DEFAULT_DIRECTORY = Path(__file__).resolve().parent.parent / "flows"
_FILE = re.compile(r"^(\d+)-([a-z0-9][a-z0-9-]*)\.ya?ml$")


class PlaybookError(Exception):
    """A playbook file that does not load: a broken file in the repository, not bad user input."""


class PlaybookNotFound(LookupError):
    pass


class PlaybookTemplate(BaseModel):
    key: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=100)
    name: str | None = None
    subject: str = Field(min_length=1)
    html: str = Field(min_length=1)
    text: str | None = None


@dataclass
class Playbook:
    name: str
    number: int
    path: Path
    flow: FlowDefinition
    definition: dict[str, Any]
    templates: list[PlaybookTemplate] = field(default_factory=list)

    @property
    def template_texts(self) -> dict[str, TemplateText]:
        return {t.key: TemplateText(subject=t.subject, html=t.html, text=t.text) for t in self.templates}

    @property
    def sends(self) -> list[str]:
        """Template keys the flow sends, in step order."""
        keys: list[str] = []
        for step in self.flow.steps:
            if isinstance(step, SendEmailStep):
                keys += [k for k in step.templates() if k not in keys]
        return keys


def playbooks_directory(settings: Settings | None = None) -> Path:
    configured = getattr(settings, "playbooks_dir", None) if settings is not None else None
    return Path(configured) if configured else DEFAULT_DIRECTORY


def load_playbooks(directory: Path = DEFAULT_DIRECTORY) -> list[Playbook]:
    """Every playbook in the directory, in their numbered order; PlaybookError names a broken one."""
    found = []
    for path in sorted(directory.glob("*.y*ml")):
        match = _FILE.match(path.name)
        if match:
            found.append(_load(path, int(match.group(1)), match.group(2)))
    return sorted(found, key=lambda p: p.number)


def load_playbook(name: str, directory: Path = DEFAULT_DIRECTORY) -> Playbook:
    for path in directory.glob("*.y*ml"):
        match = _FILE.match(path.name)
        if match and match.group(2) == name:
            return _load(path, int(match.group(1)), name)
    raise PlaybookNotFound(name)


def _load(path: Path, number: int, name: str) -> Playbook:
    try:
        definition = yaml.safe_load(path.read_text(encoding="utf-8"))
        templates = _load_templates(path.parent / "templates" / f"{name}.yaml")
        flow = load_flow(definition, known_templates={t.key for t in templates})
    except FlowInvalid as exc:
        raise PlaybookError(f"{path.name}: {exc}") from exc
    except (OSError, yaml.YAMLError, ValidationError, ValueError) as exc:
        raise PlaybookError(f"{path.name}: {exc}") from exc
    return Playbook(name=name, number=number, path=path, flow=flow, definition=definition, templates=templates)


def _load_templates(path: Path) -> list[PlaybookTemplate]:
    if not path.exists():
        return []
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path.name} maps template keys to templates")
    return [PlaybookTemplate(key=key, **(body or {})) for key, body in raw.items()]


# --- installing ---------------------------------------------------------------------


@dataclass
class InstallOutcome:
    playbook: str
    flow: Flow
    created: bool
    activated: bool = False
    created_templates: list[str] = field(default_factory=list)
    existing_templates: list[str] = field(default_factory=list)
    note: str | None = None


async def install_playbook(
    session: AsyncSession,
    playbook: Playbook,
    *,
    activate: bool = False,
    client: Client | None = None,
    settings: Settings | None = None,
    author: Author | None = None,
) -> InstallOutcome:
    """Create the missing templates and the flow (a draft) unless a flow with its name exists; commit.

    With ``activate`` the flow is also activated (a date or inactivity trigger needs ``client``
    and ``settings`` for the schedule that checks it).
    """
    keys = set((await session.exec(select(Template.key))).all())
    outcome_templates: tuple[list[str], list[str]] = ([], [])
    for template in playbook.templates:
        if template.key in keys:
            outcome_templates[1].append(template.key)
            continue
        session.add(Template(**template.model_dump()))
        outcome_templates[0].append(template.key)
    flow = (await session.exec(select(Flow).where(Flow.name == playbook.flow.name).order_by(Flow.id))).first()
    created = flow is None
    if flow is None:
        flow = Flow(name=playbook.flow.name, status=FlowStatus.draft, latest_version=1)
        session.add(flow)
        await session.flush()
        session.add(
            FlowVersion(
                flow_id=flow.id, version=1,
                definition=playbook.flow.model_dump(mode="json", by_alias=True, exclude_none=True),
            )
        )
    await session.flush()
    outcome = InstallOutcome(
        playbook=playbook.name, flow=flow, created=created,
        created_templates=outcome_templates[0], existing_templates=outcome_templates[1],
    )
    if activate and flow.status != FlowStatus.active:
        await _activate(session, flow, client, settings)
        outcome.activated = True
    if created or outcome.activated or outcome.created_templates:
        record(
            session, author or Author(),
            Change("playbook.installed", flow_id=flow.id, subject=playbook.name,
                   detail={"created": created, "activated": outcome.activated, "templates": outcome.created_templates}),
        )
    await session.commit()
    await session.refresh(flow)
    get_logger(flow_id=flow.id, playbook=playbook.name).info(
        "playbook_installed", created=created, activated=outcome.activated, templates=len(outcome.created_templates)
    )
    return outcome


async def _activate(session: AsyncSession, flow: Flow, client: Client | None, settings: Settings | None) -> None:
    """As POST /flows/{id}/activate does: validate with the templates, start the trigger schedule if needed."""
    row = (
        await session.exec(
            select(FlowVersion).where(FlowVersion.flow_id == flow.id, FlowVersion.version == flow.latest_version)
        )
    ).one()
    definition = load_flow(row.definition, known_templates=set((await session.exec(select(Template.key))).all()))
    if definition.trigger.type in SCANNED_TRIGGER_TYPES:
        if client is None or settings is None:
            raise PlaybookError(f"a {definition.trigger.type} trigger needs Temporal for its schedule")
        await ensure_trigger_scan_schedule(client, settings)
    flow.status = FlowStatus.active
    flow.active_version = flow.latest_version
    flow.trigger_event = definition.trigger.event if isinstance(definition.trigger, EventTrigger) else None
    flow.updated_at = utcnow()
    session.add(flow)
