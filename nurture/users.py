"""People who sign in to the console: accounts with the API keys' roles, and their sessions.

Passwords are hashed with Argon2id (argon2-cffi, its default parameters). A session is a random
token in an HttpOnly cookie; the database keeps only its SHA-256 (like API keys: 256 random bits
need no slow hash) with the session's CSRF token and its end, so signing out ends it for good.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.api_keys import Role
from nurture.models import User, UserSession, utcnow

_hasher = PasswordHasher()
# Verified when the email is unknown too, so a wrong email takes as long as a wrong password.
_UNKNOWN_USER_HASH = _hasher.hash(secrets.token_urlsafe(16))


class UserExists(ValueError):
    pass


class WeakPassword(ValueError):
    pass


@dataclass(frozen=True)
class SignedIn:
    """A live session's user, as plain values (the database session is closed by then)."""

    user_id: int
    email: str
    name: str | None
    role: Role
    owner: str | None
    csrf_token: str


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password_rules(password: str, min_length: int) -> None:
    if len(password) < min_length:
        raise WeakPassword(f"a password has at least {min_length} characters")
    if len(password) > 1024:
        raise WeakPassword("a password has at most 1024 characters")


def normalise_email(email: str) -> str:
    return email.strip().lower()


async def create_user(
    session: AsyncSession,
    email: str,
    password: str,
    role: Role,
    *,
    name: str | None = None,
    owner: str | None = None,
    min_password_length: int = 10,
) -> User:
    """Add a user (not committed). A sales user needs the rep id whose contacts are theirs."""
    check_password_rules(password, min_password_length)
    if role == Role.sales and not owner:
        raise ValueError("a sales user needs a rep id (owner)")
    email = normalise_email(email)
    if await user_by_email(session, email) is not None:
        raise UserExists(f"a user with the email {email} exists")
    user = User(email=email, name=name, role=role, owner=owner, password_hash=await asyncio.to_thread(hash_password, password))
    session.add(user)
    await session.flush()
    return user


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    return (await session.exec(select(User).where(func.lower(User.email) == normalise_email(email)))).first()


async def password_matches(user: User | None, password: str) -> bool:
    """Argon2 takes tens of milliseconds on purpose: it runs off the event loop."""
    return await asyncio.to_thread(_verify, user, password)


def _verify(user: User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _UNKNOWN_USER_HASH, password) and user is not None
    except (VerificationError, InvalidHashError):
        return False


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def start_session(session: AsyncSession, user: User, lifetime: timedelta) -> str:
    """Open a session for the user (not committed) and return the cookie's token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        UserSession(
            token_hash=_token_hash(token),
            user_id=user.id,  # type: ignore[arg-type]
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + lifetime,
        )
    )
    user.last_sign_in_at = now
    session.add(user)
    return token


async def signed_in(session: AsyncSession, token: str) -> SignedIn | None:
    """The user behind a session cookie, or None when it is unknown, expired or the user is disabled."""
    row = (
        await session.exec(
            select(UserSession, User)
            .join(User, col(User.id) == UserSession.user_id)
            .where(UserSession.token_hash == _token_hash(token), UserSession.expires_at > utcnow())
        )
    ).first()
    if row is None:
        return None
    live, user = row
    if user.disabled_at is not None:
        return None
    return SignedIn(
        user_id=user.id,  # type: ignore[arg-type]
        email=user.email,
        name=user.name,
        role=Role(user.role),
        owner=user.owner,
        csrf_token=live.csrf_token,
    )


async def end_session(session: AsyncSession, token: str) -> None:
    """Sign out (not committed); expired sessions are swept at the same time."""
    await session.exec(delete(UserSession).where(UserSession.token_hash == _token_hash(token)))  # type: ignore[call-overload]
    await session.exec(delete(UserSession).where(UserSession.expires_at <= utcnow()))  # type: ignore[call-overload]
