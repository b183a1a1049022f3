"""Abuse limits: key guessing, one busy key, one busy client, public links, proxies, and budgets
shared by API replicas through Redis. Each test sets small limits of its own."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from api.main import create_app
from nurture.api_keys import Role, create_key
from nurture.models import Contact
from nurture.settings import Settings
from tests.api_support import count_rows

REDIS_URL = os.environ.get("NURTURE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _redis_reachable() -> bool:
    host, port = REDIS_URL.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def redis_settings(settings: Settings) -> Settings:
    """Counters in Redis under a prefix of this test's own, so runs never meet."""
    if not _redis_reachable():
        if os.environ.get("CI"):
            raise RuntimeError(f"Redis is not reachable at {REDIS_URL}; CI runs the shared-limit tests on it")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    settings.rate_limit_redis_url = REDIS_URL
    settings.rate_limit_key_prefix = f"nurture-test-{uuid.uuid4().hex[:10]}"
    return settings


@pytest.fixture(autouse=True)
def exact_counting(settings: Settings) -> None:
    """These tests count requests to the unit: the default strategy (sliding-window counter) estimates the
    previous minute's share, so a run that crosses a minute's turn could let one more through."""
    settings.rate_limit_strategy = "moving-window"


@pytest.fixture
def new_app(db, client) -> Callable[[Settings], FastAPI]:
    """A new app instance (one API replica) on the test's database and Temporal client."""
    return lambda settings: create_app(settings, db=db, client=client)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """``connect(app, ip=...)``: an HTTP client to ``app`` whose requests come from ``ip``."""
    opened: list[httpx.AsyncClient] = []

    def open_client(app: FastAPI, ip: str = "203.0.113.7") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))
        opened.append(httpx.AsyncClient(transport=transport, base_url="http://test"))
        return opened[-1]

    yield open_client
    for http in opened:
        await http.aclose()


async def new_key(db, role: Role = Role.marketer) -> str:
    async with db.session() as session:
        _, secret = await create_key(session, f"{role} {uuid.uuid4().hex[:6]}", role)
        await session.commit()
    return secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_limited(response: httpx.Response, setting: str, rate: str) -> None:
    assert response.status_code == 429, (response.status_code, response.text)
    assert 1 <= int(response.headers["Retry-After"]) <= 60, response.headers
    detail = response.json()["detail"]
    assert setting in detail and rate in detail, detail


async def test_guessing_keys_is_refused_429_once_the_failed_auth_budget_is_spent(db, settings, new_app, connect):
    settings.auth_required = True
    settings.rate_limit_failed_auth = "5/minute"
    app = new_app(settings)
    guesser = connect(app, ip="203.0.113.7")

    statuses = []
    for attempt in range(1000):
        response = await guesser.get("/contacts", headers=bearer(f"nk_{attempt:08x}_guess"))
        statuses.append(response.status_code)
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    assert_limited(response, "rate_limit_failed_auth", "5 per 1 minute")

    # Even a right guess is refused now from that client; other clients are not affected.
    valid = await new_key(db)
    assert (await guesser.get("/contacts", headers=bearer(valid))).status_code == 429
    assert (await connect(app, ip="198.51.100.20").get("/contacts", headers=bearer(valid))).status_code == 200


async def test_a_key_over_its_budget_is_refused_while_another_key_is_not(db, settings, new_app, connect):
    settings.auth_required = True
    settings.rate_limit_per_key = "3/minute"
    busy, quiet = await new_key(db), await new_key(db)
    http = connect(new_app(settings))

    for n in range(3):
        response = await http.post("/events", json={"type": "visit", "email": f"v{n}@example.com"}, headers=bearer(busy))
        assert response.status_code == 202, response.text
    refused = await http.post("/events", json={"type": "visit", "email": "v3@example.com"}, headers=bearer(busy))
    assert_limited(refused, "rate_limit_per_key", "3 per 1 minute")
    assert await count_rows(db, Contact) == 3  # the refused event created nothing

    response = await http.post("/events", json={"type": "visit", "email": "q@example.com"}, headers=bearer(quiet))
    assert response.status_code == 202, response.text


async def test_a_client_over_its_budget_is_refused_while_another_client_is_not(settings, new_app, connect):
    settings.rate_limit_per_client = "3/minute"
    app = new_app(settings)
    busy = connect(app, ip="203.0.113.7")
    for _ in range(3):
        assert (await busy.get("/contacts")).status_code == 200
    assert_limited(await busy.get("/contacts"), "rate_limit_per_client", "3 per 1 minute")
    assert (await connect(app, ip="198.51.100.20").get("/contacts")).status_code == 200


async def test_public_links_have_their_own_budget_per_client(settings, new_app, connect):
    settings.rate_limit_public = "2/minute"
    settings.rate_limit_per_client = "2/minute"
    http = connect(new_app(settings))

    for _ in range(2):
        assert (await http.get("/health")).status_code == 200
    assert_limited(await http.get("/health"), "rate_limit_public", "2 per 1 minute")
    # The public budget and the API budget do not eat into each other.
    for _ in range(2):
        assert (await http.get("/contacts")).status_code == 200
    assert_limited(await http.get("/contacts"), "rate_limit_per_client", "2 per 1 minute")


async def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy(settings, new_app, connect):
    settings.rate_limit_per_client = "2/minute"
    direct = connect(new_app(settings), ip="203.0.113.7")
    for n in range(2):
        assert (await direct.get("/contacts", headers={"X-Forwarded-For": f"192.0.2.{n}"})).status_code == 200
    assert (await direct.get("/contacts", headers={"X-Forwarded-For": "192.0.2.99"})).status_code == 429

    proxy = connect(new_app(settings.model_copy(update={"trusted_proxies": ["10.0.0.0/8"]})), ip="10.1.2.3")
    for n in range(3):  # three clients behind the proxy, each within its budget
        assert (await proxy.get("/contacts", headers={"X-Forwarded-For": f"192.0.2.{n}"})).status_code == 200
    # A client cannot pick its own address: the proxy appends the one it saw, and that one counts.
    for n in range(2):
        assert (await proxy.get("/contacts", headers={"X-Forwarded-For": f"198.51.100.{n}, 192.0.2.50"})).status_code == 200
    assert (await proxy.get("/contacts", headers={"X-Forwarded-For": "198.51.100.9, 192.0.2.50"})).status_code == 429


async def test_api_replicas_share_their_budgets_through_redis(db, settings, new_app, connect):
    settings = redis_settings(settings)
    settings.auth_required = True
    settings.rate_limit_per_key = "4/minute"
    settings.rate_limit_failed_auth = "2/minute"
    key = await new_key(db)
    first, second = connect(new_app(settings)), connect(new_app(settings))  # two replicas

    for http in (first, second, first, second):
        assert (await http.get("/contacts", headers=bearer(key))).status_code == 200
    assert_limited(await first.get("/contacts", headers=bearer(key)), "rate_limit_per_key", "4 per 1 minute")
    assert_limited(await second.get("/contacts", headers=bearer(key)), "rate_limit_per_key", "4 per 1 minute")

    assert (await first.get("/contacts", headers=bearer("nk_00000000_guess"))).status_code == 401
    assert (await second.get("/contacts", headers=bearer("nk_00000001_guess"))).status_code == 401
    assert (await first.get("/contacts", headers=bearer("nk_00000002_guess"))).status_code == 429


async def test_without_redis_an_app_keeps_its_own_counters(settings, new_app, connect):
    settings.rate_limit_per_client = "2/minute"
    first, second = connect(new_app(settings)), connect(new_app(settings))
    for http in (first, first, second, second):
        assert (await http.get("/contacts")).status_code == 200
    assert (await first.get("/contacts")).status_code == 429


async def test_an_unreachable_redis_falls_back_to_counters_in_the_process(settings, new_app, connect):
    settings.rate_limit_redis_url = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    settings.rate_limit_per_client = "2/minute"
    http = connect(new_app(settings))
    for _ in range(2):
        assert (await http.get("/contacts")).status_code == 200
    assert_limited(await http.get("/contacts"), "rate_limit_per_client", "2 per 1 minute")


@pytest.mark.parametrize("field", ["rate_limit_per_key", "rate_limit_per_client", "rate_limit_failed_auth", "rate_limit_public"])
def test_a_limit_that_does_not_parse_is_refused_at_startup_naming_the_setting(field):
    with pytest.raises(ValidationError) as raised:
        Settings(_env_file=None, **{field: "lots"})
    assert field in str(raised.value)
