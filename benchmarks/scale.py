"""The scale run (``--scale N``): N enrollments asleep in a one-day delay, and what that costs.

The worker runs as its own process (``python -m worker``), as in production, so its memory can
be read apart from the benchmark's. Contacts are enrolled in steps through bulk enrollment (the
fast path); after each step, once the worker is idle, the worker's and the Temporal dev server's
resident memory are read from /proc. At N, a goal event for a few of the sleeping enrollments is
timed until their workflows closed.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import col, select
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from api.main import create_app
from benchmarks.bulk import enrolled_in_bulk
from benchmarks.flows import SCALE_FLOW
from benchmarks.harness import (
    GOAL_EVENT,
    Engine,
    add_flow,
    add_templates,
    backend,
    engine_settings,
    latency_ms,
    poll,
)
from benchmarks.processes import child_named, cpu_seconds, rss_mib, stop_process, tree_rss_mib
from nurture.enrolling import Enroller
from nurture.models import Enrollment
from nurture.settings import Settings

CHECKPOINTS = (1_000, 10_000)
# The worker counts as idle once it used less than this share of one core over a second.
IDLE_CPU_SHARE = 0.05
SETTLE_TIMEOUT = 900.0


def checkpoints(total: int) -> list[int]:
    return sorted({c for c in CHECKPOINTS if c < total} | {total})


def worker_environment(settings: Settings, address: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")}
    values = {
        "DATA_DIR": str(settings.data_dir),
        "DATABASE_URL": settings.database_url or "",
        "TEMPORAL_ADDRESS": address,
        "TEMPORAL_NAMESPACE": settings.temporal_namespace,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "WORKFLOW_ID_PREFIX": settings.workflow_id_prefix,
        "TEMPORAL_SEARCH_ATTRIBUTES": str(settings.temporal_search_attributes).lower(),
        "EMAIL_PROVIDER": settings.email_provider,
        "LOG_LEVEL": settings.log_level,
        "TRACKING_SECRET": settings.tracking_secret or "",
        "EMAIL_WEBHOOK_SECRET": settings.email_webhook_secret or "",
        "WEBHOOK_SECRET": settings.webhook_secret or "",
    }
    return env | {f"NURTURE_{k}": v for k, v in values.items()}


async def worker_polling(client: Client, task_queue: str) -> bool:
    described = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
    )
    return bool(described.pollers)


async def idle(pid: int, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the process is idle; answer how long that took."""
    began = time.perf_counter()
    while True:
        before = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        if cpu_seconds(pid) - before < IDLE_CPU_SHARE:
            return round(time.perf_counter() - began, 1)
        if time.perf_counter() - began > timeout:
            raise TimeoutError(f"process {pid} still busy after {timeout:.0f}s")


def memory(worker: subprocess.Popen, server_pid: int | None) -> dict[str, Any]:
    return {
        "worker_rss_mib": rss_mib(worker.pid),
        # With the template render processes it started.
        "worker_tree_rss_mib": tree_rss_mib(worker.pid),
        "server_rss_mib": rss_mib(server_pid) if server_pid else None,
    }


async def goal_exits(engine: Engine, flow_id: int, samples: int) -> dict[str, Any]:
    """Goal events for enrollments spread over the whole population, each timed until its workflow closed."""
    async with engine.db.session() as s:
        rows = (
            await s.exec(
                select(Enrollment.contact_id, Enrollment.workflow_id)
                .where(Enrollment.flow_id == flow_id)
                .order_by(col(Enrollment.id))
            )
        ).all()
    step = max(1, len(rows) // max(1, samples))
    chosen = rows[::step][:samples]
    exits, goal_met = [], 0
    for contact_id, workflow_id in chosen:
        handle = engine.handle(workflow_id)
        t0 = time.perf_counter()
        await engine.event(contact_id, GOAL_EVENT, "api")
        result = await handle.result()
        exits.append(time.perf_counter() - t0)
        goal_met += result.exit_reason == "goal_met"
    return latency_ms(exits) | {"exited": goal_met}


async def measure_scale(client: Client, workdir: Path, total: int, rate: float, goal_samples: int,
                        backend_name: str) -> dict[str, Any]:
    address = client.service_client.config.target_host
    server_pid = child_named("temporal")
    tag = f"scale-{uuid.uuid4().hex[:8]}"
    async with backend(backend_name, workdir) as b:
        settings = engine_settings(b.url, workdir / tag, tag)
        await add_templates(b.db)
        flow = await add_flow(b.db, SCALE_FLOW)
        log = (workdir / f"{tag}-worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=worker_environment(settings, address), cwd=workdir,
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            async def ready() -> bool:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited {worker.returncode} at start")
                return await worker_polling(client, settings.temporal_task_queue)

            await poll(ready, timeout=60, interval=0.2)
            app = create_app(settings, db=b.db, client=client)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as api:
                engine = Engine(client, b.db, settings, Enroller(client, settings), api, {"scale": flow}, tag)
                await idle(worker.pid)
                points = [{"enrollments": 0} | memory(worker, server_pid)]
                enrolled = 0
                for target in checkpoints(total):
                    measured = await enrolled_in_bulk(engine, flow, target - enrolled, rate, already=enrolled)
                    enrolled = target
                    settled = await idle(worker.pid)
                    points.append(
                        {"enrollments": enrolled, "step_enrollments_per_s": measured["enrollments_per_s"],
                         "step_s": max(measured["rows_s"], measured["workflows_s"]), "settled_after_s": settled}
                        | memory(worker, server_pid)
                    )
                exits = await goal_exits(engine, flow.id, goal_samples)
        finally:
            stop_process(worker)
            log.close()
            if worker.returncode not in (0, -signal.SIGTERM):
                tail = (workdir / f"{tag}-worker.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the worker exited {worker.returncode}; its log ends:\n{tail}")
    return {"backend": backend_name, "enrollments": total, "rate_asked": rate, "points": points,
            "goal_exit_at_scale": exits}
