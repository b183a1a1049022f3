"""One settings object for the API, the worker and the stack command.

Every field can be set from the environment with the ``NURTURE_`` prefix
(``NURTURE_DATABASE_URL``, ``NURTURE_SMTP__HOST`` ...) or from a ``.env`` file.
"""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from datetime import date
from pathlib import Path
from typing import Literal

import limits
from pydantic import BaseModel, Field, IPvAnyNetwork, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nurture.flow.durations import MAX_DURATION_DAYS, Duration
from nurture.flow.limits import MAX_NESTING_CEILING, FlowLimits


class SmtpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 25
    username: str | None = None
    password: str | None = None
    start_tls: bool = False
    use_tls: bool = False
    # The whole exchange with the server (connect to its answer to the message) must fit in this.
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)


class ProviderApiSettings(BaseModel):
    """What every HTTP email provider shares (docs/email-providers.md)."""

    # The vendor's API root; tests and benchmarks point it at an emulator on loopback.
    base_url: str = ""
    # The whole request (connect to the provider's answer) must fit in this.
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # Sends to this provider leave through their own task queue, at most this many per second across
    # every worker (Temporal's task-queue rate limit); 0: no queue of their own, no limit.
    max_sends_per_second: float = Field(default=0.0, ge=0, le=100_000)
    # SendGrid, Postmark, Mailgun (SES's SDK keeps its own): the HTTP client's connections to the
    # provider, one client per worker process reused by every send. Every request scans the pool, so
    # it is bounded: more requests in flight wait for a free connection (within timeout_seconds).
    max_connections: int = Field(default=20, ge=1, le=1000)
    # An idle connection is closed after this many seconds, before the common 5-second server idle
    # timeout (uvicorn, Node) can close it under a request being written: no spurious "unreachable".
    keepalive_seconds: float = Field(default=4.0, gt=0, le=600)


class SesSettings(ProviderApiSettings):
    region: str = "us-east-1"
    # None: the AWS SDK's own credential chain (environment, profile, instance role).
    access_key_id: str | None = None
    secret_access_key: str | None = None
    configuration_set: str | None = None  # where SES publishes delivery events (to SNS)
    # A new SES account may send 14 messages a second; raise it with the account's quota.
    max_sends_per_second: float = Field(default=14.0, ge=0, le=100_000)
    # SNS signs its webhooks with a certificate fetched from an https://sns.<region>.amazonaws.com
    # URL; a test emulator serving its own certificate is trusted by this URL prefix. Never in production.
    sns_trusted_url_prefix: str | None = None
    # Only notifications of these topics are taken (empty: any topic; set it in production).
    sns_topic_arns: list[str] = Field(default_factory=list)


class SendgridSettings(ProviderApiSettings):
    base_url: str = "https://api.sendgrid.com"
    api_key: str | None = None
    # The Signed Event Webhook's verification key (base64 ECDSA P-256 public key, from the console).
    webhook_public_key: str | None = None


class PostmarkSettings(ProviderApiSettings):
    base_url: str = "https://api.postmarkapp.com"
    server_token: str | None = None
    message_stream: str = "outbound"
    # Postmark's webhooks carry no signature: the webhook URL holds these as basic auth.
    webhook_username: str | None = None
    webhook_password: str | None = None


class MailgunSettings(ProviderApiSettings):
    base_url: str = "https://api.mailgun.net"  # https://api.eu.mailgun.net for an EU domain
    domain: str = ""
    api_key: str | None = None
    webhook_signing_key: str | None = None


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
    # Enrollment workflow ids are "<prefix>-<flow id>-<contact id>" (a re-enrollment, the contact's
    # n-th in the flow, appends "-<n>"); give each deployment sharing a namespace its own prefix.
    workflow_id_prefix: str = "enrollment"
    # Bulk pages, trigger scans and events that enroll or tell several enrollments at once keep
    # at most this many workflow starts (and signals) in flight.
    enrollment_start_concurrency: int = Field(default=32, ge=1, le=1000)
    enrollment_signal_concurrency: int = Field(default=32, ge=1, le=1000)
    # A start that fails on a transient Temporal error is tried this often in all, waiting
    # backoff, 2 x backoff, ... between tries (the client's own retries come on top).
    enrollment_start_attempts: int = Field(default=3, ge=1, le=20)
    enrollment_start_backoff_seconds: float = Field(default=0.5, ge=0, le=60)
    # Parsed flow versions kept in memory per process (versions never change once written).
    flow_definition_cache_size: int = Field(default=256, ge=0, le=100_000)
    # The time-skipping test server does not know custom search attributes.
    temporal_search_attributes: bool = True
    # Keep NurtureStep and NurtureStatus current in visibility too: one upsert (one billable
    # action) each time an enrollment comes to rest. Off, the enrollments table is the index of
    # steps and statuses, and visibility holds the flow, version, contact and pause.
    temporal_step_search_attributes: bool = False

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # uvicorn worker processes of the API (`nurture stack`, the compose file). With more than one,
    # set rate_limit_redis_url so the rate limits count across them (else each counts its own).
    api_workers: int = Field(default=1, ge=1, le=64)

    # --- the event inbox (docs/event-ingest.md) ---
    # POST /events answers once the event is routed (with `enrolled`, `signalled`) unless the request
    # says ?wait=false; false here turns the default around (a tracker posting at volume).
    events_wait_by_default: bool = True
    # A waiting POST /events answers 503 (and keeps nothing) when its event is not routed by then.
    event_wait_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    # The router (one at a time per database) takes up to event_route_batch pending events at once
    # and tells up to event_route_concurrency contacts at once.
    event_route_batch: int = Field(default=500, ge=1, le=100_000)
    event_route_concurrency: int = Field(default=64, ge=1, le=10_000)
    # Each API process also routes what is pending this often: events whose accepting process
    # died before routing them, or that Temporal was away for.
    event_sweep_interval_seconds: float = Field(default=5.0, gt=0, le=3_600)
    # Events in one POST /events/batch (413 past it; the body also counts against max_body_bytes).
    event_batch_max: int = Field(default=1_000, ge=1, le=100_000)

    email_provider: Literal["outbox", "smtp", "ses", "sendgrid", "postmark", "mailgun"] = "outbox"
    email_from: str = "Nurture <marketing@example.com>"
    smtp: SmtpSettings = SmtpSettings()
    # The providers' HTTP APIs (docs/email-providers.md): NURTURE_SES__REGION, NURTURE_SENDGRID__API_KEY ...
    ses: SesSettings = SesSettings()
    sendgrid: SendgridSettings = SendgridSettings()
    postmark: PostmarkSettings = PostmarkSettings()
    mailgun: MailgunSettings = MailgunSettings()

    sms_provider: Literal["outbox"] = "outbox"

    # Send governance. Quiet hours are local to the contact ("21:00" to "08:00"); unset = none.
    quiet_hours_start: str | None = None
    quiet_hours_end: str | None = None
    holidays: list[date] = Field(default_factory=list, description="Local dates on which nothing is sent.")
    # At most N marketing messages per contact per rolling window, across all flows; 0 = no cap.
    frequency_cap: int = 0
    frequency_cap_window_hours: int = Field(default=168, ge=1, le=MAX_DURATION_DAYS * 24)
    # The longest sales pause a rep may set.
    max_pause_days: int = Field(default=90, ge=1, le=MAX_DURATION_DAYS)

    # Webhook steps sign their body with this secret (header X-Nurture-Signature).
    # The three secrets (this one, tracking_secret, email_webhook_secret) have no default: a process
    # takes each from the environment, else from <data_dir>/secrets.json (which `nurture stack`
    # writes), and refuses to start while one it uses is unset or forgeable
    # (nurture/deployment_secrets.py, docs/running.md).
    webhook_secret: str | None = None
    webhook_timeout_seconds: float = 10.0
    # Refuse loopback, private and link-local targets unless explicitly allowed (SSRF guard).
    webhook_allow_private_networks: bool = False

    # Templates render in a small pool of processes (docs/flows.md, "The render budget"): a render past its time is
    # killed; each rendered part (subject, HTML, text, webhook body) holds at most max_output_kb;
    # a render process gets at most memory_mb of address space (0: no cap).
    template_render_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    template_max_output_kb: int = Field(default=256, ge=1, le=10240)
    template_render_processes: int = Field(default=2, ge=1, le=64)
    template_render_memory_mb: int = Field(default=512, ge=0)

    # Date waits on a date-only property go out at this local time when the flow names none.
    default_send_time: str = "09:00"

    # The shipped playbooks (docs/playbooks.md); the repository's flows/ directory when unset.
    playbooks_dir: Path | None = None

    # Date and inactivity triggers are checked by a Temporal Schedule this often (docs/triggers.md).
    trigger_scan_interval: Duration = Field(default=timedelta(hours=1), ge=timedelta(minutes=1))

    # --- observability (docs/observability.md) ---
    # Tracking links and the open pixel point here; tokens are signed with tracking_secret.
    public_base_url: str = "http://127.0.0.1:8000"
    tracking_enabled: bool = True
    tracking_secret: str | None = None
    tracking_token_days: int = Field(default=365, ge=1, le=MAX_DURATION_DAYS)
    # Consent links (docs/consent.md), signed with tracking_secret: one-click unsubscribe in every
    # marketing email, and the double opt-in confirmation link ({{ optin_url }}).
    unsubscribe_token_days: int = Field(default=365, ge=1, le=MAX_DURATION_DAYS)
    optin_token_days: int = Field(default=30, ge=1, le=MAX_DURATION_DAYS)
    # Also offered in List-Unsubscribe as a mailto: address when set (e.g. unsubscribe@example.com).
    unsubscribe_mailto: str | None = None
    # Provider webhooks (POST /webhooks/email/{provider}) are signed with this secret.
    email_webhook_secret: str | None = None
    email_webhook_tolerance_seconds: int = Field(default=300, ge=1)
    # Opens counted apart as bot/prefetch: a known scanner within this many seconds of the
    # send, or anyone within prefetch seconds of delivery.
    scanner_open_seconds: float = 60.0
    prefetch_open_seconds: float = 2.0
    scanner_user_agents: list[str] = [
        "barracuda", "mimecast", "proofpoint", "messagelabs", "symantec", "trendmicro", "forcepoint",
        "sophos", "fortiguard", "ironport", "safelinks", "python-requests", "curl/", "wget/", "bot", "spider",
    ]
    # A flow is flagged in its stats (and logged) once a rate passes its threshold over at
    # least anomaly_min_sample sends.
    anomaly_send_failure_rate: float = Field(default=0.05, ge=0, le=1)
    anomaly_bounce_rate: float = Field(default=0.05, ge=0, le=1)
    anomaly_unsubscribe_rate: float = Field(default=0.02, ge=0, le=1)
    anomaly_min_sample: int = Field(default=20, ge=1)
    # The worker serves Prometheus metrics on this port (0: off); the API serves GET /metrics.
    worker_metrics_port: int = Field(default=0, ge=0, le=65535)

    # --- bounded input (docs/api.md, "Limits") ---
    # A larger request body is refused with 413, whether it declares its length or streams.
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # JSON bodies, YAML flows and the values stored from them nest at most this deep (422).
    max_nesting_depth: int = Field(default=32, ge=8, le=MAX_NESTING_CEILING)
    # A flow: at most this many steps, characters per string, and values repeated by YAML aliases.
    max_flow_steps: int = Field(default=500, ge=1, le=100_000)
    max_flow_string_length: int = Field(default=10_000, ge=100)
    max_yaml_alias_values: int = Field(default=1_000, ge=0)
    # The longest delay, wait, timeout or date offset a flow may hold (every duration is at most
    # 36500 days whatever this says).
    max_duration_days: int = Field(default=3_650, ge=1, le=MAX_DURATION_DAYS)

    # --- contact imports (POST /contacts/import, docs/api.md "Importing contacts") ---
    # The body is read as it streams in; it may be larger than max_body_bytes, up to this (413).
    import_max_bytes: int = Field(default=104_857_600, ge=1024)
    # Data rows in one file (413 past it); the rows before stay imported.
    import_max_rows: int = Field(default=1_000_000, ge=1)
    # One CSV row or JSON line, in bytes, and the columns (keys) it may have; a longer or wider
    # row is reported and skipped (a CSV header past either refuses the file, 422).
    import_max_row_bytes: int = Field(default=65_536, ge=256, le=16_777_216)
    import_max_columns: int = Field(default=500, ge=2, le=10_000)
    # Rows written per transaction, as one statement (at most 2000: SQLite binds at most 32766 values).
    import_chunk_rows: int = Field(default=500, ge=1, le=2_000)
    # Row problems listed in the answer; past it the answer says `truncated` (all are counted).
    import_max_errors: int = Field(default=1_000, ge=0, le=100_000)
    # A client that sends nothing for this long is cut off (408); the rows before stay imported.
    import_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3_600)

    # Every API call but health, docs, tracking links and signed provider webhooks needs a key.
    auth_required: bool = True

    # --- the console at /app (docs/console.md) ---
    # A sign-in lasts this long; signing out ends it at once.
    session_lifetime_hours: float = Field(default=12.0, gt=0, le=24 * 90)
    # Send the session cookie over HTTPS only; turn on wherever the console is served over HTTPS.
    session_cookie_secure: bool = False
    # Console users' passwords have at least this many characters.
    user_password_min_length: int = Field(default=10, ge=8, le=128)
    # Rows a console list shows per page (contacts, enrollments behind a count).
    console_page_size: int = Field(default=50, ge=5, le=500)

    # --- abuse limits (docs/api.md, "Rate limits") ---
    # Budgets in the `limits` notation: "600/minute", several with ";" ("20/second;600/minute").
    # Over budget the API answers 429 with Retry-After and names the setting.
    rate_limit_enabled: bool = True
    # Authenticated calls per API key (a site tracker posting events is one key).
    rate_limit_per_key: str = "600/minute"
    # Calls to the API (not the public links below) per client address, whatever the key.
    rate_limit_per_client: str = "1200/minute"
    # Wrong or revoked keys per client address; once spent, that client cannot authenticate
    # until the window moves on, so key guessing slows down at once.
    rate_limit_failed_auth: str = "10/minute"
    # Tracking links, consent links, provider webhooks, health and metrics, per client address.
    # Mail clients and link scanners hit these (an image proxy fetches many opens): generous.
    rate_limit_public: str = "6000/minute"
    rate_limit_strategy: Literal["sliding-window-counter", "moving-window", "fixed-window"] = "sliding-window-counter"
    # redis://host:port/db: counters shared by every API process and replica. Unset: in process.
    # Should Redis fail, each process falls back to its own counters until it answers again.
    rate_limit_redis_url: str | None = None
    rate_limit_key_prefix: str = "nurture-rate"
    rate_limit_redis_timeout_seconds: float = Field(default=0.5, gt=0)
    # Peers (addresses or networks, e.g. ["10.0.0.0/8"]) whose X-Forwarded-For names the client.
    # Empty: the connecting address is the client, whatever the header says.
    trusted_proxies: list[IPvAnyNetwork] = Field(default_factory=list)

    @field_validator("rate_limit_per_key", "rate_limit_per_client", "rate_limit_failed_auth", "rate_limit_public")
    @classmethod
    def _rate_limit_parses(cls, value: str) -> str:
        try:
            limits.parse_many(value)
        except ValueError as exc:
            raise ValueError(f'not a rate limit such as "600/minute" or "20/second;600/minute": {exc}') from None
        return value

    # --- CRM sync (docs/crm.md) ---
    # "none": the service's own contact store only. "hubspot": two-way sync through HubSpot's client.
    crm_provider: Literal["none", "hubspot", "salesforce"] = "none"
    # A HubSpot private app's access token (scopes in docs/crm.md).
    crm_hubspot_token: str | None = None
    # HubSpot's API host; tests point HubSpot's client at a local emulator through it.
    crm_hubspot_base_url: str = "https://api.hubapi.com"
    # HubSpot's search answers at most this many results per query; the sync searches again from the
    # newest change it saw (HubSpot's documented cap; tests lower it on the emulator).
    crm_hubspot_search_cap: int = Field(default=10_000, ge=200, le=10_000)
    # Idempotency keys looked up in one search for tasks and notes that may already exist (a filter
    # group each: HubSpot's search takes at most 5 filter groups).
    crm_hubspot_search_keys: int = Field(default=5, ge=1, le=5)
    # The app's client secret: HubSpot signs webhooks with it (X-HubSpot-Signature-v3).
    crm_hubspot_app_secret: str | None = None
    # The app's id: changes HubSpot reports as made by this app are our own writes (never applied back).
    crm_hubspot_app_id: str | None = None
    # Salesforce: a connected app (docs/crm.md). How the connector logs in: the app's OAuth 2.0 client
    # credentials, the JWT bearer flow (the app's certificate, a pre-authorized user), or a user's
    # username and password (+ security token) through the SOAP login call.
    crm_salesforce_auth: Literal["client_credentials", "jwt", "password"] = "client_credentials"
    crm_salesforce_login_url: str = "https://login.salesforce.com"
    crm_salesforce_client_id: str | None = None
    crm_salesforce_client_secret: str | None = None
    # The Salesforce user the JWT's `sub` names, or who logs in with a password.
    crm_salesforce_username: str | None = None
    crm_salesforce_password: SecretStr | None = None
    crm_salesforce_security_token: SecretStr | None = None
    # The JWT bearer flow's signing key (PEM), given inline or as a file; the connected app holds its certificate.
    crm_salesforce_private_key: SecretStr | None = None
    crm_salesforce_private_key_file: Path | None = None
    crm_salesforce_api_version: str = "59.0"
    # A CA bundle to trust for Salesforce's hosts (a corporate proxy; the tests' local emulator). Unset: the system's.
    crm_salesforce_ca_bundle: Path | None = None
    # The Contact's External ID field that holds the email: contacts created here are upserted by it.
    crm_salesforce_contact_external_id: str = "Nurture_Email__c"
    # The Task's External ID field that holds a write's idempotency key.
    crm_salesforce_task_external_id: str = "Nurture_Key__c"
    # Records per sObject Collections call for Salesforce writes (Salesforce takes at most 200).
    crm_salesforce_collection_size: int = Field(default=200, ge=1, le=200)
    # The share of the org's daily API requests (Sforce-Limit-Info) past which the sync stops calling
    # Salesforce, as if it were down, leaving the rest to the org's other integrations.
    crm_salesforce_max_api_usage_percent: float = Field(default=90.0, gt=0, le=100)
    # Webhooks older or newer than this (X-HubSpot-Request-Timestamp) are refused; HubSpot's window is 5 minutes.
    crm_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    # The YAML mapping of fields, owners and stages; the defaults of nurture/crm/mapping.py when unset.
    crm_mapping_file: Path | None = None
    # Records per batch call (HubSpot takes at most 100) and calls per 10 seconds per process
    # (a private app's burst limit is 100 or 190 by subscription).
    crm_batch_size: int = Field(default=100, ge=1, le=100)
    crm_burst_per_10s: int = Field(default=100, ge=1, le=1000)
    crm_request_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # The incremental sync runs this often (a Temporal Schedule), and reads pages of crm_batch_size.
    crm_sync_interval: Duration = Field(default=timedelta(minutes=5), ge=timedelta(seconds=10))
    # Queued CRM writes read and pushed together (the push goes on, batch after batch, until none is
    # left); a CRM that says Retry-After longer than this is asked again after this many seconds at most.
    crm_write_batch: int = Field(default=200, ge=1, le=1000)
    crm_max_retry_after_seconds: float = Field(default=600.0, ge=1, le=86_400)

    # --- durability (docs/running.md) ---
    # Long activities heartbeat; a worker that dies is noticed after this long and its activities
    # are retried on another worker (instead of after their start-to-close timeout).
    activity_heartbeat_timeout_seconds: float = Field(default=10.0, ge=1, le=600)
    # The send activity may take the SMTP timeout plus this for rendering and the database.
    send_activity_margin_seconds: float = Field(default=30.0, ge=5, le=600)
    # What one worker process polls: "all" (the enrollments' queue and the send queue), or only one
    # of them, to run sends in processes of their own (their heartbeats never wait behind workflow tasks).
    worker_queues: Literal["all", "enrollments", "sends"] = "all"
    # On SIGTERM the worker stops polling and lets running activities finish for this long. Keep
    # it below the supervisor's own grace (compose stop_grace_period 30 s, `nurture stack` 15 s).
    worker_graceful_shutdown_seconds: float = Field(default=10.0, ge=0, le=3600)
    # What one worker runs at once (Temporal's slots). Each running activity may hold a database
    # connection, so the worker's pool has one per slot unless worker_database_pool_size says otherwise.
    # Workflow tasks in progress at once: beyond what the process gets through within the workflow
    # task timeout (10 s), a burst of new enrollments timed out and was run again from the start.
    worker_max_concurrent_workflow_tasks: int = Field(default=20, ge=2, le=1000)
    worker_max_concurrent_activities: int = Field(default=50, ge=1, le=1000)
    worker_max_concurrent_local_activities: int = Field(default=20, ge=1, le=1000)
    # Workflows one worker keeps in memory between their tasks (the SDK's default is 1,000 too,
    # named here so it can be raised): a sleeping enrollment pushed out of the cache replays its
    # whole history when it wakes, so keep it above the enrollments due at about the same time.
    worker_max_cached_workflows: int = Field(default=1000, ge=0, le=1_000_000)
    worker_database_pool_size: int | None = Field(default=None, ge=1, le=1000)
    # The worker process's event loop (where activities, local activities and the SDK's task
    # handling run; workflow code runs on the SDK's own deterministic loop either way): uvloop
    # where it is installed (not on Windows), else asyncio's own.
    worker_event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    log_level: str = "INFO"
    log_json: bool = False

    @property
    def activity_heartbeat_timeout(self) -> timedelta:
        return timedelta(seconds=self.activity_heartbeat_timeout_seconds)

    @property
    def provider_api(self) -> ProviderApiSettings | None:
        """The chosen provider's HTTP API settings (None for the outbox and SMTP)."""
        return getattr(self, self.email_provider) if self.email_provider in PROVIDER_APIS else None

    @property
    def send_activity_timeout(self) -> timedelta:
        api = self.provider_api
        timeout = api.timeout_seconds if api is not None else self.smtp.timeout_seconds
        return timedelta(seconds=timeout + self.send_activity_margin_seconds)

    @property
    def send_rate_per_second(self) -> float | None:
        """The chosen provider's send rate across every worker; None: no limit."""
        api = self.provider_api
        return api.max_sends_per_second if api is not None and api.max_sends_per_second else None

    @property
    def send_task_queue(self) -> str:
        """Every worker polls it, at the provider's rate. Enrollments started while the provider
        has a rate send through it (the name carries no provider: changing either strands nothing)."""
        return f"{self.temporal_task_queue}-sends"

    @property
    def worker_database_connections(self) -> int:
        """The worker's pool: one connection per activity and local activity slot, so no activity waits
        for one (a wait past the heartbeat timeout had the send retried)."""
        return self.worker_database_pool_size or (
            self.worker_max_concurrent_activities + self.worker_max_concurrent_local_activities
        )

    @property
    def resolved_database_url(self) -> str:
        return async_database_url(self.database_url or f"sqlite:///{self.data_dir / 'nurture.db'}")

    def flow_limits(self) -> FlowLimits:
        return FlowLimits.model_validate({name: getattr(self, name) for name in FlowLimits.model_fields})

    @property
    def outbox_dir(self) -> Path:
        return self.data_dir / "outbox"

    @property
    def sms_outbox_dir(self) -> Path:
        return self.data_dir / "sms-outbox"


PROVIDER_APIS = ("ses", "sendgrid", "postmark", "mailgun")


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
