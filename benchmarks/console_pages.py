"""How fast the console's pages answer with 10,000 contacts and 20,000 enrollments.

A fresh database (SQLite by default, or PostgreSQL) migrated as in production is filled with
contacts (20 reps, a few tags), two active flows with an enrollment per contact each (spread
over their steps and statuses), their step visits and their messages; the app runs in process
against a Temporal dev server (the rows have no workflows: the pages' state queries and history
reads are answered "not found" by a real server). Each page is fetched as a signed-in person,
a few times after one warm-up, and the median and worst times are reported.

    python -m benchmarks.console_pages [--contacts 10000] [--backend sqlite|postgresql] [--repeat 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import yaml

from api.main import create_app
from benchmarks.harness import backend, dev_server, engine_settings, machine
from nurture.api_keys import Role
from nurture.db import Database
from nurture.flow import load_flow
from nurture.models import Contact, Enrollment, Flow, FlowVersion, Message, StepVisit, Template, User, utcnow
from nurture.users import hash_password, start_session

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
FLOW_FILES = (REPO / "examples" / "demo-request-nurture.yaml", REPO / "flows" / "02-blog-subscriber-welcome.yaml")
REPS = 20
TAGS = ("vip", "beta", "webinar", "trial")
CHUNK = 2000


async def insert_rows(db: Database, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), CHUNK):
        async with db.engine.begin() as conn:
            await conn.execute(sa.insert(table), rows[start : start + CHUNK])


async def seed(db: Database, contacts: int) -> dict[str, Any]:
    rng = random.Random(7)
    now = utcnow()
    await insert_rows(
        db,
        Contact.__table__,  # type: ignore[attr-defined]
        [
            {
                "email": f"reader-{i}@example.com", "name": f"Reader {i}", "company": f"Company {i % 300}",
                "owner": f"rep-{i % REPS}", "timezone": "Europe/Paris", "properties": {}, "lists": [],
                "tags": [t for t in TAGS if rng.random() < 0.2], "subscription_status": "subscribed",
                "paused_until": now + timedelta(days=rng.randint(1, 20)) if i % 50 == 0 else None,
                "paused_by": f"rep-{i % REPS}" if i % 50 == 0 else None, "pause_reason": "call" if i % 50 == 0 else None,
                "created_at": now, "updated_at": now,
            }
            for i in range(contacts)
        ],
    )
    flow_ids = []
    async with db.session() as session:
        known: set[str] = set()
        for path in FLOW_FILES:
            definition = load_flow(yaml.safe_load(path.read_text()))
            for step in definition.steps:
                template = getattr(step, "template", None)
                if template and template not in known:
                    known.add(template)
                    session.add(Template(key=template, subject=f"{template} subject", html="<p>hi</p>"))
            flow = Flow(name=definition.name, status="active", active_version=1)
            session.add(flow)
            await session.flush()
            session.add(FlowVersion(flow_id=flow.id, version=1, definition=definition.model_dump(mode="json", by_alias=True)))
            flow_ids.append((flow.id, [s.id for s in definition.steps], [s.id for s in definition.steps if s.type == "send_email"]))
        await session.commit()
        first_contact = (await session.exec(sa.select(sa.func.min(Contact.id)))).one()[0]
    enrollments, visits, messages = [], [], []
    enrollment_id = 0
    for flow_id, steps, emails in flow_ids:
        for n in range(contacts):
            enrollment_id += 1
            contact_id = first_contact + n
            at = rng.randrange(len(steps))
            status = rng.choices(["active", "completed", "exited"], [6, 2, 2])[0]
            started = now - timedelta(days=rng.randint(0, 30))
            enrollments.append({
                "id": enrollment_id, "flow_id": flow_id, "flow_version": 1, "contact_id": contact_id, "sequence": 1,
                "workflow_id": f"bench-{flow_id}-{contact_id}", "run_id": None, "status": status,
                "current_step": steps[at], "paused": False, "exit_reason": "goal_met" if status == "exited" else None,
                "progress_seq": 1, "started_at": started, "ended_at": None if status == "active" else now, "updated_at": now,
            })
            for step in steps[: at + 1]:
                visits.append({"enrollment_id": enrollment_id, "flow_id": flow_id, "flow_version": 1, "contact_id": contact_id,
                               "step_id": step, "lifecycle_stage": None, "entered_at": started})
                if step in emails:
                    messages.append({
                        "idempotency_key": f"bench-{enrollment_id}-{step}", "workflow_id": f"bench-{flow_id}-{contact_id}",
                        "flow_id": flow_id, "flow_version": 1, "step_id": step, "contact_id": contact_id,
                        "to_email": f"reader-{n}@example.com", "template_key": step, "kind": "marketing", "subject": "Hello",
                        "html": "", "text": "", "provider": "outbox", "status": "sent", "attempts": 1, "sent_at": started,
                        "created_at": started,
                    })
    await insert_rows(db, Enrollment.__table__, enrollments)  # type: ignore[attr-defined]
    await insert_rows(db, StepVisit.__table__, visits)  # type: ignore[attr-defined]
    await insert_rows(db, Message.__table__, messages)  # type: ignore[attr-defined]
    async with db.engine.connect() as conn:  # as autovacuum would, long before anyone looks
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(sa.text("ANALYZE"))
    return {"contacts": contacts, "enrollments": len(enrollments), "step_visits": len(visits), "messages": len(messages),
            "flow_id": flow_ids[0][0], "contact_id": first_contact + 1, "enrollment_id": 2}


async def session_cookie(db: Database, role: Role, owner: str | None = None) -> str:
    async with db.session() as session:
        user = User(email=f"{role}@example.com", role=role, owner=owner, password_hash=hash_password("benchmark-password"))
        session.add(user)
        await session.flush()
        token = await start_session(session, user, timedelta(hours=1))
        await session.commit()
    return token


async def timed(http: httpx.AsyncClient, path: str, repeat: int) -> dict[str, Any]:
    first = await http.get(path)
    assert first.status_code == 200, (path, first.status_code, first.text[:300])
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = await http.get(path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (path, response.status_code)
    return {"page": path, "p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1), "bytes": len(first.content)}


async def run(contacts: int, backend_name: str, repeat: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        env = await dev_server()
        try:
            async with backend(backend_name, Path(workdir)) as store:
                started = time.perf_counter()
                seeded = await seed(store.db, contacts)
                seeded["seed_seconds"] = round(time.perf_counter() - started, 1)
                settings = engine_settings(store.url, Path(workdir), "console-bench", auth_required=True)
                app = create_app(settings, db=store.db, client=env.client)
                people = {
                    "marketer": await session_cookie(store.db, Role.marketer),
                    "sales": await session_cookie(store.db, Role.sales, owner="rep-1"),
                }
                pages = [
                    ("marketer", "/app/flows"),
                    ("marketer", "/app/dashboard"),
                    ("marketer", f"/app/flows/{seeded['flow_id']}"),
                    ("marketer", f"/app/flows/{seeded['flow_id']}/enrollments?step=wait-2d&behind=waiting"),
                    ("marketer", f"/app/flows/{seeded['flow_id']}/enrollments?step=welcome&behind=entered"),
                    ("marketer", "/app/contacts?q=reader%2012"),
                    ("marketer", "/app/contacts?tag=vip"),
                    ("marketer", f"/app/contacts/{seeded['contact_id']}"),
                    ("marketer", f"/app/enrollments/{seeded['enrollment_id']}"),
                    ("marketer", "/app/playbooks"),
                    ("sales", "/app/my"),
                    ("sales", "/app/contacts"),
                ]
                rows = []
                transport = httpx.ASGITransport(app=app)
                for who, path in pages:
                    async with httpx.AsyncClient(
                        transport=transport, base_url="http://bench", cookies={"nurture_session": people[who]}
                    ) as http:
                        rows.append({"as": who, **await timed(http, path, repeat)})
        finally:
            await env.shutdown()
    return {"machine": machine(), "backend": backend_name, "repeat": repeat, "data": seeded, "pages": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=10_000, help="contacts; each enrolls in both flows")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.contacts, args.backend, args.repeat))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"console-{args.backend}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"{result['backend']}: {result['data']}")
    for row in result["pages"]:
        print(f"  {row['p50_ms']:8.1f} ms median  {row['max_ms']:8.1f} ms max  {row['as']:9} {row['page']}")


if __name__ == "__main__":
    main()
