"""Bulk enrollment next to raw Temporal starts, on one machine, in one run.

Run from the repository root: ``.venv/bin/python -m benchmarks.bulk_enrollment`` (``--help`` for the
knobs). Like benchmarks/enrollments.py it starts its own Temporal dev server, a temporary SQLite
database and, when reachable, a throw-away schema on PostgreSQL at 127.0.0.1:5432.

Measured:

- raw: N bare workflows (benchmarks/raw_workflow.py) started with ``--concurrency`` starts in
  flight, a worker running them; starts per second;
- bulk: N contacts enrolled through ``POST /flows/{id}/bulk-enrollments`` at ``--rate`` a second
  (the API in-process, one worker); from the request until the bulk workflow has completed, every
  enrollment's workflow started; enrollments per second, and the ratio to the raw rate measured
  just before, on the same server;
- page: the same N contacts enrolled in another flow by one ``bulk_enroll_page`` activity run
  directly, no worker running the enrollments: what the enrolling code itself does, without the
  bulk workflow's pacing and without the new enrollments competing for the worker.

``--flow waiting`` (the default) enrolls in a flow that waits an hour first, and the raw workflows
wait an hour after their activity: what is compared is starting, not what the workflows do next.
``--flow short`` enrolls in send, 1 s delay, send (raw: activity, 1 s timer, activity): the
enrollments run, render and write while the bulk run is still starting others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Worker

from activities.email.providers import OutboxProvider
from activities.enrolling import EnrollingActivities
from api.main import create_app
from benchmarks.flows import BULK_FLOW, SHORT_FLOW
from benchmarks.harness import (
    dev_server,
    add_flow,
    add_templates,
    backend,
    engine_settings,
    enrollment_rows,
    machine,
    postgres_reachable,
)
from benchmarks.raw_workflow import RAW_WORKFLOW, RawInput, RawResult, RawWorkflow, noop
from nurture.batch_contracts import BulkPageInput
from nurture.db import Database
from nurture.logging import configure_logging
from nurture.models import Contact, utcnow
from nurture.settings import Settings
from worker.main import build_worker

RESULTS = Path(__file__).resolve().parent / "results" / "bulk_enrollment.json"


FLOWS = {"waiting": (BULK_FLOW, 3600.0), "short": (SHORT_FLOW, 1.0)}


@dataclass
class Options:
    n: int = 1000
    rate: float = 1000
    concurrency: int = 32
    postgres: bool = True
    flow: str = "waiting"


async def measure_raw_starts(client: Client, options: Options) -> dict[str, Any]:
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(options.concurrency)

    async def start(i: int) -> None:
        async with gate:
            await client.start_workflow(
                RAW_WORKFLOW, RawInput(timer_seconds=FLOWS[options.flow][1]), id=f"{queue}-{i}", task_queue=queue,
                result_type=RawResult,
            )

    async with Worker(client, task_queue=queue, workflows=[RawWorkflow], activities=[noop]):
        began = time.perf_counter()
        await asyncio.gather(*(start(i) for i in range(options.n)))
        elapsed = time.perf_counter() - began
    return {"started": options.n, "seconds": round(elapsed, 2), "starts_per_s": round(options.n / elapsed, 1)}


async def measure_page(client: Client, db: Database, settings: Settings, options: Options) -> dict[str, Any]:
    """One page of N, run directly; no worker polls the queue its enrollments start on."""
    flow = await add_flow(db, FLOWS[options.flow][0])
    alone = settings.model_copy(update={"temporal_task_queue": f"{settings.temporal_task_queue}-unpolled"})
    at = utcnow()
    page = BulkPageInput(
        bulk_id="page", flow_id=flow.id, max_enrollments=options.n, scan_limit=min(options.n, 5000), at=at, bulk_started_at=at
    )
    began = time.perf_counter()
    result = await ActivityEnvironment().run(EnrollingActivities(db, client, alone).bulk_enroll_page, page)
    elapsed = time.perf_counter() - began
    return {
        "enrolled": result.enrolled,
        "rows": await enrollment_rows(db, flow.id),  # type: ignore[arg-type]
        "seconds": round(elapsed, 2),
        "enrollments_per_s": round(result.enrolled / elapsed, 1),
    }


async def measure_bulk(client: Client, db: Database, worker_db: Database, data_dir: Path, options: Options) -> dict[str, Any]:
    tag = f"bench-bulk-{uuid.uuid4().hex[:8]}"
    settings = engine_settings(db.url, data_dir, tag)
    raw = await measure_raw_starts(client, options)  # just before, on the same server: the baseline
    await add_templates(db)
    flow = await add_flow(db, FLOWS[options.flow][0])
    async with db.session() as s:
        s.add_all(Contact(email=f"{tag}-{i}@example.com", name=f"Reader {i}") for i in range(options.n))
        await s.commit()
    app = create_app(settings, db=db, client=client)
    async with (
        build_worker(client, worker_db, OutboxProvider(settings.outbox_dir), settings),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", timeout=60) as api,
    ):
        began = time.perf_counter()
        response = await api.post(f"/flows/{flow.id}/bulk-enrollments", json={"rate_per_second": options.rate})
        if response.status_code != 202:
            raise RuntimeError(f"starting the bulk enrollment failed: {response.status_code} {response.text}")
        started = response.json()
        # Waited for on Temporal (a long poll): polling the progress query would load the worker.
        await client.get_workflow_handle(started["workflow_id"]).result()
        elapsed = time.perf_counter() - began
        progress = (await api.get(f"/bulk-enrollments/{started['id']}")).json()
    bulk = {
        "status": progress["status"],
        "enrolled": progress["enrolled"],
        "rows": await enrollment_rows(db, flow.id),  # type: ignore[arg-type]
        "seconds": round(elapsed, 2),
        "enrollments_per_s": round(progress["enrolled"] / elapsed, 1),
    }
    return {"raw": raw, "bulk": bulk, "page": await measure_page(client, db, settings, options)}


async def on_backend(name: str, client: Client, workdir: Path, options: Options) -> dict[str, Any]:
    async with backend(name, workdir) as chosen:
        return await measure_bulk(client, chosen.db, chosen.worker_db, workdir / name, options)


async def run(options: Options, workdir: Path) -> dict[str, Any]:
    env = await dev_server()
    try:
        report: dict[str, Any] = {"machine": machine(), "options": asdict(options)}
        report["engine"] = {"sqlite": await on_backend("sqlite", env.client, workdir, options)}
        if options.postgres and postgres_reachable():
            report["engine"]["postgresql"] = await on_backend("postgresql", env.client, workdir, options)
        report["ratios"] = {
            backend: {
                what: round(measured[what]["enrollments_per_s"] / measured["raw"]["starts_per_s"], 2) for what in ("bulk", "page")
            }
            for backend, measured in report["engine"].items()
        }
        return report
    finally:
        await env.shutdown()


def table(report: dict[str, Any]) -> str:
    options = report["options"]
    lines = [
        f"N={options['n']}, rate {options['rate']}/s, raw concurrency {options['concurrency']}, flow {options['flow']}",
        f"{'':28} {'seconds':>8} {'per second':>11} {'ratio':>6}",
    ]
    for backend, measured in report["engine"].items():
        raw = measured["raw"]
        lines.append(f"{'raw Temporal starts':28} {raw['seconds']:>8} {raw['starts_per_s']:>11} {1.0:>6}")
        for what in ("bulk", "page"):
            got = measured[what]
            complete = got["rows"] == options["n"] and got.get("status", "completed") == "completed"
            lines.append(
                f"{what + ', ' + backend:28} {got['seconds']:>8} {got['enrollments_per_s']:>11} {report['ratios'][backend][what]:>6}"
                + ("" if complete else f"  (incomplete: {got})")
            )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=Options.n, help="contacts to enroll (default %(default)s)")
    parser.add_argument("--rate", type=float, default=Options.rate, help="rate_per_second of the bulk run")
    parser.add_argument("--concurrency", type=int, default=Options.concurrency, help="raw starts in flight at once")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is reachable")
    parser.add_argument("--flow", choices=sorted(FLOWS), default=Options.flow, help="what the enrollments do (default %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    return Options(args.n, args.rate, args.concurrency, not args.no_postgres, args.flow), args.output


def main(argv: list[str] | None = None) -> None:
    options, output = parse(argv)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="nurture-bulk-bench-") as workdir:
        report = asyncio.run(run(options, Path(workdir)))
    print(table(report))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
