"""The DSN surge monitor: per tenant (and for mail with no tenant), the DSN rate over a sliding
window against a learned baseline, and the likely cause of a surge from the DSNs' own content.

**Rate and baseline.** The rate is the DSNs in the last ``monitor.window``, per minute. The
baseline is an exponentially weighted moving average of that rate with time constant
``monitor.baseline``, evaluated every ``monitor.tick``; it is learned for the first
``max(window, baseline / 12)`` after the monitor first starts (the rate over that period
becomes the first baseline; nothing fires meanwhile), then follows the rate while no surge
fires (a surge does not teach the baseline that surges are normal). Baselines persist in the
state database across restarts.

**Firing.** A surge fires when the window holds at least ``min_dsns`` DSNs *and* its rate
exceeds ``factor`` x baseline. It resolves (hysteresis) when the window holds fewer than
``min_dsns / 2`` DSNs or its rate falls below ``resolve_factor`` x baseline (default
``factor / 2``). Each surge fires once and resolves once.

**Cause**, decided once, when the surge fires, from the DSNs in the window (``n`` of them),
first match wins:

1. ``rogue-server`` when half of them repeat another in the window (same failed recipients,
   statuses and original Message-ID), or half are malformed (no per-recipient block can be
   read), or 30% are loops (a bounce of a bounce: the original is from a mailer-daemon);
2. ``backscatter`` when half are about a message this relay never sent (the original
   Message-ID is not among those relayed) although the original From is one of the tenant's
   own domains;
3. ``directory-harvest`` when 60% of the failed recipients are bad mailboxes (5.1.1, 5.1.10,
   "no such user"), with distinct local parts for 70% of them, and 80% of the failed
   recipients are at a few domains (the ``max(3, the tenant's own domains)`` most frequent);
4. ``spam-attack`` when half of the failed recipients are spam- or policy-related (5.7.x,
   "rejected as spam", blocklisted) at five or more distinct domains;
5. ``rogue-server`` when 80% come from one client address, or one reporting MTA, that carried
   less than 20% of the tenant's DSNs before the window;
6. ``unknown`` otherwise.

The evidence reported with the cause is counts and shares; label values (tenant, cause) come
from closed sets, and nothing a client wrote is copied into them.
"""

from __future__ import annotations

import collections
import math
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final

from deliverypool.config import NO_TENANT, MonitorConfig

__all__ = ["CAUSES", "SurgeMonitor", "decide_cause", "iso_time"]

CAUSES: Final = ("directory-harvest", "backscatter", "spam-attack", "rogue-server", "unknown")
_HISTORY: Final = 256


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _share(part: float, whole: float) -> float:
    return round(part / whole, 3) if whole else 0.0


def _top(counter: collections.Counter[str]) -> tuple[str | None, int]:
    if not counter:
        return None, 0
    value, count = counter.most_common(1)[0]
    return value, count


def decide_cause(
    records: list[dict[str, Any]],
    *,
    own_domains: int = 0,
    history_clients: Mapping[str, float] | None = None,
    history_mtas: Mapping[str, float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The cause of a surge made of the DSN `records` and its evidence (see the module
    documentation). `history_*` count the tenant's DSNs per client and reporting MTA before."""
    n = len(records)
    statuses: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[str] = collections.Counter()
    recipients: set[tuple[str, str]] = set()
    locals_: set[str] = set()
    domains: collections.Counter[str] = collections.Counter()
    fingerprints: collections.Counter[str] = collections.Counter()
    clients: collections.Counter[str] = collections.Counter()
    mtas: collections.Counter[str] = collections.Counter()
    failed = own = malformed = loops = backscatter = not_relayed = 0
    for record in records:
        statuses.update(record.get("s", ()))
        categories.update(record.get("c", ()))
        for local, domain in record.get("r", ()):
            recipients.add((local, domain))
            locals_.add(local)
            domains[domain] += 1
        failed += len(record.get("s", ()))
        own += record.get("own", 0)
        fingerprints[record.get("fp", "")] += 1
        if record.get("cl"):
            clients[record["cl"]] += 1
        if record.get("m"):
            mtas[record["m"]] += 1
        malformed += bool(record.get("x"))
        loops += bool(record.get("loop"))
        if record.get("k") is False:
            not_relayed += 1
            backscatter += bool(record.get("ft"))
    repeats = sum(count - 1 for count in fingerprints.values())
    top_client, top_client_count = _top(clients)
    top_mta, top_mta_count = _top(mtas)
    bad_mailbox = categories.get("bad-mailbox", 0)
    spammy = categories.get("spam-related", 0) + categories.get("policy-related", 0)
    evidence: dict[str, Any] = {
        "dsns": n,
        "failed_recipients": failed,
        "status": dict(statuses.most_common(10)),
        "categories": dict(categories.most_common()),
        "distinct_failed_recipients": len(recipients),
        "distinct_local_parts": len(locals_),
        "distinct_failed_domains": len(domains),
        "own_domain_recipients": own,
        "repeated_dsns": repeats,
        "malformed_dsns": malformed,
        "loops": loops,
        "originals_not_relayed": not_relayed,
        "originals_not_relayed_from_tenant": backscatter,
        "top_client": top_client,
        "top_client_share": _share(top_client_count, n),
        "top_reporting_mta_share": _share(top_mta_count, n),
    }

    def new(value: str | None, history: Mapping[str, float] | None) -> bool:
        if value is None:
            return False
        # Without a history nothing is known to be new.
        total = sum((history or {}).values())
        return total > 0 and (history or {}).get(value, 0.0) / total < 0.2

    if n and (repeats / n >= 0.5 or malformed / n >= 0.5 or loops / n >= 0.3):
        return "rogue-server", evidence
    if n and backscatter / n >= 0.5:
        return "backscatter", evidence
    few = sum(count for _, count in domains.most_common(max(3, own_domains)))
    evidence["top_domains_share"] = _share(few, failed)
    if failed and bad_mailbox / failed >= 0.6 and len(locals_) >= 0.7 * bad_mailbox and few >= 0.8 * failed:
        return "directory-harvest", evidence
    if failed and spammy / failed >= 0.5 and len(domains) >= 5:
        return "spam-attack", evidence
    if n and (
        (top_client_count / n >= 0.8 and new(top_client, history_clients)) or (top_mta_count / n >= 0.8 and new(top_mta, history_mtas))
    ):
        return "rogue-server", evidence
    return "unknown", evidence


@dataclass
class _Window:
    records: collections.deque[tuple[float, dict[str, Any]]] = field(default_factory=collections.deque)
    baseline: float = 0.0
    alert: dict[str, Any] | None = None
    since: float = 0.0
    clients: collections.Counter[str] = field(default_factory=collections.Counter)
    mtas: collections.Counter[str] = field(default_factory=collections.Counter)


class SurgeMonitor:
    """The windows, baselines and surges of every tenant; fed DSN records with `add`, asked
    with `evaluate(now)`, which returns the alerts that fired or resolved."""

    def __init__(
        self,
        config: MonitorConfig,
        *,
        tenant_domains: Mapping[str, frozenset[str]] | None = None,
        started: float | None = None,
        baselines: Mapping[str, float] | None = None,
    ) -> None:
        self.config = config
        self.tenant_domains = dict(tenant_domains or {})
        self.started = time.time() if started is None else started
        self.learn = max(config.window, config.baseline / 12)
        self.learned = False
        self.windows: dict[str, _Window] = {}
        self.last: float | None = None
        for tenant, rate in (baselines or {}).items():
            self._window(tenant).baseline = rate
        if baselines:
            # Learned before a restart: no new learning period.
            self.learned = True
            self.learn = 0.0

    def _window(self, tenant: str) -> _Window:
        window = self.windows.get(tenant)
        if window is None:
            window = self.windows[tenant] = _Window()
        return window

    def add(self, tenant: str | None, at: float, record: dict[str, Any]) -> None:
        self._window(tenant or NO_TENANT).records.append((at, record))

    def restore(self, tenant: str, *, alert: dict[str, Any] | None = None, since: float = 0.0, history: Mapping[str, Any] | None = None) -> None:
        """Takes over a tenant's state from a monitor that ran elsewhere (a fleet's previous
        leader): its firing surge (`alert`, fired at `since`) and the clients and reporting MTAs
        its DSNs came from before (`history`, as `history` returns it)."""
        window = self._window(tenant)
        if alert is not None:
            window.alert, window.since = dict(alert), since
        if history:
            window.clients = collections.Counter({str(k): int(v) for k, v in dict(history.get("cl") or {}).items()})
            window.mtas = collections.Counter({str(k): int(v) for k, v in dict(history.get("m") or {}).items()})

    def history(self, tenant: str, most: int = 32) -> dict[str, dict[str, int]]:
        """The clients and reporting MTAs of the tenant's DSNs before its window, the `most`
        frequent of each (for `restore`: what "new" is measured against needs only those)."""
        window = self.windows.get(tenant)
        if window is None:
            return {"cl": {}, "m": {}}
        return {"cl": dict(window.clients.most_common(most)), "m": dict(window.mtas.most_common(most))}

    def rate(self, tenant: str, now: float) -> float:
        """The tenant's DSNs per minute over the window (or the time since the start, if shorter)."""
        window = self.windows.get(tenant)
        span = min(self.config.window, max(now - self.started, self.config.tick))
        return 0.0 if window is None else len(window.records) / (span / 60.0)

    def evaluate(self, now: float) -> list[dict[str, Any]]:
        """Slides every window to `now`, updates the baselines and returns the alerts that
        changed state (fired or resolved), as JSON objects."""
        config = self.config
        dt = 0.0 if self.last is None else max(0.0, now - self.last)
        self.last = now
        alpha = 1.0 - math.exp(-dt / config.baseline)
        learning = now - self.started < self.learn
        changes: list[dict[str, Any]] = []
        for tenant, window in self.windows.items():
            while window.records and window.records[0][0] <= now - config.window:
                _, old = window.records.popleft()
                if window.alert is None:
                    self._remember(window, old)
            count = len(window.records)
            rate = self.rate(tenant, now)
            if learning:
                window.baseline = rate
                continue
            if not self.learned:
                window.baseline = rate
                continue
            if window.alert is None:
                if count >= config.min_dsns and rate > config.factor * window.baseline:
                    window.alert = self._fire(tenant, window, now, rate)
                    window.since = now
                    changes.append(dict(window.alert))
                else:
                    window.baseline += alpha * (rate - window.baseline)
            elif count < config.min_dsns / 2 or rate < config.resolve_at * window.baseline:
                alert = dict(window.alert, state="resolved", resolved_at=iso_time(now), duration_seconds=round(now - window.since, 1))
                alert["dsns_per_minute"] = round(rate, 2)
                window.alert = None
                changes.append(alert)
        if not learning:
            self.learned = True
        return changes

    def _remember(self, window: _Window, record: dict[str, Any]) -> None:
        for key, history in (("cl", window.clients), ("m", window.mtas)):
            value = record.get(key)
            if value:
                history[value] += 1
                if len(history) > _HISTORY:
                    for stale, _ in history.most_common()[_HISTORY // 2 :]:
                        del history[stale]

    def _fire(self, tenant: str, window: _Window, now: float, rate: float) -> dict[str, Any]:
        records = [record for _, record in window.records]
        cause, evidence = decide_cause(
            records, own_domains=len(self.tenant_domains.get(tenant, ())), history_clients=window.clients, history_mtas=window.mtas
        )
        onset = window.records[0][0] if window.records else now
        return {
            "id": secrets.token_hex(8),
            "type": "dsn-surge",
            "state": "firing",
            "tenant": tenant,
            "cause": cause,
            "since": iso_time(onset),
            "fired_at": iso_time(now),
            "dsns_per_minute": round(rate, 2),
            "baseline_per_minute": round(window.baseline, 3),
            "evidence": evidence,
        }

    def active(self) -> list[dict[str, Any]]:
        return [dict(w.alert) for w in self.windows.values() if w.alert is not None]

    def snapshot(self, now: float) -> dict[str, dict[str, Any]]:
        """Per tenant: DSNs in the window, rate and baseline per minute, the active surge."""
        return {
            tenant: {
                "dsns_in_window": len(w.records),
                "dsns_per_minute": round(self.rate(tenant, now), 3),
                "baseline_per_minute": round(w.baseline, 3),
                "surge": None if w.alert is None else {"cause": w.alert["cause"], "since": w.alert["since"], "id": w.alert["id"]},
            }
            for tenant, w in sorted(self.windows.items())
        }
