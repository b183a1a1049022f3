"""The README's example flow, run on the time-skipping server with the exact send times checked."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlmodel import select
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import ContactEventSignal, EnrollmentResult, EnrollmentState, PauseSignal, ResumeSignal
from nurture import enrolling
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.models import Contact, Enrollment, Flow, utcnow
from nurture.settings import Settings
from tests.conftest import eventually, result_of, timer_running
from tests.factories import add_active_flow, add_contact, add_templates, messages_of


@pytest.fixture
async def enroller(client: Client, settings: Settings) -> Enroller:
    return Enroller(client, settings)


async def enroll(db: Database, enroller: Enroller, flow: Flow, contact: Contact) -> Enrollment:
    async with db.session() as s:
        outcome = await enroller.enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
        await s.commit()
        return outcome.enrollment


async def state_of(handle: WorkflowHandle) -> EnrollmentState:
    return await handle.query("state", result_type=EnrollmentState)


async def sent_templates(db: Database, contact_id: int) -> list[str]:
    return [m.template_key for m in await messages_of(db, contact_id) if m.status == "sent"]


def at(actual: datetime | None, expected: datetime) -> bool:
    """Simulated time is exact for timers; activities in between take real milliseconds."""
    return actual is not None and abs(actual - expected) < timedelta(seconds=5)


def event(event_id: str, type_: str, **properties) -> ContactEventSignal:
    return ContactEventSignal(event_id=event_id, type=type_, properties=properties, occurred_at=utcnow())


@pytest.fixture
async def example(db: Database):
    await add_templates(db)
    return await add_active_flow(db), await add_contact(db)


async def test_unengaged_contact_gets_the_resend_two_days_later_and_becomes_mql(
    db, enroller, client, worker, example, temporal_env
):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)

    result = await result_of(temporal_env, handle)

    assert result.status == "completed"
    messages = await messages_of(db, contact.id)
    assert [m.template_key for m in messages] == ["demo-welcome", "demo-welcome-resend"]
    assert messages[0].subject == "Thanks for your demo request, Ada"
    state = await state_of(handle)
    start = state.entered_at
    assert at(messages[0].scheduled_at, start)
    assert at(messages[1].scheduled_at, start + timedelta(days=2))
    # The click wait timed out after 3 days, then the contact became an MQL.
    assert at(state.timeline[-1].at, start + timedelta(days=5))
    async with db.session() as s:
        assert (await s.get(Contact, contact.id)).lifecycle_stage == "marketingqualifiedlead"
        row = await s.get(Enrollment, enrollment.id)
    assert (row.status, row.current_step) == ("completed", None)


async def test_opener_gets_the_case_study_and_a_click_ends_the_wait_early(
    db, enroller, client, worker, example, temporal_env: WorkflowEnvironment
):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    # The open may reach the workflow before the send's own result does: it still counts.
    welcome = (await eventually(lambda: messages_of(db, contact.id)))[0]
    await handle.signal("contact_event", event("open-1", "email_opened", message_id=welcome.id))
    await eventually(lambda: timer_running(handle, "wait-2d"))

    await temporal_env.sleep(timedelta(days=2, hours=1))
    case_study = await eventually(lambda: _template_sent(db, contact.id, "case-study"))
    await handle.signal("contact_event", event("click-1", "email_clicked", message_id=case_study.id))
    result = await result_of(temporal_env, handle)

    assert result.status == "completed"
    assert await sent_templates(db, contact.id) == ["demo-welcome", "case-study"]
    state = await state_of(handle)
    assert at(case_study.scheduled_at, state.entered_at + timedelta(days=2))
    assert state.engagement == {"welcome": ["opened"], "case-study": ["clicked"]}
    wait_end = next(e for e in state.timeline if e.kind == "wait_ended")
    assert wait_end.detail == "event arrived"
    assert wait_end.at < state.entered_at + timedelta(days=5)


async def _template_sent(db: Database, contact_id: int, template: str):
    for message in await messages_of(db, contact_id):
        if message.template_key == template and message.status == "sent":
            return message
    return None


async def test_meeting_booked_mid_delay_exits_at_once_with_nothing_more_sent(
    db, enroller, client, worker, example, temporal_env: WorkflowEnvironment
):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await eventually(lambda: timer_running(handle, "wait-2d"))
    await temporal_env.sleep(timedelta(days=1))

    await handle.signal("contact_event", event("meeting-1", "meeting_booked"))
    result = await result_of(temporal_env, handle)

    assert (result.status, result.exit_reason) == ("exited", "goal_met")
    assert await sent_templates(db, contact.id) == ["demo-welcome"]
    state = await state_of(handle)
    exited = state.timeline[-1]
    assert exited.kind == "exited" and exited.step_id == "wait-2d"
    # It left during the 2-day delay, not when the delay would have ended.
    assert exited.at < state.entered_at + timedelta(days=2)
    async with db.session() as s:
        row = await s.get(Enrollment, enrollment.id)
    assert (row.status, row.exit_reason) == ("exited", "goal_met")


async def test_pause_defers_the_due_send_until_the_pause_ends(
    db, enroller, client, worker, example, temporal_env: WorkflowEnvironment
):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await eventually(lambda: timer_running(handle, "wait-2d"))
    start = (await state_of(handle)).entered_at

    await handle.signal(
        "pause", PauseSignal(until=start + timedelta(days=14), reason="call booked", paused_by="rep-7")
    )
    await temporal_env.sleep(timedelta(days=3))
    state = await state_of(handle)
    assert state.send_deferred and state.paused.paused_by == "rep-7"
    assert await sent_templates(db, contact.id) == ["demo-welcome"]

    await result_of(temporal_env, handle)
    resend = await _template_sent(db, contact.id, "demo-welcome-resend")
    assert at(resend.scheduled_at, start + timedelta(days=14))


async def test_resume_releases_the_deferred_send_at_once(
    db, enroller, client, worker, example, temporal_env: WorkflowEnvironment
):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await eventually(lambda: timer_running(handle, "wait-2d"))
    start = (await state_of(handle)).entered_at
    await handle.signal(
        "pause", PauseSignal(until=start + timedelta(days=14), reason="in negotiation", paused_by="rep-7")
    )
    await temporal_env.sleep(timedelta(days=3))
    assert (await state_of(handle)).send_deferred

    await handle.signal("resume", ResumeSignal(resumed_by="rep-7", reason="call done"))
    resend = await eventually(lambda: _template_sent(db, contact.id, "demo-welcome-resend"))

    assert start + timedelta(days=3) <= resend.scheduled_at < start + timedelta(days=4)
    state = await state_of(handle)
    assert not state.send_deferred and state.paused is None
    assert any(e.kind == "resumed" and "rep-7" in e.detail for e in state.timeline)


async def test_enrolling_twice_is_a_no_op(db, enroller, client, worker, example, temporal_env):
    flow, contact = example
    first = await enroll(db, enroller, flow, contact)
    second = await enroll(db, enroller, flow, contact)

    assert second.id == first.id and second.workflow_id == first.workflow_id
    await result_of(temporal_env, client.get_workflow_handle(first.workflow_id))
    async with db.session() as s:
        rows = (await s.exec(select(Enrollment).where(Enrollment.contact_id == contact.id))).all()
    assert len(rows) == 1
    assert await sent_templates(db, contact.id) == ["demo-welcome", "demo-welcome-resend"]


async def test_enrolling_in_a_race_answers_the_enrollment_that_won(db, enroller, example, monkeypatch):
    """Two requests enroll the same contact at once: the one that writes second answers the
    first one's enrollment (not created), starts no second workflow, and its session goes on."""
    flow, contact = example
    first = await enroll(db, enroller, flow, contact)
    real_latest = enrolling.latest_enrollment
    reads = []

    async def stale_first_read(session, flow_id, contact_id):
        reads.append(flow_id)
        return None if len(reads) == 1 else await real_latest(session, flow_id, contact_id)

    monkeypatch.setattr(enrolling, "latest_enrollment", stale_first_read)
    async with db.session() as s:
        outcome = await enroller.enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
        still_usable = await s.get(Contact, contact.id)
        await s.commit()

    assert not outcome.created and outcome.enrollment.id == first.id
    assert still_usable is not None
    async with db.session() as s:
        rows = (await s.exec(select(Enrollment).where(Enrollment.contact_id == contact.id))).all()
    assert [r.id for r in rows] == [first.id]


async def test_unsubscribed_contact_exits_mid_wait(db, enroller, client, worker, example, temporal_env):
    flow, contact = example
    enrollment = await enroll(db, enroller, flow, contact)
    handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
    await eventually(lambda: _template_sent(db, contact.id, "demo-welcome"))

    await handle.signal("contact_event", event("unsub-1", "unsubscribed"))
    result = await result_of(temporal_env, handle)

    assert (result.status, result.exit_reason) == ("exited", "unsubscribed")
    assert await sent_templates(db, contact.id) == ["demo-welcome"]
