"""Abuse limits: calls per client address, per API key, and failed authentications per client.

Four budgets (settings ``rate_limit_*``): the public links (tracking, consent, provider webhooks,
health, metrics) and the rest of the API each count per client address in a middleware, before
any work; ``authorize`` (api/auth.py) counts calls per key once the key is known, and wrong keys
per client, refusing a client that spent that budget before it may try another key. Over budget
the answer is 429 with ``Retry-After``, naming the setting.

Counters live in Redis when ``rate_limit_redis_url`` is set, so every API process and replica
shares them; otherwise in this process. Should Redis fail, the process counts on its own until
Redis answers again: limits hold, only less precisely, and no request fails for it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from limits import RateLimitItem, parse_many
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.errors import StorageError
from starlette.types import ASGIApp, Receive, Scope, Send

from api.auth import PUBLIC, roles_for
from nurture.logging import get_logger
from nurture.settings import Settings

log = get_logger(component="rate_limits")

# After Redis failed, how long the process counts on its own before trying Redis again.
REDIS_RETRY_SECONDS = 5.0


@dataclass(frozen=True)
class Budget:
    setting: str  # the setting that sets it, named in the 429
    counts: str  # what it counts, for the 429
    items: tuple[RateLimitItem, ...]


class RateLimited(HTTPException):
    def __init__(self, budget: Budget, item: RateLimitItem, retry_after: int) -> None:
        super().__init__(
            429,
            f"rate limit exceeded: {budget.counts} are limited to {item} (setting {budget.setting}); "
            f"retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status_code, content={"detail": self.detail}, headers=self.headers)


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.rate_limit_enabled
        self.per_key = _budget(settings, "rate_limit_per_key", "calls per API key")
        self.per_client = _budget(settings, "rate_limit_per_client", "API calls per client address")
        self.failed_auth = _budget(settings, "rate_limit_failed_auth", "failed authentications per client address")
        self.public = _budget(settings, "rate_limit_public", "public link calls per client address")
        self._trusted_proxies = [ip_network(str(network), strict=False) for network in settings.trusted_proxies]
        strategy = STRATEGIES[settings.rate_limit_strategy]
        self._local = strategy(MemoryStorage())
        self._shared: RateLimiter | None = None
        if settings.rate_limit_redis_url:
            self._shared = strategy(_redis_storage(settings))
        self._shared_retry_at = 0.0

    # --- the client ---------------------------------------------------------------

    def client_address(self, scope: Scope) -> str:
        """The connecting address; behind a trusted proxy, the nearest address in X-Forwarded-For
        that is not a trusted proxy itself (the left part of the header is the client's to write)."""
        peer = (scope.get("client") or ("unknown", 0))[0]
        if not self._trusted(peer):
            return peer
        forwarded = [
            hop.strip()
            for name, value in scope.get("headers", ())
            if name == b"x-forwarded-for"
            for hop in value.decode("latin-1").split(",")
            if hop.strip()
        ]
        for hop in reversed(forwarded):
            if not self._trusted(hop):
                return hop
        return forwarded[0] if forwarded else peer

    def _trusted(self, address: str) -> bool:
        parsed = _address(address)
        return parsed is not None and any(parsed in network for network in self._trusted_proxies)

    # --- the budgets --------------------------------------------------------------

    async def spend(self, budget: Budget, who: str) -> None:
        """Count one call against ``who``'s budget; raise RateLimited when it is spent."""
        await self._check("hit", budget, who)

    async def ensure_left(self, budget: Budget, who: str) -> None:
        """Raise RateLimited if ``who`` has nothing left of ``budget``, counting nothing."""
        await self._check("test", budget, who)

    async def _check(self, method: str, budget: Budget, who: str) -> None:
        if not self.enabled:
            return
        for item in budget.items:
            if not await self._call(method, item, budget.setting, who):
                raise await self._refusal(budget, item, who)

    async def _refusal(self, budget: Budget, item: RateLimitItem, who: str) -> RateLimited:
        stats = await self._call("get_window_stats", item, budget.setting, who)
        retry_after = max(1, math.ceil(stats.reset_time - time.time()))
        log.info("rate_limited", limit=budget.setting, rate=str(item), who=who, retry_after=retry_after)
        return RateLimited(budget, item, retry_after)

    async def _call(self, operation: str, item: RateLimitItem, *identifiers: str):
        if self._shared is not None and time.monotonic() >= self._shared_retry_at:
            try:
                result = await getattr(self._shared, operation)(item, *identifiers)
            except StorageError as exc:
                if self._shared_retry_at == 0.0:
                    log.error("rate_limit_redis_unavailable", error=str(exc.storage_error), fallback="in-process counters")
                self._shared_retry_at = time.monotonic() + REDIS_RETRY_SECONDS
            else:
                if self._shared_retry_at:
                    log.info("rate_limit_redis_available")
                    self._shared_retry_at = 0.0
                return result
        return await getattr(self._local, operation)(item, *identifiers)


class ClientRateLimitMiddleware:
    """Counts every HTTP request against its client's budget (public or API) before any work,
    so that bodies which fail to parse and unknown paths are counted too."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.limits.enabled:
            public = roles_for(scope["method"], scope["path"]) is PUBLIC
            budget = self.limits.public if public else self.limits.per_client
            try:
                await self.limits.spend(budget, self.limits.client_address(scope))
            except RateLimited as refused:
                await refused.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def install_rate_limits(app: FastAPI, settings: Settings) -> None:
    app.state.rate_limits = RateLimits(settings)
    app.add_middleware(ClientRateLimitMiddleware, limits=app.state.rate_limits)


def _budget(settings: Settings, setting: str, counts: str) -> Budget:
    return Budget(setting, counts, tuple(parse_many(getattr(settings, setting))))


def _redis_storage(settings: Settings) -> Storage:
    url = settings.rate_limit_redis_url or ""
    timeout = settings.rate_limit_redis_timeout_seconds
    return RedisStorage(
        url if url.startswith("async+") else f"async+{url}",
        wrap_exceptions=True,
        implementation="redispy",
        key_prefix=settings.rate_limit_key_prefix,
        socket_connect_timeout=timeout,
        socket_timeout=timeout,
    )


def _address(text: str) -> IPv4Address | IPv6Address | None:
    try:
        return ip_address(text)
    except ValueError:
        return None
