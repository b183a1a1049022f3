"""OutboxProvider: one .eml file per idempotency key under the outbox directory."""

from __future__ import annotations

import email
import email.policy

from activities.email.providers import OutboxProvider, OutgoingEmail


def outgoing(key: str, subject: str = "Hello") -> OutgoingEmail:
    return OutgoingEmail(
        idempotency_key=key,
        sender="Nurture <marketing@example.com>",
        to="grace@example.com",
        subject=subject,
        html="<p>Hi Grace</p>",
        text="Hi Grace",
    )


async def test_writes_one_eml_per_key(tmp_path):
    outbox = OutboxProvider(tmp_path / "outbox")

    first = await outbox.deliver(outgoing("enrollment-1-1:welcome:1"))
    await outbox.deliver(outgoing("enrollment-1-1:follow-up:1"))

    files = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert files == sorted(outbox.path_for(k).name for k in ("enrollment-1-1:welcome:1", "enrollment-1-1:follow-up:1"))
    assert all(name.startswith("enrollment-1-1_") and name.endswith(".eml") for name in files)
    stored = email.message_from_bytes(
        outbox.path_for("enrollment-1-1:welcome:1").read_bytes(), policy=email.policy.default
    )
    assert stored["Message-ID"] == first
    assert stored["To"] == "grace@example.com"
    assert stored["X-Nurture-Idempotency-Key"] == "enrollment-1-1:welcome:1"
    assert stored.get_body(("plain",)).get_content().strip() == "Hi Grace"
    assert stored.get_body(("html",)).get_content().strip() == "<p>Hi Grace</p>"


async def test_delivering_the_same_key_twice_keeps_one_file(tmp_path):
    outbox = OutboxProvider(tmp_path / "outbox")

    await outbox.deliver(outgoing("enrollment-2-5:welcome:1", subject="first try"))
    second = await outbox.deliver(outgoing("enrollment-2-5:welcome:1", subject="retry"))

    files = list((tmp_path / "outbox").iterdir())
    assert files == [outbox.path_for("enrollment-2-5:welcome:1")]  # and no .tmp left behind
    stored = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert stored["Subject"] == "retry"
    assert stored["Message-ID"] == second


async def test_keys_that_clean_to_the_same_name_keep_separate_files(tmp_path):
    outbox = OutboxProvider(tmp_path / "outbox")

    await outbox.deliver(outgoing("a/b", subject="one"))
    await outbox.deliver(outgoing("a_b", subject="two"))

    assert len(list((tmp_path / "outbox").iterdir())) == 2
