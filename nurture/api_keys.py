"""API keys: created with a role, stored hashed, shown once, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from enum import StrEnum

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.models import ApiKey, utcnow


class Role(StrEnum):
    admin = "admin"
    marketer = "marketer"
    sales = "sales"
    read_only = "read_only"


def _hash(secret: str) -> str:
    # Keys carry 256 random bits, so a plain digest is enough: there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


async def create_key(session: AsyncSession, name: str, role: Role, owner: str | None = None) -> tuple[ApiKey, str]:
    """Store a new key and return it with its secret, which is never stored or shown again."""
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(name=name, role=role, owner=owner, prefix=prefix, secret_hash=_hash(secret))
    session.add(key)
    await session.flush()
    return key, f"nk_{prefix}_{secret}"


async def authenticate(session: AsyncSession, presented: str) -> ApiKey | None:
    """The live key behind a presented token, or None."""
    parts = presented.split("_", 2)
    if len(parts) != 3 or parts[0] != "nk":
        return None
    key = (await session.exec(select(ApiKey).where(ApiKey.prefix == parts[1]))).first()
    if key is None or key.revoked_at is not None or not hmac.compare_digest(key.secret_hash, _hash(parts[2])):
        return None
    key.last_used_at = utcnow()
    session.add(key)
    await session.commit()
    return key
