"""Templates rendered with the contact's fields, in Jinja2's sandbox."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

def _blank_none(value):
    # A field the contact has not filled in renders empty, never as "None".
    return "" if value is None else value


_html = SandboxedEnvironment(autoescape=True, finalize=_blank_none)
_plain = SandboxedEnvironment(autoescape=False, finalize=_blank_none)


class RenderedEmail:
    def __init__(self, subject: str, html: str, text: str):
        self.subject, self.html, self.text = subject, html, text


def render(subject: str, html: str, text: str | None, context: dict[str, Any]) -> RenderedEmail:
    """Raise jinja2.TemplateError on a broken template; a missing field renders empty."""
    return RenderedEmail(
        subject=" ".join(_plain.from_string(subject).render(context).split()),
        html=_html.from_string(html).render(context),
        text=_plain.from_string(text).render(context) if text else "",
    )


def check_template(subject: str, html: str, text: str | None) -> list[tuple[str, str]]:
    """Syntax problems per field, for the templates API."""
    problems = []
    for field, source, env in (("subject", subject, _plain), ("html", html, _html), ("text", text, _plain)):
        if source:
            try:
                env.parse(source)
            except TemplateError as exc:
                problems.append((field, str(exc)))
    return problems
