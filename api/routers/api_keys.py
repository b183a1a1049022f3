"""API keys: an admin creates one per person or integration, with a role; it is shown once."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from pydantic import Field, model_validator
from sqlmodel import select

from api.deps import MAX_ID, SessionDep
from api.schemas.common import NonEmpty, Out, Strict
from nurture.api_keys import Role, create_key
from nurture.logging import get_logger
from nurture.models import ApiKey, utcnow

router = APIRouter(prefix="/api-keys", tags=["api keys"])


class ApiKeyIn(Strict):
    name: NonEmpty
    role: Role
    owner: str | None = Field(default=None, max_length=200, description="For sales keys: the rep id they act as.")

    @model_validator(mode="after")
    def _sales_need_an_owner(self) -> ApiKeyIn:
        if self.role == Role.sales and not self.owner:
            raise ValueError("a sales key needs the owner (rep id) whose contacts it may see")
        return self


class ApiKeyOut(Out):
    id: int
    name: str
    role: str
    owner: str | None
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="Shown this once; only its hash is stored.")


@router.post("", response_model=NewApiKeyOut, status_code=status.HTTP_201_CREATED)
async def create(body: ApiKeyIn, session: SessionDep) -> NewApiKeyOut:
    key, secret = await create_key(session, body.name, body.role, body.owner)
    await session.commit()
    get_logger(api_key=key.prefix).info("api_key_created", role=key.role)
    return NewApiKeyOut(**ApiKeyOut.model_validate(key).model_dump(), key=secret)


@router.get("", response_model=list[ApiKeyOut])
async def list_keys(session: SessionDep) -> list[ApiKey]:
    return list((await session.exec(select(ApiKey).order_by(ApiKey.id))).all())


@router.delete("/{key_id}", response_model=ApiKeyOut)
async def revoke(key_id: Annotated[int, Path(ge=1, le=MAX_ID)], session: SessionDep) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None:
        raise HTTPException(404, f"no API key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.add(key)
        await session.commit()
        get_logger(api_key=key.prefix).info("api_key_revoked")
    return key
