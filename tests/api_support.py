"""The ``api`` fixture and helpers for the API tests; test_api_*.py import them.

The app gets conftest's database, Temporal client and settings injected; the
``worker`` fixture runs the enrollments on the same task queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlmodel import select
from temporalio.client import Client

from api.main import create_app
from nurture.db import Database
from nurture.settings import Settings
from tests.conftest import eventually

EXAMPLE_FLOW = Path(__file__).resolve().parent.parent / "examples" / "demo-request-nurture.yaml"
EXAMPLE_TEMPLATES = ("demo-welcome", "case-study", "demo-welcome-resend")


@pytest.fixture
async def api(db: Database, client: Client, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, db=db, client=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        yield http


# --- helpers -------------------------------------------------------------------


def locs(response: httpx.Response) -> list[list]:
    return [item["loc"] for item in response.json()["detail"]]


async def count_rows(db: Database, model) -> int:
    async with db.session() as session:
        return len((await session.exec(select(model))).all())


async def create_template(api: httpx.AsyncClient, key: str, subject: str | None = None) -> dict:
    response = await api.post(
        "/templates",
        json={
            "key": key,
            "subject": subject or f"{key} for {{{{ contact.name or 'you' }}}}",
            "html": f"<p>Hello {{{{ contact.name }}}}, this is {key}.</p>",
            "text": f"Hello {{{{ contact.name }}}}, this is {key}.",
        },
    )
    assert response.status_code == 201, response.text
    return response.json()


async def create_example_flow(api: httpx.AsyncClient) -> dict:
    response = await api.post(
        "/flows", content=EXAMPLE_FLOW.read_text(), headers={"content-type": "application/yaml"}
    )
    assert response.status_code == 201, response.text
    return response.json()


async def active_example_flow(api: httpx.AsyncClient) -> int:
    """The README's demo-request flow with its templates, activated."""
    for key in EXAMPLE_TEMPLATES:
        await create_template(api, key)
    flow = await create_example_flow(api)
    response = await api.post(f"/flows/{flow['id']}/activate")
    assert response.status_code == 200, response.text
    return flow["id"]


async def post_event(api: httpx.AsyncClient, **body) -> httpx.Response:
    return await api.post("/events", json=body)


async def enroll_by_event(api: httpx.AsyncClient, email: str, name: str = "Ada") -> tuple[int, int]:
    """Post the example trigger for a new contact; return (contact id, enrollment id)."""
    response = await api.post("/contacts", json={"email": email, "name": name})
    assert response.status_code in (200, 201), response.text
    response = await post_event(api, type="demo_requested", email=email)
    assert response.status_code == 202, response.text
    assert len(response.json()["enrolled"]) == 1, response.json()
    return response.json()["contact_id"], response.json()["enrolled"][0]


async def workflow_state(api: httpx.AsyncClient, enrollment_id: int) -> dict | None:
    response = await api.get(f"/enrollments/{enrollment_id}")
    assert response.status_code == 200, response.text
    return response.json()["workflow"]


async def wait_for_step(api: httpx.AsyncClient, enrollment_id: int, step: str) -> dict:
    async def at_step():
        state = await workflow_state(api, enrollment_id)
        return state if state and state["current_step"] == step else None

    return await eventually(at_step)


def in_future(now: datetime, **kwargs) -> str:
    """An instant ahead of both the wall clock and the test server's (possibly skipped-ahead) clock."""
    return (max(now, datetime.now(UTC)) + timedelta(**kwargs)).isoformat()
