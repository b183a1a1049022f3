"""Consent links in an outgoing email (docs/consent.md).

Every email rendered by send_email gets ``unsubscribe_url`` and ``optin_url`` in its template
context. A marketing email also carries the RFC 8058 one-click headers and, when its template
did not place the unsubscribe link itself, a small footer with it in both parts. Tokens expire
from the send's scheduled time, so a retried send renders exactly the same email.
"""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from urllib.parse import quote

from activities.email.rendering import RenderedEmail
from nurture.settings import Settings
from nurture.tracking import optin_token, unsubscribe_token

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
ONE_CLICK = "List-Unsubscribe=One-Click"


class ConsentLinks:
    def __init__(
        self, base_url: str, secret: str, unsubscribe_days: int, optin_days: int, mailto: str | None = None
    ):
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.unsubscribe_days = unsubscribe_days
        self.optin_days = optin_days
        self.mailto = mailto

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsentLinks:
        return cls(
            settings.public_base_url,
            settings.tracking_secret,
            settings.unsubscribe_token_days,
            settings.optin_token_days,
            settings.unsubscribe_mailto,
        )

    def unsubscribe_url(self, contact_id: int, message_id: int, sent_at: datetime) -> str:
        expires = sent_at + timedelta(days=self.unsubscribe_days)
        return f"{self.base_url}/u/{unsubscribe_token(self.secret, contact_id, message_id, expires)}"

    def optin_url(self, contact_id: int, flow_id: int, sent_at: datetime) -> str:
        expires = sent_at + timedelta(days=self.optin_days)
        return f"{self.base_url}/optin/{optin_token(self.secret, contact_id, flow_id, expires)}"

    def context(self, contact_id: int, message_id: int, flow_id: int, sent_at: datetime) -> dict[str, str]:
        """The template variables: {{ unsubscribe_url }} and {{ optin_url }}."""
        return {
            "unsubscribe_url": self.unsubscribe_url(contact_id, message_id, sent_at),
            "optin_url": self.optin_url(contact_id, flow_id, sent_at),
        }

    def headers(self, unsubscribe_url: str) -> dict[str, str]:
        """RFC 8058: the HTTPS URI receives a POST with ``List-Unsubscribe=One-Click``."""
        targets = [f"<{unsubscribe_url}>"]
        if self.mailto:
            token = unsubscribe_url.rsplit("/", 1)[1]
            targets.append(f"<mailto:{self.mailto}?subject={quote('unsubscribe ' + token)}>")
        return {"List-Unsubscribe": ", ".join(targets), "List-Unsubscribe-Post": ONE_CLICK}


def with_unsubscribe_footer(rendered: RenderedEmail, unsubscribe_url: str) -> RenderedEmail:
    """Add the link where the template did not place it (the HTML and the text part apart)."""
    escaped = html.escape(unsubscribe_url)
    if unsubscribe_url not in rendered.html and escaped not in rendered.html:
        footer = (
            '<p style="font-size:12px;color:#777777;margin-top:24px">'
            f'Don\'t want these emails? <a href="{escaped}">Unsubscribe</a>.</p>'
        )
        ends = list(_BODY_END.finditer(rendered.html))
        at = ends[-1].start() if ends else len(rendered.html)
        rendered.html = rendered.html[:at] + footer + rendered.html[at:]
    if unsubscribe_url not in rendered.text:
        separator = "\n\n" if rendered.text.strip() else ""
        rendered.text = f"{rendered.text.rstrip()}{separator}Unsubscribe: {unsubscribe_url}\n"
    return rendered
