"""What one send costs the worker in CPU: the send_email activity, run N times in this process.

The activity runs as the send worker runs it (the same EmailActivities, consent links, render pool
and SendGrid client the worker builds from its settings), on a fresh PostgreSQL schema (or
SQLite), against the SendGrid emulator in a process of its own. Each send carries the first
progress report of its enrollment, as the first send of a flow does. Measured: the CPU of this
process and of its render processes (the emulator's is reported apart), the SQL statements and
transactions per send, and with ``--profile`` the functions that take the time (cProfile).
Temporal's part (polling, completing the task, payload conversion) is not in it: the send-rate
benchmark reports the whole worker process's CPU per send.

    .venv/bin/python -m benchmarks.send_cost                  # 500 sends, 20 at once
    .venv/bin/python -m benchmarks.send_cost --profile 25     # and the 25 costliest functions
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from temporalio.testing import ActivityEnvironment

from activities import email_activities
from activities.email.providers import provider_from_settings
from benchmarks.harness import add_flow, add_templates, backend, engine_settings, insert_contacts, machine, poll, postgres_reachable
from benchmarks.processes import cpu_seconds, descendants
from benchmarks.send_rate import CREDENTIAL, ONE_SEND_FLOW, _answers, emulator_stats, free_port, start_emulator
from nurture.contracts import ProgressReport, SendEmailInput, StepEntry
from nurture.logging import configure_logging
from nurture.models import Contact, Enrollment, utcnow
from nurture.settings import SendgridSettings

RESULTS = Path(__file__).parent / "results" / "send_cost.json"


class StatementCounter:
    """SQL statements and transactions (commits) the engine ran: the send's round trips."""

    def __init__(self, engine: sa.engine.Engine):
        self.statements = self.commits = 0
        sa.event.listen(engine, "before_cursor_execute", self._statement)
        sa.event.listen(engine, "commit", self._commit)

    def _statement(self, *_: Any) -> None:
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1


async def _enrollments(db, flow, tag: str, n: int) -> list[tuple[int, int, str]]:
    """N contacts, each with its enrollment row as the starter writes it: (contact, enrollment, workflow id)."""
    await insert_contacts(db, tag, 0, n, "Send cost")
    async with db.session() as s:
        contacts = (await s.exec(sa.select(Contact.id).where(Contact.email.like(f"{tag}-%")).order_by(Contact.id))).all()
        rows = [
            Enrollment(flow_id=flow.id, flow_version=flow.active_version, contact_id=cid, workflow_id=f"{tag}-{cid}")
            for (cid,) in contacts
        ]
        s.add_all(rows)
        await s.commit()
        return [(r.contact_id, r.id, r.workflow_id) for r in rows]


def _input(flow, contact_id: int, enrollment_id: int, workflow_id: str) -> SendEmailInput:
    now = utcnow()
    return SendEmailInput(
        idempotency_key=f"{workflow_id}/run/hello/1", workflow_id=workflow_id, flow_id=flow.id,
        flow_version=flow.active_version, step_id="hello", contact_id=contact_id, template="bench-hello",
        scheduled_at=now, max_attempts=12,
        progress=ProgressReport(
            enrollment_id=enrollment_id, workflow_id=workflow_id, run_id="run", flow_id=flow.id,
            flow_version=flow.active_version, contact_id=contact_id, seq=1, status="active", current_step="hello",
            entered=[StepEntry(step_id="hello", at=now)], at=now,
        ),
    )


def _descendants_cpu(pid: int) -> float:
    total = 0.0
    for each in descendants(pid):
        try:
            total += cpu_seconds(each)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


async def measure(n: int, concurrency: int, backend_name: str, workdir: Path, profile: int) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    emulator = start_emulator(port, 0, workdir)
    try:
        await poll(lambda: _answers(url), timeout=30, interval=0.2)
        async with backend(backend_name, workdir) as b:
            tag = f"cost-{uuid.uuid4().hex[:8]}"
            settings = engine_settings(
                b.url, workdir / tag, tag, email_provider="sendgrid", tracking_enabled=False,
                sendgrid=SendgridSettings(base_url=url, api_key=CREDENTIAL),
            )
            await add_templates(b.db)
            flow = await add_flow(b.db, ONE_SEND_FLOW)
            targets = await _enrollments(b.db, flow, tag, n + concurrency)
            warm, timed = targets[:concurrency], targets[concurrency:]
            provider = provider_from_settings(settings)
            activities = email_activities(b.worker_db, provider, settings)
            env = ActivityEnvironment()
            gate = asyncio.Semaphore(concurrency)

            async def send(target) -> None:
                async with gate:
                    result = await env.run(activities.send_email, _input(flow, *target))
                    assert result.status == "sent", result

            # The render processes start, the pool's connections open, the templates compile.
            await asyncio.gather(*(send(t) for t in warm))
            counter = StatementCounter(b.worker_db.engine.sync_engine)
            children_before, emulator_before = _descendants_cpu(os.getpid()), cpu_seconds(emulator.pid)
            # CPU time, not wall time: on a shared machine a function's wall time is mostly other processes'.
            profiler = cProfile.Profile(time.process_time) if profile else None
            times = os.times()
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            await asyncio.gather(*(send(t) for t in timed))
            if profiler:
                profiler.disable()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            user, system = os.times().user - times.user, os.times().system - times.system
            children = _descendants_cpu(os.getpid()) - children_before - (cpu_seconds(emulator.pid) - emulator_before)
            emulator_cpu = cpu_seconds(emulator.pid) - emulator_before
            stats = await emulator_stats(url)
            close = getattr(provider, "aclose", None)
            if close is not None:
                await close()
        report: dict[str, Any] = {
            "n": n,
            "concurrency": concurrency,
            "backend": backend_name,
            "wall_s": round(wall, 2),
            "sends_per_s": round(n / wall, 1),
            "cpu_ms_per_send": {
                "activity_process": round(cpu * 1000 / n, 2),
                "of_which_user": round(user * 1000 / n, 2),
                "of_which_system": round(system * 1000 / n, 2),
                "render_processes": round(children * 1000 / n, 2),
                "worker_total": round((cpu + children) * 1000 / n, 2),
                "provider_emulator": round(emulator_cpu * 1000 / n, 2),
            },
            "sql_statements_per_send": round(counter.statements / n, 2),
            "transactions_per_send": round(counter.commits / n, 2),
            "accepted_at_provider": stats["accepted"],
            "load_average": [round(x, 2) for x in os.getloadavg()],
        }
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(profile)
            report["profile_tottime"] = out.getvalue()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(profile)
            report["profile_cumulative"] = out.getvalue()
        return report
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            emulator.kill()
            emulator.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=20, help="sends in flight, as the worker's activity slots")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default=None)
    parser.add_argument("--profile", type=int, default=0, metavar="K", help="print the K costliest functions (cProfile)")
    parser.add_argument("--no-save", action="store_true", help="do not write benchmarks/results/send_cost.json")
    options = parser.parse_args(argv)
    backend_name = options.backend or ("postgresql" if postgres_reachable() else "sqlite")
    configure_logging("WARNING")  # as the benchmarks run the worker: a log line per send is a cost of its own
    with tempfile.TemporaryDirectory() as workdir:
        report = asyncio.run(measure(options.n, options.concurrency, backend_name, Path(workdir), options.profile))
    profiles = [report.pop(key, None) for key in ("profile_tottime", "profile_cumulative")]
    result = {"send_cost": report, "machine": machine()}
    if not options.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for text in profiles:
        if text:
            print(text)


if __name__ == "__main__":
    main()
