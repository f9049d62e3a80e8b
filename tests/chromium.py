"""Debian's Chromium, headless, driven over the DevTools protocol (a WebSocket, aiohttp's client):
pages open, scripts run in them, and nothing leaves the machine.

Chromium runs with a profile of its own in a temporary directory, without sandbox when root
(it refuses to start otherwise), with its background services off, every host name but the
loopback addresses unresolvable and a dead proxy for anything that is not loopback, so that a
page can only reach servers on 127.0.0.1.

`chromium()` is a context manager; `browser_or_skip()` skips a test where Chromium is missing
or cannot start, except in CI (``CI`` set), where that fails, as tests/dnsserver.py does with nsd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

CHROMIUM = os.environ.get("DELIVERYPOOL_CHROMIUM", "/usr/bin/chromium")

_FLAGS = [
    "--headless=new",
    "--disable-gpu",
    "--remote-debugging-port=0",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,InterestFeedContentSuggestions",
    # Nothing but loopback: other names do not resolve, other addresses go to a dead proxy.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    "--proxy-server=http://127.0.0.1:9",
]


class Browser:
    """One Chromium process and its DevTools connection."""

    def __init__(self, process: subprocess.Popen[bytes], ws: aiohttp.ClientWebSocketResponse, session: aiohttp.ClientSession) -> None:
        self.process = process
        self.ws = ws
        self.session = session
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._events: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
            else:
                key = f"{data.get('sessionId', '')}/{data.get('method')}"
                for waiter in self._events.pop(key, []):
                    if not waiter.done():
                        waiter.set_result(data.get("params", {}))
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ConnectionError("Chromium closed the DevTools connection"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 30.0) -> Any:
        number = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    def event(self, session: str, method: str) -> asyncio.Future[dict[str, Any]]:
        """A future of the next `method` event of `session` (ask for it before causing it)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._events.setdefault(f"{session}/{method}", []).append(future)
        return future

    async def new_page(self) -> str:
        """A new tab; returns its DevTools session."""
        target = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        session: str = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        await self.send("Page.enable", session=session)
        await self.send("Runtime.enable", session=session)
        return session

    async def goto(self, session: str, url: str, timeout: float = 30.0) -> None:
        loaded = self.event(session, "Page.loadEventFired")
        result = await self.send("Page.navigate", {"url": url}, session=session)
        if result.get("errorText"):
            raise RuntimeError(f"cannot open {url}: {result['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, session: str, expression: str, timeout: float = 30.0) -> Any:
        """The value of `expression` in the page (a promise is awaited)."""
        result = await self.send(
            "Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True}, session=session, timeout=timeout
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page's script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def chromium(timeout: float = 30.0) -> AsyncIterator[Browser]:
    """Starts Chromium; raises RuntimeError when it cannot."""
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        raise RuntimeError(f"{CHROMIUM} is not installed: run scripts/install-test-servers.sh")
    profile = Path(tempfile.mkdtemp(prefix="deliverypool-chromium-"))
    flags = [*_FLAGS, f"--user-data-dir={profile}"]
    if os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    log = profile / "chromium.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([CHROMIUM, *flags, "about:blank"], stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    session: aiohttp.ClientSession | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if process.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"Chromium did not start: {log.read_text(errors='replace')[-2000:]}")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        browser = Browser(process, ws, session)
        try:
            yield browser
        finally:
            with contextlib.suppress(Exception):
                await browser.send("Browser.close", timeout=5)
            await ws.close()
            browser._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await browser._reader
    finally:
        if session is not None:
            await session.close()
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(profile, ignore_errors=True)


def cannot_start(reason: str) -> None:
    """Skips where Chromium cannot run, fails in CI (the test command installs it)."""
    message = f"Chromium cannot start: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
