"""POST /contacts/import: a CSV or JSON-lines file of contacts, read as it streams in."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.requests import ClientDisconnect

from api.deps import CallerDep, DatabaseDep, EnrollerDep, SettingsDep
from api.errors import ErrorOut, ValidationErrorOut
from api.limits import BodyRefused
from api.schemas.contact_imports import ImportOut
from api.schemas.contacts import ContactUpsert
from nurture.contact_import import ContactImporter, FileRefused, ImportReport, ImportStopped
from nurture.import_formats import Format
from nurture.logging import get_logger

router = APIRouter(prefix="/contacts", tags=["contacts"])

IMPORT_PATH = "/contacts/import"
FORMATS: dict[str, Format] = {"text/csv": "csv", "application/x-ndjson": "jsonl", "application/jsonl": "jsonl"}

# The body is read raw, as it arrives, so its schema is declared by hand.
IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "A CSV file whose header row names the columns, one of them email; or JSON lines, "
        "one POST /contacts body per line (application/jsonl is read the same way). UTF-8.",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
            "application/x-ndjson": {"schema": {"type": "string"}},
        },
    }
}

STOPPED = "Stopped part-way; `detail` says why and where, `report` counts the rows already imported"


@router.post(
    "/import",
    response_model=ImportOut,
    openapi_extra=IMPORT_BODY,
    responses={
        408: {"model": ErrorOut, "description": f"The client sent nothing for import_idle_timeout_seconds. {STOPPED}"},
        413: {"description": f"Larger than import_max_bytes, or more rows than import_max_rows. {STOPPED}"},
        422: {"model": ValidationErrorOut, "description": "The CSV header cannot be used (no email column, too many columns, repeated names)"},
        503: {"model": ErrorOut, "description": f"Temporal or the database became unreachable. {STOPPED}"},
    },
)
async def import_contacts(
    request: Request, db: DatabaseDep, enroller: EnrollerDep, settings: SettingsDep, caller: CallerDep
) -> ImportOut | JSONResponse:
    """Create or update contacts from a file, as POST /contacts would, row by row.

    Contacts are matched by email (case-insensitively). Known columns (keys) set contact fields,
    any other becomes a property; an empty CSV cell changes nothing. A bad row is reported
    (row, line, field, reason) and skipped; the others are written in chunks of
    import_chunk_rows, each committed as it goes. Running enrollments of a changed contact hear
    of the change, and property triggers fire, as for POST /contacts.
    """
    kind = _format(request.headers.get("content-type", ""))
    importer = ContactImporter(db, enroller, settings, ContactUpsert, kind)
    log = get_logger(api_key=caller.name if caller else None, api_key_id=caller.key_id if caller else None)
    log.info("contact_import_started", format=kind)
    try:
        report = await importer.run(request.stream())
    except FileRefused as exc:
        raise RequestValidationError([{"type": "value_error", "loc": ("body",), "msg": str(exc)}]) from exc
    except BodyRefused as exc:  # past import_max_bytes as it streamed in
        return _stopped(log, importer.report, exc.status_code, str(exc.detail))
    except ImportStopped as exc:
        return _stopped(log, importer.report, exc.status, exc.reason)
    except DBAPIError as exc:
        return _stopped(log, importer.report, 503, f"the database is unavailable ({exc.orig})")
    except ClientDisconnect:
        log.warning("contact_import_abandoned", **_counts(importer.report))
        return JSONResponse({"detail": "the client went away before the end of the file"}, status_code=400)
    log.info("contacts_imported", format=kind, **_counts(report))
    return ImportOut.model_validate(report)


def _format(content_type: str) -> Format:
    media, _, parameters = content_type.partition(";")
    kind = FORMATS.get(media.strip().lower())
    if kind is None:
        raise HTTPException(
            status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            detail=f"send the file as text/csv or application/x-ndjson (JSON lines), not {media.strip() or 'no Content-Type'}",
        )
    charset = next((p.split("=", 1)[1].strip(' "').lower() for p in parameters.split(";") if p.strip().lower().startswith("charset=")), "utf-8")
    if charset not in ("utf-8", "utf8"):
        raise HTTPException(status_code=status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail=f"the file must be UTF-8, not {charset}")
    return kind


def _counts(report: ImportReport) -> dict[str, int]:
    return {name: getattr(report, name) for name in ("rows", "created", "updated", "unchanged", "failed")}


def _stopped(log, report: ImportReport, status_code: int, reason: str) -> JSONResponse:
    log.warning("contact_import_stopped", reason=reason, **_counts(report))
    detail = f"{reason}; the import stopped after row {report.rows}, the rows before it are imported ({report.summary()})"
    body = {"detail": detail, "report": ImportOut.model_validate(report).model_dump(mode="json")}
    return JSONResponse(body, status_code=status_code)
