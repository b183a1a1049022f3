"""Finding enrollments through Temporal visibility and the custom search attributes.

The workflow keeps NurtureFlowId, NurtureFlowVersion, NurtureContactId, NurtureStep,
NurtureStatus and NurturePaused current (see nurture/search_attributes.py), so these
queries answer from Temporal itself. Visibility is eventually consistent (a second or
so behind on a dev server); the enrollments table stays the source of the API's own
pages, and tests check the two agree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from datetime import datetime

from pydantic import BaseModel, Field
from temporalio.client import Client, WorkflowExecution

from nurture import search_attributes as attrs
from nurture.contracts import ENROLLMENT_WORKFLOW

STATUSES = ("active", "completed", "exited", "failed")
_SAFE = re.compile(r"^[A-Za-z0-9_.:-]*$")


class BadPageToken(ValueError):
    pass


def _literal(value: str) -> str:
    # Values come from validated step ids, numbers and the deployment's prefix: refuse anything
    # that could leave the string literal rather than trying to escape it.
    if not _SAFE.match(value):
        raise ValueError(f"{value!r} cannot be used in a visibility query")
    return f"'{value}'"


def enrollment_query(
    prefix: str,
    flow_id: int,
    *,
    version: int | None = None,
    step: str | None = None,
    status: str | None = None,
    paused: bool | None = None,
) -> str:
    """The list filter for one flow's enrollments, as ``temporal workflow list --query`` takes it.

    Continued-as-new runs are closed copies of a live enrollment: left out so each
    enrollment counts once.
    """
    parts = [
        f"WorkflowType = {_literal(ENROLLMENT_WORKFLOW)}",
        f"WorkflowId STARTS_WITH {_literal(f'{prefix}-{flow_id}-')}",
        f"{attrs.FLOW_ID.name} = {_literal(str(flow_id))}",
        "ExecutionStatus != 'ContinuedAsNew'",
    ]
    if version is not None:
        parts.append(f"{attrs.FLOW_VERSION.name} = {int(version)}")
    if step is not None:
        parts.append(f"{attrs.STEP.name} = {_literal(step)}")
    if status is not None:
        parts.append(f"{attrs.STATUS.name} = {_literal(status)}")
    if paused is not None:
        parts.append(f"{attrs.PAUSED.name} = {'true' if paused else 'false'}")
    return " AND ".join(parts)


class VisibleEnrollment(BaseModel):
    workflow_id: str
    run_id: str
    first_run_id: str | None
    flow_id: int | None
    flow_version: int | None
    contact_id: int | None
    step: str | None
    status: str | None = Field(description="NurtureStatus: active, completed, exited or failed.")
    paused: bool | None
    execution_status: str | None = Field(description="Temporal's own: Running, Completed, Terminated ...")
    started_at: datetime | None
    closed_at: datetime | None


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _visible(execution: WorkflowExecution) -> VisibleEnrollment:
    found = {pair.key.name: pair.value for pair in execution.typed_search_attributes}
    first = found.get
    return VisibleEnrollment(
        workflow_id=execution.id,
        run_id=execution.run_id,
        first_run_id=execution.raw_info.first_run_id or None,
        flow_id=_int(first(attrs.FLOW_ID.name)),
        flow_version=_int(first(attrs.FLOW_VERSION.name)),
        contact_id=_int(first(attrs.CONTACT_ID.name)),
        step=first(attrs.STEP.name) or None,
        status=first(attrs.STATUS.name),
        paused=first(attrs.PAUSED.name),
        execution_status=execution.status.name.title().replace("_", "") if execution.status else None,
        started_at=execution.start_time,
        closed_at=execution.close_time,
    )


def encode_page_token(token: bytes | None) -> str | None:
    return base64.urlsafe_b64encode(token).decode() if token else None


def decode_page_token(token: str | None) -> bytes | None:
    if not token:
        return None
    try:
        decoded = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadPageToken("not a page token from a previous answer") from exc
    if not decoded:
        raise BadPageToken("not a page token from a previous answer")
    return decoded


async def search(
    client: Client, query: str, limit: int, page_token: bytes | None = None
) -> tuple[list[VisibleEnrollment], bytes | None]:
    """One page of matching enrollments, and the token of the next page (None at the end)."""
    pages = client.list_workflows(query, page_size=limit, next_page_token=page_token)
    await pages.fetch_next_page()
    return [_visible(e) for e in pages.current_page], pages.next_page_token or None


class VisibilityGroup(BaseModel):
    step: str | None = Field(description="NurtureStep; null when the enrollment is at no step (ended).")
    status: str
    count: int


class VisibilityCounts(BaseModel):
    query: str
    total: int
    by_status: dict[str, int]
    groups: list[VisibilityGroup]


async def count_by_step_and_status(
    client: Client, prefix: str, flow_id: int, steps: list[str], version: int | None = None
) -> VisibilityCounts:
    """Counts per (step, status). Visibility groups only by ExecutionStatus, so each pair is
    counted on its own; what no known step accounts for is the ``step: null`` group."""
    base = enrollment_query(prefix, flow_id, version=version)

    async def count(query: str) -> int:
        return (await client.count_workflows(query)).count

    total, *per_status = await asyncio.gather(
        count(base), *(count(enrollment_query(prefix, flow_id, version=version, status=s)) for s in STATUSES)
    )
    by_status = dict(zip(STATUSES, per_status, strict=True))
    pairs = [(step, status) for status in STATUSES if by_status[status] for step in steps]
    counted = await asyncio.gather(
        *(count(enrollment_query(prefix, flow_id, version=version, step=step, status=status)) for step, status in pairs)
    )
    groups = [VisibilityGroup(step=step, status=status, count=n) for (step, status), n in zip(pairs, counted, strict=True) if n]
    for status in STATUSES:
        rest = by_status[status] - sum(g.count for g in groups if g.status == status)
        if rest:
            groups.append(VisibilityGroup(step=None, status=status, count=rest))
    return VisibilityCounts(query=base, total=total, by_status=by_status, groups=groups)
