"""Engagement tracking in a rendered marketing email: links go through the click
redirect, and a 1x1 pixel at the end records opens (see nurture/tracking.py)."""

from __future__ import annotations

import html
import re
from datetime import datetime

from nurture.settings import Settings
from nurture.tracking import click_path, click_token, expiry, open_token, trackable_url

_LINK = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
# An author can keep a link untracked (a legal page, a calendar link) with this attribute.
NO_TRACK = "data-nurture-notrack"


class LinkTracker:
    def __init__(self, base_url: str, secret: str, token_days: int):
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.token_days = token_days

    @classmethod
    def from_settings(cls, settings: Settings) -> LinkTracker | None:
        if not settings.tracking_enabled:
            return None
        return cls(settings.public_base_url, settings.tracking_secret, settings.tracking_token_days)

    def apply(self, body: str, message_id: int, sent_at: datetime) -> str:
        """Rewrite http(s) links and add the pixel. The same message and send time give the same
        body, so a retried send delivers exactly what the first attempt stored."""
        expires = expiry(sent_at, self.token_days)

        def rewrite(match: re.Match[str]) -> str:
            start, quote, raw = match.groups()
            target = html.unescape(raw).strip()
            tag = match.string[match.start() : match.string.find(">", match.end())]
            # Links to this service (unsubscribe, opt-in confirmation) stay as they are.
            own = target.startswith(self.base_url + "/")
            if NO_TRACK in tag.lower() or not trackable_url(target) or own:
                return match.group(0)
            tracked = self.base_url + click_path(click_token(self.secret, message_id, target, expires))
            return f"{start}{quote}{html.escape(tracked)}{quote}"

        tracked = _LINK.sub(rewrite, body)
        pixel = (
            f'<img src="{self.base_url}/t/o/{open_token(self.secret, message_id, expires)}.gif" '
            'width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">'
        )
        ends = list(_BODY_END.finditer(tracked))
        if ends:
            at = ends[-1].start()
            return tracked[:at] + pixel + tracked[at:]
        return tracked + pixel
