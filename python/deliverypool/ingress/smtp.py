"""The SMTP protocol of the relay's front end: aiosmtpd's `SMTP`, configured from the
``[listener]`` section, with its per-connection set-up done once per configuration, and the
listener limits that live in a session: the idle timeout (421 4.4.2), failed AUTH (answered
later each time, 421 4.7.0 at ``max_auth_failures``), and replies that are always printable
ASCII whatever bytes the client sent.

This module uses aiosmtpd's private attributes (``_smtp_methods``, ``_auth_methods``,
``_handle_hooks``, ``_getaddr``); pyproject.toml pins aiosmtpd to the minor versions the tests
cover, and :meth:`RelaySMTP._remember` falls back to aiosmtpd's own set-up when it finds state
it does not know.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import types
from collections import defaultdict
from collections.abc import Callable
from typing import Any, AnyStr, ClassVar, Final, cast

from aiosmtpd.smtp import MISSING, SMTP

from deliverypool._core import DataReader

from deliverypool.config import ListenerConfig
from deliverypool.ingress.limits import Admission, Limits, refusal_reply
from deliverypool.mail.address import DOT_ATOM_PATTERN
from deliverypool.mail.headers import received_field

__all__ = ["RelaySMTP", "protocol_factory"]

log = logging.getLogger("deliverypool.relay")

# What the relay answers for a message the DATA reader refused (aiosmtpd's wording for the
# first two, which clients and tests know).
_REFUSALS: Final = {
    "too-large": "552 Error: Too much mail data",
    "line-too-long": "500 Line too long (see RFC5321 4.5.3.1.6)",
    "bare-line-ending": "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)",
    "nul": "554 5.6.0 Message contains a NUL character (RFC 5321 4.5.2)",
}
_UNLIMITED: Final = 2**62
# Replies aiosmtpd gives to failed AUTH: counted, delayed, and the last one made a 421.
_AUTH_FAILURES: Final = ("535", "501")
# aiosmtpd closes after too many unknown commands with a 502; RFC 5321 §3.8 wants 421.
_BOGUS_GOODBYE: Final = "502 5.5.1 Too many unrecognized commands"
_SIZE_PARAMETER: Final = re.compile(r"SIZE=(\d{1,18})\Z", re.IGNORECASE)
_UNPRINTABLE: Final = re.compile(r"[^\x20-\x7e]")


def _declared_size(mail_options: list[str]) -> int | None:
    """The ESMTP SIZE= the client declared in MAIL FROM, if any."""
    for option in mail_options:
        match = _SIZE_PARAMETER.match(option)
        if match:
            return int(match.group(1))
    return None

# A reverse-path or forward-path that is a plain dot-atom address in angle brackets, followed
# by nothing or by whitespace and parameters (not a comment). For these, aiosmtpd's parse with
# the email package's RFC 5322 grammar gives the same (address, rest); tests/test_relay.py
# checks that on fuzzed input. Anything else takes aiosmtpd's own path.
_PLAIN_PATH = re.compile(rf"<({DOT_ATOM_PATTERN}@{DOT_ATOM_PATTERN})>(?:[ \t]+([^\s(][^\r\n]*))?[ \t]*\Z")

# Attributes of the prototype that each connection rebuilds rather than shares.
_PER_CONNECTION = frozenset({"_smtp_methods", "_auth_methods", "_handle_hooks", "command_size_limits"})
_SHAREABLE = (type(None), bool, int, float, str, bytes, tuple, frozenset, ssl.SSLContext, asyncio.AbstractEventLoop)


class RelaySMTP(SMTP):
    """aiosmtpd's `SMTP` with its per-connection set-up done once per configuration.

    `SMTP.__init__` builds its command and AUTH tables with `inspect.getmembers` and `dir` on
    every connection; with one connection per message that was ~8% of the relay's time. The
    first connection of a factory (`Relay.smtp_factory`) is built by `SMTP.__init__`; its
    state becomes the prototype of the later ones, which get the same values with the bound
    methods rebound to themselves and their own copies of the dicts. If the prototype holds
    anything not known to be safe to share (a newer aiosmtpd adding state), every connection
    takes `SMTP.__init__` as before.

    Each connection also gets its own ``command_size_limits`` (aiosmtpd keeps one dict on the
    class, cleared by every new connection and raised by every EHLO, so concurrent sessions
    move each other's MAIL limit); the base is the configured ``command_size_limit``.

    MAIL and RCPT paths that are plain ``<dot-atom@dot-atom>`` are parsed with a regular
    expression instead of the email package's header parser (which also defines a class on
    every call); anything else goes to aiosmtpd's parser.
    """

    _prototype: ClassVar[dict[str, Any] | None] = None
    _copied: ClassVar[tuple[str, ...]] = ()
    _smtp_functions: ClassVar[dict[str, Any]]
    _auth_entries: ClassVar[dict[str, Any]]
    _hooks: ClassVar[dict[str, Any]]
    _usable: ClassVar[bool] = True
    # The worker's connection and AUTH-failure counts (set by `protocol_factory`).
    admission: ClassVar[Admission | None] = None
    # Called once when the connection is gone (the Listener releases its slot).
    on_close: Callable[[], None] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_size_limits = self._fresh_limits()
        self._auth_failures = 0
        self._auth_reply: str | None = None
        self._in_auth = False

    @classmethod
    def _fresh_limits(cls) -> defaultdict[str, int]:
        base = cls.command_size_limit
        return defaultdict(lambda: base)

    @classmethod
    def create(cls, handler: Any, loop: asyncio.AbstractEventLoop, kwargs: dict[str, Any]) -> RelaySMTP:
        """A protocol instance for one connection; `kwargs` must be the same on every call
        for this class (each `smtp_factory` makes its own class)."""
        prototype = cls.__dict__.get("_prototype")
        if prototype is None or not cls._usable:
            first = cls(handler, loop=loop, **kwargs)
            if cls.__dict__.get("_prototype") is None and cls._usable:
                cls._remember(first, loop)
            return first
        self = cls.__new__(cls)
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=cls.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.__dict__.update(prototype)
        for name in cls._copied:
            setattr(self, name, prototype[name].copy())
        self._smtp_methods = {name: types.MethodType(f, self) for name, f in cls._smtp_functions.items()}
        self._auth_methods = {
            name: type(attr)(types.MethodType(attr.method, self) if attr.is_builtin else attr.method, attr.is_builtin)
            for name, attr in cls._auth_entries.items()
        }
        self._handle_hooks = dict(cls._hooks)
        self.command_size_limits = cls._fresh_limits()
        self._auth_failures = 0
        self._auth_reply = None
        self._in_auth = False
        return self

    @classmethod
    def _remember(cls, first: RelaySMTP, loop: asyncio.AbstractEventLoop) -> None:
        bare = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), client_connected_cb=lambda r, w: None, loop=loop)
        protocol_keys = set(vars(bare))
        prototype = {k: v for k, v in vars(first).items() if k not in protocol_keys and k not in _PER_CONNECTION}
        known = all(isinstance(getattr(first, k, None), dict) for k in _PER_CONNECTION)
        copied = []
        for key, value in prototype.items():
            if isinstance(value, types.MethodType):
                known = known and value.__self__ is not first
            elif type(value) in (dict, list, set):
                copied.append(key)  # e.g. the call-limit base: each connection its own copy
            elif not isinstance(value, _SHAREABLE) and value is not first.event_handler and not callable(value):
                known = False
        smtp_functions = {}
        for name, method in first._smtp_methods.items():
            if not (isinstance(method, types.MethodType) and method.__self__ is first):
                known = False
                break
            smtp_functions[name] = method.__func__
        auth_entries = {}
        for name, attr in first._auth_methods.items():
            if attr.is_builtin:
                if not (isinstance(attr.method, types.MethodType) and attr.method.__self__ is first):
                    known = False
                    break
                attr = type(attr)(attr.method.__func__, True)
            auth_entries[name] = attr
        if not known:
            cls._usable = False
            return
        cls._copied = tuple(copied)
        cls._smtp_functions = smtp_functions
        cls._auth_entries = auth_entries
        cls._hooks = dict(first._handle_hooks)
        cls._prototype = prototype

    # --- the session's limits ----------------------------------------------------------------

    def connection_lost(self, error: Exception | None) -> None:
        try:
            super().connection_lost(error)
        finally:
            on_close, self.on_close = self.on_close, None
            if on_close is not None:
                on_close()

    def _timeout_cb(self) -> None:
        """The idle timeout (``listener.idle_timeout``): 421 4.4.2, then close (aiosmtpd closes
        without a word)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        log.info("idle timeout peer=%s", self.session.peer if self.session else None)
        # uvloop's transports are not registered as asyncio.WriteTransport subclasses.
        cast(asyncio.WriteTransport, transport).write(f"421 4.4.2 {self.hostname} Idle for too long; closing connection\r\n".encode("ascii"))
        transport.close()

    async def push(self, status: AnyStr) -> None:
        """Every reply in printable ASCII (what the client sent may be echoed: an 8-bit
        argument, a control character, a lone CR); a failed AUTH's reply held back for
        `smtp_AUTH`; aiosmtpd's goodbye to a client sending unknown commands made a 421."""
        if isinstance(status, str):
            if not (status.isascii() and status.isprintable()):
                status = _UNPRINTABLE.sub("?", status)
            if self._in_auth and status.startswith(_AUTH_FAILURES):
                self._auth_reply = status
                return
            if status.startswith(_BOGUS_GOODBYE):
                status = f"421 4.7.0 {self.hostname} Too many unrecognized commands; closing connection"
        await super().push(status)

    def _peer_address(self) -> str | None:
        peer = self.session.peer if self.session is not None else None
        return peer[0] if isinstance(peer, tuple) and peer else None

    async def _close_with(self, reply: str) -> None:
        """Sends `reply` (a 421) and ends the session, as aiosmtpd's QUIT does."""
        await self.push(reply)
        if self._handler_coroutine is not None:
            self._handler_coroutine.cancel()
        if self.transport is not None:
            self.transport.close()

    async def smtp_AUTH(self, arg: str) -> None:
        """aiosmtpd's AUTH, with failures (535, or 501 for an aborted or undecodable exchange)
        answered after a delay that grows with each failure on the connection; the
        ``max_auth_failures``-th is answered 421 4.7.0 and the connection closed. Failures
        count against the client address too: at ``max_auth_failures_per_client`` it is
        refused, here and at its next connections."""
        admission = self.admission
        if admission is None:
            await super().smtp_AUTH(arg)
            return
        peer = self._peer_address()
        if admission.auth_refused(peer):
            await self._close_with(refusal_reply(self.hostname, "auth-failures"))
            return
        self._in_auth, self._auth_reply = True, None
        try:
            await super().smtp_AUTH(arg)
        finally:
            self._in_auth = False
        failure, self._auth_reply = self._auth_reply, None
        if failure is None:
            return
        self._auth_failures += 1
        refused = admission.auth_failed(peer)
        limits = admission.limits
        await asyncio.sleep(limits.auth_delay(self._auth_failures))
        if refused:
            await self._close_with(refusal_reply(self.hostname, "auth-failures"))
        elif self._auth_failures >= limits.max_auth_failures:
            await self._close_with(f"421 4.7.0 {self.hostname} Too many failed authentication attempts; closing connection")
        else:
            await self.push(failure)

    async def smtp_DATA(self, arg: str) -> None:
        """DATA read in whole buffers by the Rust :class:`~deliverypool._core.DataReader`
        instead of aiosmtpd's line-at-a-time loop, with the same replies: 552 over the size
        limit, 500 for a line over the line limit; and, refused here before the handler sees
        them, 554 5.6.0 for a bare CR or LF (SMTP smuggling) or a NUL byte. The data is read
        to its end in every case, so the session goes on in step with the client."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit or _UNLIMITED
        reader = DataReader(size_limit=limit, line_length_limit=self.line_length_limit, expected_size=_declared_size(envelope.mail_options))
        # asyncio's StreamReader has no public "look at the buffer" call: its buffer is read and
        # consumed in place (no copy), as StreamReader.read itself does.
        stream: Any = self._reader
        try:
            while not reader.done:
                buffer = stream._buffer
                if buffer:
                    used = reader.feed(buffer)
                    del buffer[:used]
                    stream._maybe_resume_transport()
                    continue
                if stream.at_eof() or self.transport is None:
                    return  # the client went away in the middle of DATA: nothing was accepted
                await stream._wait_for_data("smtp_DATA")
                self._reset_timeout()  # the idle timeout counts from the last bytes received
        except asyncio.CancelledError:
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        problem = reader.problem
        if problem is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(_REFUSALS[problem])
            return
        # The relay's trace field goes in front as the message is taken out of the reader: one
        # copy of the message instead of two. The envelope holds the only reference (the
        # handler hands it on and drops it).
        session = self.session
        assert session is not None
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        trace = received_field(helo=session.host_name or "unknown", peer=peer, by=self.hostname, authenticated=bool(session.authenticated))
        envelope.content = envelope.original_content = reader.take(trace)
        envelope.deliverypool_traced = True  # type: ignore[attr-defined]  # read by RoutingHandler
        del reader
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.match(arg)
        if match is None:
            try:
                return super()._getaddr(arg)
            except Exception:  # the email package's parser raises IndexError on some input
                return None, None  # "553 5.1.3 Error: malformed address"
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match.group(2) or ""


def protocol_factory(listener: ListenerConfig, handler: Any, admission: Admission | None = None) -> Callable[[], RelaySMTP]:
    """A protocol factory for `loop.create_server`, configured from the listener section;
    `handler` is the aiosmtpd handler (a :class:`~deliverypool.ingress.handler.RoutingHandler`).
    `admission` holds the worker's counts (a :class:`~deliverypool.ingress.listener.Listener`
    shares its own); the connection limits themselves are the Listener's, which admits each
    connection before it asks this factory for a session."""
    if admission is None:
        admission = Admission(listener, Limits.for_listener(listener))
    limits: type[RelaySMTP] = type(
        "RelaySMTP",
        (RelaySMTP,),
        {"line_length_limit": listener.line_length_limit, "command_size_limit": listener.command_size_limit, "admission": admission},
    )
    tls_context = None
    if listener.tls_certificate is not None and listener.tls_key is not None:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(listener.tls_certificate, listener.tls_key)
    auth = bool(listener.auth_users)
    loop = asyncio.get_running_loop()

    kwargs: dict[str, Any] = dict(
        hostname=listener.hostname,
        ident="deliverypool",
        data_size_limit=listener.size_limit,
        enable_SMTPUTF8=True,
        decode_data=False,
        tls_context=tls_context,
        authenticator=handler.authenticate if auth else None,
        auth_require_tls=not listener.allow_plaintext_auth,
        auth_exclude_mechanism=None if auth else ["LOGIN", "PLAIN"],
        command_call_limit=10_000,
        timeout=listener.idle_timeout,
    )

    def factory() -> RelaySMTP:
        return limits.create(handler, loop, kwargs)

    return factory
