"""Events at a steady rate: how fast ``POST /events`` answers, and how soon a goal ends the enrollment.

``python -m benchmarks.events`` (``--help`` for the options). The stack runs as deployed: the
worker is ``python -m worker`` and the API ``uvicorn api.main:app`` (with ``--api-workers N``
processes), each its own process beside one Temporal dev server, on SQLite and on PostgreSQL.

For each rate, ``rate × duration`` contacts are bulk-enrolled in a flow that sleeps a day with
``meeting_booked`` as its goal; then one goal event per contact is posted at that fixed rate
(open loop: a slow answer does not slow the sender down). Measured: the POST's answer, and the
time from sending the POST to the workflow's close time (the server's clock; same machine).
Then a batch ingest (``POST /events/batch``) of events that concern no enrollment, and a bare
Temporal client signalling bare workflows on the same server: the raw ceiling for fan-out.

``--profile out.svg`` runs the API under py-spy at the first rate and backend given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import sqlalchemy as sa
from sqlmodel import col, select
from temporalio.client import Client
from temporalio.worker import Worker

from api.main import create_app
from benchmarks.flows import SCALE_FLOW
from benchmarks.harness import (
    BACKENDS,
    GOAL_EVENT,
    POSTGRES_URL,
    Engine,
    add_flow,
    add_templates,
    backend,
    dev_server,
    engine_settings,
    machine,
    percentile,
    poll,
    postgres_reachable,
    terminate_all,
)
from benchmarks.raw_workflow import (
    RAW_WORKFLOW,
    FinishSignal,
    Pings,
    PingSignal,
    PingsQuery,
    RawInput,
    RawWorkflow,
    noop,
)
from benchmarks.processes import children, cpu_seconds, descendants
from benchmarks.scale import worker_environment, worker_polling
from nurture.enrolling import Enroller
from nurture.models import Contact, Enrollment, FlowVersion, utcnow

RATES = (5, 20, 50, 100, 200)
RESULTS = Path(__file__).resolve().parent / "results" / "events.json"
BATCH_SIZE = 500
BATCH_EVENTS = 10_000
RAW_SIGNALS = 3_000
RAW_WORKFLOWS = 100
SIGNAL_CONCURRENCY = 100


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Poster:
    """POSTs JSON over a pool of kept-alive HTTP/1.1 connections with as little client work as
    possible: on a loaded 2-core machine httpx's own CPU per request delayed the sender, and its
    wait was counted as the server's."""

    def __init__(self, port: int, connections: int = 64):
        self.port = port
        self.size = connections
        self.idle: asyncio.Queue = asyncio.Queue()
        self.opened = 0

    async def _connection(self):
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            return await asyncio.open_connection("127.0.0.1", self.port)
        return await self.idle.get()

    async def post(self, path: str, body: Any) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        try:
            return await self._post(path, payload)
        except (OSError, asyncio.IncompleteReadError, IndexError):
            # uvicorn closes a connection idle for 5 s: a reused one may be gone; once more, afresh.
            return await self._post(path, payload, fresh=True)

    async def _post(self, path: str, payload: bytes, fresh: bool = False) -> tuple[int, bytes]:
        if fresh:
            self.opened += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        else:
            reader, writer = await self._connection()
        try:
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload
            )
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self.opened -= 1
            raise
        self.idle.put_nowait((reader, writer))
        return int(status_line.split()[1]), answer

    async def close(self) -> None:
        while not self.idle.empty():
            _, writer = self.idle.get_nowait()
            writer.close()


def _cpu_or_zero(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0


def tree_cpu_seconds(pid: int) -> float:
    return sum(_cpu_or_zero(p) for p in [pid, *descendants(pid)])


def postgres_backends(application_name: str) -> list[int]:
    """The server processes of this run's connections (same machine: their CPU is in /proc)."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,))
        return [pid for (pid,) in rows.fetchall()]


def with_application_name(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def quantiles(seconds: list[float], *pcts: int) -> dict[str, float | None]:
    return {f"p{p}_ms": round(percentile(seconds, p) * 1000, 1) if seconds else None for p in pcts}


class Stack:
    """The worker and the API as their own processes."""

    def __init__(self, settings, address: str, workdir: Path, tag: str, api_workers: int, profile: Path | None):
        self.env = worker_environment(settings, address) | {
            "NURTURE_API_WORKERS": str(api_workers),
            # One client driving the API as hard as it can: measure the engine, not the keys or the limiter.
            "NURTURE_AUTH_REQUIRED": "false",
            "NURTURE_RATE_LIMIT_ENABLED": "false",
        }
        self.port = free_port()
        self.workdir = workdir
        self.tag = tag
        self.api_workers = api_workers
        self.profile = profile
        self.processes: list[subprocess.Popen] = []
        self.postgres_name: str | None = None
        self._postgres_seen: dict[int, float] = {}
        self.profiled = "api"

    def start(self) -> None:
        worker = [sys.executable, "-m", "worker"]
        api = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(self.port),
               "--no-proxy-headers", "--no-access-log", "--workers", str(self.api_workers)]
        if self.profile is not None:
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "--subprocesses", "--rate", "200",
                   "--format", {".json": "speedscope", ".txt": "raw"}.get(self.profile.suffix, "flamegraph"),
                   "-o", str(self.profile), "--"]
            if self.profiled == "api":
                api = spy + api
        self.processes.append(self._spawn("worker", worker))
        self.processes.append(self._spawn("api", api))

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.workdir / f"{self.tag}-{name}.log").open("wb")
        return subprocess.Popen(command, env=self.env, cwd=Path(__file__).resolve().parent.parent,
                                stdout=log, stderr=subprocess.STDOUT)

    def spy_on_worker(self) -> subprocess.Popen | None:
        """py-spy attached to the worker while the goal events are handled (not while they enroll)."""
        if self.profile is None or self.profiled != "worker":
            return None
        return subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(self.processes[0].pid), "--rate", "200",
             "--format", {".json": "speedscope", ".txt": "raw"}.get(self.profile.suffix, "flamegraph"),
             "-o", str(self.profile)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def api_cpu_seconds(self) -> float:
        """CPU time the API's processes used so far (uvicorn's and its workers')."""
        return tree_cpu_seconds(self.processes[1].pid)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU used so far by each part of the path of an event: the API, the worker, the Temporal
        dev server, and the PostgreSQL backends serving this run (by application_name)."""
        own = {self.processes[0].pid, self.processes[1].pid}
        temporal = [pid for pid in children(os.getpid()) if pid not in own]
        used = {
            "api": self.api_cpu_seconds(),
            "worker": tree_cpu_seconds(self.processes[0].pid),
            "temporal": sum(tree_cpu_seconds(pid) for pid in temporal),
        }
        if self.postgres_name is not None:
            used["postgresql"] = self.postgres_cpu_seconds()
        return used

    def postgres_cpu_seconds(self) -> float:
        """CPU of this run's PostgreSQL backends so far: a backend whose connection the pool closed
        keeps the CPU it was last seen with (``watch_postgres`` looks often), so none goes missing."""
        if self.postgres_name is not None:
            for pid in postgres_backends(self.postgres_name):
                used = _cpu_or_zero(pid)
                if used:
                    self._postgres_seen[pid] = used
        return sum(self._postgres_seen.values())

    async def watch_postgres(self) -> None:
        while True:
            await asyncio.to_thread(self.postgres_cpu_seconds)
            await asyncio.sleep(0.5)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGINT if self.profile is not None else signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, name: str) -> str:
        return (self.workdir / f"{self.tag}-{name}.log").read_text(errors="replace")[-3000:]


async def contacts_of(engine: Engine, flow_id: int, skip: set[int]) -> list[tuple[int, str]]:
    async with engine.db.session() as s:
        rows = await s.exec(
            select(Enrollment.contact_id, Enrollment.workflow_id)
            .where(Enrollment.flow_id == flow_id)
            .order_by(col(Enrollment.id))
        )
        return [(c, w) for c, w in rows.all() if c not in skip]


async def rows_closed(engine: Engine, workflow_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with engine.db.session() as s:
            open_ = (await s.exec(
                select(sa.func.count()).select_from(Enrollment).where(
                    col(Enrollment.workflow_id).in_(workflow_ids), Enrollment.status == "active")
            )).one()
        if open_ == 0:
            return
        await asyncio.sleep(0.2)


async def closed_at(client: Client, workflow_ids: list[str], timeout: float) -> dict[str, datetime]:
    """Each workflow's close time (the server's clock), once all closed or the time is up."""
    closed: dict[str, datetime] = {}
    gate = asyncio.Semaphore(50)
    deadline = time.monotonic() + timeout

    async def one(workflow_id: str) -> None:
        async with gate:
            described = await client.get_workflow_handle(workflow_id).describe()
        if described.close_time is not None:
            closed[workflow_id] = described.close_time

    while time.monotonic() < deadline:
        await asyncio.gather(*(one(w) for w in workflow_ids if w not in closed))
        if len(closed) == len(workflow_ids):
            break
        await asyncio.sleep(1.0)
    return closed


async def enrolled_directly(engine: Engine, flow, n: int, page: int = 500) -> dict[str, Any]:
    """``n`` new contacts enrolled in pages through ``Enroller.admit_many`` (what a bulk page does),
    without the bulk workflow whose status reads time out on a loaded machine; then a pause for
    the worker to put them to sleep before the events come."""
    company = f"{engine.tag}-{uuid.uuid4().hex[:6]}"
    await engine.many_contacts(n, company)
    began = time.perf_counter()
    async with engine.db.session() as s:
        version = (await s.exec(select(FlowVersion).where(FlowVersion.flow_id == flow.id))).one()
        contacts = list((await s.exec(select(Contact).where(Contact.company == company).order_by(col(Contact.id)))).all())
        for start in range(0, len(contacts), page):
            await engine.enroller.admit_many(s, flow, version, contacts[start:start + page], at=utcnow())
    took = time.perf_counter() - began
    # Every enrollment asleep (its row says so) before the events come: a start still being handled
    # would count in the worker's and Temporal's CPU per goal event.
    asleep = (
        select(sa.func.count()).select_from(Enrollment).join(Contact, col(Contact.id) == col(Enrollment.contact_id))
        .where(Contact.company == company, Enrollment.current_step == "wait", Enrollment.status == "active")
    )

    async def all_asleep() -> bool:
        async with engine.db.session() as s:
            return (await s.exec(asleep)).one() >= n

    await poll(all_asleep, timeout=120 + n / 10, interval=0.5)
    await asyncio.sleep(1.0)
    return {"n": n, "enrollments_per_s": round(n / took, 1)}


async def goal_rate(engine: Engine, http: httpx.AsyncClient, flow, rate: int, duration: float, wait: bool,
                    done_contacts: set[int], stack: Stack, poster: Poster) -> dict[str, Any]:
    n = max(1, int(rate * duration))
    enrolled = await enrolled_directly(engine, flow, n)
    targets = (await contacts_of(engine, flow.id, done_contacts))[:n]
    done_contacts.update(c for c, _ in targets)
    sent_at: dict[str, float] = {}
    answered: list[float] = []
    failures: dict[str, int] = {}
    params = {"wait": "true"} if wait else {"wait": "false"}

    path = f"/events?wait={params['wait']}"

    async def post(contact_id: int, workflow_id: str) -> None:
        began = time.time()
        sent_at[workflow_id] = began
        try:
            code, _ = await poster.post(path, {"type": GOAL_EVENT, "contact_id": contact_id, "event_id": uuid.uuid4().hex})
            if code not in (200, 202):
                failures[str(code)] = failures.get(str(code), 0) + 1
                return
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
            failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
            return
        answered.append(time.time() - began)

    spy = stack.spy_on_worker()
    watching = asyncio.create_task(stack.watch_postgres())
    cpu_before = stack.cpu_seconds()
    began = time.monotonic()
    tasks = []
    for i, (contact_id, workflow_id) in enumerate(targets):
        delay = began + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(contact_id, workflow_id)))
    sending = time.monotonic() - began
    await asyncio.gather(*tasks)
    # The rows say closed (the workflow's last local activity) before the close times are asked for:
    # the describe calls would count in Temporal's CPU.
    await rows_closed(engine, [w for _, w in targets], timeout=120 + n / 10)
    await asyncio.sleep(0.5)
    cpu_after = stack.cpu_seconds()
    watching.cancel()
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
    cpu_ms = {part: round((cpu_after[part] - cpu_before[part]) * 1000 / n, 2) for part in cpu_after}
    closes = await closed_at(engine.client, [w for _, w in targets], timeout=120 + n / 10)
    to_close = [closes[w].timestamp() - sent_at[w] for w in sent_at if w in closes]
    return {
        "rate": rate,
        "events": n,
        "sent_per_s": round(n / sending, 1),
        "post": quantiles(answered, 50, 99) | {"samples": len(answered), "failures": failures},
        "goal_to_closed": quantiles(to_close, 50, 95, 99) | {"samples": len(to_close), "not_closed": n - len(to_close)},
        # The machine is shared: its load while this rate ran, and the API's CPU per event
        # (accepting and routing), which the load does not inflate as much as the times.
        "load_average_1m": round(os.getloadavg()[0], 2),
        "api_cpu_ms_per_event": cpu_ms["api"],
        # Per goal event, from the first POST until every enrollment's row said it ended.
        "cpu_ms_per_event": cpu_ms,
        "bulk_setup": {k: enrolled[k] for k in ("n", "enrollments_per_s")},
    }


async def batch_ingest(engine: Engine, http: httpx.AsyncClient, total: int, size: int) -> dict[str, Any]:
    """``total`` page views of known contacts with no running enrollment, ``size`` per request, 4 at once."""
    contacts = await engine.contacts(200, company="Batch")
    ids = [c.id for c in contacts]
    run = uuid.uuid4().hex[:8]
    bodies = [
        [{"type": "page_viewed", "contact_id": ids[(b * size + i) % len(ids)], "event_id": f"{run}-{b}-{i}",
          "properties": {"url": "/pricing"}} for i in range(size)]
        for b in range(total // size)
    ]
    gate = asyncio.Semaphore(4)
    accepted = 0
    failures: dict[str, int] = {}

    async def send(body: list[dict]) -> None:
        nonlocal accepted
        async with gate:
            response = await http.post("/events/batch", json=body)
        if response.status_code != 200:
            failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
            return
        accepted += sum(1 for r in response.json()["results"] if r["status"] == "accepted")

    began = time.perf_counter()
    await asyncio.gather(*(send(body) for body in bodies))
    took = time.perf_counter() - began
    return {"events": total, "batch_size": size, "accepted": accepted, "seconds": round(took, 2),
            "events_per_s": round(accepted / took, 1), "failures": failures}


async def raw_signals(client: Client, n: int, workflows: int) -> dict[str, Any]:
    """A bare client signalling bare workflows (asleep in a timer): signals per second, all received."""
    queue = f"bench-raw-signals-{uuid.uuid4().hex[:6]}"
    ids = [f"{queue}-{i}" for i in range(workflows)]
    async with Worker(client, task_queue=queue, workflows=[RawWorkflow], activities=[noop]):
        for workflow_id in ids:
            await client.start_workflow(RAW_WORKFLOW, RawInput(timer_seconds=3600), id=workflow_id, task_queue=queue)
        gate = asyncio.Semaphore(SIGNAL_CONCURRENCY)

        async def one(i: int) -> None:
            async with gate:
                await client.get_workflow_handle(ids[i % workflows]).signal("ping", PingSignal(value=i))

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        sent = time.perf_counter() - began
        last = {ids[i % workflows]: i for i in range(n)}

        async def heard(workflow_id: str) -> bool:
            pings = await client.get_workflow_handle(workflow_id).query("pings", PingsQuery(), result_type=Pings)
            return pings.last == last[workflow_id]

        async def all_heard() -> bool:
            return all(await asyncio.gather(*(heard(w) for w in ids)))

        await poll(all_heard, timeout=120, interval=0.2)
        received = time.perf_counter() - began
        await terminate_all(client, ids)
    return {"signals": n, "workflows": workflows, "concurrency": SIGNAL_CONCURRENCY,
            "sent_per_s": round(n / sent, 1), "received_per_s": round(n / received, 1)}


async def raw_goal_rate(client: Client, rate: int, duration: float, workdir: Path) -> dict[str, Any]:
    """The same load on bare Temporal: ``rate × duration`` bare workflows asleep in a timer (after one
    activity, as the engine's enrollments sleep after their first step), each ended by one signal sent
    at ``rate`` a second by a bare client, their worker in its own process (benchmarks/raw_worker.py).
    Signal sent -> workflow closed (the server's clock), and the CPU per close of the worker and the
    Temporal server: what the engine's goal -> closed is to be compared with, on this machine."""
    queue = f"bench-raw-goals-{uuid.uuid4().hex[:6]}"
    n = max(1, int(rate * duration))
    ids = [f"{queue}-{i}" for i in range(n)]
    address = client.service_client.config.target_host
    log = (workdir / f"{queue}.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "benchmarks.raw_worker", address, queue],
                              cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT)
    gate = asyncio.Semaphore(50)
    try:
        async def start(workflow_id: str) -> None:
            async with gate:
                await client.start_workflow(RAW_WORKFLOW, RawInput(timer_seconds=86400), id=workflow_id, task_queue=queue)

        await asyncio.gather(*(start(w) for w in ids))

        async def asleep(workflow_id: str) -> bool:
            async with gate:
                pings = await client.get_workflow_handle(workflow_id).query("pings", PingsQuery(), result_type=Pings)
            return pings.waiting

        async def all_asleep() -> bool:
            return all(await asyncio.gather(*(asleep(w) for w in ids)))

        await poll(all_asleep, timeout=120 + n / 10, interval=0.5)
        temporal = [pid for pid in children(os.getpid()) if pid != worker.pid]
        cpu_before = {"worker": tree_cpu_seconds(worker.pid), "temporal": sum(tree_cpu_seconds(p) for p in temporal)}
        sent_at: dict[str, float] = {}
        failures: dict[str, int] = {}

        async def finish(workflow_id: str) -> None:
            sent_at[workflow_id] = time.time()
            try:
                await client.get_workflow_handle(workflow_id).signal("finish", FinishSignal(reason="goal"))
            except Exception as exc:  # noqa: BLE001 - counted, as the engine's failed POSTs are
                failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1

        began = time.monotonic()
        tasks = []
        for i, workflow_id in enumerate(ids):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(finish(workflow_id)))
        sending = time.monotonic() - began
        await asyncio.gather(*tasks)

        async def result(workflow_id: str) -> None:
            async with gate:
                await client.get_workflow_handle(workflow_id).result()

        await asyncio.wait_for(asyncio.gather(*(result(w) for w in ids)), timeout=120 + n / 10)
        cpu_after = {"worker": tree_cpu_seconds(worker.pid), "temporal": sum(tree_cpu_seconds(p) for p in temporal)}
        closes = await closed_at(client, ids, timeout=120 + n / 10)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    to_close = [closes[w].timestamp() - sent_at[w] for w in sent_at if w in closes]
    return {
        "rate": rate,
        "signals": n,
        "sent_per_s": round(n / sending, 1),
        "signal_to_closed": quantiles(to_close, 50, 95, 99) | {"samples": len(to_close), "not_closed": n - len(to_close),
                                                               "failures": failures},
        "load_average_1m": round(os.getloadavg()[0], 2),
        # The Temporal side includes the result() long polls the measure waits on.
        "cpu_ms_per_event": {part: round((cpu_after[part] - cpu_before[part]) * 1000 / n, 2) for part in cpu_after},
    }


async def run_backend(name: str, env, args, workdir: Path) -> dict[str, Any]:
    address = env.client.service_client.config.target_host
    tag = f"bev{uuid.uuid4().hex[:6]}"
    async with backend(name, workdir) as b:
        # The stack's PostgreSQL connections carry the run's tag: their server processes' CPU is measured.
        url = with_application_name(b.url, tag) if name == "postgresql" else b.url
        settings = engine_settings(url, workdir, tag)
        await add_templates(b.db)
        flow = await add_flow(b.db, SCALE_FLOW)
        stack = Stack(settings, address, workdir, tag, args.api_workers, args.profile)
        stack.postgres_name = tag if name == "postgresql" else None
        stack.profiled = args.profile_process
        stack.start()
        app = create_app(settings, db=b.db, client=env.client)
        try:
            async with (
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://in-process") as inproc,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.port}", timeout=60,
                                  limits=httpx.Limits(max_connections=400, max_keepalive_connections=400)) as http,
            ):
                engine = Engine(env.client, b.db, settings, Enroller(env.client, settings), inproc, {}, tag)

                async def healthy() -> bool:
                    try:
                        return (await http.get("/health")).status_code == 200
                    except httpx.HTTPError:
                        return False

                await poll(healthy, timeout=60, interval=0.2)
                await poll(lambda: worker_polling(env.client, settings.temporal_task_queue), timeout=60, interval=0.2)
                done: set[int] = set()
                rates = []
                poster = Poster(stack.port)
                for rate in args.rates:
                    print(f"[{name}] {rate} ev/s ...", file=sys.stderr, flush=True)
                    rates.append(await goal_rate(engine, http, flow, rate, args.duration, args.wait, done, stack, poster))
                    # uvicorn closes connections idle for 5 s: the next rate starts with new ones.
                    await poster.close()
                    poster = Poster(stack.port)
                    print(f"[{name}]   {json.dumps(rates[-1])}", file=sys.stderr, flush=True)
                await poster.close()
                batch = None
                if not args.skip_batch:
                    cpu_before = stack.api_cpu_seconds()
                    batch = await batch_ingest(engine, http, args.batch_events, args.batch_size)
                    batch["api_cpu_ms_per_event"] = round((stack.api_cpu_seconds() - cpu_before) * 1000 / args.batch_events, 3)
                    print(f"[{name}] batch {json.dumps(batch)}", file=sys.stderr, flush=True)
        finally:
            stack.stop()
    return {"backend": name, "rates": rates, "batch": batch}


def cpu_cell(r: dict[str, Any]) -> str:
    cpu = r.get("cpu_ms_per_event")
    if not cpu:
        return f"{r.get('api_cpu_ms_per_event', '—')} / — / — / —"
    return " / ".join(f"{cpu[part]:g}" if part in cpu else "—" for part in ("api", "worker", "temporal", "postgresql"))


def table(results: dict[str, Any]) -> str:
    lines = [
        "| rate | database | sent/s | POST answered p50 / p99 | goal -> closed p50 / p95 / p99 | not closed | CPU ms per event: API / worker / Temporal / PostgreSQL | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["backends"]:
        for r in run["rates"]:
            p, g = r["post"], r["goal_to_closed"]
            lines.append(
                f"| {r['rate']} ev/s | {run['backend']} | {r['sent_per_s']} | {p['p50_ms']} / {p['p99_ms']} ms | "
                f"{g['p50_ms']} / {g['p95_ms']} / {g['p99_ms']} ms | {g['not_closed']} | {cpu_cell(r)} | {r.get('load_average_1m', '—')} |"
            )
    for run in results["backends"]:
        if run.get("batch"):
            lines.append(f"\nbatch ingest, {run['backend']}: {run['batch']['events_per_s']} events/s "
                         f"({run['batch']['batch_size']} per request)")
    if results.get("raw_goals"):
        lines.append("\n| rate | raw Temporal: signal -> closed p50 / p95 / p99 | not closed | CPU ms per close: bare worker / Temporal | load |")
        lines.append("|---|---|---|---|---|")
        for r in results["raw_goals"]:
            g, cpu = r["signal_to_closed"], r["cpu_ms_per_event"]
            lines.append(f"| {r['rate']} ev/s | {g['p50_ms']} / {g['p95_ms']} / {g['p99_ms']} ms | {g['not_closed']} | "
                         f"{cpu['worker']:g} / {cpu['temporal']:g} | {r['load_average_1m']} |")
    if results.get("raw_signals"):
        raw = results["raw_signals"]
        lines.append(f"raw Temporal signals (bare client, bare workflows): {raw['sent_per_s']} sent/s, "
                     f"{raw['received_per_s']} received/s")
    return "\n".join(lines)


async def main(args) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "started": datetime.now().isoformat(timespec="seconds"),
                               "api_workers": args.api_workers, "wait": args.wait, "duration_s": args.duration}
    env = await dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="nurture-events-") as tmp:
            results["backends"] = []
            for name in args.backends:
                if name == "postgresql" and not postgres_reachable():
                    print("PostgreSQL unreachable: skipped", file=sys.stderr)
                    continue
                results["backends"].append(await run_backend(name, env, args, Path(tmp)))
                if args.profile is not None:
                    break
            if not args.skip_raw:
                results["raw_signals"] = await raw_signals(env.client, RAW_SIGNALS, RAW_WORKFLOWS)
                results["raw_goals"] = []
                for rate in args.rates:
                    print(f"[raw] {rate} goal signals/s ...", file=sys.stderr, flush=True)
                    results["raw_goals"].append(await raw_goal_rate(env.client, rate, args.duration, Path(tmp)))
                    print(f"[raw]   {json.dumps(results['raw_goals'][-1])}", file=sys.stderr, flush=True)
    finally:
        await env.shutdown()
    return results


def parse(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--rates", nargs="+", type=int, default=list(RATES))
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of events per rate")
    parser.add_argument("--wait", action="store_true", help="post with ?wait=true (answer once routed)")
    parser.add_argument("--api-workers", type=int, default=int(os.environ.get("NURTURE_API_WORKERS", "1")))
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--batch-events", type=int, default=BATCH_EVENTS)
    parser.add_argument("--skip-batch", action="store_true")
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--profile", type=Path, help="run the API under py-spy, write the flame graph here")
    parser.add_argument("--profile-process", choices=("api", "worker"), default="api", help="which process --profile samples")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    outcome = asyncio.run(main(arguments))
    if arguments.profile is not None:
        print(table(outcome))
    else:
        # A run of some backends keeps the others' last results (each entry says when it ran).
        ran = {run["backend"] for run in outcome["backends"]}
        for run in outcome["backends"]:
            run["started"] = outcome["started"]
        if arguments.output.exists():
            before = json.loads(arguments.output.read_text())
            outcome["backends"] = [r for r in before.get("backends", []) if r["backend"] not in ran] + outcome["backends"]
            for kept in ("raw_signals", "raw_goals"):
                if kept not in outcome and kept in before:
                    outcome[kept] = before[kept]
        arguments.output.write_text(json.dumps(outcome, indent=2) + "\n")
        print(table(outcome))
