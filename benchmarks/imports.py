"""How fast POST /contacts/import takes a file, on SQLite and on PostgreSQL.

Run from the repository root: ``.venv/bin/python -m benchmarks.imports`` (``--help`` for the knobs).
It starts a Temporal dev server (the API needs one, as for POST /contacts), then for each database
(a temporary SQLite file; a throw-away schema on PostgreSQL at 127.0.0.1:5432 when reachable) the
API under uvicorn in its own process, as deployed, with an admin key. Only loopback is used.

For N generated rows (default 50,000; about 110 bytes each) it measures three imports of the same
contacts, each streamed as CSV with chunked transfer encoding: creating them all, the same file again
(every row unchanged), and the file with one column changed (every row updated). Rows per second is
N over the time from the first byte sent to the answer. Timing claims live here, never in the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

from benchmarks.harness import POSTGRES_URL, dev_server, machine, postgres_reachable
from nurture.api_keys import Role, create_key
from nurture.db import Database
from nurture.migrating import upgrade

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "imports.json"
STAGES = ("subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer")
CHUNK_BYTES = 64 * 1024
HEADER = "email,name,company,lifecycle_stage,timezone,tags,plan,seats\n"


def csv_rows(tag: str, rows: int, plan: str) -> AsyncIterator[bytes]:
    """The file, made as it is sent: ``rows`` contacts, whose plan column is ``plan``."""

    async def chunks() -> AsyncIterator[bytes]:
        buffer = [HEADER]
        size = len(HEADER)
        for i in range(rows):
            line = (
                f"{tag}-{i}@bench.example,Reader {i},Company {i % 997},{STAGES[i % len(STAGES)]},"
                f"Europe/Berlin,newsletter;webinar,{plan},{i % 50}\n"
            )
            buffer.append(line)
            size += len(line)
            if size >= CHUNK_BYTES:
                yield "".join(buffer).encode()
                buffer, size = [], 0
        if buffer:
            yield "".join(buffer).encode()

    return chunks()


async def measure_import(base_url: str, key: str, rows: int) -> dict[str, Any]:
    """Import ``rows`` new contacts, the same file again, then the file with a column changed."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    passes = {"create": "starter", "unchanged": "starter", "update": "pro"}
    headers = {"content-type": "text/csv", "authorization": f"Bearer {key}"}
    results: dict[str, Any] = {"rows": rows}
    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30.0, read=1800.0)) as http:
        for name, plan in passes.items():
            began = time.perf_counter()
            response = await http.post("/contacts/import", content=csv_rows(tag, rows, plan), headers=headers)
            seconds = time.perf_counter() - began
            if response.status_code != 200:
                raise RuntimeError(f"the {name} import failed: {response.status_code} {response.text[:500]}")
            report = response.json()
            results[name] = {
                "seconds": round(seconds, 2),
                "rows_per_s": round(rows / seconds),
                **{k: report[k] for k in ("created", "updated", "unchanged", "failed")},
            }
    return results


# --- the API as deployed -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def serve_and_measure(database_url: str, db: Database, temporal_address: str, rows: int, data_dir: Path) -> dict:
    await upgrade(db)  # as `nurture migrate` does: the API serves only a database at the head revision
    async with db.session() as session:
        _, key = await create_key(session, "benchmark", Role.admin)
        await session.commit()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")} | {
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_DATA_DIR": str(data_dir),
        "NURTURE_TEMPORAL_ADDRESS": temporal_address,
        "NURTURE_RATE_LIMIT_ENABLED": "false",
        "NURTURE_LOG_LEVEL": "WARNING",
        "NURTURE_TRACKING_SECRET": secrets.token_urlsafe(32),
        "NURTURE_EMAIL_WEBHOOK_SECRET": secrets.token_urlsafe(32),
        "NURTURE_WEBHOOK_SECRET": secrets.token_urlsafe(32),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=REPO, env=env,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_healthy(base_url, server)
        return await measure_import(base_url, key, rows)
    finally:
        server.terminate()
        server.wait(timeout=30)


async def wait_until_healthy(base_url: str, server: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient(base_url=base_url) as http:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the API exited with code {server.returncode}")
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.perf_counter() > deadline:
                raise RuntimeError("the API did not become healthy in time")
            await asyncio.sleep(0.2)


async def on_sqlite(temporal_address: str, rows: int, workdir: Path) -> dict:
    url = f"sqlite:///{workdir / 'imports.db'}"
    db = Database(url)
    try:
        return await serve_and_measure(url, db, temporal_address, rows, workdir / "sqlite")
    finally:
        await db.dispose()


async def on_postgres(temporal_address: str, rows: int, workdir: Path) -> dict:
    schema = f"nurture_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    db = Database(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
        return await serve_and_measure(url, db, temporal_address, rows, workdir / "postgresql")
    finally:
        await db.dispose()
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def run(rows: int, postgres: bool, workdir: Path) -> dict[str, Any]:
    env = await dev_server()
    try:
        address = env.client.service_client.config.target_host
        report: dict[str, Any] = {"machine": machine(), "rows": rows, "imports": {}}
        report["imports"]["sqlite"] = await on_sqlite(address, rows, workdir)
        if postgres and postgres_reachable():
            report["imports"]["postgresql"] = await on_postgres(address, rows, workdir)
        return report
    finally:
        await env.shutdown()


def table(report: dict[str, Any]) -> str:
    lines = [f"contact import, N={report['rows']} rows of CSV, rows/s (seconds)"]
    lines.append(f"{'backend':12} {'create':>16} {'unchanged':>16} {'update':>16}")
    for backend, result in report["imports"].items():
        cells = [f"{result[p]['rows_per_s']} ({result[p]['seconds']} s)" for p in ("create", "unchanged", "update")]
        lines.append(f"{backend:12} " + " ".join(f"{cell:>16}" for cell in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--rows", type=int, default=50_000, help="rows per file (default %(default)s)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only, even if PostgreSQL is reachable")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes (default %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nurture-bench-imports-") as workdir:
        report = asyncio.run(run(args.rows, not args.no_postgres, Path(workdir)))
    print(table(report))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
