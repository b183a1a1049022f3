"""What a sales rep has paused, and when each contact resumes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import SessionDep
from api.schemas.contacts import PausedContactOut
from nurture.pausing import paused_by

router = APIRouter(prefix="/pauses", tags=["pauses"])


@router.get("", response_model=list[PausedContactOut])
async def list_pauses(
    session: SessionDep, rep: Annotated[str, Query(min_length=1, max_length=200, description="The rep's id.")]
) -> list[PausedContactOut]:
    """The contacts this rep has paused now, the soonest to resume first."""
    return [
        PausedContactOut(
            contact_id=c.id, email=c.email, name=c.name, paused_until=c.paused_until, pause_reason=c.pause_reason
        )
        for c in await paused_by(session, rep)
    ]
