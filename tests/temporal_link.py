"""A loopback TCP relay between a Temporal client and the test server: a real network link that a
test can cut while the server (and every workflow on it) lives on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.service import RetryConfig

from nurture import enrolling
from nurture.settings import Settings


class TemporalLink:
    def __init__(self, target: str):
        host, port = target.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.server: asyncio.Server | None = None
        self.transports: list[asyncio.BaseTransport] = []

    async def open(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def client(self) -> Client:
        """A client through the link that gives up quickly once it is cut."""
        return await Client.connect(
            await self.open(),
            data_converter=pydantic_data_converter,
            retry_config=RetryConfig(max_retries=1, max_elapsed_time_millis=200),
        )

    def cut(self) -> None:
        """Refuse new connections and reset the open ones (synchronous: callable from a callback)."""
        if self.server is not None:
            self.server.close()
        for transport in self.transports:
            transport.abort()  # type: ignore[attr-defined]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.transports += [writer.transport, up_writer.transport]
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer), return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.transport.abort()


def cut_after(link: TemporalLink, starts: int):
    """A heartbeat callback: cut the link after ``starts`` heartbeats. With ``every_start_heartbeats``
    the page heartbeats once per finished start (else at most once a second)."""
    heard: list[object] = []

    def on_heartbeat(*details: object) -> None:
        heard.append(details)
        if len(heard) == starts:
            link.cut()

    return on_heartbeat


def one_start_at_a_time(settings: Settings) -> Settings:
    """One start in flight, each tried twice: a cut link fails exactly the starts after it."""
    return settings.model_copy(
        update={"enrollment_start_concurrency": 1, "enrollment_start_attempts": 2, "enrollment_start_backoff_seconds": 0.01}
    )


@pytest.fixture
def every_start_heartbeats(monkeypatch) -> None:
    """A page heartbeats as each of its starts finishes (``cut_after`` counts starts by them)."""
    monkeypatch.setattr(enrolling, "PROGRESS_EVERY", 0.0)


@pytest.fixture
async def temporal_link(temporal_env) -> AsyncIterator[TemporalLink]:
    link = TemporalLink(temporal_env.client.service_client.config.target_host)
    yield link
    link.cut()
