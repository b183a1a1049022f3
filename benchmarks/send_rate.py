"""The global send rate: N sends due at once against a provider that allows R a second.

The engine sends through SendGrid's API to the loopback emulator (tests/email_emulators, its own
process), which answers 429 past ``--provider-limit`` requests in any one second. The engine's rate
(``NURTURE_SENDGRID__MAX_SENDS_PER_SECOND``: Temporal's task-queue rate limit on the send queue,
each worker spacing its sends) is ``--rate``. N contacts are enrolled in a one-email flow while no
worker runs, so every send is due at once when the worker process starts; the clock runs from its
start until the emulator has accepted all N. Reported: the time, the sends a second, the busiest
second the provider saw, its 429s, and the messages sent (each once: distinct at the provider).

    .venv/bin/python -m benchmarks.send_rate                 # 2,000 at 50/s against a 50/s provider
    .venv/bin/python -m benchmarks.send_rate --n 200 --rate 20 --provider-limit 20
    .venv/bin/python -m benchmarks.send_rate --no-limit      # no engine rate: as fast as the worker goes
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
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func
from sqlmodel import select

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
from benchmarks.scale import worker_environment
from nurture.enrolling import Enroller
from nurture.models import Message, MessageStatus
from nurture.settings import SendgridSettings

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "send_rate.json"
CREDENTIAL = "bench-key"
ONE_SEND_FLOW = {
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


def start_emulator(port: int, provider_limit: float, workdir: Path) -> subprocess.Popen:
    log = (workdir / "emulator.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "tests.email_emulators.serve", "sendgrid", "--port", str(port),
         "--rate-limit", str(provider_limit), "--credential", CREDENTIAL],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )


def start_worker(settings, address: str, workdir: Path, index: int, queues: str = "all") -> subprocess.Popen:
    env = worker_environment(settings, address) | {
        "NURTURE_WORKER_QUEUES": queues,
        "NURTURE_SENDGRID__BASE_URL": settings.sendgrid.base_url,
        "NURTURE_SENDGRID__API_KEY": CREDENTIAL,
        "NURTURE_SENDGRID__MAX_SENDS_PER_SECOND": str(settings.sendgrid.max_sends_per_second),
        "NURTURE_TRACKING_ENABLED": "false",
    }
    log = (workdir / f"worker-{index}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "worker"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


async def enroll_all(engine: Engine, flow, n: int, concurrency: int = 32) -> float:
    """Start N enrollments while no worker runs: each waits for its first task. Answers the seconds."""
    began = time.monotonic()
    contacts = await engine.contacts(n)
    gate = asyncio.Semaphore(concurrency)

    async def one(contact) -> None:
        async with gate:
            await engine.enroll(flow, contact, "enroller")

    await asyncio.gather(*(one(c) for c in contacts))
    return time.monotonic() - began


async def measure(
    n: int, rate: float | None, provider_limit: float, backend_name: str, workdir: Path, workers: int = 1,
    separate_sends: bool = False,
) -> dict[str, Any]:
    """N enrollments started with no worker running; then one worker process starts and every
    enrollment's send is due at once. Timed from the worker's start to the provider's last acceptance."""
    env = await dev_server()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = start_emulator(port, provider_limit, workdir)
    running: list[subprocess.Popen] = []
    try:
        await poll(lambda: _answers(url), timeout=30, interval=0.2)
        async with backend(backend_name, workdir) as b:
            tag = f"rate-{uuid.uuid4().hex[:8]}"
            settings = engine_settings(
                b.url, workdir / tag, tag, email_provider="sendgrid", tracking_enabled=False,
                sendgrid=SendgridSettings(base_url=url, api_key=CREDENTIAL, max_sends_per_second=rate or 0),
            )
            await add_templates(b.db)
            flow = await add_flow(b.db, ONE_SEND_FLOW)
            engine = Engine(env.client, b.db, settings, Enroller(env.client, settings), None, {"one": flow}, tag)  # type: ignore[arg-type]
            enrolling_s = await enroll_all(engine, flow, n)

            temporal = child_named("temporal")
            temporal_cpu_before = cpu_seconds(temporal) if temporal is not None else 0.0
            emulator_cpu_before = cpu_seconds(emulator.pid)
            load_before = os.getloadavg()
            began = time.time()
            address = env.client.service_client.config.target_host
            if separate_sends:
                running.append(start_worker(settings, address, workdir, 0, "enrollments"))
                running.append(start_worker(settings, address, workdir, 1, "sends"))
            else:
                running.extend(start_worker(settings, address, workdir, i) for i in range(workers))
            # Generous: a machine slower than the rate still finishes (and says how fast it went).
            deadline = time.monotonic() + 120 + n / 2
            # Distinct messages: a message the provider got twice must not stand in for one it never got.
            while (stats := await emulator_stats(url))["distinct_messages"] < n:
                if any(w.poll() is not None for w in running):
                    raise RuntimeError(f"a worker exited: see {workdir}/worker-*.log")
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(2.0)  # the last sends' rows
            stats = await emulator_stats(url)
            sent, attempts = await sent_rows(b.db)
            # CPU since each process started (a worker's with its render processes): per send, what the machine paid.
            cpu = {f"worker_{i}": _tree_cpu(w.pid) for i, w in enumerate(running)}
            cpu["provider_emulator"] = cpu_seconds(emulator.pid) - emulator_cpu_before
            if temporal is not None:
                cpu["temporal_server"] = cpu_seconds(temporal) - temporal_cpu_before
            for w in running:
                w.send_signal(signal.SIGTERM)
            for w in running:
                w.wait(timeout=30)
        admitted = stats["admitted_unix"]
        finished = admitted[-1] if admitted else time.time()
        seconds = finished - began
        return {
            "n": n,
            "engine_rate_per_s": rate,
            "provider_limit_per_s": provider_limit,
            "backend": backend_name,
            "worker_processes": 2 if separate_sends else workers,
            "send_worker_of_its_own": separate_sends,
            "completed": stats["distinct_messages"] >= n,
            "enrolling_s": round(enrolling_s, 1),
            "seconds_from_worker_start": round(seconds, 2),
            "sends_per_s": round(stats["accepted"] / seconds, 1) if seconds > 0 else None,
            # From the provider's first acceptance: without the worker's start-up.
            "first_to_last_send_s": round(finished - admitted[0], 2) if admitted else None,
            "busiest_second_at_provider": stats["busiest_second"],
            "admitted_per_second": _per_second(admitted, began),
            "provider_throttled_429": stats["throttled"],
            "provider_accepted": stats["accepted"],
            "distinct_messages_at_provider": stats["distinct_messages"],
            "messages_sent_rows": sent,
            "send_attempts": attempts,
            "cpu_ms_per_send": {name: round(seconds * 1000 / n, 1) for name, seconds in cpu.items()},
            "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        }
    finally:
        for process in (*running, emulator):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        await env.shutdown()


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
    """Requests the provider let through in each second from the start of the run."""
    counts: list[int] = []
    for at in times:
        index = max(0, int(at - began))
        counts.extend([0] * (index + 1 - len(counts)))
        counts[index] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=50.0, help="the engine's send rate (per second)")
    parser.add_argument("--provider-limit", type=float, default=50.0, help="the emulator's 429 threshold (per second)")
    parser.add_argument("--no-limit", action="store_true", help="no engine rate: sends go as fast as the workers run")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--separate-sends", action="store_true",
                        help="one worker process for the enrollments, one for the sends (NURTURE_WORKER_QUEUES)")
    parser.add_argument("--logs", type=Path, default=None, help="keep the worker and emulator logs here")
    options = parser.parse_args(argv)
    backend_name = options.backend or ("postgresql" if postgres_reachable() else "sqlite")
    with tempfile.TemporaryDirectory() as workdir:
        logs = options.logs or Path(workdir)
        logs.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(measure(options.n, None if options.no_limit else options.rate, options.provider_limit,
                                     backend_name, logs, options.workers, options.separate_sends))
    report = {"send_rate": result, "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
