"""The observer of one relay process: the event bus and its subscribers (metrics, DSN windows,
the event log), the periodic flush into the shared state database, and, in the process that
leads (worker 0 of ``deliverypool relay``, or an embedded relay), the surge monitor, the alerts
and the admin listener.

The relay calls four hooks, each quick and never raising into the SMTP path: `accepted` (a
message was spooled and routed), `attempt` (a delivery attempt ended), `generated` (the relay
wrote a DSN) and `commit` (a spool commit took so long).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deliverypool._core import Decision, scan
from deliverypool.config import NO_TENANT, RelayConfig
from deliverypool.config.credentials import webhook_secrets
from deliverypool.mail.dsn import Failure
from deliverypool.observe.alerts import Webhook, log_alert
from deliverypool.observe.bounce import bounce_category, normalize_status
from deliverypool.observe.events import (
    AuthProblem,
    DeliveryAttempt,
    DsnGenerated,
    DsnRelayed,
    Event,
    EventBus,
    MessageAccepted,
    MessageAuth,
    SrsChecked,
    as_json,
)
from deliverypool.observe.fleet import NODE_ALERTS, Fleet, fleet_enabled, node_name
from deliverypool.observe.metrics import MetricsRecorder, RelayCollector, registry_for
from deliverypool.observe.reports import DsnRecipient, read_report
from deliverypool.observe.seen import RelayedIds
from deliverypool.observe.senders import SenderAlerts
from deliverypool.observe.surge import SurgeMonitor
from deliverypool.routing.tenants import Tenants
from deliverypool.state.fleet import FleetStore
from deliverypool.state.limits import enabled as limits_enabled
from deliverypool.state.observations import STATE_DATABASE, Labels, ObservationStore

if TYPE_CHECKING:
    from deliverypool.auth.dkim import DkimOutcome
    from deliverypool.routing.auth import AuthVerdict
    from deliverypool.routing.scores import ScoreStats

__all__ = ["EventLog", "Observer"]

log = logging.getLogger("deliverypool.observe")

_DAEMONS = frozenset({"mailer-daemon", "postmaster", "mailer_daemon", "mail-daemon"})
_PER_DSN = 50  # failed recipients kept per DSN record


class EventLog:
    """An event subscriber that writes JSON lines to a file, rotated at a size (``events.jsonl``,
    ``.1`` ... ``.N``). Lines are buffered and written by `flush`, on a thread."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.lines: list[str] = []

    def __call__(self, event: Event) -> None:
        self.lines.append(json.dumps(as_json(event), separators=(",", ":"), default=str))

    def flush(self) -> None:
        lines, self.lines = self.lines, []
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")
        if self.path.stat().st_size >= self.max_bytes:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


class Observer:
    def __init__(
        self,
        config: RelayConfig,
        *,
        spool_root: Path,
        worker: str,
        leader: bool,
        clock: Callable[[], float] = time.time,
        run_loops: bool = True,
    ) -> None:
        self.config = config
        self.worker = worker
        self.leader = leader
        self.clock = clock
        self.run_loops = run_loops
        self.enabled = config.observe.enabled
        self.tenants = Tenants(config.tenants)
        self.bus = EventBus(config.observe.queue_size)
        self.metrics = MetricsRecorder(config)
        self.bus.subscribe("metrics", self.metrics)
        self.bus.subscribe("dsn-windows", self._window_record)
        self.event_log: EventLog | None = None
        if config.observe.event_log is not None:
            path = config.observe.event_log if config.observe.event_log.is_absolute() else spool_root / config.observe.event_log
            self.event_log = EventLog(path, max_bytes=config.observe.event_log_size, keep=config.observe.event_log_keep)
            self.bus.subscribe("event-log", self.event_log)
        self.store = ObservationStore(spool_root / STATE_DATABASE)
        self.spool_root = spool_root
        monitor = config.monitor
        self.relayed = RelayedIds(spool_root / "seen", worker, days=monitor.message_id_days, expected=monitor.expected_messages_per_day, clock=clock)
        self.monitor: SurgeMonitor | None = None
        self.webhook: Webhook | None = None
        self.admin: Any = None
        # The sender limits' events, alerts and gauge; `limits` is the relay's Limiter (or None).
        self.senders = SenderAlerts(self)
        self.limits: Any = None
        # The blocklist watch (watch/dnsbl.py), when [dnsbl] has zones: the relay sets it.
        self.dnsbl: Any = None
        # With [state] redis (and fleet = true): this process's side of the fleet (observe/fleet.py).
        self.fleet: Fleet | None = None
        if fleet_enabled(config):
            assert config.state.redis is not None
            store = FleetStore(
                config.state.redis, prefix=config.state.key_prefix, timeout=config.state.timeout, window=config.monitor.window,
                dsns_per_tenant=config.state.dsns_per_tenant,
            )
            self.fleet = Fleet(self, store, node=node_name(config), candidate=leader, clock=clock)
        self.registry = registry_for(
            RelayCollector(
                self.store, str(spool_root), surges=self._active, tenants=self.tenants.names,
                restricted=(lambda: self.senders.restricted_by_tenant) if limits_enabled(config) else None,
                dnsbl=self._dnsbl_listed,
                fleet=self._fleet_gauges if self.fleet is not None and leader else None,
            )
        )
        self._dsns: list[tuple[float, str, str, dict[str, Any]]] = []
        self._dropped: dict[str, int] = {}
        # The score source's counters (routing/scores.py), when there is one: the relay sets it.
        self.scores: ScoreStats | None = None
        self._scores_seen: dict[str, int] = {}
        self._last_dsn_id = 0
        self._last_saved = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store_open = False
        self._store_failed = False

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.enabled:
            return
        # Observations never stop the relay: without its state database (a full disk, say) it
        # runs, counts in memory and tries again at each flush.
        await self._ensure_store()
        if self.fleet is not None:
            await self.fleet.store.open()
        try:
            await self._thread(self.relayed.load)
        except OSError as exc:
            log.warning("observer: cannot read the relayed Message-IDs in %s: %s", self.relayed.directory, exc)
        await self.bus.start()
        # Every worker raises sender-limit alerts: each posts its own to the webhook.
        if (self.leader or limits_enabled(self.config)) and self.config.alerts.webhook is not None:
            self.webhook = Webhook(self.config.alerts, webhook_secrets(self.config.alerts, self.spool_root))
            await self.webhook.start()
        if self.leader and self.config.admin.address is not None:
            from deliverypool.observe.admin import AdminServer

            # Its tokens and certificates are read here: a problem is a ConfigError before the
            # relay listens for mail.
            self.admin = AdminServer(self, self.config.admin)
            await self.admin.start()
            log.info("admin listener on %s (/metrics, /healthz, /api/...; %s)", self.admin.url, self.admin.describe_access())
        if self.fleet is not None and self.fleet.candidate:
            await self.fleet.tick()  # the first node up leads at once
        if self.run_loops:
            self._tasks.append(asyncio.ensure_future(self._every(self.config.observe.flush_interval, self.flush)))
            if self.monitor is not None or (self.fleet is not None and self.fleet.candidate):
                self._tasks.append(asyncio.ensure_future(self._every(self.config.monitor.tick, self.evaluate)))
            if self.fleet is not None and self.fleet.candidate:
                self._tasks.append(asyncio.ensure_future(self._every(self.fleet.ttl / 3, self.fleet.tick)))

    async def _ensure_store(self) -> bool:
        if self._store_open:
            return True
        try:
            await self._thread(self.store.open)
        except (OSError, sqlite3.Error) as exc:
            if not self._store_failed:
                log.warning("observer: cannot open the state database %s (%s); metrics and surge windows wait for it", self.store.path, exc)
            self._store_failed = True
            return False
        self._store_open = True
        self._store_failed = False
        if self.monitor is None and self.leader and self.config.monitor.enabled and self.fleet is None:
            await self._start_monitor()
        return True

    async def _start_monitor(self) -> None:
        now = self.clock()
        started = await self._thread(lambda: self.store.meta("monitor_started"))
        if started is None:
            started = now
            await self._thread(lambda: self.store.set_meta("monitor_started", now))
        saved = await self._thread(self.store.baselines)
        monitor = self.config.monitor
        learn = max(monitor.window, monitor.baseline / 12)
        baselines = {tenant: rate for tenant, (rate, _) in saved.items()} if now - started >= learn else None
        domains = {name: self.tenants.domains(name) for name in self.tenants.names}
        self.monitor = SurgeMonitor(monitor, tenant_domains=domains, started=started, baselines=baselines)
        # The DSNs of the current window (a restarted leader picks its windows up again).
        self._last_dsn_id = 0
        await self._read_dsns(now)

    async def stop(self) -> None:
        if not self.enabled:
            return
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self.bus.stop()
        await self.senders.drain()
        with contextlib.suppress(Exception):
            await self.flush()
        if self.fleet is not None:
            await self.fleet.resign()
            await self.senders.drain()
            await self.fleet.store.close()
        if self.admin is not None:
            await self.admin.stop()
        if self.webhook is not None:
            await self.webhook.stop()
        if self._store_open:
            await self._thread(self.store.close)

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        """Runs `work` every `seconds`. A failure is logged when it starts and when it ends, not
        at every round (a full disk fails every flush until it has room again)."""
        name = getattr(work, "__name__", "work")
        failing = False
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except (OSError, sqlite3.Error) as exc:  # the disk (full, say): no traceback to add
                if not failing:
                    log.error("observer: periodic %s failed: %s (logged again only once it works)", name, exc)
                failing = True
            except Exception:
                if not failing:
                    log.exception("observer: periodic %s failed (logged again only once it works)", name)
                failing = True
            else:
                if failing:
                    log.warning("observer: periodic %s works again", name)
                failing = False

    async def _thread(self, work: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, work)

    # --- hooks called by the relay ---------------------------------------------------------

    def accepted(
        self,
        *,
        queue_id: str,
        decision: Decision,
        content: bytes,
        tenant: str | None,
        peer: str | None,
        recipients: int,
        message_id: str | None,
        dkim: DkimOutcome | None = None,
        auth: AuthVerdict | None = None,
    ) -> None:
        """A message was spooled: publishes MessageAccepted, and DsnRelayed for a DSN; the
        Message-ID of any other message joins the relayed set. With authentication, an
        AuthProblem when it found one."""
        if not self.enabled:
            return
        now = self.clock()
        dsn = decision.dsn
        pools = decision.recipient_pools
        split = tuple(dict.fromkeys(pools)) if any(p != decision.pool for p in pools) else ()
        found = None
        if auth is not None:
            facts = auth.facts
            found = MessageAuth(facts.spf, facts.dmarc, facts.disposition, auth.envelope_from is not None)
            if auth.problem is not None:
                self.bus.publish(AuthProblem(now, queue_id, tenant, auth.problem, decision.from_domain))
        self.bus.publish(
            MessageAccepted(
                now, queue_id, tenant, decision.pool, tuple(decision.reasons), peer, recipients, message_id,
                dsn.kind if dsn is not None else None, tuple(dsn.signals) if dsn is not None else (), dkim,
                decision.rule, split, found,
            )
        )
        if dsn is None:
            if message_id:
                self.relayed.add(message_id)
            return
        report = read_report(scan(content))
        original = report.original_message_id
        from_domain = report.original_from_domain
        own = self.tenants.domains(tenant)
        from_tenant = from_domain is not None and (from_domain in own or self.tenants.owner_of(from_domain) == tenant)
        self.bus.publish(
            DsnRelayed(now, queue_id, tenant, decision.pool, peer, report, self.relayed.relayed(original) if original else None, bool(tenant and from_tenant))
        )

    def srs_checked(self, outcome: str, address: str = "", client: str | None = None) -> None:
        """A recipient at the SRS domain was checked at RCPT (ingress/srs.py)."""
        if not self.enabled:
            return
        self.bus.publish(SrsChecked(self.clock(), outcome, address[:254], client))

    def attempt(self, *, queue_id: str, pool: str, source: str | None, destination: str, host: str | None, reply: str, replies: Mapping[int, tuple[str, str | None]] | None, recipients: int) -> None:
        if not self.enabled:
            return
        codes = [r[:1] for r, _ in replies.values()] if replies else [reply[:1]] * recipients
        delivered, failed = codes.count("2"), codes.count("5")
        self.bus.publish(DeliveryAttempt(self.clock(), queue_id, pool, source, destination, host, reply[:200], delivered, len(codes) - delivered - failed, failed))

    def generated(self, *, queue_id: str, dsn_queue_id: str, pool: str, failures: list[Failure], tenant: str | None) -> None:
        if not self.enabled:
            return
        recipients = tuple(
            DsnRecipient(f.recipient.lower()[:254], "failed", normalize_status(f.reply), bounce_category(f.reply, f.reply)) for f in failures
        )
        self.bus.publish(DsnGenerated(self.clock(), queue_id, dsn_queue_id, tenant, pool, recipients))

    def commit(self, seconds: float) -> None:
        if not self.enabled:
            return
        self.metrics.observe_commit(seconds)

    # --- the DSN windows -------------------------------------------------------------------

    def _window_record(self, event: Event) -> None:
        if not isinstance(event, DsnRelayed):
            return
        report = event.report
        tenant = event.tenant if event.tenant in self.tenants.config else NO_TENANT
        own = self.tenants.domains(event.tenant)
        failed = report.failed[:_PER_DSN]
        original_local = (report.original_from or "").split("@", 1)[0]
        record = {
            "s": [r.status for r in failed],
            "c": [r.category for r in failed],
            "r": [[r.local_part or "", r.domain or ""] for r in failed],
            "own": sum(1 for r in failed if r.domain in own),
            "m": report.reporting_mta,
            "cl": event.client,
            "k": event.original_relayed,
            "ft": event.original_from_tenant,
            "fp": report.fingerprint,
            "x": report.malformed,
            "loop": original_local in _DAEMONS,
        }
        self._dsns.append((event.at, tenant, self.worker, record))

    def _score_deltas(self, stats: ScoreStats) -> dict[tuple[str, Labels], float]:
        """What the score source counted since the last flush, as metric deltas."""
        now = {"verdict": stats.verdicts, "too-large": stats.skipped_too_large, **stats.failures, "fallback": stats.fallback_high_risk}
        deltas: dict[tuple[str, Labels], float] = {}
        for result, value in now.items():
            delta = value - self._scores_seen.get(result, 0)
            if delta:
                name = "deliverypool_score_fallbacks_total" if result == "fallback" else "deliverypool_score_checks_total"
                deltas[(name, () if result == "fallback" else (("result", result),))] = float(delta)
                self._scores_seen[result] = value
        return deltas

    async def flush(self) -> None:
        """Adds this worker's counts and DSN records to the state database; writes the relayed
        Message-IDs and the event log."""
        counts, minutes = self.metrics.take()
        for name, stats in self.bus.stats().items():
            dropped = stats["dropped"] - self._dropped.get(name, 0)
            if dropped:
                counts[("deliverypool_events_dropped_total", (("subscriber", name),))] = float(dropped)
                self._dropped[name] = stats["dropped"]
        if self.scores is not None:
            counts.update(self._score_deltas(self.scores))
        dsns, self._dsns = self._dsns, []
        event_log = self.event_log
        if self.fleet is not None:
            # The DSN records go to the fleet only (its monitor reads them); the per-minute counts
            # to both (this node's own view, while Redis is away).
            await self.fleet.add(dsns, minutes)
            dsns = []
        if not await self._ensure_store():
            return  # these counts are lost: observations, not mail

        def write() -> None:
            self.store.add(counts, dsns, minutes)
            self.relayed.flush()
            if event_log is not None:
                event_log.flush()

        await self._thread(write)

    async def _read_dsns(self, now: float) -> None:
        assert self.monitor is not None
        rows = await self._thread(lambda: self.store.dsns_after(self._last_dsn_id, now - self.config.monitor.window))
        for row in rows:
            self.monitor.add(row.tenant, row.at, row.record)
            self._last_dsn_id = row.id

    async def evaluate(self) -> list[dict[str, Any]]:
        """Reads the DSNs every worker recorded since the last time, slides the windows and
        raises or resolves alerts. Returns the alerts that changed. In a fleet: the leader's
        monitor over every node's records (observe/fleet.py)."""
        if self.fleet is not None:
            changes = await self.fleet.evaluate()
            now = self.clock()
            if self._store_open and now - self._last_saved >= 60:
                self._last_saved = now
                monitor = self.monitor
                baselines = [(tenant, w.baseline, now) for tenant, w in monitor.windows.items()] if monitor is not None else []
                started = monitor.started if monitor is not None else None

                def keep_local() -> None:
                    # A copy of the baselines (a Redis that lost its data), old minutes pruned.
                    if baselines:
                        self.store.save_baselines(baselines)
                    if started is not None:
                        self.store.set_meta("monitor_started", started)
                    self.store.prune(now - 2 * self.config.monitor.window, int((now - max(2 * self.config.monitor.window, 3600)) // 60))

                await self._thread(keep_local)
            return changes
        if self.monitor is None or not self._store_open:
            return []
        now = self.clock()
        await self._read_dsns(now)
        changes = self.monitor.evaluate(now)
        for alert in changes:
            since = self.monitor.windows[alert["tenant"]].since
            await self.publish_alert(alert, since, now if alert["state"] == "resolved" else None)
        if now - self._last_saved >= 60 or changes:
            self._last_saved = now
            monitor = self.monitor
            baselines = [(tenant, w.baseline, now) for tenant, w in monitor.windows.items()]
            window = self.config.monitor.window

            def housekeeping() -> None:
                self.store.save_baselines(baselines)
                self.store.prune(now - 2 * window, int((now - max(2 * window, 3600)) // 60))

            await self._thread(housekeeping)
        return changes

    def _dnsbl_listed(self) -> list[tuple[str, str, str, float]]:
        return self.dnsbl.listed_gauge() if self.dnsbl is not None else []

    async def publish_alert(self, alert: dict[str, Any], since: float, resolved: float | None = None) -> None:
        """Logs an alert (firing or resolved), stores it for GET /api/alerts and queues it for
        the webhook: the surge monitor's alerts and the blocklist watch's."""
        log_alert(alert)
        if self.enabled and self._store_open:
            keep = self.config.monitor.resolved_alerts
            await self._thread(functools.partial(self.store.save_alert, alert, since, resolved, keep))
        if self.webhook is not None:
            self.webhook.post(alert)

    def _fleet_gauges(self) -> tuple[float, float]:
        fleet = self.fleet
        return (0.0, 0.0) if fleet is None else (float(fleet.leading), float(fleet.degraded))

    def _active(self) -> list[dict[str, Any]]:
        if self.fleet is not None:
            return self.fleet.active_surges()
        if self.monitor is not None:
            return self.monitor.active()
        return [alert for alert in self.store.alerts()[0] if alert["type"] == "dsn-surge"]

    async def alerts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        active, resolved = await self._thread(self.store.alerts) if self._store_open else ([], [])
        if self.fleet is not None:
            fleet = await self.fleet.alerts()
            up = fleet is not None
            if fleet is None:  # Redis away: the fleet's alerts as last read, and this node's own
                fleet = (self.fleet.active, self.fleet.resolved)
            known = {a["id"] for a in (*fleet[0], *fleet[1])}
            # This node's own alerts (its Redis connection); all it stored while Redis is away.
            mine = [a for a in (*active, *resolved) if a["id"] not in known and (not up or str(a["id"]).startswith(NODE_ALERTS))]
            active = [*fleet[0], *(a for a in mine if a["state"] == "firing")]
            resolved = [*fleet[1], *(a for a in mine if a["state"] == "resolved")]
            resolved.sort(key=lambda a: a.get("resolved_at") or "", reverse=True)
        return active, resolved[: self.config.monitor.resolved_alerts]

    async def tenant_view(self) -> dict[str, Any]:
        """Per tenant (and ``none``): messages and DSNs per minute over the window, the DSN
        baseline and the active surge."""
        now = self.clock()
        window = self.config.monitor.window
        minutes = max(1.0, window / 60)
        fleet_view = await self.fleet.tenants(now) if self.fleet is not None else None
        if fleet_view is not None:
            counts, snapshot = fleet_view
        else:  # this node's own (without a fleet, or with Redis away: the fleet's snapshot as last read)
            counts = await self._thread(lambda: self.store.rates(int((now - max(window, 60)) // 60) + 1)) if self._store_open else {}
            snapshot = self.monitor.snapshot(now) if self.monitor is not None else self.fleet.snapshot if self.fleet is not None else {}
        tenants: dict[str, Any] = {}
        for name in (*self.tenants.names, NO_TENANT):
            row = snapshot.get(name, {"dsns_in_window": 0, "dsns_per_minute": 0.0, "baseline_per_minute": 0.0, "surge": None})
            tenants[name] = {
                "messages_per_minute": round(counts.get((name, "messages"), 0) / minutes, 2),
                "relayed_dsns_per_minute": round(counts.get((name, "dsns"), 0) / minutes, 2),
                **row,
            }
        active, _ = await self.alerts()
        view = {"at": now, "window_seconds": window, "tenants": tenants, "active_alerts": active}
        if self.fleet is not None:
            view["fleet"] = await self.fleet.view()
        return view
