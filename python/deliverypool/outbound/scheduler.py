"""The delivery scheduler: sends spooled mail from each pool's own source addresses.

Work is grouped in *lanes*, one per (pool, destination): the recipient domain in MX mode, the
smarthost otherwise. A lane runs up to ``max_connections_per_destination`` connections
(:class:`~deliverypool.outbound.transaction.Connector`); each is bound to one of the pool's
source addresses and carries several messages before it closes. A lane only ever sees its own
pool's addresses, so mail routed to the high-risk pool never leaves from a normal-pool address,
not even when every high-risk address is failing: it is deferred instead.

Every attempt ends as a recorded outcome (:mod:`~deliverypool.outbound.outcomes`): a remote
reply, a destination that cannot be reached, or a local failure (a bug, the spool) all defer or
fail the recipients; nothing is left waiting for a restart.

Each delivery attempt logs one line on the ``deliverypool.delivery`` logger::

    attempt queue_id=65A1B2C3D4E5 message_id=<x@y> pool=normal source=127.0.0.2
        host=mx1.example.net[127.0.0.10]:25 reply=250 recipients=1
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from deliverypool.config import PoolConfig, RelayConfig
from deliverypool.errors import DestinationError
from deliverypool.lookup.mx import MxLookup
from deliverypool.mail.address import domain_of
from deliverypool.mail.headers import one_line_ascii
from deliverypool.observe.logs import info_line
from deliverypool.outbound.outcomes import DeliveryStats, DsnRouter, Recorder
from deliverypool.outbound.transaction import Connector, Session, send
from deliverypool.queue.spool import BodyFile, DsnBatch, Job, Spool

__all__ = ["DeliveryEngine"]

log = logging.getLogger("deliverypool.delivery")

# The reply recorded when an attempt failed on our side (a bug, the spool): retried.
LOCAL_FAILURE = "451 4.3.0 Local error while delivering; will retry"
# The largest body kept in memory for delivery (within the memory budget). A larger one is
# streamed from its body file when its attempt starts: holding it would add its size to the
# worker's peak (a copy dot-stuffed for DATA, the transport's buffer) for a saving that is small
# next to sending it.
MAX_HELD_BODY = 4 * 1024 * 1024
# Flow control (`DeliveryEngine.behind`): delivery is behind when the bodies of work waiting for
# a connection (held in memory or not) take more than this share of the memory budget (8 MiB of
# the default 64):
# enough to keep every connection fed, small enough that a burst's bodies stay in memory and
# its body files are reused. Measured at 1 MiB (benches/README.md): a half let 1 MiB messages
# in faster than they left; an eighth held acceptance to delivery's pace.
FLOW_SHARE = 8
# A lane whose connections took no work for this long is stalled (a destination that tarpits
# or hangs): its waiting bodies do not count, so that one slow destination does not slow
# every client of the worker.
STALLED_AFTER = 1.0


@dataclass
class _Work:
    """Recipients of one message for one destination (`in_flight`: already marked so in the
    spool, when it was stored that way as it was accepted)."""

    job: Job
    body: bytes | None = None
    in_flight: bool = False
    # Bytes of its body counted in its lane's `queued` while it waits (0: not counted, a size
    # not known, or released).
    size: int = 0


@dataclass
class _Ready:
    """A work with its body at hand and its recipients marked in flight."""

    work: _Work
    body: bytes | BodyFile


@dataclass
class _Lane:
    pool: PoolConfig
    destination: str  # the recipient domain, or "[host]:port" for a smarthost
    queue: deque[_Work] = field(default_factory=deque)
    active: int = 0
    idle: int = 0
    # Messages being accepted that were promised a connection of this lane at once (see
    # `DeliveryEngine.claim_at_once`): counted as work until they are submitted.
    promised: int = 0
    # Bytes of the bodies of the work in `queue`, held in memory or not, and when
    # (time.monotonic) a connection last took work from it: flow control
    # (`DeliveryEngine.behind`).
    queued: int = 0
    took: float = -math.inf
    # The idle connections' waits (see `wait`).
    waiting: list[asyncio.Future[bool]] = field(default_factory=list)

    def wake(self) -> None:
        """Work came, or delivery stops: every idle connection of the lane looks again."""
        waiting, self.waiting = self.waiting, []
        _wake(waiting)

    async def wait(self, timeout: float) -> bool:
        """Until `wake` (True) or `timeout` seconds (False)."""
        return await _wait(self.waiting, timeout)


# A promise of connections at once (`DeliveryEngine.claim_at_once`): the lanes it holds a place in.
Claim = tuple[_Lane, ...]


def _destination(pool: PoolConfig, address: str) -> str:
    """The lane of `address` within `pool`: its domain, or the smarthost as "[host]:port"."""
    if pool.delivery == "smarthost":
        assert pool.smarthost is not None
        host, port = pool.smarthost
        return f"[{host}]:{port}"
    return domain_of(address)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake(waiting: list[asyncio.Future[bool]], result: bool = True) -> None:
    for waiter in waiting:
        if not waiter.done():
            waiter.set_result(result)


async def _wait(waiting: list[asyncio.Future[bool]], timeout: float) -> bool:
    """Until a future put in `waiting` is woken (True) or `timeout` seconds (False). A future
    and a timer: a connection goes idle, and a MAIL may wait for delivery, about once per
    message under load, and `asyncio.wait_for` would make a task for each wait."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[bool] = loop.create_future()
    waiting.append(waiter)
    timer = loop.call_later(timeout, _expire, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()
        if waiter in waiting:
            waiting.remove(waiter)


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
        memory_budget: int = 64 * 1024 * 1024,
    ) -> None:
        self.config = config
        # Bodies of queued work kept in memory, at most this many bytes in all: past it, a body
        # is read from the spool when its attempt starts, so a stalled destination with a long
        # queue costs no memory per message.
        self.memory_budget = memory_budget
        self.held = 0
        # Flow control (`behind`, `caught_up`): the bytes of the bodies waiting for a connection
        # (held or not), the waits of MAIL commands until delivery catches up, and the timer for
        # the moment a lane they wait on would stall (`_watch_stalls`).
        self.queued = 0
        self._flow_waiting: list[asyncio.Future[bool]] = []
        self._stall_timer: asyncio.TimerHandle | None = None
        self.stalled_after = STALLED_AFTER
        self.spool = spool
        self.clock = clock
        self.rng = rng or random.Random()
        self.stats = DeliveryStats()
        self.connector = Connector(mx, self.rng, self.stats)
        self.recorder = Recorder(config, spool, route_dsn, self.stats, clock=clock, rng=self.rng)
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        # Told of every attempt (observe/): pool, source, destination, host, reply, replies.
        self.on_attempt: Callable[..., None] | None = None

    # --- submitting work -----------------------------------------------------------------

    def submit(self, job: Job, body: bytes | None = None, *, claim: Claim | None = None) -> None:
        """Schedules a spooled job: now if due, else at its next_attempt. `claim`: the job was
        promised a connection at once and the spool holds its recipients in flight already
        (see :meth:`claim_at_once`); the promise becomes the job's place in its lanes."""
        delay = job.next_attempt - self.clock()
        if delay > 0:
            self._later(delay, job, body)
        else:
            self._enqueue(job, body, claim is not None)
        # Given back once the job is in its lanes: a lane the promise made is not forgotten
        # and made again.
        self.release(claim)

    def claim_at_once(self, pool: str, recipients: Sequence[str], recipient_pools: Sequence[str] = ()) -> Claim | None:
        """A promise that a message for `recipients` (through `pool`, or each through its own of
        `recipient_pools`) goes to a connection as soon as it is submitted, or None: every lane
        it joins has an idle connection or room for one more beyond the work already waiting
        and the promises already made. The relay then stores it with its recipients in flight,
        which spares the first attempt a state change of its own. Each promise holds a place
        until the message is submitted with it or it is released (the spool refused the
        message): messages accepted at the same moment for one lane get one place each, so
        what a crash counts as possibly sent is exactly what a connection had taken."""
        if self._stopping:
            return None
        lanes: dict[tuple[str, str], _Lane] = {}
        for address, name in zip(recipients, recipient_pools or (pool,) * len(recipients)):
            config = self.config.pools.get(name)
            if config is None:
                return None
            key = (name, _destination(config, address))
            if key in lanes:
                continue
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane(config, key[1])
            if len(lane.queue) + lane.promised >= lane.idle + config.max_connections_per_destination - lane.active:
                for made in (*lanes.values(), lane):  # the lanes this call may have made
                    self._forget_if_unused(made)
                return None
            lanes[key] = lane
        for lane in lanes.values():
            lane.promised += 1
        return tuple(lanes.values())

    def release(self, claim: Claim | None) -> None:
        """Gives back the places of a promise (:meth:`claim_at_once`) that will not be used."""
        for lane in claim or ():
            lane.promised -= 1
            self._forget_if_unused(lane)

    def _forget_if_unused(self, lane: _Lane) -> None:
        if lane.active == 0 and not lane.queue and not lane.promised:
            self._lanes.pop((lane.pool.name, lane.destination), None)

    def resume(self, jobs: Sequence[Job], dsn_batches: Sequence[DsnBatch] = ()) -> None:
        """Schedules the unfinished jobs a spool recovered at start, and writes the DSNs of
        failure batches that ended just before a crash."""
        for job in jobs:
            self.submit(job)
        for batch in dsn_batches:
            self._spawn(self._bounce(batch))

    async def _bounce(self, batch: DsnBatch) -> None:
        job, dsn = await self.recorder.bounce(batch)
        log.info("bounce queue_id=%s for=%s dsn_queue_id=%s pool=%s (after a restart)", batch.queue_id, batch.mail_from, job.queue_id, job.pool)
        self._enqueue(job, dsn)

    def _later(self, delay: float, job: Job, body: bytes | None) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(handle)
            self._enqueue(job, body)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    def _pool_of(self, job: Job) -> PoolConfig:
        pool = self.config.pools.get(job.pool)
        if pool is None:
            # The pool was removed from the configuration while mail waited for it: fall back
            # to the high-risk pool, never to the normal one.
            log.warning("queue_id=%s: pool %r is not configured, using %r", job.queue_id, job.pool, self.config.policy.high_risk_pool)
            pool = self.config.high_risk_pool
        return pool

    def _enqueue(self, job: Job, body: bytes | None, in_flight: bool = False) -> None:
        if self._stopping:
            return
        if job.recipient_pools:
            # Rules routed the recipients to different pools: a job per pool.
            for pool_name, recipients in job.by_pool().items():
                self._enqueue(replace(job, pool=pool_name, recipients=recipients, recipient_pools=()), body, in_flight)
            return
        pool = self._pool_of(job)
        by_destination: dict[str, list[tuple[int, str]]] = {}
        for rid, address in job.recipients:
            by_destination.setdefault(_destination(pool, address), []).append((rid, address))
        for destination, group in by_destination.items():
            lane = self._lanes.get((pool.name, destination))
            if lane is None:
                lane = self._lanes[(pool.name, destination)] = _Lane(pool, destination)
            part = job if len(by_destination) == 1 else replace(job, recipients=tuple(group))
            self._put(lane, part, body, in_flight=in_flight)
            lane.wake()
            if lane.active < pool.max_connections_per_destination and len(lane.queue) > lane.idle:
                lane.active += 1
                self._idle.clear()
                self._spawn(self._worker(lane))

    def _hold(self, body: bytes | None) -> bytes | None:
        """`body` if it is at most MAX_HELD_BODY and the memory budget has room for it (then
        counted), else None."""
        if body is None or len(body) > MAX_HELD_BODY or self.held + len(body) > self.memory_budget:
            return None
        self.held += len(body)
        return body

    def _put(self, lane: _Lane, job: Job, body: bytes | BodyFile | None, *, in_flight: bool = False, front: bool = False) -> None:
        """Work for `job` into `lane`, at the `front` when it comes back after an attempt that
        did not finish it: its body held when it is in memory (and the budget has room), its
        size counted for flow control while it waits (`behind`) whether held or not."""
        size = len(body) if isinstance(body, bytes) else 0 if body is None else body.size
        work = _Work(job, self._hold(body if isinstance(body, bytes) else None), in_flight, size)
        self.queued += size
        lane.queued += size
        if front:
            lane.queue.appendleft(work)
        else:
            lane.queue.append(work)

    def _release(self, work: _Work, lane: _Lane) -> None:
        """`work` leaves its lane's queue: its held body and its size are no longer counted."""
        if work.body is not None:
            self.held -= len(work.body)
            work.body = None
        if work.size:
            self.queued -= work.size
            lane.queued -= work.size
            work.size = 0
            # One MAIL in per body out, as Postfix's tokens: waking every waiter at once would
            # let a burst in and put delivery behind again.
            while self._flow_waiting and not self.behind:
                waiter = self._flow_waiting.pop(0)
                if not waiter.done():
                    waiter.set_result(True)
                    break

    # --- flow control --------------------------------------------------------------------

    @property
    def behind(self) -> bool:
        """Delivery is behind acceptance: the bodies of work waiting for a connection (held in
        memory or not: a body too large to hold, or past a budget that stalled lanes filled,
        counts as well), in lanes whose connections are taking work (not stalled:
        STALLED_AFTER), take more than a FLOW_SHARE of the memory budget. Mail taken in faster
        than it leaves costs more per message (past the budget bodies are read back from the
        spool, large ones need new files; at 1 MiB, a quarter more CPU in benches/README.md),
        so the listener holds each MAIL (`listener.in_flow_delay`, like Postfix's
        in_flow_delay)."""
        limit = self.memory_budget // FLOW_SHARE
        if self.queued <= limit:
            return False
        since = time.monotonic() - self.stalled_after
        return sum(lane.queued for lane in self._lanes.values() if lane.took > since) > limit

    async def caught_up(self, timeout: float) -> bool:
        """Until delivery is no longer `behind` (True) or `timeout` seconds (False; also
        False at once when delivery stops)."""
        if self._stopping:
            return False
        self._watch_stalls()
        return await _wait(self._flow_waiting, timeout)

    def _watch_stalls(self) -> None:
        """While MAILs wait, a timer for the moment the next lane that counts would stall:
        `behind` may turn false then with no body leaving, and the waits end at that moment
        rather than at their `in_flow_delay`."""
        if self._stall_timer is not None:
            return
        now = time.monotonic()
        since = now - self.stalled_after
        took = [lane.took for lane in self._lanes.values() if lane.queued and lane.took > since]
        if took:
            # A hair late, so that the lane has stalled by then on any clock.
            delay = min(took) + self.stalled_after - now + 0.01
            self._stall_timer = asyncio.get_running_loop().call_later(delay, self._on_stall)

    def _on_stall(self) -> None:
        self._stall_timer = None
        if not self._flow_waiting:
            return
        if self.behind:
            self._watch_stalls()
            return
        # No longer behind because a lane stalled, not because a body left: no body will come
        # out to let them in one by one, so every wait ends.
        waiting, self._flow_waiting = self._flow_waiting, []
        _wake(waiting)

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
        waiting, self._flow_waiting = self._flow_waiting, []
        _wake(waiting, False)
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for lane in self._lanes.values():
            for work in lane.queue:
                self._release(work, lane)
            lane.queue.clear()
            lane.wake()
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
                # The first message is made ready (its body found, its recipients marked in
                # flight) before a connection is opened: a failure on our side (the spool
                # unwritable, the disk full) never turns into connections carrying no mail.
                first = await self._next_ready(lane)
                if first is None:
                    continue
                try:
                    session = await self.connector.open(lane.pool, lane.destination)
                except DestinationError as error:
                    # The destination is unreachable for everything waiting in this lane.
                    lane.queue.appendleft(first.work)  # its body was released: none is kept
                    await self._fail_lane(lane, error.reply)
                    continue
                except Exception:
                    # A failure on our side (a bug, a name the resolver cannot encode): the
                    # work is deferred like any temporary failure, never left in the lane.
                    log.exception("pool=%s destination=%s: could not open a connection", lane.pool.name, lane.destination)
                    lane.queue.appendleft(first.work)
                    await self._fail_lane(lane, LOCAL_FAILURE)
                    continue
                try:
                    await self._serve(lane, session, first)
                finally:
                    await self.connector.close(session)
        finally:
            lane.active -= 1
            self._forget_if_unused(lane)

    async def _fail_lane(self, lane: _Lane, reply: str) -> None:
        """Records `reply` for every recipient waiting in `lane`."""
        works = list(lane.queue)
        lane.queue.clear()
        for work in works:
            self._release(work, lane)
            self._log(work, lane, None, None, reply)
            await self._settle(work, {rid: (reply, None) for rid, _ in work.job.recipients})

    async def _next_ready(self, lane: _Lane) -> _Ready | None:
        """The next work of the lane with its body and its recipients marked in flight, or None
        when that failed on our side (then recorded as a local failure and retried later)."""
        work = lane.queue.popleft()
        lane.took = time.monotonic()
        job = work.job
        held = work.body
        self._release(work, lane)
        try:
            body = held if held is not None else await self.spool.stored(job.message)
            if not work.in_flight:
                await self.spool.mark_in_flight(rid for rid, _ in job.recipients)
        except Exception:
            log.exception("queue_id=%s: could not prepare the delivery attempt", job.queue_id)
            self._log(work, lane, None, None, LOCAL_FAILURE)
            await self._settle(work, {rid: (LOCAL_FAILURE, None) for rid, _ in job.recipients})
            return None
        return _Ready(work, body)

    async def _serve(self, lane: _Lane, session: Session, ready: _Ready | None) -> None:
        sent = 0
        while sent < lane.pool.max_messages_per_connection and not self._stopping:
            if ready is None:
                if not lane.queue:
                    lane.idle += 1
                    try:
                        if not await lane.wait(lane.pool.idle_timeout):
                            return
                    finally:
                        lane.idle -= 1
                    continue
                ready = await self._next_ready(lane)
                if ready is None:
                    return  # our side is failing: close the connection rather than hold it idle
            try:
                alive = await self._transaction(lane, session, ready)
            except Exception:
                # A local failure (a bug): record it as a temporary failure so the attempt is
                # counted and retried with backoff, on a fresh connection.
                work = ready.work
                log.exception("queue_id=%s: delivery attempt failed locally", work.job.queue_id)
                self._log(work, lane, session.source, session.host, LOCAL_FAILURE)
                self._spawn(self._settle(work, {rid: (LOCAL_FAILURE, None) for rid, _ in work.job.recipients}))
                return
            ready = None
            sent += 1
            if not alive:
                return

    async def _transaction(self, lane: _Lane, session: Session, ready: _Ready) -> bool:
        """One mail transaction for a prepared work. Returns False when the connection is
        unusable."""
        work, body = ready.work, ready.body
        job = work.job
        if not self.connector.may_send(lane.pool.name, session.source):
            # Drained while the connection was open (a blocklist listing), or at its warm-up
            # limit: not one more message from it. The work goes back to the front; the next
            # connection binds another address of the pool.
            log.info("pool=%s source=%s drained or at its warm-up limit: closing the connection to %s", lane.pool.name, session.source, session.host)
            self._put(lane, job, body, front=True)
            return False
        attempt = await send(session, job.sender, job.recipients, body, self.spool)
        if attempt.reconnect:
            self._put(lane, job, body, front=True)
            return False
        if attempt.untried:
            # The server takes no more recipients in this transaction: the rest go first in the
            # next one, on this connection, without counting an attempt.
            untried = set(attempt.untried)
            rest = tuple(r for r in job.recipients if r[0] in untried)
            self._put(lane, replace(job, recipients=rest), body, front=True)
            work = _Work(replace(job, recipients=tuple(r for r in job.recipients if r[0] not in untried)))
        self._log(work, lane, session.source, session.host, attempt.final, attempt.replies)
        # Outcomes commit in the background: the connection moves on to the next message.
        self._spawn(self._settle(work, attempt.replies, body if isinstance(body, bytes) else None))
        return attempt.alive

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
        info_line(
            log,
            "attempt queue_id=%s message_id=%s pool=%s source=%s host=%s reply=%s recipients=%d%s",
            work.job.queue_id,
            work.job.header_message_id or "-",
            lane.pool.name,
            source or "-",
            host or lane.destination,
            one_line_ascii(reply)[:200],
            len(work.job.recipients),
            refused,
        )
        if self.on_attempt is not None:
            try:
                self.on_attempt(
                    queue_id=work.job.queue_id, pool=lane.pool.name, source=source, destination=lane.destination,
                    host=host, reply=reply, replies=replies, recipients=len(work.job.recipients),
                )
            except Exception:
                log.exception("on_attempt hook failed for queue_id=%s", work.job.queue_id)

    # --- outcomes ------------------------------------------------------------------------

    async def _settle(self, work: _Work, replies: Mapping[int, tuple[str, str | None]], body: bytes | None = None) -> None:
        job = work.job
        try:
            recorded = await self.recorder.record(job, replies, body if body is not None else work.body)
        except Exception:
            # The outcome could not be stored: the spool still says queued or in flight, so
            # attempt again later (a duplicate at worst, never a loss).
            log.exception("queue_id=%s: could not record the outcome", job.queue_id)
            if not self._stopping:
                self._later(self._pool_of(job).retry.initial, job, None)
            return
        for bounce, dsn in recorded.bounces:
            log.info("bounce queue_id=%s for=%s dsn_queue_id=%s pool=%s", job.queue_id, job.mail_from, bounce.queue_id, bounce.pool)
            self._enqueue(bounce, dsn)
        if recorded.retry is not None and not self._stopping:
            self._later(recorded.retry.next_attempt - self.clock(), recorded.retry, None)
