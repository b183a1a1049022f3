"""Worker CPU per enrollment: N enrollments of send → 1 s delay → send against ``python -m worker``
in a process of its own, and the CPU that process used for them, read from /proc.

``python -m benchmarks.worker_cpu`` (``--help`` for the knobs) starts its own Temporal dev server,
a temporary SQLite database and, when reachable, a throw-away PostgreSQL schema. For each backend:
the worker starts (its own process, as deployed), warms up on a few enrollments, then N
enrollments are started through Enroller (``--concurrency`` at once) from this process and awaited
until closed; the worker's CPU (every thread, and its template render processes) is read before
and after. That is the number the all-N-closed case of benchmarks/enrollments.py loses on: on a
2-core machine the worker's CPU per enrollment bounds how fast N close. ``--raw`` measures the
bare worker of benchmarks/raw_worker.py on the same shape for comparison.

The worker's CPU is also split by thread kind (/proc/PID/task): Python's threads (the event loop,
where activities run, and the workflow task threads, where sandboxed workflow code runs) against
the SDK core's native threads. ``--profile DIR`` runs the worker under cProfile
(benchmarks/profiled_worker.py; each Python thread's own CPU clock) and prints the costliest
functions; cProfile slows the worker, so the CPU of a profiled run is not the one to report.

Use it before and after a change to the worker's path; the load average is printed with each run,
because on a shared machine CPU per item is steadier than wall-clock, not immune.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from temporalio.client import Client

from benchmarks.deployed import CpuMeter, raw_worker
from benchmarks.flows import SHORT_FLOW
from benchmarks.harness import (
    BACKENDS,
    Engine,
    add_flow,
    add_templates,
    backend,
    dev_server,
    engine_settings,
    machine,
    measure_batch,
    poll,
    postgres_reachable,
)
from benchmarks.processes import CLOCK_TICKS, PROC, stop_process
from benchmarks.raw_workflow import RAW_WORKFLOW, RawInput, RawResult
from benchmarks.scale import worker_environment, worker_polling
from nurture.enrolling import Enroller
from nurture.logging import configure_logging

REPO = Path(__file__).resolve().parent.parent
WARM_UP = 10


def thread_cpu(pid: int) -> Counter[str]:
    """CPU seconds so far of each kind of thread of ``pid``, by the thread's name (``comm``)."""
    used: Counter[str] = Counter()
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except FileNotFoundError:
        return used
    for task in tasks:
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        used[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def thread_split(before: Counter[str], after: Counter[str], items: int) -> dict[str, float]:
    """ms per item by thread name; a thread that ended meanwhile takes its CPU with it (rare)."""
    return {
        name: round((after[name] - before.get(name, 0.0)) * 1000 / items, 2)
        for name in sorted(after, key=lambda n: before.get(n, 0.0) - after[n])
        if after[name] - before.get(name, 0.0) > 0
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def engine_case(client: Client, name: str, workdir: Path, n: int, concurrency: int,
                      profile: Path | None) -> dict[str, Any]:
    async with backend(name, workdir) as b:
        tag = f"wcpu-{uuid.uuid4().hex[:8]}"
        settings = engine_settings(b.url, workdir / tag, tag)
        await add_templates(b.db)
        flow = await add_flow(b.db, SHORT_FLOW)
        env = worker_environment(settings, client.service_client.config.target_host)
        out = profile / f"worker-{name}.prof" if profile else None
        command = [sys.executable, "-m", "benchmarks.profiled_worker", str(out)] if out else [sys.executable, "-m", "worker"]
        log = (workdir / f"{tag}-worker.log").open("wb")
        worker = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            async def polling() -> bool:
                if worker.poll() is not None:
                    raise RuntimeError(f"the worker exited {worker.returncode}: {(workdir / f'{tag}-worker.log').read_text()[-3000:]}")
                return await worker_polling(client, settings.temporal_task_queue)

            await poll(polling, timeout=90, interval=0.2)
            engine = Engine(client, b.db, settings, Enroller(client, settings), None, {"short": flow}, tag)  # type: ignore[arg-type]
            # The first enrollments pay for the worker's start, the pool's connections, the render processes.
            warm = await engine.contacts(WARM_UP)
            await asyncio.gather(*[engine.handle(await engine.enroll(flow, c, "enroller")).result() for c in warm])
            contacts = await engine.contacts(n)

            async def start_one(i: int):
                workflow_id = await engine.enroll(flow, contacts[i], "enroller")
                return engine.handle(workflow_id).result

            meter = CpuMeter({"worker": worker.pid})
            load, threads, before = _load(), thread_cpu(worker.pid), meter.read()
            batch = await measure_batch(n, concurrency, start_one, lambda r: r.status == "completed" and r.emails_sent == 2)
            after, threads_after = meter.read(), thread_cpu(worker.pid)
            return {
                "backend": name,
                "n": n,
                "completed": batch.completed,
                "errors": batch.errors,
                "all_closed_s": batch.all_closed_s,
                "worker_cpu_ms_per_enrollment": CpuMeter.per_item_ms(before, after, n)["worker"],
                "benchmark_cpu_ms_per_enrollment": CpuMeter.per_item_ms(before, after, n)["benchmark"],
                "worker_threads_ms_per_enrollment": thread_split(threads, threads_after, n),
                "load_average_before": load,
                "load_average_after": _load(),
                "profiled": out is not None,
            }
        finally:
            stop_process(worker)
            log.close()


async def raw_case(client: Client, n: int, concurrency: int) -> dict[str, Any]:
    queue = f"wcpu-raw-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]
    async with raw_worker(client, queue) as meter:
        async def start(i: int, kind: str):
            handle = await client.start_workflow(
                RAW_WORKFLOW, RawInput(timer_seconds=1.0), id=f"wcpu-raw-{run}-{kind}-{i}", task_queue=queue,
                result_type=RawResult,
            )
            return handle.result

        await asyncio.gather(*[(await start(i, "warm"))() for i in range(WARM_UP)])
        load, before = _load(), meter.read()
        pid = meter.pids["worker"]
        threads = thread_cpu(pid)
        batch = await measure_batch(n, concurrency, lambda i: start(i, "batch"), lambda r: not r.finished_early)
        after = meter.read()
        return {
            "n": n,
            "completed": batch.completed,
            "all_closed_s": batch.all_closed_s,
            "worker_cpu_ms_per_workflow": CpuMeter.per_item_ms(before, after, n)["worker"],
            "worker_threads_ms_per_workflow": thread_split(threads, thread_cpu(pid), n),
            "load_average_before": load,
            "load_average_after": _load(),
        }


def profile_summary(path: Path, top: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()


async def run(options: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    env = await dev_server()
    try:
        report: dict[str, Any] = {"machine": machine(), "n": options.n, "concurrency": options.concurrency}
        if options.raw:
            report["raw"] = await raw_case(env.client, options.n, options.concurrency)
        names = [options.backend] if options.backend else [b for b in BACKENDS if b == "sqlite" or postgres_reachable()]
        report["engine"] = {}
        for name in names:
            report["engine"][name] = await engine_case(
                env.client, name, workdir, options.n, options.concurrency, options.profile
            )
        return report
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=200, help="enrollments measured per backend (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=50, help="starts in flight (default %(default)s)")
    parser.add_argument("--backend", choices=BACKENDS, help="one backend only (default: both, PostgreSQL if reachable)")
    parser.add_argument("--raw", action="store_true", help="also the bare worker on the same shape")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run the worker under cProfile, write DIR/worker-BACKEND.prof and print a summary")
    parser.add_argument("--top", type=int, default=35, help="functions in the profile summary (default %(default)s)")
    parser.add_argument("--output", type=Path, help="also write the JSON report here")
    options = parser.parse_args(argv)
    if options.profile:
        options.profile = options.profile.resolve()
        options.profile.mkdir(parents=True, exist_ok=True)
    configure_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="nurture-worker-cpu-") as workdir:
        report = asyncio.run(run(options, Path(workdir)))
    text = json.dumps(report, indent=2)
    print(text)
    if options.output:
        options.output.write_text(text + "\n")
    if options.profile:
        for name in report["engine"]:
            path = options.profile / f"worker-{name}.prof"
            if path.exists():
                print(f"\n--- {name}: {path}\n{profile_summary(path, options.top)}")
    gc.collect()  # as worker/main.py: free the Temporal client while Python is still whole


if __name__ == "__main__":
    main()
