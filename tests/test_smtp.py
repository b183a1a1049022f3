"""SmtpProvider against a real SMTP server (aiosmtpd) on 127.0.0.1."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Callable, Iterator

import pytest
from aiosmtpd.controller import Controller

from activities.email.providers import (
    OutgoingEmail,
    PermanentDeliveryError,
    SmtpProvider,
    TemporaryDeliveryError,
    message_id_for,
)
from nurture.settings import SmtpSettings

KEY = "enrollment-7-42:welcome:1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Recorder:
    """Accepts everything and keeps each envelope."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 2.0.0 OK"


class UnknownRecipient:
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 user unknown"


class TryLater:
    async def handle_DATA(self, server, session, envelope):
        return "451 4.3.0 try later"


@pytest.fixture
def smtp_server() -> Iterator[Callable[[object], SmtpSettings]]:
    """Start an aiosmtpd server with a given handler; returns settings pointing at it."""
    controllers: list[Controller] = []

    def start(handler: object) -> SmtpSettings:
        port = free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port)
        controller.start()
        controllers.append(controller)
        return SmtpSettings(host="127.0.0.1", port=port, timeout_seconds=10)

    yield start
    for controller in controllers:
        controller.stop()


def outgoing(**overrides) -> OutgoingEmail:
    fields = dict(
        idempotency_key=KEY,
        sender="Nurture <marketing@example.com>",
        to="ada@example.com",
        to_name="Ada Lovelace",
        subject="Welcome aboard, Ada",
        html="<p>Hello <b>Ada</b></p>",
        text="Hello Ada",
    )
    fields.update(overrides)
    return OutgoingEmail(**fields)


async def test_delivered_message_arrives_with_headers_and_both_parts(smtp_server):
    recorder = Recorder()
    provider = SmtpProvider(smtp_server(recorder))

    message_id = await provider.deliver(outgoing())

    assert len(recorder.envelopes) == 1
    envelope = recorder.envelopes[0]
    assert envelope.mail_from == "marketing@example.com"
    assert envelope.rcpt_tos == ["ada@example.com"]
    received = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert received["Subject"] == "Welcome aboard, Ada"
    assert received["To"] == "Ada Lovelace <ada@example.com>"
    assert received["From"] == "Nurture <marketing@example.com>"
    assert received["X-Nurture-Idempotency-Key"] == KEY
    # The Message-ID is derived from the idempotency key, and deliver() reports it.
    assert received["Message-ID"] == message_id
    assert message_id == message_id_for(KEY) and message_id.endswith("@nurture.local>")
    assert received.get_body(("plain",)).get_content().strip() == "Hello Ada"
    assert received.get_body(("html",)).get_content().strip() == "<p>Hello <b>Ada</b></p>"


async def test_recipient_rejected_with_550_is_permanent(smtp_server):
    provider = SmtpProvider(smtp_server(UnknownRecipient()))
    with pytest.raises(PermanentDeliveryError, match="550"):
        await provider.deliver(outgoing())


async def test_data_refused_with_451_is_temporary(smtp_server):
    provider = SmtpProvider(smtp_server(TryLater()))
    with pytest.raises(TemporaryDeliveryError, match="451"):
        await provider.deliver(outgoing())


async def test_connection_refused_is_temporary():
    provider = SmtpProvider(SmtpSettings(host="127.0.0.1", port=free_port(), timeout_seconds=5))
    with pytest.raises(TemporaryDeliveryError):
        await provider.deliver(outgoing())


def test_message_id_is_stable_for_one_key_and_distinct_across_keys():
    assert message_id_for(KEY) == message_id_for(KEY)
    assert message_id_for("a/b") != message_id_for("a_b")
