"""The Temporal client every process uses: same address, namespace and data converter."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from nurture.metrics import MetricsInterceptor
from nurture.settings import Settings


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        data_converter=pydantic_data_converter,
        interceptors=[MetricsInterceptor()],  # signals and enrollment starts, counted per process
    )
