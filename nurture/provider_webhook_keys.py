"""The email providers' webhook credentials, checked before the API serves (docs/email-providers.md).

A provider's own webhook endpoint is the door for bounces and complaints. Two ways it goes wrong:

* **Not configured** (``unconfigured``): the chosen provider's endpoint answers 404, so its
  bounces and complaints never suppress anyone and the engine keeps mailing dead and angry
  addresses. The API and ``nurture stack`` say so at start, naming the settings; they still start,
  since sending works and the key may come later.
* **Forgeable** (``forgeable_webhook_keys``): a key that is set but that anyone could guess or get
  around, which would let a stranger unsubscribe or suppress any contact. The API refuses to start,
  as it does for the signing secrets (nurture/deployment_secrets.py): a Postmark password or
  Mailgun signing key that is a published placeholder or shorter than ``MIN_SECRET_LENGTH``, a
  Postmark username without its password (or the reverse), a SendGrid key that is not an ECDSA
  P-256 public key, an SNS topic allow-list entry that is not an SNS topic ARN, and a trusted
  certificate URL prefix other than one on loopback ending in ``/`` (it exists for test emulators).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import ec

from nurture.deployment_secrets import KNOWN_DEFAULTS, MIN_SECRET_LENGTH, ForgeableSecret
from nurture.email_webhooks.sendgrid import public_key
from nurture.settings import Settings

TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Placeholders seen in vendors' docs and our own examples: public knowledge.
PLACEHOLDERS = KNOWN_DEFAULTS | {"password", "secret", "changeme", "change-me-webhook", "key-placeholder"}


def unconfigured(settings: Settings) -> list[str]:
    """What the chosen provider's webhook lacks, naming each setting; empty when it is complete."""
    name = settings.email_provider
    if name == "ses" and not settings.ses.sns_topic_arns:
        return ["NURTURE_SES__SNS_TOPIC_ARNS is empty: /webhooks/ses takes no SES events until it names your SNS topic"]
    if name == "sendgrid" and not settings.sendgrid.webhook_public_key:
        return ["NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY is not set: /webhooks/sendgrid answers 404"]
    if name == "postmark" and not (settings.postmark.webhook_username or settings.postmark.webhook_password):
        return ["NURTURE_POSTMARK__WEBHOOK_USERNAME and NURTURE_POSTMARK__WEBHOOK_PASSWORD are not set: /webhooks/postmark answers 404"]
    if name == "mailgun" and not settings.mailgun.webhook_signing_key:
        return ["NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY is not set: /webhooks/mailgun answers 404"]
    return []


def _guessable(variable: str, value: str) -> str | None:
    if value.strip().lower() in PLACEHOLDERS:
        return f"{variable} is a published placeholder ({value!r})"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{variable} is shorter than {MIN_SECRET_LENGTH} characters"
    return None


def forgeable_webhook_keys(settings: Settings) -> list[str]:
    """Why each webhook credential that is set cannot be trusted; empty when all can.

    Every provider's, not only the chosen one's: an endpoint takes posts whenever its key is set."""
    problems: list[str] = []
    postmark = settings.postmark
    if bool(postmark.webhook_username) != bool(postmark.webhook_password):
        problems.append("NURTURE_POSTMARK__WEBHOOK_USERNAME and NURTURE_POSTMARK__WEBHOOK_PASSWORD must be set together")
    if postmark.webhook_password:
        problems.append(_guessable("NURTURE_POSTMARK__WEBHOOK_PASSWORD", postmark.webhook_password) or "")
    if settings.mailgun.webhook_signing_key:
        problems.append(_guessable("NURTURE_MAILGUN__WEBHOOK_SIGNING_KEY", settings.mailgun.webhook_signing_key) or "")
    if settings.sendgrid.webhook_public_key:
        try:
            key = public_key(settings.sendgrid.webhook_public_key)
            if not isinstance(key.curve, ec.SECP256R1):
                problems.append(f"NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY is on curve {key.curve.name}, not P-256")
        except ValueError as exc:
            problems.append(f"NURTURE_SENDGRID__WEBHOOK_PUBLIC_KEY: {exc} (copy it from the Signed Event Webhook's settings)")
    for arn in settings.ses.sns_topic_arns:
        if not TOPIC_ARN.match(arn):
            problems.append(f"NURTURE_SES__SNS_TOPIC_ARNS holds {arn!r}, not an SNS topic ARN (arn:aws:sns:<region>:<account>:<topic>)")
    prefix = settings.ses.sns_trusted_url_prefix
    if prefix and not _loopback_prefix(prefix):
        problems.append(
            "NURTURE_SES__SNS_TRUSTED_URL_PREFIX trusts signing certificates outside SNS: it is for a test emulator on "
            f"loopback only (http://127.0.0.1:<port>/), not {prefix!r}; unset it in production"
        )
    return [p for p in problems if p]


def _loopback_prefix(prefix: str) -> bool:
    """A loopback URL whose host and port are complete (``.../``): no other host can start with it."""
    parts = urlsplit(prefix)
    return (
        parts.scheme in ("http", "https") and "@" not in parts.netloc and parts.hostname in LOOPBACK_HOSTS
        and parts.path.startswith("/")
    )


def require_webhook_keys(settings: Settings, who: str) -> None:
    """Raise ForgeableSecret, naming each setting, unless every webhook credential set can be trusted."""
    problems = forgeable_webhook_keys(settings)
    if problems:
        raise ForgeableSecret(
            f"the {who} refuses to start: {'; '.join(problems)}. Provider webhook credentials are secrets: "
            f"use the values from the provider's console, and for a Postmark webhook password a random one of at "
            f"least {MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`). See docs/email-providers.md"
        )
