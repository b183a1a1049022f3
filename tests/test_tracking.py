"""Engagement tracking: signed pixel and click links in the sent email, provider webhooks,
each one an event on the contact and a signal to the enrollment that sent the message."""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from activities.email.tracking import LinkTracker
from activities.webhooks import sign as sign_like_our_webhooks
from api.main import create_app
from nurture.models import Contact, Message
from nurture.signatures import SignatureInvalid, signature_header, verify
from nurture.tracking import TokenExpired, TokenInvalid, click_token, open_token, read_token
from tests.api_support import active_example_flow, api, enroll_by_event, wait_for_step, workflow_state  # noqa: F401
from tests.conftest import eventually
from tests.tracking_support import events_of, first_message, links_of

SECRET = "s3cret"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=30)


# --- tokens and rewriting (pure) --------------------------------------------------------------


def test_a_token_carries_the_message_and_url_and_only_verifies_unchanged():
    token = click_token(SECRET, 42, "https://example.com/pricing?plan=pro&x=1", LATER)
    parsed = read_token(SECRET, token, "click", NOW)
    assert (parsed.message_id, parsed.url) == (42, "https://example.com/pricing?plan=pro&x=1")

    payload, signature = token.split(".")
    forged = click_token("another secret", 42, "https://evil.example/", LATER).split(".")[0]
    for bad in (f"{forged}.{signature}", f"{payload}.{signature[:-2]}xy", payload, "", "a.b", token + "x"):
        with pytest.raises(TokenInvalid):
            read_token(SECRET, bad, "click", NOW)
    with pytest.raises(TokenInvalid):
        read_token("another secret", token, "click", NOW)
    with pytest.raises(TokenInvalid):  # an open token is not a click token, and the reverse
        read_token(SECRET, open_token(SECRET, 42, LATER), "click", NOW)
    with pytest.raises(TokenExpired):
        read_token(SECRET, token, "click", LATER + timedelta(seconds=1))
    with pytest.raises(ValueError):
        click_token(SECRET, 42, "javascript:alert(1)", LATER)


def test_links_are_rewritten_and_the_pixel_added_before_the_body_ends():
    tracker = LinkTracker("https://mail.example.com/", SECRET, 30)
    body = (
        '<html><body><p><a href="https://example.com/a?x=1&amp;y=2">A</a> '
        "<a class='btn' href='http://example.com/b'>B</a> "
        '<a href="mailto:sales@example.com">mail</a> <a href="#top">top</a> '
        '<a data-nurture-notrack href="https://example.com/legal">legal</a></p></body></html>'
    )
    tracked = tracker.apply(body, 7, NOW)

    assert tracked == tracker.apply(body, 7, NOW)  # a retried send delivers the same body
    clicks = re.findall(r'href=["\'](https://mail\.example\.com/t/c/[^"\']+)', tracked)
    targets = [read_token(SECRET, html.unescape(c).rsplit("/", 1)[1], "click", NOW).url for c in clicks]
    assert targets == ["https://example.com/a?x=1&y=2", "http://example.com/b"]
    assert 'href="mailto:sales@example.com"' in tracked and 'href="#top"' in tracked
    assert 'href="https://example.com/legal"' in tracked and "class='btn'" in tracked
    pixel = re.search(r'<img src="https://mail\.example\.com/t/o/([^"]+)\.gif"[^>]*></body></html>$', tracked)
    assert pixel and read_token(SECRET, pixel.group(1), "open", NOW).message_id == 7
    assert tracker.apply("<p>no body tag</p>", 7, NOW).startswith("<p>no body tag</p><img src=")


def test_webhook_signatures_use_our_outgoing_scheme():
    body = b'{"events": []}'
    now = time.time()
    header = sign_like_our_webhooks(SECRET, int(now), body)
    assert header == signature_header(SECRET, int(now), body)
    verify(SECRET, header, body, now, 300)
    verify(SECRET, f"{header},v1=rotated", body, now, 300)
    for bad_header, bad_body, at in (
        (header, body + b" ", now),
        (sign_like_our_webhooks("other", int(now), body), body, now),
        (header, body, now + 301),
        (None, body, now),
        ("v1=abc", body, now),
    ):
        with pytest.raises(SignatureInvalid):
            verify(SECRET, bad_header, bad_body, at, 300)


# --- on the running engine -----------------------------------------------------------------


@pytest.fixture
async def tracking_api(db, client, settings) -> AsyncIterator[httpx.AsyncClient]:
    """The API with prefetch detection off, so a test's own opens right after the send count."""
    app = create_app(settings.model_copy(update={"prefetch_open_seconds": 0.0}), db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


LINK_TEMPLATE = {
    "subject": "Your demo, {{ contact.name }}",
    "html": '<html><body><p>Hi {{ contact.name }}, <a href="https://example.com/book?ref=demo&amp;c={{ contact.id }}">'
    "book a slot</a>.</p></body></html>",
}


async def tracked_enrollment(api, tracking_api, db) -> tuple[int, int, Message]:
    """The example flow whose welcome email has a link; the contact is waiting two days after it."""
    await active_example_flow(api)
    replaced = await api.put("/templates/demo-welcome", json=LINK_TEMPLATE)
    assert replaced.status_code == 200, replaced.text
    contact_id, enrollment_id = await enroll_by_event(api, "reader@example.com", "Rea")
    await wait_for_step(api, enrollment_id, "wait-2d")
    return contact_id, enrollment_id, await first_message(db, contact_id)


async def test_a_click_is_recorded_signalled_and_redirected_to_the_signed_url(api, tracking_api, worker, db):
    contact_id, enrollment_id, message = await tracked_enrollment(api, tracking_api, db)
    pixel, [click] = links_of(message)

    opened = await tracking_api.get(pixel, headers={"user-agent": "Mozilla/5.0 (Macintosh) Thunderbird"})
    assert opened.status_code == 200 and opened.headers["content-type"] == "image/gif"
    assert opened.content.startswith(b"GIF89a") and "no-store" in opened.headers["cache-control"]
    clicked = await tracking_api.get(click)
    assert clicked.status_code == 302
    assert clicked.headers["location"] == f"https://example.com/book?ref=demo&c={contact_id}"

    state = await eventually(
        lambda: _engaged(api, enrollment_id, ["opened", "clicked"])
    )  # the enrollment that sent the email heard both
    assert state["status"] == "active"
    [open_event] = await events_of(db, contact_id, "email_opened")
    [click_event] = await events_of(db, contact_id, "email_clicked")
    assert open_event.properties["message_id"] == message.id and open_event.properties["bot"] is False
    assert click_event.properties["url"] == clicked.headers["location"]
    async with db.session() as s:
        stored = await s.get(Message, message.id)
        contact = await s.get(Contact, contact_id)
    assert stored.opened_at is not None and stored.clicked_at is not None
    assert contact.last_activity_at >= stored.opened_at


async def _engaged(api, enrollment_id: int, kinds: list[str]):
    state = await workflow_state(api, enrollment_id)
    return state if state and sorted(state["engagement"].get("welcome", [])) == sorted(kinds) else None


async def test_tampered_foreign_or_expired_links_never_redirect(api, tracking_api, worker, db, settings):
    contact_id, _, message = await tracked_enrollment(api, tracking_api, db)
    _, [click] = links_of(message)
    token = click.rsplit("/", 1)[1]
    payload, signature = token.split(".")
    foreign = click_token(settings.tracking_secret, message.id, "https://evil.example/phish", LATER).split(".")[0]
    expired = click_token(settings.tracking_secret, message.id, "https://example.com/old", datetime.now(UTC) - timedelta(days=1))

    for bad in (f"{foreign}.{signature}", f"{payload}.{signature[::-1]}", payload):
        answer = await tracking_api.get(f"/t/c/{bad}")
        assert answer.status_code == 404 and "location" not in answer.headers
    answer = await tracking_api.get(f"/t/c/{expired}")
    assert answer.status_code == 410 and "location" not in answer.headers
    answer = await tracking_api.get(f"/t/c/{token}?url=https://evil.example/")
    assert answer.headers["location"].startswith("https://example.com/book")  # only the signed URL, ever
    bad_pixel = await tracking_api.get(f"/t/o/{payload}.{signature}.gif")  # a click token is no open token
    assert bad_pixel.status_code == 404 and bad_pixel.content.startswith(b"GIF89a")
    assert len(await events_of(db, contact_id, "email_clicked")) == 1


async def test_a_validly_signed_link_redirects_only_to_a_link_of_a_sent_message(api, tracking_api, worker, db, settings):
    """Whoever holds the signing secret still cannot make an open redirect: the message must exist
    and the URL must be one of the links it was sent with."""
    contact_id, _, message = await tracked_enrollment(api, tracking_api, db)
    _, [click] = links_of(message)
    secret, later = settings.tracking_secret, datetime.now(UTC) + timedelta(days=30)
    for forged in (
        click_token(secret, 1_999_999_999, "https://evil.example/phish", later),  # no such message
        click_token(secret, message.id, "https://evil.example/phish", later),  # not one of its links
    ):
        answer = await tracking_api.get(f"/t/c/{forged}")
        assert answer.status_code == 404, answer.text
        assert "location" not in answer.headers
    assert await events_of(db, contact_id, "email_clicked") == []

    genuine = await tracking_api.get(click)
    assert genuine.status_code == 302 and genuine.headers["location"] == f"https://example.com/book?ref=demo&c={contact_id}"


async def test_scanner_and_prefetch_opens_are_flagged_and_not_signalled(api, tracking_api, worker, db, settings, client):
    contact_id, enrollment_id, message = await tracked_enrollment(api, tracking_api, db)
    pixel, _ = links_of(message)

    scanner = await tracking_api.get(pixel, headers={"user-agent": "Mozilla/5.0 (compatible; Barracuda Sentinel)"})
    assert scanner.status_code == 200
    async with httpx.AsyncClient(  # default settings: any open within 2 s of the send is a prefetch
        transport=httpx.ASGITransport(app=create_app(settings, db=db, client=client)), base_url="http://test"
    ) as default_api:
        async with db.session() as s:  # as if the provider reported delivery a moment ago
            row = await s.get(Message, message.id)
            row.delivered_at = datetime.now(UTC)
            s.add(row)
            await s.commit()
        assert (await default_api.get(pixel, headers={"user-agent": "Mozilla/5.0 AppleWebKit"})).status_code == 200

    opens = await events_of(db, contact_id, "email_opened")
    assert [(e.properties["bot"], e.properties["bot_reason"]) for e in opens] == [(True, "scanner"), (True, "prefetch")]
    async with db.session() as s:
        assert (await s.get(Message, message.id)).opened_at is None
    state = await workflow_state(api, enrollment_id)
    assert state["engagement"] == {}  # the branch after the wait will not take a bot for a reader
    activity = (await api.get(f"/contacts/{contact_id}/activity")).json()
    [row] = [m for m in activity["messages"] if m["message_id"] == message.id]
    assert (row["opens"], row["bot_opens"], row["opened_at"]) == (0, 2, None)


def signed(settings, payload: dict) -> dict:
    body = json.dumps(payload).encode()
    return {
        "content": body,
        "headers": {
            "content-type": "application/json",
            "X-Nurture-Signature": signature_header(settings.email_webhook_secret, int(time.time()), body),
        },
    }


async def test_delivery_reports_and_a_hard_bounce_end_the_enrollment(api, tracking_api, worker, db, settings):
    contact_id, enrollment_id, message = await tracked_enrollment(api, tracking_api, db)
    delivered = {"id": "d-1", "type": "delivered", "provider_message_id": message.provider_message_id}

    unsigned = await api.post("/webhooks/email/outbox", json={"events": [delivered]})
    assert unsigned.status_code == 401
    wrong = signed(settings, {"events": [delivered]})
    wrong["headers"]["X-Nurture-Signature"] = signature_header("guess", int(time.time()), wrong["content"])
    assert (await api.post("/webhooks/email/outbox", **wrong)).status_code == 401
    bad = await api.post("/webhooks/email/outbox", **signed(settings, {"events": [{"type": "exploded"}]}))
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:3] == ["body", "events", 0]
    assert await events_of(db, contact_id, "email_delivered") == []

    first = await api.post("/webhooks/email/outbox", **signed(settings, {"events": [delivered]}))
    assert first.json() == {"recorded": 1, "duplicates": 0, "ignored": []}
    again = await api.post(
        "/webhooks/email/outbox",
        **signed(settings, {"events": [delivered, {"type": "delivered", "message_id": 2_000_000_000}]}),
    )
    assert again.json()["duplicates"] == 1 and again.json()["recorded"] == 0
    assert again.json()["ignored"] == ["events[1]: no message of provider 'outbox' matches"]

    bounce = {"id": "b-1", "type": "bounced", "bounce_type": "hard", "message_id": message.id, "reason": "550 5.1.1 user unknown"}
    assert (await api.post("/webhooks/email/outbox", **signed(settings, {"events": [bounce]}))).json()["recorded"] == 1

    row = await eventually(lambda: _ended(api, enrollment_id))
    assert (row["status"], row["exit_reason"]) == ("exited", "bounced")
    contact = (await api.get(f"/contacts/{contact_id}")).json()
    assert contact["subscription_status"] == "bounced"
    async with db.session() as s:
        stored = await s.get(Message, message.id)
    assert stored.delivered_at is not None and (stored.bounced_at is not None, stored.bounce_type) == (True, "hard")
    [event] = await events_of(db, contact_id, "email_bounced")
    assert event.properties["reason"] == "550 5.1.1 user unknown" and event.properties["message_id"] == message.id


async def _ended(api, enrollment_id: int):
    row = (await api.get(f"/enrollments/{enrollment_id}")).json()
    return row if row["status"] != "active" else None


async def test_a_complaint_unsubscribes_the_contact(api, tracking_api, worker, db, settings):
    contact_id, enrollment_id, message = await tracked_enrollment(api, tracking_api, db)
    complaint = {"type": "complained", "message_id": message.id}
    answer = await api.post("/webhooks/email/outbox", **signed(settings, {"events": [complaint]}))
    assert answer.json()["recorded"] == 1

    row = await eventually(lambda: _ended(api, enrollment_id))
    assert (row["status"], row["exit_reason"]) == ("exited", "unsubscribed")
    assert (await api.get(f"/contacts/{contact_id}")).json()["subscription_status"] == "unsubscribed"
    soft = {"type": "bounced", "bounce_type": "soft", "message_id": message.id}
    other_provider = await api.post("/webhooks/email/smtp", **signed(settings, {"events": [soft]}))
    assert other_provider.json()["recorded"] == 0  # our message went out through the outbox, not smtp
