"""Sending over SMTP when the server says "later", and when the worker dies right after "250 OK"."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP
from structlog.testing import capture_logs
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.email.activities import EmailActivities
from activities.email.providers import SmtpProvider
from nurture.contracts import EnrollmentResult, EnrollmentState, SendEmailInput
from nurture.enrolling import Enroller
from nurture.models import Message, utcnow
from nurture.settings import SmtpSettings
from tests.conftest import eventually, result_of
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from tests.test_smtp import Recorder, TryLater, free_port, smtp_server  # noqa: F401  (fixture)
from tests.test_workflow_example import enroll
from worker.main import build_worker

SENDER = "Nurture <marketing@example.com>"
ONE_SEND = {
    "name": "One send",
    "trigger": {"type": "manual"},
    "steps": [{"id": "hello", "type": "send_email", "template": "demo-welcome"}],
}


def send_input(contact_id: int, key: str = "enrollment-1-1/run/hello/1") -> SendEmailInput:
    return SendEmailInput(
        idempotency_key=key, workflow_id="enrollment-1-1", flow_id=1, flow_version=1, step_id="hello",
        contact_id=contact_id, template="demo-welcome", scheduled_at=utcnow(),
    )


@pytest.mark.parametrize("server", ["answers 451", "refuses connections"])
async def test_a_temporary_smtp_failure_is_a_retryable_failure_that_names_the_reply(db, smtp_server, server):
    await add_templates(db)
    contact = await add_contact(db)
    if server == "answers 451":
        smtp = smtp_server(TryLater())
    else:
        smtp = SmtpSettings(host="127.0.0.1", port=free_port(), timeout_seconds=5)
    activities = EmailActivities(db, SmtpProvider(smtp), SENDER)

    with capture_logs() as logs, pytest.raises(ApplicationError) as raised:
        await ActivityEnvironment().run(activities.send_email, send_input(contact.id))

    failure = raised.value
    assert failure.type == "TemporaryDeliveryFailure" and not failure.non_retryable
    if server == "answers 451":
        assert "451 4.3.0 try later" in failure.message
    else:
        assert "refused" in failure.message.lower() or "connect" in failure.message.lower()
    # One warning line for the attempt, carrying the reason; no error with a traceback.
    warnings = [entry for entry in logs if entry["log_level"] in ("warning", "error")]
    assert [w["event"] for w in warnings] == ["send_retry"]
    assert warnings[0]["error"] and warnings[0]["error"] in failure.message
    [message] = await messages_of(db, contact.id)
    assert message.status == "reserved" and message.error and message.attempts == 1


async def test_smtp_saying_later_every_time_ends_as_a_failed_send_with_the_reply_and_no_tracebacks(
    db, client, settings, temporal_env, smtp_server, caplog
):
    await add_templates(db)
    flow, contact = await add_active_flow(db, ONE_SEND), await add_contact(db)
    provider = SmtpProvider(smtp_server(TryLater()))
    caplog.set_level(logging.DEBUG)

    with capture_logs() as logs:
        async with build_worker(client, db, provider, settings):
            enrollment = await enroll(db, Enroller(client, settings), flow, contact)
            handle = client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult)
            result = await result_of(temporal_env, handle)
            state = await handle.query("state", result_type=EnrollmentState)

    assert result.status == "completed" and result.emails_sent == 0
    [email] = [entry for entry in state.timeline if entry.kind == "email"]
    assert "451 4.3.0 try later" in (email.detail or "")
    retries = [entry for entry in logs if entry["event"] == "send_retry"]
    assert len(retries) == 11 and all(r["log_level"] == "warning" for r in retries)
    [gave_up] = [entry for entry in logs if entry["event"] == "send_failed"]
    assert "451 4.3.0 try later" in gave_up["error"]
    assert all("451 4.3.0 try later" in r["error"] for r in retries)
    # Temporal's own "Completing activity as failed" warning comes with a traceback: not for a 451.
    tracebacks = [r for r in caplog.records if r.levelno >= logging.WARNING and r.exc_info]
    assert tracebacks == []
    # The row says so too: a `reserved` row would count against the frequency cap forever.
    async with db.session() as session:
        [message] = (await session.exec(select(Message))).all()
    assert message.status == "failed" and "451 4.3.0 try later" in message.error and message.attempts == 12


class _SlowToSayGoodbye(SMTP):
    """Accepts the message with 250, then never answers QUIT: the worker is stuck after acceptance."""

    async def smtp_QUIT(self, arg):
        await asyncio.sleep(3600)


class HangingQuitController(Controller):
    def factory(self):
        return _SlowToSayGoodbye(self.handler, **self.SMTP_kwargs)


async def test_a_worker_that_dies_after_the_servers_250_has_already_recorded_the_send(
    db, client, settings, temporal_env, smtp_server
):
    await add_templates(db)
    flow, contact = await add_active_flow(db, ONE_SEND), await add_contact(db)
    first_server = Recorder()
    port = free_port()
    controller = HangingQuitController(first_server, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        first = build_worker(
            client, db, SmtpProvider(SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=300)), settings, max_cached_workflows=0,
            graceful_shutdown_timeout=timedelta(0),
        )
        first_run = asyncio.create_task(first.run())
        try:
            enrollment = await enroll(db, Enroller(client, settings), flow, contact)
            await eventually(lambda: first_server.envelopes, timeout=20)
            # The server accepted the message; the connection is still open (QUIT unanswered for
            # far longer than we look). The send is on record as sent already: a worker that dies
            # now costs no second copy.
            sent = await eventually(lambda: _sent(db, contact.id), timeout=30)
            assert sent.provider_message_id is not None
        finally:
            await first.shutdown()
            await asyncio.gather(first_run, return_exceptions=True)
    finally:
        controller.stop()

    second_server = Recorder()
    async with build_worker(client, db, SmtpProvider(smtp_server(second_server)), settings):
        result = await result_of(temporal_env, client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult))

    assert result.status == "completed" and result.emails_sent == 1
    assert len(first_server.envelopes) == 1 and second_server.envelopes == []
    [message] = await messages_of(db, contact.id)
    assert message.status == "sent"


async def _sent(db, contact_id: int):
    messages = await messages_of(db, contact_id)
    return messages[0] if messages and messages[0].status == "sent" else None
