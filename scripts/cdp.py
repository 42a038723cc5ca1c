"""Headless Chromium driven over the Chrome DevTools Protocol, on a pipe.

``chromium --remote-debugging-pipe`` reads protocol messages from its file descriptor
3 and writes its answers and events to descriptor 4, each a JSON text ended by a NUL
byte: no port, no websocket client, nothing to install but Chromium itself. Used by
the job page's browser test and by ``scripts/job_page_screenshot.py``::

    async with Chromium.launch() as browser:
        page = await browser.open("http://127.0.0.1:8080/jobs/...")
        title = await page.evaluate("document.title")
        await page.screenshot(Path("docs/job-page.png"))

On Debian: ``apt-get install chromium`` (``/usr/bin/chromium``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson

DEFAULT_CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, or went away."""


class _Reader(asyncio.Protocol):
    """Splits Chromium's output into messages and hands each to the browser."""

    def __init__(self, browser: Chromium) -> None:
        self.browser = browser
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\0" in self.buffer:
            message, self.buffer = self.buffer.split(b"\0", 1)
            self.browser.dispatch(orjson.loads(message))

    def connection_lost(self, exc: Exception | None) -> None:
        self.browser.gone()


def _start(
    binary: Path, profile: str, size: tuple[int, int]
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Chromium reading commands from its fd 3 and writing to its fd 4.

    Returns:
        The process, the descriptor to write commands to, and the one to read from.

    """
    if not binary.is_file():
        raise BrowserError(f"Chromium not found at {binary}; install Debian's `chromium` package")
    to_child, from_parent = os.pipe()  # the child reads its fd 3 from here
    from_child, to_parent = os.pipe()  # and writes its fd 4 here

    def descriptors() -> None:
        # Duplicate first: the pipe ends may themselves be numbered 3 or 4.
        read, write = os.dup(to_child), os.dup(to_parent)
        os.dup2(read, 3)
        os.dup2(write, 4)

    process = subprocess.Popen(
        [
            str(binary),
            "--headless",
            "--no-sandbox",  # containers run as root; the pages are our own
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=descriptors,  # only dup and dup2 run between fork and exec
        close_fds=False,
    )
    os.close(to_child)
    os.close(to_parent)
    return process, from_parent, from_child


class Chromium:
    """One headless Chromium process and its protocol connection."""

    def __init__(self, process: subprocess.Popen[bytes], writer: int) -> None:
        self.process = process
        self._writer = writer
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str | None, list[dict[str, Any]]] = {}
        self._changed = asyncio.Event()
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def launch(
        cls, binary: Path = DEFAULT_CHROMIUM, *, size: tuple[int, int] = (1200, 800)
    ) -> AsyncIterator[Chromium]:
        """Start headless Chromium with a throwaway profile; stop it afterwards."""
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            process, writer, reader = await asyncio.to_thread(_start, binary, profile, size)
            browser = cls(process, writer)
            loop = asyncio.get_running_loop()
            transport, _ = await loop.connect_read_pipe(
                lambda: _Reader(browser), os.fdopen(reader, "rb", 0)
            )
            try:
                await browser.send("Browser.getVersion")
                yield browser
            finally:
                with contextlib.suppress(BrowserError, OSError):
                    await asyncio.wait_for(browser.send("Browser.close"), 5)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(process.wait, 10)
                if process.poll() is None:
                    process.kill()
                    await asyncio.to_thread(process.wait)
                transport.close()
                os.close(writer)

    def dispatch(self, message: dict[str, Any]) -> None:
        """A message from Chromium: an answer to a command, or an event."""
        if "id" in message:
            future = self._waiting.pop(message["id"], None)
            if future is not None and not future.done():
                future.set_result(message)
        else:
            self._events.setdefault(message.get("sessionId"), []).append(message)
            self._changed.set()

    def gone(self) -> None:
        """Chromium closed its end: fail whatever waits."""
        self._closed = True
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(BrowserError("Chromium went away"))
        self._waiting.clear()

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its result."""
        if self._closed:
            raise BrowserError(f"{method}: Chromium has exited ({self.process.poll()})")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = future
        os.write(self._writer, orjson.dumps(message) + b"\0")
        answer = await asyncio.wait_for(future, 60)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def event(self, session: str | None, method: str, within: float = 30) -> dict[str, Any]:
        """Wait for (and take) the next event ``method`` of ``session``."""
        async with asyncio.timeout(within):
            while True:
                queue = self._events.get(session, [])
                for index, message in enumerate(queue):
                    if message["method"] == method:
                        del queue[: index + 1]
                        params: dict[str, Any] = message.get("params", {})
                        return params
                self._changed.clear()
                await self._changed.wait()

    async def open(self, url: str, *, size: tuple[int, int] = (1200, 800)) -> Page:
        """A new tab showing ``url``, once its load event has fired."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        await page.send("Runtime.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False},
        )
        await page.goto(url)
        return page


class Page:
    """One tab, attached with its own protocol session."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A command to this tab."""
        return await self.browser.send(method, params, session=self.session)

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        self.browser._events.pop(self.session, None)
        navigated = await self.send("Page.navigate", {"url": url})
        if navigated.get("errorText"):
            raise BrowserError(f"navigating to {url}: {navigated['errorText']}")
        await self.browser.event(self.session, "Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serializable)."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"{expression[:60]}: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """The visible page as a PNG."""
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
