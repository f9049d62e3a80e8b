"""The SMTP front end: accept, classify, spool, then answer 250.

`RoutingHandler` is an aiosmtpd handler (``handle_RCPT`` / ``handle_DATA`` hooks) that a user
can mount in their own aiosmtpd server; `Relay` ties it to a spool, the delivery engine and the
router, and `run_relay` runs all of it from a `RelayConfig`.

What the handler enforces:

* never an open relay: RCPT is refused (554 5.7.1) unless the client's address is in
  ``listener.allowed_networks`` or the client authenticated;
* the size limit (aiosmtpd's SIZE extension, 552), the line length limit (500) and the command
  length limit, and a recipient count limit (452);
* SMTP smuggling: a message with a bare LF or bare CR anywhere (in particular before the final
  dot, the "<LF>.<CR><LF>" trick) is refused with 554 5.6.0. aiosmtpd 1.4.5 and later only end
  DATA on <CR><LF>.<CR><LF>, so the smuggled commands would otherwise end up *inside* the
  message and reach the next hop, which may read them differently;
* the trusted spam-score header: a client outside ``listener.trusted_score_networks`` cannot
  set it. Its copies are removed before scoring and it is classified as untrusted.

Only after the message is committed to the spool does DATA answer 250.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import functools
import hmac
import ipaddress
import logging
import re
import signal
import ssl
import sys
import types
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from deliverypool import dnsmx
from deliverypool._core import Policy, scan
from deliverypool.config import RelayConfig
from deliverypool.delivery import DeliveryEngine, MxLookup
from deliverypool.eventloop import run
from deliverypool.router import Router
from deliverypool.spool import NewMessage, Spool, listing, read_counters

log = logging.getLogger("deliverypool.relay")

# Bodies up to this size are handed to delivery from memory.
KEEP_IN_MEMORY = 256 * 1024

_ADDRESS = re.compile(r"^[^\s@<>]+@[^\s@<>]+$")


# --- message helpers ---------------------------------------------------------------------


def has_bare_line_ending(data: bytes) -> bool:
    """True when `data` holds an LF not preceded by CR or a CR not followed by LF."""
    crlf = data.count(b"\r\n")
    return data.count(b"\n") != crlf or data.count(b"\r") != crlf


def strip_header(message: bytes, name: str) -> tuple[bytes, int]:
    """Removes every field called `name` (case-insensitive, with its folded continuation
    lines) from the header section. Returns the message and how many fields were removed."""
    lowered = name.lower().encode("ascii")
    if message.startswith(b"\r\n"):  # no header fields at all
        return message, 0
    end = message.find(b"\r\n\r\n")
    header = message if end < 0 else message[: end + 2]
    if lowered not in header.lower():
        return message, 0
    kept: list[bytes] = []
    removed = 0
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        field_name = line.split(b":", 1)[0].strip().lower()
        dropping = b":" in line and field_name == lowered
        if dropping:
            removed += 1
        else:
            kept.append(line)
    rest = b"" if end < 0 else message[end + 2 :]
    return b"".join(kept) + rest, removed


def _in(address: str | None, networks: Sequence[Any]) -> bool:
    if not address:
        return False
    ip = _peer_ip(address)
    return ip is not None and any(ip in network for network in networks)


@functools.lru_cache(maxsize=4096)
def _peer_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client address as an `ipaddress` object (IPv4-mapped IPv6 as IPv4), or None. Cached:
    it is asked two or three times per message, and clients come back."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# --- routing -----------------------------------------------------------------------------


def policy_from_config(config: RelayConfig) -> Policy:
    p = config.policy
    return Policy(
        normal_pool=p.normal_pool,
        high_risk_pool=p.high_risk_pool,
        threshold=p.threshold,
        tenant_thresholds=dict(p.tenants) or None,
        score_header=p.score_header,
        unknown_domain_pool=p.unknown_domain_pool,
    )


# --- the SMTP protocol ---------------------------------------------------------------------

# A reverse-path or forward-path that is a plain dot-atom address in angle brackets, followed
# by nothing or by whitespace and parameters (not a comment). For these, aiosmtpd's parse with
# the email package's RFC 5322 grammar gives the same (address, rest); tests/test_relay.py
# checks that on fuzzed input. Anything else takes aiosmtpd's own path.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?:[ \t]+([^\s(][^\r\n]*))?[ \t]*\Z")

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.command_size_limits = self._fresh_limits()

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

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _PLAIN_PATH.match(arg)
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match.group(2) or ""


# --- the handler -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    queue_id: str
    pool: str
    reasons: tuple[str, ...]


class RoutingHandler:
    """aiosmtpd handler: relay control, smuggling and score-header defences, classification,
    and spooling before the 250. Mount it in any aiosmtpd server::

        relay = Relay(config)
        await relay.start()
        controller = Controller(relay.handler, hostname="127.0.0.1", port=2525,
                                authenticator=relay.handler.authenticate)

    The handler may run on another event loop (aiosmtpd's Controller runs its own in a thread):
    it then hands each message to the relay's loop.
    """

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.config = relay.config.listener

    def relay_allowed(self, session: Session) -> bool:
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        return bool(session.authenticated) or _in(peer, self.config.allowed_networks)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        # aiosmtpd passes the null reverse-path as "<>" and needs a non-empty mail_from for RCPT
        # to be accepted, so it stays "<>" in the envelope; `handle_DATA` maps it to "".
        if address != "<>" and not _ADDRESS.match(address):
            return "553 5.1.7 Bad sender address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.relay_allowed(session):
            log.warning("refused relay peer=%s rcpt=%s", session.peer, address)
            return "554 5.7.1 Relay access denied"
        if not _ADDRESS.match(address):
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.config.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if not self.relay_allowed(session):  # RCPT already refused; belt and braces
            return "554 5.7.1 Relay access denied"
        content = envelope.original_content or b""
        if has_bare_line_ending(content):
            log.warning("refused bare LF/CR peer=%s from=%s", session.peer, envelope.mail_from)
            return "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)"
        peer = session.peer[0] if isinstance(session.peer, tuple) else None
        login = session.auth_data.login.decode("utf-8", "replace") if isinstance(session.auth_data, LoginPassword) else None
        work = self.relay.accept(
            mail_from="" if envelope.mail_from in (None, "<>") else envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            content=content,
            peer=peer,
            helo=session.host_name or "unknown",
            login=login,
        )
        try:
            if asyncio.get_running_loop() is self.relay.loop:
                accepted = await work
            else:
                assert self.relay.loop is not None
                accepted = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.relay.loop))
        except Exception:
            log.exception("could not spool a message from %s", session.peer)
            return "451 4.3.0 Temporary failure storing the message; try again later"
        return f"250 2.0.0 Ok: queued as {accepted.queue_id}"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        """aiosmtpd authenticator for PLAIN and LOGIN against ``listener.auth_users``."""
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user = auth_data.login.decode("utf-8", "replace")
        expected = self.config.auth_users.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode("utf-8"), auth_data.password)
        if not ok:
            log.warning("failed AUTH peer=%s user=%s", session.peer, user)
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


# --- the relay ---------------------------------------------------------------------------


class Relay:
    """Spool, delivery engine, router and SMTP listener for one configuration."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        mx: MxLookup | None = None,
        router: Router | None = None,
    ) -> None:
        self.config = config
        self.spool = Spool(config.spool.directory)
        self.mx = mx
        self.router = router
        self.engine: DeliveryEngine | None = None
        self.handler = RoutingHandler(self)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.AbstractServer | None = None
        self.recovered = 0
        self.possible_duplicates = 0
        # Called after each message is spooled, with the result and the stored message.
        self.on_accept: Callable[[Accepted, bytes], None] | None = None

    async def start(self) -> None:
        """Opens the spool and starts delivering what it holds."""
        self.loop = asyncio.get_running_loop()
        self._connect_dns()
        recovery = await self.spool.open()
        self.engine = DeliveryEngine(self.config, self.spool, mx=self.mx, route_dsn=self._route_dsn)
        self.recovered = sum(len(job.recipients) for job in recovery.pending)
        self.possible_duplicates = recovery.requeued_in_flight
        if recovery.pending:
            log.info(
                "recovered %d unfinished recipients (%d were in flight: possible duplicates)",
                self.recovered,
                recovery.requeued_in_flight,
            )
        self.engine.resume(recovery.pending)

    def _connect_dns(self) -> None:
        """Points MX lookups and the router's sender-domain check, unless given, at one
        shared `deliverypool.dns.Resolver` (and its Rust cache) on the configured nameservers."""
        needs_mx = self.mx is None and any(pool.delivery == "mx" for pool in self.config.pools.values())
        needs_sender = self.router is None and self.config.dns.check_sender_domain
        resolver = dnsmx.make_resolver(self.config.dns) if needs_mx or needs_sender else None
        if needs_mx:
            assert resolver is not None
            self.mx = dnsmx.ResolverMx(resolver)
        if self.router is None:
            self.router = Router(resolver if needs_sender else None, policy=policy_from_config(self.config))

    async def listen(self) -> asyncio.AbstractServer:
        """Starts the SMTP listener on the configured address."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.smtp_factory(), self.config.listener.host, self.config.listener.port)
        return self.server

    def smtp_factory(self) -> Callable[[], SMTP]:
        """A protocol factory for `loop.create_server`, configured from the listener section."""
        listener = self.config.listener
        limits: type[RelaySMTP] = type(
            "RelaySMTP", (RelaySMTP,), {"line_length_limit": listener.line_length_limit, "command_size_limit": listener.command_size_limit}
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
            authenticator=self.handler.authenticate if auth else None,
            auth_require_tls=not listener.allow_plaintext_auth,
            auth_exclude_mechanism=None if auth else ["LOGIN", "PLAIN"],
            command_call_limit=10_000,
            timeout=300,
        )

        def factory() -> SMTP:
            return limits.create(self.handler, loop, kwargs)

        return factory

    async def accept(
        self,
        *,
        mail_from: str,
        recipients: tuple[str, ...],
        content: bytes,
        peer: str | None,
        helo: str,
        login: str | None = None,
    ) -> Accepted:
        """Classifies and spools one message; returns once it is on disk."""
        assert self.engine is not None, "Relay.start() first"
        untrusted = not _in(peer, self.config.listener.trusted_score_networks)
        header = self.config.policy.score_header
        if header and untrusted:
            content, removed = strip_header(content, header)
            if removed:
                log.info("removed %d client-written %s field(s) peer=%s", removed, header, peer)
        content = self._received(helo, peer, login) + content
        assert self.router is not None
        decision = await self.router.route(content, mail_from=mail_from, tenant=login, untrusted_client=untrusted)
        facts = scan(content)
        job = await self.spool.accept(
            NewMessage(
                mail_from=mail_from,
                recipients=recipients,
                body=content,
                pool=decision.pool,
                reasons=tuple(decision.reasons),
                tenant=login,
                header_message_id=facts.message_id,
            )
        )
        log.info(
            "accepted queue_id=%s message_id=%s from=<%s> recipients=%d pool=%s reasons=%s",
            job.queue_id,
            facts.message_id or "-",
            mail_from,
            len(recipients),
            decision.pool,
            ",".join(decision.reasons) or "-",
        )
        # Small messages go to delivery from memory; large ones are read back from the spool
        # when their turn comes, so a backlog does not hold every body in memory.
        self.engine.submit(job, content if len(content) <= KEEP_IN_MEMORY else None)
        accepted = Accepted(job.queue_id, decision.pool, tuple(decision.reasons))
        if self.on_accept is not None:
            self.on_accept(accepted, content)
        return accepted

    def _received(self, helo: str, peer: str | None, login: str | None) -> bytes:
        auth = " with ESMTPA" if login else " with ESMTP"
        date = email.utils.formatdate(localtime=False)
        helo = "".join(c for c in helo if c.isprintable() and c not in "()\r\n")[:100]
        return f"Received: from {helo} ([{peer or 'unknown'}])\r\n\tby {self.config.listener.hostname} (deliverypool){auth}; {date}\r\n".encode(
            "ascii", "replace"
        )

    async def _route_dsn(self, dsn: bytes) -> tuple[str, tuple[str, ...]]:
        assert self.router is not None
        decision = await self.router.route(dsn, mail_from="")
        return decision.pool, tuple(decision.reasons)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None
        if self.engine is not None:
            await self.engine.stop()
        await self.spool.close()


async def run_relay(config: RelayConfig, *, ready: Callable[[Relay], None] | None = None) -> None:
    """Runs the relay until SIGINT or SIGTERM: recovers the spool, delivers, listens."""
    relay = Relay(config)
    await relay.start()
    await relay.listen()
    log.info("listening on %s:%d, spool %s", config.listener.host, config.listener.port, config.spool.directory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if ready is not None:
        ready(relay)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await relay.stop()


# --- the queue command -------------------------------------------------------------------


def show_queue(directory: str, out: TextIO = sys.stdout) -> int:
    """Prints what the spool at `directory` holds, one recipient a line, and the counters.
    Returns the number of unfinished recipients. Works while a relay runs."""
    import time

    rows = listing(directory)
    now = time.time()
    pending = 0
    if rows:
        out.write(f"{'QUEUE ID':<13} {'STATE':<10} {'POOL':<10} {'TRIES':>5} {'NEXT':>8}  {'FROM':<28} RECIPIENT / LAST REPLY\n")
    for row in rows:
        if row.state not in ("delivered", "failed"):
            pending += 1
        wait = "-" if row.state in ("delivered", "failed") else _ago(row.next_attempt - now)
        sender = f"<{row.mail_from}>"
        out.write(f"{row.queue_id:<13} {row.state:<10} {row.pool:<10} {row.attempts:>5} {wait:>8}  {sender:<28} {row.address}\n")
        if row.last_reply:
            out.write(f"{'':>13} {row.last_reply[:100]}\n")
    counters = read_counters(directory)
    out.write(
        f"{pending} recipient(s) pending in {len({r.queue_id for r in rows})} message(s); "
        + ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))
        + "\n"
    )
    return pending


def _ago(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"




# --- commands (wired into `deliverypool relay` and `deliverypool queue` by cli.py) -----------


def configure_logging(level: int = logging.INFO) -> None:
    """One line per event on stderr, unless the application configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter


def relay_command(config_path: str, *, loop: str | None = None) -> int:
    """`deliverypool relay --config PATH`: exit status 2 for a bad configuration."""
    from deliverypool.config import ConfigError, load
    from deliverypool.spool import SpoolError

    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"deliverypool relay: {config_path}: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        run(run_relay(config), loop)
    except SpoolError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is in use
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    return 0


def queue_command(config_path: str | None = None, *, spool_directory: str | None = None, out: TextIO = sys.stdout) -> int:
    """`deliverypool queue [--config PATH]`: the spool of the configured relay (or the
    directory given, or ./spool). Exit status 0, or 2 for a bad configuration."""
    from deliverypool.config import ConfigError, load

    directory = spool_directory
    if directory is None and config_path is not None:
        try:
            directory = str(load(config_path).spool.directory)
        except ConfigError as exc:
            print(f"deliverypool queue: {config_path}: {exc}", file=sys.stderr)
            return 2
    show_queue(directory or "spool", out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m deliverypool.relay --config PATH [--loop asyncio|uvloop]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deliverypool.relay")
    parser.add_argument("--config", required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"])
    args = parser.parse_args(argv)
    return relay_command(args.config, loop=args.loop)


if __name__ == "__main__":
    sys.exit(main())
