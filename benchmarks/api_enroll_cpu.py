"""CPU per enrollment of the API process alone: ``POST /flows/{id}/enrollments`` as
benchmarks/enrollments.py's "api" batch sends them, without the rest of that run.

``python -m benchmarks.api_enroll_cpu [sqlite|postgresql] [N] [--rounds R] [--concurrency C] [--flow F]
[--plain-server]``:
the worker and the API run as deployed (benchmarks/deployed.py, one uvicorn process); each round
enrolls N fresh contacts in the send → 1 s → send flow with C requests in flight and reports the
API process's CPU milliseconds per enrollment (read from /proc) and the HTTP starts per second.
For before/after comparisons of the API's request path on a shared machine, where wall-clock rates
move with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks import deployed
from benchmarks.deployed import deployed_engine
from benchmarks.events import Stack
from benchmarks.flows import BULK_FLOW, SHORT_FLOW
from benchmarks.harness import Engine, add_flow, add_templates, backend, dev_server, engine_settings
from nurture.enrolling import Enroller
from nurture.logging import configure_logging

WARM_UP = 20


class PlainStack(Stack):
    """The API under uvicorn's pure-Python server (h11, asyncio's loop) even where httptools and
    uvloop are installed: the "before" side of a comparison."""

    def _spawn(self, name, command):
        if name == "api":
            command = command + ["--http", "h11", "--loop", "asyncio"]
        return super()._spawn(name, command)


async def measure(
    backend_name: str, n: int, rounds: int, concurrency: int, flow_name: str, profile: Path | None
) -> None:
    env = await dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="nurture-api-enroll-cpu-") as workdir:
            async with backend(backend_name, Path(workdir)) as b:
                tag = f"apicpu-{uuid.uuid4().hex[:6]}"
                settings = engine_settings(b.url, Path(workdir), tag)
                await add_templates(b.db)
                flow = await add_flow(b.db, SHORT_FLOW if flow_name == "short" else BULK_FLOW)
                async with deployed_engine(env.client, settings, Path(workdir), tag) as stack:
                    engine = Engine(env.client, b.db, settings, Enroller(env.client, settings), stack.api,
                                    {"short": flow}, tag)
                    gate = asyncio.Semaphore(concurrency)

                    async def one(contact) -> None:
                        async with gate:
                            await engine.enroll(flow, contact, "api")

                    # The first requests pay for imports, pools and the Temporal connection: not measured.
                    await asyncio.gather(*(one(c) for c in await engine.contacts(WARM_UP)))
                    cpus, rates = [], []
                    spy = None
                    if profile is not None:
                        # py-spy (pip install py-spy) samples the API process while the rounds run.
                        spy = subprocess.Popen(
                            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(stack.meter.pids["api"]),
                             "--rate", "200", "--format", {".json": "speedscope", ".txt": "raw"}.get(profile.suffix, "flamegraph"),
                             "-o", str(profile)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        )
                        await asyncio.sleep(1)
                    for r in range(rounds):
                        contacts = await engine.contacts(n)
                        before, wall = stack.meter.read(), time.perf_counter()
                        await asyncio.gather(*(one(c) for c in contacts))
                        wall = time.perf_counter() - wall
                        after = stack.meter.read()
                        cpu = (after["api"] - before["api"]) * 1000 / n
                        cpus.append(cpu)
                        rates.append(n / wall)
                        print(f"{backend_name} round {r + 1}: API {cpu:.2f} CPU ms per enrollment, "
                              f"{n / wall:.1f} starts/s", flush=True)
                        await asyncio.sleep(3)  # let the worker finish the round's workflows
                    if spy is not None:
                        spy.send_signal(signal.SIGINT)  # py-spy writes its output on an interrupt
                        spy.wait(timeout=60)
                    print(f"{backend_name}: median API {statistics.median(cpus):.2f} CPU ms per enrollment, "
                          f"{statistics.median(rates):.1f} starts/s over {rounds} rounds of {n}")
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", nargs="?", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("n", nargs="?", type=int, default=200, help="enrollments per round (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight (default %(default)s)")
    parser.add_argument("--flow", choices=("short", "asleep"), default="short",
                        help="send → 1 s → send (the enrollments benchmark's), or send then asleep for an hour "
                             "(less worker load on a busy machine)")
    parser.add_argument("--plain-server", action="store_true",
                        help="run uvicorn with --http h11 --loop asyncio (what it used without httptools/uvloop)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="py-spy profile of the API process over the rounds (.txt raw, .json speedscope, else svg)")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    if args.plain_server:
        deployed.Stack = PlainStack  # type: ignore[misc]
    asyncio.run(measure(args.backend, args.n, args.rounds, args.concurrency, args.flow, args.profile))
    gc.collect()  # as worker/main.py: free the Temporal client while Python is still whole


if __name__ == "__main__":
    main()
