"""Run one flow for one contact to its end on the time-skipping server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nurture.contracts import EnrollmentResult, EnrollmentState
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow, Message
from tests.conftest import result_of
from tests.factories import add_active_flow, add_contact, messages_of


@dataclass
class Run:
    result: EnrollmentResult
    state: EnrollmentState
    messages: list[Message]
    contact: Contact
    flow: Flow
    workflow_id: str


def manual_flow(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": extra.pop("name", "Test flow"), "trigger": {"type": "manual"}, "steps": list(steps), **extra}


async def start(db: Database, client, settings, definition: dict[str, Any], contact: Contact | None = None, **fields):
    flow = await add_active_flow(db, definition)
    contact = contact or await add_contact(db, **fields)
    async with db.session() as s:
        outcome = await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
        await s.commit()
    return flow, contact, client.get_workflow_handle(outcome.enrollment.workflow_id, result_type=EnrollmentResult)


async def run_flow(db: Database, client, settings, env, definition: dict[str, Any], contact: Contact | None = None, **fields) -> Run:
    flow, contact, handle = await start(db, client, settings, definition, contact, **fields)
    result = await result_of(env, handle)
    state = await handle.query("state", result_type=EnrollmentState)
    async with db.session() as s:
        fresh = await s.get(Contact, contact.id)
    return Run(result, state, await messages_of(db, contact.id), fresh, flow, handle.id)
