"""Every step kind of the flow language, exercised through Temporal."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest
from sqlmodel import select

from nurture.models import Enrollment, Event, SmsMessage, Task
from tests.factories import add_active_flow, add_contact, add_templates
from tests.flow_runner import manual_flow, run_flow

pytestmark = pytest.mark.usefixtures("worker")

HELLO = {"id": "hello", "type": "send_email", "template": "demo-welcome"}


@pytest.fixture(autouse=True)
async def templates(db):
    await add_templates(db)


def near(actual: datetime, expected: datetime) -> bool:
    return abs(actual - expected) < timedelta(seconds=5)


async def test_delay_until_a_contact_date_minus_an_offset_at_local_time(db, client, settings, temporal_env):
    renewal = (await temporal_env.get_current_time() + timedelta(days=200)).date()
    flow = manual_flow(
        {"id": "before-renewal", "type": "delay_until", "property": "renewal_date", "offset": "-30d", "time": "09:00"},
        HELLO,
    )
    run = await run_flow(db, client, settings, temporal_env, flow, timezone="America/New_York",
                         properties={"renewal_date": renewal.isoformat()})

    sent = run.messages[0].scheduled_at.astimezone(ZoneInfo("America/New_York"))
    assert (sent.date(), sent.hour, sent.minute) == (renewal - timedelta(days=30), 9, 0)


async def test_delay_until_birthday_waits_for_the_next_anniversary(db, client, settings, temporal_env):
    flow = manual_flow({"id": "birthday", "type": "delay_until", "property": "birthday", "yearly": True, "time": "10:00"}, HELLO)
    run = await run_flow(db, client, settings, temporal_env, flow, timezone="Asia/Tokyo",
                         properties={"birthday": "1990-02-14"})

    sent = run.messages[0].scheduled_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (sent.month, sent.day, sent.hour) == (2, 14, 10)
    assert sent - run.state.entered_at.astimezone(ZoneInfo("Asia/Tokyo")) <= timedelta(days=366)


async def test_delay_until_a_passed_date_can_exit(db, client, settings, temporal_env):
    flow = manual_flow(
        {"id": "event-day", "type": "delay_until", "date": "2020-01-01T09:00:00+00:00", "if_passed": "exit"}, HELLO
    )
    run = await run_flow(db, client, settings, temporal_env, flow)
    assert (run.result.status, run.result.exit_reason, run.messages) == ("exited", "date_passed", [])


async def test_wait_until_next_weekday_and_time_in_the_contacts_zone(db, client, settings, temporal_env):
    flow = manual_flow({"id": "monday-9", "type": "wait_until", "weekdays": ["mon"], "time": "09:00"}, HELLO)
    run = await run_flow(db, client, settings, temporal_env, flow, timezone="Europe/Berlin")

    sent = run.messages[0].scheduled_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert (sent.strftime("%a"), sent.hour, sent.minute) == ("Mon", 9, 0)
    assert timedelta(0) < run.messages[0].scheduled_at - run.state.entered_at <= timedelta(days=7)


async def test_wait_until_falls_back_to_the_flows_time_zone(db, client, settings, temporal_env):
    flow = manual_flow({"id": "friday-17", "type": "wait_until", "weekdays": ["fri"], "time": "17:30"}, HELLO,
                       timezone="America/Los_Angeles")
    run = await run_flow(db, client, settings, temporal_env, flow)  # the contact has no time zone

    sent = run.messages[0].scheduled_at.astimezone(ZoneInfo("America/Los_Angeles"))
    assert (sent.strftime("%a"), sent.hour, sent.minute) == ("Fri", 17, 30)


NPS_FLOW = manual_flow(
    {"id": "score", "type": "switch", "cases": [
        {"name": "promoter", "condition": {"property": "nps", "op": "between", "value": [9, 10]}, "goto": "promoter"},
        {"name": "passive", "condition": {"property": "nps", "op": "between", "value": [7, 8]}, "goto": "passive"},
    ], "default": "detractor"},
    {"id": "promoter", "type": "update_contact", "add_tags": ["promoter"], "next": "done"},
    {"id": "passive", "type": "update_contact", "add_tags": ["passive"], "next": "done"},
    {"id": "detractor", "type": "update_contact", "add_tags": ["detractor"], "add_to_lists": ["at-risk"]},
    {"id": "done", "type": "exit", "reason": "scored"},
)


@pytest.mark.parametrize(("nps", "tag"), [(10, "promoter"), (7, "passive"), (3, "detractor")])
async def test_switch_takes_the_nps_range_path(db, client, settings, temporal_env, nps, tag):
    run = await run_flow(db, client, settings, temporal_env, NPS_FLOW, properties={"nps": nps})
    assert run.contact.tags == [tag]
    assert (run.contact.lists == ["at-risk"]) == (tag == "detractor")
    assert run.result.exit_reason == "scored"


async def test_list_and_tag_conditions_and_list_changes(db, client, settings, temporal_env):
    flow = manual_flow(
        {"id": "vip", "type": "branch", "condition": {"all": [{"list": "customers"}, {"tag": "vip"}]},
         "then": "upsell", "else": "nothing"},
        {"id": "upsell", "type": "update_contact", "remove_from_lists": ["customers"], "add_to_lists": ["upsell-2026"],
         "remove_tags": ["vip"], "next": "end"},
        {"id": "nothing", "type": "update_contact", "add_tags": ["not-vip"]},
        {"id": "end", "type": "exit"},
    )
    run = await run_flow(db, client, settings, temporal_env, flow, lists=["customers"], tags=["VIP"])
    assert (run.contact.lists, run.contact.tags) == (["upsell-2026"], [])


async def test_branch_on_an_event_within_a_window(db, client, settings, temporal_env):
    contact = await add_contact(db, email="viewer@example.com")
    async with db.session() as s:
        s.add(Event(event_id="pv-1", contact_id=contact.id, type="page_viewed",
                    properties={"url": "https://acme.com/pricing?x=1"},
                    occurred_at=await temporal_env.get_current_time() - timedelta(days=2)))
        await s.commit()
    flow = manual_flow(
        {"id": "pricing", "type": "branch", "condition": {"event": "page_viewed", "within": "7d",
                                                            "where": [{"property": "url", "op": "matches", "value": "*/pricing*"}]},
         "then": "hot", "else": "cold"},
        {"id": "hot", "type": "update_contact", "add_tags": ["hot"], "next": "end"},
        {"id": "cold", "type": "update_contact", "add_tags": ["cold"]},
        {"id": "end", "type": "exit"},
    )
    run = await run_flow(db, client, settings, temporal_env, flow, contact=contact)
    assert run.contact.tags == ["hot"]


async def test_random_split_is_fixed_per_enrollment_and_uses_both_paths(db, client, settings, temporal_env):
    flow = manual_flow(
        {"id": "ab", "type": "split", "paths": [{"name": "a", "percent": 50, "goto": "a"}, {"name": "b", "percent": 50, "goto": "b"}]},
        {"id": "a", "type": "update_contact", "add_tags": ["a"], "next": "end"},
        {"id": "b", "type": "update_contact", "add_tags": ["b"]},
        {"id": "end", "type": "exit"},
    )
    seen = []
    for i in range(16):
        run = await run_flow(db, client, settings, temporal_env, flow, email=f"ab{i}@example.com")
        assert run.contact.tags == [run.state.choices["ab"]]
        seen.append(run.state.choices["ab"])
    assert set(seen) == {"a", "b"}


async def test_email_variants_are_drawn_and_recorded_on_the_message(db, client, settings, temporal_env):
    flow = manual_flow({"id": "hello", "type": "send_email", "variants": [
        {"id": "short", "template": "demo-welcome", "weight": 1},
        {"id": "story", "template": "case-study", "weight": 1},
    ]})
    variants = set()
    for i in range(12):
        run = await run_flow(db, client, settings, temporal_env, flow, email=f"v{i}@example.com")
        message = run.messages[0]
        assert message.variant == run.state.choices["hello"]
        assert message.template_key == {"short": "demo-welcome", "story": "case-study"}[message.variant]
        variants.add(message.variant)
    assert variants == {"short", "story"}


async def test_owner_notification_and_task(db, client, settings, temporal_env):
    flow = manual_flow(
        {"id": "tell-owner", "type": "notify_owner", "subject": "{{ contact.name }} is hot", "message": "Call them today."},
        {"id": "task", "type": "create_task", "title": "Call {{ contact.name }}", "due_in": "1d", "priority": "high"},
        {"id": "ticket", "type": "create_task", "kind": "ticket", "title": "Check account", "assignee": "support"},
    )
    run = await run_flow(db, client, settings, temporal_env, flow, owner="rep@example.com")

    note = run.messages[0]
    assert (note.kind, note.to_email, note.subject) == ("internal", "rep@example.com", "Ada is hot")
    assert "Recent activity" in note.text and "Call them today." in note.text
    async with db.session() as s:
        tasks = (await s.exec(select(Task).order_by(Task.id))).all()
    assert [(t.kind, t.title, t.assignee, t.priority) for t in tasks] == [
        ("task", "Call Ada", "rep@example.com", "high"), ("ticket", "Check account", "support", "normal")]
    assert near(tasks[0].due_at, run.state.entered_at + timedelta(days=1))


class Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Receiver.received.append((dict(self.headers), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


async def test_webhook_is_signed_and_sent_once(db, client, settings, temporal_env, receiver):
    # The running worker's activities hold this settings object, so they see the change.
    settings.webhook_allow_private_networks = True
    settings.webhook_secret = "s3cret"
    flow = manual_flow({"id": "crm", "type": "webhook", "url": receiver, "body": {"who": "{{ contact.email }}", "score": 5}})
    run = await run_flow(db, client, settings, temporal_env, flow)

    assert len(Receiver.received) == 1
    headers, body = Receiver.received[0]
    timestamp, signature = (part.split("=", 1)[1] for part in headers["X-Nurture-Signature"].split(","))
    expected = hmac.new(b"s3cret", f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == expected
    assert json.loads(body)["data"] == {"who": "ada@example.com", "score": 5}
    assert headers["Idempotency-Key"].endswith("/crm/1")
    assert run.state.timeline[-2].detail.startswith("webhook done: POST")


async def test_webhook_to_loopback_is_refused_by_default_and_the_flow_goes_on(db, client, settings, temporal_env, receiver):
    flow = manual_flow({"id": "crm", "type": "webhook", "url": receiver}, HELLO)
    run = await run_flow(db, client, settings, temporal_env, flow)

    assert Receiver.received == []
    action = next(e for e in run.state.timeline if e.kind == "action")
    assert "webhook failed" in action.detail and "private and loopback" in action.detail
    assert [m.template_key for m in run.messages] == ["demo-welcome"]


async def test_sms_goes_to_the_outbox_or_is_skipped_without_a_phone(db, client, settings, temporal_env):
    flow = manual_flow({"id": "text", "type": "send_sms", "text": "Hi {{ contact.name }}, your demo is tomorrow"})
    await run_flow(db, client, settings, temporal_env, flow, phone="+15550100")
    no_phone = await run_flow(db, client, settings, temporal_env, flow, email="nophone@example.com")

    async with db.session() as s:
        texts = (await s.exec(select(SmsMessage))).all()
    assert [(t.to_phone, t.text, t.status) for t in texts] == [("+15550100", "Hi Ada, your demo is tomorrow", "sent")]
    assert len(list(settings.sms_outbox_dir.glob("*.txt"))) == 1
    assert "skipped: the contact has no phone number" in no_phone.state.timeline[-2].detail


async def test_enroll_in_another_flow(db, client, settings, temporal_env):
    onboarding = await add_active_flow(db, manual_flow({"id": "wait", "type": "delay", "duration": "1d"}, name="Onboarding"))
    flow = manual_flow({"id": "handover", "type": "enroll_in_flow", "flow_id": onboarding.id})
    run = await run_flow(db, client, settings, temporal_env, flow)

    async with db.session() as s:
        enrolled = (await s.exec(select(Enrollment).where(Enrollment.flow_id == onboarding.id))).all()
    assert [e.contact_id for e in enrolled] == [run.contact.id]


async def test_goto_loops_a_bounded_number_of_times(db, client, settings, temporal_env):
    flow = manual_flow(
        {"id": "remind", "type": "send_email", "template": "demo-welcome-resend"},
        {"id": "wait", "type": "wait_for_event", "event": "email_clicked", "timeout": "3d", "on_event": "end"},
        {"id": "again", "type": "goto", "target": "remind", "max_loops": 2},
        {"id": "end", "type": "exit", "reason": "looped"},
    )
    run = await run_flow(db, client, settings, temporal_env, flow)

    assert len(run.messages) == 3  # the first reminder and two loops
    gaps = [b.scheduled_at - a.scheduled_at for a, b in zip(run.messages, run.messages[1:])]
    assert all(near(run.state.entered_at + gap, run.state.entered_at + timedelta(days=3)) for gap in gaps)
    assert run.result.exit_reason == "looped"
