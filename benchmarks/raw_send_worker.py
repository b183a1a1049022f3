"""Raw Temporal's side of benchmarks/send_rate.py: a bare worker as its own process, in one of two roles.

    python -m benchmarks.raw_send_worker workflows ADDRESS TASK_QUEUE MAX_CACHED_WORKFLOWS
    python -m benchmarks.raw_send_worker sends ADDRESS SEND_QUEUE RATE PROVIDER_URL API_KEY

``workflows`` runs RawSendWorkflow (benchmarks/raw_workflow.py: asleep until the due instant, then
one activity on the send queue). ``sends`` runs that activity with Temporal's task-queue rate limit
at RATE a second (0: none), as the engine's send worker does: it posts SendGrid's v3 Mail Send
request with our message id in ``custom_args`` to the provider emulator, and answers a 429 with a
retryable error that waits out its Retry-After. Polls until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from datetime import timedelta

import httpx
from temporalio import activity
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from benchmarks.raw_workflow import RAW_SEND_ACTIVITY, RawSendRequest, RawSendWorkflow


class RawSender:
    def __init__(self, http: httpx.AsyncClient, api_key: str):
        self.http = http
        self.api_key = api_key

    @activity.defn(name=RAW_SEND_ACTIVITY)
    async def send(self, request: RawSendRequest) -> str:
        body = {
            "personalizations": [{"to": [{"email": request.to}]}],
            "from": {"email": "bench@example.com"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "Hello"}, {"type": "text/html", "value": "<p>Hello</p>"}],
            "headers": {"Message-ID": f"<{request.message_id}@bench.example.com>"},
            "custom_args": {"nurture_message_id": request.message_id},
        }
        response = await self.http.post("/v3/mail/send", json=body, headers={"Authorization": f"Bearer {self.api_key}"})
        if response.status_code == 429:
            wait = float(response.headers.get("retry-after") or 1)
            raise ApplicationError("throttled", type="Throttled", next_retry_delay=timedelta(seconds=wait))
        response.raise_for_status()
        return response.headers.get("x-message-id", "")


async def serve(role: str, address: str, task_queue: str, *rest: str) -> None:
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if role == "workflows":
        (cached,) = rest
        async with Worker(client, task_queue=task_queue, workflows=[RawSendWorkflow], max_cached_workflows=int(cached)):
            await stop.wait()
        return
    rate, url, api_key = rest
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        sender = RawSender(http, api_key)
        async with Worker(
            client, task_queue=task_queue, activities=[sender.send],
            max_task_queue_activities_per_second=float(rate) or None,
        ):
            await stop.wait()


def main(argv: list[str] | None = None) -> None:
    role, address, task_queue, *rest = argv if argv is not None else sys.argv[1:]
    asyncio.run(serve(role, address, task_queue, *rest))
    gc.collect()  # as worker/main.py: free the client while Python is still whole


if __name__ == "__main__":
    main()
