"""What the sender limits show operators: the events ``sender-restricted``,
``sender-limit-alert`` and ``sender-released`` on the event stream, the alerts of the same types
and ``state-backend-unavailable`` (logged on ``deliverypool.alerts``, stored for ``GET
/api/alerts``, POSTed to the webhook), and the gauge ``deliverypool_senders_restricted{tenant}``.

Every worker checks limits, so every worker may raise an alert; the alerts table of the state
database makes each one fire once per node: the worker that stores it first logs and posts it,
and so does the one that resolves it (`ObservationStore.fire_alert`, `resolve_alert`). An
alert's id comes from what it is about (the sender and the restriction's start), so a release
made elsewhere — by the CLI, or on another node sharing the Redis — resolves it too: the
leader's sweep finds the firing alerts whose restriction is gone.

Alert bodies::

    {"id": "sr-...", "type": "sender-restricted", "state": "firing", "tenant": "acme", "cause": "per_day",
     "sender": "app@acme.example", "window": "per_day", "count": 50, "maximum": 50, "action": "block",
     "since": "...Z", "until": null, "fired_at": "...Z"}
    ... then, same id: "type": "sender-released", "state": "resolved", "reason": "released" | "expired",
     "resolved_at": "...Z", "duration_seconds": 12.0
    {"id": "sl-...", "type": "sender-limit-alert", "state": "firing", "sender": ..., "window": "external_per_hour",
     "count": 501, "maximum": 500, "action": "alert", "refused": false, ...}   (resolved when its window has passed)
    {"id": "sb-...", "type": "state-backend-unavailable", "state": "firing", "tenant": "none",
     "cause": "unreachable", "backend": "redis://...", "fail": "open", "error": "..."}   (resolved when it is back)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deliverypool.config import NO_TENANT
from deliverypool.observe.alerts import log_alert
from deliverypool.observe.events import SenderLimitAlert, SenderReleased, SenderRestricted
from deliverypool.observe.fleet import NODE_ALERTS
from deliverypool.observe.surge import iso_time
from deliverypool.state.backends import WINDOW_SECONDS, Restriction

if TYPE_CHECKING:
    from deliverypool.observe.service import Observer

__all__ = ["SenderAlerts", "restriction_alert_id"]

log = logging.getLogger("deliverypool.observe")


def _id(prefix: str, *parts: object) -> str:
    return prefix + hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def restriction_alert_id(restriction: Restriction) -> str:
    return _id("sr-", restriction.sender, repr(restriction.since))


class SenderAlerts:
    """The observer's `LimitsListener` (see the module documentation)."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self.restricted_by_tenant: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _tenant(self, tenant: str | None) -> str:
        return tenant if tenant in self.observer.tenants.config else NO_TENANT

    def _later(self, work: Callable[[], Any]) -> None:
        """Runs the store work (blocking SQLite) on a thread, after this call returns."""

        async def run() -> None:
            await self.observer._thread(work)

        self._later_async(run)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _fire(self, alert: dict[str, Any], since: float) -> None:
        fleet = self.observer.fleet
        if fleet is None:
            self.fire_local(alert, since)
            return

        async def fire() -> None:
            stored = await fleet.fire_alert(alert, since)
            if stored is None:  # Redis away: this node's store, handed over when it is back
                self.fire_local(alert, since)
            elif stored:
                self._announce(alert)

        self._later_async(fire)

    def fire_local(self, alert: dict[str, Any], since: float) -> None:
        """Stores `alert` in this node's state database unless it fires there already, and
        announces it if stored (without a state database: logged only)."""
        observer = self.observer
        if not observer._store_open:
            log_alert(alert)
            return

        def work() -> None:
            if observer.store.fire_alert(alert, since):
                self._announce(alert)

        self._later(work)

    def _resolve(self, alert_id: str, update: dict[str, Any], now: float) -> None:
        fleet = self.observer.fleet
        if fleet is None or alert_id.startswith(NODE_ALERTS):
            self.resolve_local(alert_id, update, now)
            return

        async def resolve() -> None:
            reached, body = await fleet.resolve_alert(alert_id, update, now)
            if body is not None:
                self._announce(body)
            # Fired while Redis was away, it may be in this node's store still.
            if not reached or body is None:
                self.resolve_local(alert_id, update, now)

        self._later_async(resolve)

    def resolve_local(self, alert_id: str, update: dict[str, Any], now: float) -> None:
        observer = self.observer
        if not observer._store_open:
            return

        def work() -> None:
            body = observer.store.resolve_alert(alert_id, update, now, observer.config.monitor.resolved_alerts)
            if body is not None:
                self._announce(body)

        self._later(work)

    def _announce(self, alert: dict[str, Any]) -> None:
        """Logs `alert` and queues it for the webhook (from the store's thread: to the loop)."""
        log_alert(alert)
        webhook = self.observer.webhook
        loop = self.observer._loop
        if webhook is not None and loop is not None:
            loop.call_soon_threadsafe(webhook.post, alert)

    def _publish(self, event: SenderRestricted | SenderLimitAlert | SenderReleased) -> None:
        if self.observer.enabled:
            self.observer.bus.publish(event)

    # --- LimitsListener ----------------------------------------------------------------------

    def restricted(self, restriction: Restriction) -> None:
        r = restriction
        self._publish(SenderRestricted(r.since, r.sender, r.tenant, r.window, r.count, r.maximum, r.action, r.until))
        alert = {
            "id": restriction_alert_id(r), "type": "sender-restricted", "state": "firing", "tenant": self._tenant(r.tenant),
            "cause": r.window, "sender": r.sender, "window": r.window, "count": r.count, "maximum": r.maximum, "action": r.action,
            "since": iso_time(r.since), "until": iso_time(r.until) if r.until is not None else None, "fired_at": iso_time(r.since),
            "at": r.since,
        }
        self._fire(alert, r.since)

    def limit_reached(self, *, sender: str, tenant: str | None, window: str, count: int, maximum: int, action: str, refused: bool, now: float) -> None:
        self._publish(SenderLimitAlert(now, sender, tenant, window, count, maximum, action, refused))
        seconds = WINDOW_SECONDS.get(window, 86400.0)
        alert = {
            "id": _id("sl-", sender, tenant, window, repr(now)), "type": "sender-limit-alert", "state": "firing",
            "tenant": self._tenant(tenant), "cause": window, "sender": sender, "window": window, "count": count, "maximum": maximum,
            "action": action, "refused": refused, "fired_at": iso_time(now), "at": now, "window_seconds": seconds,
        }
        self._fire(alert, now)

    def released(self, restriction: Restriction, *, reason: str, now: float) -> None:
        r = restriction
        self._publish(SenderReleased(now, r.sender, r.tenant, r.window, reason, r.since))
        update = {"type": "sender-released", "reason": reason, "resolved_at": iso_time(now), "duration_seconds": round(now - r.since, 1)}
        self._resolve(restriction_alert_id(r), update, now)

    def _backend_id(self, backend: str) -> str:
        # In a fleet, each node raises its own (and keeps it in its own state database).
        fleet = self.observer.fleet
        return _id("sb-", backend) if fleet is None else _id("sb-", backend, fleet.node)

    def backend_unavailable(self, *, backend: str, error: str, fail: str, now: float) -> None:
        alert = {
            "id": self._backend_id(backend), "type": "state-backend-unavailable", "state": "firing", "tenant": NO_TENANT, "cause": "unreachable",
            "backend": backend, "fail": fail, "error": error[:300], "fired_at": iso_time(now), "at": now,
        }
        if self.observer.fleet is not None:
            alert["node"] = self.observer.fleet.node
        self.fire_local(alert, now)

    def backend_available(self, *, backend: str, now: float) -> None:
        self.resolve_local(self._backend_id(backend), {"resolved_at": iso_time(now)}, now)

    def snapshot(self, restrictions: list[Restriction], *, now: float) -> None:
        """The leader's sweep: the gauge, and the alerts whose condition is over (restrictions
        released elsewhere, limit alerts whose window has passed)."""
        counts = {name: 0 for name in (*self.observer.tenants.names, NO_TENANT)}
        for r in restrictions:
            counts[self._tenant(r.tenant)] += 1
        self.restricted_by_tenant = counts
        observer = self.observer
        current = {restriction_alert_id(r) for r in restrictions}
        keep = observer.config.monitor.resolved_alerts

        def over(alert: dict[str, Any]) -> dict[str, Any] | None:
            """The update resolving `alert`, or None while its condition holds."""
            if alert["id"].startswith("sr-"):
                if alert["id"] in current:
                    return None
                until, since = alert.get("until"), float(alert.get("at", now))
                reason = "expired" if until is not None and until <= iso_time(now) else "released"
                return {"type": "sender-released", "reason": reason, "resolved_at": iso_time(now), "duration_seconds": round(now - since, 1)}
            if float(alert.get("at", now)) + float(alert.get("window_seconds", 0)) <= now:
                return {"resolved_at": iso_time(now)}
            return None

        def work() -> list[dict[str, Any]]:
            """Resolves what is over in this node's store; the bodies resolved."""
            ended = []
            for prefix in ("sr-", "sl-"):
                for alert in observer.store.firing(prefix):
                    update = over(alert)
                    if update is not None:
                        body = observer.store.resolve_alert(alert["id"], update, now, keep)
                        if body is not None:
                            self._announce(body)
                            ended.append(body)
            return ended

        async def reconcile() -> None:
            ended: list[dict[str, Any]] = []
            fleet = observer.fleet
            if fleet is not None:
                for prefix in ("sr-", "sl-"):
                    for alert in await fleet.firing(prefix) or ():
                        update = over(alert)
                        if update is not None:
                            _, body = await fleet.resolve_alert(alert["id"], update, now)
                            if body is not None:
                                self._announce(body)
                                ended.append(body)
            if observer._store_open:
                ended += await observer._thread(work)
            for body in ended:
                if body.get("type") == "sender-released":
                    tenant = body["tenant"] if body["tenant"] != NO_TENANT else None
                    self._publish(SenderReleased(now, body["sender"], tenant, body["window"], body["reason"], float(body.get("at", now))))

        self._later_async(reconcile)

    def _later_async(self, work: Callable[[], Any]) -> None:
        async def run() -> None:
            try:
                await work()
            except Exception:
                log.exception("sender alerts: the sweep's alerts failed")

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
