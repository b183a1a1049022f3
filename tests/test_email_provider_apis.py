"""Each provider's HTTP API, against its emulator on loopback: what a send carries, what comes back,
and which answers are permanent and which are retried (and after how long)."""

from __future__ import annotations

import email
import json

import pytest

from activities.email.http_apis import MailgunProvider, PostmarkProvider, SendgridProvider
from activities.email.providers import (
    OutgoingEmail,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    message_id_for,
    provider_from_settings,
)
from activities.email.ses import SesProvider
from nurture.settings import Settings
from tests.email_emulators.fixtures import SES_SENDER, mailgun, moto_server, postmark, sendgrid, ses, ses_sent  # noqa: F401
from tests.email_emulators.loopback import serving
from tests.email_emulators.ses_front import SesThrottlingFront

METADATA = {"nurture_message_id": "17", "nurture_enrollment": "enrollment-3-9"}


def outgoing(to: str = "ada@example.com", key: str = "enrollment-3-9:welcome:1") -> OutgoingEmail:
    return OutgoingEmail(
        idempotency_key=key, sender=f"Nurture <{SES_SENDER}>", to=to, to_name="Ada Lovelace", subject="Welcome, Ada",
        html="<p>Hello</p>", text="Hello",
        headers={"List-Unsubscribe": "<https://mail.example.com/u/abc>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"},
        metadata=METADATA,
    )


async def deliver(provider, mail: OutgoingEmail) -> tuple[str, list[str]]:
    heard: list[str] = []

    async def accepted(provider_id: str) -> None:
        heard.append(provider_id)

    return await provider.deliver(mail, accepted=accepted), heard


PROVIDERS = {"sendgrid": SendgridProvider, "postmark": PostmarkProvider, "mailgun": MailgunProvider}


@pytest.fixture(params=sorted(PROVIDERS))
def vendor(request):
    """(name, emulator, provider on it) for each HTTP vendor."""
    emulator, settings = request.getfixturevalue(request.param)
    return request.param, emulator, settings, PROVIDERS[request.param](settings)


async def test_a_send_carries_our_ids_and_message_id_and_records_the_vendors_id(vendor):
    name, emulator, settings, provider = vendor
    provider_id, heard = await deliver(provider, outgoing())

    [accepted] = emulator.sent
    assert provider_id == accepted.provider_id and heard == [provider_id] and provider_id
    assert accepted.metadata == METADATA
    assert accepted.to == "ada@example.com" and accepted.subject == "Welcome, Ada"
    message_id = next(v for k, v in accepted.headers.items() if k.lower() == "message-id")
    assert message_id == message_id_for("enrollment-3-9:welcome:1")
    assert accepted.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert provider_from_settings(Settings(_env_file=None, email_provider=name, **{name: settings})).name == name


async def test_a_refused_address_is_permanent_and_not_retried(vendor):
    _, emulator, _, provider = vendor
    with pytest.raises(PermanentDeliveryError, match="400|422"):
        await deliver(provider, outgoing(to="nobody@invalid.test"))
    assert emulator.sent == []


async def test_throttling_is_temporary_and_names_the_vendors_wait(vendor):
    _, emulator, _, provider = vendor
    emulator.throttle(1, retry_after_seconds=7)
    with pytest.raises(TemporaryDeliveryError, match="429") as raised:
        await deliver(provider, outgoing())
    assert raised.value.retry_after == pytest.approx(7, abs=1)
    assert emulator.sent == []
    await deliver(provider, outgoing())  # the next attempt goes through, once
    assert len(emulator.sent) == 1


async def test_refused_credentials_are_temporary_so_the_operator_can_fix_the_key(vendor):
    name, emulator, settings, _ = vendor
    field = {"sendgrid": "api_key", "postmark": "server_token", "mailgun": "api_key"}[name]
    provider = PROVIDERS[name](settings.model_copy(update={field: "wrong"}))
    with pytest.raises(TemporaryDeliveryError, match="401"):
        await deliver(provider, outgoing())
    assert emulator.sent == []


async def test_an_unreachable_vendor_is_temporary(vendor):
    name, _, settings, _ = vendor
    provider = PROVIDERS[name](settings.model_copy(update={"base_url": "http://127.0.0.1:9", "timeout_seconds": 2}))
    with pytest.raises(TemporaryDeliveryError, match="unreachable"):
        await deliver(provider, outgoing())


async def test_postmark_inactive_recipient_is_permanent(postmark):
    emulator, settings = postmark
    emulator.inactive.add("ada@example.com")
    with pytest.raises(PermanentDeliveryError, match="406|inactive"):
        await deliver(PostmarkProvider(settings), outgoing())


# --- Amazon SES v2 on moto --------------------------------------------------------------------


async def test_ses_sends_raw_mime_with_our_message_id_and_tags(ses, moto_server):
    provider = SesProvider(ses)
    sent_before = len(ses_sent(moto_server))
    requests: list[dict] = []
    client = await provider._sesv2()
    client.meta.events.register(
        "before-send.sesv2.SendEmail", lambda request, **_: requests.append(json.loads(request.body))
    )

    provider_id, heard = await deliver(provider, outgoing())

    raw = ses_sent(moto_server)[sent_before:]
    assert [m.id for m in raw] == [provider_id] == heard
    mime = email.message_from_string(raw[0].raw_data)
    assert mime["Message-ID"] == message_id_for("enrollment-3-9:welcome:1") and mime["Subject"] == "Welcome, Ada"
    assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    [request] = requests
    assert {t["Name"]: t["Value"] for t in request["EmailTags"]} == METADATA
    await provider.aclose()


async def test_ses_refusing_an_unverified_sender_is_permanent(ses, moto_server):
    provider = SesProvider(ses)
    mail = outgoing().model_copy(update={"sender": "someone@unverified.example"})
    with pytest.raises(PermanentDeliveryError, match="MessageRejected"):
        await deliver(provider, mail)
    await provider.aclose()


async def test_ses_throttling_is_temporary_and_names_its_wait(ses, moto_server):
    front = SesThrottlingFront(moto_server)
    async with serving(front.app) as url:
        provider = SesProvider(ses.model_copy(update={"base_url": url}))
        front.throttle(1, retry_after_seconds=7)
        with pytest.raises(TemporaryDeliveryError, match="TooManyRequestsException") as raised:
            await deliver(provider, outgoing())
        assert raised.value.retry_after == 7 and front.sends == []
        await deliver(provider, outgoing())  # the next attempt goes through, once
        assert len(front.sends) == 1
        await provider.aclose()


async def test_ses_unreachable_is_temporary(ses):
    provider = SesProvider(ses.model_copy(update={"base_url": "http://127.0.0.1:9", "timeout_seconds": 2}))
    with pytest.raises(TemporaryDeliveryError):
        await deliver(provider, outgoing())
    await provider.aclose()


# --- the send queue --------------------------------------------------------------------------


@pytest.mark.parametrize("queues", ["all", "enrollments", "sends"])
async def test_a_worker_process_polls_the_queues_it_is_told_and_the_send_queue_at_the_providers_rate(queues, client, tmp_path):
    from nurture.db import Database
    from worker.main import build_workers

    settings = Settings(_env_file=None, data_dir=tmp_path, email_provider="ses", worker_queues=queues,
                        ses={"max_sends_per_second": 14})
    db = Database(f"sqlite:///{tmp_path / 'n.db'}")
    workers = build_workers(client, db, provider_from_settings(settings), settings)
    polled = {w.task_queue: w for w in workers}
    expected = {"all": {"nurture-enrollments", "nurture-enrollments-sends"},
                "enrollments": {"nurture-enrollments"}, "sends": {"nurture-enrollments-sends"}}[queues]
    assert set(polled) == expected
    if "nurture-enrollments-sends" in polled:
        config = polled["nurture-enrollments-sends"].config()
        assert config["max_task_queue_activities_per_second"] == 14
        assert [getattr(a, "__name__", "") for a in config["activities"]] == ["send_email"]

