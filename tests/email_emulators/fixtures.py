"""Fixtures: each vendor's emulator on loopback and the settings that point our provider at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from nurture.settings import MailgunSettings, PostmarkSettings, SendgridSettings, SesSettings
from tests.email_emulators.loopback import serving
from tests.email_emulators.sns import TOPIC
from tests.email_emulators.vendors import MailgunEmulator, PostmarkEmulator, SendgridEmulator

SES_SENDER = "marketing@example.com"


@asynccontextmanager
async def running(name: str) -> AsyncIterator[tuple[Any, Any]]:
    """The vendor's emulator on loopback and the provider settings that point at it."""
    if name == "sendgrid":
        emulator: Any = SendgridEmulator()
        async with serving(emulator.app) as url:
            yield emulator, SendgridSettings(base_url=url, api_key=emulator.credential, webhook_public_key=emulator.public_key)
    elif name == "postmark":
        emulator = PostmarkEmulator()
        async with serving(emulator.app) as url:
            yield emulator, PostmarkSettings(
                base_url=url, server_token=emulator.credential, webhook_username="postmark", webhook_password="hook-secret"
            )
    else:
        emulator = MailgunEmulator()
        async with serving(emulator.app) as url:
            yield emulator, MailgunSettings(
                base_url=url, domain=emulator.domain, api_key=emulator.credential, webhook_signing_key=emulator.signing_key
            )


@pytest.fixture
async def sendgrid() -> AsyncIterator[tuple[SendgridEmulator, SendgridSettings]]:
    async with running("sendgrid") as pair:
        yield pair


@pytest.fixture
async def postmark() -> AsyncIterator[tuple[PostmarkEmulator, PostmarkSettings]]:
    async with running("postmark") as pair:
        yield pair


@pytest.fixture
async def mailgun() -> AsyncIterator[tuple[MailgunEmulator, MailgunSettings]]:
    async with running("mailgun") as pair:
        yield pair


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto in server mode: SES v2 (and SNS) on loopback, for the whole session."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def ses(moto_server: str) -> SesSettings:
    """SES v2 on moto, with the sender's address verified (SES refuses to send from any other)."""
    settings = SesSettings(
        base_url=moto_server, region="us-east-1", access_key_id="testing", secret_access_key="testing",
        sns_trusted_url_prefix="http://127.0.0.1:", sns_topic_arns=[TOPIC],
    )
    client = boto3.client(
        "sesv2", endpoint_url=moto_server, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )
    client.create_email_identity(EmailIdentity=SES_SENDER)
    return settings


def ses_sent(moto_server: str) -> list:
    """What moto's SES accepted (its backend lives in this process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ses.models import ses_backends

    return ses_backends[DEFAULT_ACCOUNT_ID]["us-east-1"].sent_messages
