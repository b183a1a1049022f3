"""What mail clients and spam filters see: a Date header, and a plain-text part made from the
HTML when the template has none; on the raw message in the outbox and over SMTP (aiosmtpd)."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from aiosmtpd.controller import Controller

from activities.email.providers import OutboxProvider, SmtpProvider
from nurture.models import Template
from nurture.settings import SmtpSettings
from tests.flow_runner import manual_flow, run_flow
from tests.test_smtp import Recorder, free_port, outgoing
from worker.main import build_worker

HTML_ONLY = (
    '<html><body><h1>Hello {{ contact.name }}</h1><p>Read <a href="https://example.com/case">the case'
    " study</a> &amp; more.</p><ul><li>Faster onboarding</li></ul></body></html>"
)
WORDS = ("Hello Ada", "the case study", "& more.", "Faster onboarding", "https://example.com/case")


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def assert_dated_now(mime: email.message.EmailMessage) -> None:
    assert mime["Date"] is not None, "no Date header"
    date = parsedate_to_datetime(mime["Date"])
    assert date.tzinfo is not None
    assert abs(datetime.now(UTC) - date) < timedelta(hours=1)


def assert_text_from_html(mime: email.message.EmailMessage) -> str:
    text = mime.get_body(("plain",)).get_content()
    for words in WORDS:
        assert words in text, text
    assert "<p>" not in text and "&amp;" not in text
    return text


async def add_html_only_template(db) -> None:
    async with db.session() as s:
        s.add(Template(key="html-only", subject="Your case study", html=HTML_ONLY))
        await s.commit()


async def test_the_outbox_message_has_a_date_header(tmp_path):
    outbox = OutboxProvider(tmp_path / "outbox")
    await outbox.deliver(outgoing())
    assert_dated_now(parsed(outbox.path_for(outgoing().idempotency_key).read_bytes()))


async def test_the_smtp_message_has_a_date_header():
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        await SmtpProvider(SmtpSettings(host="127.0.0.1", port=controller.port, timeout_seconds=10)).deliver(outgoing())
    finally:
        controller.stop()
    assert_dated_now(parsed(recorder.envelopes[0].original_content))


async def test_a_template_without_text_gets_its_plain_text_from_the_html_in_the_outbox(
    db, client, settings, temporal_env, worker
):
    await add_html_only_template(db)

    run = await run_flow(db, client, settings, temporal_env, manual_flow(
        {"id": "case", "type": "send_email", "template": "html-only"},
    ))

    [message] = run.messages
    assert message.status == "sent", message.error
    mime = parsed(OutboxProvider(settings.outbox_dir).path_for(message.idempotency_key).read_bytes())
    text = assert_text_from_html(mime)
    # The unsubscribe line still closes the text part, after the body.
    assert text.index("Faster onboarding") < text.index("Unsubscribe: ")
    assert_dated_now(mime)


async def test_a_template_without_text_gets_its_plain_text_from_the_html_over_smtp(db, client, settings, temporal_env):
    await add_html_only_template(db)
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=controller.port, timeout_seconds=10))
        async with build_worker(client, db, provider, settings):
            run = await run_flow(db, client, settings, temporal_env, manual_flow(
                {"id": "case", "type": "send_email", "template": "html-only"},
            ))
    finally:
        controller.stop()

    assert [m.status for m in run.messages] == ["sent"]
    [envelope] = recorder.envelopes
    mime = parsed(envelope.original_content)
    assert_text_from_html(mime)
    assert_dated_now(mime)
