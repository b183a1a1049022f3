"""The enrollment's reducer without a server: what each signal and result does to what it knows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nurture.contracts import ContactEventSignal, ContactSnapshot, PauseState, SendEmailResult
from nurture.flow import load_flow
from workflows.enrollment.state import MAX_VISITS_PER_STEP, RunState

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
FLOW = load_flow({
    "name": "Reducer",
    "trigger": {"type": "manual"},
    "goal": {"event": "meeting_booked"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "t"},
        {"id": "wait", "type": "wait_for_event", "event": "email_clicked", "timeout": "3d"},
        {"id": "handoff", "type": "handoff_to_sales", "subject": "s", "message": "m"},
    ],
})


def fresh(**contact) -> RunState:
    snapshot = ContactSnapshot(id=7, email="ada@example.com", **contact)
    return RunState.enter_flow(FLOW, snapshot, None, NOW, detail="flow 1 v1")


def event(event_id: str, type: str, **properties) -> ContactEventSignal:
    return ContactEventSignal(event_id=event_id, type=type, properties=properties, occurred_at=NOW)


def test_a_new_enrollment_stands_on_the_first_step_with_its_entry_noted():
    state = fresh()
    assert state.carried.current_step == "hello" and state.status == "active"
    assert [e.kind for e in state.carried.timeline] == ["entered"]


def test_the_goal_event_requests_the_exit_once_and_an_event_id_is_heard_once():
    state = fresh()
    state.hear_event(event("e1", "meeting_booked"), NOW)
    state.hear_event(event("e1", "meeting_booked"), NOW)
    assert state.exit_reason == "goal_met"
    assert [e.kind for e in state.carried.timeline].count("event") == 1


def test_an_unsubscribed_contact_leaves_and_the_first_reason_stands():
    state = fresh()
    state.hear_contact(ContactSnapshot(id=7, email="ada@example.com", subscription_status="bounced"), NOW)
    state.hear_event(event("e2", "unsubscribed"), NOW)
    assert state.exit_reason == "bounced"


def test_an_open_reported_before_the_send_result_counts_when_the_result_arrives():
    state = fresh()
    state.hear_event(event("o1", "email_opened", message_id=42), NOW)
    assert state.carried.engagement == {}
    state.record_send("hello", SendEmailResult(message_id=42, status="sent"), NOW)
    assert state.carried.engagement == {"hello": ["opened"]}


def test_a_refused_send_exits_as_unsubscribed():
    state = fresh()
    state.record_send("hello", SendEmailResult(message_id=None, status="refused", detail="contact is unsubscribed"), NOW)
    assert state.exit_reason == "unsubscribed"


def test_only_the_awaited_event_ends_a_wait_and_only_an_outcome_ends_a_handoff():
    state = fresh()
    state.carried.current_step = "wait"
    state.hear_event(event("v", "page_viewed"), NOW)
    assert state.matched_event is None
    state.hear_event(event("c", "email_clicked"), NOW)
    assert state.matched_event is not None and state.matched_event.event_id == "c"

    state.matched_event, state.carried.current_step = None, "handoff"
    state.hear_event(event("s1", "deal_stage_changed", stage="demo scheduled"), NOW)
    assert state.sales_outcome() is None
    state.hear_event(event("s2", "deal_stage_changed", stage="Closed Won"), NOW)
    assert state.sales_outcome() == "won"


def test_a_pause_holds_until_it_lapses_or_is_resumed():
    state = fresh()
    pause = PauseState(until=NOW + timedelta(days=2), reason="call", paused_by="rep-jane")
    state.pause(pause, NOW)
    assert state.active_pause(NOW + timedelta(days=1)) == pause
    assert state.active_pause(NOW + timedelta(days=3)) is None
    state.resume("rep-jane", "done", NOW)
    assert state.carried.paused is None and state.carried.timeline[-1].detail == "by rep-jane: done"


def test_a_split_draws_once_per_enrollment_and_step():
    state = fresh()
    first = state.choose("ab", [("a", 50), ("b", 50)], draw=0.9)
    again = state.choose("ab", [("a", 50), ("b", 50)], draw=0.1)
    assert first == again == "b"


def test_a_step_visited_too_often_exits_with_loop_limit():
    state = fresh()
    step = state.step("hello")
    for _ in range(MAX_VISITS_PER_STEP):
        state.enter(step, NOW)
    assert state.exit_reason is None
    state.enter(step, NOW)
    assert state.exit_reason == "loop_limit"


def test_progress_reports_are_numbered_carry_entered_steps_and_are_skipped_when_nothing_changed():
    state = fresh()
    ids = dict(enrollment_id=3, workflow_id="w", run_id="r", flow_id=1, flow_version=1, contact_id=7)
    state.enter(state.step("hello"), NOW)
    first = state.progress_report(NOW, **ids)
    assert first is not None and first.seq == 1 and [e.step_id for e in first.entered] == ["hello"]
    assert state.progress_report(NOW, **ids) is None  # the row already says this

    state.pause(PauseState(until=NOW + timedelta(days=1), reason="call", paused_by="rep"), NOW)
    paused = state.progress_report(NOW, **ids, with_entries=False)
    assert paused is not None and paused.seq == 2 and paused.paused and paused.entered == []

    state.status = "completed"
    last = state.progress_report(NOW + timedelta(days=2), **ids)
    assert last is not None and last.seq == 3 and last.status == "completed" and not last.paused
