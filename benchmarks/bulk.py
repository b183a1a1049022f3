"""Bulk enrollment through the API against plain workflow starts on the same server.

Engine: ``POST /flows/{id}/bulk-enrollments`` for a segment of N fresh contacts at the fastest
rate the API accepts, timed until all N enrollment rows exist and all N enrollment workflows exist
(the last one's start time as the server recorded it), whichever comes last. Raw: N starts of the
bare workflow with the same number in flight. Both sides' workflows are terminated afterwards,
once asleep, so later cases run on a quiet server.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from temporalio.client import Client

from benchmarks.harness import (
    LONG_WAIT,
    Engine,
    all_hold,
    enrollment_rows,
    enrollment_workflow_ids,
    enrollment_workflows_since,
    last_enrollment_start,
    starts_per_second,
    terminate_all,
)
from benchmarks.raw_workflow import RAW_WORKFLOW, Pings, PingsQuery, RawInput
from nurture.models import Flow, utcnow

POLL_INTERVAL = 0.05
# Visibility is asked how many workflows exist only this often: each count is a query the dev
# server answers from the SQLite it also writes every start to (about 4 ms of its CPU per count
# with a few thousand workflows), which the raw side's starts never pay. When all exist, the
# time is read from the last one's start time as the server recorded it, not from the poll.
WORKFLOWS_POLL_INTERVAL = 0.5


async def start_bulk(engine: Engine, flow: Flow, company: str, rate: float) -> str:
    response = await engine.api.post(
        f"/flows/{flow.id}/bulk-enrollments",
        json={
            "segment": {"property": "company", "op": "eq", "value": company},
            "rate_per_second": rate,
            "requested_by": "benchmark",
        },
    )
    if response.status_code != 202:
        raise RuntimeError(f"starting the bulk enrollment failed: {response.status_code} {response.text}")
    return response.json()["id"]


async def bulk_progress(engine: Engine, bulk_id: str) -> dict[str, Any]:
    """The bulk workflow's progress; a 503 (its query timed out while the worker was busy with the
    page and the new enrollments) is asked again, as a dashboard would, rather than ending the case."""
    for _ in range(20):
        response = await engine.api.get(f"/bulk-enrollments/{bulk_id}")
        if response.status_code != 503:
            break
        await asyncio.sleep(1.0)
    response.raise_for_status()
    return response.json()


async def wait_bulk_done(engine: Engine, bulk_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.perf_counter() + timeout
    while (progress := await bulk_progress(engine, bulk_id))["status"] == "running":
        if time.perf_counter() > deadline:
            raise TimeoutError(f"bulk enrollment {bulk_id} still running: {progress}")
        await asyncio.sleep(0.2)
    return progress


async def enrolled_in_bulk(engine: Engine, flow: Flow, n: int, rate: float, already: int = 0) -> dict[str, Any]:
    """Bulk-enroll ``n`` new contacts in ``flow``; time until their rows and workflows all exist.

    ``already`` enrollments of the flow exist before (the scale run enrolls in steps).
    """
    company = f"{engine.tag}-bulk-{uuid.uuid4().hex[:6]}"
    await engine.many_contacts(n, company)
    # Generous: a path slower than 5 enrollments a second is a finding, not a hang.
    timeout = 120 + n / 5
    queue = engine.settings.temporal_task_queue
    since = utcnow()
    began = time.perf_counter()
    bulk_id = await start_bulk(engine, flow, company, rate)
    rows_at = workflows_at = None
    workflows_asked = -WORKFLOWS_POLL_INTERVAL
    while rows_at is None or workflows_at is None:
        elapsed = time.perf_counter() - began
        if elapsed > timeout:
            raise TimeoutError(f"after {elapsed:.0f}s: rows at {rows_at}, workflows at {workflows_at}")
        if rows_at is None and await enrollment_rows(engine.db, flow.id) >= already + n:
            rows_at = time.perf_counter() - began
        if workflows_at is None and elapsed - workflows_asked >= WORKFLOWS_POLL_INTERVAL:
            workflows_asked = elapsed
            if await enrollment_workflows_since(engine.client, queue, since) >= n:
                last = await last_enrollment_start(engine.client, queue, since)
                workflows_at = (last - since).total_seconds()
        await asyncio.sleep(POLL_INTERVAL)
    progress = await wait_bulk_done(engine, bulk_id, timeout=60)
    done = max(rows_at, workflows_at)
    return {
        "n": n,
        "rate_asked": rate,
        "rows_s": round(rows_at, 3),
        "workflows_s": round(workflows_at, 3),
        "enrollments_per_s": round(n / done, 1),
        "bulk": {key: progress[key] for key in ("status", "enrolled", "skipped", "runs")},
    }


async def engine_bulk(engine: Engine, flow: Flow, n: int, rate: float) -> dict[str, Any]:
    measured = await enrolled_in_bulk(engine, flow, n, rate)
    workflow_ids = await enrollment_workflow_ids(engine.db, flow.id)
    await all_hold([lambda w=w: engine.asleep(engine.handle(w)) for w in workflow_ids])
    await terminate_all(engine.client, workflow_ids)
    return measured


def median_round(rounds: list[dict[str, Any]], rate: str) -> dict[str, Any]:
    """The round whose ``rate`` is the median (the lower of the middle two for an even count),
    with every round's rate beside it: one round of a thousand starts moves with the machine's
    moment (raw Temporal alone went from 137 to 309 a second between rounds minutes apart)."""
    middle = sorted(rounds, key=lambda r: r[rate])[(len(rounds) - 1) // 2]
    return middle | {"rounds": len(rounds), f"rounds_{rate}": [r[rate] for r in rounds]}


async def engine_bulk_rounds(engine: Engine, flows: list[Flow], n: int, rate: float) -> dict[str, Any]:
    """``engine_bulk`` once per flow (a fresh one each round, so each round's rows and workflows
    are its own), the median round."""
    return median_round([await engine_bulk(engine, flow, n, rate) for flow in flows], "enrollments_per_s")


async def raw_starts(client: Client, task_queue: str, n: int, concurrency: int) -> dict[str, Any]:
    """``n`` bare workflows started, each going to sleep in a long timer like a bulk-enrolled contact."""
    run = uuid.uuid4().hex[:8]
    ids = [f"bench-raw-{run}-start-{i}" for i in range(n)]

    async def start(i: int) -> None:
        await client.start_workflow(
            RAW_WORKFLOW, RawInput(timer_seconds=LONG_WAIT.total_seconds()), id=ids[i], task_queue=task_queue
        )

    measured = await starts_per_second(n, concurrency, start)

    async def asleep(workflow_id: str) -> bool:
        handle = client.get_workflow_handle(workflow_id)
        return (await handle.query("pings", PingsQuery(), result_type=Pings)).waiting

    await all_hold([lambda w=w: asleep(w) for w in ids])
    await terminate_all(client, ids)
    return measured
