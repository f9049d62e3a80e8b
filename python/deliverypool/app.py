"""The relay: wires the stages of a message's path together and runs them.

::

    ingress (SMTP sessions)  ->  Relay.accept: strip untrusted score fields, add Received,
    routing (Router: classify + sender-domain check)  ->  queue (Spool: committed before 250)
    ->  outbound (DeliveryEngine: lanes per pool and destination)  ->  the next hop

`Relay` owns one spool, one delivery engine, one router and one SMTP listener for a
`RelayConfig`; `run_relay` runs all of it until SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deliverypool.ingress.smtp import RelaySMTP

from deliverypool.auth.authenticator import Authenticator
from deliverypool.auth.dkim import DkimOutcome, DkimSigner, DkimVerifier, has_signature
from deliverypool.config import ConfigError, DnsConfig, RelayConfig, SrsConfig, load
from deliverypool.ingress.client_counts import ClientCounts
from deliverypool.ingress.handler import Accepted, RoutingHandler, network_check
from deliverypool.ingress.limits import Admission, Limits, raise_open_file_limit
from deliverypool.ingress.listener import Listener
from deliverypool.ingress.session import SessionFactory
from deliverypool.ingress.srs import SrsBounces, rewriter_of
from deliverypool.lookup.mx import MxLookup, MxResolver
from deliverypool.lookup.resolver import Nameserver, Resolver, ResolverConfig
from deliverypool.errors import MessageRefused, SpoolError, SpoolFull
from deliverypool.mail.headers import count_received, received_field, strip_authentication_results, strip_header
from deliverypool.observe.logs import BatchedStreamHandler, LineFormatter, RateLimit, info_line
from deliverypool.observe.service import Observer
from deliverypool.observe.spool import SpoolConditions
from deliverypool.outbound.scheduler import DeliveryEngine
from deliverypool.outbound.sources import WarmupLedger, warmup_ledger_for
from deliverypool.queue.space import SpaceFlags
from deliverypool.queue.spool import DsnRequest, NewMessage, Spool
from deliverypool.routing.auth import AuthRouting
from deliverypool.routing.pools import policy_from_config
from deliverypool.routing.router import Router
from deliverypool.routing.tenants import Tenants
from deliverypool.routing.scores import Routed, ScoredRouter, Submission, scored_router
from deliverypool.state.auth_failures import AuthFailureStore
from deliverypool.state.limits import Limiter, limiter_for
from deliverypool.state.observations import STATE_DATABASE
from deliverypool.supervisor import listen_socket, shard_directory
from deliverypool.watch.dnsbl import BlocklistWatch

__all__ = ["Accepted", "Relay", "configure_logging", "policy_from_config", "resolver_from_config", "run_relay"]

log = logging.getLogger("deliverypool.relay")

_T = TypeVar("_T")



def resolver_from_config(config: DnsConfig) -> Resolver:
    nameservers = tuple(Nameserver(host, port) for host, port in config.nameservers)
    return Resolver(ResolverConfig(nameservers=nameservers, timeout=config.timeout))


class Relay:
    """Spool, delivery engine, router and SMTP listener for one configuration."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        mx: MxLookup | None = None,
        router: Router | None = None,
        spool_directory: Path | None = None,
        dnsbl_resolver: Resolver | None = None,
        space: SpaceFlags | None = None,
        shard: int | None = None,
    ) -> None:
        self.config = config
        # A worker of `deliverypool relay` has a shard of the spool (`shard`: its number, in its
        # queue ids); an embedded relay the spool. `space`: the low-space flags the workers share
        # (queue/space.py).
        self.spool = Spool(
            spool_directory or config.spool.directory, reserve=config.spool.reserve, space=space, shard=shard, spent_files=config.spool.spent_files
        )
        self.mx = mx
        self.router = router
        self.scores: ScoredRouter | None = None
        self.engine: DeliveryEngine | None = None
        self.handler = RoutingHandler(self)
        # Whether a client may bring its own score header / route header (asked per message).
        self._trusted_score = network_check(config.listener.trusted_score_networks)
        self._trusted_route = network_check(config.listener.trusted_route_networks)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.server: asyncio.AbstractServer | None = None
        # The listener's session factory (its `stats`), once `listen` ran.
        self.sessions: SessionFactory | None = None
        self._auth_sharing: asyncio.Task[None] | None = None
        self.recovered = 0
        self.possible_duplicates = 0
        # Called after each message is spooled, with the result and the stored message. It
        # cannot change the answer: the message is stored, so the client gets 250 whatever
        # the hook does (an exception is logged).
        self.on_accept: Callable[[Accepted, bytes], None] | None = None
        self.tenants = Tenants(config.tenants)
        # DKIM (auth/dkim.py): the relay's signatures, put on once at acceptance; the check of
        # the ones clients put on (its resolver is set up with the others', in start()).
        self.dkim_signer = DkimSigner(config)
        self.dkim_verifier: DkimVerifier | None = None
        # SPF, DMARC and SRS (routing/auth.py, ingress/srs.py): the authentication steps of
        # routing, made with the resolver in start(); SRS bounces checked at RCPT.
        self.auth: AuthRouting | None = None
        self.srs_bounces: SrsBounces | None = SrsBounces.from_config(config.auth.srs) if config.auth.srs is not None else None
        # Events, metrics and the surge monitor (observe/); the process whose spool is the
        # relay's own or its shard 0 leads: it runs the monitor and the admin listener.
        root = config.spool.directory
        # One of the workers of `deliverypool relay` (its spool a shard), not an embedded relay.
        self.is_worker = self.spool.directory != root
        self.observer = Observer(
            config,
            spool_root=root,
            worker=self.spool.directory.name if self.is_worker else "main",
            leader=self.spool.directory in (root, shard_directory(root, 0)),
        )
        # Sender limits (state/limits.py), checked at RCPT; None when none is configured.
        self.limits: Limiter | None = limiter_for(
            config, self.tenants, spool_root=root, leader=self.observer.leader, listener=self.observer.senders
        )
        self.observer.limits = self.limits
        # Warm-up schedules of source addresses (outbound/sources.py), counted over the workers.
        self.warmup: WarmupLedger | None = warmup_ledger_for(config, root)
        # The spool's low-space mode and stalls: metrics and alerts (observe/spool.py).
        self.spool_conditions = SpoolConditions(self.observer)
        self.spool.on_condition = self.spool_conditions
        # The blocklist watch (watch/dnsbl.py): the leader checks the pools' addresses, every
        # worker follows the drained set through SPOOL/state.sqlite3. In a fleet, the node that
        # holds the fleet's lease checks them, and every worker follows the set in Redis.
        self.dnsbl: BlocklistWatch | None = None
        self._dnsbl_resolver = dnsbl_resolver
        fleet = self.observer.fleet
        if config.dnsbl.zones:
            self.dnsbl = BlocklistWatch(
                config,
                state_path=root / STATE_DATABASE,
                leader=self.observer.leader and fleet is None,
                alert=self.observer.publish_alert,
                count=self.observer.metrics.add,
            )
            self.observer.dnsbl = self.dnsbl
            if fleet is not None:
                self.dnsbl.fleet = fleet
                fleet.jobs.append(self.dnsbl)

    async def start(self) -> None:
        """Opens the spool and starts delivering what it holds."""
        self.loop = asyncio.get_running_loop()
        self._connect_dns()
        recovery = await self.spool.open()
        self.engine = DeliveryEngine(
            self.config, self.spool, mx=self.mx, route_dsn=self._route_dsn, memory_budget=self.config.spool.memory_budget
        )
        await self.observer.start()
        if self.limits is not None:
            await self.limits.start()
        self.spool.on_commit = self.observer.commit
        self.engine.on_attempt = self.observer.attempt
        self.engine.recorder.on_bounce = self.observer.generated
        if self.warmup is not None:
            # Before any delivery starts: each warming-up address's first messages claimed.
            self.engine.connector.sources.warmup = self.warmup
            await self.warmup.start()
        if self.dnsbl is not None:
            # Before any delivery starts: a drained address stays drained across a restart.
            self.engine.connector.drained = self.dnsbl.drained.is_drained
            await self.dnsbl.start()
        self.recovered = sum(len(job.recipients) for job in recovery.pending)
        self.possible_duplicates = recovery.requeued_in_flight
        if recovery.pending:
            log.info(
                "recovered %d unfinished recipients (%d were in flight: possible duplicates)",
                self.recovered,
                recovery.requeued_in_flight,
            )
        self.engine.resume(recovery.pending, recovery.dsn_batches)

    def _connect_dns(self) -> None:
        """Points MX lookups and the router's sender-domain check, unless given, at one
        shared resolver (and its Rust cache) on the configured nameservers."""
        needs_mx = self.mx is None and any(pool.delivery == "mx" for pool in self.config.pools.values())
        needs_sender = self.router is None and self.config.dns.check_sender_domain
        needs_auth = self.config.auth.enabled
        resolver = resolver_from_config(self.config.dns) if needs_mx or needs_sender or needs_auth else None
        if self.config.dkim.verify:
            # The shared resolver, or one of its own made at the first signed message.
            dns = self.config.dns
            source = resolver if resolver is not None else lambda: resolver_from_config(dns)
            self.dkim_verifier = DkimVerifier(source, max_signatures=self.config.dkim.max_signatures)
        if needs_mx:
            assert resolver is not None
            self.mx = MxResolver(resolver)
        fleet = self.observer.fleet
        if self.dnsbl is not None and (self.dnsbl.leader or (fleet is not None and fleet.candidate)):
            if self._dnsbl_resolver is not None:
                self.dnsbl.resolver = self._dnsbl_resolver
            elif self.config.dnsbl.nameservers:
                nameservers = tuple(Nameserver(host, port) for host, port in self.config.dnsbl.nameservers)
                self.dnsbl.resolver = Resolver(ResolverConfig(nameservers=nameservers, timeout=self.config.dns.timeout))
            else:  # the [dns] resolver and its cache
                self.dnsbl.resolver = resolver if resolver is not None else resolver_from_config(self.config.dns)
        if self.router is None:
            self.router = Router(resolver if needs_sender else None, policy=policy_from_config(self.config))
        if needs_auth:
            assert resolver is not None
            self.auth = auth_routing(self.config, resolver, self.tenants, self.dkim_signer, self.srs_bounces)
        if self.srs_bounces is not None:
            self.srs_bounces.on_outcome = self.observer.srs_checked
        self.scores = scored_router(self.config, self.router, auth=self.auth)
        self.observer.scores = self.scores.source.stats if self.scores.source is not None else None

    async def listen(self, sock: socket.socket | None = None, *, client_counts: ClientCounts | None = None) -> asyncio.AbstractServer:
        """Starts the SMTP listener on the configured address (bound with ``listener.backlog``),
        or on `sock` (a listening socket shared with other workers, whose connections per
        client address `client_counts` holds). The soft open-file limit is raised to the hard
        one first, and the connection limits worked out from it (docs/operations/limits.md)."""
        listener = self.config.listener
        limits = Limits.for_listener(listener, raise_open_file_limit())
        if sock is None:
            sock = listen_socket(listener.host, listener.port, listener.backlog, wait=0.0)
        else:
            # A supervisor's socket is bound but not listening until a worker is ready to serve
            # (supervisor.py): from here clients queue in the backlog instead of being refused.
            sock.listen(listener.backlog)
        admission = Admission(listener, limits, client_counts)
        self.sessions = SessionFactory(listener, self.handler, admission)
        server = Listener(sock, self.sessions, admission)
        await server.start_serving()
        self.server = server
        if limits.max_auth_failures_per_client and self.is_worker:  # an embedded relay has nobody to share with
            self._auth_sharing = asyncio.ensure_future(self._share_auth_failures(admission))
        log.info(
            "limits: max_connections=%d (open files %d, %d reserved) max_connections_per_client=%d idle_timeout=%gs "
            "max_auth_failures=%d max_auth_failures_per_client=%d",
            limits.max_connections, limits.open_files, limits.fd_reserve, limits.max_connections_per_client,
            listener.idle_timeout, limits.max_auth_failures, limits.max_auth_failures_per_client,
        )
        return server

    def smtp_factory(self) -> Callable[[], RelaySMTP]:
        """An aiosmtpd protocol factory for `loop.create_server`, configured from the listener
        section (the idle timeout and the AUTH limits; the connection limits are `listen`'s),
        for embedding with aiosmtpd (an optional dependency). `session_factory` is the relay's
        own listener's."""
        from deliverypool.ingress.smtp import protocol_factory

        return protocol_factory(self.config.listener, self.handler)

    def session_factory(self) -> SessionFactory:
        """A protocol factory for `loop.create_server` with the relay's own SMTP sessions (the
        Rust engine), configured from the listener section; the connection limits are
        `listen`'s."""
        return SessionFactory(self.config.listener, self.handler)

    async def accept(
        self,
        *,
        mail_from: str,
        recipients: tuple[str, ...],
        content: bytes,
        peer: str | None,
        helo: str,
        login: str | None = None,
        traced: bool = False,
        dsn: DsnRequest | None = None,
    ) -> Accepted:
        """Classifies, signs (DKIM) and spools one message; returns once it is on disk.
        `traced` says the relay's ``Received:`` field is already in front of `content` (the
        DATA reader puts it there); otherwise it is added here. `dsn` holds the client's RFC
        3461 parameters, kept with the message for the DSNs the relay writes."""
        assert self.engine is not None and self.scores is not None, "Relay.start() first"
        # The client's own DKIM signatures are checked on the message as it came.
        arrived = content
        listener = self.config.listener
        untrusted = not self._trusted_score(peer)
        untrusted_route = not self._trusted_route(peer)
        # A client outside the trusted networks neither brings its own score nor picks its pool.
        for header, stripped in ((self.config.policy.score_header, untrusted), (self.config.policy.route_header, untrusted_route)):
            if header and stripped:
                content, removed = strip_header(content, header)
                if removed:
                    log.info("removed %d client-written %s field(s) peer=%s", removed, header, peer)
        hops = count_received(content) - traced
        if hops >= self.config.listener.max_hops:
            # Ours would be one more: a routing loop (an MX or smarthost pointing back here).
            log.warning("refused a message with %d Received fields from=<%s> peer=%s (routing loop?)", hops, mail_from, peer)
            raise MessageRefused(f"554 5.4.6 Too many hops ({hops} Received fields): routing loop", "too-many-hops")
        if not traced:
            content = received_field(helo=helo, peer=peer, by=self.config.listener.hostname, authenticated=login is not None) + content
        tenant = self.tenants.resolve(login, peer)
        # A bounce to an SRS address of the relay goes back to the original sender (checked at
        # RCPT, reversed here).
        srs_bounce = False
        if self.srs_bounces is not None:
            recipients, srs_bounce = self.srs_bounces.reverse(recipients)
        submission = Submission(mail_from, recipients, client_address=peer, helo=helo, login=login)
        checks = self.dkim_verifier.verify(arrived) if self.dkim_verifier is not None and has_signature(arrived) else None
        route = functools.partial(
            self.scores.route, submission=submission, tenant=tenant, untrusted_client=untrusted, untrusted_route_header=untrusted_route, srs_bounce=srs_bounce
        )
        routed = await route(content, checks=checks)
        if routed.auth is not None and self.config.auth.add_authentication_results:
            content = await self._authentication_results(content, routed)
        # Signed once, here, before it is spooled: every retry and every pool sends these bytes.
        content, dkim = await self.dkim_signer.sign(content, from_domain=routed.decision.from_domain, tenant=tenant)
        if routed.auth is not None and routed.auth.own_signatures and (dkim is None or not dkim.signed):
            # DMARC counted on the relay's own signatures, which could not be put on: routed
            # again without them (rare: the signer reports why).
            again = await route(content, checks=_known(routed.checks) if routed.checks else None, predict_signatures=False)
            routed = dataclasses.replace(again, checks=routed.checks)
        if routed.checks:
            dkim = dataclasses.replace(dkim or DkimOutcome(), checks=routed.checks)
        message_id = routed.decision.message_id
        recipient_pools = routed.recipient_pools
        # A message promised a connection as soon as it is submitted is stored with its
        # recipients in flight: its first attempt needs no state change of its own.
        claim = self.engine.claim_at_once(routed.pool, recipients, recipient_pools)
        try:
            job = await self.spool.accept(
                NewMessage(
                    mail_from=mail_from,
                    recipients=recipients,
                    body=content,
                    pool=routed.pool,
                    reasons=routed.reasons,
                    tenant=tenant,
                    header_message_id=message_id,
                    recipient_pools=recipient_pools,
                    dsn=dsn,
                    envelope_from=routed.auth.envelope_from if routed.auth is not None else None,
                ),
                in_flight=claim is not None,
            )
        except SpoolError as error:
            self.engine.release(claim)
            # Low space, or the spool failing to write: the client keeps the message. Counted,
            # and logged at a bounded rate (the spool logs the condition itself, once).
            self.spool_conditions.refused()
            full = isinstance(error, SpoolFull)
            log.warning(
                "refused a message from=<%s> peer=%s: %s", mail_from, peer, "the spool's disk is full" if full else error,
                extra={"rate_limit": "spool refused"},
            )
            if full:
                raise MessageRefused("452 4.3.1 Insufficient system storage; try again later", "spool-full") from None
            raise MessageRefused("451 4.3.0 Temporary failure storing the message; try again later", "spool-unavailable") from None
        except BaseException:
            self.engine.release(claim)
            raise
        if log.isEnabledFor(logging.INFO):  # nothing is formatted for a line no handler writes
            reasons = ",".join(routed.reasons) or "-"
            spam = routed.spam.summary() if routed.spam is not None else "-"
            split = "," + ",".join(p for p in dict.fromkeys(recipient_pools) if p != routed.pool) if recipient_pools else ""
            info_line(
                log,
                "accepted queue_id=%s message_id=%s from=<%s> recipients=%d pool=%s%s reasons=%s spam=%s%s%s rule=%s",
                job.queue_id, message_id or "-", mail_from, len(recipients), routed.pool, split, reasons, spam,
                dkim_summary(dkim), routed.auth.summary() if routed.auth is not None else "", routed.decision.rule or "-",
                extra={"event": "accepted", "queue_id": job.queue_id, "pool": routed.pool, "reasons": reasons},
            )
        # Delivery gets the body from memory, within the scheduler's memory budget
        # (`spool.memory_budget`) and up to its MAX_HELD_BODY, also when the spool keeps it in a
        # file: reading a 1 MiB body back cost a read(2) of it, a copy into Python and five trips
        # to the spool's file thread. Otherwise it is read from the spool when its attempt starts.
        self.engine.submit(job, content, claim=claim)
        accepted = Accepted(job.queue_id, routed.pool, routed.reasons, routed.spam, dkim)
        try:
            self.observer.accepted(
                queue_id=job.queue_id, decision=routed.decision, content=content, tenant=tenant, peer=peer, recipients=len(recipients), message_id=message_id,
                dkim=dkim, auth=routed.auth,
            )
        except Exception:
            log.exception("observer failed for queue_id=%s (the message is stored)", job.queue_id)
        if self.on_accept is not None:
            try:
                self.on_accept(accepted, content)
            except Exception:
                log.exception("on_accept hook failed for queue_id=%s (the message is stored)", job.queue_id)
        return accepted

    async def _authentication_results(self, content: bytes, routed: Routed) -> bytes:
        """`content` with the Authentication-Results field of the message as it arrived (SPF,
        the client's signatures, DMARC with those) at the top, any field claiming to be ours
        removed first (RFC 8601 §5)."""
        assert routed.auth is not None and self.auth is not None
        authserv_id = self.config.auth.authserv_id or self.config.hostname
        content, _ = strip_authentication_results(content, authserv_id)
        result = await self.auth.arrival_result(routed.auth, routed.checks)
        return result.authentication_results(authserv_id).encode("ascii") + content

    async def reload(self, config_path: Path) -> bool:
        """SIGHUP: reads the configuration file again and signs with its DKIM keys and its SRS
        keys from now on (key rotation). A file that cannot be loaded (a key file missing,
        unreadable, too short...) keeps the keys in use: one line in the log, and the reload
        metric counts it. Nothing else of the file is taken: other changes need a restart."""
        try:
            config = await asyncio.to_thread(load, config_path)
        except ConfigError as exc:
            problem = str(exc).replace("\n", "; ")
            log.error("SIGHUP: %s not reloaded, the DKIM and SRS keys in use are kept: %s", config_path, problem)
            self.observer.metrics.add("deliverypool_dkim_reloads_total", (("result", "failed"),))
            return False
        self.dkim_signer.reload(config)
        self.observer.metrics.add("deliverypool_dkim_reloads_total", (("result", "ok"),))
        log.info("SIGHUP: DKIM keys reloaded from %s: %s", config_path, ", ".join(f"{k.selector}._domainkey.{k.domain}" for k in config.dkim.keys) or "none")
        self._reload_srs(config.auth.srs)
        return True

    def _reload_srs(self, srs: SrsConfig | None) -> None:
        """The SRS keys of a reloaded configuration: the first signs new addresses from now on,
        every one verifies the addresses bounces come back to. SRS turned on or off, or another
        SRS domain, takes a restart (a warning says so; the SRS in use stays)."""
        if self.srs_bounces is None or srs is None:
            if (self.srs_bounces is None) != (srs is None):
                log.warning("SIGHUP: [auth.srs] was %s: that takes a restart, nothing changed", "added" if srs is not None else "removed")
            return
        if srs.domain.lower() != self.srs_bounces.domain:
            log.warning("SIGHUP: auth.srs.domain changed to %s: that takes a restart, the SRS keys in use are kept", srs.domain)
            return
        self.srs_bounces.rewriter = rewriter_of(srs)
        log.info("SIGHUP: SRS keys reloaded: %d (the first signs)", len(srs.keys))

    async def _route_dsn(self, dsn: bytes, tenant: str | None = None) -> tuple[str, tuple[str, ...]]:
        """The pool of a DSN the relay wrote for mail of `tenant` (its rules apply to it)."""
        assert self.router is not None
        decision = await self.router.route(dsn, mail_from="", tenant=tenant)
        return decision.pool, tuple(decision.reasons)

    async def _share_auth_failures(self, admission: Admission) -> None:
        """Every ``observe.flush_interval``: this worker's new AUTH failures into the state
        database, the other workers' out of it (state/auth_failures.py). A state database that
        cannot be used leaves each worker with its own counts (logged once)."""
        failures = admission.auth_failures
        store = AuthFailureStore(self.config.spool.directory / STATE_DATABASE)
        worker, window = self.observer.worker, failures.window
        opened = warned = False
        try:
            while True:
                await asyncio.sleep(self.config.observe.flush_interval)
                pending, failures.pending = failures.pending, collections.Counter()
                try:
                    if not opened:
                        await asyncio.to_thread(store.open)
                        opened = True
                    wall = time.time()
                    others = await asyncio.to_thread(
                        store.exchange, worker, pending, now=wall, window=window, limit=failures.capacity
                    )
                except (OSError, sqlite3.Error) as exc:
                    if not warned:
                        log.warning("failed AUTH counts not shared with the other workers: %s", exc)
                        warned = True
                    continue
                offset = failures.clock() - wall
                failures.others = {client: (count, until + offset) for client, (count, until) in others.items()}
        finally:
            await asyncio.to_thread(store.close)

    async def stop(self) -> None:
        if self._auth_sharing is not None:
            self._auth_sharing.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._auth_sharing
            self._auth_sharing = None
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)
            self.server = None
        if self.engine is not None:
            await self.engine.stop()
        if self.warmup is not None:
            await self.warmup.stop()
        if self.scores is not None:
            await self.scores.close()
        if self.limits is not None:
            await self.limits.stop()
        if self.dnsbl is not None:
            await self.dnsbl.stop()
        self.dkim_signer.close()
        await self.spool_conditions.drain()
        await self.observer.stop()
        await self.spool.close()


async def run_relay(
    config: RelayConfig,
    *,
    ready: Callable[[Relay], None] | None = None,
    sock: socket.socket | None = None,
    spool_directory: Path | None = None,
    client_counts: ClientCounts | None = None,
    space: SpaceFlags | None = None,
    config_path: Path | None = None,
    shard: int | None = None,
) -> None:
    """Runs the relay until SIGINT or SIGTERM: recovers the spool, delivers, listens (on `sock`
    when a supervisor shares one, with `spool_directory` its shard, `shard` that shard's
    number, `client_counts` the workers' connections per client and `space` their low-space
    flags). SIGHUP reloads the DKIM keys from `config_path`."""
    relay = Relay(config, spool_directory=spool_directory, space=space, shard=shard)
    await relay.start()
    await relay.listen(sock, client_counts=client_counts)
    log.info("listening on %s:%d, spool %s", config.listener.host, config.listener.port, relay.spool.directory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    reloads: set[asyncio.Task[bool]] = set()
    if config_path is not None:
        path = config_path

        def hangup() -> None:
            task = asyncio.ensure_future(relay.reload(path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, hangup)
        # A supervisor starts its workers with SIGHUP blocked; one that came meanwhile is
        # handled now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    if ready is not None:
        ready(relay)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await relay.stop()


async def _known(value: _T) -> _T:
    return value


def auth_routing(config: RelayConfig, resolver: Resolver, tenants: Tenants, signer: DkimSigner, srs: SrsBounces | None) -> AuthRouting:
    """The authentication steps of routing (``[auth] enabled``) through `resolver`. Without a
    pool of class relay, relayed mail goes the high-risk way (said once in the log)."""
    if not any(pool.pool_class == "relay" for pool in config.pools.values()):
        log.warning("auth.enabled without a pool of class relay: relayed mail (relayed-spf-fail) goes through the high-risk pools")
    return AuthRouting(Authenticator(resolver, receiver=config.hostname), config, tenants=tenants, signer=signer, srs=srs)


def dkim_summary(outcome: DkimOutcome | None) -> str:
    """The accepted line's DKIM words: ``dkim=signed:d/s,d/s``, ``dkim=unsigned:no-key``, and
    ``dkim-checks=pass:d,fail:d`` for the signatures it arrived with; nothing without DKIM."""
    if outcome is None:
        return ""
    words = ""
    if outcome.signed:
        words = " dkim=signed:" + ",".join(f"{s.domain}/{s.selector}" for s in outcome.signed)
    elif outcome.unsigned is not None:
        words = f" dkim=unsigned:{outcome.unsigned}"
    if outcome.checks:
        words += " dkim-checks=" + ",".join(f"{c.result}:{c.domain or '-'}" for c in outcome.checks)
    return words


def configure_logging(level: int = logging.INFO, *, batched: bool = False) -> None:
    """One line per event on stderr, unless the application configured logging already.

    The relay logs two lines per message (accepted, attempt): the record attributes nobody
    formats (the caller's file and line, found by walking the stack; the thread and process
    names) are not gathered. `batched` (a relay worker) writes the lines in batches (a warning
    at once, the others within 0.25 s: `BatchedStreamHandler`) instead of one write per line."""
    root = logging.getLogger()
    if not root.handlers:
        handler = BatchedStreamHandler(sys.stderr) if batched else logging.StreamHandler(sys.stderr)
        handler.setFormatter(LineFormatter())  # "%(asctime)s %(name)s %(message)s"
        handler.addFilter(RateLimit())  # lines a flood repeats: a few per minute, then a count
        if isinstance(handler, BatchedStreamHandler):
            handler.direct()  # info_line: the per-message lines straight into its batches
        root.addHandler(handler)
        root.setLevel(level)
        logging._srcfile = None  # the documented switch that turns findCaller off
        logging.logThreads = False
        logging.logProcesses = False
        logging.logMultiprocessing = False
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter (embedding)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per rspamd request
