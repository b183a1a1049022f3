"""Consent: the one-click unsubscribe link and headers in every marketing email (RFC 8058), what
unsubscribing does to running enrollments, and the double opt-in confirmation link."""

from __future__ import annotations

import email
import email.policy
import html
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlmodel import select

from activities.email.consent import ConsentLinks, with_unsubscribe_footer
from activities.email.providers import OutboxProvider
from activities.email.rendering import RenderedEmail
from api.main import create_app
from nurture.contracts import EnrollmentResult
from nurture.models import Contact, Enrollment, Event, Message
from nurture.tracking import (
    TokenExpired,
    TokenInvalid,
    click_token,
    optin_token,
    read_consent_token,
    unsubscribe_token,
)
from tests.api_support import api, post_event, wait_for_step, workflow_state  # noqa: F401
from tests.conftest import eventually, result_of
from tests.factories import add_active_flow, add_templates, messages_of

SECRET = "s3cret"
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=365)


# --- tokens, headers and footer (pure) -------------------------------------------------------


def test_consent_tokens_carry_their_ids_and_only_verify_unchanged_and_in_time():
    token = unsubscribe_token(SECRET, 7, 42, LATER)
    parsed = read_consent_token(SECRET, token, "unsubscribe", NOW)
    assert (parsed.contact_id, parsed.message_id) == (7, 42)
    optin = read_consent_token(SECRET, optin_token(SECRET, 7, 3, LATER), "optin", NOW)
    assert (optin.contact_id, optin.flow_id) == (7, 3)

    payload, signature = token.split(".")
    forged = unsubscribe_token("another secret", 8, 42, LATER).split(".")[0]
    for bad in (f"{forged}.{signature}", f"{payload}.{signature[:-2]}xy", payload, "", "a.b"):
        with pytest.raises(TokenInvalid):
            read_consent_token(SECRET, bad, "unsubscribe", NOW)
    with pytest.raises(TokenInvalid):  # an opt-in link does not unsubscribe, a click link does neither
        read_consent_token(SECRET, optin_token(SECRET, 7, 3, LATER), "unsubscribe", NOW)
    with pytest.raises(TokenInvalid):
        read_consent_token(SECRET, click_token(SECRET, 42, "https://example.com/", LATER), "unsubscribe", NOW)
    with pytest.raises(TokenExpired):
        read_consent_token(SECRET, token, "unsubscribe", LATER + timedelta(seconds=1))


def test_one_click_headers_and_a_footer_only_where_the_template_has_no_link():
    links = ConsentLinks("https://mail.example.com/", SECRET, 365, 30, mailto="unsubscribe@example.com")
    url = links.unsubscribe_url(7, 42, NOW)
    assert url == links.unsubscribe_url(7, 42, NOW)  # a retried send renders the same email
    assert url.startswith("https://mail.example.com/u/")
    headers = links.headers(url)
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert re.fullmatch(rf"<{re.escape(url)}>, <mailto:unsubscribe@example\.com\?subject=unsubscribe%20[^>]+>",
                        headers["List-Unsubscribe"])
    assert ConsentLinks("https://m.example", SECRET, 365, 30).headers(url)["List-Unsubscribe"] == f"<{url}>"

    plain = with_unsubscribe_footer(RenderedEmail("s", "<html><body><p>Hi</p></body></html>", "Hi\n"), url)
    assert re.fullmatch(rf'<html><body><p>Hi</p><p[^>]*>.*<a href="{re.escape(url)}">Unsubscribe</a>.*</p></body></html>',
                        plain.html)
    assert plain.text == f"Hi\n\nUnsubscribe: {url}\n"
    placed = RenderedEmail("s", f'<p><a href="{url}">Leave</a></p>', f"Leave: {url}")
    assert with_unsubscribe_footer(placed, url).html == f'<p><a href="{url}">Leave</a></p>'
    assert with_unsubscribe_footer(placed, url).text == f"Leave: {url}"


# --- on the running engine -------------------------------------------------------------------

TEMPLATES = {
    "hello": ("Hello {{ contact.name }}", '<html><body><p>Hi {{ contact.name }}, <a href="https://example.com/a">read</a>.</p></body></html>'),
    "later": ("Later, {{ contact.name }}", "<p>More news.</p>"),
    "own-link": ("Yours", '<p>Bye? <a href="{{ unsubscribe_url }}">Leave the list</a></p>'),
}


def signup_flow(name: str, steps: list[dict]) -> dict:
    return {"name": name, "trigger": {"type": "event", "event": "signed_up"}, "steps": steps}


NEWSLETTER = signup_flow("Newsletter", [
    {"id": "hello", "type": "send_email", "template": "hello"},
    {"id": "tell-owner", "type": "notify_owner", "subject": "{{ contact.name }} signed up", "fallback_to": "sales@example.com"},
    {"id": "wait", "type": "delay", "duration": "3d"},
    {"id": "later", "type": "send_email", "template": "later"},
])
COURSE = signup_flow("Course", [
    {"id": "wait", "type": "delay", "duration": "1d"},
    {"id": "lesson", "type": "send_email", "template": "later"},
])
SURVEY = signup_flow("Survey", [
    {"id": "wait", "type": "wait_for_event", "event": "survey_answered", "timeout": "5d",
     "on_event": "thanks", "on_timeout": "thanks"},
    {"id": "thanks", "type": "send_email", "template": "later"},
])


def eml(settings, message: Message) -> email.message.EmailMessage:
    path = OutboxProvider(settings.outbox_dir).path_for(message.idempotency_key)
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)


def unsubscribe_path(mime) -> str:
    match = re.fullmatch(r"<http://127\.0\.0\.1:8000(/u/[^>]+)>", mime["List-Unsubscribe"])
    assert match, mime["List-Unsubscribe"]
    return match.group(1)


async def signed_up(api, db, flows: list[dict], email_address: str = "reader@example.com") -> tuple[int, list[Enrollment]]:
    await add_templates(db, TEMPLATES)
    for definition in flows:
        await add_active_flow(db, definition)
    response = await post_event(api, type="signed_up", email=email_address, properties={})
    assert response.status_code == 202, response.text
    assert len(response.json()["enrolled"]) == len(flows), response.json()
    async with db.session() as s:
        enrollments = (await s.exec(select(Enrollment).order_by(Enrollment.id))).all()
    return response.json()["contact_id"], list(enrollments)


async def sent(db, contact_id: int, count: int) -> list[Message]:
    async def enough():
        done = [m for m in await messages_of(db, contact_id) if m.status == "sent"]
        return done if len(done) >= count else None

    return await eventually(enough)


async def contact_row(db, contact_id: int) -> Contact:
    async with db.session() as s:
        return await s.get(Contact, contact_id)


async def events_of(db, contact_id: int, kind: str) -> list[Event]:
    async with db.session() as s:
        return list((await s.exec(select(Event).where(Event.contact_id == contact_id, Event.type == kind))).all())


async def test_marketing_email_has_one_click_headers_and_footer_and_internal_mail_has_not(api, worker, db, settings):
    contact_id, [enrollment, _] = await signed_up(api, db, [NEWSLETTER, COURSE])
    await wait_for_step(api, enrollment.id, "wait")
    [marketing, internal] = sorted(await sent(db, contact_id, 2), key=lambda m: m.kind != "marketing")
    assert (marketing.kind, internal.kind) == ("marketing", "internal")

    mime = eml(settings, marketing)
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = "http://127.0.0.1:8000" + unsubscribe_path(mime)
    # On the wire the header is the plain <url> mail clients act on, not an RFC 2047 encoded word.
    raw = OutboxProvider(settings.outbox_dir).path_for(marketing.idempotency_key).read_bytes()
    assert f"List-Unsubscribe: <{url}>".encode() in raw
    html_part = mime.get_body(("html",)).get_content()
    text_part = mime.get_body(("plain",)).get_content()
    assert f'<a href="{html.escape(url)}">Unsubscribe</a>' in html_part  # not rewritten into a click link
    assert url in text_part and html_part.index(url) < html_part.index("</body>")
    assert "/t/c/" in html_part  # the article link is still tracked
    token = url.rsplit("/", 1)[1]
    assert read_consent_token(settings.tracking_secret, token, "unsubscribe", datetime.now(UTC)).message_id == marketing.id

    owner_mail = eml(settings, internal)
    assert owner_mail["List-Unsubscribe"] is None and owner_mail["List-Unsubscribe-Post"] is None
    assert "/u/" not in owner_mail.get_body(("plain",)).get_content()


async def test_a_template_may_place_the_link_itself(api, worker, db, settings):
    contact_id, _ = await signed_up(api, db, [signup_flow("Own", [{"id": "bye", "type": "send_email", "template": "own-link"}])])
    [message] = await sent(db, contact_id, 1)
    mime = eml(settings, message)
    path = unsubscribe_path(mime)
    body = mime.get_body(("html",)).get_content()
    assert body.count(path) == 1 and "Leave the list" in body and "Unsubscribe</a>" not in body


async def test_one_click_post_unsubscribes_and_exits_every_flow_at_once(api, worker, db, settings, client, temporal_env):
    contact_id, enrollments = await signed_up(api, db, [NEWSLETTER, COURSE, SURVEY])
    for enrollment in enrollments:  # all three in the middle of a delay or a wait
        await wait_for_step(api, enrollment.id, "wait")
    [marketing] = [m for m in await sent(db, contact_id, 2) if m.kind == "marketing"]
    path = unsubscribe_path(eml(settings, marketing))

    page = await api.get(path)  # a scanner following the link changes nothing
    assert page.status_code == 200 and '<form method="post">' in page.text and "r***@example.com" in page.text
    assert (await contact_row(db, contact_id)).subscription_status == "subscribed"

    one_click = await api.post(path, content="List-Unsubscribe=One-Click",
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert one_click.status_code == 200 and "You are unsubscribed" in one_click.text
    assert (await contact_row(db, contact_id)).subscription_status == "unsubscribed"
    for enrollment in enrollments:  # at once: no time passes before they have all exited
        await eventually(lambda: _exited(api, enrollment.id))
    for enrollment in enrollments:
        result = await result_of(temporal_env, handle_of(client, enrollment))
        assert (result.status, result.exit_reason) == ("exited", "unsubscribed")
    [event] = await events_of(db, contact_id, "unsubscribed")
    assert event.properties == {"message_id": marketing.id, "source": "one_click"}

    again = await api.post(path)  # the page's button, or a second client: nothing new
    assert again.status_code == 200 and len(await events_of(db, contact_id, "unsubscribed")) == 1
    assert [(m.template_key, m.status) for m in await messages_of(db, contact_id)] == [
        ("hello", "sent"), ("notify_owner:tell-owner", "sent")]

    upsert = await api.post("/contacts", json={"email": "reader@example.com", "subscription_status": "subscribed"})
    assert upsert.status_code in (200, 201), upsert.text
    assert (await contact_row(db, contact_id)).subscription_status == "unsubscribed"


async def _exited(api, enrollment_id: int) -> bool:
    response = await api.get(f"/enrollments/{enrollment_id}")
    return response.json()["status"] == "exited" and response.json()["exit_reason"] == "unsubscribed"


def handle_of(client, enrollment: Enrollment):
    return client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)


async def test_bad_and_expired_links_get_a_page_never_an_unsubscription(api, db, settings):
    await add_templates(db, TEMPLATES)
    async with db.session() as s:
        contact = Contact(email="kept@example.com")
        s.add(contact)
        await s.commit()
        await s.refresh(contact)
    good = unsubscribe_token(settings.tracking_secret, contact.id, 1, datetime.now(UTC) + timedelta(days=1))
    expired = unsubscribe_token(settings.tracking_secret, contact.id, 1, datetime.now(UTC) - timedelta(seconds=1))
    payload, signature = good.split(".")
    tampered = signature[:-1] + ("B" if signature.endswith("A") else "A")  # always a different signature
    other = unsubscribe_token(settings.tracking_secret, contact.id + 1, 1, datetime.now(UTC) + timedelta(days=1))
    optin = optin_token(settings.tracking_secret, contact.id, 1, datetime.now(UTC) + timedelta(days=1))
    for method in ("GET", "POST"):
        for token, status in ((f"{other.split('.')[0]}.{signature}", 404), (f"{payload}.{tampered}", 404),
                              (optin, 404), (expired, 410), (other, 404)):
            response = await api.request(method, f"/u/{token}", content="List-Unsubscribe=One-Click")
            assert response.status_code == status, (method, token, response.text)
            assert response.headers["content-type"].startswith("text/html")
        assert (await api.request(method, f"/optin/{good}")).status_code == 404
    assert (await contact_row(db, contact.id)).subscription_status == "subscribed"
    assert await events_of(db, contact.id, "unsubscribed") == []


async def test_with_temporal_down_the_unsubscription_is_kept_and_nothing_more_is_sent(
    api, worker, db, settings, client, temporal_env
):
    contact_id, [enrollment] = await signed_up(api, db, [NEWSLETTER])
    await wait_for_step(api, enrollment.id, "wait")
    [marketing] = [m for m in await sent(db, contact_id, 2) if m.kind == "marketing"]
    path = unsubscribe_path(eml(settings, marketing))

    offline = create_app(settings.model_copy(update={"temporal_address": "127.0.0.1:1"}), db=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=offline), base_url="http://test") as http:
        response = await http.post(path, content="List-Unsubscribe=One-Click")
    assert response.status_code == 200, response.text
    assert (await contact_row(db, contact_id)).subscription_status == "unsubscribed"
    assert len(await events_of(db, contact_id, "unsubscribed")) == 1

    # The workflow never heard; at its next send the activity refuses and the enrollment exits.
    result = await result_of(temporal_env, handle_of(client, enrollment))
    assert (result.status, result.exit_reason) == ("exited", "unsubscribed")
    later = [m for m in await messages_of(db, contact_id) if m.template_key == "later"]
    assert [m.status for m in later] == ["refused"]


# --- double opt-in ---------------------------------------------------------------------------


async def test_the_welcome_playbook_waits_for_the_confirmation_click(api, worker, db, settings):
    installed = await api.post("/playbooks/welcome-double-opt-in/install", params={"activate": "true"})
    assert installed.status_code in (200, 201), installed.text
    response = await post_event(api, type="newsletter_signup", email="new@example.com")
    assert response.status_code == 202, response.text
    contact_id, [enrollment_id] = response.json()["contact_id"], response.json()["enrolled"]
    await wait_for_step(api, enrollment_id, "wait-confirm")

    [request] = await sent(db, contact_id, 1)
    links = re.findall(r'href="http://127\.0\.0\.1:8000(/optin/[^"]+)"', request.html)
    assert len(links) == 1 and links[0] in request.text
    path = links[0]

    page = await api.get(path)
    assert page.status_code == 200 and '<form method="post">' in page.text
    assert (await workflow_state(api, enrollment_id))["current_step"] == "wait-confirm"

    confirmed = await api.post(path, content="confirm=yes")
    assert confirmed.status_code == 200 and "confirmed" in confirmed.text
    await wait_for_step(api, enrollment_id, "wait-2d")
    contact = await contact_row(db, contact_id)
    assert contact.properties["double_opt_in_confirmed_at"] and contact.properties["double_opt_in"] is True
    assert "newsletter" in contact.lists
    assert [m.template_key for m in await sent(db, contact_id, 2)] == ["welcome-confirm-request", "welcome-confirmed"]

    again = await api.post(path)
    assert again.status_code == 200 and len(await events_of(db, contact_id, "optin_confirmed")) == 1
    assert (await api.get(path)).text.count("already confirmed") == 1
