"""One settings object for the API, the worker and the stack command.

Every field can be set from the environment with the ``NURTURE_`` prefix
(``NURTURE_DATABASE_URL``, ``NURTURE_SMTP__HOST`` ...) or from a ``.env`` file.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = None
    start_tls: bool = False
    use_tls: bool = False
    timeout_seconds: float = 30.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="NURTURE_", env_nested_delimiter="__", env_file=".env", extra="ignore"
    )

    data_dir: Path = Path("data")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; defaults to a SQLite file in data_dir. "
        "postgresql://user@host/db is accepted and run on psycopg's async driver.",
    )

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "nurture-enrollments"
    temporal_ui_port: int = 8233
    # Enrollment workflow ids are "<prefix>-<flow id>-<contact id>"; give each deployment
    # sharing a namespace its own prefix.
    workflow_id_prefix: str = "enrollment"
    # The time-skipping test server does not know custom search attributes.
    temporal_search_attributes: bool = True

    api_host: str = "127.0.0.1"
    api_port: int = 8000

    email_provider: Literal["outbox", "smtp"] = "outbox"
    email_from: str = "Nurture <marketing@example.com>"
    smtp: SmtpSettings = SmtpSettings()

    sms_provider: Literal["outbox"] = "outbox"

    # Webhook steps sign their body with this secret (header X-Nurture-Signature).
    webhook_secret: str = "change-me"
    webhook_timeout_seconds: float = 10.0
    # Refuse loopback, private and link-local targets unless explicitly allowed (SSRF guard).
    webhook_allow_private_networks: bool = False

    # Date waits on a date-only property go out at this local time when the flow names none.
    default_send_time: str = "09:00"

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def resolved_database_url(self) -> str:
        return async_database_url(self.database_url or f"sqlite:///{self.data_dir / 'nurture.db'}")

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def sms_outbox_dir(self) -> Path:
        return self.data_dir / "sms-outbox"


def async_database_url(url: str) -> str:
    """Map a plain database URL onto the async driver the service runs on."""
    for plain, driver in (
        ("sqlite://", "sqlite+aiosqlite://"),
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


@lru_cache
def get_settings() -> Settings:
    return Settings()
