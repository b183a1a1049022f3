"""Prometheus metrics (prometheus-client, default registry).

The worker and the API are separate processes, each with its own counters: the
worker serves its metrics on ``worker_metrics_port`` (activities, sends, latency),
the API on ``GET /metrics`` (signals, enrollment starts, tracking hits, webhooks).
Signals and starts are counted by a Temporal client interceptor, so every client
built by ``nurture.temporal.connect`` (or passed through ``instrument_client``)
counts them in whichever process it lives.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from temporalio import activity
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    SignalWorkflowInput,
    StartWorkflowInput,
    StartWorkflowUpdateInput,
    WorkflowHandle,
    WorkflowUpdateHandle,
)
from temporalio.exceptions import ApplicationError

from nurture.contracts import ENROLLMENT_WORKFLOW, SendEmailResult

EMAIL_SENDS = Counter(
    "nurture_email_sends",
    "Marketing sends by outcome: sent, refused (unsubscribed or bounced contact), failed (refused by the "
    "provider or a broken template; a send that runs out of retries shows in the failures counter).",
    ["status"],
)
EMAIL_SEND_FAILURES = Counter(
    "nurture_email_send_failures",
    "Failed send attempts by error type; temporary ones are retried.",
    ["error"],
)
SIGNALS_SENT = Counter("nurture_signals_sent", "Signals sent to workflows, by signal name.", ["signal"])
UPDATES_SENT = Counter("nurture_updates_sent", "Updates sent to workflows, by update name.", ["update"])
ENROLLMENT_STARTS = Counter("nurture_enrollment_starts", "Enrollment workflow start requests.")
ACTIVITY_SECONDS = Histogram(
    "nurture_activity_seconds",
    "Activity run time by activity and outcome (ok, error).",
    ["activity", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
TRACKING_HITS = Counter(
    "nurture_tracking_hits", "Open pixel and click hits by kind and whether they looked like a bot.", ["kind", "bot"]
)
TRACKING_UNRECORDED = Counter(
    "nurture_tracking_unrecorded",
    "Tracking hits not recorded, by reason (invalid, expired, unknown_message, unknown_link, temporal_unavailable).",
    ["reason"],
)
EMAIL_WEBHOOK_EVENTS = Counter(
    "nurture_email_webhook_events", "Provider webhook events recorded, by provider and type.", ["provider", "type"]
)
CRM_WRITES = Counter(
    "nurture_crm_writes", "Writes pushed to the CRM by outcome: done, retried (CRM down or rate limited), failed.",
    ["provider", "outcome"],
)
CRM_SYNC_CONTACTS = Counter(
    "nurture_crm_sync_contacts", "CRM contacts read by the reconciliation sync, and those that changed a contact.",
    ["provider", "kind"],
)
CRM_WEBHOOK_EVENTS = Counter(
    "nurture_crm_webhook_events", "CRM webhook events by type and outcome (applied, ignored, echo, refused).",
    ["provider", "type", "outcome"],
)
CRM_INBOUND_SECONDS = Histogram(
    "nurture_crm_inbound_seconds", "From a CRM webhook received to its enrollments told (seconds).", ["provider"],
)
CRM_LAST_SYNC_CONTACTS = Gauge(
    "nurture_crm_last_sync_contacts", "CRM contacts read by the last finished reconciliation run.", ["provider"],
)
CRM_LAST_SYNC_SECONDS = Gauge(
    "nurture_crm_last_sync_seconds", "How long the last finished reconciliation run read the CRM (seconds).", ["provider"],
)
CRM_LAST_SYNC_RATE = Gauge(
    "nurture_crm_last_sync_contacts_per_second", "Contacts read per second by the last finished reconciliation run.",
    ["provider"],
)
FLOW_ANOMALIES = Counter("nurture_flow_anomalies", "Anomalies found when a flow's stats were computed.", ["kind"])


def record_last_sync(provider: str, contacts: int | None, seconds: float | None) -> None:
    """The last finished sync's gauges, from what it recorded (crm_sync_state.last_sync_*)."""
    if contacts is None or not seconds:
        return
    CRM_LAST_SYNC_CONTACTS.labels(provider).set(contacts)
    CRM_LAST_SYNC_SECONDS.labels(provider).set(seconds)
    CRM_LAST_SYNC_RATE.labels(provider).set(round(contacts / seconds, 1))


def serve_worker_metrics(port: int, host: str = "0.0.0.0"):
    """The worker's own /metrics on ``port`` (a thread); None when the port is 0 (off)."""
    if not port:
        return None
    server, _ = start_http_server(port, addr=host)
    return server


# --- activities --------------------------------------------------------------


def instrument(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same activity (name, types) timed into ACTIVITY_SECONDS; sends also counted by outcome."""
    name = activity._Definition.must_from_callable(fn).name
    assert name is not None

    @functools.wraps(fn)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await fn(*args, **kwargs)
            outcome = "ok"
            if isinstance(result, SendEmailResult):
                EMAIL_SENDS.labels(result.status).inc()
            return result
        except ApplicationError as exc:
            if name == "send_email":
                EMAIL_SEND_FAILURES.labels(exc.type or "ApplicationError").inc()
                if exc.non_retryable:
                    EMAIL_SENDS.labels("failed").inc()
            raise
        except Exception as exc:
            if name == "send_email":
                EMAIL_SEND_FAILURES.labels(type(exc).__name__).inc()
            raise
        finally:
            ACTIVITY_SECONDS.labels(name, outcome).observe(time.perf_counter() - started)

    # wraps() copied the original definition; define it again for the wrapper itself.
    timed.__dict__.pop("__temporal_activity_definition", None)
    return activity.defn(name=name)(timed)


def instrumented(functions: list[Callable[..., Any]]) -> list[Callable[..., Any]]:
    return [instrument(fn) for fn in functions]


# --- Temporal client ---------------------------------------------------------


class MetricsInterceptor(Interceptor):
    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        return _CountingOutbound(next)


class _CountingOutbound(OutboundInterceptor):
    async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
        handle = await super().start_workflow(input)
        if input.workflow == ENROLLMENT_WORKFLOW:
            ENROLLMENT_STARTS.inc()
        return handle

    async def signal_workflow(self, input: SignalWorkflowInput) -> None:
        await super().signal_workflow(input)
        SIGNALS_SENT.labels(input.signal).inc()

    async def start_workflow_update(self, input: StartWorkflowUpdateInput) -> WorkflowUpdateHandle[Any]:
        handle = await super().start_workflow_update(input)
        UPDATES_SENT.labels(input.update).inc()
        return handle


def instrument_client(client: Client) -> Client:
    """The same connection with the counting interceptor added (once)."""
    config = client.config()
    interceptors = list(config.get("interceptors") or [])
    if any(isinstance(i, MetricsInterceptor) for i in interceptors):
        return client
    config["interceptors"] = [*interceptors, MetricsInterceptor()]
    return Client(**config)
