"""Bulk enrollment next to raw Temporal starts, on one machine, in one run.

Run from the repository root: ``.venv/bin/python -m benchmarks.bulk_enrollment`` (``--help`` for the
knobs). Like benchmarks/enrollments.py it starts its own Temporal dev server, a temporary SQLite
database and, when reachable, a throw-away schema on PostgreSQL at 127.0.0.1:5432.

Measured:

- raw: N bare workflows (benchmarks/raw_workflow.py) started with ``--concurrency`` starts in
  flight, a worker running them; starts per second;
- engine: N contacts enrolled through ``POST /flows/{id}/bulk-enrollments`` at ``--rate`` a second
  (the API in-process, one worker); from the request until the bulk workflow reports
  ``completed``, every enrollment's workflow started; enrollments per second, and the ratio to raw.

The enrolled flow is a send, a 1 s delay and a send, so the enrollments run (and write) while the
bulk run is still starting others, as they would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlmodel import func, select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.email.providers import OutboxProvider
from api.main import create_app
from benchmarks.enrollments import (
    POSTGRES_URL,
    SHORT_FLOW,
    add_flow,
    add_templates,
    machine,
    postgres_reachable,
    temporal_binary,
)
from benchmarks.raw_workflow import RAW_WORKFLOW, RawInput, RawResult, RawWorkflow, noop
from nurture.db import Database
from nurture.logging import configure_logging
from nurture.models import Contact, Enrollment
from nurture.settings import Settings
from worker.main import build_worker
from workflows.enrollment import SEARCH_ATTRIBUTES

RESULTS = Path(__file__).resolve().parent / "results" / "bulk_enrollment.json"


@dataclass
class Options:
    n: int = 1000
    rate: float = 1000
    concurrency: int = 32
    postgres: bool = True


async def measure_raw_starts(client: Client, options: Options) -> dict[str, Any]:
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    gate = asyncio.Semaphore(options.concurrency)

    async def start(i: int) -> None:
        async with gate:
            await client.start_workflow(
                RAW_WORKFLOW, RawInput(timer_seconds=1.0), id=f"{queue}-{i}", task_queue=queue, result_type=RawResult
            )

    async with Worker(client, task_queue=queue, workflows=[RawWorkflow], activities=[noop]):
        began = time.perf_counter()
        await asyncio.gather(*(start(i) for i in range(options.n)))
        elapsed = time.perf_counter() - began
    return {"started": options.n, "seconds": round(elapsed, 2), "starts_per_s": round(options.n / elapsed, 1)}


async def measure_bulk(client: Client, db: Database, worker_db: Database, data_dir: Path, options: Options) -> dict[str, Any]:
    tag = f"bench-bulk-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        database_url=db.url,
        temporal_task_queue=tag,
        workflow_id_prefix=tag,
        temporal_search_attributes=True,
        email_provider="outbox",
        auth_required=False,
        rate_limit_enabled=False,
        log_level="WARNING",
        tracking_secret=secrets.token_urlsafe(32),
        email_webhook_secret=secrets.token_urlsafe(32),
        webhook_secret=secrets.token_urlsafe(32),
    )
    await add_templates(db)
    flow = await add_flow(db, SHORT_FLOW)
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
        bulk_id = response.json()["id"]
        while True:
            progress = (await api.get(f"/bulk-enrollments/{bulk_id}")).json()
            if progress.get("status") not in (None, "running"):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - began
    async with db.session() as s:
        rows = (await s.exec(select(func.count()).select_from(Enrollment).where(Enrollment.flow_id == flow.id))).one()
    return {
        "status": progress["status"],
        "enrolled": progress["enrolled"],
        "rows": rows,
        "seconds": round(elapsed, 2),
        "enrollments_per_s": round(progress["enrolled"] / elapsed, 1),
    }


async def on_sqlite(client: Client, workdir: Path, options: Options) -> dict[str, Any]:
    url = f"sqlite:///{workdir / 'nurture.db'}"
    db, worker_db = Database(url), Database(url)  # the API and the worker are separate processes
    await db.create_all()
    try:
        return await measure_bulk(client, db, worker_db, workdir / "sqlite", options)
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
        return await measure_bulk(client, db, worker_db, workdir / "postgresql", options)
    finally:
        await db.dispose()
        await worker_db.dispose()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def run(options: Options, workdir: Path) -> dict[str, Any]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    try:
        report: dict[str, Any] = {"machine": machine(), "options": asdict(options)}
        report["raw"] = await measure_raw_starts(env.client, options)
        report["bulk"] = {"sqlite": await on_sqlite(env.client, workdir, options)}
        if options.postgres and postgres_reachable():
            report["bulk"]["postgresql"] = await on_postgres(env.client, workdir, options)
        raw = report["raw"]["starts_per_s"]
        report["ratios"] = {backend: round(b["enrollments_per_s"] / raw, 2) for backend, b in report["bulk"].items()}
        return report
    finally:
        await env.shutdown()


def table(report: dict[str, Any]) -> str:
    raw = report["raw"]
    lines = [
        f"N={report['options']['n']}, rate {report['options']['rate']}/s, concurrency {report['options']['concurrency']}",
        f"{'':24} {'seconds':>8} {'per second':>11} {'ratio':>6}",
        f"{'raw Temporal starts':24} {raw['seconds']:>8} {raw['starts_per_s']:>11} {1.0:>6}",
    ]
    for backend, bulk in report["bulk"].items():
        lines.append(
            f"{'bulk, ' + backend:24} {bulk['seconds']:>8} {bulk['enrollments_per_s']:>11} {report['ratios'][backend]:>6}"
            + ("" if bulk["status"] == "completed" and bulk["rows"] == report["options"]["n"] else f"  ({bulk})")
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=Options.n, help="contacts to enroll (default %(default)s)")
    parser.add_argument("--rate", type=float, default=Options.rate, help="rate_per_second of the bulk run")
    parser.add_argument("--concurrency", type=int, default=Options.concurrency, help="raw starts in flight at once")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is reachable")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    return Options(args.n, args.rate, args.concurrency, not args.no_postgres), args.output


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
