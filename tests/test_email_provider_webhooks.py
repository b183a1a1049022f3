"""The engine on each provider's API and webhooks (emulators on loopback): the send, its delivery
report, a hard bounce that suppresses the contact and ends the enrollment, a complaint that
unsubscribes, engagement the provider tracked, and forged or replayed webhooks refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select

from api.main import create_app

from nurture.models import Event, Message, WebhookToken, utcnow
from tests.api_support import active_example_flow, enroll_by_event, wait_for_step
from tests.conftest import BACKENDS, eventually
from tests.email_emulators.fixtures import mailgun, moto_server, postmark, sendgrid, ses  # noqa: F401
from tests.email_emulators.loopback import serving
from tests.email_emulators.sns import SnsEmulator, ses_event
from tests.email_emulators.stack import PATHS, provider_stack  # noqa: F401
from tests.tracking_support import events_of, first_message

# The providers' behaviour does not depend on the database: these run on one, PostgreSQL when
# reachable (the production database), so the four providers stay within seconds each.
pytestmark = pytest.mark.parametrize("db", [BACKENDS[-1]], indirect=True)


async def enrolled(stack, email: str) -> tuple[int, int, Message]:
    contact_id, enrollment_id = await enroll_by_event(stack.api, email, email.split("@")[0].title())
    await wait_for_step(stack.api, enrollment_id, "wait-2d")
    return contact_id, enrollment_id, await first_message(stack.db, contact_id)


async def ended(api, enrollment_id: int) -> dict | None:
    row = (await api.get(f"/enrollments/{enrollment_id}")).json()
    return row if row["status"] != "active" else None


async def test_a_send_goes_through_the_provider_and_its_delivery_report_is_recorded_once(provider_stack, db, client):
    stack = provider_stack
    stack.db = db
    await active_example_flow(stack.api)
    contact_id, _, message = await enrolled(stack, "ada@example.com")

    assert (message.provider, message.status) == (stack.name, "sent")
    # A provider with a send rate (SES's default 14/s) sends on the rate-limited queue; one
    # without (the others' default) on the enrollment's own.
    history = await client.get_workflow_handle(message.workflow_id).fetch_history()
    [queue] = [
        e.activity_task_scheduled_event_attributes.task_queue.name for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
        and e.activity_task_scheduled_event_attributes.activity_type.name == "send_email"
    ]
    rate = stack.settings.send_rate_per_second
    assert queue == (stack.settings.send_task_queue if rate else stack.settings.temporal_task_queue)
    assert (rate is not None) == (stack.name == "ses")
    assert message.provider_message_id and stack.sent_count() >= 1
    if stack.name != "ses":
        accepted = stack.accepted(message)  # the vendor holds our ids in its metadata field
        assert accepted.metadata == {"nurture_message_id": str(message.id), "nurture_enrollment": message.workflow_id}

    forged = await stack.forged("delivered", message)
    assert forged.status_code == 401, forged.text
    assert await events_of(db, contact_id, "email_delivered") == []

    request = stack.signed(stack.payload("delivered", message))
    first = await stack.api.post(PATHS[stack.name], **request)
    assert first.status_code == 200, first.text
    assert (first.json()["recorded"], first.json()["duplicates"]) == (1, 0)
    again = await stack.api.post(PATHS[stack.name], **request)  # the provider retries
    if stack.name == "mailgun":
        assert again.status_code == 406  # its token is spent: a replay is refused
    else:
        assert again.json() == {"recorded": 0, "duplicates": 1, "ignored": []}
    [delivered] = await events_of(db, contact_id, "email_delivered")
    assert delivered.properties["message_id"] == message.id and delivered.properties["provider"] == stack.name
    async with db.session() as s:
        assert (await s.get(Message, message.id)).delivered_at is not None


# Each vendor's word for "this message, this time" (the address may take mail later).
SOFT_BOUNCE = {"ses": {"bounceType": "Transient"}, "sendgrid": {"type": "blocked"}, "postmark": {"Type": "SoftBounce"},
               "mailgun": {"severity": "temporary"}}


async def test_a_hard_bounce_suppresses_a_soft_one_does_not_and_a_complaint_unsubscribes(provider_stack, db):
    stack = provider_stack
    stack.db = db
    await active_example_flow(stack.api)
    bounced_id, bounced_enrollment, bounced_message = await enrolled(stack, "gone@example.com")
    complainer_id, complainer_enrollment, complained_message = await enrolled(stack, "angry@example.com")

    bounce = await stack.report("hard_bounce", bounced_message)
    complaint = await stack.report("complaint", complained_message)
    assert bounce.json()["recorded"] == 1 and complaint.json()["recorded"] == 1, (bounce.text, complaint.text)

    row = await eventually(lambda: ended(stack.api, bounced_enrollment))
    assert (row["status"], row["exit_reason"]) == ("exited", "bounced")
    assert (await stack.api.get(f"/contacts/{bounced_id}")).json()["subscription_status"] == "bounced"
    async with db.session() as s:
        stored = await s.get(Message, bounced_message.id)
    assert stored.bounce_type == "hard"
    [event] = await events_of(db, bounced_id, "email_bounced")
    assert event.properties["bounce_type"] == "hard" and event.properties["reason"]

    row = await eventually(lambda: ended(stack.api, complainer_enrollment))
    assert (row["status"], row["exit_reason"]) == ("exited", "unsubscribed")
    assert (await stack.api.get(f"/contacts/{complainer_id}")).json()["subscription_status"] == "unsubscribed"

    full_id, full_enrollment, full_message = await enrolled(stack, "full@example.com")
    soft = await stack.report("hard_bounce", full_message, **SOFT_BOUNCE[stack.name])
    assert soft.json()["recorded"] == 1, soft.text
    [event] = await events_of(db, full_id, "email_bounced")
    assert event.properties["bounce_type"] == "soft"
    assert (await stack.api.get(f"/contacts/{full_id}")).json()["subscription_status"] == "subscribed"
    assert (await stack.api.get(f"/enrollments/{full_enrollment}")).json()["status"] == "active"


async def test_opens_clicks_and_unsubscribes_the_provider_tracked(provider_stack, db):
    stack = provider_stack
    stack.db = db
    await active_example_flow(stack.api)
    contact_id, enrollment_id, message = await enrolled(stack, "reader@example.com")

    for kind in ("open", "click"):
        answer = await stack.report(kind, message)
        assert answer.json()["recorded"] == 1, answer.text
    [opened] = await events_of(db, contact_id, "email_opened")
    [clicked] = await events_of(db, contact_id, "email_clicked")
    assert opened.properties["bot"] is False and clicked.properties["url"] == "https://example.com/a"
    async with db.session() as s:
        stored = await s.get(Message, message.id)
    assert stored.opened_at is not None and stored.clicked_at is not None

    answer = await stack.report("unsubscribe", message)
    assert answer.json()["recorded"] == 1, answer.text
    row = await eventually(lambda: ended(stack.api, enrollment_id))
    assert (row["status"], row["exit_reason"]) == ("exited", "unsubscribed")
    async with db.session() as s:
        [event] = (await s.exec(select(Event).where(Event.contact_id == contact_id, Event.type == "unsubscribed"))).all()
    assert event.properties["message_id"] == message.id


async def test_a_throttling_provider_slows_the_send_and_nothing_is_lost_or_doubled(provider_stack, db):
    stack = provider_stack
    stack.db = db
    await active_example_flow(stack.api)
    before = stack.sent_count()
    stack.throttle(2, retry_after_seconds=1)
    started = time.monotonic()
    _, _, message = await enrolled(stack, "patient@example.com")

    assert message.status == "sent" and message.attempts == 3  # two throttled answers, then the send
    assert time.monotonic() - started >= 2  # each retry waited the provider's Retry-After
    assert stack.sent_count() - before == 1


# --- each vendor's own scheme -------------------------------------------------------------------


@asynccontextmanager
async def webhook_api(db, client, settings, **update) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update=update), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


async def test_ses_confirms_its_subscription_and_trusts_only_sns_certificates(ses, db, client, settings):
    sns = SnsEmulator()
    async with serving(sns.app) as url, webhook_api(db, client, settings, email_provider="ses", ses=ses) as api:
        sns.base_url = url
        confirmation = sns.subscription_confirmation()
        answer = await api.post("/webhooks/ses", **sns.post(confirmation))
        assert answer.status_code == 200, answer.text
        assert sns.confirmed == [confirmation["Token"]]

        unknown = ses_event("Delivery", "0100018c-unknown", "ada@example.com", {"nurture_message_id": "2000000000"})
        for _ in range(2):
            answer = await api.post("/webhooks/ses", **sns.post(sns.notification(unknown)))
            assert answer.status_code == 200 and answer.json()["ignored"], answer.text
        assert sns.cert_fetches == 1  # the signing certificate is kept

        elsewhere = sns.notification(unknown)
        elsewhere["SigningCertURL"] = "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem"
        assert (await api.post("/webhooks/ses", **sns.post(elsewhere))).status_code == 401
        # Starts like the trusted prefix, but the host is after the "@".
        borrowed = sns.notification(unknown)
        borrowed["SigningCertURL"] = "http://127.0.0.1:@attacker.example/cert.pem"
        assert (await api.post("/webhooks/ses", **sns.post(borrowed))).status_code == 401
        tampered = sns.notification(unknown)
        tampered["Message"] = tampered["Message"].replace("Delivery", "Bounce")
        assert (await api.post("/webhooks/ses", **sns.post(tampered))).status_code == 401
        phishing = sns.subscription_confirmation()
        phishing["SubscribeURL"] = "https://attacker.example/?Action=ConfirmSubscription"
        assert (await api.post("/webhooks/ses", **sns.post(phishing))).status_code == 401
    async with serving(sns.app) as url, webhook_api(
        db, client, settings, email_provider="ses", ses=ses.model_copy(update={"sns_topic_arns": ["arn:aws:sns:us-east-1:1:ours"]})
    ) as api:
        sns.base_url = url
        assert (await api.post("/webhooks/ses", **sns.post(sns.notification(unknown)))).status_code == 401
    assert len(sns.confirmed) == 1


async def test_sendgrid_and_mailgun_refuse_old_signatures_and_mailgun_a_spent_token(sendgrid, mailgun, db, client, settings):
    sendgrid_emulator, sendgrid_settings = sendgrid
    mailgun_emulator, mailgun_settings = mailgun
    async with webhook_api(db, client, settings, sendgrid=sendgrid_settings, mailgun=mailgun_settings) as api:
        event = {"event": "processed", "sg_event_id": "e1", "email": "ada@example.com", "timestamp": int(time.time())}
        old = sendgrid_emulator.signed([event], timestamp=int(time.time()) - 3600)
        assert (await api.post("/webhooks/sendgrid", **old)).status_code == 401
        fresh = await api.post("/webhooks/sendgrid", **sendgrid_emulator.signed([event]))
        assert fresh.status_code == 200 and fresh.json()["ignored"] == ["[0] processed: not an event the engine records"]
        unsigned = await api.post("/webhooks/sendgrid", json=[event])
        assert unsigned.status_code == 401

        data = {"event": "accepted", "id": "a1", "timestamp": time.time()}
        stale = mailgun_emulator.signed(data, timestamp=int(time.time()) - 3600)
        assert (await api.post("/webhooks/mailgun", json=stale)).status_code == 401
        signed = mailgun_emulator.signed(data, token="t" * 50)
        assert (await api.post("/webhooks/mailgun", json=signed)).status_code == 200
        reused = mailgun_emulator.signed({**data, "event": "complained", "id": "a2"}, token="t" * 50)
        assert (await api.post("/webhooks/mailgun", json=reused)).status_code == 406

        # Spent tokens are not kept for ever: one seen long ago can only come back with a timestamp
        # refused anyway, so its row goes; a recent one stays spent.
        async with db.session() as s:
            s.add(WebhookToken(provider="mailgun", token="o" * 50, seen_at=utcnow() - timedelta(days=1)))
            await s.commit()
        assert (await api.post("/webhooks/mailgun", json=mailgun_emulator.signed({**data, "id": "a3"}))).status_code == 200
        async with db.session() as s:
            kept = set((await s.exec(select(WebhookToken.token).where(WebhookToken.provider == "mailgun"))).all())
        assert "o" * 50 not in kept and "t" * 50 in kept
        old_replay = mailgun_emulator.signed({**data, "id": "a4"}, token="o" * 50, timestamp=int(time.time()) - 86400)
        assert (await api.post("/webhooks/mailgun", json=old_replay)).status_code == 401

        # A provider whose webhook is not configured says which setting is missing.
        missing = await api.post("/webhooks/postmark", json={"RecordType": "Delivery"})
        assert missing.status_code == 404 and "NURTURE_POSTMARK__WEBHOOK_USERNAME" in missing.json()["detail"]
        # Without the topic allow-list, any AWS account's topic could post: no SES event is taken.
        no_topics = await api.post("/webhooks/ses", json={"Type": "Notification"})
        assert no_topics.status_code == 404 and "NURTURE_SES__SNS_TOPIC_ARNS" in no_topics.json()["detail"]
