"""Six playbooks on the real worker (database, outbox, the suite's Temporal test server), each checked
against its expected path and against what the simulator predicts for the same contact and events."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from activities.scheduling import local_instant
from nurture.contracts import EnrollmentResult, EnrollmentState
from nurture.enrolling import Enroller
from nurture.flow.durations import parse_duration
from nurture.models import Contact, Event, Flow, Message, SmsMessage, Task, Template
from nurture.playbooks import load_playbook
from nurture.simulation_models import HypotheticalContact, ScriptedEvent
from simulation.simulator import Simulator
from tests.conftest import result_of
from tests.factories import add_active_flow, add_contact
from tests.playbook_scenarios import BY_NAME

pytestmark = pytest.mark.usefixtures("worker")

NEAR = timedelta(seconds=5)  # the worker's sends and updates take real milliseconds of server time


@pytest.fixture(scope="module")
async def simulator() -> AsyncIterator[Simulator]:
    running = Simulator()
    yield running
    await running.shutdown()


async def run_on_worker(db, client, settings, temporal_env, name: str, contact_fields: dict, events: list[dict]):
    playbook = load_playbook(name)
    async with db.session() as s:
        for template in playbook.templates:
            s.add(Template(**template.model_dump()))
        await s.commit()
    flow = await add_active_flow(db, playbook.definition)
    # Only the scenario's fields: not the factory's defaults, which the prediction would not know.
    fields = {"name": None, "company": None, **{k: v for k, v in contact_fields.items() if k != "events"}}
    contact = await add_contact(db, email=f"{uuid.uuid4().hex[:8]}@example.com", **fields)
    enroller = Enroller(client, settings)
    async with db.session() as s:
        outcome = await enroller.enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
        await s.commit()
    handle = client.get_workflow_handle(outcome.enrollment.workflow_id, result_type=EnrollmentResult)
    base = await temporal_env.get_current_time()
    for item in sorted(events, key=lambda e: parse_duration(e["at"])):
        due = base + parse_duration(item["at"])
        now = await temporal_env.get_current_time()
        if due > now:
            await temporal_env.sleep(due - now)
        await post_event(db, enroller, contact.id, item, await temporal_env.get_current_time())
    await result_of(temporal_env, handle)
    state = await handle.query("state", result_type=EnrollmentState)
    return playbook, state, contact.id


async def post_event(db, enroller: Enroller, contact_id: int, item: dict, at: datetime) -> None:
    """What POST /events does: record the event, then tell the enrollments it concerns."""
    async with db.session() as s:
        properties = dict(item.get("properties", {}))
        if "step" in item:
            sent = (await s.exec(select(Message).where(Message.contact_id == contact_id,
                                                       Message.step_id == item["step"]))).first()
            properties["message_id"] = sent.id
        event = Event(event_id=uuid.uuid4().hex, contact_id=contact_id, type=item["type"], properties=properties,
                      occurred_at=at)
        s.add(event)
        await s.flush()
        await enroller.route_event(s, await s.get(Contact, contact_id), event)
        await s.commit()


async def observed(db, contact_id: int, entered_at: datetime) -> list[tuple[timedelta, str]]:
    async with db.session() as s:
        messages = (await s.exec(select(Message).where(Message.contact_id == contact_id))).all()
        texts = (await s.exec(select(SmsMessage).where(SmsMessage.contact_id == contact_id))).all()
    sends = [(m.scheduled_at - entered_at, m.template_key if m.kind != "internal" else f"internal:{m.step_id}")
             for m in messages]
    sends += [(t.scheduled_at - entered_at, f"sms:{t.step_id}") for t in texts]
    return sorted(sends, key=lambda s: (s[1], s[0]))


def same_sends(real: list[tuple[timedelta, str]], predicted: list[tuple[timedelta, str]]) -> bool:
    predicted = sorted(predicted, key=lambda s: (s[1], s[0]))
    return [w for _, w in real] == [w for _, w in predicted] and all(
        abs(a - b) < NEAR for (a, _), (b, _) in zip(real, predicted))


def path_of(state: EnrollmentState) -> list[str]:
    return [e.step_id for e in state.timeline if e.kind == "step"]


def webinar_case(now: datetime) -> tuple[dict, list[dict]]:
    """The event ten days from now; the contact attends from 17:00 Berlin time on the day."""
    berlin = ZoneInfo("Europe/Berlin")
    day = (now.astimezone(berlin) + timedelta(days=10)).date()
    attended = local_instant(day, time(17, 0), berlin) - now
    contact = {**BY_NAME["event-webinar"].contact, "properties": {"event_date": day.isoformat(), "event_name": "Summit"}}
    return contact, [{"at": f"{int(attended.total_seconds())}s", "type": "event_attended"}]


CASES = {
    "abandoned-cart": (
        BY_NAME["abandoned-cart"].contact,
        [{"at": "1d6h", "type": "purchase_completed", "properties": {"order_id": "A-1"}}],
        ["wait-1h", "reminder", "wait-23h", "discount", "wait-2d"], ("exited", "goal_met"),
    ),
    "new-customer-onboarding": (
        BY_NAME["new-customer-onboarding"].contact,
        [{"at": "2d", "type": "product_used", "properties": {"action": "login"}}],
        ["welcome", "tell-owner", "wait-1d", "getting-started", "first-login", "wait-advanced", "advanced-training",
         "onboarded"], ("completed", None),
    ),
    "customer-happiness-nps": (
        {**BY_NAME["customer-happiness-nps"].contact, "owner": "csm@example.com", "properties": {"nps_score": 3}},
        [],
        ["score", "detractor", "detractor-follow-up", "detractor-ticket", "tell-owner", "done"], ("exited", "nps_handled"),
    ),
    "welcome-double-opt-in": (BY_NAME["welcome-double-opt-in"].contact, BY_NAME["welcome-double-opt-in"].events,
                              BY_NAME["welcome-double-opt-in"].path, ("completed", None)),
    "deal-based": (BY_NAME["deal-based"].contact, BY_NAME["deal-based"].events, BY_NAME["deal-based"].path,
                   ("exited", "deal_step_done")),
    "event-webinar": (None, None, BY_NAME["event-webinar"].path, ("completed", None)),
}


@pytest.mark.parametrize("name", list(CASES))
async def test_playbook_on_the_real_worker_does_what_the_simulator_predicts(
    db, client, settings, temporal_env, simulator, name
):
    contact, events, path, outcome = CASES[name]
    if contact is None:
        contact, events = webinar_case(await temporal_env.get_current_time())

    playbook, state, contact_id = await run_on_worker(db, client, settings, temporal_env, name, contact, events)
    prediction = await simulator.simulate(
        playbook.flow, HypotheticalContact.model_validate(contact).snapshot(), templates=playbook.template_texts,
        events=[ScriptedEvent.model_validate(e) for e in events], start=state.entered_at,
    )

    assert path_of(state) == prediction.path == path
    assert (state.status, state.exit_reason) == (prediction.status, prediction.exit_reason) == outcome
    real = await observed(db, contact_id, state.entered_at)
    predicted = [(m.at - prediction.started_at, m.template if m.channel == "email" else f"{m.channel}:{m.step_id}")
                 for m in prediction.messages]
    assert same_sends(real, predicted), (real, predicted)
    async with db.session() as s:
        tasks = (await s.exec(select(Task).where(Task.contact_id == contact_id))).all()
        row = await s.get(Contact, contact_id)
    assert sorted(t.title for t in tasks) == sorted(a.detail for a in prediction.actions if a.kind == "task")
    assert (row.lifecycle_stage, sorted(row.tags), sorted(row.lists)) == (
        prediction.contact.lifecycle_stage, sorted(prediction.contact.tags), sorted(prediction.contact.lists))
