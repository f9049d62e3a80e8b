"""The relay's SMTP sessions: one :class:`asyncio.Protocol` per connection, driving the Rust
SMTP engine (:class:`deliverypool._core.SmtpServer`, ``rust/smtp/server.rs``).

Each read is one call into Rust: the engine parses every command the read holds (PIPELINING,
RFC 2920), answers what it can itself (EHLO, NOOP, RSET, syntax and sequence errors, the DATA
reader's refusals), and calls back into this protocol where the relay decides: ``on_mail``,
``on_rcpt``, ``on_message``, ``on_auth`` and ``on_starttls``. A decision that is made at once
(an address check) is a reply string; one that must wait (the sender limits' shared state, the
spool commit before 250, the delay of a failed AUTH) returns None and answers later through
``SmtpServer.answer``, while the bytes that came after it wait in the engine. The replies of a
read go out in one write.

What stays here, in Python, is what the listener decides: the idle timeout (421 4.4.2, from the
last bytes received), failed AUTH (each answered later than the one before, 421 4.7.0 at
``max_auth_failures``, and the count per client address shared through
:class:`~deliverypool.ingress.limits.Admission`), the TLS hand-off, and the handler's decisions
(:class:`~deliverypool.ingress.handler.RoutingHandler`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

from deliverypool._core import SmtpMessage, SmtpServer, SmtpServerConfig
from deliverypool.config import ListenerConfig
from deliverypool.ingress.handler import AUTH_INVALID, AUTH_OK, RoutingHandler
from deliverypool.ingress.limits import Admission, Limits, refusal_reply
from deliverypool.queue.spool import DsnRequest

__all__ = ["SessionFactory", "SessionStats", "SmtpSession"]

log = logging.getLogger("deliverypool.relay")

# Bytes a client may pipeline while a decision is pending before reading pauses.
_BACKLOG: Final = 256 * 1024
_FAILED: Final = "451 4.3.0 Temporary failure; try again later"


@dataclass
class SessionStats:
    """Counts of one listener's sessions: connections served, messages handed to the relay (of
    them in BDAT chunks), TLS handshakes completed."""

    sessions: int = 0
    messages: int = 0
    chunked: int = 0
    tls: int = 0


class SessionFactory:
    """What every session of one listener shares: the engine's configuration, the handler, the
    worker's admission counts, TLS. Calling it makes a session (`loop.create_server`,
    `loop.connect_accepted_socket`)."""

    def __init__(self, listener: ListenerConfig, handler: RoutingHandler, admission: Admission | None = None) -> None:
        self.listener = listener
        self.handler = handler
        self.admission = admission if admission is not None else Admission(listener, Limits.for_listener(listener))
        self.limits = self.admission.limits
        self.hostname = listener.hostname
        self.tls_context: ssl.SSLContext | None = None
        if listener.tls_certificate is not None and listener.tls_key is not None:
            self.tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls_context.load_cert_chain(listener.tls_certificate, listener.tls_key)
        self.engine_config = SmtpServerConfig(
            listener.hostname,
            size_limit=listener.size_limit or 0,
            line_length_limit=listener.line_length_limit,
            command_size_limit=listener.command_size_limit,
            auth=bool(listener.auth_users),
            auth_requires_tls=not listener.allow_plaintext_auth,
            tls=self.tls_context is not None,
        )
        self.idle_timeout = listener.idle_timeout
        self.stats = SessionStats()
        self.idle_reply = f"421 4.4.2 {listener.hostname} Idle for too long; closing connection"

    def __call__(self) -> SmtpSession:
        return SmtpSession(self)


class SmtpSession(asyncio.Protocol):
    """One SMTP connection of the relay's listener."""

    # Called once when the connection is gone (the Listener releases its slot).
    on_close: Callable[[], None] | None = None

    def __init__(self, factory: SessionFactory) -> None:
        self.factory = factory
        self.handler = factory.handler
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.engine: SmtpServer | None = None
        self.peer: str | None = None
        self.login: str | None = None
        self.auth_failures = 0
        self.tasks: set[asyncio.Task[str]] = set()
        self.paused = False
        # STARTTLS: the handshake was started (the next bytes received are over TLS).
        self.handshaking = False
        self.early: list[bytes] = []
        self.last = 0.0
        self.timer: asyncio.TimerHandle | None = None

    # --- the connection ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a stream transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if isinstance(peer, tuple) and peer else None
        self.engine = SmtpServer(self.factory.engine_config, self.peer or "unknown")
        self.factory.stats.sessions += 1
        self._send(self.engine.take_output())
        self.last = self.loop.time()
        self.timer = self.loop.call_at(self.last + self.factory.idle_timeout, self._idle)

    def data_received(self, data: bytes) -> None:
        engine = self.engine
        if engine is None:
            return
        self.last = self.loop.time()
        if self.handshaking:
            # Bytes over TLS can arrive before `_start_tls` resumes with the TLS transport they
            # are to be answered on: they wait for it.
            self.early.append(data)
            return
        self._send(self._run(engine.feed, data))
        if engine.waiting is not None and engine.buffered > _BACKLOG and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True

    def eof_received(self) -> bool | None:
        return False  # close the connection (a message in flight still gets stored)

    def connection_lost(self, error: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.engine is not None and self.engine.in_message:
            log.info("connection lost during DATA peer=%s", self.peer)
        self.transport = None
        # AUTH delays and sender-limit checks end with the connection; a message being stored
        # is stored (the client saw no 250 and may send it again: never lost, at worst twice).
        for task in self.tasks:
            if not getattr(task, "deliverypool_message", False):
                task.cancel()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()

    def _run(self, call: Callable[[Any, SmtpSession], bytes | None], argument: Any) -> bytes | None:
        """`engine.feed` or `engine.answer` with this session as the handler; a failure in the
        session's own code ends the session with a 421 (logged), never a traceback to the loop."""
        try:
            return call(argument, self)
        except Exception:
            log.exception("SMTP session failed peer=%s", self.peer)
            assert self.engine is not None
            return self.engine.shutdown(f"421 4.3.0 {self.factory.hostname} Internal error; closing connection")

    def _send(self, out: bytes | None) -> None:
        transport = self.transport
        if transport is None:
            return
        if out:
            transport.write(out)
        engine = self.engine
        if engine is not None and engine.closed:
            transport.close()

    def _idle(self) -> None:
        """The idle timeout (``listener.idle_timeout``) counts from the last bytes received:
        421 4.4.2, then close. One timer per session, moved on only when it fires."""
        self.timer = None
        engine, transport = self.engine, self.transport
        if engine is None or transport is None or transport.is_closing():
            return
        due = self.last + self.factory.idle_timeout
        if due > self.loop.time() or engine.waiting in ("message", "rcpt", "mail"):
            # Bytes came since, or the relay is deciding (a timeout is the client's silence).
            self.timer = self.loop.call_at(max(due, self.loop.time() + 1.0), self._idle)
            return
        log.info("idle timeout peer=%s", self.peer)
        self._send(engine.shutdown(self.factory.idle_reply))

    # --- answering later -----------------------------------------------------------------

    def _later(self, work: Coroutine[Any, Any, str], message: bool = False) -> None:
        task = self.loop.create_task(work)
        if message:
            task.deliverypool_message = True  # type: ignore[attr-defined]
        self.tasks.add(task)
        task.add_done_callback(self._answered)

    def _now_or_later(self, reply: str | Coroutine[Any, Any, str]) -> str | None:
        """A handler's decision for the engine: a reply now, or None and the reply later (the
        coroutine, run as a task of the session)."""
        if isinstance(reply, str):
            return reply
        self._later(reply)
        return None

    def _answered(self, task: asyncio.Task[str]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("SMTP decision failed peer=%s", self.peer, exc_info=error)
            reply = _FAILED
        else:
            reply = task.result()
        self._answer(reply)

    def _answer(self, reply: str) -> None:
        engine = self.engine
        if engine is None or self.transport is None:
            return
        self._send(self._run(engine.answer, reply))
        if self.paused and engine.waiting is None and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    # --- the engine's callbacks ------------------------------------------------------------

    def on_mail(self, address: str, smtputf8: bool) -> str | None:
        return self._now_or_later(self.handler.mail_reply(address, smtputf8))

    def on_rcpt(self, address: str, mail_from: str, smtputf8: bool, accepted: int) -> str | None:
        reply = self.handler.rcpt_reply(
            peer=self.peer,
            authenticated=self.login is not None,
            login=self.login,
            mail_from=mail_from or "<>",
            address=address,
            smtputf8=smtputf8,
            accepted=accepted,
        )
        return self._now_or_later(reply)

    def on_message(self, message: SmtpMessage) -> None:
        # (The engine is busy calling this: its methods cannot be called from here.)
        stats = self.factory.stats
        stats.messages += 1
        stats.chunked += message.chunked
        dsn = None
        if message.ret is not None or message.envid is not None or any(message.notify) or any(message.orcpt):
            dsn = DsnRequest(ret=message.ret, envid=message.envid, notify=message.notify, orcpt=message.orcpt)
        work = self.handler.message_reply(
            mail_from=message.mail_from or "<>",
            recipients=message.recipients,
            content=message.content,
            peer=self.peer,
            helo=message.helo,
            login=self.login,
            authenticated=self.login is not None,
            traced=True,
            dsn=dsn,
        )
        self._later(work, message=True)

    def on_auth(self, mechanism: str | None, login: bytes, password: bytes, failure: str | None) -> str | None:
        """A finished AUTH exchange. Failures (a wrong password, an aborted or undecodable
        exchange) are answered after a delay that grows with each failure on the connection;
        the ``max_auth_failures``-th is answered 421 4.7.0 and the connection closed. They
        count against the client address too: at ``max_auth_failures_per_client`` it is
        refused, here and at its next connections."""
        admission = self.factory.admission
        hostname = self.factory.hostname
        if admission.auth_refused(self.peer):
            return refusal_reply(hostname, "auth-failures")
        if failure is None:
            user = self.handler.credentials(login, password, self.peer)
            if user is not None:
                self.login = user
                return AUTH_OK
            failure = AUTH_INVALID
        self.auth_failures += 1
        limits = self.factory.limits
        if admission.auth_failed(self.peer):
            reply = refusal_reply(hostname, "auth-failures")
        elif self.auth_failures >= limits.max_auth_failures:
            reply = f"421 4.7.0 {hostname} Too many failed authentication attempts; closing connection"
        else:
            reply = failure
        self._later(_after(limits.auth_delay(self.auth_failures), reply))
        return None

    def on_starttls(self) -> None:
        # Nothing more is read in plain text: what the client sends next is the handshake.
        if self.transport is not None:
            self.transport.pause_reading()
        task = self.loop.create_task(self._start_tls())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _start_tls(self) -> str:
        """The TLS handshake after ``220 Ready to start TLS`` (which is written first); the
        session then starts over. A failed handshake closes the connection."""
        transport, context = self.transport, self.factory.tls_context
        if transport is None or context is None or self.engine is None:
            return ""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.handshaking = True
        try:
            tls = await self.loop.start_tls(transport, self, context, server_side=True, ssl_handshake_timeout=self.factory.idle_timeout)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            log.info("TLS handshake failed peer=%s: %s", self.peer, exc)
            if self.transport is not None:
                self.transport.close()
            return ""
        if tls is None:
            return ""
        # The session starts over (RFC 3207 §4.2).
        self.transport = tls
        self.handshaking = False
        self.login = None
        self.engine.tls_started()
        self.factory.stats.tls += 1
        self.last = self.loop.time()
        self.timer = self.loop.call_at(self.last + self.factory.idle_timeout, self._idle)
        early, self.early = self.early, []
        for data in early:
            self.data_received(data)
        return ""


async def _after(delay: float, reply: str) -> str:
    await asyncio.sleep(delay)
    return reply
