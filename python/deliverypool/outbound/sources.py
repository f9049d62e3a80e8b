"""Which of a pool's source addresses a connection binds, and whether it may carry one more
message: weighted rotation, drained addresses (the blocklist watch) and warm-up schedules.

**Weighted rotation.** Each new connection of a pool to a destination of an address family
takes the next address of that family in a smooth weighted round robin (the one nginx uses):
with weights 3 and 1 the order is a, a, b, a, and any run of connections is shared by weight
as closely as whole connections allow. Only the addresses usable now take part, so when one
drops out its share goes to the others in proportion to their weights.

**Usable now** means not drained by the blocklist watch (``Connector.drained``) and, for an
address with a warm-up schedule, with some of today's allowance left. The allowance is counted
over every worker of the relay (:mod:`deliverypool.state.warmup`): each worker claims a few
messages at a time and sends them without asking again, and claims more when they are used.
An address at its cap for the day, or whose count cannot be had (Redis away), is left out until
the next day (or until a claim succeeds): its share goes to the pool's other addresses. Never
to another pool's: when no address of the pool is usable, the mail waits (is deferred), as it
does when every address is drained.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from deliverypool.config import PoolConfig, RelayConfig, SourceAddress, WarmupConfig
from deliverypool.config.model import IPAddress
from deliverypool.state.warmup import RedisWarmupCounter, SqliteWarmupCounter, WarmupCounter

__all__ = ["SourcePicker", "WarmupLedger", "warmup_ledger_for"]

log = logging.getLogger("deliverypool.delivery")

# Messages one claim asks for (a claim gets at most a quarter of what is left of the day).
CLAIM: Final = 64
# After a claim failed (the state backend away), the address waits this long before the next.
RETRY_AFTER: Final = 5.0
DAY: Final = 86400
EPOCH: Final = datetime.date(1970, 1, 1)


class SourcePicker:
    """Weighted rotation among a pool's usable addresses (see the module documentation)."""

    def __init__(self, warmup: WarmupLedger | None = None) -> None:
        self.warmup = warmup
        # (pool, IP version) -> each address's current weight in the rotation.
        self._current: dict[tuple[str, int], dict[IPAddress, int]] = {}

    def pick(self, pool: PoolConfig, version: int, drained: Callable[[str, str], bool]) -> SourceAddress | None:
        """The next address of `pool` of IP `version` that is usable now, or None."""
        warmup = self.warmup
        candidates = [
            s
            for s in pool.source_addresses
            if s.address.version == version
            and not drained(pool.name, str(s.address))
            and (warmup is None or warmup.available(s.address))
        ]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        current = self._current.setdefault((pool.name, version), {})
        total = 0
        best: SourceAddress | None = None
        best_weight = 0
        for source in candidates:
            weight = current.get(source.address, 0) + source.weight
            current[source.address] = weight
            total += source.weight
            if best is None or weight > best_weight:
                best, best_weight = source, weight
        assert best is not None
        current[best.address] = best_weight - total
        return best

    def take(self, address: str) -> bool:
        """Counts one message from `address`; False when its warm-up allows none now."""
        return self.warmup is None or self.warmup.take(address)


@dataclass
class _Allowance:
    schedule: WarmupConfig
    day: int = -1
    # Today's cap; None: no cap (the schedule is over).
    cap: int | None = 0
    # Messages claimed and not yet sent today; None: no cap today (the schedule is over).
    left: int | None = 0
    # Nothing more to claim today (the cap is reached, or it is 0 before the start).
    spent: bool = False
    claiming: bool = False
    retry_at: float = 0.0


class WarmupLedger:
    """Today's allowance of each warming-up address in this worker, claimed from `counter`."""

    def __init__(self, schedules: Mapping[IPAddress, WarmupConfig], counter: WarmupCounter, *, clock: Callable[[], float] = time.time) -> None:
        self.counter = counter
        self.clock = clock
        self._addresses = {str(address): address for address in schedules}
        self._allowances = {address: _Allowance(schedule) for address, schedule in schedules.items()}
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = False

    async def start(self) -> None:
        """Opens the counter and claims each address's first messages of the day."""
        await self.counter.open()
        self._open = True
        await asyncio.gather(*(self._claim(address) for address in self._allowances))

    async def stop(self) -> None:
        """Hands back what this worker claimed and did not send, then closes the counter."""
        self._open = False
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for address, allowance in self._allowances.items():
            if allowance.left and allowance.day == self._today():
                try:
                    await self.counter.release(str(address), allowance.day, allowance.left)
                except Exception as error:  # the counts stay conservative: never above the cap
                    log.warning("warm-up: could not hand back %d unsent messages of %s: %s", allowance.left, address, error)
        await self.counter.close()

    def _today(self) -> int:
        return int(self.clock() // DAY)

    def available(self, address: IPAddress) -> bool:
        """Whether `address` may carry a message now (True for an address without warm-up)."""
        allowance = self._allowances.get(address)
        if allowance is None:
            return True
        self._roll(allowance)
        if allowance.left is None or allowance.left > 0:
            return True
        if not allowance.spent and not allowance.claiming and self.clock() >= allowance.retry_at:
            self._spawn(address)
        return False

    def take(self, source: str) -> bool:
        """Counts one message from `source`; False when it has no allowance now (its share goes
        to the pool's other addresses)."""
        address = self._addresses.get(source)
        if address is None:
            return True
        if not self.available(address):
            return False
        allowance = self._allowances[address]
        if allowance.left is not None:
            allowance.left -= 1
            if allowance.left == 0:
                self.available(address)  # claims the next messages already
        return True

    def _spawn(self, address: IPAddress) -> None:
        if not self._open:
            return
        task = asyncio.ensure_future(self._claim(address))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _roll(self, allowance: _Allowance) -> None:
        """Starts a new day when one has begun: what was claimed yesterday and not sent stays
        counted there."""
        today = self._today()
        if allowance.day == today:
            return
        allowance.day = today
        allowance.cap = cap = allowance.schedule.cap(_date(today))
        allowance.left = None if cap is None else 0
        allowance.spent = cap == 0

    async def _claim(self, address: IPAddress) -> None:
        allowance = self._allowances[address]
        self._roll(allowance)
        today, cap = allowance.day, allowance.cap
        if cap is None or allowance.spent:
            return
        allowance.claiming = True
        try:
            grant = await self.counter.claim(str(address), today, CLAIM, cap)
        except Exception as error:
            allowance.retry_at = self.clock() + RETRY_AFTER
            log.warning("warm-up: no count for %s (%s): the address is left out for %gs", address, error, RETRY_AFTER)
            return
        finally:
            allowance.claiming = False
        if allowance.day != today:
            return  # the day ended during the claim: what it got stays counted there
        if grant == 0:
            allowance.spent = True
            log.info("warm-up: %s reached today's %d messages; the pool's other addresses carry its share", address, cap)
            return
        allowance.left = (allowance.left or 0) + grant

    def state(self) -> dict[str, dict[str, int | None]]:
        """Each address's allowance left in this worker (None: no cap today) and today's cap."""
        for allowance in self._allowances.values():
            self._roll(allowance)
        return {str(address): {"left": allowance.left, "cap": allowance.cap} for address, allowance in self._allowances.items()}


def _date(day: int) -> datetime.date:
    """The UTC date of `day` days since the epoch."""
    return EPOCH + datetime.timedelta(days=day)


def warmup_ledger_for(config: RelayConfig, spool_root: Path, *, clock: Callable[[], float] = time.time) -> WarmupLedger | None:
    """The ledger of a relay or milter process, or None when no address has a warm-up."""
    schedules = {s.address: s.warmup for pool in config.pools.values() for s in pool.source_addresses if s.warmup is not None}
    if not schedules:
        return None
    state = config.state
    counter: WarmupCounter
    if state.redis is not None:
        counter = RedisWarmupCounter(state.redis, prefix=state.key_prefix, timeout=state.timeout)
    else:
        from deliverypool.state.observations import STATE_DATABASE

        counter = SqliteWarmupCounter(spool_root / STATE_DATABASE)
    return WarmupLedger(schedules, counter, clock=clock)
