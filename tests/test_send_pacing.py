"""One worker's hand-overs to the provider (PacedProvider): evenly spaced at the configured rate,
and never more than the rate in any one second, even when the worker's event loop stalls while
sends wait their turn (a busy worker): a provider counting per second would answer 429."""

from __future__ import annotations

import asyncio
import time

from activities.email.providers import OutgoingEmail, PacedProvider, TemporaryDeliveryError

RATE = 20


class Recorder:
    """A provider that takes every message at once and notes when it arrived."""

    name = "recorder"
    idempotent = True

    def __init__(self, throttle_first: float | None = None):
        self.arrivals: list[float] = []
        self.throttle_first = throttle_first

    async def deliver(self, email: OutgoingEmail, accepted=None) -> str:
        now = asyncio.get_running_loop().time()
        if self.throttle_first is not None:
            wait, self.throttle_first = self.throttle_first, None
            raise TemporaryDeliveryError("429 too many requests", retry_after=wait)
        self.arrivals.append(now)
        return f"id-{len(self.arrivals)}"


def message(i: int) -> OutgoingEmail:
    return OutgoingEmail(idempotency_key=f"k{i}", sender="a@example.com", to=f"c{i}@example.com",
                         subject="s", html="<p>h</p>", text="t")


def busiest_second(arrivals: list[float]) -> int:
    return max(sum(1 for t in arrivals[i:] if t - start < 1.0) for i, start in enumerate(arrivals))


async def test_a_stalled_worker_does_not_catch_up_in_a_burst_over_the_rate():
    recorder = Recorder()
    paced = PacedProvider(recorder, RATE)

    async def stall() -> None:
        await asyncio.sleep(0.5)
        time.sleep(0.4)  # the loop is blocked: every turn that falls in here is due when it ends

    await asyncio.gather(stall(), *(paced.deliver(message(i)) for i in range(3 * RATE)))

    assert len(recorder.arrivals) == 3 * RATE
    assert busiest_second(recorder.arrivals) <= RATE


async def test_sends_are_spaced_at_the_rate_when_nothing_stalls():
    recorder = Recorder()
    paced = PacedProvider(recorder, RATE)
    await asyncio.gather(*(paced.deliver(message(i)) for i in range(RATE)))
    gaps = [b - a for a, b in zip(recorder.arrivals, recorder.arrivals[1:])]
    assert min(gaps) >= 0.5 / RATE  # spaced, not handed over in a burst
    assert busiest_second(recorder.arrivals) <= RATE


async def test_a_throttling_answer_holds_the_next_sends_for_its_retry_after():
    recorder = Recorder(throttle_first=0.5)
    paced = PacedProvider(recorder, RATE)
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        await paced.deliver(message(0))
    except TemporaryDeliveryError:
        pass
    await asyncio.gather(*(paced.deliver(message(i)) for i in range(1, 4)))
    assert recorder.arrivals[0] - began >= 0.5
