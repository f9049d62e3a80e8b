"""The relay's accept loop: each connection is admitted (:class:`~deliverypool.ingress.limits.Admission`)
before an SMTP session is made for it.

Why not ``loop.create_server``: asyncio accepts up to ``backlog`` connections in one go and
only then makes their protocols, and uvloop accepts until the queue is empty; under a flood
either one holds a file descriptor for every queued connection before any limit can look at
it, runs out of them (EMFILE) and so starves delivery and the spool, which need descriptors
too. Here a connection over a limit is answered ``421 4.7.0`` and closed on the spot, so it
holds its descriptor for a few microseconds; admitted connections never exceed
``max_connections``. Should the process run out of descriptors anyway (delivery using more
than its reserve), accepting pauses until a session ends, with one log line, instead of
retrying in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any, Final, Protocol

from deliverypool.ingress.limits import Admission, Refusal, refusal_reply

__all__ = ["Listener"]

log = logging.getLogger("deliverypool.relay")

# Connections accepted in a row before the loop lets sessions run.
_BATCH: Final = 32
# accept() errors that mean "out of descriptors or memory": wait for a session to end.
_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_PAUSE: Final = 1.0

_FAMILIES: Final = {int(family): family for family in socket.AddressFamily}
_KINDS: Final = {int(kind): kind for kind in socket.SocketKind}


class _Accepted(socket.socket):
    """An accepted connection. ``socket.socket`` turns its family and type into enums at every
    look-up (about 3 µs each: an Enum call), and ``connect_accepted_socket`` looks three times
    per connection; here a look-up is a dictionary's."""

    __slots__ = ()

    @property
    def family(self) -> socket.AddressFamily:
        family = _FAMILIES.get(_socket_family(self))
        return family if family is not None else super().family

    @property
    def type(self) -> socket.SocketKind:
        kind = _KINDS.get(_socket_type(self))
        return kind if kind is not None else super().type


# The C socket's own accessors, without the enum conversion of socket.socket's properties.
_socket_family: Final = socket.SocketType.family.__get__
_socket_type: Final = socket.SocketType.type.__get__


class Session(Protocol):
    """A session protocol the listener can serve: an asyncio protocol that calls `on_close`
    once when its connection is gone (:class:`~deliverypool.ingress.session.SmtpSession`, or
    aiosmtpd's :class:`~deliverypool.ingress.smtp.RelaySMTP`)."""

    on_close: Callable[[], None] | None


class Listener(asyncio.AbstractServer):
    """Serves SMTP on `sock` (already listening: its backlog is whoever called ``listen``, the
    supervisor for a shared socket) with sessions from `factory`, admitted by `admission`."""

    def __init__(self, sock: socket.socket, factory: Callable[[], Any], admission: Admission) -> None:
        self._sock = sock
        self._factory = factory
        self.admission = admission
        self._loop = asyncio.get_running_loop()
        self._readable = asyncio.Event()
        self._session_ended = asyncio.Event()
        self._no_sessions = asyncio.Event()
        self._no_sessions.set()
        self._task: asyncio.Task[None] | None = None
        self._starting: set[asyncio.Task[None]] = set()
        # The sessions being served (their protocols).
        self.sessions: set[Any] = set()
        self._reading = False
        sock.setblocking(False)
        # What `socket.accept` asks the listening socket for each connection (its family and
        # type as enums, a conversion each), asked once.
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        # uvloop sets TCP_NODELAY on the sockets it is given; asyncio's own loop does not on
        # these (see _admit).
        self._nodelay = not type(self._loop).__module__.startswith("uvloop")

    # --- asyncio.AbstractServer ----------------------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock.fileno() >= 0 else ()

    async def start_serving(self) -> None:
        if self._task is None and self._sock.fileno() >= 0:
            self._watch(True)
            self._task = self._loop.create_task(self._accept_loop())
            self._task.add_done_callback(self._accept_loop_ended)

    async def serve_forever(self) -> None:
        await self.start_serving()
        assert self._task is not None
        await self._task

    def close(self) -> None:
        """Stops accepting and closes the socket (this process's copy of it); sessions go on."""
        self._watch(False)
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(OSError):
            self._sock.close()

    async def wait_closed(self) -> None:
        """Until the accept loop has stopped and every session has ended (as asyncio's
        ``Server.wait_closed`` since Python 3.12); callers bound it with a timeout."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
        await self._no_sessions.wait()

    # --- accepting -----------------------------------------------------------------------

    def _watch(self, on: bool) -> None:
        if on and not self._reading and self._sock.fileno() >= 0:
            self._loop.add_reader(self._sock.fileno(), self._readable.set)
            self._reading = True
        elif not on and self._reading:
            self._loop.remove_reader(self._sock.fileno())
            self._reading = False

    async def _accept_loop(self) -> None:
        sock = self._sock
        while True:
            try:
                for _ in range(_BATCH):
                    # socket.accept() without its per-call look-ups (socket.py does the same).
                    fd, address = sock._accept()  # type: ignore[attr-defined]
                    self._admit(_Accepted(*self._kind, fileno=fd), address)
            except (BlockingIOError, InterruptedError):
                self._readable.clear()
                await self._readable.wait()
                continue
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _EXHAUSTED:
                    raise
                log.warning(
                    "cannot accept connections: %s (%d open); pausing until one closes", exc.strerror, self.admission.open,
                    extra={"rate_limit": "accept-exhausted"},
                )
                await self._pause()
                continue
            await asyncio.sleep(0)

    def _accept_loop_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the accept loop stopped: no more connections are accepted", exc_info=task.exception())

    async def _pause(self) -> None:
        self._watch(False)
        self._session_ended.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._session_ended.wait(), _PAUSE)
        self._watch(True)

    def _admit(self, connection: socket.socket, address: Any) -> None:
        peer = address[0] if isinstance(address, tuple) and address else None
        refusal = self.admission.admit(peer)
        if refusal is not None:
            self._refuse(connection, peer, refusal)
            return
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and accept() on
        # a socket made by socket.create_server (the supervisor's) gives proto 0: without this,
        # Nagle's algorithm and the client's delayed ACK cost 40 ms per multi-line reply.
        if self._nodelay:
            with contextlib.suppress(OSError):
                connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._no_sessions.clear()
        task = self._loop.create_task(self._serve(connection, peer))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    def _refuse(self, connection: socket.socket, peer: str | None, refusal: Refusal) -> None:
        """421 and close, here and now. Whatever the client already sent is read first, so
        that the close is a FIN after the reply and not a reset that could discard it."""
        try:
            connection.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                connection.recv(4096)
            connection.send(refusal_reply(self.admission.hostname, refusal).encode("ascii") + b"\r\n")
        except OSError:
            pass
        finally:
            connection.close()
        log.warning("refused connection peer=%s reason=%s", peer, refusal, extra={"rate_limit": f"refused {refusal}"})

    async def _serve(self, connection: socket.socket, peer: str | None) -> None:
        released = False
        protocol: Session | None = None

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.sessions.discard(protocol)
                self.admission.release(peer)
                self._session_ended.set()
                if self.admission.open == 0:
                    self._no_sessions.set()

        def session() -> Any:
            nonlocal protocol
            protocol = self._factory()
            protocol.on_close = release
            self.sessions.add(protocol)
            return protocol

        try:
            await self._loop.connect_accepted_socket(session, connection)
        except Exception as exc:  # the client went away before the session started
            log.info("connection from %s lost before its session started: %r", peer, exc)
            release()
            connection.close()
