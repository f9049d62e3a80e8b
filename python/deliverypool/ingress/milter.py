"""`deliverypool milter`: a Postfix milter that routes each message to a pool's transport.

Postfix calls it for every message (``smtpd_milters``, ``non_smtpd_milters``). At the end of
the message it classifies with the relay's own engine (:class:`~deliverypool.routing.scores.
ScoredRouter`: DSN detection, the spam score from a trusted header or rspamd, the sender-domain
check through the resolver and its cache) and adds one header, ``X-Deliverypool-Transport:
<transport>``, naming the ``master.cf`` transport of the message's pool (``milter.transports``,
else ``dp-<pool>``). Postfix's ``milter_header_checks`` turn that header into ``FILTER
<transport>:``, and the transport's ``smtp_bind_address`` is the pool's address. A message has
one pool for all its recipients: a milter sees the message once, not once per recipient.

The milter library is pymilter, on Sendmail's libmilter (Debian's ``libmilter1.0.1``): the
reference implementation of the protocol, which Postfix's milter client is written against,
packaged by Debian (``python3-milter``) and the base of the Debian-packaged Python milters
(spf-engine, dkimpy-milter). libmilter runs each SMTP connection's callbacks in a thread of
its own; they are synchronous, so the classification runs on one asyncio event loop in a
thread of its own (the resolver, its cache and the rspamd client live there), and a callback
waits for its message's result, at most ``milter.timeout``.

With sender limits configured (``[limits]``, ``[tenants.NAME.limits]``;
docs/operations/sender-limits.md), each recipient is checked at RCPT as the relay checks it, against the same state
(``SPOOL/state.sqlite3`` of ``spool.directory``, or ``[state] redis``, so a milter and relays
naming one Redis count together): Postfix answers the refused recipient ``550 5.1.8 Access
denied, bad outbound sender`` (or ``451 4.3.0`` while Redis is away with ``fail = "closed"``).
The sender is the SASL login Postfix passes (``{auth_authen}``), else the envelope sender.
Restrictions and limit alerts are reported as a relay worker reports them (logged, stored,
POSTed to ``alerts.webhook``): the service runs an `Observer` without monitor or admin listener.

With DKIM keys (``[dkim]``, docs/guide/dkim.md), the milter signs each message at the end of it,
after classifying, with the keys of its header From's domain (as the relay does), and adds the
DKIM-Signature fields at the top of the header (``insheader``: the ADDHDRS action): a Postfix
user needs no OpenDKIM. What it signs is the header and body libmilter handed it (rebuilt with
``Name: value``: relaxed header canonicalization, the default, reads it as the receiver will).
The signatures the message came with are checked, and the result logged. A message that
cannot be signed goes on unsigned, with its reason in the log line; signing never tempfails.

Whatever goes wrong while classifying (an exception, the timeout) tempfails the message (451):
the client keeps it and tries again, nothing is lost, and no unclassified message reaches the
normal pool. Postfix's ``milter_default_action = tempfail`` does the same when the milter is
down or does not answer in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import socket
import threading
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import Milter

from deliverypool.app import dkim_summary, policy_from_config, resolver_from_config
from deliverypool.auth.dkim import DkimCheck, DkimOutcome, DkimSigner, DkimVerifier, field_values, has_signature
from deliverypool.config import RelayConfig
from deliverypool.routing.router import Router
from deliverypool.routing.scores import Routed, ScoredRouter, Submission, scored_router
from deliverypool.routing.tenants import Tenants
from deliverypool.observe.service import Observer
from deliverypool.state.limits import UNAVAILABLE, Limiter, limiter_for
from deliverypool.state.limits import enabled as limits_enabled

__all__ = ["MilterService", "PoolMilter", "PoolMilterWithoutLimits", "milter_class", "milter_socket", "run_milter"]

log = logging.getLogger("deliverypool.milter")

_T = TypeVar("_T")


def milter_socket(host: str, port: int) -> str:
    """libmilter's name of a TCP listening socket: ``inet:PORT@HOST``, ``inet6:PORT@HOST``."""
    return f"inet6:{port}@{host}" if ":" in host else f"inet:{port}@{host}"


class MilterService:
    """The asyncio side of the milter: one event loop in a thread, the scored router on it."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.loop = _new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="deliverypool-milter-loop", daemon=True)
        self._thread.start()
        self.tenants = Tenants(config.tenants)
        self.observer: Observer | None = None
        self.dkim_signer = DkimSigner(config)
        self.dkim_verifier: DkimVerifier | None = None
        self.scores: ScoredRouter = self.call(self._scores(), None)
        self.limits: Limiter | None = self.call(self._limits(), None)

    async def _scores(self) -> ScoredRouter:
        # Built on the loop that will use it (the resolver's and httpx's state is per loop).
        dns = self.config.dns
        resolver = resolver_from_config(dns) if dns.check_sender_domain else None
        if self.config.dkim.verify:
            source = resolver if resolver is not None else lambda: resolver_from_config(dns)
            self.dkim_verifier = DkimVerifier(source, max_signatures=self.config.dkim.max_signatures)
        return scored_router(self.config, Router(resolver, policy=policy_from_config(self.config)))

    async def _limits(self) -> Limiter | None:
        """The sender limits, and with them the sender events and alerts (logged, stored in the
        state database, POSTed to ``alerts.webhook``) as a relay worker raises them: the
        milter's observer runs no surge monitor and no admin listener."""
        if not limits_enabled(self.config):
            return None
        root = self.config.spool.directory
        self.observer = Observer(self.config, spool_root=root, worker="milter", leader=False)
        await self.observer.start()
        limits = limiter_for(self.config, self.tenants, spool_root=root, leader=True, listener=self.observer.senders)
        assert limits is not None
        self.observer.limits = limits
        await limits.start()
        return limits

    def call(self, work: Coroutine[Any, Any, _T], timeout: float | None) -> _T:
        """Runs `work` on the loop and waits for it; cancels it after `timeout` seconds
        (raising TimeoutError)."""
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout} s") from None

    def route(self, message: bytes, submission: Submission) -> Routed:
        """The pool of one message (blocking: called from libmilter's threads)."""
        return self.route_and_check(message, submission)[0]

    def route_and_check(self, message: bytes, submission: Submission) -> tuple[Routed, tuple[DkimCheck, ...]]:
        """The pool of one message and the checks of the DKIM signatures it came with, at the
        same time (blocking: called from libmilter's threads)."""
        untrusted = not self.config.milter.trust_score_header
        tenant = self.tenants.resolve(submission.login, submission.client_address)
        route = self.scores.route(message, submission, tenant=tenant, untrusted_client=untrusted)
        verifier = self.dkim_verifier

        async def both() -> tuple[Routed, tuple[DkimCheck, ...]]:
            if verifier is None or not has_signature(message):
                return await route, ()
            return await asyncio.gather(route, verifier.verify(message))

        return self.call(both(), self.config.milter.timeout)

    def sign(self, message: bytes, routed: Routed, submission: Submission) -> tuple[list[str], DkimOutcome | None]:
        """The DKIM-Signature values to add (LF-folded) and what DKIM did; on the calling thread
        (the Rust signer releases the GIL). Never raises: a failure leaves the message unsigned."""
        signer = self.dkim_signer
        if not signer.keys:
            return [], None
        tenant = self.tenants.resolve(submission.login, submission.client_address)
        keys, why = signer.choose(routed.decision.from_domain, tenant)
        if not keys:
            return [], DkimOutcome(unsigned=why)
        try:
            header, outcome = signer.signatures(message, keys)
        except Exception:
            log.exception("DKIM signing failed queue_id=%s (sent unsigned)", submission.queue_id or "-")
            return [], DkimOutcome(unsigned="error")
        return field_values(header), outcome

    def check_recipient(self, *, login: str | None, mail_from: str, recipient: str, client_address: str | None) -> str | None:
        """The sender limits' reply refusing `recipient` (``550 5.1.8``, ``451 4.3.0``), or None
        (blocking: called from libmilter's threads). A check that cannot be made in
        ``milter.timeout`` is treated as ``[state] fail`` says."""
        if self.limits is None:
            return None
        work = self.limits.check(login=login, mail_from=mail_from, recipient=recipient, peer=client_address)
        try:
            return self.call(work, self.config.milter.timeout)
        except Exception as error:
            log.warning("sender limits: no answer for rcpt=%s from=<%s>: %s; fail %s", recipient, mail_from, error, self.config.state.fail)
            return UNAVAILABLE if self.config.state.fail == "closed" else None

    def close(self) -> None:
        try:
            if self.limits is not None:
                self.call(self.limits.stop(), 5.0)
            if self.observer is not None:
                self.call(self.observer.stop(), 10.0)  # the last alerts posted, the events written
            self.call(self.scores.close(), 5.0)
        finally:
            self.dkim_signer.close()
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5.0)
            if not self._thread.is_alive():
                self.loop.close()


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def _address(value: str) -> str:
    """An envelope address as libmilter passes it (``<a@b>``, ``<>``) without its brackets."""
    value = value.strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


class PoolMilter(Milter.Base):  # type: ignore[misc]  # pymilter has no type information
    """One SMTP connection as libmilter reports it (pymilter makes one instance per
    connection and calls it from that connection's thread)."""

    service: ClassVar[MilterService]

    def __init__(self) -> None:
        self.client_address: str | None = None
        self.client_name: str | None = None
        self.helo: str | None = None
        self._new_message("")

    def _new_message(self, mail_from: str) -> None:
        self.mail_from = mail_from
        self.recipients: list[str] = []
        self.login: str | None = None
        self.parts: list[bytes] = []
        # How many copies of the milter's own header the message came with (removed at eom).
        self.own_header_copies = 0

    @Milter.noreply  # type: ignore[untyped-decorator]
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        if family in (socket.AF_INET, socket.AF_INET6) and isinstance(hostaddr, tuple):
            self.client_address = str(hostaddr[0])
        self.client_name = hostname
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def hello(self, hostname: str) -> int:
        self.helo = hostname
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._new_message(_address(mail_from))
        self.login = self.getsymval("{auth_authen}") or None
        return int(Milter.CONTINUE)

    def envrcpt(self, recipient: str, *params: str) -> int:
        address = _address(recipient)
        refused = self.service.check_recipient(login=self.login, mail_from=self.mail_from, recipient=address, client_address=self.client_address)
        if refused is not None:
            code, status, text = refused.split(" ", 2)
            self.setreply(code, status, text)
            return int(Milter.REJECT if code.startswith("5") else Milter.TEMPFAIL)
        self.recipients.append(address)
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    @Milter.decode("bytes")  # type: ignore[untyped-decorator]
    def header(self, name: str, value: bytes) -> int:
        if name.lower() == self.service.config.milter.header.lower():
            self.own_header_copies += 1
        # Folded fields come with bare LF between their lines; the message is rebuilt in CRLF.
        value = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        self.parts.append(name.encode("utf-8", "surrogateescape") + b": " + value + b"\r\n")
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def eoh(self) -> int:
        self.parts.append(b"\r\n")
        return int(Milter.CONTINUE)

    @Milter.noreply  # type: ignore[untyped-decorator]
    def body(self, chunk: bytes) -> int:
        self.parts.append(chunk)
        return int(Milter.CONTINUE)

    def eom(self) -> int:
        service = self.service
        queue_id = self.getsymval("i") or None
        message = b"".join(self.parts)
        self.parts = []
        submission = Submission(
            self.mail_from,
            tuple(self.recipients),
            client_address=self.client_address,
            client_name=self.client_name,
            helo=self.helo,
            login=self.login,
            queue_id=queue_id,
        )
        try:
            routed, checks = service.route_and_check(message, submission)
        except Exception as error:
            log.exception("tempfailed queue_id=%s from=<%s>: %s", queue_id or "-", self.mail_from, error)
            self.setreply("451", "4.3.0", "Temporary failure classifying the message; try again later")
            return int(Milter.TEMPFAIL)
        header = service.config.milter.header
        # A copy of the header that did not come from this milter is not the routing: removed
        # (from the last to the first, so that the indexes stay right).
        for index in range(self.own_header_copies, 0, -1):
            self.chgheader(header, index, "")
        transport = service.config.transport_for(routed.pool)
        self.addheader(header, transport)
        signatures, dkim = service.sign(message, routed, submission)
        # At the top of the header, the first signature first.
        for value in reversed(signatures):
            self.addheader("DKIM-Signature", value, 0)
        if checks:
            dkim = dataclasses.replace(dkim or DkimOutcome(), checks=checks)
        log.info(
            "routed queue_id=%s from=<%s> recipients=%d pool=%s transport=%s reasons=%s spam=%s%s",
            queue_id or "-",
            self.mail_from,
            len(self.recipients),
            routed.pool,
            transport,
            ",".join(routed.reasons) or "-",
            routed.spam.summary() if routed.spam is not None else "-",
            dkim_summary(dkim),
        )
        return int(Milter.CONTINUE)

    def abort(self) -> int:
        self._new_message("")
        return int(Milter.CONTINUE)

    def close(self) -> int:
        return int(Milter.CONTINUE)


class PoolMilterWithoutLimits(PoolMilter):
    """`PoolMilter` when no sender limit is configured: nothing is refused at RCPT, so the MTA
    is told not to wait for a reply to each recipient (one loopback round trip fewer each)."""

    envrcpt = Milter.noreply(PoolMilter.envrcpt)


# pymilter caches a class's protocol mask in a class attribute, which a subclass would inherit
# if the base computed its own first: each class computes its own here, the subclass first.
PoolMilterWithoutLimits.protocol_mask()
PoolMilter.protocol_mask()


def milter_class(service: MilterService) -> type[PoolMilter]:
    """The class libmilter instantiates per connection for `service`."""
    return PoolMilter if service.limits is not None else PoolMilterWithoutLimits


def run_milter(config: RelayConfig) -> None:
    """Serves Postfix on ``milter.address`` until SIGTERM, SIGINT or SIGHUP (libmilter's
    signal thread ends its main loop)."""
    service = MilterService(config)
    PoolMilter.service = service
    Milter.factory = milter_class(service)
    # The actions the milter negotiates: add its header and the DKIM signatures (insheader is
    # ADDHDRS too), delete copies of its header it did not write.
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    host, port = config.milter.address
    log.info("milter listening on %s:%d", host, port)
    try:
        Milter.runmilter("deliverypool", milter_socket(host, port), timeout=600)
    finally:
        log.info("milter stopping")
        service.close()
