"""What makes many nodes one fleet, in Redis (``[state] redis``, ``[state] fleet = true``): the
DSN records and per-tenant counts every worker of every node adds, the lease that makes one
node at a time run the fleet-wide jobs (the surge monitor, the blocklist watch), and what those
jobs keep (baselines, the per-tenant snapshot, the alerts, the blocklist state and the drained
set), which every node reads. docs/operations/fleet.md has the sizing.

**Keys** (``P`` is ``[state] key_prefix``). A tenant's DSN records are a key of its own, whose
hash tag is the tenant, so that in a Redis Cluster the tenants spread over the slots; the
fleet-wide jobs' small keys share the hash tag ``{fleet}``, so that one Lua script can check the
lease and write them together (fencing), on one slot:

| key | type | what |
| --- | --- | --- |
| ``P dsns:{TENANT}`` | stream | the tenant's DSN records (fields ``at``, ``w`` worker, ``r`` record JSON; ids in the records' own time), trimmed at each write to the last ``2 x monitor.window`` and to ``[state] dsns_per_tenant`` entries |
| ``P dsns:dirty`` | set | tenants with records the leader has not read yet |
| ``P rates:MINUTE`` | hash | ``TENANT/KIND`` -> count (``messages``, ``dsns``) in that minute (epoch minutes), expiring after the view's horizon |
| ``P {fleet}:leader`` | string | ``NODE|EPOCH``, the lease (``PX leader_ttl``); EPOCH from ``P {fleet}:epoch`` (INCR) |
| ``P {fleet}:nodes`` | hash | node -> JSON (last seen, leading or not) |
| ``P {fleet}:monitor`` | hash | ``started``: when the fleet's monitor first started |
| ``P {fleet}:baselines`` / ``:history`` | hash | tenant -> baseline (DSNs/min) / JSON of the clients and reporting MTAs seen before |
| ``P {fleet}:snapshot`` | hash | tenant -> JSON row of GET /api/tenants, written by the leader each evaluation |
| ``P {fleet}:alerts`` | hash | alert id -> JSON ``{"body", "since", "resolved"}`` |
| ``P {fleet}:alerts:firing`` / ``:resolved`` | set / sorted set | the ids firing / resolved (by time; the last ``monitor.resolved_alerts`` kept) |
| ``P {fleet}:dnsbl`` | hash | ``state`` (JSON of every address in every zone, the zones' test points), ``drained``, ``seq`` |

**Fencing.** Every write of the fleet-wide jobs runs in a script that first checks that the
lease still holds the writer's token (node and epoch): a leader that stalled past its lease (a
paused VM) and wakes up cannot write, so it cannot raise an alert its successor raised too.

Every call gives up after ``[state] timeout`` with `BackendUnavailable`, as the sender limits'
backend does (state/backends.py): the callers fall back to the node's own view.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from deliverypool.state.backends import BackendUnavailable, redis_client, round_trip

__all__ = ["FleetStore", "Lease", "RATE_KINDS", "StoredAlert"]

RATE_KINDS: Final = ("messages", "dsns")

# KEYS: 1 the tenant's stream. ARGV: the entry cap, the time kept (ms), the writer's clock (ms),
# then (at in ms, at, worker, record) per record. An entry's id is its record's time (ms), or the
# stream's last id's when that is later (a late record, a writer's clock behind another's), so
# that ids follow the records' clock and the stream is trimmed by it (the monitor's clock too).
_ADD: Final = """
local cap, keep, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local last = 0
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #top > 0 then last = tonumber(string.match(top[1][1], '^(%d+)')) end
for i = 4, #ARGV, 4 do
  local ms = math.max(tonumber(ARGV[i]), last)
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', cap, ms .. '-*', 'at', ARGV[i + 1], 'w', ARGV[i + 2], 'r', ARGV[i + 3])
  last = ms
end
redis.call('XTRIM', KEYS[1], 'MINID', math.max(0, now - keep))
redis.call('PEXPIRE', KEYS[1], keep + 60000)
return redis.call('XLEN', KEYS[1])
"""

# KEYS: 1 the lease, 2 the epoch counter. ARGV: node, lease in ms. Returns {1, token} when this
# node holds the lease (newly, or still: renewed), {0, holder} otherwise.
_ACQUIRE: Final = """
local current = redis.call('GET', KEYS[1])
if current then
  if string.sub(current, 1, #ARGV[1] + 1) == ARGV[1] .. '|' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {1, current}
  end
  return {0, current}
end
local token = ARGV[1] .. '|' .. redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[2])
return {1, token}
"""

# KEYS: 1 the lease. ARGV: token, lease in ms ('' to give it up).
_RENEW: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

_TRIM: Final = """
local function trim(alerts, resolved, keep)
  local n = redis.call('ZCARD', resolved)
  if n > keep then
    local old = redis.call('ZRANGE', resolved, 0, n - keep - 1)
    for _, id in ipairs(old) do redis.call('HDEL', alerts, id) end
    redis.call('ZREMRANGEBYRANK', resolved, 0, n - keep - 1)
  end
end
local function store(alerts, firing, resolved, id, entry, at, keep)
  redis.call('HSET', alerts, id, entry)
  if at == '' then
    redis.call('SADD', firing, id)
    redis.call('ZREM', resolved, id)
  else
    redis.call('SREM', firing, id)
    redis.call('ZADD', resolved, at, id)
    trim(alerts, resolved, keep)
  end
end
"""

# What a fleet-wide job writes, all or nothing, and only while the lease holds its token.
# KEYS: 1 the lease, 2 alerts, 3 firing, 4 resolved, then hashes. ARGV: token, resolved alerts
# kept, the number of alerts, then per alert (id, entry, resolved time or ''), then per hash: n
# (its field/value pairs; negative: the hash is replaced, not updated) and the pairs.
_COMMIT: Final = _TRIM + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local keep = tonumber(ARGV[2])
local a = 4
for i = 1, tonumber(ARGV[3]) do
  store(KEYS[2], KEYS[3], KEYS[4], ARGV[a], ARGV[a + 1], ARGV[a + 2], keep)
  a = a + 3
end
for k = 5, #KEYS do
  local n = tonumber(ARGV[a])
  a = a + 1
  if n < 0 then
    redis.call('DEL', KEYS[k])
    n = -n
  end
  local last = a + 2 * n - 1
  local j = a
  while j <= last do
    local upto = math.min(j + 999, last)
    redis.call('HSET', KEYS[k], unpack(ARGV, j, upto))
    j = upto + 1
  end
  a = last + 1
end
return 1
"""

# Any node's sender-limit alert, stored unless one of its id fires already.
# KEYS: 2 alerts, 3 firing, 4 resolved (1 unused). ARGV: id, entry.
_FIRE: Final = _TRIM + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 1 then return 0 end
store(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], '', 0)
return 1
"""

# KEYS: 2 alerts, 3 firing, 4 resolved (1 unused). ARGV: id, the entry read, the new entry, the
# resolved time, resolved alerts kept. Resolves only a firing alert still as read: 1, else 0
# (resolved by another node meanwhile) or -1 (changed meanwhile: read it again).
_RESOLVE: Final = _TRIM + """
if redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
store(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[3], ARGV[4], tonumber(ARGV[5]))
return 1
"""


@dataclass(frozen=True)
class Lease:
    """The answer to a bid for the lease: `held` by this node (with `token`), or by `holder`."""

    held: bool
    token: str

    @property
    def node(self) -> str:
        return self.token.rsplit("|", 1)[0]

    @property
    def epoch(self) -> int:
        return int(self.token.rsplit("|", 1)[1])


@dataclass(frozen=True)
class StoredAlert:
    body: dict[str, Any]
    since: float
    resolved: float | None


def _entry(alert: Mapping[str, Any], since: float, resolved: float | None) -> str:
    return json.dumps({"body": alert, "since": since, "resolved": resolved}, separators=(",", ":"))


class FleetStore:
    """The fleet's keys in one Redis (redis.asyncio); see the module documentation. `window`
    (seconds): the surge window, which sets how long DSN records and per-minute counts are kept."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "deliverypool:",
        timeout: float = 0.5,
        window: float = 300.0,
        dsns_per_tenant: int = 10000,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.window = window
        self.dsns_per_tenant = dsns_per_tenant
        # DSN records: twice the window (a leader taking over reads the whole window, late
        # records included). Per-minute counts: the view's window and two minutes more.
        self.keep_ms = int(2 * window * 1000)
        self.rate_seconds = int(max(window, 60.0)) + 180
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self.commands = 0
        self.round_trips = 0

    async def open(self) -> None:
        self._client = redis_client(self.url, self.timeout)
        for name, text in (("add", _ADD), ("acquire", _ACQUIRE), ("renew", _RENEW), ("commit", _COMMIT), ("fire", _FIRE), ("resolve", _RESOLVE)):
            self._scripts[name] = self._client.register_script(text)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- keys ------------------------------------------------------------------------------

    def fleet_key(self, name: str) -> str:
        return f"{self.prefix}{{fleet}}:{name}"

    def dsn_key(self, tenant: str) -> str:
        return f"{self.prefix}dsns:{{{tenant}}}"

    def rate_key(self, minute: int) -> str:
        return f"{self.prefix}rates:{minute}"

    @property
    def dirty_key(self) -> str:
        return f"{self.prefix}dsns:dirty"

    def _alert_keys(self) -> list[str]:
        return [self.fleet_key("leader"), self.fleet_key("alerts"), self.fleet_key("alerts:firing"), self.fleet_key("alerts:resolved")]

    # --- calls -----------------------------------------------------------------------------

    async def _call(self, work: Any, commands: int = 1) -> Any:
        if self._client is None:
            raise BackendUnavailable("the fleet store is not open")
        self.round_trips += 1
        self.commands += commands
        return await round_trip(work, self.timeout)

    async def _pipeline(self, queue: Any, *, raise_on_error: bool = True) -> list[Any]:
        """Sends what `queue(pipe)` queued, in one round trip; its replies."""
        if self._client is None:
            raise BackendUnavailable("the fleet store is not open")
        pipe = self._client.pipeline(transaction=False)
        try:
            await queue(pipe)
            replies: list[Any] = await self._call(pipe.execute(raise_on_error=raise_on_error), len(pipe.command_stack))
        finally:
            # Hands its connection back even when the round trip timed out.
            with contextlib.suppress(Exception):
                await pipe.reset()
        return replies

    async def ping(self) -> None:
        await self._call(self._client.ping() if self._client is not None else None)

    # --- what every worker adds --------------------------------------------------------------

    async def add(
        self, dsns: Sequence[tuple[float, str, str, dict[str, Any]]], rates: Mapping[tuple[int, str, str], int], *, now: float
    ) -> None:
        """Appends DSN records ``(at, tenant, worker, record)`` to their tenants' streams (trimmed
        to the window's time before `now`, this writer's clock) and adds per-minute counts
        ``(minute, tenant, kind) -> count``, in one round trip."""
        if not dsns and not rates:
            return
        by_tenant: dict[str, list[str]] = {}
        for at, tenant, worker, record in dsns:
            by_tenant.setdefault(tenant, []).extend((str(int(at * 1000)), repr(at), worker, json.dumps(record, separators=(",", ":"))))
        minutes: dict[int, dict[str, int]] = {}
        for (minute, tenant, kind), count in rates.items():
            fields = minutes.setdefault(minute, {})
            fields[f"{tenant}/{kind}"] = fields.get(f"{tenant}/{kind}", 0) + count

        script = self._scripts["add"]
        head = [self.dsns_per_tenant, self.keep_ms, int(now * 1000)]

        async def queue(pipe: Any) -> None:
            # EVALSHA queued as a plain command: redis-py would otherwise ask SCRIPT EXISTS first,
            # a second round trip at every flush. A Redis without the script (restarted) says
            # NOSCRIPT: it is loaded and those tenants' records sent again, below.
            for tenant, args in by_tenant.items():
                pipe.evalsha(script.sha, 1, self.dsn_key(tenant), *head, *args)
            for minute, fields in minutes.items():
                key = self.rate_key(minute)
                for field, count in fields.items():
                    pipe.hincrby(key, field, count)
                pipe.expire(key, self.rate_seconds)
            # After the records: the leader takes a tenant off this set, then reads its stream.
            if by_tenant:
                pipe.sadd(self.dirty_key, *by_tenant)

        from redis.exceptions import NoScriptError

        replies = await self._pipeline(queue, raise_on_error=False)
        missing = [tenant for tenant, reply in zip(by_tenant, replies) if isinstance(reply, NoScriptError)]
        failed = [reply for reply in replies if isinstance(reply, Exception) and not isinstance(reply, NoScriptError)]
        if failed:
            raise failed[0]
        if missing:
            await self._call(self._client.script_load(_ADD))

            async def again(pipe: Any) -> None:
                for tenant in missing:
                    pipe.evalsha(script.sha, 1, self.dsn_key(tenant), *head, *by_tenant[tenant])
                pipe.sadd(self.dirty_key, *missing)

            await self._pipeline(again)

    # --- what the leader reads ---------------------------------------------------------------

    async def new_dsns(self, last_ids: dict[str, str], *, tenants: Iterable[str] | None = None) -> dict[str, list[tuple[float, dict[str, Any]]]]:
        """The records added since `last_ids` (tenant -> last stream id read, updated here) of
        the tenants that have new ones (`tenants`: these, whatever the dirty set says)."""
        if tenants is None:
            names = await self._call(self._client.spop(self.dirty_key, 1_000_000))
            tenants = sorted(names or ())
        tenants = list(tenants)
        if not tenants:
            return {}

        async def queue(pipe: Any) -> None:
            for tenant in tenants:
                last = last_ids.get(tenant)
                pipe.xrange(self.dsn_key(tenant), f"({last}" if last else "-", "+")

        found: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for tenant, entries in zip(tenants, await self._pipeline(queue)):
            rows = []
            for entry_id, fields in entries or ():
                last_ids[tenant] = entry_id
                try:
                    rows.append((float(fields["at"]), json.loads(fields["r"])))
                except (KeyError, ValueError):
                    continue
            if rows:
                found[tenant] = rows
        return found

    async def rates(self, since_minute: int, until_minute: int) -> dict[tuple[str, str], int]:
        """(tenant, kind) -> count over the minutes from `since_minute` to `until_minute`."""
        minutes = list(range(since_minute, until_minute + 1))

        async def queue(pipe: Any) -> None:
            for minute in minutes:
                pipe.hgetall(self.rate_key(minute))

        totals: dict[tuple[str, str], int] = {}
        for fields in await self._pipeline(queue):
            for name, count in (fields or {}).items():
                tenant, _, kind = name.rpartition("/")
                totals[(tenant, kind)] = totals.get((tenant, kind), 0) + int(count)
        return totals

    # --- the lease ---------------------------------------------------------------------------

    async def acquire(self, node: str, ttl: float) -> Lease:
        held, token = await self._call(self._scripts["acquire"](keys=[self.fleet_key("leader"), self.fleet_key("epoch")], args=[node, int(ttl * 1000)]))
        return Lease(bool(held), str(token))

    async def renew(self, token: str, ttl: float) -> bool:
        return bool(await self._call(self._scripts["renew"](keys=[self.fleet_key("leader")], args=[token, int(ttl * 1000)])))

    async def resign(self, token: str) -> bool:
        return bool(await self._call(self._scripts["renew"](keys=[self.fleet_key("leader")], args=[token, ""])))

    async def holder(self) -> str | None:
        token = await self._call(self._client.get(self.fleet_key("leader")))
        return None if token is None else str(token).rsplit("|", 1)[0]

    async def heartbeat(self, node: str, info: Mapping[str, Any]) -> None:
        await self._call(self._client.hset(self.fleet_key("nodes"), node, json.dumps(info, separators=(",", ":"))))

    async def nodes(self) -> dict[str, dict[str, Any]]:
        rows = await self._call(self._client.hgetall(self.fleet_key("nodes")))
        return {node: json.loads(info) for node, info in (rows or {}).items()}

    async def forget_nodes(self, nodes: Iterable[str]) -> None:
        names = list(nodes)
        if names:
            await self._call(self._client.hdel(self.fleet_key("nodes"), *names))

    # --- what the leader keeps (fenced) ------------------------------------------------------

    async def commit(
        self,
        token: str,
        *,
        alerts: Sequence[tuple[Mapping[str, Any], float, float | None]] = (),
        hashes: Sequence[tuple[str, Mapping[str, str], bool]] = (),
        keep: int = 50,
    ) -> bool:
        """What a fleet-wide job decided, in one step, if the lease still holds `token`: its
        alerts ``(alert, since, resolved or None)`` and fields of the fleet hashes ``(name,
        fields, replace)``. False (nothing written) when the lease has moved on."""
        keys = [*self._alert_keys()]
        args: list[Any] = [token, keep, len(alerts)]
        for alert, since, resolved in alerts:
            args += [alert["id"], _entry(alert, since, resolved), "" if resolved is None else repr(resolved)]
        for name, fields, replace in hashes:
            keys.append(self.fleet_key(name))
            args.append(-len(fields) if replace else len(fields))
            for field, value in fields.items():
                args += [field, value]
        return bool(await self._call(self._scripts["commit"](keys=keys, args=args), 1 + len(alerts) + sum(len(f) for _, f, _ in hashes)))

    async def hash(self, name: str) -> dict[str, str]:
        rows: dict[str, str] = await self._call(self._client.hgetall(self.fleet_key(name)))
        return rows or {}

    async def field(self, name: str, field: str) -> str | None:
        value = await self._call(self._client.hget(self.fleet_key(name), field))
        return None if value is None else str(value)

    async def set_field_once(self, name: str, field: str, value: str) -> str:
        """The field's value, set to `value` first if it had none."""
        async def queue(pipe: Any) -> None:
            pipe.hsetnx(self.fleet_key(name), field, value)
            pipe.hget(self.fleet_key(name), field)

        return str((await self._pipeline(queue))[1])

    # --- alerts ------------------------------------------------------------------------------

    async def fire_alert(self, alert: Mapping[str, Any], since: float) -> bool:
        """Stores `alert` as firing unless an alert of its id fires already (any node's workers
        raise sender-limit alerts: the first to store one announces it); True when stored."""
        return bool(await self._call(self._scripts["fire"](keys=self._alert_keys(), args=[alert["id"], _entry(alert, since, None)])))

    async def resolve_alert(self, alert_id: str, update: Mapping[str, Any], resolved: float, keep: int) -> dict[str, Any] | None:
        """Resolves the firing alert `alert_id` (its body updated with `update`); the new body, or
        None when no such alert fires (another node or worker resolved it first)."""
        for _ in range(5):
            current = await self._call(self._client.hget(self.fleet_key("alerts"), alert_id))
            if current is None:
                return None
            entry = json.loads(current)
            body = {**entry["body"], **update, "state": "resolved"}
            new = _entry(body, float(entry.get("since") or resolved), resolved)
            done = await self._call(self._scripts["resolve"](keys=self._alert_keys(), args=[alert_id, current, new, repr(resolved), keep]))
            if done == 1:
                return body
            if done == 0:
                return None
        return None

    async def stored_alerts(self) -> list[StoredAlert]:
        rows = await self.hash("alerts")
        found = []
        for text in rows.values():
            try:
                entry = json.loads(text)
                found.append(StoredAlert(entry["body"], float(entry["since"]), entry.get("resolved")))
            except (ValueError, KeyError, TypeError):
                continue
        return found

    async def alerts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(active, resolved): active oldest first, resolved newest first."""
        stored = sorted(await self.stored_alerts(), key=lambda a: a.since)
        active = [a.body for a in stored if a.body.get("state") == "firing"]
        resolved = [a.body for a in stored if a.body.get("state") == "resolved"]
        resolved.sort(key=lambda a: a.get("resolved_at") or "", reverse=True)
        return active, resolved

    async def firing(self, id_prefix: str) -> list[dict[str, Any]]:
        active, _ = await self.alerts()
        return [a for a in active if str(a.get("id", "")).startswith(id_prefix)]

    # --- Redis's own figures (the simulation) --------------------------------------------------

    async def info(self, section: str) -> dict[str, Any]:
        info: dict[str, Any] = await self._call(self._client.info(section))
        return info

    async def memory(self, key: str) -> int:
        return int(await self._call(self._client.memory_usage(key, samples=0)) or 0)
