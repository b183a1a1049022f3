"""CPU per enrollment of the enrolling code alone: ``Enroller.enroll`` one by one, then one
``admit_many`` page (what a bulk page does), with no worker polling the queue the workflows start on.

``python -m benchmarks.enroll_cpu [sqlite|postgresql] [N] [--profile one|page]``: CPU time of this
process (``time.process_time``, the Temporal client's native threads included) per enrollment, and
with ``--profile`` the cProfile of one part. For before/after comparisons of the enrolling path on a
shared machine, where wall-clock rates move with the load.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import tempfile
import time
import uuid
from pathlib import Path

from sqlmodel import col, select

from benchmarks.flows import BULK_FLOW
from benchmarks.harness import add_flow, add_templates, backend, dev_server, engine_settings, insert_contacts
from nurture.enrolling import Enroller, active_version
from nurture.logging import configure_logging
from nurture.models import Contact, utcnow

WARM_UP = 10


async def measure(backend_name: str, n: int, profile: str | None) -> None:
    env = await dev_server()
    try:
        with tempfile.TemporaryDirectory(prefix="nurture-enroll-cpu-") as workdir:
            async with backend(backend_name, Path(workdir)) as b:
                tag = f"cpu-{uuid.uuid4().hex[:6]}"
                settings = engine_settings(b.url, Path(workdir), tag)
                await add_templates(b.db)
                flow = await add_flow(b.db, BULK_FLOW)
                await insert_contacts(b.db, tag, 0, 2 * n + WARM_UP, "cpu")
                async with b.db.session() as s:
                    contacts = list((await s.exec(select(Contact).order_by(col(Contact.id)))).all())
                enroller = Enroller(env.client, settings)
                one, page = contacts[WARM_UP:WARM_UP + n], contacts[WARM_UP + n:]
                for contact in contacts[:WARM_UP]:
                    async with b.db.session() as s:
                        await enroller.enroll(s, flow, contact)

                profiler = cProfile.Profile()
                if profile == "one":
                    profiler.enable()
                cpu, wall = time.process_time(), time.perf_counter()
                for contact in one:
                    async with b.db.session() as s:
                        await enroller.enroll(s, flow, contact)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                profiler.disable()
                print(f"{backend_name}: Enroller.enroll one by one: {cpu * 1000 / n:.2f} CPU ms per enrollment "
                      f"({n / wall:.1f} a second)")

                async with b.db.session() as s:
                    version = await active_version(s, flow)
                    if profile == "page":
                        profiler.enable()
                    cpu, wall = time.process_time(), time.perf_counter()
                    admitted = await enroller.admit_many(s, flow, version, page, at=utcnow())
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    profiler.disable()
                created = sum(a.created for a in admitted.admissions)
                if created != n:
                    raise RuntimeError(f"the page enrolled {created} of {n}")
                print(f"{backend_name}: admit_many, a page of {n}: {cpu * 1000 / n:.2f} CPU ms per enrollment "
                      f"({n / wall:.1f} a second)")
                if profile:
                    pstats.Stats(profiler).sort_stats("tottime").print_stats(40)
    finally:
        await env.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("backend", nargs="?", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("n", nargs="?", type=int, default=300, help="enrollments per part (default %(default)s)")
    parser.add_argument("--profile", choices=("one", "page"), help="print the cProfile of one part")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    asyncio.run(measure(args.backend, args.n, args.profile))
    gc.collect()  # as worker/main.py: free the Temporal client while Python is still whole


if __name__ == "__main__":
    main()
