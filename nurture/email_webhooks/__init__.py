"""Email providers' own event webhooks: each vendor's signature scheme, and its events mapped to
the normalized reports (``nurture.engagement.ProviderEvent``) that the engine records.

One module per vendor: ``ses`` (through SNS), ``sendgrid`` (Signed Event Webhook), ``postmark``
(basic auth) and ``mailgun`` (HMAC of timestamp and token). Each offers a ``verify`` that raises
``WebhookRefused`` and a ``reports`` that answers ``Mapped``: the reports to record, and what was
left out and why (events the engine gives no meaning to, such as SendGrid's ``processed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from nurture.engagement import ProviderEvent


class WebhookRefused(Exception):
    """The request is not from the provider (signature, credentials), or was already used."""


class WebhookMalformed(Exception):
    """Signed, but not in the provider's shape."""


@dataclass
class Mapped:
    reports: list[ProviderEvent] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def add(self, where: str, **fields: Any) -> None:
        """Add one report; one that does not validate (an id past our range ...) is skipped, named."""
        try:
            self.reports.append(ProviderEvent.model_validate({k: v for k, v in fields.items() if v is not None}))
        except ValidationError as exc:
            self.skipped.append(f"{where}: {exc.errors()[0]['msg']}")


def our_message_id(value: Any) -> int | None:
    """Our message id as the provider echoes it back (a string, or SES's list of tag values)."""
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**31 else None


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 string or unix seconds; None when it is neither."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def text(value: Any, limit: int = 1000) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None
