"""The admin HTTP listener (aiohttp), served by one process per relay (worker 0, or the embedded
relay), from the state database that every worker writes to:

| path | what |
| --- | --- |
| ``GET /metrics`` | Prometheus text format (prometheus_client): :mod:`deliverypool.observe.metrics` |
| ``GET /healthz`` | ``{"status": "ok", ...}`` while the relay runs |
| ``GET /api/alerts`` | ``{"active": [...], "resolved": [...]}``: surge alerts, the last N resolved |
| ``GET /api/tenants`` | per tenant: messages and DSNs per minute, DSN baseline, active surge |
| ``GET /api/status`` | event subscribers (delivered, dropped, errors), webhook counters |
| ``GET /api/senders`` | the restricted senders (``?tenant=NAME`` for one tenant's), with sender limits |
| ``POST /api/senders/release`` | ``{"sender": ADDRESS}``: lifts its restriction on every worker and node |
| ``GET /api/dnsbl`` | the blocklist watch: zones, every address in every zone, drained addresses |
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from deliverypool.observe.service import Observer

__all__ = ["AdminServer", "restriction_json"]


def restriction_json(restriction: Any) -> dict[str, Any]:
    """A `Restriction` as the API and `deliverypool senders --json` show it (times in ISO 8601 too)."""
    from deliverypool.observe.surge import iso_time

    body: dict[str, Any] = restriction.as_json()
    body["since_iso"] = iso_time(restriction.since)
    body["until_iso"] = iso_time(restriction.until) if restriction.until is not None else None
    return body


class AdminServer:
    def __init__(self, observer: Observer, host: str, port: int) -> None:
        self.observer = observer
        self.host = host
        self.port = port
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/alerts", self.alerts)
        app.router.add_get("/api/tenants", self.tenants)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/senders", self.senders)
        app.router.add_post("/api/senders/release", self.release)
        app.router.add_get("/api/dnsbl", self.dnsbl)
        self.app = app

    async def start(self) -> None:
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._runner = runner

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.get_running_loop().run_in_executor(None, generate_latest, self.observer.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "worker": self.observer.worker, "uptime_seconds": round(time.time() - self.started, 1)})

    async def alerts(self, request: web.Request) -> web.Response:
        active, resolved = await self.observer.alerts()
        return web.json_response({"active": active, "resolved": resolved})

    async def tenants(self, request: web.Request) -> web.Response:
        return web.json_response(await self.observer.tenant_view())

    async def senders(self, request: web.Request) -> web.Response:
        from deliverypool.state.backends import BackendUnavailable

        limits = self.observer.limits
        if limits is None:
            return web.json_response({"error": "no sender limits are configured"}, status=404)
        try:
            found = await limits.restrictions(request.query.get("tenant"))
        except BackendUnavailable as exc:
            return web.json_response({"error": f"the state backend is unreachable: {exc}"}, status=503)
        return web.json_response({"backend": limits.backend.name, "degraded": limits.down_since is not None, "senders": [restriction_json(r) for r in found]})

    async def release(self, request: web.Request) -> web.Response:
        from deliverypool.state.backends import BackendUnavailable

        limits = self.observer.limits
        if limits is None:
            return web.json_response({"error": "no sender limits are configured"}, status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        sender = body.get("sender") if isinstance(body, dict) else None
        if not isinstance(sender, str) or not sender.strip():
            return web.json_response({"error": 'expected {"sender": "ADDRESS"}'}, status=400)
        try:
            released = await limits.release(sender)
        except BackendUnavailable as exc:
            return web.json_response({"error": f"the state backend is unreachable: {exc}"}, status=503)
        if released is None:
            return web.json_response({"error": f"{sender} is not restricted", "released": None}, status=404)
        return web.json_response({"released": restriction_json(released)})
    async def dnsbl(self, request: web.Request) -> web.Response:
        watch = self.observer.dnsbl
        if watch is None:
            return web.json_response({"enabled": False, "zones": {}, "addresses": [], "drained": {}})
        return web.json_response({"enabled": True, **watch.view()})

    async def status(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"subscribers": self.observer.bus.stats()}
        if self.observer.webhook is not None:
            body["webhook"] = self.observer.webhook.stats()
        return web.json_response(body)
