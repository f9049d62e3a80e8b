"""How many messages each warming-up source address sent today, over every worker of the relay
(and every node naming the same Redis): the counts the warm-up schedules
(``[pools.NAME] source_addresses = [{ address, warmup }]``) are checked against
(:mod:`deliverypool.outbound.sources`).

One operation matters: `WarmupCounter.claim` atomically grants up to `want` messages of an
address's day, never more than what is left of its cap, and counts them at once; a worker then
sends that many without asking again. A claim takes at most a quarter of what is left
(`CLAIM_SHARE`), at least one, so that the workers share the last messages of a day instead of
one of them holding them all. What a worker does not use is handed back with `release` when it
stops; a day's claims it still held when the day ended stay counted (the cap is never exceeded,
at worst a few messages are not sent).

Two implementations, as the sender limits have (state/backends.py): `SqliteWarmupCounter`, the
table ``warmup_sent`` of the state database ``SPOOL/state.sqlite3``, and `RedisWarmupCounter`,
one key per address and day with a Lua script (``[state] redis``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final, Protocol

from deliverypool.state.tables import StateTables

__all__ = ["CLAIM_SHARE", "RedisWarmupCounter", "SqliteWarmupCounter", "WarmupCounter", "granted"]

CLAIM_SHARE: Final = 4
# Days of counts kept: today's and yesterday's (a claim made just before midnight).
KEEP_DAYS: Final = 2

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS warmup_sent (
    address TEXT NOT NULL, day INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (address, day)
) WITHOUT ROWID
"""


def granted(want: int, cap: int, count: int) -> int:
    """What a claim of `want` gets when `count` of `cap` are used: at most a CLAIM_SHARE-th of
    what is left, at least one while anything is."""
    left = cap - count
    if left <= 0 or want <= 0:
        return 0
    return min(want, left, max(1, left // CLAIM_SHARE))


class WarmupCounter(Protocol):
    """Messages per address and day (a day: days since the epoch, UTC)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, address: str, day: int, want: int, cap: int) -> int:
        """Counts and returns up to `want` more messages of `address` on `day` (`granted`)."""

    async def release(self, address: str, day: int, unused: int) -> None:
        """Uncounts `unused` messages claimed and not sent."""

    async def sent(self, address: str, day: int) -> int:
        """Messages counted for `address` on `day`."""


class SqliteWarmupCounter:
    """The ``warmup_sent`` table of the state database; each call on a thread (the tables'
    connection is used by one thread at a time)."""

    def __init__(self, path: Path) -> None:
        self.tables = _WarmupTables(path)

    async def open(self) -> None:
        await asyncio.to_thread(self.tables.open)

    async def close(self) -> None:
        await asyncio.to_thread(self.tables.close)

    async def claim(self, address: str, day: int, want: int, cap: int) -> int:
        return await asyncio.to_thread(self.tables.claim, address, day, want, cap)

    async def release(self, address: str, day: int, unused: int) -> None:
        if unused > 0:
            await asyncio.to_thread(self.tables.release, address, day, unused)

    async def sent(self, address: str, day: int) -> int:
        return await asyncio.to_thread(self.tables.sent, address, day)


class _WarmupTables(StateTables):
    schema = _SCHEMA
    what = "the warm-up counter"

    def claim(self, address: str, day: int, want: int, cap: int) -> int:
        with self._writing() as conn:
            row = conn.execute("SELECT count FROM warmup_sent WHERE address = ? AND day = ?", (address, day)).fetchone()
            grant = granted(want, cap, int(row[0]) if row else 0)
            if grant:
                conn.execute(
                    "INSERT INTO warmup_sent VALUES (?, ?, ?) ON CONFLICT (address, day) DO UPDATE SET count = count + excluded.count",
                    (address, day, grant),
                )
            conn.execute("DELETE FROM warmup_sent WHERE day <= ?", (day - KEEP_DAYS,))
            return grant

    def release(self, address: str, day: int, unused: int) -> None:
        with self._writing() as conn:
            conn.execute("UPDATE warmup_sent SET count = max(count - ?, 0) WHERE address = ? AND day = ?", (unused, address, day))

    def sent(self, address: str, day: int) -> int:
        with self._lock:
            row = self._db().execute("SELECT count FROM warmup_sent WHERE address = ? AND day = ?", (address, day)).fetchone()
        return int(row[0]) if row else 0


# KEYS: the address's counter for the day. ARGV: want, cap, CLAIM_SHARE, seconds to keep the key.
_CLAIM: Final = """
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
local want, cap, share = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local left = cap - count
if left <= 0 or want <= 0 then return 0 end
local grant = math.min(want, left, math.max(1, math.floor(left / share)))
redis.call('INCRBY', KEYS[1], grant)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[4]))
return grant
"""

# KEYS: the counter. ARGV: the unused count.
_RELEASE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('DECRBY', KEYS[1], tonumber(ARGV[1])) < 0 then redis.call('SET', KEYS[1], 0, 'KEEPTTL') end
end
return 0
"""


class RedisWarmupCounter:
    """One key per address and day (``PREFIX`` ``w:ADDRESS:DAY``), expiring two days later."""

    def __init__(self, url: str, *, prefix: str = "deliverypool:", timeout: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._client: Any = None
        self._claim: Any = None
        self._release: Any = None

    async def open(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout, retry=Retry(NoBackoff(), 0), decode_responses=True
        )
        self._claim = self._client.register_script(_CLAIM)
        self._release = self._client.register_script(_RELEASE)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _key(self, address: str, day: int) -> str:
        return f"{self.prefix}w:{address}:{day}"

    async def claim(self, address: str, day: int, want: int, cap: int) -> int:
        reply = await asyncio.wait_for(self._claim(keys=[self._key(address, day)], args=[want, cap, CLAIM_SHARE, KEEP_DAYS * 86400]), self.timeout)
        return int(reply)

    async def release(self, address: str, day: int, unused: int) -> None:
        if unused > 0:
            await asyncio.wait_for(self._release(keys=[self._key(address, day)], args=[unused]), self.timeout)

    async def sent(self, address: str, day: int) -> int:
        value = await asyncio.wait_for(self._client.get(self._key(address, day)), self.timeout)
        return int(value or 0)
