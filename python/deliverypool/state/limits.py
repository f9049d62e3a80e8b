"""Outbound sender limits: which windows a recipient counts against, what reaching a limit
does, and which backend keeps the counts (EOP's outbound spam policy; docs/operations/sender-limits.md).

The relay asks `Limiter.check` at every RCPT. A sender is the AUTH identity when there is one,
else the envelope sender (:func:`deliverypool.mail.address.sender_key`); null-sender mail (DSNs)
never counts and is never refused. A recipient counts against

* ``external_per_hour`` or ``internal_per_hour`` of its sender (internal: the recipient's
  domain is one of the tenant's ``domains``, or under one), a sliding hour;
* ``per_day`` of its sender, a sliding 24 hours;
* ``tenant_per_day`` of the sender's tenant, a sliding 24 hours;

with the tenant's ``[tenants.NAME.limits]`` over ``[limits]``. The recipient that would exceed a
sender limit is refused with ``550 5.1.8 Access denied, bad outbound sender`` and the sender is
restricted (``block-until-tomorrow``: until 00:00 UTC; ``block``: until released), so that
everything it tries afterwards is refused the same way; with ``alert`` the mail flows and an
alert fires once per sender and window. The tenant limit refuses (or alerts) while the tenant's
window is full, and restricts nobody.

With ``[state] redis`` the counts live in Redis; when it cannot be reached, the relay counts on
this node alone in its state database (``fail = "open"``) or answers ``451 4.3.0``
(``"closed"``), tells its listener (the ``state-backend-unavailable`` alert), and tries Redis
again every ``retry_interval``; restrictions made meanwhile are copied to Redis when it is
back. A check never raises into the SMTP session.

A sender far from its limits is checked in leases (``[state] lease``): a check counts up to
``lease`` recipients ahead, at most a 64th of the smallest headroom (state/backends.py), and
the worker accepts that many more recipients of the same sender and windows without a round
trip, for ``lease_time`` at most; what is left is handed back (`Backend.refund`). Leased
recipients are counted when leased, so no window ever holds more than its limit; near a limit
there is no lease and each recipient is checked on its own, so a restriction happens at the
exact count. A restriction made elsewhere while this worker holds a lease takes effect here
when the lease ends (within ``lease_time``); those recipients were counted within the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from deliverypool.config import LimitsConfig, RelayConfig
from deliverypool.mail.address import domain_of, sender_key
from deliverypool.routing.tenants import Tenants
from deliverypool.state.backends import (
    Backend,
    DAY,
    HOUR,
    BackendUnavailable,
    Check,
    Outcome,
    RedisBackend,
    Restriction,
    SqliteBackend,
    Window,
)
from deliverypool.state.observations import STATE_DATABASE

__all__ = ["REFUSED", "UNAVAILABLE", "Limiter", "LimitsListener", "limiter_for", "next_midnight"]

log = logging.getLogger("deliverypool.limits")

REFUSED: Final = "550 5.1.8 Access denied, bad outbound sender"
UNAVAILABLE: Final = "451 4.3.0 Sender limits temporarily unavailable; try again later"
DEFAULT_ACTION: Final = "block-until-tomorrow"
# The same senders come back at every RCPT: their one form is parsed once.
_sender_key = functools.lru_cache(maxsize=8192)(sender_key)


def next_midnight(now: float) -> float:
    """The next 00:00 UTC after `now` (epoch seconds count UTC days of 86,400 s)."""
    return (math.floor(now / DAY) + 1) * DAY


class LimitsListener(Protocol):
    """What the limiter tells the observer (events, alerts, the restricted-senders gauge)."""

    def restricted(self, restriction: Restriction) -> None: ...

    def limit_reached(self, *, sender: str, tenant: str | None, window: str, count: int, maximum: int, action: str, refused: bool, now: float) -> None: ...

    def released(self, restriction: Restriction, *, reason: str, now: float) -> None: ...

    def backend_unavailable(self, *, backend: str, error: str, fail: str, now: float) -> None: ...

    def backend_available(self, *, backend: str, now: float) -> None: ...

    def snapshot(self, restrictions: list[Restriction], *, now: float) -> None: ...


@dataclass(frozen=True, slots=True)
class _Policy:
    external_per_hour: int
    internal_per_hour: int
    per_day: int
    tenant_per_day: int
    action: str


@dataclass(slots=True)
class _Lease:
    """Recipients counted ahead by `check` in `backend`: `left` of them may still be accepted
    until `until`."""

    check: Check
    backend: Backend
    left: int
    until: float


class Limiter:
    """The sender limits of one relay process over `backend` (and, with Redis, `local`, the
    node's own state database while Redis is unreachable)."""

    def __init__(
        self,
        config: RelayConfig,
        tenants: Tenants,
        backend: Backend,
        *,
        local: SqliteBackend | None = None,
        leader: bool = True,
        clock: Callable[[], float] = time.time,
        listener: LimitsListener | None = None,
    ) -> None:
        self.config = config
        self.tenants = tenants
        self.backend = backend
        self.local = local
        self.leader = leader
        self.clock = clock
        self.listener = listener
        self.fail = config.state.fail
        self.down_since: float | None = None
        self.down_error = ""
        self.refused = 0
        self.accepted = 0
        self._policies: dict[str | None, _Policy] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: asyncio.Task[None] | None = None
        self._errors = 0
        self.lease = config.state.lease
        self.lease_time = config.state.lease_time
        self._leases: dict[tuple[str, tuple[Window, ...]], _Lease] = {}
        self._refunds: set[asyncio.Task[None]] = set()
        self.backend_checks = 0

    # --- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.local is not None:
            await self.local.open()
        await self.backend.open()
        if self.local is not None:
            # Redis down at the start is the same as Redis going down.
            try:
                await self.backend.restrictions(self.clock())
            except BackendUnavailable as exc:
                self._went_down(str(exc))
        if self.leader:
            self._tasks.append(asyncio.ensure_future(self._sweeping(self.config.observe.flush_interval)))
        if self.lease:
            self._tasks.append(asyncio.ensure_future(self._ending_leases()))

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._probe] if self._probe is not None else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        self._probe = None
        # What is left of the leases goes back before the backends close.
        for key in list(self._leases):
            self._end_lease(key)
        if self._refunds:
            await asyncio.gather(*self._refunds, return_exceptions=True)
        await self.backend.close()
        if self.local is not None:
            await self.local.close()

    # --- the policy ------------------------------------------------------------------------------

    def policy(self, tenant: str | None) -> _Policy:
        policy = self._policies.get(tenant)
        if policy is None:
            limits: LimitsConfig = self.config.limits
            own = self.config.tenants[tenant].limits if tenant is not None and tenant in self.config.tenants else None
            if own is not None:
                limits = own.over(limits)
            policy = _Policy(
                limits.external_per_hour or 0, limits.internal_per_hour or 0, limits.per_day or 0, limits.tenant_per_day or 0,
                limits.action or DEFAULT_ACTION,
            )
            self._policies[tenant] = policy
        return policy

    def windows(self, sender: str, tenant: str | None, recipient: str) -> tuple[Window, ...]:
        """The windows a recipient of `sender` (of `tenant`) counts against."""
        policy = self.policy(tenant)
        internal = tenant is not None and self.tenants.owner_of(domain_of(recipient)) == tenant
        windows = []
        hourly = policy.internal_per_hour if internal else policy.external_per_hour
        if hourly:
            windows.append(Window("internal_per_hour" if internal else "external_per_hour", "s", sender, HOUR, hourly))
        if policy.per_day:
            windows.append(Window("per_day", "s", sender, DAY, policy.per_day))
        if policy.tenant_per_day and tenant is not None:
            windows.append(Window("tenant_per_day", "t", tenant, DAY, policy.tenant_per_day))
        return tuple(windows)

    # --- the check at RCPT -----------------------------------------------------------------------

    async def check(self, *, login: str | None, mail_from: str, recipient: str, peer: str | None) -> str | None:
        """The reply refusing `recipient` (550 5.1.8, or 451 4.3.0 while the state cannot be
        reached with ``fail = "closed"``), or None to accept it. Never raises."""
        if mail_from in ("", "<>"):
            return None
        sender = _sender_key(login if login is not None else mail_from)
        tenant = self.tenants.resolve(login, peer)
        windows = self.windows(sender, tenant, recipient)
        if not windows:
            return None
        policy = self.policy(tenant)
        now = self.clock()
        key = (sender, windows)
        lease = self._leases.get(key)
        if lease is not None:
            if lease.left > 0 and now < lease.until and lease.backend is self._current():
                lease.left -= 1
                self.accepted += 1
                return None
            self._end_lease(key)
        check = Check(
            sender, tenant, windows, policy.action, now, next_midnight(now) if policy.action == DEFAULT_ACTION else None,
            lease=self.lease if policy.action != "alert" else 0,
        )
        try:
            outcome, backend = await self._count(check)
        except Exception:
            self._errors += 1
            if self._errors <= 10 or self._errors % 1000 == 0:
                log.exception("sender limits: the check failed (%d errors); fail %s", self._errors, self.fail)
            return UNAVAILABLE if self.fail == "closed" else None
        if outcome is None:
            return UNAVAILABLE
        self._tell(outcome, check)
        if outcome.accepted:
            self.accepted += 1
            if outcome.granted > 1:
                if backend is not self._current():  # Redis went away or came back meanwhile: no lease
                    self._refund(backend, check, outcome.granted - 1)
                else:
                    self._end_lease(key)
                    self._leases[key] = _Lease(check, backend, outcome.granted - 1, now + self.lease_time)
            return None
        self.refused += 1
        log.info("refused rcpt=%s sender=%s tenant=%s limit=%s", recipient, sender, tenant or "-", outcome.window)
        return REFUSED

    # --- leases ----------------------------------------------------------------------------------

    def _end_lease(self, key: tuple[str, tuple[Window, ...]]) -> None:
        lease = self._leases.pop(key, None)
        if lease is not None and lease.left > 0:
            self._refund(lease.backend, lease.check, lease.left)

    def _refund(self, backend: Backend, check: Check, unused: int) -> None:
        async def refund() -> None:
            try:
                await backend.refund(check, unused)
            except Exception as exc:  # they stay counted: the sender can only be held back early
                log.debug("sender limits: %d leased recipient(s) of %s not handed back: %s", unused, check.sender, exc)

        task = asyncio.ensure_future(refund())
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)

    async def _ending_leases(self) -> None:
        while True:
            await asyncio.sleep(self.lease_time)
            now = self.clock()
            for key in [k for k, lease in self._leases.items() if lease.until <= now]:
                self._end_lease(key)

    async def _count(self, check: Check) -> tuple[Outcome | None, Backend]:
        """The outcome (None: refuse with 451, Redis away and ``fail = "closed"``) and the backend
        that counted it."""
        self.backend_checks += 1
        if self.local is None:
            return await self.backend.count(check), self.backend
        if self.down_since is None:
            try:
                return await self.backend.count(check), self.backend
            except BackendUnavailable as exc:
                self._went_down(str(exc))
        if self.fail == "closed":
            return None, self.local
        return await self.local.count(check), self.local

    def _tell(self, outcome: Outcome, check: Check) -> None:
        listener = self.listener
        if outcome.lifted is not None:
            log.info("sender %s: restriction ended (%s)", outcome.lifted.sender, outcome.lifted.window)
            if listener is not None:
                listener.released(outcome.lifted, reason="expired", now=check.now)
        if outcome.restricted_now and outcome.restriction is not None:
            r = outcome.restriction
            log.warning("sender %s restricted: %s %d/%d tenant=%s action=%s", r.sender, r.window, r.count, r.maximum, r.tenant or "-", r.action)
            if listener is not None:
                listener.restricted(r)
        for window, count, maximum in outcome.alerts:
            scope_owner = check.sender if window != "tenant_per_day" else "*"
            log.warning("limit %s reached: sender %s tenant=%s %d/%d action=%s", window, scope_owner, check.tenant or "-", count, maximum, check.action)
            if listener is not None:
                listener.limit_reached(
                    sender=scope_owner, tenant=check.tenant, window=window, count=count, maximum=maximum, action=check.action,
                    refused=not outcome.accepted, now=check.now,
                )

    # --- Redis down and back ---------------------------------------------------------------------

    def _went_down(self, error: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = self.clock()
        self.down_error = error
        log.error("sender limits: %s unreachable (%s); %s", self._backend_label(), error,
                  "counting on this node alone" if self.fail == "open" else "answering 451 4.3.0")
        if self.listener is not None:
            self.listener.backend_unavailable(backend=self._backend_label(), error=error, fail=self.fail, now=self.down_since)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._probing())

    def _backend_label(self) -> str:
        url = getattr(self.backend, "url", self.backend.name)
        return str(url)

    async def _probing(self) -> None:
        backend = self.backend
        assert isinstance(backend, RedisBackend) and self.local is not None
        while True:
            await asyncio.sleep(self.config.state.retry_interval)
            try:
                await backend.ping()
                # What was restricted here meanwhile is restricted everywhere from now on.
                for restriction in await self.local.restrictions(self.clock()):
                    await backend.restrict(restriction)
            except BackendUnavailable:
                continue
            except Exception:
                log.exception("sender limits: probing %s failed", self._backend_label())
                continue
            self.down_since = None
            log.warning("sender limits: %s is back; counting there again", self._backend_label())
            if self.listener is not None:
                self.listener.backend_available(backend=self._backend_label(), now=self.clock())
            return

    # --- restrictions: list, release, the leader's sweep -----------------------------------------

    def _current(self) -> Backend:
        return self.local if self.down_since is not None and self.local is not None else self.backend

    async def restrictions(self, tenant: str | None = None) -> list[Restriction]:
        found = await self._current().restrictions(self.clock())
        return [r for r in found if tenant is None or r.tenant == tenant]

    async def release(self, identity: str) -> Restriction | None:
        """Lifts the restriction of the sender `identity` (an address or AUTH identity, in any
        case) everywhere: in the shared backend and in this node's state database."""
        sender = sender_key(identity)
        for key in [k for k in self._leases if k[0] == sender]:
            self._leases.pop(key)  # its counters are forgotten with the restriction
        released = None
        if self.down_since is None:
            released = await self.backend.release(sender)
        if self.local is not None:
            released = await self.local.release(sender) or released
        if released is not None:
            log.warning("sender %s released", sender)
            if self.listener is not None:
                self.listener.released(released, reason="released", now=self.clock())
        return released

    async def sweep(self) -> list[Restriction]:
        """Lifts restrictions whose end has come, forgets old buckets and tells the listener what
        is restricted now (the leader does this every ``observe.flush_interval``)."""
        now = self.clock()
        backend = self._current()
        for restriction in await backend.lift_expired(now):
            log.info("sender %s: restriction ended (%s)", restriction.sender, restriction.window)
            if self.listener is not None:
                self.listener.released(restriction, reason="expired", now=now)
        await backend.prune(now)
        current = await backend.restrictions(now)
        if self.listener is not None:
            self.listener.snapshot(current, now=now)
        return current

    async def _sweeping(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep()
            except BackendUnavailable as exc:
                self._went_down(str(exc))
            except Exception:
                log.exception("sender limits: the sweep failed")


def enabled(config: RelayConfig) -> bool:
    """Whether any limit is set, in ``[limits]`` or for a tenant."""
    return config.limits.enabled or any(t.limits is not None and t.limits.enabled for t in config.tenants.values())


def backends_for(config: RelayConfig, spool_root: Path) -> tuple[Backend, SqliteBackend | None]:
    """The backend of `config` and, with Redis, the node's state database to fall back on."""
    local = SqliteBackend(spool_root / STATE_DATABASE)
    state = config.state
    if state.redis is None:
        return local, None
    return RedisBackend(state.redis, prefix=state.key_prefix, timeout=state.timeout), local


def limiter_for(
    config: RelayConfig,
    tenants: Tenants,
    *,
    spool_root: Path,
    leader: bool,
    listener: LimitsListener | None = None,
    clock: Callable[[], float] = time.time,
) -> Limiter | None:
    """The limiter of a relay process, or None when no limit is configured."""
    if not enabled(config):
        return None
    backend, local = backends_for(config, spool_root)
    return Limiter(config, tenants, backend, local=local, leader=leader, listener=listener, clock=clock)
