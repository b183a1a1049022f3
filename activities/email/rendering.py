"""Templates rendered with the contact's fields, in Jinja2's sandbox, on a budget.

Every render runs in a small pool of separate processes (pebble's ProcessPool): a render past
its time is killed and its process replaced, so a template with runaway loops costs its time
budget and no more, and the event loop of the API or the worker never runs template code. The
render processes also have a memory cap, and their output a size cap (nurture/template_sandbox.py).
A template that breaks the budget or fails to render raises TemplateRenderError, naming the part
(subject, html, text, body) and the reason: a permanent failure, never worth a retry.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import threading
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from pebble import ProcessExpired, ProcessPool
from temporalio.exceptions import ApplicationError

from nurture import template_sandbox as sandbox
from nurture.contracts import ContactSnapshot
from nurture.settings import Settings

# RFC 5322 keeps a header line within 998 characters; the API holds a subject's source to it too.
SUBJECT_MAX_CHARS = 998
# Recycle a render process now and then: a long-lived interpreter's heap only grows.
TASKS_PER_PROCESS = 1000

# Templates are test-rendered for this contact when saved; it has every built-in field set.
SAMPLE_CONTACT = ContactSnapshot(
    id=0, email="ada@example.com", name="Ada Lovelace", company="Analytical Engines", timezone="Europe/London",
    lifecycle_stage="lead", owner="owner@example.com", phone="+442071234567",
    lists=["newsletter"], tags=["sample"],
)
SAMPLE_LINKS = {"unsubscribe_url": "https://example.com/u/sample", "optin_url": "https://example.com/optin/sample"}


class TemplateRenderError(TemplateError):
    """A template part that broke the budget or failed to render; ``field`` names the part."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


class RenderProcessLost(Exception):
    """A render process ended without an answer: temporary, worth a retry."""


def template_failure(what: str, exc: TemplateRenderError) -> ApplicationError:
    """The activity failure for a template that does not render: permanent, typed TemplateError."""
    return ApplicationError(f"{what} does not render: {exc}", type="TemplateError", non_retryable=True)


@dataclass(frozen=True)
class TemplateBudget:
    timeout_seconds: float = 2.0
    max_output_kb: int = 256
    # The pool is shared by the whole process: the first budget to start it sets these two.
    processes: int = 2
    memory_mb: int = 512

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateBudget:
        return cls(
            timeout_seconds=settings.template_render_timeout_seconds,
            max_output_kb=settings.template_max_output_kb,
            processes=settings.template_render_processes,
            memory_mb=settings.template_render_memory_mb,
        )

    @property
    def max_bytes(self) -> int:
        return self.max_output_kb * 1024


class RenderedEmail:
    def __init__(self, subject: str, html: str, text: str):
        self.subject, self.html, self.text = subject, html, text


class TemplateRenderer:
    """Renders templates in the shared render pool, within ``budget``."""

    def __init__(self, budget: TemplateBudget | None = None):
        self.budget = budget or TemplateBudget()

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateRenderer:
        return cls(TemplateBudget.from_settings(settings))

    async def email(self, subject: str, html: str, text: str | None, context: dict[str, Any]) -> RenderedEmail:
        """Subject, HTML and text; without a text template the text is made from the HTML.

        One task in the render pool for all the parts (a send's render is mostly the hand-over to
        the render process and back, not Jinja). Only when that task runs out of time are the parts
        rendered one by one, each within the budget, to name the one at fault."""
        try:
            parts, problem = await self._submit(
                sandbox.render_email, (subject, html, text, context, self.budget.max_bytes), "email"
            )
        except TimeoutError:
            return await self._email_part_by_part(subject, html, text, context)
        if problem is not None:
            raise TemplateRenderError(*problem)
        rendered_subject, rendered_html, rendered_text = parts
        return RenderedEmail(subject=self._one_line(rendered_subject, "subject"), html=rendered_html, text=rendered_text)

    async def _email_part_by_part(self, subject: str, html: str, text: str | None, context: dict[str, Any]) -> RenderedEmail:
        rendered_subject = await self.line(subject, context)
        rendered_html = await self._render("html", html, "html", context)
        if text:
            rendered_text = await self._render("text", text, "plain", context)
        else:
            rendered_text = await self._run("html", sandbox.text_from_html, rendered_html, self.budget.max_bytes)
        return RenderedEmail(subject=rendered_subject, html=rendered_html, text=rendered_text)

    async def line(self, source: str, context: dict[str, Any], field: str = "subject") -> str:
        """One line of plain text (a subject, a title): runs of whitespace become one space."""
        return self._one_line(await self._render(field, source, "plain", context), field)

    @staticmethod
    def _one_line(rendered: str, field: str) -> str:
        value = " ".join(rendered.split())
        if len(value) > SUBJECT_MAX_CHARS:
            raise TemplateRenderError(field, f"renders {len(value):,} characters, too large (at most {SUBJECT_MAX_CHARS})")
        return value

    async def text(self, source: str, context: dict[str, Any], field: str = "text") -> str:
        return await self._render(field, source, "plain", context)

    async def json(self, value: Any, context: dict[str, Any], field: str = "body") -> Any:
        """Every string in a JSON-like value (a webhook body), within one output budget."""
        return await self._run(field, sandbox.render_json, value, context, self.budget.max_bytes)

    async def problems(self, subject: str, html: str, text: str | None) -> list[TemplateRenderError]:
        """What is wrong with each part, rendered for the sample contact (missing properties render empty)."""
        context = {"contact": SAMPLE_CONTACT.fields(), **SAMPLE_LINKS}

        async def check(field: str, source: str, mode: str) -> str:
            rendered = await self._run(field, sandbox.render, source, mode, context, self.budget.max_bytes, True)
            if field == "subject" and len(" ".join(rendered.split())) > SUBJECT_MAX_CHARS:
                raise TemplateRenderError(field, f"renders more than {SUBJECT_MAX_CHARS} characters, too large")
            if field == "html" and not text:
                await self._run(field, sandbox.text_from_html, rendered, self.budget.max_bytes)
            return rendered

        parts = [("subject", subject, "plain"), ("html", html, "html"), ("text", text, "plain")]
        outcomes = await asyncio.gather(
            *(check(field, source, mode) for field, source, mode in parts if source), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException) and not isinstance(outcome, TemplateRenderError):
                raise outcome
        return [outcome for outcome in outcomes if isinstance(outcome, TemplateRenderError)]

    async def _render(self, field: str, source: str, mode: str, context: dict[str, Any]) -> str:
        return await self._run(field, sandbox.render, source, mode, context, self.budget.max_bytes)

    async def _run(self, field: str, function, *args: Any) -> Any:
        try:
            value, problem = await self._submit(function, args, field)
        except TimeoutError:
            raise TemplateRenderError(field, f"did not finish within {self.budget.timeout_seconds:g}s") from None
        if problem is not None:
            raise TemplateRenderError(field, problem)
        return value

    async def _submit(self, function, args: tuple, field: str) -> Any:
        """The task's answer from the pool; TimeoutError past the budget's time."""
        timeout = self.budget.timeout_seconds
        future = _schedule_started(function, args, timeout)
        if future is None:
            # In a thread: the first call starts the pool (a fork server and its processes).
            future = await asyncio.to_thread(_schedule, self.budget, function, args, timeout)
        try:
            return await asyncio.wrap_future(future)
        except ProcessExpired as exc:
            # Killed from outside (a service stop signalling every process, the kernel's OOM killer):
            # not the template's fault as far as we can tell, so a temporary failure, retried.
            raise RenderProcessLost(f"the render process of the {field} died (exit code {exc.exitcode})") from exc


# --- the process-wide render pool ----------------------------------------------------------

_pool: ProcessPool | None = None
_pool_lock = threading.Lock()


def _schedule_started(function, args: tuple, timeout: float):
    """Hands the task to a running pool without leaving the event loop (a queue put, no thread
    hop: a send renders once); None when the pool must be started first."""
    with _pool_lock:
        if _pool is not None and _pool.active:
            return _pool.schedule(function, args=args, timeout=timeout)
    return None


def _schedule(budget: TemplateBudget, function, args: tuple, timeout: float):
    global _pool
    with _pool_lock:
        if _pool is None or not _pool.active:
            if _pool is not None:
                _pool.stop()  # broken (its processes could not be started): start afresh
                _pool.join(timeout=5)  # pebble reaps the old processes only in join()
            _pool = _start_pool(budget)
        return _pool.schedule(function, args=args, timeout=timeout)


def _start_pool(budget: TemplateBudget) -> ProcessPool:
    # Not fork: the API and the worker run threads (Temporal's core, pebble's own), and a forked
    # copy of a threaded process can deadlock. The fork server forks from a clean process that
    # has imported the sandbox once.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["nurture.template_sandbox", "inscriptis"])
    else:
        context = multiprocessing.get_context("spawn")
    return ProcessPool(
        max_workers=budget.processes,
        max_tasks=TASKS_PER_PROCESS,
        initializer=sandbox.limit_memory,
        initargs=(budget.memory_mb,),
        context=context,
    )


@atexit.register
def _stop_pool() -> None:
    with _pool_lock:
        if _pool is not None:
            _pool.stop()
            _pool.join(timeout=5)
