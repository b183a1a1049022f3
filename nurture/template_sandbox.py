"""What runs inside the render processes (activities/email/rendering.py starts them): Jinja2's
sandbox with size checks on the operators that blow up, an output budget, and the plain-text
part made from the HTML.

Time and memory are bounded from outside (the pool kills a render past its time; the process
has an address-space limit), as Jinja's maintainers advise: a loop that yields nothing can
only be stopped from outside. What is checked here gives clear reasons for the common cases.
Every function returns ``(value, None)`` or ``(None, reason)``: plain data, no exceptions
to pickle across the process boundary.
"""

from __future__ import annotations

import functools
import math
import resource
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, Undefined
from jinja2.sandbox import SandboxedEnvironment

Outcome = tuple[Any, str | None]
# Compiled templates each render process keeps (by source).
TEMPLATES_KEPT = 256


class TooLarge(Exception):
    """The render grew past its budget."""


class _BudgetedSandbox(SandboxedEnvironment):
    """Refuses ``*``, ``**`` and ``+`` that would build a value larger than the output budget."""

    intercepted_binops = frozenset({"*", "**", "+"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.max_bytes = 256 * 1024

    def call_binop(self, context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right, self.max_bytes)
            _check_repeat(right, left, self.max_bytes)
            if _is_int(left) and _is_int(right):
                self._check_bits(abs(left).bit_length() + abs(right).bit_length())
        elif operator == "**" and _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            self._check_bits(math.log2(abs(left)) * right)
        elif operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            if len(left) + len(right) > self.max_bytes:
                raise TooLarge(f"'+' would build a value of {len(left) + len(right):,} items, too large")
        return super().call_binop(context, operator, left, right)

    def _check_bits(self, bits: float) -> None:
        # A number whose digits would not fit in the output is too large to compute.
        if bits / 3.33 > self.max_bytes:
            raise TooLarge(f"a number of about {int(bits / 3.33):,} digits is too large")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_repeat(sequence: Any, times: Any, max_bytes: int) -> None:
    if isinstance(sequence, (str, bytes, list, tuple)) and _is_int(times) and len(sequence) * times > max_bytes:
        raise TooLarge(f"'*' would build a value of {len(sequence) * times:,} items, too large")


def _blank_none(value: Any) -> Any:
    # A field the contact has not filled in renders empty, never as "None".
    return "" if value is None else value


_ENVIRONMENTS = {
    (mode, lenient): _BudgetedSandbox(
        autoescape=mode == "html",
        finalize=_blank_none,
        # A check against the sample contact cannot know a real contact's properties.
        undefined=ChainableUndefined if lenient else Undefined,
    )
    for mode in ("html", "plain")
    for lenient in (False, True)
}


def limit_memory(megabytes: int) -> None:
    """Pool initializer: cap the render process's address space (0: no cap)."""
    if megabytes > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = megabytes * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard < 0 else min(limit, hard), hard))


@functools.lru_cache(maxsize=TEMPLATES_KEPT)
def _compiled(mode: str, lenient: bool, source: str) -> Template:
    # Compiling costs more than rendering, and every send of a step renders the same sources.
    return _ENVIRONMENTS[(mode, lenient)].from_string(source)


def render(source: str, mode: str, context: dict[str, Any], max_bytes: int, lenient: bool = False) -> Outcome:
    """Render ``source`` (mode ``html`` autoescapes) within ``max_bytes`` of output."""
    key = "html" if mode == "html" else "plain"
    _ENVIRONMENTS[(key, lenient)].max_bytes = max_bytes
    try:
        template = _compiled(key, lenient, source)
        return _collect(template.generate(context), max_bytes), None
    except Exception as exc:  # noqa: BLE001 - every failure of a template is the template's
        return None, reason(exc)


def render_email(
    subject: str, html: str, text: str | None, context: dict[str, Any], max_bytes: int
) -> tuple[tuple[str, str, str] | None, tuple[str, str] | None]:
    """Subject, HTML and text in one task (one hand-over to this process instead of three, the
    larger part of a send's render cost): ``((subject, html, text), None)`` or ``(None, (part, reason))``.
    Without a text template the text is made from the HTML. Each part has its own output budget."""
    parts: list[str] = []
    for field, source, mode in (("subject", subject, "plain"), ("html", html, "html"), ("text", text, "plain")):
        if field == "text" and not source:
            value, problem = text_from_html(parts[1], max_bytes)
            field = "html"
        else:
            value, problem = render(source, mode, context, max_bytes)
        if problem is not None:
            return None, (field, problem)
        parts.append(value)
    return (parts[0], parts[1], parts[2]), None


def render_json(value: Any, context: dict[str, Any], max_bytes: int) -> Outcome:
    """Render every string in a JSON-like value (a webhook body) within one budget."""
    budget = [max_bytes]
    env = _ENVIRONMENTS[("plain", False)]
    env.max_bytes = max_bytes

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            text = _collect(env.from_string(item).generate(context), budget[0])
            budget[0] -= len(text.encode())
            return text
        if isinstance(item, dict):
            return {key: walk(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [walk(inner) for inner in item]
        return item

    try:
        return walk(value), None
    except Exception as exc:  # noqa: BLE001
        return None, reason(exc)


def text_from_html(html: str, max_bytes: int) -> Outcome:
    """The plain-text alternative of an HTML body: its words, lists and links (as [text](url))."""
    from inscriptis import get_text
    from inscriptis.model.config import ParserConfig

    try:
        text = get_text(html, ParserConfig(display_links=True)).strip()
    except Exception as exc:  # noqa: BLE001
        return None, reason(exc)
    if len(text.encode()) > max_bytes:
        return None, f"its plain text is too large (over {max_bytes // 1024} KB)"
    return text + "\n", None


def _collect(chunks, max_bytes: int) -> str:
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk) if chunk.isascii() else len(chunk.encode())
        if size > max_bytes:
            raise TooLarge(f"the output is too large (over {max_bytes // 1024} KB)")
        out.append(chunk)
    return "".join(out)


def reason(exc: BaseException) -> str:
    if isinstance(exc, TooLarge):
        return str(exc)
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {exc.message} (line {exc.lineno})"
    if isinstance(exc, MemoryError):
        return "the render needs more memory than allowed, too large"
    if isinstance(exc, RecursionError):
        return "the render nests too deep"
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__

