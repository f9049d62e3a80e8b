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

Who may do what is decided by one middleware (`AdminServer.guard`) before any route runs
(docs/operations/admin-api.md):

* **Credentials**: a bearer token (``Authorization: Bearer TOKEN``; ``[admin] token_file`` /
  ``token_env``, compared as SHA-256 digests in constant time) and/or a client certificate
  signed by ``[admin] client_ca`` (mutual TLS: the handshake requires it). Every route needs
  one but ``/metrics`` and ``/healthz`` with ``open_metrics`` and ``GET /api/*`` with
  ``open_reads``; a change needs a token of role ``admin`` (not ``read``). 401 otherwise.
* **No cross-site requests**: nothing here is for web pages. A request a browser marks as coming
  from another site (``Sec-Fetch-Site: cross-site`` or ``same-site``), a change with any
  ``Origin`` or a ``Sec-Fetch-Site`` other than ``none``, and every CORS preflight (``OPTIONS``)
  get 403 and no ``Access-Control-*`` header ever; a loopback listener answers only requests
  whose Host is a loopback name (DNS rebinding). A change must be ``application/json`` (415):
  a page can send ``text/plain`` or a form without a preflight, never JSON.
* **Bad input**: bodies over ``max_body`` get 413 (read no further), bodies that are not JSON
  400, unknown routes 404, other methods 405, a body slower than ``timeout`` 408; a header not
  complete within ``timeout``, or an idle connection, is closed; past ``max_connections`` a
  connection gets 503 and is closed.
* **Audit**: every refusal and every release is logged on ``deliverypool.admin`` (who: the
  token's name or the certificate's CN, never the token; the client's address) and published
  as an event (``admin-refused`` with a reason from `ADMIN_REFUSALS`, ``admin-release``).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from deliverypool.config.credentials import TokenStore, server_ssl_context
from deliverypool.config.observe import AdminConfig, is_loopback_host
from deliverypool.observe.events import AdminRefused, AdminRelease

if TYPE_CHECKING:
    from deliverypool.observe.service import Observer

__all__ = ["AdminServer", "restriction_json"]

log = logging.getLogger("deliverypool.admin")

_READS: Final = frozenset({"GET", "HEAD"})
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OPEN_PATHS: Final = frozenset({"/metrics", "/healthz"})
# Bounds of what one request's header may hold (aiohttp's parser; the defaults allow 128 fields).
_MAX_HEADERS: Final = 64
_MAX_FIELD: Final = 8190
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Who the guard admitted, for the route it runs (the same task).
_WHO: contextvars.ContextVar[str | None] = contextvars.ContextVar("deliverypool_admin_who", default=None)


class Refused(Exception):
    """A request the guard turns away: HTTP status, a reason of `ADMIN_REFUSALS`, what to tell
    the client (never a secret)."""

    def __init__(self, status: int, reason: str, message: str, *, who: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.who = who
        self.headers = dict(headers or {})


def _printable(text: str, limit: int) -> str:
    """`text` fit for one log line: non-printable characters as ``?``, at most `limit`."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _host_name(host: str) -> str:
    """The host of a Host header (``[::1]:9425`` -> ``::1``, ``localhost:9425`` -> ``localhost``)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def restriction_json(restriction: Any) -> dict[str, Any]:
    """A `Restriction` as the API and `deliverypool senders --json` show it (times in ISO 8601 too)."""
    from deliverypool.observe.surge import iso_time

    body: dict[str, Any] = restriction.as_json()
    body["since_iso"] = iso_time(restriction.since)
    body["until_iso"] = iso_time(restriction.until) if restriction.until is not None else None
    return body


class AdminServer:
    def __init__(self, observer: Observer, config: AdminConfig, *, environ: Mapping[str, str] = os.environ) -> None:
        assert config.address is not None
        self.observer = observer
        self.config = config
        self.host, self.port = config.address
        self.loopback = is_loopback_host(self.host)
        # Read now: a bad token file or certificate is a ConfigError before anything listens.
        self.tokens = TokenStore(config, environ) if config.token_file is not None or config.token_env is not None else None
        self.ssl = server_ssl_context(config)
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        app = web.Application(middlewares=[self.guard], client_max_size=config.max_body)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/alerts", self.alerts)
        app.router.add_get("/api/tenants", self.tenants)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/senders", self.senders)
        app.router.add_post("/api/senders/release", self.release)
        app.router.add_get("/api/dnsbl", self.dnsbl)
        app.on_response_prepare.append(self._security_headers)
        self.app = app

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl is not None else 'http'}://{host}:{self.port}/"

    def describe_access(self) -> str:
        """Who may use the listener, for the start's log line."""
        parts = []
        if self.tokens is not None:
            parts.append(f"{len(self.tokens.tokens)} token(s): {', '.join(t.name for t in self.tokens.tokens) or 'none'}")
        if self.config.client_ca is not None:
            parts.append("client certificates")
        if not parts:
            parts.append("no credential configured: only the open routes answer")
        if self.config.open_metrics:
            parts.append("/metrics and /healthz open")
        if self.config.open_reads:
            parts.append("GET /api/* open")
        return "; ".join(parts)

    async def start(self) -> None:
        config = self.config
        # keepalive_timeout closes a connection whose next request's header is not complete in
        # time (aiohttp arms it at connect and after each response; partial data does not reset it).
        # lingering_time: a refused body still coming is read (and dropped) this long at most
        # before the connection closes, so that its client sees the answer (aiohttp: 10 s).
        settings: dict[str, Any] = {
            "access_log": None, "keepalive_timeout": config.timeout, "lingering_time": min(1.0, config.timeout),
            "max_headers": _MAX_HEADERS, "max_field_size": _MAX_FIELD, "max_line_size": _MAX_FIELD,
        }
        runner = web.AppRunner(self.app, **settings)
        await runner.setup()
        server = runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        admin = self

        class Handler(web.RequestHandler):
            """aiohttp's connection handler, whose answer to a request it cannot parse (too
            many or too long header fields, bad syntax) is audited like any refusal."""

            def handle_error(
                self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
            ) -> web.StreamResponse:
                if status != 400 or not isinstance(exc, HttpProcessingError):
                    return super().handle_error(request, status, exc, message)
                problem = _printable(str(exc.message or exc), 100)
                admin.audit_refusal("bad-request", 400, "other", "-", request.remote, None, problem)
                response = web.json_response({"error": f"not a request this listener reads: {problem}", "reason": "bad-request"}, status=400)
                response.force_close()
                return response

        def protocol() -> Any:
            if len(server.connections) >= config.max_connections:
                return _Busy(self)
            return Handler(server, loop=loop, **settings)

        try:
            self._server = await loop.create_server(
                protocol, self.host, self.port, ssl=self.ssl, ssl_handshake_timeout=config.timeout if self.ssl is not None else None,
                reuse_address=True, backlog=128,
            )
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.tokens is None and config.client_ca is None:
            log.warning(
                "admin listener %s has no credential: /api/* answers 401%s; set admin.token_file (docs/operations/admin-api.md)",
                self.url, " but for the reads (open_reads)" if config.open_reads else "",
            )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    # --- the guard -----------------------------------------------------------------------------

    @web.middleware
    async def guard(self, request: web.Request, handler: _Handler) -> web.StreamResponse:
        """Admits or refuses each request before its route runs (see the module documentation)."""
        who: str | None = None
        try:
            who = self._admit(request)
            _WHO.set(who)
            if request.method not in _READS:
                await self._read_json(request)
            response = await handler(request)
        except Refused as refusal:
            return self._refuse(request, refusal, who)
        except web.HTTPNotFound:
            return self._refuse(request, Refused(404, "not-found", f"no such route: {_printable(request.path, 100)}"), who)
        except web.HTTPMethodNotAllowed as exc:
            allow = ", ".join(sorted(exc.allowed_methods))
            return self._refuse(request, Refused(405, "method", f"{_printable(request.method, 20)} is not allowed here (only {allow})", headers={"Allow": allow}), who)
        except web.HTTPRequestEntityTooLarge:
            return self._refuse(request, Refused(413, "too-large", f"the body is over {self.config.max_body} bytes"), who)
        if response.status == 400:
            self._audit_refused(request, "bad-request", 400, who, "the route refused the body")
        return response

    def _admit(self, request: web.Request) -> str | None:
        """Who is asking (None for an open route without a credential), or `Refused`."""
        method, headers = request.method, request.headers
        # (Browsers always send a Host; without one aiohttp would look the machine's name up.)
        host = headers.get("Host")
        if self.loopback and host is not None and not is_loopback_host(_host_name(host)):
            raise Refused(403, "bad-host", "this listener answers only requests to a loopback address (Host)")
        if method == "OPTIONS":
            raise Refused(403, "preflight", "cross-origin requests are not allowed")
        change = method not in _READS
        site = headers.get("Sec-Fetch-Site")
        if site in ("cross-site", "same-site") or (change and ("Origin" in headers or site not in (None, "none"))):
            raise Refused(403, "cross-site", "requests from web pages are not allowed")
        open_route = (self.config.open_metrics and request.path in _OPEN_PATHS) or (
            not change and self.config.open_reads and request.path.startswith("/api/")
        )
        who, role = self._credential(request, open_route)
        if who is None and not open_route:
            raise Refused(
                401, "no-credential", "this route needs a credential: Authorization: Bearer TOKEN",
                who=self._peer_name(request) if self.config.client_ca is not None else None,  # a certificate without the token
                headers={"WWW-Authenticate": 'Bearer realm="deliverypool"'},
            )
        if change and role != "admin":
            raise Refused(403, "read-only", f"the token {who!r} may only read", who=who)
        return who

    def _credential(self, request: web.Request, open_route: bool) -> tuple[str | None, str | None]:
        """(who, role) of the request's credential: its bearer token, else its client
        certificate; (None, None) without one. A token that is wrong is refused, on an open
        route too (a misconfigured client should hear of it)."""
        challenge = {"WWW-Authenticate": 'Bearer realm="deliverypool", error="invalid_token"'}
        certificate = self._peer_name(request) if self.config.client_ca is not None else None
        header = request.headers.get("Authorization")
        if header is None:
            if self.tokens is None and certificate is not None:
                return certificate, "admin"
            if self.tokens is None and self.config.client_ca is None and not open_route:
                raise Refused(
                    401, "no-credential",
                    "the admin API has no credential configured (admin.token_file, admin.token_env or admin.client_ca): only the open routes answer",
                )
            return None, None
        scheme, _, presented = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise Refused(401, "bad-credential", "expected Authorization: Bearer TOKEN", who=certificate, headers=challenge)
        token = self.tokens.match(presented.strip()) if self.tokens is not None else None
        if token is None:
            raise Refused(401, "bad-credential", "unknown token", who=certificate, headers=challenge)
        return token.name, token.role

    @staticmethod
    def _peer_name(request: web.Request) -> str | None:
        """The client certificate's subject CN (the TLS handshake required and verified it)."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        certificate = ssl_object.getpeercert() if ssl_object is not None else None
        if not certificate:
            return None
        for rdn in certificate.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return _printable(str(value), 64)
        return "client-certificate"

    async def _read_json(self, request: web.Request) -> None:
        """The body of a change: JSON only, bounded in size and time, and JSON (the route parses
        it again from aiohttp's copy)."""
        if request.content_type != "application/json":
            raise Refused(415, "content-type", "send the body as Content-Type: application/json")
        if request.content_length is not None and request.content_length > self.config.max_body:
            raise Refused(413, "too-large", f"the body is over {self.config.max_body} bytes")
        try:
            raw = await asyncio.wait_for(request.read(), self.config.timeout)
        except asyncio.TimeoutError:
            raise Refused(408, "timeout", f"the body did not arrive within {self.config.timeout:g}s") from None
        try:
            json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Refused(400, "bad-json", f"the body is not JSON: {_printable(str(exc), 100)}") from None

    def _refuse(self, request: web.Request, refusal: Refused, who: str | None) -> web.Response:
        who = refusal.who or who
        self._audit_refused(request, refusal.reason, refusal.status, who, refusal.message)
        response = web.json_response({"error": refusal.message, "reason": refusal.reason}, status=refusal.status, headers=refusal.headers)
        if request.method not in _READS or refusal.status in (408, 413):
            response.force_close()  # its body may be unread: do not read it to keep the connection
        return response

    def _audit_refused(self, request: web.Request, reason: str, status: int, who: str | None, message: str) -> None:
        method = request.method if request.method in _METHODS else "other"
        path = _printable(request.path, 200)
        self.audit_refusal(reason, status, method, path, request.remote, who, message)

    def audit_refusal(self, reason: str, status: int, method: str, path: str, client: str | None, who: str | None, message: str) -> None:
        log.warning("admin: refused %s %s from %s (%s): %d %s: %s", method, path, client or "-", who or "no credential", status, reason, message)
        observer = self.observer
        if observer.enabled:
            observer.bus.publish(AdminRefused(observer.clock(), reason, status, method, path, client, who))

    def _audit_release(self, request: web.Request, sender: str, result: str, restriction: Any = None) -> None:
        who = _WHO.get() or "-"
        client = request.remote
        tenant = getattr(restriction, "tenant", None)
        window = getattr(restriction, "window", None)
        log.warning(
            "admin: release of %s by %s from %s: %s%s", _printable(sender, 254), who, client or "-", result,
            f" (tenant {tenant or '-'}, {window})" if restriction is not None else "",
        )
        observer = self.observer
        if observer.enabled:
            observer.bus.publish(AdminRelease(observer.clock(), _printable(sender, 254), result, who, client, tenant, window))

    @staticmethod
    async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
        """On every answer: not cached, not sniffed, and never a CORS permission."""
        for name in [h for h in response.headers if h.lower().startswith("access-control-")]:
            del response.headers[name]
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"

    # --- the routes ----------------------------------------------------------------------------

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
            self._audit_release(request, sender, "unavailable")
            return web.json_response({"error": f"the state backend is unreachable: {exc}"}, status=503)
        if released is None:
            self._audit_release(request, sender, "not-restricted")
            return web.json_response({"error": f"{sender} is not restricted", "released": None}, status=404)
        self._audit_release(request, sender, "released", released)
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


class _Busy(asyncio.Protocol):
    """A connection past ``max_connections``: answered 503 and closed, nothing parsed. The
    answer is followed by a FIN and what the client still sends is dropped for a moment before
    the close (closing with unread data would reset the connection before the client read the
    answer); past `_LINGERING` such connections at once, the close is immediate. The listener
    thus holds at most max_connections + _LINGERING file descriptors of the worker."""

    _BODY: Final = b'{"error": "too many connections to the admin listener", "reason": "too-many-connections"}'
    _LINGERING: Final = 64
    _LINGER: Final = 0.5
    lingering = 0

    def __init__(self, admin: AdminServer) -> None:
        self.admin = admin
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, base: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base)  # uvloop's transports do not subclass asyncio's
        head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
        transport.write(head % len(self._BODY) + self._BODY)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self.admin.audit_refusal("too-many-connections", 503, "other", "-", client, None, f"over admin.max_connections ({self.admin.config.max_connections})")
        if _Busy.lingering >= self._LINGERING or not transport.can_write_eof():
            transport.close()
            return
        _Busy.lingering += 1
        self.transport = transport
        transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(self._LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        return False  # close now

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            _Busy.lingering -= 1
            self.transport = None
        if self.timer is not None:
            self.timer.cancel()
