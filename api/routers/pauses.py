"""What a sales rep has paused, and when each contact resumes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from fastapi.exceptions import RequestValidationError

from api.deps import CallerDep, SessionDep
from api.schemas.contacts import PausedContactOut
from nurture.pausing import paused_by

router = APIRouter(prefix="/pauses", tags=["pauses"])


@router.get("", response_model=list[PausedContactOut])
async def list_pauses(
    session: SessionDep,
    caller: CallerDep,
    rep: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="The rep's id; a sales key's own rep when omitted (and only that)."),
    ] = None,
) -> list[PausedContactOut]:
    """The contacts this rep has paused now, the soonest to resume first."""
    if caller is not None and caller.is_sales:
        if rep is not None and rep != caller.owner:
            raise HTTPException(status_code=403, detail="a sales key may only list its own pauses")
        rep = caller.owner
        if rep is None:
            return []
    if rep is None:
        raise RequestValidationError([{"type": "missing", "loc": ("query", "rep"), "msg": "Field required"}])
    return [
        PausedContactOut(
            contact_id=c.id, email=c.email, name=c.name, paused_until=c.paused_until, pause_reason=c.pause_reason
        )
        for c in await paused_by(session, rep)
    ]
