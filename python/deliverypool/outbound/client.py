"""One outbound SMTP connection: an :class:`asyncio.Protocol` that feeds every read to the Rust
client engine (:class:`deliverypool._core.SmtpClient`, ``rust/smtp/client.rs``) in one call and
writes what it hands back. The engine knows SMTP (replies, EHLO, PIPELINING, CHUNKING, STARTTLS,
per-recipient outcomes); this module knows the event loop: the socket, TLS, timers, flow control,
and writing a body from memory or from the spool's body file.

Nothing here decides what to send or what a reply means (transaction.py and outcomes.py do).
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, cast

from deliverypool._core import SMTP_CLIENT_EVENTS, SmtpClient, dot_stuff

if TYPE_CHECKING:
    from deliverypool.queue.spool import BodyFile, Spool

__all__ = ["CLOSED", "DONE", "PENDING", "READY", "REFUSED", "SEND_BODY", "START_TLS", "SmtpConnection", "SessionRefused"]

# The engine's events (rust/smtp/client.rs `Event`), by number.
PENDING, READY, START_TLS, REFUSED, SEND_BODY, DONE, CLOSED = range(7)
EVENT_NAMES = ("pending", "ready", "start-tls", "refused", "send-body", "done", "closed")
assert SMTP_CLIENT_EVENTS == EVENT_NAMES, SMTP_CLIENT_EVENTS


class SessionRefused(Exception):
    """The session could not be set up: ``code`` is the server's reply code when a reply refused
    it (a 4xx/5xx greeting, EHLO, or STARTTLS under a required policy), else None."""

    def __init__(self, text: str, code: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class SmtpConnection(asyncio.Protocol):
    """The protocol of one outbound connection. Each read is one call into Rust; the event it
    returns wakes the coroutine waiting in :meth:`wait` (or waits for it, when it came first)."""

    def __init__(self, engine: SmtpClient, loop: asyncio.AbstractEventLoop) -> None:
        self.engine = engine
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._waiter: asyncio.Future[int] | None = None
        # An event that came while nobody waited (the greeting's READY before open() resumed,
        # or CLOSED while the connection was idle): the next wait() returns it.
        self._event = PENDING
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        # A command that goes out with the body (BDAT after the RCPT replies).
        self._commands: bytes | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        event, output = self.engine.receive(data)
        if output is not None:
            if event == SEND_BODY:
                self._commands = output  # BDAT: written with the body, in one write
            elif self.transport is not None:
                self.transport.write(output)
        if event:
            self._deliver(event)

    def eof_received(self) -> bool | None:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        why = (str(exc) or type(exc).__name__) if exc is not None else "the server closed the connection"
        self._deliver(self.engine.connection_lost(why))
        self._wake_writer()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    # --- used by the transaction ---------------------------------------------------------

    def _deliver(self, event: int) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(event)
        else:
            self._event = event

    def _wake_writer(self) -> None:
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def write(self, output: bytes | None) -> None:
        """Writes the engine's output."""
        transport = self.transport
        if output and transport is not None and not self.closed:
            transport.write(output)

    def forget_event(self) -> None:
        """Drops an event that came while nobody waited (a transaction begins afresh)."""
        self._event = PENDING

    def catch_up(self) -> None:
        """Once the caller has acted on an event (and written all it had to), lets the engine
        read what it held back from the last read: replies that came with the one acted on."""
        transport = self.transport
        if self.engine.holds_input:
            event, more = self.engine.receive(b"")
            if more is not None:
                if event == SEND_BODY:
                    self._commands = more
                elif transport is not None and not self.closed:
                    transport.write(more)
            if event:
                self._deliver(event)

    async def wait(self, timeout: float, then: float | None = None) -> int:
        """The next event the caller must act on. After `timeout` seconds without one, the
        connection counts as lost (its transaction's recipients get a 4.4.2 reply) and is
        aborted. With `then`, a connection whose greeting came within `timeout` gets `then`
        seconds more (the greeting has connect_timeout, EHLO command_timeout)."""
        event = self._event
        if event:
            self._event = PENDING
            return event
        if self.closed:
            return CLOSED
        waiter: asyncio.Future[int] = self.loop.create_future()
        self._waiter = waiter
        self._timer = self.loop.call_later(timeout, self._timed_out, waiter, timeout, then)
        try:
            return await waiter
        finally:
            self._waiter = None
            self._timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[int], timeout: float, then: float | None) -> None:
        if waiter.done():
            return
        if then is not None and self.engine.greeting is not None:
            self._timer = self.loop.call_later(then, self._timed_out, waiter, then, None)
            return
        event = self.engine.connection_lost(f"no reply within {timeout:g} s")
        self.abort()
        waiter.set_result(event or CLOSED)

    async def drain(self, timeout: float) -> None:
        """Returns once the transport takes more data (flow control); a stalled server counts
        as lost after `timeout` seconds."""
        if not self._paused or self.closed:
            return
        drained: asyncio.Future[None] = self.loop.create_future()
        self._drained = drained
        try:
            await asyncio.wait_for(drained, timeout)
        except asyncio.TimeoutError:
            self.engine.connection_lost(f"the server took no data for {timeout:g} s")
            self.abort()
            raise
        finally:
            self._drained = None

    async def write_body(self, body: bytes | BodyFile, spool: Spool, timeout: float, commands: bytes | None = None) -> None:
        """The body as the engine's frame says: dot-stuffed for DATA (in Rust: no copy when no
        line starts with a dot) with the end of data after it, or as stored for BDAT; a body
        file in pieces that each end at a line break, each written once the transport has taken
        the one before, or with sendfile(2) when the loop and transport can (BDAT, no TLS).
        `commands` (the pipelined MAIL ... BDAT) go in the same write as a body in memory: one
        writev(2), so the whole transaction is one segment on the wire for a small message."""
        if commands is None:
            commands, self._commands = self._commands, None
        frame = self.engine.body_frame()
        transport = self.transport
        if frame is None or transport is None or self.closed:
            self.write(commands)
            return
        stuff, suffix = frame
        if isinstance(body, bytes):
            data = dot_stuff(body) if stuff else body
            transport.writelines([commands, data, suffix] if commands else [data, suffix])
            return
        self.write(commands)
        if stuff or not await self._sendfile(body, timeout):
            first = True
            async for piece in spool.chunks(body):
                if not first:
                    await self.drain(timeout)
                if self.closed or self.engine.body_frame() is None:
                    return  # the server answered (or left) before the end: stop sending
                transport.write(dot_stuff(piece) if stuff else piece)
                first = False
        if suffix and not self.closed:
            transport.write(suffix)

    async def _sendfile(self, body: BodyFile, timeout: float) -> bool:
        """The body file's message with sendfile(2): only on the stdlib loop (uvloop has none)
        over plain TCP. False when not possible (then the caller streams it)."""
        transport = self.transport
        if not isinstance(self.loop, asyncio.BaseEventLoop) or transport is None or transport.get_extra_info("sslcontext") is not None:
            return False
        with open(body.path, "rb") as file:  # noqa: ASYNC230 -- an open(2) of a local file
            try:
                sent = self.loop.sendfile(transport, file, 0, body.size, fallback=False)
                await asyncio.wait_for(sent, timeout + body.size / 65536)
            except asyncio.SendfileNotAvailableError:
                return False
            except asyncio.TimeoutError:
                self.engine.connection_lost(f"the server took the body too slowly (over {timeout:g} s)")
                self.abort()
                raise
        return True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self.closed = True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


async def start_tls(connection: SmtpConnection, context: ssl.SSLContext, server_hostname: str, timeout: float) -> None:
    """Starts TLS on the connection (the engine said so) and sends EHLO again over it."""
    transport = connection.transport
    assert transport is not None
    tls = await asyncio.wait_for(
        connection.loop.start_tls(transport, connection, context, server_hostname=server_hostname), timeout
    )
    if tls is None:
        raise ConnectionError("TLS could not be started")
    connection.transport = tls
    connection.write(connection.engine.tls_started())
    connection.catch_up()
