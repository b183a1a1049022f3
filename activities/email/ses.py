"""Amazon SES v2 ``SendEmail`` through aioboto3 (the AWS SDK on asyncio).

The message goes as raw MIME (``build_mime``), so it keeps our Message-ID header and the
one-click unsubscribe headers; our message id and enrollment ride as SES message tags, which
SES copies into every event it publishes (``mail.tags``). SES answers its own MessageId, the id
its reports name. The SDK's own retries are off: Temporal retries, visibly, honouring the
backoff, and the task queue's rate keeps us under the account's sending quota.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from activities.email.providers import (
    Accepted,
    OutgoingEmail,
    PermanentDeliveryError,
    TemporaryDeliveryError,
    build_mime,
)
from nurture.settings import SesSettings

# SES refuses the message itself: sending it again changes nothing.
PERMANENT_CODES = frozenset({
    "MessageRejected", "MailFromDomainNotVerifiedException", "BadRequestException", "NotFoundException",
    "InvalidParameterValue",
})


def tag_value(value: str) -> str:
    """SES tag values allow ASCII letters, digits, ``_``, ``-``, ``.`` and ``@``, 256 at most."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", value)[:256]


class SesProvider:
    name = "ses"
    idempotent = False

    def __init__(self, settings: SesSettings):
        self.settings = settings
        self._session = aioboto3.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.secret_access_key,
            region_name=settings.region,
        )
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def _sesv2(self) -> Any:
        async with self._opening:
            if self._client is None:
                config = Config(
                    retries={"total_max_attempts": 1},
                    connect_timeout=self.settings.timeout_seconds,
                    read_timeout=self.settings.timeout_seconds,
                )
                self._client = await self._session.client(
                    "sesv2", endpoint_url=self.settings.base_url or None, config=config
                ).__aenter__()
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def deliver(self, email: OutgoingEmail, accepted: Accepted | None = None) -> str:
        request: dict[str, Any] = {
            "FromEmailAddress": email.sender,
            "Destination": {"ToAddresses": [email.to]},
            "Content": {"Raw": {"Data": build_mime(email).as_bytes()}},
            "EmailTags": [{"Name": name, "Value": tag_value(value)} for name, value in email.metadata.items()],
        }
        if self.settings.configuration_set:
            request["ConfigurationSetName"] = self.settings.configuration_set
        client = await self._sesv2()
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                answer = await client.send_email(**request)
        except ClientError as exc:
            raise _delivery_error(exc) from exc
        except TimeoutError as exc:
            raise TemporaryDeliveryError(f"SES did not answer within {self.settings.timeout_seconds:g}s") from exc
        except (BotoCoreError, OSError) as exc:
            raise TemporaryDeliveryError(f"SES unreachable: {exc}") from exc
        provider_id = str(answer["MessageId"])
        if accepted is not None:
            await accepted(provider_id)
        return provider_id


def _delivery_error(exc: ClientError) -> Exception:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    detail = f"SES {code}: {error.get('Message', '')}".strip()
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in PERMANENT_CODES:
        return PermanentDeliveryError(detail)
    headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    retry_after: float | None = None
    try:
        retry_after = float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        pass
    # Throttling (TooManyRequestsException, LimitExceededException), a paused account, SES's
    # own trouble: the message is fine, later it goes.
    if status == 400 and code not in {"TooManyRequestsException", "LimitExceededException",
                                      "SendingPausedException", "Throttling", "ThrottlingException"}:
        return PermanentDeliveryError(detail)
    return TemporaryDeliveryError(detail, retry_after=retry_after)
