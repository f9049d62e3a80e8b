"""What operators see of the spool's disk: when a shard enters low-space mode or its state
changes start failing (:mod:`deliverypool.queue.spool`), one alert fires and one resolves when
it ends, and counters count them:

| metric | labels |
| --- | --- |
| ``deliverypool_spool_conditions_total`` (counter: times a shard entered the condition) | ``condition``: ``low-space``, ``stalled`` |
| ``deliverypool_spool_refused_total`` (counter: messages refused because the spool could not store them: 452 or 451) | none |

Alert bodies (``type`` ``spool-low-space`` or ``spool-stalled``, severity critical: mail is
refused while either lasts)::

    {"id": "sp-...", "type": "spool-low-space", "state": "firing", "severity": "critical",
     "worker": "shard-0", "directory": "/var/spool/deliverypool/shard-0", "free": 1048576,
     "reserve": 16777216, "since": "...Z", "fired_at": "...Z"}
    {"id": "sp-...", "type": "spool-stalled", "state": "firing", "severity": "critical",
     "worker": "shard-1", "error": "database or disk is full", ...}
    ... then, same id: "state": "resolved", "resolved_at": "...Z"

The alerts are stored like the others when the state database can be written (on a full disk
it often cannot: they are still logged on ``deliverypool.alerts`` and POSTed to the webhook).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from deliverypool.observe.surge import iso_time

if TYPE_CHECKING:
    from deliverypool.observe.service import Observer

__all__ = ["CONDITIONS", "SpoolConditions"]

log = logging.getLogger("deliverypool.observe")

CONDITIONS: Final = ("low-space", "stalled")
REFUSED: Final = "deliverypool_spool_refused_total"
ENTERED: Final = "deliverypool_spool_conditions_total"


class SpoolConditions:
    """The spool's `on_condition` for one relay process (see the module)."""

    def __init__(self, observer: Observer, clock: Any = time.time) -> None:
        self.observer = observer
        self.clock = clock
        # condition -> (alert id, since) while it lasts
        self.active: dict[str, tuple[str, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def refused(self) -> None:
        """A message was refused because the spool could not store it."""
        if self.observer.enabled:
            self.observer.metrics.add(REFUSED, ())

    def __call__(self, name: str, active: bool, details: dict[str, Any]) -> None:
        if name not in CONDITIONS:
            return
        now = self.clock()
        worker = self.observer.worker
        if active:
            if name in self.active:
                return
            alert_id = "sp-" + hashlib.sha256(f"{worker}\x1f{name}\x1f{now!r}".encode()).hexdigest()[:16]
            self.active[name] = (alert_id, now)
            if self.observer.enabled:
                self.observer.metrics.add(ENTERED, (("condition", name),))
            alert = {"id": alert_id, "type": f"spool-{name}", "state": "firing", "severity": "critical", "worker": worker, **details,
                     "since": iso_time(now), "fired_at": iso_time(now)}
            self._publish(alert, now, None)
        else:
            found = self.active.pop(name, None)
            if found is None:
                return
            alert_id, since = found
            alert = {"id": alert_id, "type": f"spool-{name}", "state": "resolved", "severity": "critical", "worker": worker, **details,
                     "since": iso_time(since), "resolved_at": iso_time(now), "duration_seconds": round(now - since, 1)}
            self._publish(alert, since, now)

    def _publish(self, alert: dict[str, Any], since: float, resolved: float | None) -> None:
        observer = self.observer
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        async def publish() -> None:
            try:
                await observer.publish_alert(alert, since, resolved)
            except Exception:
                # Storing it failed (the state database shares the full disk): it was logged;
                # the webhook still gets it.
                if observer.webhook is not None:
                    observer.webhook.post(alert)

        task = loop.create_task(publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
