"""``nurture import FILE``: stream a contact file to POST /contacts/import, with a progress bar."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

MEDIA_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
CHUNK_BYTES = 64 * 1024
ERRORS_SHOWN = 20
# The answer comes once the server has stored the last chunk and told the engine: allow for it.
TIMEOUT = httpx.Timeout(30.0, read=600.0)

EXIT_OK, EXIT_ROWS_FAILED, EXIT_REQUEST_FAILED = 0, 1, 2


def file_format(path: Path, given: str | None) -> str | None:
    return given or SUFFIXES.get(path.suffix.lower())


def import_file(path: Path, kind: str, url: str, key: str | None, out: TextIO, err: TextIO) -> int:
    """Upload ``path`` in chunks (never read whole) and print the report; the exit code says how it went."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request log line would cut through the progress bar
    headers = {"content-type": MEDIA_TYPES[kind]}
    if key:
        headers["authorization"] = f"Bearer {key}"
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=Console(file=err),
    )

    def chunks() -> Iterator[bytes]:
        with path.open("rb") as file, progress:
            task = progress.add_task(f"importing {path.name}", total=path.stat().st_size)
            while chunk := file.read(CHUNK_BYTES):
                yield chunk
                progress.advance(task, len(chunk))

    endpoint = f"{url.rstrip('/')}/contacts/import"
    try:
        with httpx.Client(timeout=TIMEOUT) as http:
            response = http.post(endpoint, content=chunks(), headers=headers)
    except httpx.HTTPError as exc:
        err.write(f"nurture import: the upload to {endpoint} failed: {exc or type(exc).__name__}\n")
        return EXIT_REQUEST_FAILED
    try:
        body: Any = response.json()
    except json.JSONDecodeError:
        body = None
    if response.status_code != 200:
        detail = body.get("detail") if isinstance(body, dict) else response.text[:500]
        err.write(f"nurture import: {response.status_code} {response.reason_phrase}: {_detail(detail)}\n")
        if isinstance(body, dict) and isinstance(body.get("report"), dict):
            _print_report(body["report"], out)
        return EXIT_REQUEST_FAILED
    _print_report(body, out)
    return EXIT_ROWS_FAILED if body["failed"] else EXIT_OK


def _detail(detail: Any) -> str:
    if isinstance(detail, list):  # a 422 lists its problems
        return "; ".join(str(item.get("msg", item)) if isinstance(item, dict) else str(item) for item in detail)
    return str(detail)


def _print_report(report: dict[str, Any], out: TextIO) -> None:
    out.write(
        f"{report['rows']} rows read: {report['created']} created, {report['updated']} updated, "
        f"{report['unchanged']} unchanged, {report['failed']} failed\n"
    )
    errors = report.get("errors", [])
    for error in errors[:ERRORS_SHOWN]:
        where = f"row {error['row']} (line {error['line']})" + (f" {error['field']}" if error.get("field") else "")
        out.write(f"  {where}: {error['reason']}\n")
    hidden = len(errors) - ERRORS_SHOWN
    if hidden > 0 or report.get("truncated"):
        out.write(f"  ... and more problems ({report['failed']} rows failed in all)\n")
