"""Where sender counters and restrictions live: one interface (`Backend`), two implementations.

* `SqliteBackend` — the embedded default: tables ``limits_*`` in the state database
  ``SPOOL/state.sqlite3`` that every worker of the relay opens (WAL, ``busy_timeout``). Each
  worker runs its statements on one thread of its own, and the checks that queue up while a
  transaction runs go into the next one together (group commit), so the event loop never
  waits on SQLite and two workers never read-then-write apart: every check is one ``BEGIN
  IMMEDIATE`` transaction, serialised by SQLite's write lock.
* `RedisBackend` — ``[state] redis``: the same, in Redis, shared by every node. One Lua
  script checks the restriction and every window of a recipient and counts it, atomically, in
  one round trip (EVALSHA).

**The counting algorithm: a sliding window counter with fine buckets.** Each window (an hour,
24 hours) is counted in ``BUCKETS`` (60) buckets of a 60th of the window (one minute for the
hour, 24 minutes for the day), and a window's count is the sum of its ``BUCKETS + 1`` most
recent buckets, the current one included. So a recipient is counted for at least the whole
window and at most one bucket more: **no sliding window of the configured length ever holds
more recipients than the limit** (the check and the increment are one atomic step, so this
holds across workers and nodes), and a sender may be held back by recipients up to one bucket
(1/60 of the window) older than the window. Counts are exact integers, not estimates.

A recipient is counted against all its windows or none: when it would exceed one limit with
a blocking action, it is refused and counted nowhere.

**Leases.** A check may ask to count up to ``Check.lease`` more recipients ahead (the
`Limiter` then accepts that many of the same sender and windows without asking the backend).
The backend grants ``min(lease, (headroom - 1) // LEASE_SHARE)`` of them, where headroom is the
smallest ``limit - count`` of the check's windows: a lease never takes more than a 64th of what
is left, so near a limit there is none and every recipient is checked on its own. Leased
recipients are counted at once (a window never holds more than its limit, counting them);
those not used are handed back with `refund`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import math
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from deliverypool.state.tables import connect_state, write_transaction

__all__ = [
    "BUCKETS",
    "LEASE_SHARE",
    "Backend",
    "BackendUnavailable",
    "Check",
    "Outcome",
    "RedisBackend",
    "Restriction",
    "SENDER_WINDOWS",
    "SqliteBackend",
    "Window",
]

BUCKETS: Final = 60
# A lease takes at most this fraction (1/64) of a window's headroom (see the module documentation).
LEASE_SHARE: Final = 64
HOUR: Final = 3600.0
DAY: Final = 86400.0
# The windows counted per sender (scope "s"); "tenant_per_day" is counted per tenant (scope "t").
SENDER_WINDOWS: Final = ("external_per_hour", "internal_per_hour", "per_day")
WINDOW_SECONDS: Final = {"external_per_hour": HOUR, "internal_per_hour": HOUR, "per_day": DAY, "tenant_per_day": DAY}


class BackendUnavailable(Exception):
    """The backend could not answer (Redis unreachable or too slow)."""


@dataclass(frozen=True, slots=True)
class Window:
    """One limit a recipient counts against: ``scope`` "s" (per sender) or "t" (per tenant),
    the sender or tenant ``owner``, its length in seconds and its limit."""

    name: str
    scope: str
    owner: str
    seconds: float
    limit: int

    @property
    def width(self) -> float:
        return self.seconds / BUCKETS


@dataclass(frozen=True, slots=True)
class Restriction:
    """A sender refused 550 5.1.8 since `since` until `until` (None: until released), because
    it reached `window` (`count` recipients against a limit of `maximum`)."""

    sender: str
    tenant: str | None
    window: str
    count: int
    maximum: int
    action: str
    since: float
    until: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "sender": self.sender, "tenant": self.tenant, "window": self.window, "count": self.count,
            "maximum": self.maximum, "action": self.action, "since": self.since, "until": self.until,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Restriction:
        until = data.get("until")
        return cls(
            str(data["sender"]), data.get("tenant") or None, str(data["window"]), int(data["count"]), int(data["maximum"]),
            str(data["action"]), float(data["since"]), None if until in (None, "", -1) else float(until),
        )


@dataclass(frozen=True, slots=True)
class Check:
    """One recipient of `sender` (of `tenant`) at time `now`, against `windows`; `action` and,
    for "block-until-tomorrow", the time the restriction ends (`until`)."""

    sender: str
    tenant: str | None
    windows: tuple[Window, ...]
    action: str
    now: float
    until: float | None
    lease: int = 0
    """Recipients to count ahead besides this one, if the headroom allows (see "Leases")."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a check decided. `restriction`: the one in force (refused) or the one this check
    made (`restricted_now`); `window`: the limit that refused the recipient; `alerts`: the
    windows ``(name, count, limit)`` whose limit this check is the first to report in their
    period; `lifted`: an expired restriction this check removed."""

    accepted: bool
    restriction: Restriction | None = None
    restricted_now: bool = False
    window: str | None = None
    alerts: tuple[tuple[str, int, int], ...] = ()
    lifted: Restriction | None = None
    granted: int = 1
    """Recipients counted: this one and those leased ahead (accepted checks only)."""


class Backend(Protocol):
    """Counters and restrictions (see the module documentation)."""

    name: str

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def count(self, check: Check) -> Outcome:
        """Checks the sender's restriction and the recipient against every window, and counts it
        where it is accepted, in one atomic step."""

    async def restrictions(self, now: float) -> list[Restriction]:
        """The restrictions in force at `now`, oldest first."""

    async def restrict(self, restriction: Restriction) -> bool:
        """Stores `restriction` unless the sender has one; True when stored."""

    async def release(self, sender: str) -> Restriction | None:
        """Lifts the sender's restriction and forgets its counters and alerts (a fresh start)."""

    async def lift_expired(self, now: float) -> list[Restriction]:
        """Lifts (as `release`) every restriction whose end has come."""

    async def prune(self, now: float) -> None:
        """Forgets buckets and alert marks that no window counts any more."""

    async def refund(self, check: Check, unused: int) -> None:
        """Uncounts `unused` recipients leased by `check` (from the buckets it counted them in)."""


T = TypeVar("T")


def _bucket(now: float, window: Window) -> int:
    return math.floor(now / window.width)


def lease_granted(wanted: int, headroom: int) -> int:
    """How many of `wanted` recipients a lease counts ahead with `headroom` left (one recipient,
    the checked one, already taken from it)."""
    return max(0, min(wanted, (headroom - 1) // LEASE_SHARE))


# --- SQLite ----------------------------------------------------------------------------------

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS limits_counts (
    scope TEXT NOT NULL, owner TEXT NOT NULL, window TEXT NOT NULL, bucket INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (scope, owner, window, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS limits_restrictions (
    sender TEXT PRIMARY KEY, tenant TEXT, window TEXT NOT NULL, count INTEGER NOT NULL, maximum INTEGER NOT NULL,
    action TEXT NOT NULL, since REAL NOT NULL, until REAL
);
CREATE TABLE IF NOT EXISTS limits_alerted (
    scope TEXT NOT NULL, owner TEXT NOT NULL, window TEXT NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (scope, owner, window)
) WITHOUT ROWID
"""

_COLUMNS: Final = "sender, tenant, window, count, maximum, action, since, until"


class SqliteBackend:
    """The ``limits_`` tables of a state database; see the module documentation."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending: list[tuple[Check, asyncio.Future[Outcome]]] = []
        self._draining = False
        self._lock = threading.Lock()
        self.transactions = 0

    async def open(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="limits-sqlite")
        await self._run(self._open)

    def _open(self) -> None:
        self._conn = connect_state(self.path, _SCHEMA, timeout=30.0)

    async def close(self) -> None:
        while self._draining:
            await asyncio.sleep(0.01)
        if self._executor is not None:
            if self._conn is not None:
                await self._run(self._conn.close)

            self._executor.shutdown(wait=True)
            self._executor = None
        self._conn = None

    async def _run(self, work: Callable[[], Any]) -> Any:
        if self._executor is None:
            raise RuntimeError("the SQLite state backend is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the SQLite state backend is not open")
        return self._conn

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in one transaction, on the backend's thread."""

        def run() -> T:
            conn = self._db()
            with self._lock, write_transaction(conn):
                return work(conn)

        result: T = await self._run(run)
        return result

    # --- counting: checks that queue up share a transaction ------------------------------------

    async def count(self, check: Check) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.append((check, future))
        if not self._draining:
            self._draining = True
            asyncio.ensure_future(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    outcomes = await self._run(lambda: self._count_all([check for check, _ in batch]))
                except Exception as exc:  # the database failed: each waiting check gets the error
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), outcome in zip(batch, outcomes):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._draining = False

    def _count_all(self, checks: Sequence[Check]) -> list[Outcome]:
        conn = self._db()
        with self._lock, write_transaction(conn):
            self.transactions += 1
            return [self._count(conn, check) for check in checks]

    def _count(self, conn: sqlite3.Connection, check: Check) -> Outcome:
        now = check.now
        lifted = None
        row = conn.execute(f"SELECT {_COLUMNS} FROM limits_restrictions WHERE sender = ?", (check.sender,)).fetchone()
        if row is not None:
            restriction = Restriction(*row)
            if restriction.until is None or restriction.until > now:
                return Outcome(False, restriction, window=restriction.window)
            self._forget(conn, check.sender)
            lifted = restriction
        over: list[tuple[Window, int]] = []
        headroom = math.inf
        for window in check.windows:
            low = _bucket(now, window) - BUCKETS
            (total,) = conn.execute(
                "SELECT coalesce(sum(count), 0) FROM limits_counts WHERE scope = ? AND owner = ? AND window = ? AND bucket >= ?",
                (window.scope, window.owner, window.name, low),
            ).fetchone()
            headroom = min(headroom, window.limit - total)
            if total + 1 > window.limit:
                if check.action == "alert":
                    over.append((window, total + 1))
                    continue
                if window.scope == "s":
                    restriction = Restriction(check.sender, check.tenant, window.name, total, window.limit, check.action, now, check.until)
                    conn.execute("INSERT INTO limits_restrictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _restriction_row(restriction))
                    return Outcome(False, restriction, restricted_now=True, window=window.name, lifted=lifted)
                # The tenant's volume: refused while its window is full, no restriction.
                reached = ((window.name, int(total), window.limit),) if self._mark(conn, window, now) else ()
                return Outcome(False, window=window.name, alerts=reached, lifted=lifted)
        granted = 1 + (lease_granted(check.lease, int(headroom)) if check.lease and not over and check.windows else 0)
        conn.executemany(
            "INSERT INTO limits_counts VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, owner, window, bucket) DO UPDATE SET count = count + excluded.count",
            [(w.scope, w.owner, w.name, _bucket(now, w), granted) for w in check.windows],
        )
        alerts = tuple((w.name, total, w.limit) for w, total in over if self._mark(conn, w, now))
        return Outcome(True, alerts=alerts, lifted=lifted, granted=granted)

    @staticmethod
    def _mark(conn: sqlite3.Connection, window: Window, now: float) -> bool:
        """Notes that `window`'s limit was reported; False when it was, in this period already."""
        cursor = conn.execute(
            "INSERT INTO limits_alerted VALUES (?, ?, ?, ?) ON CONFLICT (scope, owner, window)"
            " DO UPDATE SET until = excluded.until WHERE limits_alerted.until <= ?",
            (window.scope, window.owner, window.name, now + window.seconds, now),
        )
        return cursor.rowcount == 1

    @staticmethod
    def _forget(conn: sqlite3.Connection, sender: str) -> None:
        conn.execute("DELETE FROM limits_restrictions WHERE sender = ?", (sender,))
        conn.execute("DELETE FROM limits_counts WHERE scope = 's' AND owner = ?", (sender,))
        conn.execute("DELETE FROM limits_alerted WHERE scope = 's' AND owner = ?", (sender,))

    # --- restrictions ----------------------------------------------------------------------------

    async def restrictions(self, now: float) -> list[Restriction]:
        def read() -> list[Restriction]:
            with self._lock:
                rows = self._db().execute(
                    f"SELECT {_COLUMNS} FROM limits_restrictions WHERE until IS NULL OR until > ? ORDER BY since, sender", (now,)
                ).fetchall()
            return [Restriction(*row) for row in rows]

        result: list[Restriction] = await self._run(read)
        return result

    async def restrict(self, restriction: Restriction) -> bool:
        def write(conn: sqlite3.Connection) -> bool:
            return conn.execute("INSERT OR IGNORE INTO limits_restrictions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", _restriction_row(restriction)).rowcount == 1

        return await self._write(write)

    async def release(self, sender: str) -> Restriction | None:
        def write(conn: sqlite3.Connection) -> Restriction | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM limits_restrictions WHERE sender = ?", (sender,)).fetchone()
            self._forget(conn, sender)
            return None if row is None else Restriction(*row)

        return await self._write(write)

    async def lift_expired(self, now: float) -> list[Restriction]:
        def write(conn: sqlite3.Connection) -> list[Restriction]:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM limits_restrictions WHERE until IS NOT NULL AND until <= ?", (now,)).fetchall()
            for row in rows:
                self._forget(conn, row[0])
            return [Restriction(*row) for row in rows]

        return await self._write(write)

    async def refund(self, check: Check, unused: int) -> None:
        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "UPDATE limits_counts SET count = max(count - ?, 0) WHERE scope = ? AND owner = ? AND window = ? AND bucket = ?",
                [(unused, w.scope, w.owner, w.name, _bucket(check.now, w)) for w in check.windows],
            )

        if unused > 0:
            await self._write(write)

    async def prune(self, now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for seconds in (HOUR, DAY):
                low = math.floor(now / (seconds / BUCKETS)) - BUCKETS
                names = [n for n in WINDOW_SECONDS if WINDOW_SECONDS[n] == seconds]
                conn.execute(f"DELETE FROM limits_counts WHERE window IN ({','.join('?' * len(names))}) AND bucket < ?", (*names, low))
            conn.execute("DELETE FROM limits_alerted WHERE until <= ?", (now,))

        await self._write(write)


def _restriction_row(r: Restriction) -> tuple[Any, ...]:
    return (r.sender, r.tenant, r.window, r.count, r.maximum, r.action, r.since, r.until)


# --- Redis -----------------------------------------------------------------------------------

# KEYS: 1 the sender's restriction (a hash), 2 the index of restrictions (a sorted set by end,
# "+inf" until released), then per window its counter (a hash bucket -> count) and its alert
# mark. ARGV: now, sender, tenant, action, until ("" for none), the window count, then per
# window: name, scope, limit, bucket width, seconds; then the lease wanted and LEASE_SHARE; then
# the keys of the sender's other alert marks.
_COUNT: Final = """
local now = tonumber(ARGV[1])
local sender, tenant, action, till = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
-- An alert mark holds the end of its period (the caller's clock, as every time here).
local function mark(key, seconds)
  local period = tonumber(redis.call('GET', key) or '0')
  if period > now then return false end
  redis.call('SET', key, tostring(now + seconds), 'PX', math.ceil(seconds * 1000))
  return true
end
local n = tonumber(ARGV[6])
local lifted = false
local r = redis.call('HGETALL', KEYS[1])
if #r > 0 then
  local h = {}
  for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
  if h['until'] == '' or tonumber(h['until']) > now then
    return cjson.encode({refused = true, restriction = h})
  end
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], sender)
  for i = 1, n do
    if ARGV[6 + (i - 1) * 5 + 2] == 's' then
      redis.call('DEL', KEYS[2 + 2 * i - 1], KEYS[2 + 2 * i])
    end
  end
  for i = 9 + n * 5, #ARGV do redis.call('DEL', ARGV[i]) end
  lifted = h
end
local over = {}
local headroom = math.huge
for i = 1, n do
  local base = 6 + (i - 1) * 5
  local name, scope, limit, width = ARGV[base + 1], ARGV[base + 2], tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local key = KEYS[2 + 2 * i - 1]
  local bucket = math.floor(now / width)
  local fields = redis.call('HGETALL', key)
  local total = 0
  for j = 1, #fields, 2 do
    if tonumber(fields[j]) >= bucket - 60 then
      total = total + tonumber(fields[j + 1])
    else
      redis.call('HDEL', key, fields[j])
    end
  end
  if limit - total < headroom then headroom = limit - total end
  if total + 1 > limit then
    if action == 'alert' then
      over[#over + 1] = {i, total + 1}
    elseif scope == 's' then
      local h = {sender = sender, tenant = tenant, window = name, count = tostring(total), maximum = tostring(limit),
                 action = action, since = ARGV[1], ['until'] = till}
      redis.call('HSET', KEYS[1], 'sender', sender, 'tenant', tenant, 'window', name, 'count', total, 'maximum', limit,
                 'action', action, 'since', ARGV[1], 'until', till)
      redis.call('ZADD', KEYS[2], till == '' and '+inf' or till, sender)
      return cjson.encode({refused = true, restricted_now = true, restriction = h, lifted = lifted})
    else
      local alerts = {}
      if mark(KEYS[2 + 2 * i], tonumber(ARGV[base + 5])) then
        alerts[1] = {name, total, limit}
      end
      return cjson.encode({refused = true, window = name, alerts = alerts, lifted = lifted})
    end
  end
end
-- The lease (see the module documentation): at most a LEASE_SHARE-th of the headroom.
local granted = 1
local wanted, share = tonumber(ARGV[7 + n * 5]), tonumber(ARGV[8 + n * 5])
if wanted > 0 and #over == 0 and headroom ~= math.huge then
  granted = 1 + math.max(0, math.min(wanted, math.floor((headroom - 1) / share)))
end
for i = 1, n do
  local base = 6 + (i - 1) * 5
  local width = tonumber(ARGV[base + 4])
  local key = KEYS[2 + 2 * i - 1]
  redis.call('HINCRBY', key, tostring(math.floor(now / width)), granted)
  redis.call('PEXPIRE', key, math.ceil(width * 62 * 1000))
end
local alerts = {}
for _, o in ipairs(over) do
  local i = o[1]
  local base = 6 + (i - 1) * 5
  if mark(KEYS[2 + 2 * i], tonumber(ARGV[base + 5])) then
    alerts[#alerts + 1] = {ARGV[base + 1], o[2], tonumber(ARGV[base + 3])}
  end
end
return cjson.encode({accepted = true, alerts = alerts, lifted = lifted, granted = granted})
"""

# KEYS: the counters of a check's windows. ARGV: the unused count, then each window's bucket.
_REFUND: Final = """
for i = 1, #KEYS do
  local bucket = ARGV[1 + i]
  if redis.call('HEXISTS', KEYS[i], bucket) == 1 then
    if redis.call('HINCRBY', KEYS[i], bucket, -tonumber(ARGV[1])) <= 0 then redis.call('HDEL', KEYS[i], bucket) end
  end
end
return 0
"""

# KEYS: 1 the restriction, 2 the index, then the sender's counters and alert marks.
# ARGV: sender, and "" to release whatever the end, or a time: lift only a restriction ended by then.
_RELEASE: Final = """
local r = redis.call('HGETALL', KEYS[1])
if #r == 0 then return false end
local h = {}
for i = 1, #r, 2 do h[r[i]] = r[i + 1] end
if ARGV[2] ~= '' and (h['until'] == '' or tonumber(h['until']) > tonumber(ARGV[2])) then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('DEL', KEYS[i]) end
return cjson.encode(h)
"""

# KEYS: 1 the restriction, 2 the index. ARGV: the restriction's fields, then its index score.
_RESTRICT: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'sender', ARGV[1], 'tenant', ARGV[2], 'window', ARGV[3], 'count', ARGV[4], 'maximum', ARGV[5],
           'action', ARGV[6], 'since', ARGV[7], 'until', ARGV[8])
redis.call('ZADD', KEYS[2], ARGV[9], ARGV[1])
return 1
"""


def redis_client(url: str, timeout: float) -> Any:
    """A redis.asyncio client for `url` whose connections give up after `timeout` seconds and
    never retry (the callers fall back to the node's own state instead)."""
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - the `redis` extra is missing
        raise RuntimeError("[state] redis needs the redis package: pip install 'deliverypool[redis]'") from exc
    return aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0), decode_responses=True)


async def round_trip(work: Any, timeout: float) -> Any:
    """Awaits one Redis call for at most `timeout` seconds; `BackendUnavailable` when Redis
    cannot be reached or answers too late."""
    import redis.exceptions

    try:
        return await asyncio.wait_for(work, timeout)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, asyncio.TimeoutError, OSError) as exc:
        raise BackendUnavailable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc


class RedisBackend:
    """Counters and restrictions in Redis (redis.asyncio), shared by every node; see the module
    documentation. Every call gives up after `timeout` seconds with `BackendUnavailable`."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "deliverypool:", timeout: float = 0.5) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self._client: Any = None
        self._count: Any = None
        self._release: Any = None
        self._refund: Any = None
        self._restrict: Any = None
        self.round_trips = 0
        self._pending: list[tuple[Check, asyncio.Future[Outcome]]] = []
        self._busy = False

    async def open(self) -> None:
        self._client = redis_client(self.url, self.timeout)
        self._count = self._client.register_script(_COUNT)
        self._release = self._client.register_script(_RELEASE)
        self._restrict = self._client.register_script(_RESTRICT)
        self._refund = self._client.register_script(_REFUND)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _sender_keys(self, sender: str) -> list[str]:
        keys = []
        for window in SENDER_WINDOWS:
            keys += [self._key("c", "s", sender, window), self._key("a", "s", sender, window)]
        return keys

    async def _call(self, work: Any) -> Any:
        self.round_trips += 1
        return await round_trip(work, self.timeout)

    async def ping(self) -> None:
        await self._call(self._client.ping())

    def _script_call(self, check: Check) -> tuple[list[str], list[Any]]:
        keys = [self._key("r", check.sender), self._key("restricted")]
        args: list[Any] = [repr(check.now), check.sender, check.tenant or "", check.action, "" if check.until is None else repr(check.until), len(check.windows)]
        for w in check.windows:
            keys += [self._key("c", w.scope, w.owner, w.name), self._key("a", w.scope, w.owner, w.name)]
            args += [w.name, w.scope, w.limit, repr(w.width), repr(w.seconds)]
        args += [check.lease, LEASE_SHARE]
        # The alert marks of the sender's other windows, forgotten when an expired restriction goes.
        args += [k for k in self._sender_keys(check.sender) if k not in keys]
        return keys, args

    async def count(self, check: Check) -> Outcome:
        """One EVALSHA; the checks that arrive while it is out go together in one pipeline."""
        if self._busy:
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            self._pending.append((check, future))
            return await future
        self._busy = True
        try:
            keys, args = self._script_call(check)
            return _outcome(await self._call(self._count(keys=keys, args=args)))
        finally:
            if self._pending:
                asyncio.ensure_future(self._drain())
            else:
                self._busy = False

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    pipe = self._client.pipeline(transaction=False)
                    for check, _ in batch:
                        keys, args = self._script_call(check)
                        await self._count(keys=keys, args=args, client=pipe)  # queued, not sent
                    replies = await self._call(pipe.execute())
                    if len(replies) != len(batch):
                        raise BackendUnavailable(f"{len(replies)} replies to {len(batch)} checks")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), reply in zip(batch, replies):
                    if not future.done():
                        future.set_result(_outcome(reply))
        finally:
            self._busy = False

    async def restrictions(self, now: float) -> list[Restriction]:
        senders = await self._call(self._client.zrangebyscore(self._key("restricted"), f"({now!r}", "+inf"))
        if not senders:
            return []
        pipe = self._client.pipeline(transaction=False)
        for sender in senders:
            pipe.hgetall(self._key("r", sender))
        rows = await self._call(pipe.execute())
        found = [r for r in (_restriction(row) for row in rows) if r is not None]
        return sorted(found, key=lambda r: (r.since, r.sender))

    async def restrict(self, restriction: Restriction) -> bool:
        r = restriction
        until = "" if r.until is None else repr(r.until)
        args = [r.sender, r.tenant or "", r.window, r.count, r.maximum, r.action, repr(r.since), until, until or "+inf"]
        stored = await self._call(self._restrict(keys=[self._key("r", r.sender), self._key("restricted")], args=args))
        return bool(stored)

    async def _lift(self, sender: str, ended_by: float | None) -> Restriction | None:
        keys = [self._key("r", sender), self._key("restricted"), *self._sender_keys(sender)]
        reply = await self._call(self._release(keys=keys, args=[sender, "" if ended_by is None else repr(ended_by)]))
        return _restriction(json.loads(reply)) if reply else None

    async def release(self, sender: str) -> Restriction | None:
        return await self._lift(sender, None)

    async def lift_expired(self, now: float) -> list[Restriction]:
        senders = await self._call(self._client.zrangebyscore(self._key("restricted"), "-inf", repr(now)))
        lifted = []
        for sender in senders:
            restriction = await self._lift(sender, now)
            if restriction is not None:
                lifted.append(restriction)
        return lifted

    async def prune(self, now: float) -> None:
        """Nothing to do: every key expires by itself, and each check drops its window's old buckets."""

    async def refund(self, check: Check, unused: int) -> None:
        if unused > 0:
            keys = [self._key("c", w.scope, w.owner, w.name) for w in check.windows]
            await self._call(self._refund(keys=keys, args=[unused, *(str(_bucket(check.now, w)) for w in check.windows)]))


def _outcome(text: str) -> Outcome:
    reply = json.loads(text)
    lifted = _restriction(reply.get("lifted"))
    alerts = tuple((str(a[0]), int(a[1]), int(a[2])) for a in reply.get("alerts") or ())
    if reply.get("accepted"):
        return Outcome(True, alerts=alerts, lifted=lifted, granted=int(reply.get("granted") or 1))
    restriction = _restriction(reply.get("restriction"))
    window = restriction.window if restriction is not None else str(reply.get("window"))
    return Outcome(False, restriction, restricted_now=bool(reply.get("restricted_now")), window=window, alerts=alerts, lifted=lifted)


def _restriction(data: Any) -> Restriction | None:
    if not data or not isinstance(data, dict):
        return None
    fields = dict(data)
    for name in ("count", "maximum", "since"):
        fields[name] = float(fields[name]) if name == "since" else int(float(fields[name]))
    return Restriction.from_json(fields)

