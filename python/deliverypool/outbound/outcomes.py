"""What each recipient's reply means, and recording it.

2xx is delivered; 5xx fails at once; 4xx (and a connection error) is deferred with the pool's
backoff until the pool's ``max_age`` (a last attempt is made at that age), then fails. Failed
recipients of a message with a non-null sender produce one RFC 3464 DSN, stored in the same
spool transaction as the failure (a crash never separates them) and routed like any other
message, so it leaves through the high-risk pool. A message with a null sender never gets one.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from deliverypool.config import RelayConfig
from deliverypool.mail.dsn import Failure, build_dsn
from deliverypool.queue.schema import State
from deliverypool.queue.spool import Job, NewMessage, Outcome, Spool

__all__ = ["DeliveryStats", "DsnRouter", "Recorded", "Recorder"]

# Routes a DSN the relay generated: returns the pool it goes to and the decision's reasons.
DsnRouter = Callable[[bytes], Awaitable[tuple[str, tuple[str, ...]]]]


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
    """What recording an attempt left to schedule: the DSN now in the spool (with its body),
    and the recipients to retry, as a job due at its ``next_attempt``."""

    bounce: Job | None = None
    bounce_body: bytes | None = None
    retry: Job | None = None


class Recorder:
    """Turns replies into recipient outcomes (and a DSN) in one spool transaction."""

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
        """Records one attempt for `job`'s recipients; `body` is the message (read from the
        spool when None and a DSN needs its headers)."""
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
            elif reply.startswith("5") or now >= expires:
                outcomes.append(Outcome(rid, State.FAILED, reply))
                failures.append(Failure(addresses[rid], reply, host))
                expired = expired or not reply.startswith("5")
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
                body = await self.spool.body(job.message)
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
            if self.on_bounce is not None:
                try:
                    self.on_bounce(queue_id=job.queue_id, dsn_queue_id=stored.queue_id, pool=stored.pool, failures=failures, tenant=job.tenant)
                except Exception:
                    pass  # observation only: the DSN is stored
        retry_job = replace(job, recipients=tuple(retry), attempts=attempts, next_attempt=next_attempt) if retry else None
        return Recorded(stored, bounce.body if stored is not None and bounce is not None else None, retry_job)
