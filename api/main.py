"""The FastAPI app. ``uvicorn api.main:app``; tests call ``create_app(settings, db=..., client=...)``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from temporalio.client import Client

from api.auth import authorize
from api.console import install_console
from api.errors import ERROR_RESPONSES, error_schemas, install_error_handlers
from api.rate_limits import install_rate_limits
from api.limits import BodyLimitMiddleware
from api.routers import (
    api_keys,
    bulk_enrollments,
    consent,
    contact_imports,
    contacts,
    crm,
    enrollments,
    events,
    flows,
    health,
    history,
    metrics,
    pauses,
    playbooks,
    provider_webhooks,
    simulations,
    stats,
    templates,
    tracking,
    users,
    visibility,
)
from api.state import TemporalConnection
from nurture.db import Database
from nurture.deployment_secrets import API_SECRETS, ForgeableSecret, require_secrets, with_stored_secrets
from nurture.provider_webhook_keys import require_webhook_keys, unconfigured
from nurture.enrolling import Enroller, TemporalUnavailable
from nurture.event_inbox import EventInbox
from nurture.flow import FlowDefinition
from nurture.logging import configure_logging, get_logger
from nurture.migrating import SchemaNotCurrent, require_current_schema
from nurture.settings import Settings, get_settings

DESCRIPTION = """
Email nurture flows on Temporal: one durable workflow per contact enrollment.

Bad input answers 422 in FastAPI's format, `{"detail": [{"loc", "msg", "type"}]}`; flow
problems add `path` (e.g. `steps[2].template`). 404/409/413/415/503 answer `{"detail": "..."}`;
503 means Temporal or the database is unreachable and nothing was changed. Bodies are bounded
in size (413) and nesting depth (422); see docs/api.md, "Limits".
"""


def create_app(
    settings: Settings | None = None, *, db: Database | None = None, client: Client | None = None
) -> FastAPI:
    """Build the app. A database or Temporal client passed in is used as is (and ready at once,
    lifespan or not); the ones not passed are created by the lifespan, never at import."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level, settings.log_json)
        log = get_logger(component="api")
        # Serving with a forgeable secret would let anyone forge links and provider reports.
        try:
            checked = with_stored_secrets(app.state.settings)
            require_secrets(checked, API_SECRETS, "API")
            # A guessable provider webhook key would let anyone suppress or unsubscribe any contact.
            require_webhook_keys(checked, "API")
        except ForgeableSecret as exc:
            log.error("api_refused_to_start", reason=str(exc))
            raise
        for problem in unconfigured(checked):
            # Sending works without it, but no bounce or complaint of the provider suppresses anyone.
            log.warning("email_webhook_not_configured", provider=checked.email_provider, problem=problem)
        app.state.settings = checked
        owned_db: Database | None = None
        if app.state.db is None:
            # No ping before each checkout: a round trip per request (a sixth of a POST /events). After a
            # database restart the request that meets a dropped connection fails once (503 or 500, the
            # client retries) and SQLAlchemy replaces every connection of the pool opened before it.
            owned_db = Database(settings.resolved_database_url, pool_pre_ping=False)
            # Never create tables here: replicas starting together raced; `nurture migrate` upgrades.
            try:
                await require_current_schema(owned_db)
            except SchemaNotCurrent as exc:
                log.error("api_refused_to_start", reason=str(exc))
                await owned_db.dispose()
                raise
            app.state.db = owned_db
        temporal: TemporalConnection = app.state.temporal
        if temporal.client is None:
            try:
                await temporal.get()
            except TemporalUnavailable:
                log.warning("api_started_without_temporal", address=settings.temporal_address)
        log.info("api_started", namespace=settings.temporal_namespace, task_queue=settings.temporal_task_queue)
        # Events stored but not routed (their process died first, or Temporal was away) are routed here.
        inbox = app.state.event_inbox = EventInbox(app.state.db, app.state.settings)

        async def enroller() -> Enroller:
            return Enroller(await temporal.get(), app.state.settings)

        sweeps = asyncio.create_task(inbox.run_sweeps(enroller))
        try:
            yield
        finally:
            sweeps.cancel()
            await asyncio.gather(sweeps, return_exceptions=True)
            await inbox.drain()
            if owned_db is not None:
                await owned_db.dispose()
                app.state.db = None

    app = FastAPI(
        title="Nurture",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        dependencies=[Depends(authorize)],
    )
    app.state.settings = settings
    app.state.db = db
    app.state.temporal = TemporalConnection(settings, client)
    app.state.event_inbox = None  # made with the database (lifespan) or by the first event (api.deps)

    install_error_handlers(app)
    # Starlette runs the middleware added last first: the rate limit refuses a flood before any
    # body is read.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_depth=settings.max_nesting_depth,
        own_limits={contact_imports.IMPORT_PATH: (settings.import_max_bytes, "import_max_bytes")},
    )
    install_rate_limits(app, settings)
    for module in (
        health, api_keys, contact_imports, contacts, pauses, templates, flows, events, enrollments, bulk_enrollments,
        history, visibility, stats, tracking, provider_webhooks, consent, metrics, simulations, playbooks, crm, users,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES)
    install_console(app)
    app.openapi = _openapi_with_flow_schema(app)  # type: ignore[method-assign]
    return app


def _openapi_with_flow_schema(app: FastAPI):
    """The flow endpoints read their body raw (JSON or YAML): add FlowDefinition's schema by hand."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        flow = FlowDefinition.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for name, part in flow.pop("$defs", {}).items():
            components.setdefault(name, part)
        components["FlowDefinition"] = flow
        for name, part in error_schemas().items():
            components.setdefault(name, part)
        app.openapi_schema = schema
        return schema

    return openapi


app = create_app()
