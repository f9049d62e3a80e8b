"""Delivery: sends spooled mail from each pool's own source addresses.

Work is grouped in *lanes*, one per (pool, destination): the recipient domain in MX mode, the
smarthost otherwise. A lane runs up to ``max_connections_per_destination`` connections; each
connection is bound to one of the pool's source addresses (picked by weight among those of the
destination's address family), speaks ESMTP with opportunistic STARTTLS, and carries several
messages before it closes. A lane only ever sees its own pool's addresses, so mail routed to
the high-risk pool never leaves from a normal-pool address, not even when every high-risk
address is failing: it is deferred instead.

Replies: 2xx delivered; 4xx and connection errors deferred with exponential backoff and jitter
until the pool's ``max_age`` (a last attempt is made at that age), then failed; 5xx failed.
Failed recipients of a message with a non-null sender produce one RFC 3464 DSN, stored in the
same spool transaction as the failure and routed like any other message (so it goes through
the high-risk pool, the way the policy sends every DSN). A message with a null sender never
gets a DSN.

Each delivery attempt logs one line on the ``deliverypool.delivery`` logger::

    attempt queue_id=65A1B2C3D4E5 message_id=<x@y> pool=normal source=127.0.0.2
        host=mx1.example.net[127.0.0.10]:25 reply=250 recipients=1
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import logging
import random
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import aiosmtplib

from deliverypool.config import PoolConfig, RelayConfig, SourceAddress
from deliverypool.spool import Job, NewMessage, Outcome, Spool, State

log = logging.getLogger("deliverypool.delivery")

_ENHANCED_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
_8BIT = re.compile(rb"[\x80-\xff]")


# --- destinations ------------------------------------------------------------------------


@dataclass(frozen=True)
class MailExchanger:
    """One host that accepts mail for a domain, with its addresses (A and AAAA)."""

    preference: int
    host: str
    addresses: tuple[str, ...]


class DestinationError(Exception):
    """Mail cannot be handed to any host of a destination. `reply` is written as an SMTP
    reply ("556 5.1.10 ...") so that logs and DSNs treat it like a remote answer."""

    def __init__(self, reply: str, *, permanent: bool) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


class MxLookup(Protocol):
    """Where mail for a domain goes, per RFC 5321 §5.1: the MX hosts in preference order
    (equal preferences in random order) with their addresses, or the domain itself as an
    implicit MX when it has address records but no MX. Raises `DestinationError`: permanent
    for a null MX (RFC 7505) or a domain that does not exist, temporary for DNS failures
    (there is no fallback to the domain's address records on a DNS error)."""

    async def mail_exchangers(self, domain: str) -> Sequence[MailExchanger]: ...


class StaticMx:
    """An `MxLookup` from a fixed table, for tests and embedding without DNS. Values: a list
    of MailExchanger, "null" (a null MX), "nxdomain" or "servfail"."""

    def __init__(self, table: Mapping[str, Sequence[MailExchanger] | str]) -> None:
        self.table = {k.lower().rstrip("."): v for k, v in table.items()}

    async def mail_exchangers(self, domain: str) -> Sequence[MailExchanger]:
        entry = self.table.get(domain.lower().rstrip("."), "nxdomain")
        if entry == "null":
            raise DestinationError("556 5.1.10 Recipient domain has a null MX (RFC 7505)", permanent=True)
        if entry == "nxdomain":
            raise DestinationError(f"550 5.1.2 Domain {domain} does not exist", permanent=True)
        if entry == "servfail":
            raise DestinationError(f"451 4.4.3 DNS lookup for {domain} failed", permanent=False)
        assert not isinstance(entry, str)
        return order_exchangers(entry)


def order_exchangers(exchangers: Sequence[MailExchanger], rng: random.Random | None = None) -> list[MailExchanger]:
    """Sorts by preference, shuffling hosts of equal preference (RFC 5321 §5.1)."""
    rng = rng or random.Random()
    keyed = [(mx.preference, rng.random(), mx) for mx in exchangers]
    return [mx for _, _, mx in sorted(keyed, key=lambda k: (k[0], k[1]))]


# --- DSNs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    recipient: str
    reply: str
    remote_host: str | None = None


def status_of(reply: str, *, expired: bool = False) -> str:
    """The RFC 3463 status for a reply: its enhanced status code when it has one, else one
    derived from the reply code. An expired temporary failure keeps its 4.x.x status (the
    DSN's Action: failed says it is final); without one it is 4.4.7."""
    code, _, text = reply.partition(" ")
    match = _ENHANCED_STATUS.match(text)
    if match and match.group(1) == code[:1]:
        return match.group(0)
    if code.startswith("5"):
        return "5.0.0"
    return "4.4.7" if expired else "4.0.0"


def original_headers(body: bytes) -> bytes:
    """The header section of a message, up to (not including) the blank line."""
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = body.find(separator)
        if end >= 0:
            return body[: end + len(separator) // 2]
    return body if body.endswith(b"\n") else body + b"\r\n"


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    failures: Sequence[Failure],
    original: bytes,
    queue_id: str,
    arrival: float,
    expired: bool = False,
    now: float | None = None,
) -> bytes:
    """An RFC 3464 delivery status notification (multipart/report; report-type=delivery-status)
    for `failures`, addressed to `original_sender`, with the original message's headers."""
    now = time.time() if now is None else now
    boundary = f"{queue_id}.{int(now)}/{reporting_mta}"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{original_sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {email.utils.formatdate(now, localtime=False)}",
        f"Message-ID: {email.utils.make_msgid('dsn', domain=reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at {reporting_mta}.",
        "",
        "Your message could not be delivered to one or more recipients"
        + (" within the time allowed." if expired else ".")
        + " It is attached below.",
        "",
    ]
    for failure in failures:
        where = f" (host {failure.remote_host} said)" if failure.remote_host else ""
        lines.append(f"<{failure.recipient}>{where}: {_ascii(failure.reply)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Deliverypool-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival, localtime=False)}",
        "",
    ]
    for failure in failures:
        lines += [f"Final-Recipient: rfc822; {failure.recipient}", "Action: failed", f"Status: {status_of(failure.reply, expired=expired)}"]
        if failure.remote_host:
            lines.append(f"Remote-MTA: dns; {failure.remote_host}")
        lines += [f"Diagnostic-Code: smtp; {_ascii(failure.reply)}", ""]
    head = "\r\n".join(lines).encode("ascii")
    headers = original_headers(original).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    part = f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode("ascii")
    return head + b"\r\n" + part + headers + tail


def _ascii(text: str) -> str:
    return " ".join(text.encode("ascii", "replace").decode("ascii").split())


# --- the engine --------------------------------------------------------------------------


@dataclass
class _Work:
    """Recipients of one message for one destination."""

    job: Job
    body: bytes | None = None


@dataclass
class _Lane:
    pool: PoolConfig
    destination: str  # the recipient domain, or "[host]:port" for a smarthost
    queue: deque[_Work] = field(default_factory=deque)
    active: int = 0
    idle: int = 0
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Session:
    smtp: aiosmtplib.SMTP
    host: str  # "name[ip]:port"
    source: str
    transactions: int = 0


@dataclass
class DeliveryStats:
    attempts: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounces: int = 0
    connections: int = 0


# Routes a DSN the engine generated: returns the pool it goes to and the decision's reasons.
DsnRouter = Callable[[bytes], Awaitable[tuple[str, tuple[str, ...]]]]


class DeliveryEngine:
    """Delivers everything the spool holds and everything submitted while it runs."""

    def __init__(
        self,
        config: RelayConfig,
        spool: Spool,
        *,
        mx: MxLookup | None,
        route_dsn: DsnRouter,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.spool = spool
        self.mx = mx
        self.route_dsn = route_dsn
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = DeliveryStats()
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._tls = ssl.create_default_context()
        # Opportunistic TLS, as in Postfix's "may" level: encrypt when offered, do not verify.
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE

    # --- submitting work -----------------------------------------------------------------

    def submit(self, job: Job, body: bytes | None = None) -> None:
        """Schedules a spooled job: now if due, else at its next_attempt."""
        delay = job.next_attempt - self.clock()
        if delay > 0:
            self._later(delay, job, body)
        else:
            self._enqueue(job, body)

    def resume(self, jobs: Sequence[Job]) -> None:
        """Schedules the unfinished jobs a spool recovered at start."""
        for job in jobs:
            self.submit(job)

    def _later(self, delay: float, job: Job, body: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(job, body)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _enqueue(self, job: Job, body: bytes | None) -> None:
        if self._stopping:
            return
        pool = self.config.pools.get(job.pool)
        if pool is None:
            # The pool was removed from the configuration while mail waited for it: fall back
            # to the high-risk pool, never to the normal one.
            log.warning("queue_id=%s: pool %r is not configured, using %r", job.queue_id, job.pool, self.config.policy.high_risk_pool)
            pool = self.config.high_risk_pool
        if pool.delivery == "smarthost":
            assert pool.smarthost is not None
            host, port = pool.smarthost
            groups = {f"[{host}]:{port}": job.recipients}
        else:
            by_domain: dict[str, list[tuple[int, str]]] = {}
            for rid, address in job.recipients:
                by_domain.setdefault(_domain(address), []).append((rid, address))
            groups = {d: tuple(r) for d, r in by_domain.items()}
        for destination, recipients in groups.items():
            lane = self._lanes.get((pool.name, destination))
            if lane is None:
                lane = self._lanes[(pool.name, destination)] = _Lane(pool, destination)
            lane.queue.append(_Work(replace(job, recipients=tuple(recipients)), body))
            lane.wakeup.set()
            if lane.active < pool.max_connections_per_destination and len(lane.queue) > lane.idle:
                lane.active += 1
                self._idle.clear()
                self._spawn(self._worker(lane))

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task failed", exc_info=task.exception())
        if not self._tasks:
            self._idle.set()

    @property
    def busy(self) -> bool:
        """True while a connection is open or work waits for one (not counting deferrals)."""
        return bool(self._tasks)

    @property
    def scheduled(self) -> int:
        """Deferred jobs waiting for their next attempt."""
        return len(self._timers)

    async def wait_idle(self) -> None:
        """Returns when no work is being delivered (deferred work may still wait)."""
        while self._tasks:
            await self._idle.wait()
            await asyncio.sleep(0)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stops taking new work, lets current transactions finish for up to `timeout`
        seconds, then cancels the rest (recipients left in flight are retried at start)."""
        self._stopping = True
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for lane in self._lanes.values():
            lane.queue.clear()
            lane.wakeup.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)

    # --- connections ---------------------------------------------------------------------

    async def _worker(self, lane: _Lane) -> None:
        try:
            while lane.queue and not self._stopping:
                try:
                    session = await self._open(lane)
                except DestinationError as error:
                    # The destination is unreachable for everything waiting in this lane.
                    works = list(lane.queue)
                    lane.queue.clear()
                    for work in works:
                        self._log(work, lane, None, None, error.reply)
                        await self._settle(work, {rid: (error.reply, None) for rid, _ in work.job.recipients})
                    continue
                try:
                    await self._serve(lane, session)
                finally:
                    await self._close(session)
        finally:
            lane.active -= 1
            if lane.active == 0 and not lane.queue:
                self._lanes.pop((lane.pool.name, lane.destination), None)

    async def _targets(self, lane: _Lane) -> list[tuple[str, str, int]]:
        """(host name, address, port) to try in order."""
        pool = lane.pool
        loop = asyncio.get_running_loop()
        if pool.delivery == "smarthost":
            assert pool.smarthost is not None
            host, port = pool.smarthost
            try:
                ipaddress.ip_address(host)
                return [(host, host, port)]
            except ValueError:
                pass
            try:
                infos = await loop.getaddrinfo(host, port, type=1)
            except OSError as exc:
                raise DestinationError(f"451 4.4.3 Cannot resolve smarthost {host}: {exc}", permanent=False) from None
            return [(host, str(info[4][0]), port) for info in infos]
        if self.mx is None:
            raise DestinationError("451 4.3.5 No resolver configured for MX delivery", permanent=False)
        exchangers = await self.mx.mail_exchangers(lane.destination)
        targets = [(mx.host, address, pool.mx_port) for mx in exchangers for address in mx.addresses]
        if not targets:
            raise DestinationError(f"451 4.4.4 No address for any mail exchanger of {lane.destination}", permanent=False)
        return targets

    def _source_for(self, pool: PoolConfig, address: str) -> SourceAddress | None:
        version = ipaddress.ip_address(address).version
        candidates = [s for s in pool.source_addresses if s.address.version == version]
        if not candidates:
            return None
        return self.rng.choices(candidates, weights=[s.weight for s in candidates])[0]

    async def _open(self, lane: _Lane) -> _Session:
        pool = lane.pool
        targets = await self._targets(lane)
        last = "no usable host"
        for host, address, port in targets:
            source = self._source_for(pool, address)
            label = f"{host}[{address}]:{port}"
            if source is None:
                last = f"{label}: pool {pool.name} has no IPv{ipaddress.ip_address(address).version} source address"
                continue
            smtp = aiosmtplib.SMTP(
                hostname=address,
                port=port,
                source_address=(str(source.address), 0),
                local_hostname=pool.ehlo_name,
                timeout=pool.command_timeout,
                start_tls={"opportunistic": None, "required": True, "none": False}[pool.tls],
                tls_context=self._tls if pool.tls == "opportunistic" else None,
            )
            try:
                await smtp.connect(timeout=pool.connect_timeout)
            except aiosmtplib.SMTPResponseException as exc:
                # A 4xx or 5xx greeting: try the next host (RFC 5321 §5.1).
                last = f"{exc.code} {exc.message}"
                log.info("connect pool=%s source=%s host=%s reply=%s", pool.name, source.address, label, exc.code)
                smtp.close()
                continue
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                last = f"{label}: {exc}"
                log.info("connect pool=%s source=%s host=%s reply=connect-failed (%s)", pool.name, source.address, label, exc)
                smtp.close()
                continue
            self.stats.connections += 1
            return _Session(smtp, label, str(source.address))
        raise DestinationError(f"451 4.4.1 Could not deliver to {lane.destination}: {last}", permanent=False)

    async def _close(self, session: _Session) -> None:
        try:
            if session.smtp.is_connected:
                await session.smtp.quit(timeout=5)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass
        finally:
            session.smtp.close()

    async def _serve(self, lane: _Lane, session: _Session) -> None:
        sent = 0
        while sent < lane.pool.max_messages_per_connection and not self._stopping:
            if not lane.queue:
                lane.idle += 1
                try:
                    lane.wakeup.clear()
                    await asyncio.wait_for(lane.wakeup.wait(), lane.pool.idle_timeout)
                except asyncio.TimeoutError:
                    return
                finally:
                    lane.idle -= 1
                continue
            work = lane.queue.popleft()
            try:
                alive = await self._transaction(lane, session, work)
            except Exception:
                # A local failure (the spool, a bug): the work stays in the spool; try it again
                # later on a fresh connection rather than leave it until the next restart.
                log.exception("queue_id=%s: delivery attempt failed locally", work.job.queue_id)
                self._later(lane.pool.retry.initial, work.job, None)
                return
            sent += 1
            if not alive:
                return

    async def _transaction(self, lane: _Lane, session: _Session, work: _Work) -> bool:
        """One mail transaction for `work`. Returns False when the connection is unusable."""
        job = work.job
        body = work.body if work.body is not None else await self.spool.body(job.message)
        await self.spool.mark_in_flight(rid for rid, _ in job.recipients)
        smtp = session.smtp
        replies: dict[int, tuple[str, str | None]] = {}
        accepted: list[int] = []
        alive = True
        final = ""
        try:
            options = []
            if smtp.supports_extension("size"):
                options.append(f"SIZE={len(body)}")
            if smtp.supports_extension("8bitmime") and _8BIT.search(body):
                options.append("BODY=8BITMIME")
            try:
                await smtp.mail(job.mail_from, options=options)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError, aiosmtplib.SMTPSenderRefused) as exc:
                closed = not isinstance(exc, aiosmtplib.SMTPSenderRefused) or exc.code == 421
                if session.transactions == 0 or not closed:
                    raise
                # The server closed a reused connection while it was idle: not a failed
                # attempt. Put the work back in front and open a new connection.
                log.info("queue_id=%s: %s closed the reused connection (%s); reconnecting", job.queue_id, session.host, exc)
                lane.queue.appendleft(work)
                return False
            session.transactions += 1
            for rid, address in job.recipients:
                try:
                    await smtp.rcpt(address)
                    accepted.append(rid)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    replies[rid] = (f"{exc.code} {exc.message}", session.host)
            if accepted:
                response = await smtp.data(body)
                final = f"{response.code} {response.message}"
                for rid in accepted:
                    replies[rid] = (final, session.host)
            else:
                final = next(iter(replies.values()))[0]
                await smtp.rset()
        except aiosmtplib.SMTPResponseException as exc:
            final = f"{exc.code} {exc.message}"
            for rid, _ in job.recipients:
                replies.setdefault(rid, (final, session.host))
            alive = exc.code != 421
            if alive:
                try:
                    await smtp.rset()
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    alive = False
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
            alive = False
            final = f"451 4.4.2 Connection to {session.host} lost: {exc or type(exc).__name__}"
            for rid, _ in job.recipients:
                if rid in accepted or rid not in replies:
                    replies[rid] = (final, None)
        self._log(work, lane, session.source, session.host, final, replies)
        # Outcomes commit in the background: the connection moves on to the next message.
        self._spawn(self._settle(work, replies, body))
        return alive and smtp.is_connected

    def _log(
        self,
        work: _Work,
        lane: _Lane,
        source: str | None,
        host: str | None,
        reply: str,
        replies: Mapping[int, tuple[str, str | None]] | None = None,
    ) -> None:
        self.stats.attempts += 1
        refused = ""
        if replies:
            addresses = dict(work.job.recipients)
            bad = [f"{addresses[rid]}:{r.split(' ', 1)[0]}" for rid, (r, _) in replies.items() if not r.startswith("2")]
            if bad and len(bad) < len(replies):
                refused = " refused=" + ",".join(bad)
        log.info(
            "attempt queue_id=%s message_id=%s pool=%s source=%s host=%s reply=%s recipients=%d%s",
            work.job.queue_id,
            work.job.header_message_id or "-",
            lane.pool.name,
            source or "-",
            host or lane.destination,
            _ascii(reply)[:200],
            len(work.job.recipients),
            refused,
        )

    # --- outcomes ------------------------------------------------------------------------

    async def _settle(self, work: _Work, replies: Mapping[int, tuple[str, str | None]], body: bytes | None = None) -> None:
        try:
            await self._record(work, replies, body)
        except Exception:
            # The outcome could not be stored: the spool still says queued or in flight, so
            # attempt again later (a duplicate at worst, never a loss).
            log.exception("queue_id=%s: could not record the outcome", work.job.queue_id)
            if not self._stopping:
                self._later(self.config.pools.get(work.job.pool, self.config.high_risk_pool).retry.initial, work.job, None)

    async def _record(self, work: _Work, replies: Mapping[int, tuple[str, str | None]], body: bytes | None) -> None:
        job = work.job
        pool = self.config.pools.get(job.pool, self.config.high_risk_pool)
        now = self.clock()
        attempts = job.attempts + 1
        expires = job.received_at + pool.max_age
        outcomes: list[Outcome] = []
        failures: list[Failure] = []
        retry: list[tuple[int, str]] = []
        expired = False
        addresses = dict(job.recipients)
        for rid, (reply, host) in replies.items():
            if reply.startswith("2"):
                outcomes.append(Outcome(rid, State.DELIVERED, reply))
                self.stats.delivered += 1
            elif reply.startswith("5"):
                outcomes.append(Outcome(rid, State.FAILED, reply))
                failures.append(Failure(addresses[rid], reply, host))
                self.stats.failed += 1
            elif now >= expires:
                outcomes.append(Outcome(rid, State.FAILED, reply))
                failures.append(Failure(addresses[rid], reply, host))
                expired = True
                self.stats.failed += 1
            else:
                retry.append((rid, addresses[rid]))
        next_attempt = 0.0
        if retry:
            delay = pool.retry.delay(attempts, self.rng.random())
            next_attempt = min(now + delay, expires)
            outcomes += [Outcome(rid, State.DEFERRED, replies[rid][0], next_attempt) for rid, _ in retry]
            self.stats.deferred += len(retry)
        bounce: NewMessage | None = None
        if failures and job.mail_from:
            if body is None:
                body = work.body if work.body is not None else await self.spool.body(job.message)
            dsn = build_dsn(
                reporting_mta=self.config.hostname,
                original_sender=job.mail_from,
                failures=failures,
                original=body,
                queue_id=job.queue_id,
                arrival=job.received_at,
                expired=expired,
                now=now,
            )
            dsn_pool, reasons = await self.route_dsn(dsn)
            bounce = NewMessage("", (job.mail_from,), dsn, dsn_pool, reasons, None, None)
        stored = await self.spool.record([replace(o, attempts=attempts) for o in outcomes], bounce)
        if stored is not None and bounce is not None:
            self.stats.bounces += 1
            log.info("bounce queue_id=%s for=%s dsn_queue_id=%s pool=%s", job.queue_id, job.mail_from, stored.queue_id, stored.pool)
            self._enqueue(stored, bounce.body)
        if retry and not self._stopping:
            self._later(next_attempt - now, replace(job, recipients=tuple(retry), attempts=attempts, next_attempt=next_attempt), None)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")
