"""Delivery outcomes through a real SMTP server on loopback (aiosmtpd)."""

from __future__ import annotations

import socket
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from activities.email.providers import SmtpProvider
from nurture.contracts import EnrollmentResult
from nurture.enrolling import Enroller
from nurture.models import Contact, Flow
from nurture.settings import SmtpSettings
from tests.conftest import result_of
from tests.factories import add_active_flow, add_contact, add_templates, messages_of
from worker.main import build_worker


class Mailbox:
    def __init__(self):
        self.received: list[bytes] = []
        self.rejected_recipients: set[str] = set()
        self.busy_answers = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rejected_recipients:
            return "550 5.1.1 mailbox unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.busy_answers:
            self.busy_answers -= 1
            return "451 4.3.0 try again later"
        self.received.append(envelope.content)
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


async def run_example(db, client, settings, temporal_env, port) -> tuple[EnrollmentResult, Contact]:
    await add_templates(db)
    flow, contact = await add_active_flow(db), await add_contact(db)
    provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=port))
    async with build_worker(client, db, provider, settings):
        async with db.session() as s:
            enrollment = (
                await Enroller(client, settings).enroll(s, await s.get(Flow, flow.id), await s.get(Contact, contact.id))
            ).enrollment
            await s.commit()
        result = await result_of(temporal_env, client.get_workflow_handle(enrollment.workflow_id, result_type=EnrollmentResult))
    return result, contact


async def test_smtp_delivers_each_step_once(db, client, settings, temporal_env, mailbox):
    box, port = mailbox
    result, contact = await run_example(db, client, settings, temporal_env, port)

    assert result.emails_sent == 2
    subjects = [message_from_bytes(raw)["Subject"] for raw in box.received]
    assert subjects == ["Thanks for your demo request, Ada", "Still curious, Ada?"]
    assert [m.status for m in await messages_of(db, contact.id)] == ["sent", "sent"]


async def test_permanent_rejection_is_recorded_and_not_retried(db, client, settings, temporal_env, mailbox):
    box, port = mailbox
    box.rejected_recipients.add("ada@example.com")

    result, contact = await run_example(db, client, settings, temporal_env, port)

    messages = await messages_of(db, contact.id)
    assert [(m.status, m.attempts) for m in messages] == [("failed", 1), ("failed", 1)]
    assert "550 5.1.1 mailbox unknown" in messages[0].error
    assert result.status == "completed" and result.emails_sent == 0
    assert box.received == []


async def test_temporary_failure_is_retried_until_delivered_once(db, client, settings, temporal_env, mailbox):
    box, port = mailbox
    box.busy_answers = 2

    result, contact = await run_example(db, client, settings, temporal_env, port)

    welcome = (await messages_of(db, contact.id))[0]
    assert (welcome.status, welcome.attempts, welcome.error) == ("sent", 3, None)
    assert len(box.received) == 2  # the welcome once, then the resend
    assert result.emails_sent == 2
