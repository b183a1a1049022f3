"""The audit log: who (a console user or an API key) changed a flow or a template, or created a user."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from nurture.models import AuditEntry


@dataclass(frozen=True)
class Author:
    """Whom a change is recorded under: a user's email or a key's name ("api" without keys)."""

    name: str = "api"
    user_id: int | None = None
    api_key_id: int | None = None


@dataclass
class Change:
    action: str
    flow_id: int | None = None
    subject: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def record(session: AsyncSession, author: Author, change: Change) -> None:
    """Add the entry to the session: it commits with the change it records, or not at all."""
    session.add(
        AuditEntry(
            action=change.action,
            flow_id=change.flow_id,
            subject=change.subject,
            actor=author.name,
            user_id=author.user_id,
            api_key_id=author.api_key_id,
            detail=change.detail,
        )
    )


async def flow_changes(session: AsyncSession, flow_id: int, limit: int = 20) -> list[AuditEntry]:
    """The flow's latest changes, newest first."""
    rows = await session.exec(
        select(AuditEntry).where(AuditEntry.flow_id == flow_id).order_by(col(AuditEntry.id).desc()).limit(limit)
    )
    return list(rows.all())
