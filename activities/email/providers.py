"""Email providers: where a rendered message goes. The outbox is the default."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.contentmanager import _encode_text
from email.message import Message
from email.policy import compat32
from email.policy import default as default_policy
from email.header import Header
from email.utils import formataddr, format_datetime
from pathlib import Path
from typing import Protocol

import aiosmtplib
from pydantic import BaseModel, Field

from nurture.settings import Settings, SmtpSettings


class OutgoingEmail(BaseModel):
    idempotency_key: str
    sender: str
    to: str
    to_name: str | None = None
    subject: str
    html: str
    text: str
    headers: dict[str, str] = Field(default_factory=dict)
    # Our message id and enrollment, carried in the provider's own metadata field (SES tags,
    # SendGrid custom_args, Postmark Metadata, Mailgun v: variables) and returned in its reports.
    metadata: dict[str, str] = Field(default_factory=dict)


class PermanentDeliveryError(Exception):
    """The provider refused the message for good (bad address, rejected content)."""


class TemporaryDeliveryError(Exception):
    """The provider could not take the message now; a later attempt may succeed.

    ``retry_after``: seconds the provider asked us to wait (its Retry-After), honoured by the retry.
    """

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


Accepted = Callable[[str], Awaitable[None]]


class EmailProvider(Protocol):
    name: str
    # Whether handing the same idempotency key over twice still delivers one message. When it is
    # not, a retry after an attempt that was cut off between the provider's acceptance and our
    # record of it sends a second copy (same Message-ID).
    idempotent: bool

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        """Hand the message over; return the provider's message id.

        ``accepted`` is awaited with that id the moment the provider has taken the message,
        before anything else (closing the connection), so the caller can record the send first.
        """
        ...


def message_id_for(key: str) -> str:
    """The same idempotency key always gives the same Message-ID, so a resend is recognisable."""
    return f"<{_safe_name(key)}@nurture.local>"


def _safe_name(key: str) -> str:
    """A file- and header-safe name that stays unique: the digest tells apart keys the cleaning merges."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{re.sub(r'[^A-Za-z0-9._-]', '_', key)[:150]}.{digest}"


# Long header values (List-Unsubscribe URLs) stay plain: RFC 5322 allows 998 characters a line,
# and mail clients do not decode an encoded-word URL. The message is built and written with the
# compat32 policy (plain strings, no header objects parsed back and refolded: about a fifth of the
# CPU of the default policy's EmailMessage: 3.1 -> 0.65 ms a message here); the body parts
# get the transfer encoding the default policy's content manager would choose.
_MIME_POLICY = compat32.clone(max_line_length=998)
_BODY_POLICY = default_policy.clone(max_line_length=998)


def _text_part(body: str, subtype: str) -> Message:
    part = Message(policy=_MIME_POLICY)
    cte, payload = _encode_text(body, "utf-8", None, _BODY_POLICY)
    part["Content-Type"] = f'text/{subtype}; charset="utf-8"'
    part["Content-Transfer-Encoding"] = cte
    part.set_payload(payload)
    return part


class _EncodedWords(Header):
    """A non-ASCII header value as RFC 2047 encoded words of at most 78 characters a line (RFC 2047
    keeps an encoded word within 75), whatever line length the policy allows plain values."""

    def encode(self, splitchars=";, \t", maxlinelen=None, linesep="\n"):
        return super().encode(splitchars, 78, linesep)


def _header(name: str, value: str) -> str | Header:
    return value if value.isascii() else _EncodedWords(value, "utf-8", header_name=name)


def build_mime(email: OutgoingEmail) -> Message:
    mime = Message(policy=_MIME_POLICY)
    mime["From"] = _header("From", email.sender)
    mime["To"] = formataddr((email.to_name, email.to)) if email.to_name else email.to
    mime["Subject"] = _header("Subject", email.subject)
    # RFC 5322 requires it, and spam filters score its absence. The moment of this attempt: a
    # retry after an outage would otherwise carry a date hours in the past, which filters score too.
    mime["Date"] = format_datetime(datetime.now(UTC))
    mime["Message-ID"] = message_id_for(email.idempotency_key)
    mime["X-Nurture-Idempotency-Key"] = email.idempotency_key
    for name, value in email.headers.items():
        mime[name] = _header(name, value)
    mime["MIME-Version"] = "1.0"
    mime["Content-Type"] = "multipart/alternative"
    mime.attach(_text_part(email.text or " ", "plain"))
    mime.attach(_text_part(email.html, "html"))
    return mime


class OutboxProvider:
    """Keeps every message as an .eml file under the data directory, one file per idempotency key."""

    name = "outbox"
    idempotent = True

    def __init__(self, directory: Path):
        self.directory = directory

    def path_for(self, key: str) -> Path:
        return self.directory / f"{_safe_name(key)}.eml"

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        mime = build_mime(email)
        target = self.path_for(email.idempotency_key)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(mime.as_bytes())
        os.replace(tmp, target)  # a retry rewrites the same file: never a second copy
        if accepted is not None:
            await accepted(str(mime["Message-ID"]))
        return str(mime["Message-ID"])


class SmtpProvider:
    """Delivers through an SMTP server. Not idempotent: a server that said 250 has the message."""

    name = "smtp"
    idempotent = False

    def __init__(self, settings: SmtpSettings):
        self.settings = settings

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        mime = build_mime(email)
        message_id = str(mime["Message-ID"])
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port,
            username=s.username,
            password=s.password,
            start_tls=s.start_tls,
            use_tls=s.use_tls,
            timeout=s.timeout_seconds,
        )
        try:
            await self._hand_over(client, mime)
            # The server said 250 and has the message: the caller records that before anything
            # else, even QUIT, so a worker that dies from here on has nothing left to resend.
            if accepted is not None:
                await accepted(message_id)
        finally:
            await _close(client, s.timeout_seconds)
        return message_id

    async def _hand_over(self, client: aiosmtplib.SMTP, mime: Message) -> None:
        timeout = self.settings.timeout_seconds
        try:
            # The whole exchange, not each command, within the timeout: the send activity's
            # start-to-close timeout is sized from it (Settings.send_activity_timeout).
            async with asyncio.timeout(timeout):
                await client.connect()
                await client.send_message(mime)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            reply = "; ".join(f"{r.code} {r.message}" for r in exc.recipients)
            if all(500 <= c < 600 for c in codes):
                raise PermanentDeliveryError(reply) from exc
            raise TemporaryDeliveryError(reply) from exc
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentDeliveryError(f"{exc.code} {exc.message}") from exc
            raise TemporaryDeliveryError(f"{exc.code} {exc.message}") from exc
        except TimeoutError as exc:
            raise TemporaryDeliveryError(f"the SMTP server did not answer within {timeout:g}s") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryDeliveryError(str(exc) or type(exc).__name__) from exc


async def _close(client: aiosmtplib.SMTP, timeout: float) -> None:
    """QUIT politely; a server that does not answer it loses nothing (the message is recorded)."""
    if client.is_connected:
        try:
            async with asyncio.timeout(timeout):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError):
            pass
    client.close()


class PacedProvider:
    """Hands messages to ``inner`` no faster than ``rate`` a second, evenly spaced, from this process.

    The global rate is Temporal's task-queue limit on the send queue (worker/main.py); its token
    bucket hands a backlog over in a burst (about a second's worth at once), which a provider
    counting per second answers with 429. Spacing the hand-overs here keeps one worker's sends
    even; several workers share the global rate, so each is rarely held here at all. A throttling
    answer holds this worker's next hand-overs for its Retry-After.

    Spacing alone is kept to a schedule: when the event loop stalls (a busy worker), the sends
    whose turns fell in the stall all go as it ends, and a second could carry more than the rate
    (at 45 a second against a limit of 50, the provider still answered 429 a few times in 2,000).
    So no one-second window holds more than ``rate`` hand-overs either, counted when they happen.
    """

    def __init__(self, inner: EmailProvider, rate: float):
        self.inner = inner
        self.name = inner.name
        self.idempotent = inner.idempotent
        self.interval = 1.0 / rate
        self.per_second = max(1, int(rate))
        self._recent: deque[float] = deque()  # when this process's last hand-overs happened
        self._next = 0.0

    async def _within_the_second(self) -> None:
        """However late this send woke, wait while the last second already holds the rate."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._recent and now - self._recent[0] >= 1.0:
                self._recent.popleft()
            if len(self._recent) < self.per_second:
                self._recent.append(now)
                return
            await asyncio.sleep(self._recent[0] + 1.0 - now)

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        loop = asyncio.get_running_loop()
        now = loop.time()
        at = max(now, self._next)  # this send's turn, taken at once (no await in between)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)
        await self._within_the_second()
        try:
            return await self.inner.deliver(email, accepted)
        except TemporaryDeliveryError as exc:
            if exc.retry_after:
                # The provider is throttling: the turns given from now on wait as long.
                resume = loop.time() + exc.retry_after
                self._next = max(self._next, resume)
            raise

    async def aclose(self) -> None:
        close = getattr(self.inner, "aclose", None)
        if close is not None:
            await close()


def provider_from_settings(settings: Settings) -> EmailProvider:
    provider: EmailProvider
    if settings.email_provider == "smtp":
        provider = SmtpProvider(settings.smtp)
    elif settings.email_provider == "ses":
        from activities.email.ses import SesProvider

        provider = SesProvider(settings.ses)
    elif settings.email_provider in ("sendgrid", "postmark", "mailgun"):
        from activities.email.http_apis import HTTP_PROVIDERS

        provider = HTTP_PROVIDERS[settings.email_provider](getattr(settings, settings.email_provider))
    else:
        return OutboxProvider(settings.outbox_dir)
    rate = settings.send_rate_per_second
    return PacedProvider(provider, rate) if rate else provider
