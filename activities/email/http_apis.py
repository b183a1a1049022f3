"""SendGrid v3 Mail Send, Postmark and Mailgun over their HTTP APIs (httpx).

Neither vendor ships an async client, so each provider is one request in the vendor's documented
shape. Every send carries the stable Message-ID (``message_id_for`` the idempotency key), our
message id and enrollment in the vendor's metadata field, and answers the vendor's message id.
None of the three takes an idempotency key: like SMTP, a send cut off between the vendor's answer
and our record of it may go out twice, which the send activity's ``sending`` record makes visible.

Errors: a refusal of the message itself (4xx) is permanent; throttling (429), the vendor's own
trouble (5xx), a timeout or no connection are temporary, retried after the vendor's Retry-After
when it gives one. Credentials the vendor refuses (401/403) are temporary too: the message is fine,
and the operator can fix the key before the retries run out.
"""

from __future__ import annotations

import base64
from email.utils import formataddr, parseaddr, parsedate_to_datetime
from datetime import UTC, datetime
from typing import Any

import httpx

from activities.email.providers import (
    Accepted,
    OutgoingEmail,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    message_id_for,
)
from nurture.settings import MailgunSettings, PostmarkSettings, ProviderApiSettings, SendgridSettings

# Answers that say "not now" rather than "never".
TEMPORARY_STATUSES = frozenset({401, 403, 408, 409, 425, 429})


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The wait a vendor asked for: Retry-After in seconds or as an HTTP date, else SendGrid's
    X-RateLimit-Reset (a unix time)."""
    current = datetime.now(UTC).timestamp() if now is None else now
    value = headers.get("retry-after")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(value).timestamp() - current)
            except (TypeError, ValueError):
                return None
    reset = headers.get("x-ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - current)
        except ValueError:
            return None
    return None


class HttpApiProvider:
    """One POST per message; subclasses say where, with what body, and where the answer's id is."""

    name: str
    idempotent = False

    def __init__(self, settings: ProviderApiSettings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        limits = httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
            keepalive_expiry=settings.keepalive_seconds,
        )
        self._client = httpx.AsyncClient(
            base_url=settings.base_url, timeout=settings.timeout_seconds, transport=transport, limits=limits
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        try:
            response = await self._client.send(self.request(email))
        except httpx.TimeoutException as exc:
            raise TemporaryDeliveryError(
                f"{self.name} did not answer within {self.settings.timeout_seconds:g}s"
            ) from exc
        except httpx.TransportError as exc:
            raise TemporaryDeliveryError(f"{self.name} unreachable: {exc or type(exc).__name__}") from exc
        if response.is_success:
            provider_id = self.message_id_of(response)
            if accepted is not None:
                await accepted(provider_id)
            return provider_id
        raise self.error_for(response)

    def error_for(self, response: httpx.Response) -> Exception:
        detail = f"{self.name} answered {response.status_code}: {response.text[:500]}"
        if response.status_code in TEMPORARY_STATUSES or response.status_code >= 500:
            return TemporaryDeliveryError(detail, retry_after=retry_after_seconds(response.headers))
        return PermanentDeliveryError(detail)

    def request(self, email: OutgoingEmail) -> httpx.Request:
        raise NotImplementedError

    def message_id_of(self, response: httpx.Response) -> str:
        raise NotImplementedError


def _headers(email: OutgoingEmail) -> dict[str, str]:
    return {"Message-ID": message_id_for(email.idempotency_key), **email.headers}


class SendgridProvider(HttpApiProvider):
    """``POST /v3/mail/send``: 202 with the id in ``X-Message-Id``; metadata in ``custom_args``."""

    name = "sendgrid"

    def __init__(self, settings: SendgridSettings, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(settings, transport)
        self.api_key = settings.api_key or ""

    def request(self, email: OutgoingEmail) -> httpx.Request:
        from_name, from_email = parseaddr(email.sender)
        to: dict[str, Any] = {"email": email.to}
        if email.to_name:
            to["name"] = email.to_name
        sender: dict[str, Any] = {"email": from_email}
        if from_name:
            sender["name"] = from_name
        body = {
            "personalizations": [{"to": [to]}],
            "from": sender,
            "subject": email.subject,
            "content": [
                {"type": "text/plain", "value": email.text or " "},
                {"type": "text/html", "value": email.html},
            ],
            "headers": _headers(email),
            "custom_args": email.metadata,
        }
        return self._client.build_request(
            "POST", "/v3/mail/send", json=body, headers={"Authorization": f"Bearer {self.api_key}"}
        )

    def message_id_of(self, response: httpx.Response) -> str:
        return response.headers.get("x-message-id", "")


class PostmarkProvider(HttpApiProvider):
    """``POST /email`` with ``X-Postmark-Server-Token``: ``MessageID`` in the answer; ``Metadata``."""

    name = "postmark"
    # ErrorCode 405: the account may not send now (out of credits): the message itself is fine.
    TEMPORARY_ERROR_CODES = frozenset({405})

    def __init__(self, settings: PostmarkSettings, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(settings, transport)
        self.token = settings.server_token or ""
        self.stream = settings.message_stream

    def request(self, email: OutgoingEmail) -> httpx.Request:
        body = {
            "From": email.sender,
            "To": formataddr((email.to_name, email.to)) if email.to_name else email.to,
            "Subject": email.subject,
            "HtmlBody": email.html,
            "TextBody": email.text or " ",
            "Headers": [{"Name": name, "Value": value} for name, value in _headers(email).items()],
            "Metadata": email.metadata,
            "MessageStream": self.stream,
        }
        return self._client.build_request(
            "POST", "/email", json=body,
            headers={"X-Postmark-Server-Token": self.token, "Accept": "application/json"},
        )

    def message_id_of(self, response: httpx.Response) -> str:
        return str(response.json().get("MessageID", ""))

    def error_for(self, response: httpx.Response) -> Exception:
        if response.status_code == 422:
            try:
                code = int(response.json().get("ErrorCode", 0))
            except (ValueError, AttributeError):
                code = 0
            if code in self.TEMPORARY_ERROR_CODES:
                return TemporaryDeliveryError(f"postmark answered 422 (ErrorCode {code}): {response.text[:500]}")
        return super().error_for(response)


class MailgunProvider(HttpApiProvider):
    """``POST /v3/<domain>/messages`` with basic auth ``api:<key>``: ``h:`` headers, ``v:`` variables."""

    name = "mailgun"

    def __init__(self, settings: MailgunSettings, transport: httpx.AsyncBaseTransport | None = None):
        super().__init__(settings, transport)
        self.domain = settings.domain
        self.authorization = "Basic " + base64.b64encode(f"api:{settings.api_key or ''}".encode()).decode()

    def request(self, email: OutgoingEmail) -> httpx.Request:
        form: dict[str, str] = {
            "from": email.sender,
            "to": formataddr((email.to_name, email.to)) if email.to_name else email.to,
            "subject": email.subject,
            "text": email.text or " ",
            "html": email.html,
        }
        # Mailgun keeps a Message-Id given as h:Message-Id (without it, it makes its own).
        form.update({f"h:{name}": value for name, value in _headers(email).items()})
        form["h:Message-Id"] = form.pop("h:Message-ID")
        form.update({f"v:{name}": value for name, value in email.metadata.items()})
        return self._client.build_request(
            "POST", f"/v3/{self.domain}/messages", data=form, headers={"Authorization": self.authorization}
        )

    def message_id_of(self, response: httpx.Response) -> str:
        return str(response.json().get("id", ""))


HTTP_PROVIDERS: dict[str, type[HttpApiProvider]] = {
    "sendgrid": SendgridProvider,
    "postmark": PostmarkProvider,
    "mailgun": MailgunProvider,
}
