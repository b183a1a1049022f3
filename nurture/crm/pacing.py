"""Pacing the calls to a CRM: at most ``crm_burst_per_10s`` per 10 seconds from each process.

Both connectors' vendor clients (hubspot-api-client, simple-salesforce) are synchronous, so each
call runs in a thread; the limit is shared by those threads (a sliding window), and a call waits
for its place before it is sent.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TypeVar

from nurture.settings import Settings

T = TypeVar("T")


class BurstLimit:
    """At most ``calls`` per ``seconds``, across the threads of this process (a sliding window)."""

    def __init__(self, calls: int, seconds: float = 10.0):
        self.calls, self.seconds = calls, seconds
        self.sent: deque[float] = deque()
        self.lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> BurstLimit:
        return cls(settings.crm_burst_per_10s)

    def wait(self) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                while self.sent and now - self.sent[0] >= self.seconds:
                    self.sent.popleft()
                if len(self.sent) < self.calls:
                    self.sent.append(now)
                    return
                pause = self.seconds - (now - self.sent[0])
            time.sleep(max(pause, 0.01))


async def paced(limit: BurstLimit, call: Callable[[], T]) -> T:
    """``call`` in a thread, sent once ``limit`` lets it through."""

    def run() -> T:
        limit.wait()
        return call()

    return await asyncio.to_thread(run)
