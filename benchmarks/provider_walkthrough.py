"""Each email provider on the running stack, against its emulator, from enrollment to reports.

For each provider, ``nurture stack`` (the Temporal dev server, ``python -m worker`` and the API
under uvicorn, as a user runs them) starts configured for that provider, its API pointed at the
provider's emulator on loopback (tests/email_emulators: moto in server mode for SES v2, with
SNS's signed posts from a test certificate; emulators of SendGrid, Postmark and Mailgun). Then,
over HTTP only, as a team would:

1. an admin key (``nurture create-api-key``), two templates and a flow (send, wait a day, send);
   for SES, SNS's subscription confirmation to ``/webhooks/ses``, which the endpoint confirms;
2. three contacts enrolled through the API; each first email arrives at the emulator carrying
   ``nurture_message_id`` and ``nurture_enrollment`` in the provider's metadata field and our
   Message-ID, and its row records the provider's message id;
3. the emulator posts, to the provider's own endpoint with the provider's own signature, a
   delivery report (then the same report again, as a provider's retry does), a hard bounce (the
   contact becomes ``bounced`` and its enrollment exits) and a complaint (``unsubscribed``, exits);
4. a forged post (a key that is not the vendor's) is refused; for Mailgun, a replayed post too;
5. the stack is stopped with Ctrl-C (SIGINT) and must exit 0.

Every step's answer and check goes to benchmarks/results/provider_walkthrough.json.

    .venv/bin/python -m benchmarks.provider_walkthrough                       # all four
    .venv/bin/python -m benchmarks.provider_walkthrough --providers sendgrid  # one
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import logging
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import httpx
from moto.server import ThreadedMotoServer

from benchmarks.harness import machine
from nurture.settings import Settings
from tests.email_emulators.fixtures import SES_SENDER, running
from tests.email_emulators.loopback import serving
from tests.email_emulators.ses_front import SesThrottlingFront
from tests.email_emulators.sns import TOPIC, SnsEmulator
from tests.email_emulators.stack import PATHS, PROVIDERS, Stack

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results" / "provider_walkthrough.json"
BOOT_TIMEOUT = 120.0
SETTLE_TIMEOUT = 60.0
FLOW = {
    "name": "Provider walkthrough",
    "trigger": {"type": "manual"},
    "steps": [
        {"id": "hello", "type": "send_email", "template": "walk-hello"},
        {"id": "a-day", "type": "delay", "duration": "1d"},
        {"id": "follow-up", "type": "send_email", "template": "walk-follow-up"},
    ],
}
CONTACTS = ("delivered", "bounced", "complained")


class WalkthroughFailed(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Emulated:
    """One provider's emulator, the NURTURE_* settings pointing the stack at it, and what it received."""

    name: str
    env: dict[str, str]
    settings: Settings  # the same values as settings (the report helpers read the webhook keys)
    emulator: Any  # the vendor's emulator; for SES the SNS emulator (moto holds the sends)
    ses_front: SesThrottlingFront | None = None

    def sends(self) -> list[dict[str, Any]]:
        """What reached the provider: the recipient, our metadata as the provider holds it, the Message-ID."""
        if self.ses_front is not None:
            return [{"to": s["to"], "metadata": s["tags"], "message_id_header": s["headers"].get("Message-ID"),
                     "provider_id": s["message_id"]} for s in self.ses_front.sends]
        return [{"to": a.to, "metadata": a.metadata, "provider_id": a.provider_id,
                 "message_id_header": a.headers.get("Message-ID") or a.headers.get("Message-Id")}
                for a in self.emulator.sent]


@asynccontextmanager
async def emulated(name: str) -> AsyncIterator[Emulated]:
    if name == "ses":
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        host, port = moto.get_host_and_port()
        moto_url = f"http://{host}:{port}"
        try:
            ses = boto3.client("sesv2", endpoint_url=moto_url, region_name="us-east-1",
                               aws_access_key_id="walkthrough", aws_secret_access_key="walkthrough")
            # As a team sets SES up (docs/email-providers.md): a verified sender, a configuration set.
            ses.create_email_identity(EmailIdentity=SES_SENDER)
            ses.create_configuration_set(ConfigurationSetName="nurture-events")
            sns, front = SnsEmulator(), SesThrottlingFront(moto_url)
            async with serving(sns.app) as sns_url, serving(front.app) as front_url:
                sns.base_url = sns_url
                env = {
                    "NURTURE_SES__BASE_URL": front_url, "NURTURE_SES__REGION": "us-east-1",
                    "NURTURE_SES__ACCESS_KEY_ID": "walkthrough", "NURTURE_SES__SECRET_ACCESS_KEY": "walkthrough",
                    "NURTURE_SES__CONFIGURATION_SET": "nurture-events",
                    "NURTURE_SES__SNS_TOPIC_ARNS": json.dumps([TOPIC]),
                    # The SNS emulator's certificate is served on loopback, not from sns.<region>.amazonaws.com.
                    "NURTURE_SES__SNS_TRUSTED_URL_PREFIX": sns_url + "/",
                }
                yield Emulated(name, env, Settings(_env_file=None, email_provider="ses"), sns, front)
        finally:
            moto.stop()
        return
    async with running(name) as (emulator, vendor):
        if name == "postmark":
            # The webhook URL's password is a secret like any other (the API refuses a short one).
            vendor = vendor.model_copy(update={"webhook_username": "postmark", "webhook_password": secrets.token_urlsafe(24)})
        env = {f"NURTURE_{name.upper()}__{key.upper()}": str(value)
               for key, value in vendor.model_dump().items() if value not in (None, "") and key != "timeout_seconds"}
        yield Emulated(name, env, Settings(_env_file=None, email_provider=name, **{name: vendor}), emulator)


@dataclass
class Walk:
    """One provider's run: each step as it happened, and the checks that must hold."""

    provider: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    began: float = field(default_factory=time.monotonic)

    def step(self, what: str, **details: Any) -> None:
        entry = {"at_s": round(time.monotonic() - self.began, 2), "step": what, **details}
        self.steps.append(entry)
        print(f"[{self.provider}] {json.dumps(entry, default=str)}", file=sys.stderr, flush=True)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.failures.append(what)
            print(f"[{self.provider}] FAILED: {what}", file=sys.stderr, flush=True)


class RunningStack:
    """``nurture stack`` as its own process (it starts Temporal, migrates, then the worker and the API)."""

    def __init__(self, workdir: Path, provider_env: dict[str, str], provider: str):
        self.data_dir = workdir / "data"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NURTURE_")} | {
            "NURTURE_DATA_DIR": str(self.data_dir),
            "NURTURE_DATABASE_URL": f"sqlite:///{self.data_dir / 'nurture.db'}",
            "NURTURE_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
            "NURTURE_TEMPORAL_UI_PORT": str(free_port()),
            "NURTURE_TEMPORAL_TASK_QUEUE": f"walk-{uuid.uuid4().hex[:8]}",
            "NURTURE_API_HOST": "127.0.0.1",
            "NURTURE_API_PORT": str(port),
            "NURTURE_EMAIL_PROVIDER": provider,
            "NURTURE_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        } | provider_env
        self.log = workdir / "stack.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nurture.cli", "stack"], cwd=REPO, env=self.env,
            stdin=subprocess.DEVNULL, stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    async def healthy(self, http: httpx.AsyncClient) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise WalkthroughFailed(f"nurture stack exited with {self.process.returncode}:\n{self.output()}")
            try:
                if (await http.get("/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise WalkthroughFailed(f"/health did not answer within {BOOT_TIMEOUT:.0f}s:\n{self.output()}")
            await asyncio.sleep(0.2)

    def create_api_key(self) -> str:
        answer = subprocess.run(
            [sys.executable, "-m", "nurture.cli", "create-api-key", "--name", "walkthrough", "--role", "admin"],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=60, check=True,
        )
        return answer.stdout.strip().splitlines()[-1]

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; answers its exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def delivered_at(self, message_id: int) -> str | None:
        """Not in the API's message answer: read from the stack's database."""
        with sqlite3.connect(self.data_dir / "nurture.db") as db:
            row = db.execute("SELECT delivered_at FROM messages WHERE id = ?", (message_id,)).fetchone()
        return row[0] if row else None


async def settle(check, what: str, timeout: float = SETTLE_TIMEOUT) -> Any:
    """Poll until ``check()`` (a coroutine function or a plain one) answers something truthy; answers it."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() > deadline:
            raise WalkthroughFailed(f"{what}: not within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def answer(response: httpx.Response) -> dict[str, Any]:
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text[:300]
    return {"status": response.status_code, "body": body}


async def walk(name: str, workdir: Path) -> dict[str, Any]:
    record = Walk(name)
    async with AsyncExitStack() as cleanup:
        provider = await cleanup.enter_async_context(emulated(name))
        stack = RunningStack(workdir, provider.env, name)
        stack.start()
        http = await cleanup.enter_async_context(httpx.AsyncClient(base_url=stack.url, timeout=30))
        try:
            await stack.healthy(http)
            record.step("stack_healthy", api=stack.url)
            http.headers["Authorization"] = f"Bearer {stack.create_api_key()}"
            await _walk(record, provider, stack, http)
        except WalkthroughFailed as exc:
            record.failures.append(str(exc))
        finally:
            code = stack.stop()
            record.step("stack_stopped", exit_code=code)
            record.check(code == 0, f"nurture stack exited {code} on Ctrl-C:\n{stack.output()}")
    return {"provider": name, "ok": not record.failures, "seconds": round(time.monotonic() - record.began, 1),
            "failures": record.failures, "steps": record.steps}


async def _walk(record: Walk, provider: Emulated, stack: RunningStack, http: httpx.AsyncClient) -> None:
    name = provider.name
    for key, subject in (("walk-hello", "Hello from the walkthrough"), ("walk-follow-up", "A day later")):
        created = await http.post("/templates", json={"key": key, "subject": subject, "html": f"<p>{subject}</p>"})
        record.check(created.status_code == 201, f"template {key}: {created.status_code} {created.text}")
    flow = (await http.post("/flows", json=FLOW)).json()
    activated = await http.post(f"/flows/{flow['id']}/activate")
    record.check(activated.status_code == 200, f"activating the flow: {activated.status_code} {activated.text}")

    reports = Stack(name, provider.emulator, provider.settings, http)
    if name == "ses":
        confirmation = provider.emulator.subscription_confirmation()
        confirmed = await http.post(PATHS["ses"], **SnsEmulator.post(confirmation))
        record.step("sns_subscription_confirmation", **answer(confirmed), sns_confirmed=len(provider.emulator.confirmed))
        record.check(confirmed.status_code == 200 and provider.emulator.confirmed == [confirmation["Token"]],
                     "the SNS subscription was not confirmed")

    contacts: dict[str, dict[str, Any]] = {}
    for role in CONTACTS:
        contact = (await http.post("/contacts", json={"email": f"{role}-{name}@example.com", "name": role.title()})).json()
        enrolled = await http.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact["id"]})
        record.check(enrolled.status_code == 201, f"enrolling {role}: {enrolled.status_code} {enrolled.text}")
        contacts[role] = {"contact": contact, "enrollment": enrolled.json(), "enrolled_at": time.monotonic()}

    async def sent(role: str) -> dict[str, Any] | None:
        page = (await http.get(f"/contacts/{contacts[role]['contact']['id']}/messages")).json()
        rows = [m for m in page["items"] if m["status"] == "sent" and m["provider_message_id"]]
        return rows[0] if rows else None

    for role in CONTACTS:
        message = await settle(lambda role=role: sent(role), f"the {role} contact's email recorded as sent")
        arrived = [s for s in provider.sends() if s["to"] == message["to_email"]]
        contacts[role]["message"] = message
        record.step("send_arrived", contact=role, seconds_after_enrolling=round(time.monotonic() - contacts[role]["enrolled_at"], 2),
                    at_provider=arrived, provider_message_id=message["provider_message_id"])
        record.check(len(arrived) == 1, f"{role}: the provider got {len(arrived)} sends, not 1")
        if arrived:
            metadata = arrived[0]["metadata"]
            record.check(metadata.get("nurture_message_id") == str(message["id"]), f"{role}: nurture_message_id {metadata}")
            record.check(metadata.get("nurture_enrollment") == contacts[role]["enrollment"]["workflow_id"],
                         f"{role}: nurture_enrollment {metadata}")
            record.check(str(arrived[0]["message_id_header"] or "").endswith("@nurture.local>"),
                         f"{role}: Message-ID {arrived[0]['message_id_header']!r}")

    def row(role: str) -> SimpleNamespace:
        m = contacts[role]["message"]
        return SimpleNamespace(id=m["id"], workflow_id=m["workflow_id"], provider_message_id=m["provider_message_id"],
                               to_email=m["to_email"], subject=m["subject"])

    # The delivery report, then the same report again: providers retry a post they think failed.
    delivery = reports.signed(reports.payload("delivered", row("delivered")))
    first = await http.post(PATHS[name], **delivery)
    delivered_at = await settle(lambda: stack.delivered_at(contacts["delivered"]["message"]["id"]), "messages.delivered_at")
    record.step("delivery_report", **answer(first), delivered_at=delivered_at)
    record.check(first.status_code == 200 and first.json()["recorded"] == 1, f"delivery report: {first.text}")
    if name == "mailgun":
        # The identical request is a replay (its token is spent): 406, which Mailgun does not retry.
        replayed = await http.post(PATHS[name], **delivery)
        record.step("replayed_delivery_report", **answer(replayed))
        record.check(replayed.status_code == 406, f"a replayed Mailgun post answered {replayed.status_code}")
        # Mailgun's retry of a post is signed afresh: a new token, the same event id.
        event_data = delivery["json"]["event-data"]
        again = await http.post(PATHS[name], **reports.signed(event_data))
    else:
        # SNS, SendGrid and Postmark retry with the very same post.
        again = await http.post(PATHS[name], **delivery)
    record.step("delivery_report_again", **answer(again))
    record.check(again.status_code == 200 and again.json()["duplicates"] == 1 and again.json()["recorded"] == 0,
                 f"the repeated delivery report was not a duplicate: {again.text}")

    for role, kind, status, reason in (("bounced", "hard_bounce", "bounced", "bounced"),
                                       ("complained", "complaint", "unsubscribed", "unsubscribed")):
        posted = await reports.report(kind, row(role))
        contact_id, enrollment_id = contacts[role]["contact"]["id"], contacts[role]["enrollment"]["id"]

        async def exited(contact_id=contact_id, enrollment_id=enrollment_id) -> dict[str, Any] | None:
            contact = (await http.get(f"/contacts/{contact_id}")).json()
            enrollment = (await http.get(f"/enrollments/{enrollment_id}")).json()
            done = enrollment["status"] != "active" and contact["subscription_status"] != "subscribed"
            return {"contact": contact["subscription_status"], "enrollment": enrollment["status"],
                    "exit_reason": enrollment["exit_reason"]} if done else None

        outcome = await settle(exited, f"{role}: the contact suppressed and its enrollment ended")
        record.step(f"{kind}_report", **answer(posted), outcome=outcome)
        record.check(posted.status_code == 200 and posted.json()["recorded"] == 1, f"{kind} report: {posted.text}")
        record.check(outcome == {"contact": status, "enrollment": "exited", "exit_reason": reason}, f"{kind}: {outcome}")
        refused = await http.post(f"/flows/{flow['id']}/enrollments", json={"contact_id": contact_id})
        record.step(f"{role}_contact_enrolled_again", **answer(refused))
        record.check(refused.status_code == 409, f"{role}: enrolling again answered {refused.status_code}")

    forged = await reports.forged("complaint", row("delivered"))
    record.step("forged_report", **answer(forged))
    record.check(forged.status_code == 401, f"a forged post answered {forged.status_code}")
    still = (await http.get(f"/contacts/{contacts['delivered']['contact']['id']}")).json()["subscription_status"]
    record.check(still == "subscribed", f"the forged complaint changed the contact: {still}")

    waiting = (await http.get(f"/enrollments/{contacts['delivered']['enrollment']['id']}")).json()
    record.step("delivered_contact_waits", status=waiting["status"], current_step=waiting["current_step"],
                sends_at_provider=len(provider.sends()))
    record.check(waiting["status"] == "active", f"the delivered contact's enrollment is {waiting['status']}")
    record.check(len(provider.sends()) == len(CONTACTS), f"the provider got {len(provider.sends())} sends, not {len(CONTACTS)}")


async def main_async(providers: list[str]) -> dict[str, Any]:
    results = []
    for name in providers:
        with tempfile.TemporaryDirectory(prefix=f"walk-{name}-") as workdir:
            results.append(await walk(name, Path(workdir)))
    return {"providers": results, "ok": all(r["ok"] for r in results), "machine": machine(),
            "load_average": os.getloadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--providers", nargs="+", choices=PROVIDERS, default=list(PROVIDERS))
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON record goes")
    options = parser.parse_args(argv)
    report = asyncio.run(main_async(options.providers))
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(report, indent=2, default=str) + "\n")
    for result in report["providers"]:
        verdict = "ok" if result["ok"] else "FAILED: " + "; ".join(result["failures"])[:2000]
        print(f"{result['provider']:9} {result['seconds']:6.1f} s  {verdict}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
