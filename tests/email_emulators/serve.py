"""One vendor's emulator as its own process (benchmarks/send_rate.py), with its counters readable.

    python -m tests.email_emulators.serve sendgrid --port 8025 --rate-limit 50

``GET /_emulator/stats`` answers what the emulator saw: requests let through (with their times),
429s, messages accepted and how many distinct messages of ours (by ``nurture_message_id``).
"""

from __future__ import annotations

import argparse
import time

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.email_emulators.vendors import MailgunEmulator, PostmarkEmulator, SendgridEmulator

EMULATORS = {"sendgrid": SendgridEmulator, "postmark": PostmarkEmulator, "mailgun": MailgunEmulator}


def build(name: str, rate_limit: float, credential: str):
    emulator = EMULATORS[name](credential=credential, rate_per_second=rate_limit)
    offset = time.time() - time.monotonic()

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({
            "admitted_unix": [at + offset for at in emulator.admitted],
            "throttled": emulator.throttled,
            "accepted": len(emulator.sent),
            "distinct_messages": len({a.metadata.get("nurture_message_id") for a in emulator.sent}),
            "busiest_second": emulator.busiest_second(),
        })

    emulator.app.router.routes.append(Route("/_emulator/stats", stats))
    return emulator


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("vendor", choices=sorted(EMULATORS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate-limit", type=float, default=0.0)
    parser.add_argument("--credential", default="test-key")
    options = parser.parse_args()
    emulator = build(options.vendor, options.rate_limit, options.credential)
    uvicorn.run(emulator.app, host="127.0.0.1", port=options.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
