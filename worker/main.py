"""The worker: runs enrollment workflows and their activities on the task queue."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable
from datetime import timedelta

from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.worker import Worker

from activities import build_activities, build_send_activities
from activities.heartbeat import KeepAliveInterceptor
from activities.email.providers import EmailProvider, provider_from_settings
from nurture.db import Database, worker_database
from nurture.deployment_secrets import WORKER_SECRETS, ForgeableSecret, require_secrets, with_stored_secrets
from nurture.logging import configure_logging, get_logger
from nurture.metrics import serve_worker_metrics
from nurture.migrating import SchemaNotCurrent, require_current_schema
from nurture.settings import Settings, get_settings
from nurture.temporal import connect
from nurture.crm.schedule import ensure_crm_sync_schedule
from nurture.enrolling import TemporalUnavailable
from nurture.trigger_schedule import ensure_trigger_scan_schedule
from worker.sandbox import SandboxRunner, compile_workflows_once
from workflows import WORKFLOWS


def build_worker(client: Client, db: Database, provider: EmailProvider, settings: Settings, **options) -> Worker:
    # Stopping lets running activities finish for this long before they are cancelled.
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=settings.worker_graceful_shutdown_seconds))
    options["interceptors"] = [*options.get("interceptors", []), KeepAliveInterceptor()]
    if "tuner" not in options:
        options.setdefault("max_concurrent_workflow_tasks", settings.worker_max_concurrent_workflow_tasks)
        options.setdefault("max_concurrent_activities", settings.worker_max_concurrent_activities)
        options.setdefault("max_concurrent_local_activities", settings.worker_max_concurrent_local_activities)
    options.setdefault("max_cached_workflows", settings.worker_max_cached_workflows)
    # The sandbox imports the workflow modules for every new run: compile them once, not each time.
    compile_workflows_once({workflow.__module__.partition(".")[0] for workflow in WORKFLOWS})
    # The SDK's sandbox, restrictions and isolation unchanged, entered less often (worker/sandbox.py).
    options.setdefault("workflow_runner", SandboxRunner())
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(db, provider, settings, client),
        **options,
    )


def build_send_worker(client: Client, db: Database, provider: EmailProvider, settings: Settings, **options) -> Worker:
    """The worker of the send task queue: only sends, at most the provider's rate per second across
    every worker (Temporal's task-queue rate limit, enforced by the server; every worker sets the
    same value). Runs in every worker process, also without a rate, so no send that was routed
    here while a rate was set waits for a poller after the setting changes."""
    options.setdefault("graceful_shutdown_timeout", timedelta(seconds=settings.worker_graceful_shutdown_seconds))
    options["interceptors"] = [*options.get("interceptors", []), KeepAliveInterceptor()]
    return Worker(
        client,
        task_queue=settings.send_task_queue,
        activities=build_send_activities(db, provider, settings),
        max_task_queue_activities_per_second=settings.send_rate_per_second,
        **options,
    )


def build_workers(client: Client, db: Database, provider: EmailProvider, settings: Settings) -> list[Worker]:
    """The workers of one process, as ``worker_queues`` says: both queues, or one of them."""
    workers = []
    if settings.worker_queues in ("all", "enrollments"):
        workers.append(build_worker(client, db, provider, settings))
    if settings.worker_queues in ("all", "sends"):
        workers.append(build_send_worker(client, db, provider, settings))
    return workers


async def run(settings: Settings) -> None:
    log = get_logger(component="worker")
    db = worker_database(settings.resolved_database_url, settings)
    # Never create tables here: workers starting together raced; `nurture migrate` upgrades.
    try:
        await require_current_schema(db)
    except SchemaNotCurrent as exc:
        log.error("worker_refused_to_start", reason=str(exc))
        await db.dispose()
        raise SystemExit(2) from exc
    client = await connect(settings)
    provider = provider_from_settings(settings)
    workers = build_workers(client, db, provider, settings)
    try:
        # Activation creates it too; this heals a schedule deleted by hand or a changed interval.
        await ensure_trigger_scan_schedule(client, settings)
    except RPCError as exc:
        log.warning("trigger_scan_schedule_unavailable", error=str(exc))
    try:
        await ensure_crm_sync_schedule(client, settings)
    except TemporalUnavailable as exc:
        log.warning("crm_sync_schedule_unavailable", error=str(exc))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The worker's own counters (activities, sends, latency); the API serves its own on GET /metrics.
    if serve_worker_metrics(settings.worker_metrics_port) is not None:
        log.info("worker_metrics", port=settings.worker_metrics_port, path="/metrics")
    log.info(
        "worker_started", task_queue=settings.temporal_task_queue, provider=settings.email_provider,
        send_task_queue=settings.send_task_queue, sends_per_second=settings.send_rate_per_second,
        queues=settings.worker_queues, event_loop=type(loop).__module__.partition(".")[0],
    )
    async with contextlib.AsyncExitStack() as running:
        for each in workers:
            await running.enter_async_context(each)
        await stop.wait()
        # Leaving the block stops polling at once, then waits for the activities in flight.
        log.info("worker_stopping", graceful_shutdown_seconds=settings.worker_graceful_shutdown_seconds)
    await db.dispose()
    log.info("worker_stopped")


def event_loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop unless the settings ask for asyncio's (or uvloop is not installed): the event
    loop's own work per activity and workflow task is a good part of the worker's CPU."""
    if settings.worker_event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            get_logger(component="worker").warning("uvloop_unavailable", using="asyncio")
        else:
            return uvloop.new_event_loop
    return None


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    try:
        settings = with_stored_secrets(settings)
        # Signing links and webhooks with a forgeable secret would let anyone forge them.
        require_secrets(settings, WORKER_SECRETS, "worker")
    except ForgeableSecret as exc:
        get_logger(component="worker").error("worker_refused_to_start", reason=str(exc))
        raise SystemExit(2) from exc
    with asyncio.Runner(loop_factory=event_loop_factory(settings)) as runner:
        runner.run(run(settings))
    # The Temporal client sits in reference cycles; freed during interpreter shutdown, its native
    # runtime can abort the process (PyGILState_Release). Free it while Python is still whole.
    gc.collect()
