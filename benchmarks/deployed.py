"""The engine as it is deployed, for benchmarks/enrollments.py: the worker (``python -m worker``) and
the API (``uvicorn api.main:app``) each in its own process, and raw Temporal's bare worker in its
own process too (benchmarks/raw_worker.py). The benchmark process only drives them (HTTP requests,
Enroller calls, Temporal queries), so no side's worker shares a CPU-bound process with its client.

Each process's CPU time is read from /proc, so a case can report CPU milliseconds per enrollment
next to its wall-clock numbers: on a shared machine those are the steadier measure.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client

from benchmarks.events import Stack
from benchmarks.harness import poll
from benchmarks.processes import cpu_seconds, descendants, stop_process
from benchmarks.scale import worker_polling
from nurture.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and everything it started (the worker's template render processes)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(each)
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass  # a child that ended meanwhile
    return total


@dataclass
class CpuMeter:
    """CPU seconds of named processes (and of this one), read before and after a case."""

    pids: dict[str, int]

    def read(self) -> dict[str, float]:
        return {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()} | {"benchmark": time.process_time()}

    @staticmethod
    def per_item_ms(before: dict[str, float], after: dict[str, float], items: int) -> dict[str, float]:
        return {name: round((after[name] - before[name]) * 1000 / max(1, items), 2) for name in before}


@dataclass
class Deployed:
    api: httpx.AsyncClient
    meter: CpuMeter


def _stopped(process: subprocess.Popen, name: str, log: str) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"the {name} exited {process.returncode} at start; its log ends:\n{log}")


@asynccontextmanager
async def deployed_engine(client: Client, settings: Settings, workdir: Path, tag: str) -> AsyncIterator[Deployed]:
    """The worker and the API (one uvicorn process) on ``settings``, ready: the API answers
    /health and the worker polls the task queue."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(settings, client.service_client.config.target_host, workdir, tag, api_workers=1, profile=None)
    stack.start()
    worker, api_process = stack.processes
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{stack.port}", timeout=60,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=200),
        ) as http:
            async def healthy() -> bool:
                _stopped(api_process, "API", stack.log_tail("api"))
                try:
                    return (await http.get("/health")).status_code == 200
                except httpx.HTTPError:
                    return False

            async def polling() -> bool:
                _stopped(worker, "worker", stack.log_tail("worker"))
                return await worker_polling(client, settings.temporal_task_queue)

            await poll(healthy, timeout=90, interval=0.2)
            await poll(polling, timeout=90, interval=0.2)
            yield Deployed(http, CpuMeter({"worker": worker.pid, "api": api_process.pid}))
    finally:
        stack.stop()


@asynccontextmanager
async def raw_worker(client: Client, task_queue: str) -> AsyncIterator[CpuMeter]:
    """The bare worker (benchmarks/raw_worker.py) polling ``task_queue``, in its own process."""
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.raw_worker", client.service_client.config.target_host, task_queue,
             client.namespace],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )

        def tail() -> str:
            log.seek(0)
            return log.read().decode(errors="replace")[-3000:]

        try:
            async def polling() -> bool:
                _stopped(process, "raw worker", tail())
                return await worker_polling(client, task_queue)

            await poll(polling, timeout=90, interval=0.2)
            yield CpuMeter({"worker": process.pid})
        finally:
            stop_process(process, timeout=30)


def cpu_note(per_item: dict[str, Any]) -> str:
    return ", ".join(f"{name} {ms} ms" for name, ms in per_item.items())
