"""One connection and one mail transaction: which hosts to try for a destination, which of the
pool's source addresses to bind, and the SMTP dialogue that turns a message and its recipients
into one reply per recipient (the Rust client engine, rust/smtp/client.rs, driven by the
asyncio protocol in outbound/client.py).

Nothing here touches the spool: the scheduler decides what to send, the outcomes module what the
replies mean.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from deliverypool._core import SmtpClient, has_8bit
from deliverypool.config import PoolConfig, SourceAddress
from deliverypool.errors import DestinationError
from deliverypool.lookup.mx import MxLookup
from deliverypool.mail.address import AddressError, parse_mailbox
from deliverypool.outbound.client import DONE, READY, SEND_BODY, START_TLS, SessionRefused, SmtpConnection, start_tls
from deliverypool.outbound.outcomes import DeliveryStats
from deliverypool.outbound.sources import SourcePicker
from deliverypool.queue.spool import BodyFile, Spool

__all__ = ["Attempt", "Connector", "Session", "send"]

log = logging.getLogger("deliverypool.delivery")


# Replies keyed by recipient id: (reply text, the host that gave it or None for a local reply).
Replies = dict[int, tuple[str, "str | None"]]


@dataclass
class Session:
    """An open connection to one host, bound to one source address of one pool."""

    connection: SmtpConnection
    host: str  # "name[ip]:port"
    source: str
    # The pool's command_timeout: each reply's wait.
    timeout: float
    transactions: int = 0


@dataclass
class Attempt:
    """What one transaction gave: a reply per recipient (``replies``), the reply that ended it
    (``final``), whether the connection can carry another message (``alive``), and
    ``reconnect`` when the server had closed a reused connection before the transaction began
    (not an attempt at all: the work goes back to the front of the queue), and ``untried``
    recipients the server would not take in this transaction (452 4.5.3, "too many
    recipients"): not attempted, sent at once in the next transaction."""

    replies: Replies = field(default_factory=dict)
    final: str = ""
    alive: bool = True
    reconnect: bool = False
    untried: list[int] = field(default_factory=list)


class Connector:
    """Opens connections for a pool's lanes: the targets of a destination in order, a source
    address of the target's family (`sources`: weighted rotation, drained and warm-up
    addresses left out), STARTTLS as the pool says."""

    def __init__(self, mx: MxLookup | None, rng: random.Random, stats: DeliveryStats) -> None:
        self.mx = mx
        self.rng = rng
        self.stats = stats
        # (pool, address) -> True while the blocklist watch has the address drained from the
        # pool's rotation (watch/dnsbl.py; the relay sets it when [dnsbl] has zones).
        self.drained: Callable[[str, str], bool] | None = None
        # Which address a connection binds, and whether it may carry another message
        # (outbound/sources.py; the relay gives it the warm-up ledger).
        self.sources = SourcePicker()
        # Opportunistic TLS, as in Postfix's "may" level: encrypt when offered, do not verify
        # (so no trust store is loaded: that takes ~0.2 s).
        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE
        self._verify_tls: ssl.SSLContext | None = None

    @property
    def verify_tls(self) -> ssl.SSLContext:
        """The context of tls = "required": the system's trust store, the target's host name
        checked; made when first needed."""
        if self._verify_tls is None:
            self._verify_tls = ssl.create_default_context()
        return self._verify_tls

    @verify_tls.setter
    def verify_tls(self, context: ssl.SSLContext) -> None:
        self._verify_tls = context

    async def targets(self, pool: PoolConfig, destination: str) -> list[tuple[str, str, int]]:
        """(host name, address, port) to try in order for a lane's destination: the smarthost's
        addresses, or the MX hosts' of the recipient domain."""
        if pool.delivery == "smarthost":
            assert pool.smarthost is not None
            host, port = pool.smarthost
            try:
                ipaddress.ip_address(host)
                return [(host, host, port)]
            except ValueError:
                pass
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=1)
            except (OSError, UnicodeError) as exc:
                raise DestinationError(f"451 4.4.3 Cannot resolve smarthost {host}: {exc}", permanent=False) from None
            return [(host, str(info[4][0]), port) for info in infos]
        if self.mx is None:
            raise DestinationError("451 4.3.5 No resolver configured for MX delivery", permanent=False)
        exchangers = await self.mx.mail_exchangers(destination)
        targets = [(mx.host, address, pool.mx_port) for mx in exchangers for address in mx.addresses]
        if not targets:
            raise DestinationError(f"451 4.4.4 No address for any mail exchanger of {destination}", permanent=False)
        return targets

    def source_for(self, pool: PoolConfig, address: str) -> SourceAddress | None:
        """The pool's next source address of `address`'s family that is usable (not drained,
        within its warm-up), by weight; None when there is none (never another pool's: the
        mail waits)."""
        return self.sources.pick(pool, ipaddress.ip_address(address).version, self.is_drained)

    def is_drained(self, pool: str, source: str) -> bool:
        return self.drained is not None and self.drained(pool, source)

    def may_send(self, pool: str, source: str) -> bool:
        """Whether `source` may carry one more message of `pool` now (counting it): not
        drained, and within its warm-up allowance."""
        return not self.is_drained(pool, source) and self.sources.take(source)

    async def open(self, pool: PoolConfig, destination: str) -> Session:
        """A connection to the first target that greets with 220 and takes EHLO (and STARTTLS
        where the pool's policy wants it). Raises DestinationError when none does (temporary:
        the lane's work is deferred)."""
        targets = await self.targets(pool, destination)
        last = "no usable host"
        for host, address, port in targets:
            source = self.source_for(pool, address)
            label = f"{host}[{address}]:{port}"
            if source is None:
                version = ipaddress.ip_address(address).version
                if any(s.address.version == version for s in pool.source_addresses):
                    last = f"{label}: every IPv{version} source address of pool {pool.name} is drained (listed on a blocklist) or at its warm-up limit"
                else:
                    last = f"{label}: pool {pool.name} has no IPv{version} source address"
                continue
            try:
                connection = await self._connect(pool, host, address, port, str(source.address), label)
            except SessionRefused as exc:
                # A 4xx or 5xx greeting (or EHLO, or a required STARTTLS): the next host (RFC 5321 §5.1).
                if exc.code is not None:
                    last = exc.text
                    log.info("connect pool=%s source=%s host=%s reply=%s", pool.name, source.address, label, exc.code)
                else:
                    last = f"{label}: {exc.text}"
                    log.info("connect pool=%s source=%s host=%s reply=connect-failed (%s)", pool.name, source.address, label, exc.text)
                continue
            except (OSError, asyncio.TimeoutError) as exc:
                last = f"{label}: {exc or type(exc).__name__}"
                log.info("connect pool=%s source=%s host=%s reply=connect-failed (%s)", pool.name, source.address, label, exc or type(exc).__name__)
                continue
            self.stats.connections += 1
            return Session(connection, label, str(source.address), pool.command_timeout)
        raise DestinationError(f"451 4.4.1 Could not deliver to {destination}: {last}", permanent=False)

    async def _connect(self, pool: PoolConfig, host: str, address: str, port: int, source: str, label: str) -> SmtpConnection:
        """Connects from `source`, reads the greeting (connect_timeout), says EHLO and starts
        TLS as the engine says (command_timeout each)."""
        loop = asyncio.get_running_loop()
        engine = SmtpClient(ehlo_name=pool.ehlo_name, tls=pool.tls, peer=label)
        _, connection = await asyncio.wait_for(
            loop.create_connection(lambda: SmtpConnection(engine, loop), address, port, local_addr=(source, 0)), pool.connect_timeout
        )
        try:
            event = await connection.wait(pool.connect_timeout, then=pool.command_timeout)
            if event == START_TLS:
                context = self._tls if pool.tls == "opportunistic" else self.verify_tls
                # The name the certificate is checked against (required) and sent as SNI: the
                # MX host's name, or the smarthost as configured.
                await start_tls(connection, context, host, pool.command_timeout)
                event = await connection.wait(pool.command_timeout)
            if event != READY:
                raise SessionRefused(engine.refusal or engine.broken or "the session could not be set up", engine.refusal_code)
        except BaseException:
            connection.abort()
            raise
        return connection

    @staticmethod
    async def close(session: Session) -> None:
        """QUIT (its reply waited for 5 s at most), then close."""
        connection = session.connection
        try:
            if connection.engine.ready and not connection.closed:
                connection.write(connection.engine.quit())
                await connection.wait(5)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            connection.close()


# (An address that needs SMTPUTF8 the next hop lacks gets 553 5.6.7 from the engine, RFC 6531 §3.2.)
BAD_ADDRESS = "553 5.1.3 The address cannot be sent: {reason}"
# A body up to this size goes in the same write as the commands (with PIPELINING and CHUNKING);
# a larger one, in memory or in a body file, only after the RCPT replies: a large body is not
# sent to a server that takes no recipient.
WITH_COMMANDS: Final = 256 * 1024


@functools.lru_cache(maxsize=8192)
def wire_address(address: str) -> tuple[str | None, str]:
    """An address as it goes on the wire (its domain in ASCII, IDNA 2008; a local part that is
    not ASCII needs SMTPUTF8, which the engine sees), and, when it cannot be sent at all, the
    reply to record (else ""). Cached: senders and recipients repeat, and the check is pure."""
    if not address:
        return "", ""  # the null reverse-path
    try:
        mailbox = parse_mailbox(address, smtputf8=True)
    except AddressError as error:
        return None, BAD_ADDRESS.format(reason=error.reason)
    return str(mailbox), ""


async def send(
    session: Session, mail_from: str, recipients: Sequence[tuple[int, str]], body: bytes | BodyFile, spool: Spool
) -> Attempt:
    """One mail transaction: MAIL, RCPT for each recipient, then the body (DATA, or BDAT where
    the server offers CHUNKING) when any was accepted; pipelined where the server offers it.

    Every recipient ends with a reply (remote, or local: a 4.4.2 when the connection was lost,
    a 5.6.7 for an address that needs SMTPUTF8 the next hop lacks, a 5.1.3 for one that cannot
    be sent at all, a 5.3.4 for a message over the next hop's SIZE) -- or in ``attempt.untried``
    when the server said it takes no more recipients in this transaction (452 4.5.3), to be sent
    at once in the next."""
    connection = session.connection
    engine = connection.engine
    attempt = Attempt()
    replies = attempt.replies
    sender, sender_problem = wire_address(mail_from)
    if sender is None:
        attempt.final = sender_problem
        replies.update({rid: (sender_problem, None) for rid, _ in recipients})
        return attempt
    ids: list[int] = []
    wire: list[str] = []
    for rid, address in recipients:
        text, problem = wire_address(address)
        if text is None:
            replies[rid] = (problem, None)
        else:
            ids.append(rid)
            wire.append(text)
    if not wire:
        attempt.final = next(iter(replies.values()))[0]
        return attempt
    if isinstance(body, bytes):
        # 8BITMIME is declared for 8-bit text only; a body file is not read for it (declaring
        # it for 7-bit text is harmless).
        event, output = engine.begin(
            sender, wire, size=len(body), eight_bit=has_8bit(body), in_memory=len(body) <= WITH_COMMANDS, ends_with_crlf=body.endswith(b"\r\n")
        )
    else:
        # The spool holds CRLF text that ends with CRLF (the DATA reader, the relay's DSNs).
        event, output = engine.begin(sender, wire, size=body.size, eight_bit=True, in_memory=False, ends_with_crlf=True)
    connection.forget_event()
    try:
        if event == SEND_BODY:
            # BDAT right behind the commands: written with the body.
            await connection.write_body(body, spool, session.timeout, output)
        else:
            connection.write(output)
        connection.catch_up()
        while event != DONE:
            event = await connection.wait(session.timeout)
            if event == SEND_BODY:
                await connection.write_body(body, spool, session.timeout)
                connection.catch_up()
    except (OSError, asyncio.TimeoutError) as exc:
        # Writing the body failed (a stalled server, a body file that cannot be read): the
        # connection is given up; its recipients are lost (deferred), not the relay's fault.
        connection.abort()
        engine.connection_lost(f"{exc or type(exc).__name__}")
    outcome = engine.outcome()
    if outcome is None:
        raise RuntimeError(f"the SMTP client engine ended a transaction with {session.host} without an outcome")
    if outcome.reconnect:
        # The server closed a reused connection while it was idle: not a failed attempt.
        log.info("%s closed the reused connection (%s); reconnecting", session.host, outcome.lost)
        attempt.reconnect = True
        attempt.alive = False
        return attempt
    session.transactions += 1
    for rid, entry in zip(ids, outcome.replies):
        if entry is None:
            attempt.untried.append(rid)
        else:
            text, remote = entry
            replies[rid] = (text, session.host if remote else None)
    attempt.final = outcome.lost or outcome.last or next(iter(replies.values()))[0]
    attempt.alive = engine.ready and not connection.closed
    return attempt
