"""Headless Chromium for the console tests: Debian's ``chromium`` through its ``chromidriver``
(``make test`` installs both with apt when absent; nothing is ever downloaded), and the app served
by uvicorn on a free loopback port in the test's own event loop.

Selenium's calls block, and the server answers in this loop: every browser call runs in a thread.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "screenshots"
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1366,900",
)


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app on 127.0.0.1, a port the system picks; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # the server failed to start: say why
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


class Browser:
    """A Chromium window driven from async tests."""

    def __init__(self, driver: webdriver.Chrome, base: str):
        self.driver = driver
        self.base = base

    async def _run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def go(self, path: str) -> None:
        await self._run(self.driver.get, self.base + path)

    async def path(self) -> str:
        """Where the window is. Asked from a thread like every call: the driver answers only once
        the page has loaded, and the page is served from this loop."""
        return (await self._run(lambda: self.driver.current_url)).removeprefix(self.base)

    async def fill(self, css: str, text: str) -> None:
        def typing() -> None:
            field = self.driver.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(text)

        await self._run(typing)

    async def click(self, css: str) -> None:
        await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).click())

    async def text(self, css: str = "body") -> str:
        return await self._run(lambda: self.driver.find_element(By.CSS_SELECTOR, css).text)

    async def has(self, css: str) -> bool:
        return bool(await self._run(lambda: self.driver.find_elements(By.CSS_SELECTOR, css)))

    async def script(self, source: str, *args: Any) -> Any:
        return await self._run(self.driver.execute_script, source, *args)

    async def fetch(self, method: str, path: str, body: dict | None = None, *, csrf: bool = True) -> int:
        """A request from the page, as its own scripts make them (cookie; the CSRF token unless told not)."""
        source = """
            const [method, path, body, csrf, done] = arguments;
            const token = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
            const headers = {"Content-Type": "application/json"};
            if (csrf) headers["X-CSRF-Token"] = token;
            fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body), credentials: "same-origin"})
              .then((r) => done(r.status), (e) => done(String(e)));
        """
        return await self._run(self.driver.execute_async_script, source, method, path, body, csrf)

    async def eventually(self, check: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not seen within {timeout}s: {what} (at {await self.path()})")
            await asyncio.sleep(0.1)

    async def sign_in(self, email: str, password: str) -> None:
        await self.sign_out()
        await self.go("/app/sign-in")
        await self.fill("#email", email)
        await self.fill("#password", password)
        await self.click("form button[type=submit]")
        await self.eventually(self._signed_in, what=f"{email} signed in")

    async def _signed_in(self) -> bool:
        return "/sign-in" not in await self.path()

    async def sign_out(self) -> None:
        await self._run(self.driver.delete_all_cookies)

    async def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        target = SCREENSHOTS / f"{name}.png"

        def full_page() -> None:
            height = self.driver.execute_script("return document.documentElement.scrollHeight")
            self.driver.set_window_size(1366, min(max(height, 900), 2400))
            self.driver.save_screenshot(str(target))
            self.driver.set_window_size(1366, 900)

        await self._run(full_page)
        return target


@asynccontextmanager
async def chromium(base: str) -> AsyncIterator[Browser]:
    profile = tempfile.mkdtemp(prefix="nurture-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # The driver's path is given, so Selenium Manager never looks for (or downloads) one.
    service = Service(executable_path=CHROMEDRIVER)
    try:
        driver = await asyncio.to_thread(webdriver.Chrome, service=service, options=options)
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        raise RuntimeError(f"Chromium did not start ({CHROMIUM}, {CHROMEDRIVER}): `make browser` installs them") from exc
    driver.set_script_timeout(15)
    try:
        yield Browser(driver, base)
    finally:
        await asyncio.to_thread(driver.quit)
        shutil.rmtree(profile, ignore_errors=True)
