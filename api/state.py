"""What the app holds between requests: the database and the Temporal connection."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from nurture.enrolling import TemporalUnavailable
from nurture.logging import get_logger
from nurture.metrics import instrument_client
from nurture.settings import Settings
from nurture.temporal import connect

CONNECT_TIMEOUT_SECONDS = 10.0


class TemporalConnection:
    """The Temporal client, connected once; if Temporal was down, retried on the next request.

    The API starts even while Temporal is unreachable: reads keep working, calls that
    need Temporal answer 503 until it is back.
    """

    def __init__(self, settings: Settings, client: Client | None = None):
        self.settings = settings
        # An injected client counts signals and starts too (connect() already does).
        self.client = instrument_client(client) if client is not None else None
        self.error: str | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        if self.client is not None:
            return self.client
        async with self._lock:
            if self.client is None:
                try:
                    self.client = await asyncio.wait_for(connect(self.settings), CONNECT_TIMEOUT_SECONDS)
                except Exception as exc:  # connect raises RuntimeError, TimeoutError, RPCError ...
                    self.error = str(exc) or type(exc).__name__
                    get_logger(component="api").warning(
                        "temporal_unreachable", address=self.settings.temporal_address, error=self.error
                    )
                    raise TemporalUnavailable(f"cannot connect to {self.settings.temporal_address}: {self.error}") from exc
                self.error = None
        return self.client
