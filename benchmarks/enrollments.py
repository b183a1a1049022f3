"""What an enrollment costs next to a bare Temporal workflow of the same shape, on one machine, in one run.

Run from the repository root: ``.venv/bin/python -m benchmarks.enrollments`` (``--help`` for the knobs).
It starts its own Temporal dev server (the ``temporal`` binary beside the venv's python, the project's
search attributes registered), a temporary SQLite database and, when reachable, a throw-away schema on
PostgreSQL at 127.0.0.1:5432. Only loopback is used.

Measured, for the raw baseline (benchmarks/raw_workflow.py) and for the engine (flows in
benchmarks/flows.py, started through Enroller and through the HTTP API). Each side runs as deployed:
the engine's worker (``python -m worker``) and its API (``uvicorn api.main:app``) are processes of
their own, and so is raw Temporal's bare worker (benchmarks/raw_worker.py); the benchmark process
only drives them (benchmarks/deployed.py). Each case also reports the CPU milliseconds per
enrollment that each process spent, read from /proc: steadier than wall-clock on a shared machine.

- start throughput: N workflows of the shape send → 1 s delay → send (raw: activity → 1 s timer →
  activity) started with ``--concurrency`` starts in flight; starts per second;
- completion: from the first start until the last workflow closed, and each workflow's own
  start-to-close time (p50/p95);
- signal round trip: signal a waiting workflow, poll its query until it shows the change (p50/p95);
  the engine's signal is a sales pause (then a resume) on an enrollment waiting in a long delay;
- event to exit: a goal event for an enrollment waiting in a long delay, until its workflow closed
  (p50/p95); the raw analogue is a signal that ends the wait and the workflow;
- bulk enrollment (benchmarks/bulk.py): ``POST /flows/{id}/bulk-enrollments`` of ``--bulk-n`` contacts
  at 1000/s, until every enrollment row and workflow exists, against as many raw starts; each side
  ``--bulk-rounds`` times, the median round reported;
- history (benchmarks/shapes.py): events and billable actions of one run per flow shape, read from
  the real histories (benchmarks/actions.py counts the actions);
- contact import (benchmarks/import_case.py), when benchmarks/imports.py exists;
- with ``--scale N`` (off by default; ``--scale-only`` skips the rest): N enrollments asleep in a
  one-day delay, worker and server memory on the way, goal-exit latency at N (benchmarks/scale.py).
- with ``--bulk-only`` nothing but the bulk case, on one ``--backend``, ``--bulk-rounds`` times with
  engine and raw alternating, each side of each round on a fresh database and in a namespace of its
  own; ``--other-contacts M`` contacts outside the audience are created first, as the earlier cases
  of a full run leave theirs. The medians go to benchmarks/results/bulk_only-BACKEND.json.

The tables and benchmarks/results/latest.json give absolute numbers, ratios engine / raw and the
targets with whether each is met. Timing claims live here, never in the test suite
(tests/test_benchmark_smoke.py only proves the script works).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlmodel import col, select
from temporalio.client import Client, WorkflowHandle
from temporalio.contrib.pydantic import pydantic_data_converter

from benchmarks.bulk import engine_bulk, engine_bulk_rounds, median_round, raw_starts
from benchmarks.deployed import CpuMeter, cpu_note, deployed_engine, raw_worker
from benchmarks.flows import BRANCH_FLOW, BULK_FLOW, GOAL_FLOW, SHORT_FLOW
from benchmarks.harness import (
    dev_server,
    BACKENDS,
    LONG_WAIT,
    machine,
    GOAL_EVENT,
    Backend,
    Batch,
    Engine,
    add_flow,
    add_templates,
    backend,
    engine_settings,
    guarded,
    insert_contacts,
    latency_ms,
    measure_batch,
    poll,
    postgres_reachable,
    ratio,
)
from benchmarks.import_case import engine_import
from benchmarks.raw_workflow import (
    RAW_WORKFLOW,
    FinishSignal,
    Pings,
    PingSignal,
    PingsQuery,
    RawInput,
    RawResult,
)
from benchmarks.scale import measure_scale
from benchmarks.shapes import SHAPES, engine_branch_runs, history_ratios, history_sample, raw_branch_runs
from benchmarks.targets import evaluate
from nurture.contracts import PauseSignal, ResumeSignal
from nurture.enrolling import Enroller
from nurture.logging import configure_logging
from nurture.models import Message, utcnow
from nurture.settings import Settings

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "latest.json"


@dataclass
class Options:
    n: int = 200
    signal_samples: int = 50
    event_samples: int = 50
    concurrency: int = 50
    postgres: bool = True
    bulk_n: int = 1000
    bulk_rate: float = 1000.0
    # Raw starts to compare bulk enrollment with: the engine's own starts in flight by default.
    bulk_concurrency: int | None = None
    history_samples: int = 3
    import_rows: int = 10_000
    scale: int = 0
    scale_goal_samples: int = 20
    scale_only: bool = False
    bulk_only: bool = False
    backend: str = "postgresql"
    bulk_rounds: int = 3
    other_contacts: int = 0


# --- raw Temporal --------------------------------------------------------------------


def bulk_concurrency(options: Options) -> int:
    """As many raw starts in flight as the engine's bulk enrollment keeps (its setting, when it has one)."""
    if options.bulk_concurrency:
        return options.bulk_concurrency
    field = Settings.model_fields.get("enrollment_start_concurrency")
    return int(field.default) if field is not None else options.concurrency


async def measure_raw(client: Client, options: Options) -> dict[str, Any]:
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    run = uuid.uuid4().hex[:8]

    async def start(i: int, timer: float, kind: str) -> WorkflowHandle:
        return await client.start_workflow(
            RAW_WORKFLOW, RawInput(timer_seconds=timer), id=f"bench-raw-{run}-{kind}-{i}",
            task_queue=queue, result_type=RawResult,
        )

    async def waiting(handle: WorkflowHandle) -> None:
        async def ready() -> bool:
            return (await handle.query("pings", PingsQuery(), result_type=Pings)).waiting

        await poll(ready)

    closed: dict[str, list[str]] = {}
    # Its own process, as the engine's worker: the benchmark client's CPU is not the worker's.
    async with raw_worker(client, queue) as meter:
        # Warm up, as the engine does: the first workflow pays for the worker's start.
        await (await start(0, 0.01, "warm-up")).result()

        async def start_short(i: int):
            handle = await start(i, 1.0, "batch")
            closed.setdefault("send_delay_send", []).append(handle.id)
            return handle.result

        before = meter.read()
        batch = await measure_batch(
            options.n, options.concurrency, start_short, lambda r: isinstance(r, RawResult) and not r.finished_early
        )
        batch_cpu = CpuMeter.per_item_ms(before, meter.read(), options.n)

        # Signal round trip, on workflows waiting in their (long) timer.
        pool = [await start(i, LONG_WAIT.total_seconds(), "signal") for i in range(min(10, options.signal_samples))]
        for handle in pool:
            await waiting(handle)
        round_trips = []
        for i in range(options.signal_samples):
            handle = pool[i % len(pool)]
            t0 = time.perf_counter()
            await handle.signal("ping", PingSignal(value=i))

            async def seen(handle=handle, i=i) -> bool:
                return (await handle.query("pings", PingsQuery(), result_type=Pings)).last == i

            await poll(seen)
            round_trips.append(time.perf_counter() - t0)
        for handle in pool:
            await handle.terminate("benchmark done")

        # Signal to close: the raw analogue of a goal event.
        exits = []
        closers = [await start(i, LONG_WAIT.total_seconds(), "exit") for i in range(options.event_samples)]
        for handle in closers:
            await waiting(handle)
        exited_early = 0
        for handle in closers:
            t0 = time.perf_counter()
            await handle.signal("finish", FinishSignal(reason="benchmark"))
            exited_early += (await handle.result()).finished_early
            exits.append(time.perf_counter() - t0)
        closed["delay_goal_exit"] = [h.id for h in closers]

        closed["wait_for_event_branch"] = await raw_branch_runs(client, queue, options.history_samples)
        before = meter.read()
        starts = median_round(
            [await raw_starts(client, queue, options.bulk_n, bulk_concurrency(options)) for _ in range(options.bulk_rounds)],
            "starts_per_s",
        )
        starts["cpu_ms_per_start"] = CpuMeter.per_item_ms(before, meter.read(), options.bulk_n * options.bulk_rounds)

    return {
        "batch": asdict(batch) | {"cpu_ms_per_workflow": batch_cpu},
        "signal_round_trip": latency_ms(round_trips),
        "event_to_exit": latency_ms(exits) | {"exited": exited_early},
        "starts": starts,
        "history": {
            shape: await history_sample(client, closed.get(shape, []), options.history_samples) for shape in SHAPES
        },
    }


# --- the engine -------------------------------------------------------------------------


async def engine_batch(engine: Engine, meter: CpuMeter, options: Options, via: str) -> dict[str, Any]:
    contacts = await engine.contacts(options.n)
    workflow_ids: list[str] = []

    async def start_one(i: int):
        workflow_id = await engine.enroll(engine.flows["short"], contacts[i], via)
        workflow_ids.append(workflow_id)
        return engine.handle(workflow_id).result

    before = meter.read()
    batch: Batch = await measure_batch(
        options.n, options.concurrency, start_one, lambda r: r.status == "completed" and r.emails_sent == 2
    )
    cpu = CpuMeter.per_item_ms(before, meter.read(), options.n)
    engine.closed.setdefault("send_delay_send", []).extend(workflow_ids)
    async with engine.db.session() as s:
        sent = len((await s.exec(select(Message.id).where(col(Message.workflow_id).in_(workflow_ids)))).all())
    return asdict(batch) | {"emails_sent": sent, "cpu_ms_per_enrollment": cpu}


async def engine_signal_round_trip(engine: Engine, options: Options) -> dict[str, Any]:
    pool = await engine.waiting(engine.flows["goal"], min(10, options.signal_samples))
    paused = [False] * len(pool)
    round_trips = []
    for i in range(options.signal_samples):
        k = i % len(pool)
        handle = pool[k][1]
        t0 = time.perf_counter()
        if paused[k]:
            await handle.signal("resume", ResumeSignal(resumed_by="benchmark", reason="done"))
        else:
            until = utcnow() + LONG_WAIT
            await handle.signal("pause", PauseSignal(until=until, reason="benchmark", paused_by="benchmark"))
        paused[k] = not paused[k]

        async def seen(handle=handle, want=paused[k]) -> bool:
            return ((await engine.state(handle)).paused is not None) == want

        await poll(seen)
        round_trips.append(time.perf_counter() - t0)
    for _, handle in pool:
        await handle.terminate("benchmark done")
    return latency_ms(round_trips)


async def engine_event_to_exit(engine: Engine, options: Options, via: str) -> dict[str, Any]:
    waiting = await engine.waiting(engine.flows["goal"], options.event_samples)
    exits, goal_met = [], 0
    for contact, handle in waiting:
        t0 = time.perf_counter()
        await engine.event(contact.id, GOAL_EVENT, via)
        result = await handle.result()
        exits.append(time.perf_counter() - t0)
        goal_met += result.exit_reason == "goal_met"
    engine.closed.setdefault("delay_goal_exit", []).extend(h.id for _, h in waiting)
    return latency_ms(exits) | {"exited": goal_met}


async def engine_history(engine: Engine, options: Options) -> dict[str, Any]:
    engine.closed["wait_for_event_branch"] = await engine_branch_runs(
        engine, engine.flows["branch"], options.history_samples
    )
    return {
        shape: await history_sample(engine.client, engine.closed.get(shape, []), options.history_samples)
        for shape in SHAPES
    }


async def measure_engine(client: Client, b: Backend, data_dir: Path, options: Options) -> dict[str, Any]:
    """The engine on one database, as deployed (the worker and the API each its own process,
    benchmarks/deployed.py): every case, in an order that leaves the server quiet for the next."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    settings = engine_settings(b.url, data_dir, tag)
    db = b.db
    await add_templates(db)
    flows = {name: await add_flow(db, definition) for name, definition in (
        ("short", SHORT_FLOW), ("goal", GOAL_FLOW), ("branch", BRANCH_FLOW), ("bulk", BULK_FLOW),
    )}
    results: dict[str, Any] = {}
    async with deployed_engine(client, settings, data_dir, tag) as stack:
        engine = Engine(client, db, settings, Enroller(client, settings), stack.api, flows, tag)
        # The first enrollment pays for the worker's start and the template render processes: not measured.
        warm_up = (await engine.contacts(1))[0]
        await engine.handle(await engine.enroll(flows["short"], warm_up, "enroller")).result()
        for via in ("enroller", "api"):
            results[via] = {"batch": await engine_batch(engine, stack.meter, options, via)}
        results["signal_round_trip"] = await engine_signal_round_trip(engine, options)
        for via in ("enroller", "api"):
            results[via]["event_to_exit"] = await engine_event_to_exit(engine, options, via)
        results["history"] = await guarded(engine_history(engine, options))
        bulk_flows = [flows["bulk"]] + [await add_flow(db, BULK_FLOW) for _ in range(options.bulk_rounds - 1)]
        before = stack.meter.read()
        results["bulk"] = await guarded(engine_bulk_rounds(engine, bulk_flows, options.bulk_n, options.bulk_rate))
        if "error" not in results["bulk"]:
            # From the POST until every enrollment sleeps in its delay (rows, starts, first tasks).
            results["bulk"]["cpu_ms_per_enrollment"] = CpuMeter.per_item_ms(
                before, stack.meter.read(), options.bulk_n * options.bulk_rounds
            )
        results["import"] = await engine_import(str(stack.api.base_url), db, options.import_rows)
    return results


async def on_backend(name: str, client: Client, workdir: Path, options: Options) -> dict[str, Any]:
    async with backend(name, workdir) as b:
        return await measure_engine(client, b, workdir / name, options)


# --- bulk enrollment only ---------------------------------------------------------------


async def _client(address: str, namespace: str) -> Client:
    return await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def bulk_round_engine(address: str, namespace: str, backend_name: str, workdir: Path, options: Options) -> dict[str, Any]:
    """One bulk enrollment on a fresh database, the engine deployed in ``namespace``: the
    ``other_contacts`` first (not in the audience), then the audience, then the request."""
    client = await _client(address, namespace)
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    async with backend(backend_name, workdir) as b:
        settings = engine_settings(b.url, workdir / tag, tag, temporal_namespace=namespace)
        await add_templates(b.db)
        flows = {"short": await add_flow(b.db, SHORT_FLOW), "bulk": await add_flow(b.db, BULK_FLOW)}
        await insert_contacts(b.db, f"{tag}-other", 0, options.other_contacts, company="other")
        async with deployed_engine(client, settings, workdir / tag, tag) as stack:
            engine = Engine(client, b.db, settings, Enroller(client, settings), stack.api, flows, tag)
            # As in the full run, the worker has run an enrollment before the bulk request.
            warm_up = (await engine.contacts(1))[0]
            await engine.handle(await engine.enroll(flows["short"], warm_up, "enroller")).result()
            load, before = _load(), stack.meter.read()
            measured = await engine_bulk(engine, flows["bulk"], options.bulk_n, options.bulk_rate)
            measured["cpu_ms_per_enrollment"] = CpuMeter.per_item_ms(before, stack.meter.read(), options.bulk_n)
    return measured | {"load_before": load, "load_after": _load()}


async def bulk_round_raw(address: str, namespace: str, options: Options) -> dict[str, Any]:
    """As many bare workflows started (the engine's starts in flight) in ``namespace``, its worker warm."""
    client = await _client(address, namespace)
    queue = f"bench-raw-{uuid.uuid4().hex[:8]}"
    async with raw_worker(client, queue) as meter:
        warm_up = await client.start_workflow(
            RAW_WORKFLOW, RawInput(timer_seconds=0.01), id=f"{queue}-warm-up", task_queue=queue, result_type=RawResult
        )
        await warm_up.result()
        load, before = _load(), meter.read()
        starts = await raw_starts(client, queue, options.bulk_n, bulk_concurrency(options))
        starts["cpu_ms_per_start"] = CpuMeter.per_item_ms(before, meter.read(), options.bulk_n)
    return starts | {"load_before": load, "load_after": _load()}


async def run_bulk_only(options: Options, workdir: Path) -> dict[str, Any]:
    """``bulk_rounds`` rounds of engine bulk enrollment and raw starts, the order alternating, each
    side in a namespace of its own (and the engine on a fresh database); medians over the rounds."""
    namespaces = [f"bench-{side}-{k}" for k in range(options.bulk_rounds) for side in ("engine", "raw")]
    env = await dev_server(namespaces)
    address = env.client.service_client.config.target_host
    rounds: list[dict[str, Any]] = []
    try:
        for k in range(options.bulk_rounds):
            measured: dict[str, Any] = {}
            for side in (("engine", "raw") if k % 2 == 0 else ("raw", "engine")):
                namespace = f"bench-{side}-{k}"
                # A round that fails is reported as such; the other rounds' numbers stand.
                measured[side] = await guarded(
                    bulk_round_engine(address, namespace, options.backend, workdir, options) if side == "engine"
                    else bulk_round_raw(address, namespace, options)
                )
            measured["ratio"] = ratio(measured["engine"].get("enrollments_per_s"), measured["raw"].get("starts_per_s"))
            rounds.append(measured)
    finally:
        await env.shutdown()
    done = [r for r in rounds if r["ratio"] is not None]
    if not done:
        raise RuntimeError(f"no round completed: {rounds}")
    engine_rate = statistics.median(r["engine"]["enrollments_per_s"] for r in done)
    raw_rate = statistics.median(r["raw"]["starts_per_s"] for r in done)
    summary = {
        "rounds_completed": len(done),
        "engine_enrollments_per_s": engine_rate,
        "raw_starts_per_s": raw_rate,
        "ratio_of_medians": ratio(engine_rate, raw_rate),
        "median_ratio": round(statistics.median(r["ratio"] for r in done), 2),
        "rows_s": round(statistics.median(r["engine"]["rows_s"] for r in done), 3),
        "workflows_s": round(statistics.median(r["engine"]["workflows_s"] for r in done), 3),
    }
    target = [row for row in evaluate(options.backend, {"bulk_enrollments_per_s": summary["median_ratio"]})
              if row["ratio"] is not None]
    return {"machine": machine(), "options": asdict(options), "rounds": rounds, "median": summary, "targets": target}


def bulk_only_table(report: dict[str, Any]) -> str:
    options, median = report["options"], report["median"]
    lines = [
        f"bulk enrollment only, {options['backend']}: N={options['bulk_n']} at {options['bulk_rate']}/s, "
        f"{options['other_contacts']} other contacts first, {len(report['rounds'])} rounds (engine and raw alternating)",
        f"{'round':>5} {'first':>6} {'raw starts/s':>13} {'engine enr/s':>13} {'ratio':>6} {'rows s':>7} "
        f"{'workflows s':>12} {'load (1 min) engine / raw':>27}",
    ]
    for k, r in enumerate(report["rounds"]):
        engine, raw = r["engine"], r["raw"]
        if r["ratio"] is None:
            lines.append(f"{k + 1:>5} failed: {engine.get('error') or raw.get('error')}")
            continue
        lines.append(
            f"{k + 1:>5} {('engine' if k % 2 == 0 else 'raw'):>6} {raw['starts_per_s']:>13} {engine['enrollments_per_s']:>13} "
            f"{_cell(r['ratio'], 6)} {engine['rows_s']:>7} {engine['workflows_s']:>12} "
            f"{str(engine['load_before'][0]) + ' / ' + str(raw['load_before'][0]):>27}"
        )
    lines.append(
        f"{'median':>5} {'':>6} {median['raw_starts_per_s']:>13} {median['engine_enrollments_per_s']:>13} "
        f"{_cell(median['median_ratio'], 6)} {median['rows_s']:>7} {median['workflows_s']:>12}"
    )
    for row in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        lines.append(f"target: {row['target']} {row['limit']}: median ratio {row['ratio']} {verdict}")
    return "\n".join(lines)


# --- the report -------------------------------------------------------------------------


def ratios(raw: dict[str, Any], engine: dict[str, Any]) -> dict[str, Any]:
    """engine / raw for every metric: above 1 is slower for times, below 1 is slower for throughput."""
    out: dict[str, Any] = {}
    for via in ("enroller", "api"):
        batch, base = engine[via]["batch"], raw["batch"]
        out[via] = {
            "starts_per_s": ratio(batch["starts_per_s"], base["starts_per_s"]),
            "all_closed_s": ratio(batch["all_closed_s"], base["all_closed_s"]),
            "per_workflow_p50": ratio(batch["per_workflow"]["p50_ms"], base["per_workflow"]["p50_ms"]),
            "per_workflow_p95": ratio(batch["per_workflow"]["p95_ms"], base["per_workflow"]["p95_ms"]),
            "event_to_exit_p50": ratio(engine[via]["event_to_exit"]["p50_ms"], raw["event_to_exit"]["p50_ms"]),
            "event_to_exit_p95": ratio(engine[via]["event_to_exit"]["p95_ms"], raw["event_to_exit"]["p95_ms"]),
        }
    out["signal_round_trip_p50"] = ratio(engine["signal_round_trip"]["p50_ms"], raw["signal_round_trip"]["p50_ms"])
    out["signal_round_trip_p95"] = ratio(engine["signal_round_trip"]["p95_ms"], raw["signal_round_trip"]["p95_ms"])
    if "bulk" in engine and "starts" in raw:
        out["bulk_enrollments_per_s"] = ratio(engine["bulk"].get("enrollments_per_s"), raw["starts"]["starts_per_s"])
    if "history" in engine and "history" in raw and "error" not in engine["history"]:
        out["history"] = history_ratios(raw["history"], engine["history"])
    return out


def _cell(value: Any, width: int) -> str:
    return f"{'—' if value is None else value:>{width}}"


def engine_table(report: dict[str, Any], backend_name: str) -> list[str]:
    raw, engine = report["raw"], report["engine"][backend_name]
    r = report["ratios"][backend_name]
    rows = [
        ("completed as expected", raw["batch"]["completed"], "completed", lambda e: e["batch"]["completed"]),
        ("starts/s", raw["batch"]["starts_per_s"], "starts_per_s", lambda e: e["batch"]["starts_per_s"]),
        ("all N closed (s)", raw["batch"]["all_closed_s"], "all_closed_s", lambda e: e["batch"]["all_closed_s"]),
        ("start→close p50 (ms)", raw["batch"]["per_workflow"]["p50_ms"], "per_workflow_p50",
         lambda e: e["batch"]["per_workflow"]["p50_ms"]),
        ("start→close p95 (ms)", raw["batch"]["per_workflow"]["p95_ms"], "per_workflow_p95",
         lambda e: e["batch"]["per_workflow"]["p95_ms"]),
        ("event→exit p50 (ms)", raw["event_to_exit"]["p50_ms"], "event_to_exit_p50",
         lambda e: e["event_to_exit"]["p50_ms"]),
        ("event→exit p95 (ms)", raw["event_to_exit"]["p95_ms"], "event_to_exit_p95",
         lambda e: e["event_to_exit"]["p95_ms"]),
    ]
    lines = [f"\nengine on {backend_name} (N={report['options']['n']}; ratio = engine / raw)"]
    lines.append(f"{'metric':40} {'raw':>9} {'Enroller':>9} {'ratio':>6} {'HTTP API':>9} {'ratio':>6}")
    for label, base, key, pick in rows:
        lines.append(
            f"{label:40} {_cell(base, 9)} {_cell(pick(engine['enroller']), 9)} {_cell(r['enroller'].get(key), 6)} "
            f"{_cell(pick(engine['api']), 9)} {_cell(r['api'].get(key), 6)}"
        )
    for pct in ("p50", "p95"):
        lines.append(
            f"{'signal round trip ' + pct + ' (ms)':40} {_cell(raw['signal_round_trip'][pct + '_ms'], 9)} "
            f"{_cell(engine['signal_round_trip'][pct + '_ms'], 9)} {_cell(r['signal_round_trip_' + pct], 6)}"
        )
    raw_cpu = raw["batch"].get("cpu_ms_per_workflow", {})
    for via in ("enroller", "api"):
        cpu = engine[via]["batch"].get("cpu_ms_per_enrollment")
        if cpu:
            lines.append(
                f"{'CPU ms per enrollment, batch, ' + via:40} raw worker {raw_cpu.get('worker')}; "
                f"engine {cpu_note(cpu)}"
            )
    for via in ("enroller", "api"):
        for error, count in engine[via]["batch"].get("errors", {}).items():
            lines.append(f"  {via} batch: {count} × {error}")
    if "error" in engine.get("bulk", {}):
        lines.append(f"{'bulk enrollment':40} failed: {engine['bulk']['error']}")
    elif "bulk" in engine:
        bulk, starts = engine["bulk"], raw["starts"]
        lines.append(
            f"{'bulk enrollments/s (N=' + str(bulk['n']) + ')':40} {starts['starts_per_s']:>9} "
            f"{bulk['enrollments_per_s']:>9} {_cell(r.get('bulk_enrollments_per_s'), 6)}"
            f"   rows after {bulk['rows_s']} s, workflows after {bulk['workflows_s']} s"
        )
        if "rounds_enrollments_per_s" in bulk and "rounds_starts_per_s" in starts:
            lines.append(
                f"{'  bulk rounds (median above)':40} raw {starts['rounds_starts_per_s']}; "
                f"engine {bulk['rounds_enrollments_per_s']}"
            )
        if bulk.get("cpu_ms_per_enrollment"):
            lines.append(
                f"{'CPU ms per enrollment, bulk':40} raw worker {starts.get('cpu_ms_per_start', {}).get('worker')}; "
                f"engine {cpu_note(bulk['cpu_ms_per_enrollment'])}"
            )
    if "error" in engine.get("history", {}):
        lines.append(f"{'history':40} failed: {engine['history']['error']}")
    for shape, label in SHAPES.items():
        e, base = engine.get("history", {}).get(shape, {}), raw.get("history", {}).get(shape, {})
        if not (e.get("samples") and base.get("samples")):
            continue
        shape_ratios = r.get("history", {}).get(shape, {})
        for what in ("events", "actions"):
            name = "history events" if what == "events" else "billable actions"
            lines.append(
                f"{name + ', ' + shape:40} {base[what]:>9} {e[what]:>9} {_cell(shape_ratios.get(what), 6)}"
                + (f"   {label}" if what == "events" else "")
            )
    if "history" in engine:
        costly = engine["history"].get("send_delay_send", {}).get("activities")
        if costly:
            lines.append(f"{'  activities, send_delay_send':40} " + ", ".join(f"{k} {v}" for k, v in costly.items()))
    imported = engine.get("import")
    if imported is not None:
        detail = ", ".join(
            f"{k} {v['rows_per_s']} rows/s" if isinstance(v, dict) and "rows_per_s" in v else f"{k} {v}"
            for k, v in imported.items() if k != "status"
        )
        lines.append(f"{'contact import':40} {imported['status']}: {detail}")
    return lines


def targets_table(report: dict[str, Any]) -> list[str]:
    backends = list(report.get("targets", {}))
    if not backends:
        return []
    lines = ["\ntargets (ratio engine / raw)"]
    lines.append(f"{'target':44} " + " ".join(f"{b:>22}" for b in backends))
    labels = [row["target"] for row in report["targets"][backends[0]]]
    for label in labels:
        cells = []
        for b in backends:
            row = next((x for x in report["targets"][b] if x["target"] == label), None)
            if row is None:
                cells.append(f"{'':>22}")
                continue
            verdict = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
            cell = f"{_cell(row['ratio'], 0)} ({row['limit']}) {verdict}"
            cells.append(f"{cell:>22}")
        lines.append(f"{label:44} " + " ".join(cells))
    return lines


def scale_table(scale: dict[str, Any]) -> list[str]:
    lines = [f"\nscale run on {scale['backend']}: {scale['enrollments']} enrollments asleep in a 1-day delay"]
    lines.append(f"{'enrollments':>12} {'step enr/s':>11} {'worker RSS MiB':>15} {'(+render)':>10} {'server RSS MiB':>15}")
    for point in scale["points"]:
        lines.append(
            f"{point['enrollments']:>12} {_cell(point.get('step_enrollments_per_s'), 11)} "
            f"{_cell(point['worker_rss_mib'], 15)} {_cell(point['worker_tree_rss_mib'], 10)} "
            f"{_cell(point['server_rss_mib'], 15)}"
        )
    goal = scale["goal_exit_at_scale"]
    lines.append(f"goal event → closed at {scale['enrollments']}: p50 {goal['p50_ms']} ms, p95 {goal['p95_ms']} ms "
                 f"({goal['exited']}/{goal['samples']} exited on the goal)")
    return lines


def table(report: dict[str, Any]) -> str:
    lines: list[str] = []
    for backend_name in report.get("engine", {}):
        lines += engine_table(report, backend_name)
    lines += targets_table(report)
    if report.get("scale"):
        lines += scale_table(report["scale"])
    return "\n".join(lines)


# --- the run -------------------------------------------------------------------------------


async def run(options: Options, workdir: Path) -> dict[str, Any]:
    env = await dev_server()
    with_postgres = options.postgres and postgres_reachable()
    try:
        report: dict[str, Any] = {"machine": machine(), "options": asdict(options)}
        if not options.scale_only:
            report["raw"] = await measure_raw(env.client, options)
            report["engine"] = {}
            for name in BACKENDS:
                if name == "sqlite" or with_postgres:
                    report["engine"][name] = await on_backend(name, env.client, workdir, options)
            report["ratios"] = {name: ratios(report["raw"], e) for name, e in report["engine"].items()}
            report["targets"] = {name: evaluate(name, r) for name, r in report["ratios"].items()}
        if options.scale:
            report["scale"] = await measure_scale(
                env.client, workdir, options.scale, options.bulk_rate, options.scale_goal_samples,
                "postgresql" if with_postgres else "sqlite",
            )
        return report
    finally:
        await env.shutdown()


def parse(argv: list[str] | None = None) -> tuple[Options, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=Options.n, help="workflows per batch (default %(default)s)")
    parser.add_argument("--signal-samples", type=int, default=Options.signal_samples)
    parser.add_argument("--event-samples", type=int, default=Options.event_samples)
    parser.add_argument("--concurrency", type=int, default=Options.concurrency, help="starts in flight at once")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is reachable")
    parser.add_argument("--bulk-n", type=int, default=Options.bulk_n, help="contacts bulk-enrolled (default %(default)s)")
    parser.add_argument("--bulk-rate", type=float, default=Options.bulk_rate, help="rate asked of bulk enrollment")
    parser.add_argument("--bulk-concurrency", type=int, default=None,
                        help="raw starts in flight to compare bulk enrollment with "
                             "(default: the engine's NURTURE_ENROLLMENT_START_CONCURRENCY default)")
    parser.add_argument("--history-samples", type=int, default=Options.history_samples,
                        help="histories read per flow shape (default %(default)s)")
    parser.add_argument("--import-rows", type=int, default=Options.import_rows, help="rows for the contact import case")
    parser.add_argument("--scale", type=int, default=Options.scale, metavar="N",
                        help="also enroll N contacts into a 1-day delay and read memory on the way (e.g. 20000)")
    parser.add_argument("--scale-goal-samples", type=int, default=Options.scale_goal_samples)
    parser.add_argument("--scale-only", action="store_true",
                        help="only the scale run; its section replaces the one in --output, the rest is kept "
                             "(a run without --scale keeps the scale section it finds there)")
    parser.add_argument("--bulk-only", action="store_true",
                        help="only bulk enrollment against raw starts, --bulk-rounds times on --backend "
                             "(results in benchmarks/results/bulk_only-BACKEND.json unless --output)")
    parser.add_argument("--backend", choices=BACKENDS, default=Options.backend, help="the database of --bulk-only")
    parser.add_argument("--bulk-rounds", type=int, default=Options.bulk_rounds,
                        help="rounds of the bulk case, the median reported; with --bulk-only, engine and raw "
                             "alternating (default %(default)s)")
    parser.add_argument("--bulk-size", type=int, dest="bulk_n", default=argparse.SUPPRESS,
                        help="the same as --bulk-n")
    parser.add_argument("--other-contacts", type=int, default=Options.other_contacts,
                        help="contacts outside the audience created before it, with --bulk-only (default %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help=f"where the JSON goes (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.scale_only and not args.scale:
        parser.error("--scale-only needs --scale N")
    if args.bulk_only and args.scale:
        parser.error("--bulk-only runs the bulk case alone: no --scale")
    if args.bulk_rounds < 1:
        parser.error("--bulk-rounds must be at least 1")
    options = Options(
        n=args.n, signal_samples=args.signal_samples, event_samples=args.event_samples, concurrency=args.concurrency,
        postgres=not args.no_postgres, bulk_n=args.bulk_n, bulk_rate=args.bulk_rate,
        bulk_concurrency=args.bulk_concurrency, history_samples=args.history_samples, import_rows=args.import_rows,
        scale=args.scale, scale_goal_samples=args.scale_goal_samples, scale_only=args.scale_only,
        bulk_only=args.bulk_only, backend=args.backend, bulk_rounds=args.bulk_rounds, other_contacts=args.other_contacts,
    )
    if args.output is not None:
        return options, args.output
    return options, (REPO / "benchmarks" / "results" / f"bulk_only-{args.backend}.json" if args.bulk_only else RESULTS)


def merged(report: dict[str, Any], output: Path, options: Options) -> dict[str, Any]:
    """Runs of the two kinds keep each other's results: a scale-only run keeps the rest, a run
    without the scale run keeps the last scale section (``scale_machine`` says where it ran)."""
    if not output.exists():
        return report
    previous = json.loads(output.read_text())
    if options.scale_only:
        return previous | {"scale": report["scale"], "scale_machine": report["machine"]}
    if "scale" not in report and "scale" in previous:
        return report | {"scale": previous["scale"], "scale_machine": previous.get("scale_machine", previous["machine"])}
    if "scale" in report:
        return report | {"scale_machine": report["machine"]}
    return report


def main(argv: list[str] | None = None) -> None:
    options, output = parse(argv)
    configure_logging("WARNING")
    if options.bulk_only:
        with tempfile.TemporaryDirectory(prefix="nurture-bench-bulk-") as workdir:
            report = asyncio.run(run_bulk_only(options, Path(workdir)))
        print(bulk_only_table(report))
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwritten to {output}")
        return
    with tempfile.TemporaryDirectory(prefix="nurture-bench-") as workdir:
        report = asyncio.run(run(options, Path(workdir)))
    print(table(report))
    report = merged(report, output, options)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwritten to {output}")


if __name__ == "__main__":
    main()
