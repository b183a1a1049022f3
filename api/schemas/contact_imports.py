from __future__ import annotations

from pydantic import Field

from api.schemas.common import Out


class ImportErrorOut(Out):
    row: int = Field(description="The data row, from 1 (a CSV's header row is not counted).")
    line: int = Field(description="The line of the file the row starts on, from 1.")
    field: str | None = Field(description="The contact field at fault (e.g. timezone, properties.plan), when one is.")
    reason: str


class ImportOut(Out):
    rows: int = Field(description="Data rows read.")
    created: int
    updated: int
    unchanged: int = Field(description="Rows that changed nothing (nothing was written for them).")
    failed: int = Field(description="Rows skipped; each one's problems are in `errors`.")
    errors: list[ImportErrorOut] = Field(description="At most import_max_errors problems, in file order.")
    truncated: bool = Field(description="More problems were found than `errors` lists.")
