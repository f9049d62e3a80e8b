"""Where alerts go (the surge monitor's and the blocklist watch's): the ``deliverypool.alerts``
log, the state database (for ``GET /api/alerts``: the active ones and the last
``monitor.resolved_alerts`` resolved), and the
``[alerts] webhook``, POSTed as JSON from a bounded queue by a task of its own, retried with
doubling waits, so that a webhook that is down or slow never holds up the relay (when the
queue is full the oldest alert waiting is dropped and counted).

Every POST is signed as Standard Webhooks (standardwebhooks.com) says: ``webhook-id`` (one id per
alert POST, the same on its retries, so a receiver can drop repeats), ``webhook-timestamp``
(seconds since the epoch, at each attempt) and ``webhook-signature``: ``v1,`` and the base64
HMAC-SHA256 of ``ID.TIMESTAMP.BODY`` under each key of ``[alerts] secret_file`` (space
separated: several during a rotation). The receiver's check is in docs/operations/admin-api.md.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from deliverypool.config import AlertsConfig

__all__ = ["Webhook", "log_alert", "sign"]

log = logging.getLogger("deliverypool.alerts")


# An alert's "severity" (the blocklist watch sets it) picks the level of a firing alert; one
# without it (a surge) is a warning. Resolved alerts are logged at INFO.
_LEVELS = {"critical": logging.CRITICAL, "warning": logging.WARNING, "info": logging.INFO}
_SUBJECT = ("tenant", "cause", "address", "pool", "zone", "family")


def log_alert(alert: dict[str, Any]) -> None:
    level = _LEVELS.get(alert.get("severity", "warning"), logging.WARNING) if alert["state"] == "firing" else logging.INFO
    subject = " ".join(f"{key}={alert[key]}" for key in _SUBJECT if key in alert)
    log.log(level, "%s %s %s %s", alert["type"], alert["state"], subject, json.dumps(alert, sort_keys=True))


def sign(keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header of a Standard Webhooks POST: ``v1,<base64 HMAC-SHA256
    of "ID.TIMESTAMP.BODY">`` under each key, space separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii") for key in keys)


class Webhook:
    """POSTs alerts to one URL, in order, each retried until it succeeds (2xx) or
    ``max_attempts`` POSTs failed, each POST signed with `keys` (see the module documentation)."""

    def __init__(self, config: AlertsConfig, keys: Sequence[bytes] = (), *, clock: Callable[[], float] = time.time) -> None:
        assert config.webhook is not None
        self.url = config.webhook
        self.config = config
        self.keys = tuple(keys)
        self.clock = clock
        # (the POST's webhook-id, the alert)
        self.queue: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self.sent = 0
        self.failed_attempts = 0
        self.dropped = 0
        self.given_up = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def post(self, alert: dict[str, Any]) -> None:
        """Queues `alert`; never blocks."""
        if len(self.queue) >= self.config.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(("msg_" + secrets.token_urlsafe(18), alert))
        self._wakeup.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            if not self.queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = self.queue[0]
            message_id, alert = item
            body = json.dumps(alert, separators=(",", ":")).encode()
            wait = self.config.retry_initial
            for attempt in range(1, self.config.max_attempts + 1):
                if await self._send(message_id, alert, body):
                    self.sent += 1
                    break
                self.failed_attempts += 1
                if attempt == self.config.max_attempts:
                    self.given_up += 1
                    log.error("webhook %s: gave up alert %s after %d attempts", self.url, alert["id"], attempt)
                    break
                await asyncio.sleep(wait)
                wait = min(self.config.retry_maximum, wait * 2)
            if self.queue and self.queue[0] is item:
                self.queue.popleft()

    def headers(self, message_id: str, body: bytes) -> dict[str, str]:
        """The POST's headers: JSON, and the Standard Webhooks id, timestamp and signature."""
        timestamp = int(self.clock())
        headers = {"Content-Type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
        if self.keys:
            headers["webhook-signature"] = sign(self.keys, message_id, timestamp, body)
        return headers

    async def _send(self, message_id: str, alert: dict[str, Any], body: bytes) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(self.url, data=body, headers=self.headers(message_id, body)) as response:
                if 200 <= response.status < 300:
                    return True
                log.warning("webhook %s answered %d for alert %s; retrying", self.url, response.status, alert["id"])
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            log.warning("webhook %s: %s for alert %s; retrying", self.url, exc or type(exc).__name__, alert["id"])
        return False

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "failed_attempts": self.failed_attempts, "dropped": self.dropped, "given_up": self.given_up, "queued": len(self.queue)}
