"""The global send rate: N sends due at once against a provider that allows R a second, beside
bare Temporal doing the same on the same dev server.

Each side sends through SendGrid's v3 Mail Send to a loopback emulator of its own
(tests/email_emulators, its own process), which answers 429 past ``--provider-limit`` requests in
any one second, and each side's workflows and sends run in two worker processes of their own:

- **raw Temporal** (benchmarks/raw_send_worker.py): N bare workflows, each asleep until one shared
  instant, then one activity on a send task queue with Temporal's task-queue rate limit at
  ``--rate``, which posts the request; then the workflow closes.
- **the engine**: N contacts enrolled in a flow that waits (``delay_until``) for the same kind of
  instant and then sends one email; the send worker (``NURTURE_WORKER_QUEUES=sends``) at
  ``NURTURE_SENDGRID__MAX_SENDS_PER_SECOND`` = ``--rate``.

For each side the workers poll before the due instant is chosen; the instant is ``--lead`` seconds
after that, so every workflow is started and asleep before it (``asleep_at_due`` says how many
were, read from their histories). Reported per side, from the due instant: the time to the
provider's last acceptance, sends a second, the busiest second the provider saw, its 429s, the
distinct messages it got, the CPU milliseconds per send of each process (workflow worker, send
worker, Temporal dev server, emulator; until every workflow closed) and the history events and
workflow tasks after the due instant (every workflow's history, read after the run). The raw side
runs first, then the engine, one after the other on the same dev server.

    .venv/bin/python -m benchmarks.send_rate                 # 2,000 at 50/s against a 50/s provider
    .venv/bin/python -m benchmarks.send_rate --rate 45 --provider-limit 50
    .venv/bin/python -m benchmarks.send_rate --n 40 --lead 8 --out /tmp/smoke.json
    .venv/bin/python -m benchmarks.send_rate --no-limit      # no rate: as fast as the workers go
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import select
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from benchmarks.harness import (
    Engine,
    add_flow,
    add_templates,
    backend,
    dev_server,
    engine_settings,
    machine,
    poll,
    postgres_reachable,
)
from benchmarks.processes import child_named, cpu_seconds, descendants
from benchmarks.raw_workflow import RAW_SEND_WORKFLOW, RawSendInput
from benchmarks.scale import worker_environment
from nurture.enrolling import Enroller
from nurture.models import Message, MessageStatus
from nurture.settings import SendgridSettings

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "send_rate_vs_raw.json"
CREDENTIAL = "bench-key"
ONE_SEND_FLOW = {  # benchmarks/send_cost.py's flow: one email at once
    "name": "Benchmark: one email",
    "trigger": {"type": "manual"},
    "steps": [{"id": "hello", "type": "send_email", "template": "bench-hello"}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def sent_rows(db) -> tuple[int, int]:
    async with db.session() as s:
        sent = (await s.exec(select(func.count()).select_from(Message).where(Message.status == MessageStatus.sent))).one()
        attempts = (await s.exec(select(func.coalesce(func.sum(Message.attempts), 0)))).one()
    return sent, attempts


async def emulator_stats(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return (await http.get("/_emulator/stats")).json()


def start_worker(settings, address: str, workdir: Path, queues: str, cache: int) -> subprocess.Popen:
    env = worker_environment(settings, address) | {
        "NURTURE_WORKER_QUEUES": queues,
        "NURTURE_WORKER_MAX_CACHED_WORKFLOWS": str(cache),
        "NURTURE_SENDGRID__BASE_URL": settings.sendgrid.base_url,
        "NURTURE_SENDGRID__API_KEY": CREDENTIAL,
        "NURTURE_SENDGRID__MAX_SENDS_PER_SECOND": str(settings.sendgrid.max_sends_per_second),
        "NURTURE_TRACKING_ENABLED": "false",
    }
    return _spawn(["-m", "worker"], workdir, f"engine-{queues}-worker", env)


async def enroll_all(engine: Engine, flow, n: int, concurrency: int = 32) -> list[str]:
    """Enroll N contacts (their workflow ids, in order)."""
    contacts = await engine.contacts(n)
    gate = asyncio.Semaphore(concurrency)

    async def one(contact) -> str:
        async with gate:
            return await engine.enroll(flow, contact, "enroller")

    return list(await asyncio.gather(*(one(c) for c in contacts)))


async def start_raw_workflows(client: Client, task_queue: str, send_queue: str, due: datetime, n: int,
                              concurrency: int = 32) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        workflow_id = f"raw-send-{tag}-{i}"
        async with gate:
            await client.start_workflow(
                RAW_SEND_WORKFLOW, RawSendInput(due=due, send_queue=send_queue, to=f"raw-{i}@example.com"),
                id=workflow_id, task_queue=task_queue,
            )
        return workflow_id

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def polled(client: Client, task_queue: str, kind: TaskQueueType.ValueType) -> bool:
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(namespace=client.namespace, task_queue=TaskQueue(name=task_queue), task_queue_type=kind)
    )
    return bool(described.pollers)


async def running(client: Client, workflow_type: str, task_queue: str) -> int:
    query = f"WorkflowType = '{workflow_type}' AND TaskQueue = '{task_queue}' AND ExecutionStatus = 'Running'"
    return (await client.count_workflows(query)).count


@dataclass
class Side:
    """One side's processes, ready: workers polling, the emulator answering."""

    name: str
    url: str  # its provider emulator
    processes: dict[str, subprocess.Popen]
    workflow_type: str
    task_queue: str

    def cpu(self, temporal: int | None) -> dict[str, float]:
        seconds = {name: _tree_cpu(p.pid) for name, p in self.processes.items()}
        if temporal is not None:
            seconds["temporal_server"] = cpu_seconds(temporal)
        return seconds

    def check_alive(self, workdir: Path) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{self.name}: the {name} exited {process.returncode}: see the logs in {workdir}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _spawn(args: list[str], workdir: Path, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = (workdir / f"{log_name}.log").open("wb")
    return subprocess.Popen([sys.executable, *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def start_emulator(port: int, provider_limit: float, workdir: Path, log_name: str = "emulator") -> subprocess.Popen:
    return _spawn(["-m", "tests.email_emulators.serve", "sendgrid", "--port", str(port),
                   "--rate-limit", str(provider_limit), "--credential", CREDENTIAL], workdir, log_name)


async def _emulator_up(side_name: str, provider_limit: float, workdir: Path) -> tuple[str, subprocess.Popen]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = start_emulator(port, provider_limit, workdir, f"{side_name}-emulator")
    await poll(lambda: _answers(url), timeout=30, interval=0.2)
    return url, emulator


async def _ready(side: Side, client: Client, workdir: Path, queues: list[tuple[str, TaskQueueType.ValueType]]) -> None:
    async def polling() -> bool:
        side.check_alive(workdir)
        return all([await polled(client, queue, kind) for queue, kind in queues])

    await poll(polling, timeout=120, interval=0.2)


async def measure_side(
    side: Side, client: Client, start: Callable[[datetime], Awaitable[list[str]]], n: int, lead: float,
    workdir: Path, temporal: int | None,
) -> dict[str, Any]:
    """Choose the due instant (the workers poll already), start the N workflows, then time the
    sends from the due instant to the provider's last acceptance and read each process's CPU
    from the due instant until every workflow closed."""
    due_unix = time.time() + lead
    due = datetime.fromtimestamp(due_unix, timezone.utc)
    began = time.time()
    workflow_ids = await start(due)
    started_s = time.time() - began
    await asyncio.sleep(max(0.0, due_unix - time.time() - 0.05))
    cpu_before = side.cpu(temporal)
    load_at_due = os.getloadavg()[0]
    deadline = time.monotonic() + 120 + n / 2  # generous: a machine slower than the rate still finishes
    # Distinct messages: a message the provider got twice must not stand in for one it never got.
    while (stats := await emulator_stats(side.url))["distinct_messages"] < n and time.monotonic() < deadline:
        side.check_alive(workdir)
        await asyncio.sleep(0.5)
    while await running(client, side.workflow_type, side.task_queue) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    cpu_after = side.cpu(temporal)
    stats = await emulator_stats(side.url)
    admitted = [at for at in stats["admitted_unix"] if at >= due_unix - 1]
    early = len(stats["admitted_unix"]) - len(admitted)
    last = admitted[-1] if admitted else None
    seconds = (last - due_unix) if last is not None else None
    histories = await history_after(client, workflow_ids, due)
    return {
        "completed": stats["distinct_messages"] >= n,
        "lead_s": lead,
        "starting_s": round(started_s, 1),
        # When not, the CPU counts begin when the last start returned, after the due instant.
        "all_started_before_due": began + started_s < due_unix,
        "asleep_at_due": histories.pop("asleep_at_due"),
        "sent_before_due": early,
        "seconds_from_due_to_last_send": round(seconds, 2) if seconds is not None else None,
        "sends_per_s": round(len(admitted) / seconds, 1) if seconds else None,
        "first_to_last_send_s": round(last - admitted[0], 2) if admitted else None,
        "busiest_second_at_provider": stats["busiest_second"],
        "admitted_per_second": _per_second(admitted, due_unix),
        "provider_throttled_429": stats["throttled"],
        "provider_accepted": stats["accepted"],
        "distinct_messages_at_provider": stats["distinct_messages"],
        "cpu_ms_per_send": {
            name: round((cpu_after[name] - cpu_before[name]) * 1000 / n, 1) for name in cpu_before
        },
        "history_after_due": histories,
        "load_average_at_due_and_end": [round(load_at_due, 2), round(os.getloadavg()[0], 2)],
    }


async def history_after(client: Client, workflow_ids: list[str], due: datetime, concurrency: int = 16) -> dict[str, Any]:
    """From every workflow's history: asleep at the due instant (a timer started before it, none
    fired before it), and its events and completed workflow tasks from the due instant on."""
    gate = asyncio.Semaphore(concurrency)

    async def one(workflow_id: str) -> tuple[bool, int, int, bool, int]:
        async with gate:
            history = await client.get_workflow_handle(workflow_id).fetch_history()
        started = fired = False
        after = tasks = 0
        for event in history.events:
            at = event.event_time.ToDatetime(tzinfo=timezone.utc)
            if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED and at < due:
                started = True
            if event.event_type == EventType.EVENT_TYPE_TIMER_FIRED and at < due:
                fired = True
            if at >= due:
                after += 1
                tasks += event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
        closed = history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
        return started and not fired, after, tasks, closed, len(history.events)

    rows = await asyncio.gather(*(one(w) for w in workflow_ids))
    count = max(1, len(rows))
    return {
        "asleep_at_due": sum(r[0] for r in rows),
        "workflows_read": len(rows),
        "closed": sum(r[3] for r in rows),
        "events_after_due_mean": round(sum(r[1] for r in rows) / count, 1),
        "events_after_due_max": max((r[1] for r in rows), default=0),
        "workflow_tasks_after_due_mean": round(sum(r[2] for r in rows) / count, 2),
        "workflow_tasks_after_due_max": max((r[2] for r in rows), default=0),
        "events_in_history_mean": round(sum(r[4] for r in rows) / count, 1),
    }


async def raw_side(client: Client, n: int, rate: float | None, provider_limit: float, lead: float, cache: int,
                   workdir: Path, temporal: int | None) -> dict[str, Any]:
    url, emulator = await _emulator_up("raw", provider_limit, workdir)
    tag = f"raw-send-{uuid.uuid4().hex[:8]}"
    queue, send_queue = tag, f"{tag}-sends"
    address = client.service_client.config.target_host
    side = Side("raw Temporal", url, {
        "workflow_worker": _spawn(["-m", "benchmarks.raw_send_worker", "workflows", address, queue, str(cache)],
                                  workdir, "raw-workflow-worker"),
        "send_worker": _spawn(["-m", "benchmarks.raw_send_worker", "sends", address, send_queue, str(rate or 0), url,
                               CREDENTIAL], workdir, "raw-send-worker"),
        "provider_emulator": emulator,
    }, RAW_SEND_WORKFLOW, queue)
    try:
        await _ready(side, client, workdir, [(queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW),
                                              (send_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY)])

        async def start(due: datetime) -> list[str]:
            return await start_raw_workflows(client, queue, send_queue, due, n)

        return await measure_side(side, client, start, n, lead, workdir, temporal)
    finally:
        side.stop()


async def engine_side(client: Client, n: int, rate: float | None, provider_limit: float, lead: float, cache: int,
                      backend_name: str, workdir: Path, temporal: int | None) -> dict[str, Any]:
    url, emulator = await _emulator_up("engine", provider_limit, workdir)
    side = Side("the engine", url, {"provider_emulator": emulator}, "EnrollmentWorkflow", "")
    try:
        async with backend(backend_name, workdir) as b:
            tag = f"rate-{uuid.uuid4().hex[:8]}"
            settings = engine_settings(
                b.url, workdir / tag, tag, email_provider="sendgrid", tracking_enabled=False,
                sendgrid=SendgridSettings(base_url=url, api_key=CREDENTIAL, max_sends_per_second=rate or 0),
            )
            side.task_queue = settings.temporal_task_queue
            await add_templates(b.db)
            address = client.service_client.config.target_host
            side.processes["workflow_worker"] = start_worker(settings, address, workdir, "enrollments", cache)
            side.processes["send_worker"] = start_worker(settings, address, workdir, "sends", cache)
            queues = [(settings.temporal_task_queue, TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW)]
            if rate:
                queues.append((settings.send_task_queue, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY))
            await _ready(side, client, workdir, queues)

            async def start(due: datetime) -> list[str]:
                flow = await add_flow(b.db, due_flow(due))
                engine = Engine(client, b.db, settings, Enroller(client, settings), None, {"one": flow}, tag)  # type: ignore[arg-type]
                return await enroll_all(engine, flow, n)

            result = await measure_side(side, client, start, n, lead, workdir, temporal)
            sent, attempts = await sent_rows(b.db)
            side.stop()
            return result | {"messages_sent_rows": sent, "send_attempts": attempts, "backend": backend_name}
    finally:
        side.stop()


def due_flow(due: datetime) -> dict[str, Any]:
    return {
        "name": f"Benchmark: one email at {due.isoformat()}",
        "trigger": {"type": "manual"},
        "steps": [
            {"id": "due", "type": "delay_until", "date": due.isoformat(), "if_passed": "continue"},
            {"id": "hello", "type": "send_email", "template": "bench-hello"},
        ],
    }


async def measure(n: int, rate: float | None, provider_limit: float, backend_name: str, workdir: Path,
                  lead: float, cache: int) -> dict[str, Any]:
    env = await dev_server()
    try:
        temporal = child_named("temporal")
        raw = await raw_side(env.client, n, rate, provider_limit, lead, cache, workdir, temporal)
        engine = await engine_side(env.client, n, rate, provider_limit, lead, cache, backend_name, workdir, temporal)
    finally:
        await env.shutdown()
    return {
        "n": n,
        "engine_rate_per_s": rate,
        "provider_limit_per_s": provider_limit,
        "max_cached_workflows": cache,
        "raw_temporal": raw,
        "engine": engine,
    }


async def _answers(url: str) -> bool:
    try:
        await emulator_stats(url)
        return True
    except httpx.HTTPError:
        return False


def _tree_cpu(pid: int) -> float:
    """CPU seconds of a process and the processes it started (the worker's render pool)."""
    total = 0.0
    for each in (pid, *descendants(pid)):
        try:
            total += cpu_seconds(each)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _per_second(times: list[float], began: float) -> list[int]:
    """Requests the provider let through in each second from ``began``."""
    counts: list[int] = []
    for at in times:
        index = max(0, int(at - began))
        counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0, help="the send rate of both sides (per second)")
    parser.add_argument("--provider-limit", type=float, default=50.0, help="the emulators' 429 threshold (per second)")
    parser.add_argument("--no-limit", action="store_true", help="no send rate: sends go as fast as the workers run")
    parser.add_argument("--lead", type=float, default=None,
                        help="seconds from choosing the due instant to it (default 20 + 0.05 per send): "
                             "every workflow must be started and asleep before it")
    parser.add_argument("--max-cached-workflows", type=int, default=None,
                        help="each workflow worker's cache (default: N, at least 1,000): no wake replays a history")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--logs", type=Path, default=None, help="keep the workers' and emulators' logs here")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results JSON")
    options = parser.parse_args(argv)
    backend_name = options.backend or ("postgresql" if postgres_reachable() else "sqlite")
    lead = options.lead if options.lead is not None else 20 + 0.05 * options.n
    cache = options.max_cached_workflows or max(1000, options.n)
    with tempfile.TemporaryDirectory() as workdir:
        logs = options.logs or Path(workdir)
        logs.mkdir(parents=True, exist_ok=True)
        load_before = os.getloadavg()
        result = asyncio.run(measure(options.n, None if options.no_limit else options.rate, options.provider_limit,
                                     backend_name, logs, lead, cache))
    report = {"send_rate": result | {"load_average_before": [round(x, 2) for x in load_before]}, "machine": machine()}
    options.out.parent.mkdir(parents=True, exist_ok=True)
    options.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
