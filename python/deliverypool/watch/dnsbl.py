"""The blocklist watch: every source address of every pool, checked in every ``[dnsbl]`` zone
every ``dnsbl.interval``, and a normal-pool address that gets listed drained from its pool's
rotation until it is delisted.

Who runs what:

* The process that leads (worker 0 of ``deliverypool relay``, or an embedded relay; the one
  that runs the admin listener) runs the cycles (:meth:`BlocklistWatch.check_now`: the
  lookups are :mod:`deliverypool.lookup.dnsbl`), keeps the state of each address in each zone,
  raises the alerts and writes the state and the drained set to ``SPOOL/state.sqlite3``
  (:mod:`deliverypool.state.dnsbl`).
* Every worker reads the drained set from there every ``observe.flush_interval`` and once at
  its start, into :class:`DrainedSources`, which the delivery connector consults
  (``Connector.source_for``) so that no worker opens a connection from a drained address,
  and a connection already open from one carries no more mail.

The state of an address in a zone (``state``): ``listed`` / ``not-listed`` from an answer of a
zone whose test points passed; ``refused`` when the list refused the query; ``unknown`` until
the first answer. A lookup that fails (SERVFAIL, timeout) and a zone whose test points fail
(``broken``) or cannot be checked change nothing: the previous state stands. What drains, what
the alert is about and what the metric shows is the last *trusted* answer (``listed``): a
refusal keeps a drained address drained.

Alerts (types ``dnsbl-listed``, ``dnsbl-zone-broken``, ``dnsbl-refused``) fire once and resolve
once, through the observer (log ``deliverypool.alerts``, ``GET /api/alerts``, the webhook):

* a listed address of any pool but the high-risk one: severity ``critical``, with ``dnsbl.
  normal_listed = "drain"`` the address drained (``"alert"``: only the alert);
* a listed high-risk address: severity ``info`` (``expected``: true), never drained;
* a zone that fails its test points, or refuses queries: severity ``warning``.

Alert ids are derived from what they are about and when it began, so a restarted leader
resolves the alerts its predecessor raised.

**In a fleet** (``[state] redis``, observe/fleet.py) the cycles run in the one process of the
fleet that holds its lease (``lead``/``follow``), which writes the state, the drained set and the
alerts to Redis in one fenced step (`Fleet.commit_job`) and copies them to its own state
database; every worker of every node reads the drained set from Redis every
``observe.flush_interval`` (the leading process of each node the whole state too, for its
``GET /api/dnsbl`` and gauge, and copies it to its state database). While Redis is away each
worker keeps the drained set it last read (a worker starting then: its node's copy), and the
cycles pause. A new leader carries on from the state in Redis: the same alerts stay firing,
nothing fires twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from deliverypool.config import RelayConfig
from deliverypool.lookup.dnsbl import VERDICTS, Address, Cycle, Dnsbl, family_name, queries_per_cycle
from deliverypool.lookup.resolver import Resolver
from deliverypool.observe.surge import iso_time
from deliverypool.state.dnsbl import CellRow, DnsblStore, ZoneRow

__all__ = ["CHECK_RESULTS", "BlocklistWatch", "DrainedSources", "queries_per_day"]

log = logging.getLogger("deliverypool.dnsbl")

# The `result` label of deliverypool_dnsbl_checks_total: a lookup's verdict, or "skipped" when
# the zone's test points did not pass (the address was not looked up).
CHECK_RESULTS: Final[tuple[str, ...]] = (*VERDICTS, "skipped")
# Row family 0 of a zone: its refusals (any answer in 127.255.255.0/24 in the last cycle).
_REFUSALS: Final = 0

AlertSink = Callable[[dict[str, Any], float, "float | None"], Awaitable[None]]
Count = Callable[[str, tuple[tuple[str, str], ...], float], None]


def queries_per_day(config: RelayConfig) -> int:
    """The most blocklist queries a configuration sends a day (no cache hits, no listings):
    cycles a day x zones x (addresses + 2 test points per address family)."""
    addresses = {s.address for pool in config.pools.values() for s in pool.source_addresses}
    cycles = 86_400 / config.dnsbl.interval
    return round(cycles * queries_per_cycle(addresses, len(config.dnsbl.zones)))


class DrainedSources:
    """The drained source addresses of each pool, as every worker last read them."""

    def __init__(self) -> None:
        self.by_pool: dict[str, frozenset[str]] = {}

    def is_drained(self, pool: str, address: str) -> bool:
        drained = self.by_pool.get(pool)
        return drained is not None and address in drained

    def update(self, by_pool: Mapping[str, frozenset[str]]) -> bool:
        """Takes a new drained set; True when it changed."""
        new = {pool: addresses for pool, addresses in by_pool.items() if addresses}
        if new == self.by_pool:
            return False
        self.by_pool = new
        return True


@dataclass(frozen=True)
class _Source:
    address: str
    ip: Address
    pools: tuple[str, ...]
    # Drained when listed: in a pool other than the high-risk one, with normal_listed = "drain".
    drains: tuple[str, ...]


def _alert_id(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


class BlocklistWatch:
    """The blocklist watch of one relay process (see the module documentation). `leader`: this
    process runs the cycles; every process follows the drained set."""

    def __init__(
        self,
        config: RelayConfig,
        *,
        state_path: Path,
        leader: bool,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
        alert: AlertSink | None = None,
        count: Count | None = None,
        run_loops: bool = True,
    ) -> None:
        self.config = config
        self.settings = config.dnsbl
        self.zones: tuple[str, ...] = tuple(config.dnsbl.zones)
        self.leader = leader
        self.resolver = resolver
        self.clock = clock
        self.alert = alert
        self.count = count
        self.run_loops = run_loops
        self.store = DnsblStore(state_path)
        self.drained = DrainedSources()
        high_risk = config.policy.high_risk_pool
        pools: dict[str, list[str]] = {}
        addresses: dict[str, Address] = {}
        for name, pool in config.pools.items():
            for source in pool.source_addresses:
                pools.setdefault(str(source.address), []).append(name)
                addresses[str(source.address)] = source.address
        drain = config.dnsbl.normal_listed == "drain"
        self.sources: dict[str, _Source] = {
            address: _Source(address, addresses[address], tuple(names), tuple(n for n in names if drain and n != high_risk))
            for address, names in pools.items()
        }
        self.families = sorted({s.ip.version for s in self.sources.values()})
        self.cells: dict[tuple[str, str], CellRow] = {(a, z): CellRow(a, z) for a in self.sources for z in self.zones}
        # Per zone: its test points per address family, and its refusals (family 0).
        self.zone_rows: dict[tuple[str, int], ZoneRow] = {(z, f): ZoneRow(z, f) for z in self.zones for f in self.families}
        self.zone_rows.update({(z, _REFUSALS): ZoneRow(z, _REFUSALS, "ok", "no refusals") for z in self.zones})
        self.last_cycle: float | None = None
        self.last_queries = 0
        self.cycles = 0
        self._lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._open = False
        # In a fleet (observe/fleet.py): the relay sets it, and the fleet calls lead and follow.
        self.fleet: Any = None
        self._stale = False
        self._seq: str | None = None
        self.checked_by: str | None = None

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Opens the state, takes the drained set as it is (a restarted relay keeps its drained
        addresses drained) and, in the leader, starts the cycles (the first at once)."""
        if self.fleet is not None:
            await self._start_fleet()
            return
        try:
            if await self._ensure_open() and self.leader:
                await self._load()
            await self.refresh()
        except Exception:
            log.exception("dnsbl: cannot read the blocklist state in %s; the first cycle writes it", self.store.path)
        if self.leader:
            per_day = queries_per_day(self.config)
            log.info("dnsbl: watching %d address(es) in %s every %gs, at most %d queries a day", len(self.sources), ", ".join(self.zones), self.settings.interval, per_day)
            if per_day > 100_000:
                log.warning("dnsbl: %d queries a day is more than a third of Spamhaus's free-use limit (300,000): raise dnsbl.interval", per_day)
        if self.run_loops:
            if self.leader:
                self._tasks.append(asyncio.ensure_future(self._every(self.settings.interval, self.check_now, first=True)))
            else:
                self._tasks.append(asyncio.ensure_future(self._every(self.config.observe.flush_interval, self.refresh)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._open:
            await asyncio.get_running_loop().run_in_executor(None, self.store.close)
            self._open = False

    async def _ensure_open(self) -> bool:
        """Opens the state database if it is not open yet (a full disk at start, say: each
        cycle and each read of the drained set tries again)."""
        if not self._open:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.store.open)
            except (OSError, sqlite3.Error) as exc:
                log.warning("dnsbl: cannot open the state database %s: %s", self.store.path, exc)
                return False
            self._open = True
        return True

    async def _every(self, seconds: float, work: Callable[[], Awaitable[Any]], *, first: bool = False) -> None:
        if not first:
            await asyncio.sleep(seconds)
        while True:
            try:
                await work()
            except Exception:
                log.exception("dnsbl: periodic %s failed", getattr(work, "__name__", "work"))
            await asyncio.sleep(seconds)

    async def _load(self) -> None:
        cells, zones = await asyncio.get_running_loop().run_in_executor(None, self.store.load)
        for cell in cells:
            if (cell.address, cell.zone) in self.cells:
                self.cells[(cell.address, cell.zone)] = cell
        for zone in zones:
            if (zone.zone, zone.family) in self.zone_rows:
                self.zone_rows[(zone.zone, zone.family)] = zone
        self.drained.update(self._drained_set())

    async def refresh(self) -> bool:
        """Reads the drained set the leader wrote (a follower; the leader has it already)."""
        if self.fleet is not None:
            return await self._refresh_fleet()
        if self.leader or not await self._ensure_open():
            return False
        drained = await asyncio.get_running_loop().run_in_executor(None, self.store.drained)
        drained = {pool: frozenset(a for a in addresses if a in self.sources) for pool, addresses in drained.items()}
        changed = self.drained.update(drained)
        if changed:
            log.info("dnsbl: drained source addresses now %s", self._describe())
        return changed

    def _describe(self) -> str:
        return ", ".join(f"{pool}: {' '.join(sorted(a))}" for pool, a in sorted(self.drained.by_pool.items())) or "none"

    # --- one cycle (the leader) ------------------------------------------------------------

    async def check_now(self) -> Cycle:
        """Checks every address in every zone now, updates the state, the drained set and the
        alerts, and writes the state for the other workers. Cycles never overlap."""
        if self.resolver is None:
            raise RuntimeError("the blocklist watch has no resolver")
        async with self._lock:
            cycle = await Dnsbl(self.resolver).check([s.ip for s in self.sources.values()], self.zones)
            now = self.clock()
            alerts = self._apply(cycle, now)
            self.last_cycle = now
            self.last_queries = cycle.queries
            before = dict(self.drained.by_pool)
            if self.drained.update(self._drained_set()):
                self._log_drain(before)
            for alert, _, _ in alerts:
                if alert["type"] == "dnsbl-listed":
                    alert["in_rotation"] = {pool: self.in_rotation(pool) for pool in alert["pools"]}
            if self.fleet is not None:
                return await self._commit_fleet(cycle, alerts)
            if await self._ensure_open():
                rows = self._drained_rows()
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.store.save, list(self.cells.values()), list(self.zone_rows.values()), rows
                    )
                except (OSError, sqlite3.Error) as exc:
                    # This process drains anyway; the other workers learn it at the next cycle.
                    log.error("dnsbl: cannot write the blocklist state to %s: %s", self.store.path, exc)
            for alert, since, resolved in alerts:
                if self.alert is not None:
                    try:
                        await self.alert(alert, since, resolved)
                    except Exception:
                        log.exception("dnsbl: could not publish alert %s", alert["id"])
            self.cycles += 1  # last: a cycle counted has its state written and its alerts out
            return cycle

    def _apply(self, cycle: Cycle, now: float) -> list[tuple[dict[str, Any], float, float | None]]:
        """Updates the zones and the cells from one cycle; returns the alerts that changed as
        (alert, since, resolved at or None)."""
        alerts: list[tuple[dict[str, Any], float, float | None]] = []
        # The test points, per zone and family. Unanswered ones (unknown) change nothing.
        for (zone, family), check in cycle.zones.items():
            row = self.zone_rows[(zone, family)]
            row.checked = now
            if check.state == "unknown":
                row.detail = f"test points not answered ({check.detail}); previous state kept"
                continue
            if check.state != row.state:
                if row.state == "broken":
                    since = self._since(row)
                    alerts.append((self._resolved(self._zone_alert(row, since, now), since, now), since, now))
                row.state, row.since, row.detail = check.state, now, check.detail
                if check.state == "broken":
                    alerts.append((self._zone_alert(row, now, now), now, None))
            row.detail = check.detail
        # Every address in every zone.
        counts: dict[tuple[str, str], int] = {}
        refusals: dict[str, str] = {}
        for (zone, family), check in cycle.zones.items():
            if check.state == "refused":
                refusals.setdefault(zone, check.detail)
        for (address, zone), cell in self.cells.items():
            source = self.sources[address]
            answer = cycle.answers.get((address, zone))
            if answer is None:  # the test points did not pass: not looked up
                points = cycle.zones.get((zone, source.ip.version))
                result = "refused" if points is not None and points.state == "refused" else "skipped"
                counts[(zone, result)] = counts.get((zone, result), 0) + 1
                if points is not None and result == "refused":
                    self._set_state(cell, "refused", now)
                    cell.detail = points.detail
                continue
            counts[(zone, answer.verdict)] = counts.get((zone, answer.verdict), 0) + 1
            cell.checked = now
            if answer.verdict == "unknown":
                cell.detail = f"last lookup failed ({answer.detail}); previous state kept"
                continue
            if answer.verdict == "refused":
                refusals.setdefault(zone, f"{address}: {answer.detail}")
                self._set_state(cell, "refused", now)
                cell.detail = answer.detail
                continue
            listed = answer.verdict == "listed"
            self._set_state(cell, answer.verdict, now)
            cell.detail = answer.detail
            if listed:
                cell.codes, cell.reason = answer.codes, answer.reason
            if listed and not cell.listed:
                cell.listed, cell.since = True, now
                alerts.append((self._listed_alert(cell, source, now, now), now, None))
            elif not listed and cell.listed:
                since = cell.since if cell.since is not None else now
                alerts.append((self._resolved(self._listed_alert(cell, source, since, now), since, now), since, now))
                cell.listed, cell.since, cell.codes, cell.reason = False, None, (), None
        # Refusals, per zone: resolved once a cycle's test points all pass without any.
        for zone in self.zones:
            row = self.zone_rows[(zone, _REFUSALS)]
            row.checked = now
            checks = [cycle.zones.get((zone, f)) for f in self.families]
            passed = all(c is not None and c.state == "ok" for c in checks)
            if zone in refusals and row.state != "refused":
                row.state, row.since, row.detail = "refused", now, refusals[zone]
                alerts.append((self._refused_alert(row, now, now), now, None))
            elif zone not in refusals and passed and row.state == "refused":
                since = self._since(row)
                alerts.append((self._resolved(self._refused_alert(row, since, now), since, now), since, now))
                row.state, row.since, row.detail = "ok", now, "no refusals"
        if self.count is not None:
            for (zone, result), n in counts.items():
                self.count("deliverypool_dnsbl_checks_total", (("zone", zone), ("result", result)), float(n))
        return alerts

    @staticmethod
    def _set_state(cell: CellRow, state: str, now: float) -> None:
        if cell.state != state:
            cell.state, cell.changed = state, now

    def _since(self, row: ZoneRow) -> float:
        return row.since if row.since is not None else self.clock()

    # --- the drained set -------------------------------------------------------------------

    def _listed_zones(self, address: str) -> list[str]:
        return [zone for zone in self.zones if self.cells[(address, zone)].listed]

    def _drained_set(self) -> dict[str, frozenset[str]]:
        found: dict[str, set[str]] = {}
        for address, source in self.sources.items():
            if self._listed_zones(address):
                for pool in source.drains:
                    found.setdefault(pool, set()).add(address)
        return {pool: frozenset(addresses) for pool, addresses in found.items()}

    def _drained_rows(self) -> dict[tuple[str, str], tuple[float, list[str]]]:
        rows = {}
        for pool, addresses in self.drained.by_pool.items():
            for address in addresses:
                zones = self._listed_zones(address)
                since = min((s for z in zones if (s := self.cells[(address, z)].since) is not None), default=self.clock())
                rows[(pool, address)] = (since, zones)
        return rows

    def in_rotation(self, pool: str) -> list[str]:
        """The pool's source addresses that are not drained."""
        return [str(s.address) for s in self.config.pools[pool].source_addresses if not self.drained.is_drained(pool, str(s.address))]

    def _log_drain(self, before: Mapping[str, frozenset[str]]) -> None:
        for pool in sorted(set(before) | set(self.drained.by_pool)):
            old, new = before.get(pool, frozenset()), self.drained.by_pool.get(pool, frozenset())
            for address in sorted(new - old):
                log.warning("dnsbl: %s drained from pool %s (listed in %s)", address, pool, ", ".join(self._listed_zones(address)))
            for address in sorted(old - new):
                log.warning("dnsbl: %s back in the rotation of pool %s (delisted)", address, pool)
            left = self.in_rotation(pool)
            if new - old and not left:
                log.critical("dnsbl: pool %s has no source address left in rotation: its mail waits until one is delisted", pool)

    # --- alerts ----------------------------------------------------------------------------

    def _listed_alert(self, cell: CellRow, source: _Source, since: float, now: float) -> dict[str, Any]:
        high_risk = self.config.policy.high_risk_pool
        expected = all(pool == high_risk for pool in source.pools)
        drained = bool(source.drains)
        if expected:
            action = "none: the high-risk pool may be listed, by design"
        elif drained:
            action = "drained: the pool's other addresses carry its mail until it is delisted"
        else:
            action = 'alert only (dnsbl.normal_listed = "alert"): the address stays in rotation'
        return {
            "id": _alert_id("dnsbl-listed", cell.address, cell.zone, since),
            "type": "dnsbl-listed",
            "state": "firing",
            "severity": "info" if expected else "critical",
            "address": cell.address,
            "pool": ",".join(source.pools),
            "pools": list(source.pools),
            "zone": cell.zone,
            "codes": list(cell.codes),
            "reason": cell.reason,
            "expected": expected,
            "drained": drained,
            "action": action,
            "since": iso_time(since),
            "fired_at": iso_time(now),
        }

    def _zone_alert(self, row: ZoneRow, since: float, now: float) -> dict[str, Any]:
        return {
            "id": _alert_id("dnsbl-zone-broken", row.zone, row.family, since),
            "type": "dnsbl-zone-broken",
            "state": "firing",
            "severity": "warning",
            "zone": row.zone,
            "family": family_name(row.family),
            "detail": row.detail,
            "action": "its answers are ignored until its test points pass: the addresses keep their previous state",
            "since": iso_time(since),
            "fired_at": iso_time(now),
        }

    def _refused_alert(self, row: ZoneRow, since: float, now: float) -> dict[str, Any]:
        return {
            "id": _alert_id("dnsbl-refused", row.zone, since),
            "type": "dnsbl-refused",
            "state": "firing",
            "severity": "warning",
            "zone": row.zone,
            "detail": row.detail,
            "action": (
                "a refusal is never a listing: the addresses keep their previous listing. Query through your own "
                "resolver (dnsbl.nameservers) and within the list's terms of use"
            ),
            "since": iso_time(since),
            "fired_at": iso_time(now),
        }

    @staticmethod
    def _resolved(alert: dict[str, Any], since: float, now: float) -> dict[str, Any]:
        # It fired when its state began.
        return dict(alert, state="resolved", fired_at=iso_time(since), resolved_at=iso_time(now), duration_seconds=round(max(0.0, now - since), 1))

    # --- in a fleet ------------------------------------------------------------------------

    async def lead(self) -> None:
        """This process holds the fleet's lease now: the cycles run here, from the state in Redis."""
        self.leader = True
        self._stale = True
        log.info("dnsbl: this node runs the blocklist cycles for the fleet, at most %d queries a day", queries_per_day(self.config))

    async def follow(self) -> None:
        self.leader = False

    async def _start_fleet(self) -> None:
        try:
            if self.fleet.candidate and await self._ensure_open():
                await self._load()  # this node's copy: its view until Redis answers
            if not await self._refresh_fleet():
                drained = await asyncio.get_running_loop().run_in_executor(None, self.store.drained) if await self._ensure_open() else {}
                self.drained.update({pool: frozenset(a for a in addresses if a in self.sources) for pool, addresses in drained.items()})
        except Exception:
            log.exception("dnsbl: cannot read the blocklist state")
        if self.run_loops:
            self._tasks.append(asyncio.ensure_future(self._fleet_loop()))

    async def _fleet_loop(self) -> None:
        while True:
            try:
                if self.leader:
                    if self._stale:
                        await self._load_fleet()
                        self._stale = False
                    if self.last_cycle is None or self.clock() - self.last_cycle >= self.settings.interval:
                        await self.check_now()
                else:
                    await self.refresh()
            except Exception as exc:  # Redis away (BackendUnavailable), a failed cycle: next time
                log.debug("dnsbl: fleet loop: %s", exc)
            await asyncio.sleep(min(self.config.observe.flush_interval, self.settings.interval))

    def _state_json(self) -> str:
        return json.dumps({
            "cells": [dataclasses.asdict(c) for c in self.cells.values()],
            "zones": [dataclasses.asdict(z) for z in self.zone_rows.values()],
            "last_cycle": self.last_cycle, "last_queries": self.last_queries, "cycles": self.cycles, "node": self.checked_by,
        }, separators=(",", ":"))

    def _apply_state(self, text: str) -> None:
        state = json.loads(text)
        for row in state.get("cells", ()):
            key = (row["address"], row["zone"])
            if key in self.cells:
                self.cells[key] = CellRow(**{**row, "codes": tuple(row.get("codes") or ())})
        for row in state.get("zones", ()):
            key = (row["zone"], int(row["family"]))
            if key in self.zone_rows:
                self.zone_rows[key] = ZoneRow(**row)
        self.last_cycle = state.get("last_cycle")
        self.last_queries = int(state.get("last_queries") or 0)
        self.cycles = int(state.get("cycles") or 0)
        self.checked_by = state.get("node")

    async def _load_fleet(self) -> None:
        """The leader's start: the state as the previous leader left it in Redis (none there: this node's copy)."""
        text = await self.fleet.store.field("dnsbl", "state")
        if text is not None:
            self._apply_state(text)
        elif await self._ensure_open():
            await self._load()
        self.drained.update(self._drained_set())

    async def _commit_fleet(self, cycle: Cycle, alerts: list[tuple[dict[str, Any], float, float | None]]) -> Cycle:
        self.cycles += 1
        self.checked_by = self.fleet.node
        drained = {pool: sorted(a) for pool, a in sorted(self.drained.by_pool.items())}
        seq = f"{self.cycles}:{self.last_cycle!r}"
        fields = {"state": self._state_json(), "drained": json.dumps(drained), "seq": seq}
        if not await self.fleet.commit_job(alerts, [("dnsbl", fields, False)]):
            self.cycles -= 1
            self._stale = True  # not written: whoever leads next starts from Redis
            return cycle
        self._seq = seq
        await self._save_local()
        return cycle

    async def _save_local(self) -> None:
        if await self._ensure_open():
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.store.save, list(self.cells.values()), list(self.zone_rows.values()), self._drained_rows()
                )
            except (OSError, sqlite3.Error) as exc:
                log.warning("dnsbl: cannot copy the blocklist state to %s: %s", self.store.path, exc)

    async def _refresh_fleet(self) -> bool:
        """The drained set from Redis (and, in a node's leading process, the whole state when it
        changed); False when Redis cannot be reached (the drained set stays as last read)."""
        if self.leader:
            return False
        from deliverypool.state.backends import BackendUnavailable

        store = self.fleet.store
        try:
            if self.fleet.candidate:
                seq = await store.field("dnsbl", "seq")
                if seq is not None and seq != self._seq:
                    text = await store.field("dnsbl", "state")
                    if text is not None:
                        self._apply_state(text)
                        self._seq = seq
                        changed = self.drained.update(self._drained_set())
                        await self._save_local()
                        if changed:
                            log.info("dnsbl: drained source addresses now %s", self._describe())
                return True
            text = await store.field("dnsbl", "drained")
        except BackendUnavailable:
            return False
        if text is None:
            return True
        drained = {pool: frozenset(a for a in addresses if a in self.sources) for pool, addresses in json.loads(text).items()}
        if self.drained.update(drained):
            log.info("dnsbl: drained source addresses now %s", self._describe())
        return True

    # --- views -----------------------------------------------------------------------------

    def listed_gauge(self) -> list[tuple[str, str, str, float]]:
        """(address, pool, zone, 1 or 0) for deliverypool_dnsbl_listed: configured values only."""
        return [
            (address, pool, zone, 1.0 if self.cells[(address, zone)].listed else 0.0)
            for address, source in self.sources.items()
            for pool in source.pools
            for zone in self.zones
        ]

    def view(self) -> dict[str, Any]:
        """``GET /api/dnsbl``: the zones' test points, every address in every zone, the
        drained addresses and the pools' addresses in rotation."""
        zones: dict[str, Any] = {}
        for zone in self.zones:
            entry: dict[str, Any] = {}
            for family in self.families:
                row = self.zone_rows[(zone, family)]
                entry[family_name(family)] = {"state": row.state, "detail": row.detail, "since": _iso(row.since), "checked_at": _iso(row.checked)}
            refusals = self.zone_rows[(zone, _REFUSALS)]
            entry["refusing"] = refusals.state == "refused"
            if entry["refusing"]:
                entry["refusal"] = refusals.detail
            zones[zone] = entry
        addresses = []
        for address, source in self.sources.items():
            cells = {}
            for zone in self.zones:
                cell = self.cells[(address, zone)]
                cells[zone] = {
                    "state": cell.state,
                    "listed": cell.listed,
                    "codes": list(cell.codes),
                    "reason": cell.reason,
                    "detail": cell.detail,
                    "listed_since": _iso(cell.since),
                    "checked_at": _iso(cell.checked),
                }
            addresses.append(
                {
                    "address": address,
                    "pools": list(source.pools),
                    "drained": any(self.drained.is_drained(pool, address) for pool in source.pools),
                    "zones": cells,
                }
            )
        return {
            "zones": zones,
            "addresses": addresses,
            "drained": {pool: sorted(a) for pool, a in sorted(self.drained.by_pool.items())},
            "in_rotation": {pool: self.in_rotation(pool) for pool in self.config.pools},
            "normal_listed": self.settings.normal_listed,
            "interval_seconds": self.settings.interval,
            "last_cycle": _iso(self.last_cycle),
            "last_cycle_queries": self.last_queries,
            "queries_per_day": queries_per_day(self.config),
            **({"fleet": {"leading": self.leader, "checked_by": self.checked_by, "cycles": self.cycles}} if self.fleet is not None else {}),
        }


def _iso(at: float | None) -> str | None:
    return None if at is None else iso_time(at)
