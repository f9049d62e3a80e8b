"""What each recipient's reply means, and recording it.

2xx is delivered; 5xx fails at once; 4xx (and a connection error) is deferred with the pool's
backoff until the pool's ``max_age`` (a last attempt is made at that age), then fails. Failed
recipients of a message with a non-null sender produce one RFC 3464 DSN, stored in the same
spool transaction as the failure (a crash never separates them) and routed like any other
message, so it leaves through the high-risk pool. A message with a null sender never gets one.
The client's RFC 3461 parameters are honoured (the spool decides which outcomes are due a
report): NOTIFY=NEVER, or a NOTIFY without FAILURE, gets no failure DSN; NOTIFY=SUCCESS gets a
"relayed" report when delivered; NOTIFY=DELAY a "delayed" report at its first deferral (once);
RET=FULL returns the whole message in a failure DSN; ENVID and ORCPT are given back.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from deliverypool.config import RelayConfig
from deliverypool.mail.dsn import Failure, build_dsn
from deliverypool.queue.schema import State
from deliverypool.queue.spool import DsnBatch, Job, NewMessage, Outcome, Spool

__all__ = ["DeliveryStats", "DsnRouter", "Recorded", "Recorder"]

# Routes a DSN the relay generated for mail of a tenant (or None): returns the pool it goes to
# and the decision's reasons (a tenant's rules may give its DSNs its own high-risk pool).
DsnRouter = Callable[[bytes, "str | None"], Awaitable[tuple[str, tuple[str, ...]]]]


@dataclass
class DeliveryStats:
    attempts: int = 0
    delivered: int = 0
    deferred: int = 0
    failed: int = 0
    bounces: int = 0
    connections: int = 0


@dataclass(frozen=True)
class Recorded:
    """What recording an attempt left to schedule: the DSNs now in the spool (with their
    bodies), and the recipients to retry, as a job due at its ``next_attempt``."""

    bounces: tuple[tuple[Job, bytes], ...] = ()
    retry: Job | None = None


class Recorder:
    """Turns replies into recipient outcomes in the spool, and a message's failures into one
    DSN when its failure batch is over."""

    def __init__(
        self,
        config: RelayConfig,
        spool: Spool,
        route_dsn: DsnRouter,
        stats: DeliveryStats,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.config = config
        self.spool = spool
        self.route_dsn = route_dsn
        self.stats = stats
        self.clock = clock
        self.rng = rng
        # Told of every DSN the relay stores (observe/): queue ids, pool, failures, tenant.
        self.on_bounce: Callable[..., None] | None = None

    async def record(self, job: Job, replies: Mapping[int, tuple[str, str | None]], body: bytes | None) -> Recorded:
        """Records one attempt for `job`'s recipients; `body` is the message, if at hand (else
        read from the spool when a DSN needs its headers)."""
        pool = self.config.pools.get(job.pool, self.config.high_risk_pool)
        now = self.clock()
        attempts = job.attempts + 1
        expires = job.received_at + pool.max_age
        outcomes: list[Outcome] = []
        retry: list[tuple[int, str]] = []
        addresses = dict(job.recipients)
        wants_dsn = bool(job.mail_from)
        for rid, (reply, host) in replies.items():
            if reply.startswith("2"):
                outcomes.append(Outcome(rid, State.DELIVERED, reply, attempts=attempts, host=host, message=job.message))
                self.stats.delivered += 1
            elif reply.startswith("5") or now >= expires:
                outcomes.append(Outcome(rid, State.FAILED, reply, attempts=attempts, host=host, dsn=wants_dsn, message=job.message))
                self.stats.failed += 1
            else:
                retry.append((rid, addresses[rid]))
        next_attempt = 0.0
        if retry:
            delay = pool.retry.delay(attempts, self.rng.random())
            next_attempt = min(now + delay, expires)
            outcomes += [Outcome(rid, State.DEFERRED, replies[rid][0], next_attempt, attempts, replies[rid][1], message=job.message) for rid, _ in retry]
            self.stats.deferred += len(retry)
        batches = await self.spool.record(outcomes)
        bounces = [await self.bounce(batch, body) for batch in batches]
        retry_job = replace(job, recipients=tuple(retry), attempts=attempts, next_attempt=next_attempt) if retry else None
        return Recorded(tuple(bounces), retry_job)

    async def bounce(self, batch: DsnBatch, body: bytes | None = None) -> tuple[Job, bytes]:
        """Writes, routes and stores the one DSN of a failure batch; returns its job and body."""
        if body is None:
            body = await self.spool.body(batch.message)
        dsn = build_dsn(
            reporting_mta=self.config.hostname,
            original_sender=batch.mail_from,
            failures=[Failure(f.address, f.reply, f.host, f.action, f.orcpt) for f in batch.failures],
            original=body,
            queue_id=batch.queue_id,
            arrival=batch.received_at,
            now=self.clock(),
            envid=batch.envid,
            ret=batch.ret,
        )
        dsn_pool, reasons = await self.route_dsn(dsn, batch.tenant)
        job = await self.spool.store_dsn(batch, NewMessage("", (batch.mail_from,), dsn, dsn_pool, reasons, None, None))
        self.stats.bounces += 1
        failed = [f for f in batch.failures if f.action == "failed"]
        if self.on_bounce is not None and failed:  # a report of deliveries or delays only is no bounce
            try:
                failures = [Failure(f.address, f.reply, f.host) for f in failed]
                self.on_bounce(queue_id=batch.queue_id, dsn_queue_id=job.queue_id, pool=job.pool, failures=failures, tenant=batch.tenant)
            except Exception:
                pass  # observation only: the DSN is stored
        return job, dsn
