"""The Temporal client every process uses (same address, namespace and data converter), and where its UI shows a workflow."""

from __future__ import annotations

from urllib.parse import quote

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


def temporal_ui_url(settings: Settings, workflow_id: str) -> str:
    return (
        f"http://127.0.0.1:{settings.temporal_ui_port}/namespaces/{quote(settings.temporal_namespace, safe='')}"
        f"/workflows/{quote(workflow_id, safe='')}"
    )
