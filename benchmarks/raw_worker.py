"""Raw Temporal's bare worker as its own process, as the engine's worker is (``python -m worker``).

``python -m benchmarks.raw_worker ADDRESS TASK_QUEUE [NAMESPACE]``: polls the queue with the baseline workflows
(benchmarks/raw_workflow.py) and the no-op activity until SIGTERM or SIGINT. Kept apart from the
benchmark client so neither side's worker shares a process (and its CPU) with the client driving it.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Worker

from benchmarks.raw_workflow import RawBranchWorkflow, RawWorkflow, noop


async def serve(address: str, task_queue: str, namespace: str = "default") -> None:
    client = await Client.connect(address, namespace=namespace, data_converter=pydantic_data_converter)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[RawWorkflow, RawBranchWorkflow], activities=[noop]):
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    address, task_queue, *namespace = (argv if argv is not None else sys.argv[1:])[:3]
    asyncio.run(serve(address, task_queue, *namespace))
    gc.collect()  # as worker/main.py: free the client while Python is still whole


if __name__ == "__main__":
    main()
