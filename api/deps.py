"""Request dependencies, used as ``Annotated`` types in the endpoints."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from api.state import TemporalConnection
from nurture.db import Database
from nurture.enrolling import Enroller
from nurture.settings import Settings

# Ids are 32-bit integer columns on PostgreSQL: a larger number is simply unknown.
MAX_ID = 2_147_483_647


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_database(request: Request) -> Database:
    db: Database | None = request.app.state.db
    if db is None:
        raise HTTPException(status_code=503, detail="the database is not ready yet")
    return db


async def get_session(db: Annotated[Database, Depends(get_database)]) -> AsyncIterator[AsyncSession]:
    """One session per request; endpoints commit once everything (Temporal calls too) succeeded."""
    async with db.session() as session:
        yield session


def get_temporal(request: Request) -> TemporalConnection:
    return request.app.state.temporal


async def get_client(temporal: Annotated[TemporalConnection, Depends(get_temporal)]) -> Client:
    return await temporal.get()  # TemporalUnavailable -> 503


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
TemporalDep = Annotated[TemporalConnection, Depends(get_temporal)]
ClientDep = Annotated[Client, Depends(get_client)]


def get_enroller(client: ClientDep, settings: SettingsDep) -> Enroller:
    return Enroller(client, settings)


EnrollerDep = Annotated[Enroller, Depends(get_enroller)]


class Pagination:
    def __init__(
        self,
        limit: Annotated[int, Query(ge=1, le=500, description="Items per page.")] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID, description="Items to skip.")] = 0,
    ):
        self.limit = limit
        self.offset = offset


PaginationDep = Annotated[Pagination, Depends()]
