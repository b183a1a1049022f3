"""Send governance on simulated time: windows, quiet hours, the cross-flow cap, handoffs,
pauses confirmed by updates, and unsubscribes that end every flow at once."""

from __future__ import annotations

import asyncio
from datetime import date, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import WorkflowUpdateFailedError

from activities.governance import next_open_slot
from nurture.contracts import EnrollmentState, PauseUpdate, ResumeUpdate
from nurture.enrolling import Enroller
from nurture.flow.language import SendWindow
from nurture.models import Contact, Event, utcnow
from tests.conftest import eventually, result_of, timer_running
from tests.factories import add_contact, add_templates, messages_of
from tests.flow_runner import manual_flow, run_flow, start

pytestmark = pytest.mark.usefixtures("worker")
BERLIN = ZoneInfo("Europe/Berlin")
HELLO = {"id": "hello", "type": "send_email", "template": "demo-welcome"}


@pytest.fixture(autouse=True)
async def templates(db):
    await add_templates(db)


def test_next_open_slot_skips_quiet_hours_holidays_and_closed_days():
    window = SendWindow(days=["mon", "tue", "wed", "thu", "fri"], start="09:00", end="17:00")
    friday_evening = date(2026, 3, 6)
    from activities.scheduling import local_instant

    now = local_instant(friday_evening, time(18, 30), BERLIN)
    monday = next_open_slot(now, BERLIN, window, None, set())
    assert monday.astimezone(BERLIN).strftime("%a %H:%M") == "Mon 09:00"
    # Monday is a holiday: Tuesday then.
    tuesday = next_open_slot(now, BERLIN, window, None, {date(2026, 3, 9)})
    assert tuesday.astimezone(BERLIN).strftime("%a %d %H:%M") == "Tue 10 09:00"
    # Quiet hours 21:00-08:00 wrap midnight; without a window the next slot is 08:00.
    late = local_instant(friday_evening, time(22, 0), BERLIN)
    assert next_open_slot(late, BERLIN, None, (time(21), time(8)), set()).astimezone(BERLIN).strftime("%a %H:%M") == "Sat 08:00"
    # Inside the window nothing moves.
    noon = local_instant(friday_evening, time(12, 0), BERLIN)
    assert next_open_slot(noon, BERLIN, window, (time(21), time(8)), set()) == noon


async def test_send_outside_the_window_is_deferred_to_the_next_slot_not_dropped(db, client, settings, temporal_env):
    now = (await temporal_env.get_current_time()).astimezone(BERLIN)
    # A one-hour window that opens three hours from now, local to the contact.
    opens = (now + timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
    # A window may not cross midnight: one that opens at 23:00 ends at 23:59.
    closes = (opens + timedelta(hours=1)).strftime("%H:%M") if opens.hour < 23 else "23:59"
    window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": opens.strftime("%H:%M"), "end": closes}
    flow, contact, handle = await start(db, client, settings, manual_flow(HELLO, send_window=window), timezone="Europe/Berlin")

    state = await eventually(lambda: _deferred(handle))
    assert state.deferred_reason == "outside the send window"
    await result_of(temporal_env, handle)

    [message] = await messages_of(db, contact.id)
    assert message.status == "sent"
    assert abs(message.scheduled_at - opens) < timedelta(seconds=5)


async def _deferred(handle):
    state = await handle.query("state", result_type=EnrollmentState)
    return state if state.send_deferred and state.deferred_until else None


async def test_pause_that_expires_in_a_window_gap_sends_at_the_next_window(db, client, settings, temporal_env):
    now = (await temporal_env.get_current_time()).astimezone(BERLIN)
    window = {"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "09:00", "end": "10:00"}
    flow = manual_flow({"id": "wait", "type": "delay", "duration": "1d"}, HELLO, send_window=window)
    _, contact, handle = await start(db, client, settings, flow, timezone="Europe/Berlin")
    await eventually(lambda: _at_step(handle, "wait"))
    # The pause ends at 13:00 local two days out: after the send fell due, outside the window.
    pause_end = (now + timedelta(days=2)).replace(hour=13, minute=0, second=0, microsecond=0)
    confirmed = await handle.execute_update(
        "pause_enrollment", PauseUpdate(until=pause_end, reason="on a call", paused_by="rep-1"),
        result_type=EnrollmentState,
    )
    assert confirmed.paused.until == pause_end

    await result_of(temporal_env, handle)
    [message] = await messages_of(db, contact.id)
    sent = message.scheduled_at.astimezone(BERLIN)
    assert sent > pause_end and (sent.hour, sent.minute) == (9, 0)
    assert sent - pause_end < timedelta(days=1)


async def _at_step(handle, step):
    state = await handle.query("state", result_type=EnrollmentState)
    return state.current_step == step


async def test_pause_update_is_validated_and_confirmed(db, client, settings, temporal_env):
    flow = manual_flow({"id": "wait", "type": "delay", "duration": "3d"}, HELLO)
    _, contact, handle = await start(db, client, settings, flow)
    await eventually(lambda: _at_step(handle, "wait"))
    now = await temporal_env.get_current_time()

    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update("pause_enrollment", PauseUpdate(until=now - timedelta(hours=1), reason="x", paused_by="rep"))
    assert (await handle.query("state", result_type=EnrollmentState)).paused is None  # nothing written

    paused = await handle.execute_update(
        "pause_enrollment", PauseUpdate(until=now + timedelta(days=10), reason="negotiating", paused_by="rep-2"),
        result_type=EnrollmentState)
    extended = await handle.execute_update(
        "pause_enrollment", PauseUpdate(until=now + timedelta(days=20), reason="still negotiating", paused_by="rep-2"),
        result_type=EnrollmentState)
    resumed = await handle.execute_update("resume_enrollment", ResumeUpdate(resumed_by="rep-2"), result_type=EnrollmentState)

    assert (paused.paused.reason, extended.paused.reason, resumed.paused) == ("negotiating", "still negotiating", None)


async def test_two_flows_racing_for_the_cap_send_one_and_defer_the_other(db, client, settings, temporal_env):
    settings.frequency_cap, settings.frequency_cap_window_hours = 1, 24
    contact = await add_contact(db)
    starts = [await start(db, client, settings, manual_flow(HELLO, name=f"flow {n}"), contact=contact) for n in (1, 2)]
    async with temporal_env.time_skipping_unlocked():
        await asyncio.gather(*(handle.result() for _, _, handle in starts))

    first, second = sorted(await messages_of(db, contact.id), key=lambda m: m.scheduled_at)
    assert first.status == second.status == "sent"
    assert second.scheduled_at - first.scheduled_at >= timedelta(hours=24)
    assert second.scheduled_at - first.scheduled_at < timedelta(hours=24, seconds=10)


HANDOFF = manual_flow(
    {"id": "handoff", "type": "handoff_to_sales", "silence_limit": "21d",
     "on_won": "won", "on_lost": "lost", "on_returned": "returned", "on_silence": "reengage"},
    {"id": "won", "type": "update_contact", "lifecycle_stage": "customer", "next": "end"},
    {"id": "lost", "type": "update_contact", "add_tags": ["lost"], "next": "end"},
    {"id": "returned", "type": "update_contact", "add_tags": ["back-to-marketing"], "next": "end"},
    {"id": "reengage", "type": "send_email", "template": "demo-welcome-resend"},
    {"id": "end", "type": "exit", "reason": "handoff_done"},
)


@pytest.mark.parametrize(
    ("event_type", "stage", "expect"),
    [("deal_stage_changed", "closedwon", "won"), ("deal_stage_changed", "closedlost", "lost"),
     ("returned_to_marketing", None, "returned"), (None, None, "silence")],
)
async def test_handoff_takes_the_outcome_path_or_reengages_after_silence(
    db, client, settings, temporal_env, event_type, stage, expect
):
    _, contact, handle = await start(db, client, settings, HANDOFF, owner="rep@example.com")
    quiet = await eventually(lambda: _quiet(db, contact.id))
    assert quiet.paused_by == f"handoff:{handle.id}" and quiet.paused_until is not None

    if event_type:
        async with db.session() as s:
            fresh = await s.get(Contact, contact.id)
            event = Event(event_id=f"deal-{expect}", contact_id=contact.id, type=event_type,
                          properties={"stage": stage} if stage else {}, occurred_at=utcnow())
            s.add(event)
            await s.flush()
            await Enroller(client, settings).route_event(s, fresh, event)
            await s.commit()
    await result_of(temporal_env, handle)

    state = await handle.query("state", result_type=EnrollmentState)
    assert next(e.detail for e in state.timeline if e.kind == "handoff_outcome") == expect
    async with db.session() as s:
        after = await s.get(Contact, contact.id)
    assert after.paused_until is None  # the quiet period ended with the outcome
    messages = await messages_of(db, contact.id)
    assert messages[0].kind == "internal" and messages[0].to_email == "rep@example.com"
    if expect == "silence":
        resend = messages[-1]
        assert resend.template_key == "demo-welcome-resend"
        assert abs(resend.scheduled_at - (state.entered_at + timedelta(days=21))) < timedelta(seconds=5)
    if expect == "won":
        assert after.lifecycle_stage == "customer"


async def _quiet(db, contact_id):
    async with db.session() as s:
        contact = await s.get(Contact, contact_id)
    return contact if contact.paused_by else None


async def test_unsubscribe_mid_delay_exits_three_flows_at_once(db, client, settings, temporal_env):
    contact = await add_contact(db)
    handles = []
    for n, wait in enumerate(("2d", "5d", "9d")):
        flow = manual_flow(HELLO, {"id": "wait", "type": "delay", "duration": wait},
                           {"id": "again", "type": "send_email", "template": "case-study"}, name=f"flow {n}")
        handles.append((await start(db, client, settings, flow, contact=contact))[2])
    for handle in handles:
        await eventually(lambda: timer_running(handle, "wait"))
    await temporal_env.sleep(timedelta(days=1))

    async with db.session() as s:
        fresh = await s.get(Contact, contact.id)
        event = Event(event_id="unsub", contact_id=contact.id, type="unsubscribed", occurred_at=utcnow())
        s.add(event)
        await s.flush()
        outcome = await Enroller(client, settings).route_event(s, fresh, event)
        await s.commit()
    assert len(outcome.signalled) == 3

    for handle in handles:
        result = await result_of(temporal_env, handle)
        assert (result.status, result.exit_reason) == ("exited", "unsubscribed")
        exited = (await handle.query("state", result_type=EnrollmentState)).timeline[-1]
        assert exited.at - (await handle.query("state", result_type=EnrollmentState)).entered_at < timedelta(days=2)
    assert [m.template_key for m in await messages_of(db, contact.id)] == ["demo-welcome"] * 3
