"""Where the time of one bulk enrollment goes, stage by stage, on PostgreSQL.

Run from the repository root: ``.venv/bin/python -m benchmarks.bulk_stages`` (``-n``, ``--rate``,
``--backend``). One bulk request of N contacts (``--others`` unrelated contacts created first, as in
benchmarks/enrollments.py where earlier cases left theirs), the API and one worker in-process. The
stages come from the bulk workflow's history (the server's own timestamps, so the benchmark
process's scheduling does not move them) and from polling the rows and visibility every 10 ms:

request -> bulk workflow started -> page activity started -> every row written -> every
workflow started -> page activity completed -> (timer) -> bulk workflow completed. Raw Temporal
starts of as many bare workflows (32 in flight, a worker in the same process) are measured just
before, on the same server, for the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType

from activities.email.providers import OutboxProvider
from api.main import create_app
from benchmarks.bulk_enrollment import Options, measure_raw_starts
from benchmarks.flows import BULK_FLOW
from benchmarks.harness import (
    add_flow,
    add_templates,
    backend,
    dev_server,
    engine_settings,
    enrollment_rows,
    enrollment_workflows_since,
)
from nurture.logging import configure_logging
from nurture.models import Contact, utcnow
from worker.main import build_worker

POLL = 0.01


def _stages(history, request_at: float, wall_at: float) -> dict[str, float]:
    """Seconds from the request, per history event of interest (server time mapped onto ours)."""
    out: dict[str, float] = {}
    names = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "bulk_started",
        EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: "page_scheduled",
        EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED: "page_started",
        EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED: "page_completed",
        EventType.EVENT_TYPE_TIMER_STARTED: "timer_started",
        EventType.EVENT_TYPE_TIMER_FIRED: "timer_fired",
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED: "bulk_completed",
    }
    counts: dict[str, int] = {}
    for event in history.events:
        name = names.get(event.event_type)
        if name is None:
            continue
        counts[name] = counts.get(name, 0) + 1
        key = name if counts[name] == 1 else f"{name}_{counts[name]}"
        out[key] = round(event.event_time.ToDatetime().timestamp() - wall_at + request_at, 3)
    return out


async def measure(backend_name: str, n: int, rate: float, others: int, workdir: Path) -> dict[str, Any]:
    env = await dev_server()
    try:
        async with backend(backend_name, workdir) as chosen:
            tag = f"bench-stages-{uuid.uuid4().hex[:8]}"
            settings = engine_settings(chosen.url, workdir / backend_name, tag)
            await add_templates(chosen.db)
            flow = await add_flow(chosen.db, BULK_FLOW)
            async with chosen.db.session() as s:
                s.add_all(Contact(email=f"{tag}-other-{i}@example.com", company="other") for i in range(others))
                s.add_all(Contact(email=f"{tag}-{i}@example.com", company=tag) for i in range(n))
                await s.commit()
            # The baseline, just before on the same server: bare workflows started 32 at a time by
            # this process, a worker in this process running them (as the engine's page and worker).
            raw = await measure_raw_starts(env.client, Options(n=n, concurrency=settings.enrollment_start_concurrency))
            app = create_app(settings, db=chosen.db, client=env.client)
            async with (
                build_worker(env.client, chosen.worker_db, OutboxProvider(settings.outbox_dir), settings),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=60) as api,
            ):
                load = os.getloadavg()
                since = utcnow()
                wall_at, began = time.time(), time.perf_counter()
                response = await api.post(
                    f"/flows/{flow.id}/bulk-enrollments",
                    json={"segment": {"property": "company", "op": "eq", "value": tag}, "rate_per_second": rate},
                )
                response.raise_for_status()
                stages: dict[str, float] = {"request_returned": round(time.perf_counter() - began, 3)}
                handle = env.client.get_workflow_handle(response.json()["workflow_id"])
                while "rows" not in stages or "workflows" not in stages:
                    if "rows" not in stages and await enrollment_rows(chosen.db, flow.id) >= n:  # type: ignore[arg-type]
                        stages["rows"] = round(time.perf_counter() - began, 3)
                    if "workflows" not in stages and await enrollment_workflows_since(env.client, tag, since) >= n:
                        stages["workflows"] = round(time.perf_counter() - began, 3)
                    if time.perf_counter() - began > 120:
                        raise TimeoutError(stages)
                    await asyncio.sleep(POLL)
                await handle.result()
                stages["result"] = round(time.perf_counter() - began, 3)
                history = await handle.fetch_history()
                stages.update(_stages(history, 0.0, wall_at))
                done = max(stages["rows"], stages["workflows"])
                return {
                    "backend": backend_name, "n": n, "rate": rate, "others": others,
                    "load_before": [round(x, 2) for x in load], "load_after": [round(x, 2) for x in os.getloadavg()],
                    "enrollments_per_s": round(n / done, 1),
                    "raw": raw,
                    "ratio": round(n / done / raw["starts_per_s"], 2),
                    "stages_s": dict(sorted(stages.items(), key=lambda kv: kv[1])),
                }
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--others", type=int, default=1400, help="unrelated contacts created before (default %(default)s)")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="nurture-bulk-stages-") as workdir:
        report = asyncio.run(measure(args.backend, args.n, args.rate, args.others, Path(workdir)))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
