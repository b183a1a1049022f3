"""The data model: contacts, events, templates, versioned flows, enrollments, messages."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Stores UTC and always hands back an aware datetime (SQLite keeps no zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(nullable: bool = True, index: bool = False, default=None) -> Any:
    kwargs: dict[str, Any] = {"sa_column": sa.Column(UTCDateTime(), nullable=nullable, index=index)}
    if default is not None:
        kwargs["default_factory"] = default
    else:
        kwargs["default"] = None
    return Field(**kwargs)


def _json() -> Any:
    return Field(default_factory=dict, sa_column=sa.Column(sa.JSON, nullable=False))


def _json_list() -> Any:
    return Field(default_factory=list, sa_column=sa.Column(sa.JSON, nullable=False))


class SubscriptionStatus(StrEnum):
    subscribed = "subscribed"
    unsubscribed = "unsubscribed"
    bounced = "bounced"


class Contact(SQLModel, table=True):
    __tablename__ = "contacts"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), unique=True, nullable=False))
    name: str | None = None
    company: str | None = None
    timezone: str | None = None
    lifecycle_stage: str | None = Field(default=None, index=True)
    owner: str | None = Field(default=None, index=True)
    phone: str | None = None
    properties: dict[str, Any] = _json()
    lists: list[str] = _json_list()
    tags: list[str] = _json_list()
    subscription_status: str = Field(default=SubscriptionStatus.subscribed)
    paused_until: datetime | None = _when()
    pause_reason: str | None = None
    paused_by: str | None = None
    last_activity_at: datetime | None = _when()
    # The contact's record id in the connected CRM (docs/crm.md); None until synced.
    crm_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True, index=True))
    created_at: datetime = _when(nullable=False, default=utcnow)
    updated_at: datetime = _when(nullable=False, default=utcnow)


class Event(SQLModel, table=True):
    __tablename__ = "events"

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(sa_column=sa.Column(sa.String(200), unique=True, nullable=False))
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    type: str = Field(index=True)
    properties: dict[str, Any] = _json()
    occurred_at: datetime = _when(nullable=False, default=utcnow)
    received_at: datetime = _when(nullable=False, default=utcnow)
    # The inbox (nurture/event_inbox.py): POST /events stores an event "pending" and answers; a router
    # then routes the contact's pending events in order and marks them "routed" with what it did
    # (``routing``: enrollments started and told). None: stored by a path that acted on it at once.
    inbox_status: str | None = Field(default=None, sa_column=sa.Column(sa.String(16), nullable=True, index=True))
    routing: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))


class Template(SQLModel, table=True):
    __tablename__ = "templates"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(sa_column=sa.Column(sa.String(100), unique=True, nullable=False))
    name: str | None = None
    subject: str
    html: str
    text: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)
    updated_at: datetime = _when(nullable=False, default=utcnow)


class FlowStatus(StrEnum):
    draft = "draft"
    active = "active"
    inactive = "inactive"


class Flow(SQLModel, table=True):
    __tablename__ = "flows"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    status: str = Field(default=FlowStatus.draft, index=True)
    latest_version: int = 1
    active_version: int | None = None
    # Copied from the active version so event ingestion finds candidate flows by index.
    trigger_event: str | None = Field(default=None, index=True)
    created_at: datetime = _when(nullable=False, default=utcnow)
    updated_at: datetime = _when(nullable=False, default=utcnow)


class FlowVersion(SQLModel, table=True):
    """Immutable: a new edit is a new version; enrollments keep the one they started on."""

    __tablename__ = "flow_versions"
    __table_args__ = (sa.UniqueConstraint("flow_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    flow_id: int = Field(foreign_key="flows.id", index=True)
    version: int
    definition: dict[str, Any] = _json()
    created_at: datetime = _when(nullable=False, default=utcnow)


class EnrollmentStatus(StrEnum):
    active = "active"
    completed = "completed"
    exited = "exited"
    failed = "failed"  # the workflow failed on an error; exit_reason says which


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    # A re-enrollment is a new row (sequence + 1) and a new run of the same workflow id.
    __table_args__ = (
        sa.UniqueConstraint("flow_id", "contact_id", "sequence"),
        sa.UniqueConstraint("workflow_id", "run_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    flow_id: int = Field(foreign_key="flows.id", index=True)
    flow_version: int
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    sequence: int = 1
    workflow_id: str = Field(sa_column=sa.Column(sa.String(200), nullable=False, index=True))
    # The first run id of the workflow's run chain: which enrollment of the workflow id this row is.
    run_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(100), nullable=True))
    status: str = Field(default=EnrollmentStatus.active, index=True)
    current_step: str | None = None
    paused: bool = False
    exit_reason: str | None = None
    # The number of the last progress report the workflow applied (activities/progress.py).
    progress_seq: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    started_at: datetime = _when(nullable=False, default=utcnow)
    ended_at: datetime | None = _when()
    updated_at: datetime = _when(nullable=False, default=utcnow)


class MessageStatus(StrEnum):
    reserved = "reserved"
    sending = "sending"
    sent = "sent"
    failed = "failed"
    refused = "refused"


class Message(SQLModel, table=True):
    """The send log; with the outbox provider it is also where the mail is kept."""

    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    workflow_id: str | None = Field(default=None, index=True)
    flow_id: int | None = Field(default=None, index=True)
    flow_version: int | None = None
    step_id: str | None = None
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    to_email: str
    template_key: str
    # "marketing" counts toward caps and statistics; "internal" is a note to the sales owner.
    kind: str = Field(default="marketing", index=True)
    variant: str | None = None
    subject: str = ""
    html: str = ""
    text: str = ""
    provider: str
    provider_message_id: str | None = None
    status: str = Field(default=MessageStatus.sending, index=True)
    error: str | None = None
    attempts: int = 0
    scheduled_at: datetime | None = _when()
    sent_at: datetime | None = _when()
    opened_at: datetime | None = _when()
    clicked_at: datetime | None = _when()
    # Provider webhooks (POST /webhooks/email/{provider}); `status` stays the send outcome.
    delivered_at: datetime | None = _when()
    bounced_at: datetime | None = _when()
    bounce_type: str | None = None
    complained_at: datetime | None = _when()
    created_at: datetime = _when(nullable=False, default=utcnow)


class StepVisit(SQLModel, table=True):
    """An enrollment entering a step, written by record_progress: per-step entry counts
    without reading Temporal histories (too slow for aggregates)."""

    __tablename__ = "step_visits"

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: int = Field(foreign_key="enrollments.id", index=True)
    flow_id: int = Field(index=True)
    flow_version: int
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    step_id: str
    # The contact's stage on entering: "moved to the next stage" is measured from it.
    lifecycle_stage: str | None = None
    entered_at: datetime = _when(nullable=False, default=utcnow)


class SmsMessage(SQLModel, table=True):
    """The SMS send log; with the outbox provider it is also where the text is kept."""

    __tablename__ = "sms_messages"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    workflow_id: str | None = Field(default=None, index=True)
    flow_id: int | None = Field(default=None, index=True)
    step_id: str | None = None
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    to_phone: str
    text: str
    provider: str
    status: str = Field(default=MessageStatus.sending)
    error: str | None = None
    scheduled_at: datetime | None = _when()
    sent_at: datetime | None = _when()
    created_at: datetime = _when(nullable=False, default=utcnow)


class Task(SQLModel, table=True):
    """A task or ticket for a sales owner or a queue, created by a flow step."""

    __tablename__ = "tasks"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    kind: str = "task"
    title: str
    description: str = ""
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    assignee: str = Field(index=True)
    priority: str = "normal"
    status: str = Field(default="open", index=True)
    due_at: datetime | None = _when()
    workflow_id: str | None = None
    flow_id: int | None = None
    step_id: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)


class WebhookCall(SQLModel, table=True):
    """What a webhook step sent and what came back: the receipt of an external write."""

    __tablename__ = "webhook_calls"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    workflow_id: str | None = Field(default=None, index=True)
    step_id: str | None = None
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    url: str
    status_code: int | None = None
    attempts: int = 0
    error: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)
    completed_at: datetime | None = _when()


class WebhookToken(SQLModel, table=True):
    """A provider webhook's one-time token (Mailgun's ``signature.token``), kept so a captured
    request cannot be played again; rows older than the signature tolerance may be deleted."""

    __tablename__ = "webhook_tokens"

    provider: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    token: str = Field(sa_column=sa.Column(sa.String(200), primary_key=True))
    seen_at: datetime = _when(nullable=False, default=utcnow, index=True)


class PauseLog(SQLModel, table=True):
    """The audit trail of sales pauses: who paused or resumed whom, until when and why."""

    __tablename__ = "pause_log"

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    action: str  # pause, extend, resume
    until: datetime | None = _when()
    reason: str | None = None
    actor: str = Field(index=True)  # the rep the pause is for (a handoff's workflow when the engine paused)
    # Who asked: the API key's name and id; None when the API ran without keys or the engine paused.
    requested_by: str | None = None
    api_key_id: int | None = None
    # The console user who asked (requested_by is then their email).
    user_id: int | None = None
    # True: an API key or a signed-in user asked; False: the API ran without keys, so `actor` is only what the body said;
    # None: the engine itself (a handoff's quiet period).
    authenticated: bool | None = None
    flow_ids: list[int] = _json_list()
    enrollment_ids: list[int] = _json_list()
    at: datetime = _when(nullable=False, default=utcnow)


class ApiKey(SQLModel, table=True):
    """An API key: only its hash is stored; the key itself is shown once, when created."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    role: str = Field(index=True)  # admin, marketer, sales, read_only
    owner: str | None = Field(default=None, description="For sales keys: the rep whose contacts it may see.")
    prefix: str = Field(sa_column=sa.Column(sa.String(16), unique=True, nullable=False))
    secret_hash: str
    created_at: datetime = _when(nullable=False, default=utcnow)
    last_used_at: datetime | None = _when()
    revoked_at: datetime | None = _when()


class CrmWriteStatus(StrEnum):
    queued = "queued"
    done = "done"
    failed = "failed"  # the CRM refused it (not an outage); last_error says why


class CrmWrite(SQLModel, table=True):
    """A write to the CRM, queued in the transaction that decided it and pushed by the CRM sync
    (activities/crm.py): held here while the CRM is down, written once per idempotency key."""

    __tablename__ = "crm_writes"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(sa_column=sa.Column(sa.String(300), unique=True, nullable=False))
    provider: str
    kind: str  # contact (mapped fields), task, note
    contact_id: int = Field(foreign_key="contacts.id", index=True)
    payload: dict[str, Any] = _json()
    status: str = Field(default=CrmWriteStatus.queued, index=True)
    attempts: int = 0
    last_error: str | None = None
    crm_record_id: str | None = None
    workflow_id: str | None = None
    created_at: datetime = _when(nullable=False, default=utcnow)
    done_at: datetime | None = _when()


class CrmOwner(SQLModel, table=True):
    """A CRM owner (HubSpot owner, Salesforce User) and the rep id it is, imported by the CRM sync:
    fixed once imported, so a rep's sales key keeps matching their contacts whatever the CRM later says."""

    __tablename__ = "crm_owners"

    provider: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    crm_owner_id: str = Field(sa_column=sa.Column(sa.String(100), primary_key=True))
    email: str | None = None
    rep: str
    imported_at: datetime = _when(nullable=False, default=utcnow)


class CrmSyncState(SQLModel, table=True):
    """Where a connector's incremental sync stands: one row per provider."""

    __tablename__ = "crm_sync_state"

    provider: str = Field(sa_column=sa.Column(sa.String(40), primary_key=True))
    # Records modified at or after this were not all read yet (the CRM's last-modified time).
    cursor: datetime | None = _when()
    # The same for deals (opportunities), where the CRM does not push their changes.
    deal_cursor: datetime | None = _when()
    last_run_at: datetime | None = _when()
    last_success_at: datetime | None = _when()
    last_error: str | None = None
    contacts_read: int = 0
    contacts_changed: int = 0
    # The last event (by id) whose engagement was logged on the CRM timeline.
    engagement_cursor: int = 0
    # The last message (by id) whose send was logged there; one still being sent holds it back.
    send_cursor: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # Last webhook received, and the full resync asked for (cleared when it finished).
    last_webhook_at: datetime | None = _when()
    resync_requested_at: datetime | None = _when()
    # The last finished run: contacts read, and seconds from its first page asked to its end.
    last_sync_contacts: int | None = None
    last_sync_seconds: float | None = None


class User(SQLModel, table=True):
    """A person who signs in to the console: the same roles as API keys, a password hashed with Argon2."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(sa_column=sa.Column(sa.String(320), unique=True, nullable=False))
    name: str | None = None
    role: str = Field(index=True)  # admin, marketer, sales, read_only
    owner: str | None = Field(default=None, description="For sales users: their rep id (the contacts' owner).")
    password_hash: str
    created_at: datetime = _when(nullable=False, default=utcnow)
    last_sign_in_at: datetime | None = _when()
    disabled_at: datetime | None = _when()


class UserSession(SQLModel, table=True):
    """A signed-in browser: the cookie holds a random token, only its hash is stored, so a
    session ends for good when its row goes (sign-out) or its time is up."""

    __tablename__ = "user_sessions"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(sa_column=sa.Column(sa.String(64), unique=True, nullable=False))
    user_id: int = Field(foreign_key="users.id", index=True)
    # Writes made with the cookie must echo this (header X-CSRF-Token, or the form field csrf_token).
    csrf_token: str
    created_at: datetime = _when(nullable=False, default=utcnow)
    expires_at: datetime = _when(nullable=False, index=True)


class AuditEntry(SQLModel, table=True):
    """Who changed a flow or a template, or created a user: the person or the key, and what."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    action: str = Field(index=True)  # e.g. flow.activated, flow.version_created, playbook.installed
    flow_id: int | None = Field(default=None, index=True)
    subject: str | None = None  # what else it names: a version, a template key, a user's email
    actor: str  # the user's email or the API key's name; "api" when the API ran without keys
    user_id: int | None = None
    api_key_id: int | None = None
    detail: dict[str, Any] = _json()
    at: datetime = _when(nullable=False, default=utcnow)
