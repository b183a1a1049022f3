"""Console users: an admin creates the people who sign in at /app, each with a role."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, status
from fastapi.exceptions import RequestValidationError
from pydantic import Field, model_validator
from sqlmodel import select

from api.deps import AuthorDep, SessionDep, SettingsDep
from api.schemas.common import Email, Out, Strict
from nurture.api_keys import Role
from nurture.audit import Change, record
from nurture.logging import get_logger
from nurture.models import User
from nurture.users import UserExists, WeakPassword, check_password_rules, create_user

router = APIRouter(prefix="/users", tags=["users"])


class UserIn(Strict):
    email: Email
    name: str | None = Field(default=None, max_length=200)
    role: Role
    owner: str | None = Field(default=None, min_length=1, max_length=200, description="For sales users: their rep id.")
    password: str = Field(min_length=1, max_length=1024, description="Stored as an Argon2id hash only.")

    @model_validator(mode="after")
    def _sales_need_an_owner(self) -> UserIn:
        if self.role == Role.sales and not self.owner:
            raise ValueError("owner: a sales user needs the rep id whose contacts are theirs")
        return self


class UserOut(Out):
    id: int
    email: str
    name: str | None
    role: str
    owner: str | None
    created_at: datetime
    last_sign_in_at: datetime | None


@router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED)
async def create(body: UserIn, session: SessionDep, settings: SettingsDep, author: AuthorDep) -> User:
    """Create a person who signs in to the console (409 when the email is taken)."""
    try:
        check_password_rules(body.password, settings.user_password_min_length)
    except WeakPassword as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", "password"), "msg": str(exc)}]) from None
    try:
        user = await create_user(
            session, body.email, body.password, body.role, name=body.name, owner=body.owner,
            min_password_length=settings.user_password_min_length,
        )
    except UserExists as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    record(session, author, Change("user.created", subject=user.email, detail={"role": user.role}))
    await session.commit()
    get_logger(user_id=user.id).info("user_created", role=user.role, by=author.name)
    return user


@router.get("", response_model=list[UserOut])
async def list_users(session: SessionDep) -> list[User]:
    return list((await session.exec(select(User).order_by(User.id))).all())
