"""Reading the tracking links of a sent email, as the reader's mail client would; used by several tests."""

from __future__ import annotations

import html
import re

from sqlmodel import select

from nurture.models import Event, Message
from tests.conftest import eventually


def links_of(message: Message) -> tuple[str, list[str]]:
    """The pixel path and the click paths in a sent email, as the reader's client would request them."""
    pixel = re.search(r'src="http://127\.0\.0\.1:8000(/t/o/[^"]+\.gif)"', message.html)
    clicks = re.findall(r'href="http://127\.0\.0\.1:8000(/t/c/[^"]+)"', message.html)
    assert pixel, message.html
    return pixel.group(1), [html.unescape(c) for c in clicks]


async def first_message(db, contact_id: int) -> Message:
    async def sent():
        async with db.session() as s:
            return (await s.exec(select(Message).where(Message.contact_id == contact_id, Message.status == "sent"))).first()

    return await eventually(sent)


async def events_of(db, contact_id: int, kind: str) -> list[Event]:
    async with db.session() as s:
        return list((await s.exec(select(Event).where(Event.contact_id == contact_id, Event.type == kind))).all())
