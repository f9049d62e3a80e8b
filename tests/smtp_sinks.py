"""Real SMTP peers on loopback for the relay tests: aiosmtpd sinks that record the source
address each connection came from, with scripted replies, a relay configuration builder, and
an HTTP receiver for alert webhooks.
(The stdlib-loop/uvloop runner is the `aio_run` fixture from tests/dnsserver.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from deliverypool import config as cfg

NORMAL_SOURCE = "127.0.0.2"
HIGH_RISK_SOURCE = "127.0.0.3"

def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Delivery:
    peer: str
    helo: str
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


# A reply script entry: an SMTP reply string, or "drop" to close the connection.
Script = list[str]


@dataclass
class SinkHandler:
    """Records every message; `rcpt_replies` / `data_replies` are consumed one per command
    (an empty list means 250)."""

    name: str
    deliveries: list[Delivery] = field(default_factory=list)
    rcpt_replies: Script = field(default_factory=list)
    data_replies: Script = field(default_factory=list)
    reject_rcpt: dict[str, str] = field(default_factory=dict)
    connections: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    sessions: int = 0
    max_sessions: int = 0
    # The open connections' transports (CountingSMTP), cut when the sink stops.
    transports: set[asyncio.BaseTransport] = field(default_factory=set)
    # Recipients taken per transaction; more get 452 4.5.3 (0: no limit).
    max_recipients: int = 0
    # The stage at which a ResettingSMTP (tests/test_faults.py) resets the connection once.
    reset_at: str = ""
    mail_options: list[list[str]] = field(default_factory=list)

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        self.mail_options.append(list(options))
        return "250 OK"

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        assert session.peer is not None
        self.connections.append(session.peer[0])
        return responses

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address in self.reject_rcpt:
            return self.reject_rcpt[address]
        if self.max_recipients and len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        if self.rcpt_replies:
            reply = self.rcpt_replies.pop(0)
            if not reply.startswith("2"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            reply = self.data_replies.pop(0)
            if reply == "drop":
                assert server.transport is not None
                server.transport.close()
                return "421 closing"
            if not reply.startswith("2"):
                return reply
        assert isinstance(session.peer, tuple)
        self.deliveries.append(
            Delivery(
                peer=session.peer[0],
                helo=session.host_name or "",
                mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
                rcpt_tos=list(envelope.rcpt_tos),
                content=envelope.original_content or b"",
                tls=session.ssl is not None,
            )
        )
        self.arrived.set()
        return "250 2.0.0 OK sink"

    def peers(self) -> set[str]:
        return {d.peer for d in self.deliveries}


class CountingSMTP(SMTP):
    """Counts the sessions open at once on its handler (`sessions`, `max_sessions`)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        handler = self.event_handler
        handler.sessions += 1
        handler.max_sessions = max(handler.max_sessions, handler.sessions)
        if self._original_transport is None:  # not the TLS layer made by STARTTLS
            handler.transports.add(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.event_handler.sessions -= 1
        self.event_handler.transports.discard(self._original_transport or self.transport)
        super().connection_lost(exc)


class OneMessageSMTP(CountingSMTP):
    """Takes one message per connection: a second MAIL closes the connection without a reply,
    as a server does when its idle timer fires just as the client starts a transaction."""

    served = 0

    async def smtp_MAIL(self, arg: str) -> None:
        if self.served and self.transport is not None:
            self.transport.close()
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        await super().smtp_DATA(arg)
        self.served += 1


class MidDataDropSMTP(CountingSMTP):
    """Closes the connection after reading part of the message data, once per `budget`."""

    budget: list[int] = []

    async def smtp_DATA(self, arg: str) -> None:
        if self.budget and self.budget[0] > 0:
            self.budget[0] -= 1
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(10)
            assert self.transport is not None
            self.transport.close()
            return
        await super().smtp_DATA(arg)


@dataclass
class Sink:
    handler: SinkHandler
    host: str
    port: int
    server: asyncio.AbstractServer

    @property
    def deliveries(self) -> list[Delivery]:
        return self.handler.deliveries

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Delivery]:
        """Waits until `count` messages arrived (fails the test after `timeout`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.handler.deliveries) < count:
            self.handler.arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"sink {self.handler.name}: {len(self.handler.deliveries)} of {count} messages arrived")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.handler.arrived.wait(), remaining)
        return self.handler.deliveries


@contextlib.asynccontextmanager
async def sink(
    host: str,
    port: int,
    name: str = "sink",
    smtp_class: type[SMTP] = CountingSMTP,
    tls_context: ssl.SSLContext | None = None,
    data_size_limit: int | None = 33554432,
    smtputf8: bool = True,
    **handler_args: Any,
) -> AsyncIterator[Sink]:
    """An aiosmtpd sink on `host`:`port` running on the current event loop; with
    `tls_context` it offers STARTTLS; `data_size_limit` is aiosmtpd's (its default 32 MiB)."""
    handler = SinkHandler(name, **handler_args)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: smtp_class(
            handler, hostname=name, enable_SMTPUTF8=smtputf8, tls_context=tls_context, data_size_limit=data_size_limit, loop=loop
        ),
        host,
        port,
    )
    try:
        yield Sink(handler, host, port, server)
    finally:
        server.close()
        # Python 3.11's wait_closed waits for every connection too, and a connection whose
        # reading is paused never sees its peer go: it would hold the test for ever (past
        # pytest-timeout's signal, which asyncio can swallow). Whatever is still open is cut.
        for transport in list(handler.transports):
            transport.abort()
        await asyncio.wait_for(server.wait_closed(), 30)


async def eventually(check: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition") -> None:
    """Polls `check` until it is true; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def relay_config(
    spool: Path,
    *,
    mx_port: int = 2526,
    nameserver: str | None = None,
    smarthost: str | None = None,
    listen_port: int | None = None,
    listener: str = "",
    policy: str = "",
    pool_extra: str = "",
    high_risk_sources: str = f'["{HIGH_RISK_SOURCE}"]',
    extra: str = "",
    base: Path | None = None,
) -> cfg.RelayConfig:
    """A two-pool relay on loopback: normal from 127.0.0.2, high-risk from 127.0.0.3, fast
    retries, MX delivery to `mx_port` through `nameserver` (or everything to `smarthost`);
    `extra` tables at the end (relative paths in them from `base`)."""
    delivery = f'delivery = "smarthost"\nsmarthost = "{smarthost}"' if smarthost else f"mx_port = {mx_port}"
    dns = f'nameservers = ["{nameserver}"]\ntimeout = "1s"' if nameserver else "check_sender_domain = false"
    pools = ""
    for name, sources in (("normal", f'["{NORMAL_SOURCE}"]'), ("high-risk", high_risk_sources)):
        pools += f"""
[pools.{name}]
source_addresses = {sources}
ehlo_name = "{name}.relay.test"
idle_timeout = "200ms"
{delivery}
retry = {{ initial = "100ms", maximum = "300ms" }}
{pool_extra}
"""
    text = f"""
hostname = "relay.test"
[listener]
address = "127.0.0.1:{listen_port or free_port()}"
{listener}
[spool]
directory = "{spool}"
[policy]
threshold = 5.0
score_header = "X-Spam-Score"
{policy}
[dns]
{dns}
{pools}
{extra}
"""
    return cfg.loads(text, base=base)


def message(subject: str = "hello", *, sender: str = "alice@sender.test", extra_headers: str = "", body: str = "Hi.\r\n", message_id: str | None = None) -> bytes:
    mid = message_id or f"<{abs(hash((subject, body, extra_headers)))}@sender.test>"
    return (
        f"From: {sender}\r\nTo: bob@dest.test\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra_headers}\r\n{body}"
    ).encode()


class Received(list[dict[str, Any]]):
    """The alerts a webhook receiver took; `rejected`: the POSTs whose signature failed."""

    rejected: list[str]


@contextlib.asynccontextmanager
async def webhook_receiver(port: int, secret: str | Callable[[], str] | None = None) -> AsyncIterator[Received]:
    """An alert webhook on loopback. With `secret` (or a function giving it: a secret the relay
    generates), every POST is checked with the documented Standard Webhooks snippet
    (docs/operations/admin-api.md): one that fails is answered 401 and kept out of the list."""
    received = Received()
    received.rejected = []
    verify = None
    if secret is not None:
        from tests.admin_api import documented_snippet

        verify = documented_snippet()

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if verify is not None:
            try:
                verify(secret() if callable(secret) else secret, request.headers, body)
            except ValueError as exc:
                received.rejected.append(str(exc))
                return web.Response(status=401, text=str(exc))
        received.append(json.loads(body))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield received
    finally:
        await runner.cleanup()
