"""Every activity given a heartbeat timeout heartbeats while it runs, whatever it is waiting on.

A worker that dies stops heartbeating, so Temporal hands its activities to another worker after
the heartbeat timeout (seconds) instead of the start-to-close timeout (minutes). Beating from
the worker process, not from the activity's own loop, means a slow SMTP server or a long page of
contacts never looks like a dead worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor


class KeepAliveInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _KeepAlive(next)


class _KeepAlive(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        timeout = activity.info().heartbeat_timeout
        if not timeout or not asyncio.iscoroutinefunction(input.fn):
            return await super().execute_activity(input)
        beating = asyncio.create_task(_beat(timeout.total_seconds() / 3))
        try:
            return await super().execute_activity(input)
        finally:
            beating.cancel()
            # A heartbeat that failed must not replace the activity's own result or error.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beating


async def _beat(every: float) -> None:
    # The first beat after a third of the timeout, not at the start: the server counts the timeout
    # from the start anyway, and most activities (a send: milliseconds) end before it, so they
    # cost no heartbeat call to the server at all.
    while True:
        await asyncio.sleep(every)
        activity.heartbeat()
