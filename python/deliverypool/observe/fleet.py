"""One relay process's part in a fleet of nodes sharing one Redis (``[state] redis``, ``fleet =
true``; the keys are in :mod:`deliverypool.state.fleet`, the operator's side in
docs/operations/fleet.md).

**Every worker of every node** adds its DSN records and its per-minute message and DSN counts
per tenant to Redis at each ``observe.flush_interval`` (`Fleet.add`), besides its metric
counters, which stay in the node's own ``SPOOL/state.sqlite3``: ``/metrics`` is per node, and
Prometheus sums the nodes.

**The leading process of each node** (worker 0, the one with the admin listener) is a
*candidate*: every third of ``[state] leader_ttl`` it renews the fleet's lease if it holds it, or
bids for it (`Fleet.tick`). The one that holds it runs the fleet-wide jobs: the surge monitor
over every node's DSN records (`Fleet.evaluate`) and the blocklist watch's cycles
(watch/dnsbl.py); it writes what they decide (alerts, baselines, the per-tenant snapshot, the
blocklist state and the drained set) in one fenced step (`FleetStore.commit`), and announces an
alert (log, webhook) only once that step succeeded. A leader that dies stops renewing: its lease
expires within ``leader_ttl``, and the next candidate to bid (within a third of it) takes over,
reading the window's DSN records, the baselines and the firing surges back from Redis, so it
neither fires again what fires already nor learns the baselines again. Whatever fails in the
leader's writes (the lease moved, Redis away) makes it step down: nothing it decided is
announced, and whoever leads next reads the state from Redis again.

**Redis away.** No client ever sees it: mail is accepted and delivered as always. Each worker
keeps the DSN records and counts it could not add (at most ``[state] backlog`` records; those
older than the surge window by then are dropped: they no longer count) and adds them when Redis
answers again. The candidate raises ``fleet-degraded`` (this node's alert, kept in its own state
database) and resolves it once Redis answers and its backlog is in; meanwhile the node's admin
API shows its own view (``"fleet": {"degraded": true}``), the fleet-wide jobs pause (a leader
that cannot renew its lease steps down when it runs out), and every worker keeps the drained
set it last read.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol

from deliverypool.config import NO_TENANT, RelayConfig
from deliverypool.observe.alerts import log_alert
from deliverypool.observe.surge import SurgeMonitor, iso_time
from deliverypool.state.backends import BackendUnavailable
from deliverypool.state.fleet import FleetStore

if TYPE_CHECKING:
    from deliverypool.observe.service import Observer

__all__ = ["Fleet", "FleetJob", "NODE_ALERTS", "fleet_enabled", "node_name"]

log = logging.getLogger("deliverypool.fleet")

# Alerts about this node (its Redis connection, its spool): kept in its own state database,
# never in Redis, and shown beside the fleet's.
NODE_ALERTS: Final = ("fd-", "sb-", "sp-")
# How often the leader writes the clients and reporting MTAs seen per tenant (for takeovers).
_HISTORY_EVERY: Final = 60.0

DsnRow = tuple[float, str, str, dict[str, Any]]


def fleet_enabled(config: RelayConfig) -> bool:
    return config.state.redis is not None and config.state.fleet and config.observe.enabled


def node_name(config: RelayConfig) -> str:
    return config.state.node or f"{socket.gethostname()}:{config.listener.port}"


class FleetJob(Protocol):
    """A fleet-wide job besides the surge monitor (the blocklist watch): told when this process
    starts and stops leading."""

    async def lead(self) -> None: ...

    async def follow(self) -> None: ...


class Fleet:
    """This process's side of the fleet (see the module documentation). `candidate`: the node's
    leading process, which bids for the lease, runs the fleet-wide jobs while it holds it, and
    raises the node's ``fleet-degraded`` alert."""

    def __init__(self, observer: Observer, store: FleetStore, *, node: str, candidate: bool, clock: Callable[[], float] = time.time) -> None:
        self.observer = observer
        self.config = observer.config
        self.store = store
        self.node = node
        self.candidate = candidate
        self.clock = clock
        self.ttl = self.config.state.leader_ttl
        self.window = self.config.monitor.window
        self.token: str | None = None
        self.holder: str | None = None
        self.valid_until = 0.0
        self.leading_since: float | None = None
        self.takeovers = 0
        self.monitor: SurgeMonitor | None = None
        self.last_ids: dict[str, str] = {}
        self.jobs: list[FleetJob] = []
        # What could not be added yet (Redis away): DSN records and per-minute counts.
        self.backlog: collections.deque[DsnRow] = collections.deque()
        self.backlog_rates: dict[tuple[int, str, str], int] = {}
        self.added_late = 0
        self.dropped = 0
        self.down_since: float | None = None
        self.down_error = ""
        self._degraded: dict[str, Any] | None = None
        # The fleet's alerts and per-tenant snapshot as last read (served while Redis is away).
        self.active: list[dict[str, Any]] = []
        self.resolved: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] = {}
        self.monitor_meta: dict[str, Any] = {}
        self._history_saved = 0.0

    @property
    def leading(self) -> bool:
        return self.token is not None

    @property
    def degraded(self) -> bool:
        return self.down_since is not None

    # --- every worker: its records and counts into Redis ---------------------------------------

    async def add(self, dsns: Sequence[DsnRow], rates: Mapping[tuple[int, str, str], int]) -> bool:
        """Adds DSN records and counts (with whatever waits from before); never raises. False
        while Redis cannot be reached (they wait)."""
        self.backlog.extend(dsns)
        for key, count in rates.items():
            self.backlog_rates[key] = self.backlog_rates.get(key, 0) + count
        if not self.backlog and not self.backlog_rates:
            return True
        late = self.down_since is not None
        self._trim(self.clock())
        records = list(self.backlog)
        try:
            await self.store.add(records, dict(self.backlog_rates), now=self.clock())
        except BackendUnavailable as exc:
            self._down(str(exc))
            return False
        except Exception:
            log.exception("fleet: adding %d DSN record(s) failed; they wait", len(records))
            return False
        for _ in range(len(records)):
            self.backlog.popleft()
        self.backlog_rates.clear()
        if late:
            self.added_late += len(records)
            log.warning("fleet: %d DSN record(s) counted while Redis was away added", len(records))
            if not self.candidate:
                self.down_since = None
        return True

    def _trim(self, now: float) -> None:
        """Drops what no longer counts (DSN records older than the window, counts older than the
        view's minutes) and, past ``[state] backlog``, the oldest records."""
        horizon = now - self.window
        while self.backlog and self.backlog[0][0] <= horizon:
            self.backlog.popleft()
            self.dropped += 1
        limit = self.config.state.backlog
        while len(self.backlog) > limit:
            self.backlog.popleft()
            self.dropped += 1
        oldest = int((now - self.store.rate_seconds) // 60)
        for key in [k for k in self.backlog_rates if k[0] < oldest]:
            del self.backlog_rates[key]

    def _down(self, error: str) -> None:
        if self.down_since is not None:
            return
        self.down_since = self.clock()
        self.down_error = error
        log.error("fleet: Redis %s unreachable (%s): this node shows its own view; what it counts waits", self.store.url, error)
        if self.candidate:
            self._fire_degraded()

    # --- the candidate: the lease --------------------------------------------------------------

    async def tick(self) -> None:
        """Renews the lease or bids for it, notes this node as alive, and, when Redis answers
        again, adds what waited and resolves ``fleet-degraded``."""
        sent = time.monotonic()
        try:
            if self.token is not None:
                if await self.store.renew(self.token, self.ttl):
                    self.valid_until = sent + self.ttl
                else:
                    log.warning("fleet: %s lost the lease; the fleet-wide jobs are another node's now", self.node)
                    await self.step_down()
            if self.token is None:
                lease = await self.store.acquire(self.node, self.ttl)
                self.holder = lease.node
                if lease.held:
                    self.valid_until = sent + self.ttl
                    await self._take_over(lease.token)
            else:
                self.holder = self.node
            await self.store.heartbeat(self.node, {"seen": self.clock(), "leading": self.token is not None, "worker": self.observer.worker})
            if self.down_since is not None and await self.add((), {}):
                await self._up()
        except BackendUnavailable as exc:
            self._down(str(exc))
            if self.token is not None and time.monotonic() >= self.valid_until:
                log.error("fleet: %s cannot renew its lease: it stops leading", self.node)
                await self.step_down()
        except Exception:
            log.exception("fleet: the lease tick failed")

    async def resign(self) -> None:
        """Gives the lease up (a clean stop), so that the next candidate need not wait for it to expire."""
        token = self.token
        await self.step_down()
        if token is not None:
            try:
                await self.store.resign(token)
            except Exception as exc:
                log.info("fleet: could not give the lease up (%s); it expires within %gs", exc, self.ttl)

    async def _take_over(self, token: str) -> None:
        self.token = token
        self.holder = self.node
        try:
            if self.config.monitor.enabled:
                await self._load_monitor()
            for job in self.jobs:
                await job.lead()
        except BackendUnavailable as exc:
            self._down(str(exc))
            await self.step_down()
            return
        self.leading_since = self.clock()
        self.takeovers += 1
        log.warning("fleet: %s leads (lease %s): surge monitor and blocklist watch run here", self.node, token)

    async def step_down(self) -> None:
        """Stops the fleet-wide jobs here and forgets their state (Redis has it)."""
        if self.token is None and self.monitor is None:
            return
        self.token = None
        self.leading_since = None
        self.monitor = None
        self.observer.monitor = None
        self.last_ids = {}
        for job in self.jobs:
            try:
                await job.follow()
            except Exception:
                log.exception("fleet: a job did not stop leading cleanly")

    # --- the leader: the surge monitor ---------------------------------------------------------

    def _tenants(self) -> list[str]:
        return [*self.observer.tenants.names, NO_TENANT]

    async def _load_monitor(self) -> None:
        """The monitor as the previous leader left it: its start, baselines, history, firing
        surges and the window's DSN records."""
        observer = self.observer
        config = self.config.monitor
        now = self.clock()
        started = float(await self.store.set_field_once("monitor", "started", repr(now)))
        baselines = {tenant: float(rate) for tenant, rate in (await self.store.hash("baselines")).items()}
        if not baselines and observer._store_open:
            # A Redis that lost its data (restarted without persistence): this node's copy, if it led before.
            saved = await observer._thread(observer.store.baselines)
            baselines = {tenant: rate for tenant, (rate, updated) in saved.items() if now - updated < config.baseline}
            local_start = await observer._thread(lambda: observer.store.meta("monitor_started"))
            if baselines and local_start is not None:
                started = min(started, local_start)
        learn = max(config.window, config.baseline / 12)
        domains = {name: observer.tenants.domains(name) for name in observer.tenants.names}
        monitor = SurgeMonitor(config, tenant_domains=domains, started=started, baselines=baselines if now - started >= learn else None)
        for tenant, text in (await self.store.hash("history")).items():
            try:
                monitor.restore(tenant, history=json.loads(text))
            except (ValueError, TypeError, AttributeError):
                continue
        for stored in await self.store.stored_alerts():
            body = stored.body
            if body.get("type") == "dsn-surge" and body.get("state") == "firing":
                monitor.restore(str(body.get("tenant")), alert=body, since=stored.since)
        self.last_ids = {}
        found = await self.store.new_dsns(self.last_ids, tenants=self._tenants())
        for tenant, rows in found.items():
            for at, record in rows:
                if at > now - config.window:
                    monitor.add(tenant, at, record)
        self.monitor = monitor
        observer.monitor = monitor
        self._history_saved = 0.0

    async def evaluate(self) -> list[dict[str, Any]]:
        """The leader's monitor tick: the records added since the last one, the windows slid,
        and the alerts, baselines and snapshot written in one fenced step; then the alerts are
        announced. Elsewhere: the fleet's alerts and snapshot read for this node's view."""
        if self.monitor is None or self.token is None:
            if self.candidate:
                await self.refresh()
            return []
        monitor = self.monitor
        now = self.clock()
        try:
            found = await self.store.new_dsns(self.last_ids)
        except BackendUnavailable as exc:
            self._down(str(exc))
            return []
        for tenant, rows in found.items():
            for at, record in rows:
                if at > now - self.window:
                    monitor.add(tenant, at, record)
        changes = monitor.evaluate(now)
        alerts = []
        for alert in changes:
            since = monitor.windows[alert["tenant"]].since
            alerts.append((alert, since, now if alert["state"] == "resolved" else None))
        snapshot = monitor.snapshot(now)
        hashes: list[tuple[str, Mapping[str, str], bool]] = [
            ("baselines", {tenant: repr(w.baseline) for tenant, w in monitor.windows.items()}, False),
            ("snapshot", {"_meta": json.dumps(self._meta(now)), **{t: json.dumps(row) for t, row in snapshot.items()}}, True),
        ]
        if now - self._history_saved >= _HISTORY_EVERY:
            hashes.append(("history", {t: json.dumps(monitor.history(t)) for t in monitor.windows}, False))
        if not await self.commit_job(alerts, hashes, what="the monitor's tick"):
            return []
        if now - self._history_saved >= _HISTORY_EVERY:
            self._history_saved = now
        self.snapshot, self.monitor_meta = snapshot, self._meta(now)
        self.active = [a for a in self.active if a.get("type") != "dsn-surge"] + monitor.active()
        return changes

    def _meta(self, now: float) -> dict[str, Any]:
        monitor = self.monitor
        return {"at": now, "node": self.node, "learned": monitor is not None and monitor.learned, "started": monitor.started if monitor else None}

    async def commit_job(
        self,
        alerts: Sequence[tuple[dict[str, Any], float, float | None]],
        hashes: Sequence[tuple[str, Mapping[str, str], bool]],
        *,
        what: str = "a blocklist cycle",
    ) -> bool:
        """A fleet-wide job's decisions (the monitor's tick, the blocklist watch's cycle), written
        in one fenced step and then announced; False (nothing written, nothing announced, this
        process no longer leads) when the lease has moved or Redis cannot be reached: whoever
        leads next decides them again from what Redis holds."""
        if self.token is None:
            return False
        try:
            done = await self.store.commit(self.token, alerts=alerts, hashes=hashes, keep=self.config.monitor.resolved_alerts)
        except BackendUnavailable as exc:
            self._down(str(exc))
            done = False
        if not done:
            log.warning("fleet: %s could not be written (lease lost or Redis away): %s stops leading", what, self.node)
            await self.step_down()
            return False
        for alert, since, resolved in alerts:
            self.announce(alert)
            await self._mirror(alert, since, resolved)
        return True

    def announce(self, alert: dict[str, Any]) -> None:
        log_alert(alert)
        if self.observer.webhook is not None:
            self.observer.webhook.post(alert)

    async def _mirror(self, alert: dict[str, Any], since: float, resolved: float | None) -> None:
        """A copy in this node's state database: its own view while Redis is away."""
        observer = self.observer
        if observer._store_open:
            keep = self.config.monitor.resolved_alerts
            try:
                await observer._thread(lambda: observer.store.save_alert(alert, since, resolved, keep))
            except Exception as exc:
                log.debug("fleet: alert %s not copied to the state database: %s", alert.get("id"), exc)

    # --- every candidate: the fleet's view -----------------------------------------------------

    async def refresh(self) -> None:
        """Reads the fleet's alerts and where its monitor runs (for this node's API and gauges)."""
        try:
            self.active, self.resolved = await self.store.alerts()
            # The snapshot itself (a row per tenant) is read when GET /api/tenants asks for it.
            meta = await self.store.field("snapshot", "_meta")
            self.monitor_meta = json.loads(meta) if meta else {}
        except BackendUnavailable as exc:
            self._down(str(exc))

    async def view(self) -> dict[str, Any]:
        """What GET /api/tenants says about the fleet."""
        info: dict[str, Any] = {
            "node": self.node, "leading": self.leading, "leader": self.holder, "degraded": self.degraded, "leader_ttl_seconds": self.ttl,
            # The monitor as the leader last wrote it: where it runs, whether it has learned its baselines.
            "monitor": {"node": self.monitor_meta.get("node"), "learned": bool(self.monitor_meta.get("learned"))},
        }
        if self.degraded:
            info.update(degraded_since=iso_time(self.down_since or 0.0), error=self.down_error)
            return info
        try:
            nodes = await self.store.nodes()
        except BackendUnavailable:
            return info
        now = self.clock()
        alive = {name: row for name, row in nodes.items() if now - float(row.get("seen", 0)) <= 3 * self.ttl}
        info["nodes"] = sorted(alive)
        if self.leading:
            stale = [name for name, row in nodes.items() if now - float(row.get("seen", 0)) > 86400]
            try:
                await self.store.forget_nodes(stale)
            except BackendUnavailable:
                pass
        return info

    async def tenants(self, now: float) -> tuple[dict[tuple[str, str], int], dict[str, Any]] | None:
        """The fleet's per-minute counts over the window and the monitor's snapshot; None when
        Redis cannot be reached."""
        span = max(self.window, 60)
        try:
            counts = await self.store.rates(int((now - span) // 60) + 1, int(now // 60))
            if self.monitor is not None:
                snapshot, self.monitor_meta = self.monitor.snapshot(now), self._meta(now)
            else:
                self.monitor_meta, snapshot = _snapshot(await self.store.hash("snapshot"))
        except BackendUnavailable as exc:
            self._down(str(exc))
            return None
        self.snapshot = snapshot
        return counts, snapshot

    async def alerts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The fleet's alerts, or None when Redis cannot be reached."""
        try:
            self.active, self.resolved = await self.store.alerts()
        except BackendUnavailable as exc:
            self._down(str(exc))
            return None
        return self.active, self.resolved

    def active_surges(self) -> list[dict[str, Any]]:
        if self.monitor is not None:
            return self.monitor.active()
        return [a for a in self.active if a.get("type") == "dsn-surge"]

    # --- alerts any worker raises (sender limits) ----------------------------------------------

    async def fire_alert(self, alert: dict[str, Any], since: float) -> bool | None:
        """True: stored, announce it; False: fires already; None: Redis away (use the node's store)."""
        try:
            return await self.store.fire_alert(alert, since)
        except BackendUnavailable as exc:
            self._down(str(exc))
            return None

    async def resolve_alert(self, alert_id: str, update: dict[str, Any], now: float) -> tuple[bool, dict[str, Any] | None]:
        """(reached Redis, the resolved body or None)."""
        try:
            return True, await self.store.resolve_alert(alert_id, update, now, self.config.monitor.resolved_alerts)
        except BackendUnavailable as exc:
            self._down(str(exc))
            return False, None

    async def firing(self, prefix: str) -> list[dict[str, Any]] | None:
        try:
            return await self.store.firing(prefix)
        except BackendUnavailable as exc:
            self._down(str(exc))
            return None

    # --- fleet-degraded (this node's alert) ----------------------------------------------------

    def _fire_degraded(self) -> None:
        since = self.down_since or self.clock()
        alert = {
            "id": "fd-" + hashlib.sha256(f"{self.node}\x1f{since!r}".encode()).hexdigest()[:16],
            "type": "fleet-degraded", "state": "firing", "severity": "warning", "tenant": NO_TENANT, "cause": "unreachable",
            "node": self.node, "redis": self.store.url, "error": self.down_error[:300], "since": iso_time(since), "fired_at": iso_time(since), "at": since,
            "action": (
                "this node keeps accepting and delivering mail and shows its own view; the fleet-wide jobs (surge monitor, "
                "blocklist watch) pause here and every worker keeps the drained set it last read; the DSN records and counts "
                "taken meanwhile are added when Redis is back"
            ),
        }
        self._degraded = alert
        self.observer.senders.fire_local(alert, since)

    async def _up(self) -> None:
        since = self.down_since or self.clock()
        now = self.clock()
        self.down_since = None
        log.warning("fleet: Redis %s is back (%d DSN record(s) added late, %d dropped): the fleet view again", self.store.url, self.added_late, self.dropped)
        alert, self._degraded = self._degraded, None
        if alert is not None:
            update = {"resolved_at": iso_time(now), "duration_seconds": round(now - since, 1), "added_late": self.added_late, "dropped": self.dropped}
            self.observer.senders.resolve_local(alert["id"], update, now)
        await self._hand_over_local_alerts()

    async def _hand_over_local_alerts(self) -> None:
        """Sender-limit alerts this node stored while Redis was away go to Redis (where every
        node's sweep resolves them)."""
        observer = self.observer
        if not observer._store_open:
            return
        active, _ = await observer._thread(observer.store.alerts)
        for alert in active:
            if str(alert.get("id", "")).startswith(("sr-", "sl-")):
                try:
                    await self.store.fire_alert(alert, float(alert.get("at") or self.clock()))
                except BackendUnavailable:
                    return
                await observer._thread(functools.partial(observer.store.forget_alert, str(alert["id"])))


def _snapshot(rows: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The leader's snapshot as stored: (its meta, the rows by tenant)."""
    found: dict[str, Any] = {}
    for tenant, text in rows.items():
        try:
            found[tenant] = json.loads(text)
        except ValueError:
            continue
    meta = found.pop("_meta", None)
    return meta if isinstance(meta, dict) else {}, found
