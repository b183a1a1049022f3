"""Builders for the rows a test needs: contacts, templates, active flows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from sqlmodel import select

from nurture.db import Database
from nurture.flow import load_flow
from nurture.models import Contact, Flow, FlowStatus, FlowVersion, Message, Template

EXAMPLE_FLOW = Path(__file__).resolve().parent.parent / "examples" / "demo-request-nurture.yaml"

EXAMPLE_TEMPLATES = {
    "demo-welcome": ("Thanks for your demo request, {{ contact.name }}", "<p>Hi {{ contact.name }}, here is what happens next.</p>"),
    "case-study": ("How {{ contact.company }}'s peers cut churn by 30%", "<p>Read the case study.</p>"),
    "demo-welcome-resend": ("Still curious, {{ contact.name }}?", "<p>Your demo is one click away.</p>"),
}


def example_definition() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE_FLOW.read_text())


async def add_templates(db: Database, templates: dict[str, tuple[str, str]] = EXAMPLE_TEMPLATES) -> None:
    async with db.session() as s:
        for key, (subject, html) in templates.items():
            s.add(Template(key=key, subject=subject, html=html, text=f"{subject}\n"))
        await s.commit()


async def add_contact(db: Database, email: str = "ada@example.com", **fields: Any) -> Contact:
    fields.setdefault("name", "Ada")
    fields.setdefault("company", "Analytical Engines")
    async with db.session() as s:
        contact = Contact(email=email, **fields)
        s.add(contact)
        await s.commit()
        await s.refresh(contact)
        return contact


async def add_active_flow(db: Database, definition: dict[str, Any] | None = None) -> Flow:
    definition = definition or example_definition()
    async with db.session() as s:
        templates = set((await s.exec(select(Template.key))).all())
        flow_def = load_flow(definition, templates)
        trigger_event = getattr(flow_def.trigger, "event", None)
        flow = Flow(name=flow_def.name, status=FlowStatus.active, active_version=1, trigger_event=trigger_event)
        s.add(flow)
        await s.flush()
        s.add(FlowVersion(flow_id=flow.id, version=1, definition=flow_def.model_dump(mode="json", by_alias=True)))
        await s.commit()
        await s.refresh(flow)
        return flow


async def messages_of(db: Database, contact_id: int) -> list[Message]:
    async with db.session() as s:
        rows = await s.exec(select(Message).where(Message.contact_id == contact_id).order_by(Message.id))
        return list(rows.all())


async def enrollment_input(db: Database, flow: Flow, contact: Contact, definition: dict, workflow_id: str, **options: Any):
    """The input of an enrollment started by hand (to set options the Enroller does not), with its row."""
    from nurture.contracts import EnrollmentInput
    from nurture.models import Enrollment
    from nurture.snapshots import contact_snapshot

    async with db.session() as session:
        row = Enrollment(flow_id=flow.id, flow_version=1, contact_id=contact.id, workflow_id=workflow_id)
        session.add(row)
        await session.commit()
        fresh = await session.get(Contact, contact.id)
        return EnrollmentInput(
            flow_id=flow.id, flow_version=1, contact_id=contact.id, flow=load_flow(definition),
            enrollment_id=row.id, contact=contact_snapshot(fresh), **options,
        )
