"""The signing secrets, and the rule that keeps a forgeable one from ever being used.

Three settings sign or verify what outsiders send us or what we send them:
``tracking_secret`` (click, open and consent links), ``email_webhook_secret`` (provider
delivery reports) and ``webhook_secret`` (our outgoing webhook steps). Anyone who knows one
can forge what it signs, so none has a default. The rule:

1. A process takes each secret from the environment (``NURTURE_TRACKING_SECRET`` ...) or a
   ``.env`` file; a secret still unset is read from ``<data_dir>/secrets.json`` when that file
   exists.
2. ``nurture stack`` (the local stack) generates every secret still unset on its first start,
   keeps it in ``<data_dir>/secrets.json`` (mode 0600) and reuses it on every later start, so
   links sent before a restart keep working. It hands them to its worker and API children.
3. The API and the worker refuse to start while a secret they use is unset, is one of the
   placeholders earlier versions shipped, or is shorter than ``MIN_SECRET_LENGTH``; the message
   names each such setting. Nothing else is exempt: a deployment (compose, the image, a plain
   ``uvicorn``) sets the secrets in its environment.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

from nurture.settings import Settings

SECRETS_FILE = "secrets.json"
ALL_SECRETS = ("tracking_secret", "email_webhook_secret", "webhook_secret")
# What each process signs or verifies with.
API_SECRETS = ("tracking_secret", "email_webhook_secret")
WORKER_SECRETS = ("tracking_secret", "webhook_secret")
# Shipped as defaults by earlier versions, so they are public knowledge.
KNOWN_DEFAULTS = frozenset({"change-me", "change-me-tracking", "change-me-email-webhooks"})
# A fixed floor, not a setting: below it a secret can be guessed, whatever a deployment prefers.
MIN_SECRET_LENGTH = 16


class ForgeableSecret(Exception):
    """A secret a process needs is unset, a known default or too short."""


def variable(name: str) -> str:
    return f"NURTURE_{name.upper()}"


def secrets_path(settings: Settings) -> Path:
    return settings.data_dir / SECRETS_FILE


def read_stored(settings: Settings) -> dict[str, str]:
    """The secrets kept in the data directory; empty when there is no file."""
    path = secrets_path(settings)
    try:
        stored = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ForgeableSecret(f"{path.resolve()} is not a JSON object of secrets: {exc}") from exc
    if not isinstance(stored, dict):
        raise ForgeableSecret(f"{path.resolve()} is not a JSON object of secrets")
    return {name: value for name, value in stored.items() if name in ALL_SECRETS and isinstance(value, str)}


def with_stored_secrets(settings: Settings) -> Settings:
    """The settings with every secret the environment left unset taken from the data directory."""
    stored = read_stored(settings)
    update = {name: stored[name] for name in ALL_SECRETS if getattr(settings, name) is None and name in stored}
    return settings.model_copy(update=update) if update else settings


def ensure_local_secrets(settings: Settings) -> Settings:
    """For the local stack: generate every secret still unset and keep it in the data directory."""
    stored = read_stored(settings)
    missing = [name for name in ALL_SECRETS if getattr(settings, name) is None and name not in stored]
    if missing:
        stored.update({name: secrets.token_urlsafe(32) for name in missing})
        _write_private(secrets_path(settings), json.dumps(stored, indent=2) + "\n")
    elif secrets_path(settings).exists():
        os.chmod(secrets_path(settings), 0o600)
    return with_stored_secrets(settings)


def _write_private(path: Path, text: str) -> None:
    """Write readable by the owner only, from the first byte, and atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def forgeable(settings: Settings, names: Iterable[str] = ALL_SECRETS) -> list[str]:
    """Why each of these secrets cannot be used, naming its variable; empty when all are fine."""
    problems = []
    for name in names:
        value = getattr(settings, name)
        if not value:
            problems.append(f"{variable(name)} is not set")
        elif value.strip().lower() in KNOWN_DEFAULTS:
            problems.append(f"{variable(name)} is a published default ({value!r})")
        elif len(value) < MIN_SECRET_LENGTH:
            problems.append(f"{variable(name)} is shorter than {MIN_SECRET_LENGTH} characters")
    return problems


def require_secrets(settings: Settings, names: Iterable[str], who: str) -> None:
    """Raise ForgeableSecret, saying what to do, unless every named secret is usable."""
    problems = forgeable(settings, names)
    if problems:
        raise ForgeableSecret(
            f"the {who} refuses to start: {'; '.join(problems)}. Set each to a random value of at least "
            f"{MIN_SECRET_LENGTH} characters (e.g. `openssl rand -hex 32`) in the environment, or run the "
            f"local stack (`nurture stack`), which keeps generated ones in {secrets_path(settings).resolve()}"
        )


def secrets_environment(settings: Settings) -> dict[str, str]:
    """The secrets as the environment variables a child process reads."""
    return {variable(name): getattr(settings, name) for name in ALL_SECRETS if getattr(settings, name)}
