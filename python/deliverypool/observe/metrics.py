"""Prometheus metrics: counted from the events in each worker, summed over the workers in the
state database, exposed by the admin listener in the Prometheus text format (prometheus_client).

Every label value comes from a closed set, never from message content:

| metric | labels |
| --- | --- |
| ``deliverypool_messages_total`` (counter) | ``pool``: the configured pools; ``reason``: the routing reasons (`REASONS`) or ``none`` |
| ``deliverypool_dsns_total`` (counter) | ``tenant``: configured tenants or ``none``; ``origin``: ``relayed``, ``generated``; ``status_class``: `STATUS_CLASSES` |
| ``deliverypool_deliveries_total`` (counter, recipients) | ``pool``; ``source``: the pool's configured source addresses or ``none`` (no connection); ``result``: ``delivered``, ``deferred``, ``failed`` |
| ``deliverypool_tenant_messages_total`` (counter) | ``tenant`` |
| ``deliverypool_bounces_total`` (counter, failed recipients of relayed DSNs) | ``tenant``; ``category``: `BOUNCE_CATEGORIES` |
| ``deliverypool_queue_recipients`` (gauge) | ``state``: the spool's recipient states |
| ``deliverypool_spool_commit_seconds`` (histogram) | none |
| ``deliverypool_dsn_surge`` (gauge, 1 while firing) | ``tenant``; ``cause``: `CAUSES` |
| ``deliverypool_events_dropped_total`` (counter) | ``subscriber``: the relay's own subscribers |
| ``deliverypool_senders_restricted`` (gauge, with sender limits) | ``tenant``: configured tenants or ``none`` |
| ``deliverypool_dnsbl_listed`` (gauge, 1 listed, 0 not) | ``address``, ``pool``: the configured source addresses and their pools; ``zone``: ``dnsbl.zones`` |
| ``deliverypool_dnsbl_checks_total`` (counter, per address and cycle) | ``zone``: ``dnsbl.zones``; ``result``: `CHECK_RESULTS` |
| ``deliverypool_score_checks_total`` (counter, with a score source) | ``result``: ``verdict``, ``too-large``, `FAILURES` (``timeout``, ``unreachable``, ``bad-response``) |
| ``deliverypool_score_fallbacks_total`` (counter) | none |
| ``deliverypool_dkim_signing_total`` (counter, with DKIM keys) | ``result``: ``signed`` or why unsigned (`UNSIGNED`: ``no-key``, ``no-from``, ...) |
| ``deliverypool_dkim_checks_total`` (counter, signatures messages arrived with) | ``result``: `DKIM_RESULTS` (``pass``, ``fail``, ``neutral``, ``temperror``, ``permerror``, ``policy``) |
| ``deliverypool_dkim_reloads_total`` (counter, SIGHUP) | ``result``: ``ok``, ``failed`` |
| ``deliverypool_spf_results_total`` (counter, with ``[auth] enabled``) | ``result``: SPF at acceptance of the MAIL FROM identity, `SPF_RESULTS` |
| ``deliverypool_dmarc_results_total`` (counter, with ``[auth] enabled``) | ``result``: DMARC as the destination will judge it, `DMARC_RESULTS`; ``disposition``: `DMARC_POLICIES` |
| ``deliverypool_srs_total`` (counter, with ``[auth.srs]``) | ``outcome``: `SRS_OUTCOMES` (``rewritten``: a relay-pool message's sender; ``reversed`` or why not: an address checked at RCPT) |
| ``deliverypool_auth_problems_total`` (counter) | ``problem``: `AUTH_PROBLEMS` (``own-domain-no-key``) |
| ``deliverypool_spool_conditions_total`` (counter, times a shard entered it) | ``condition``: ``low-space``, ``stalled`` (observe/spool.py) |
| ``deliverypool_spool_refused_total`` (counter) | none |
| ``deliverypool_in_flow_delays_total`` (counter, MAIL commands held while delivery was behind: ``listener.in_flow_delay``) | none |
| ``deliverypool_fleet_leader``, ``deliverypool_fleet_degraded`` (gauges, in a fleet) | none |
| ``deliverypool_admin_refused_total`` (counter) | ``reason``: `ADMIN_REFUSALS` (observe/events.py) |
| ``deliverypool_admin_releases_total`` (counter) | ``result``: `RELEASE_RESULTS` |

A message with several reasons counts once under each, and once under each pool its recipients
go through when rules split them; a value outside its set (a pool
removed from the configuration while mail waited) is counted as ``other``.
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from deliverypool import _core
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from deliverypool.auth.dkim import UNSIGNED
from deliverypool.ingress.srs import SRS_OUTCOMES
from deliverypool.config import NO_TENANT, RelayConfig
from deliverypool.observe.bounce import status_class
from deliverypool.observe.events import (
    ADMIN_REFUSALS,
    AUTH_PROBLEMS,
    RELEASE_RESULTS,
    AdminRefused,
    AdminRelease,
    AuthProblem,
    DeliveryAttempt,
    DsnGenerated,
    DsnRelayed,
    Event,
    MessageAccepted,
    SrsChecked,
)
from deliverypool.queue.schema import State
from deliverypool.state.observations import Labels, ObservationStore

__all__ = ["COMMIT_BUCKETS", "REASONS", "Counts", "MetricsRecorder", "RelayCollector", "registry_for"]

# The routing reasons; the closed tuple lands in the Rust module (REASONS) with branch rust10.
REASONS: Final[tuple[str, ...]] = tuple(
    getattr(_core, "REASONS", ("dsn", "spam-score", "sender-domain-no-records", "sender-domain-unknown"))
)

_REASON_LABELS: Final = frozenset((*REASONS, "none"))
_UNSIGNED: Final = frozenset(UNSIGNED)
_DKIM_RESULTS: Final = frozenset(_core.DKIM_RESULTS)
_SPF_RESULTS: Final = frozenset(_core.SPF_RESULTS)
_DMARC_RESULTS: Final = frozenset(_core.DMARC_RESULTS)
_DMARC_POLICIES: Final = frozenset(_core.DMARC_POLICIES)
_SRS_OUTCOMES: Final = frozenset(SRS_OUTCOMES)
_AUTH_PROBLEMS: Final = frozenset(AUTH_PROBLEMS)
COMMIT_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OTHER: Final = "other"

Counts = dict[tuple[str, Labels], float]


class MetricsRecorder:
    """An event subscriber that counts into `counts`, with every label value checked against
    its closed set; `take` hands over the counts since the last call (deltas)."""

    def __init__(self, config: RelayConfig) -> None:
        self.pools = frozenset(config.pools)
        self.tenants = frozenset(config.tenants)
        self.sources = {name: frozenset(str(s.address) for s in pool.source_addresses) for name, pool in config.pools.items()}
        self.counts: Counts = collections.defaultdict(float)
        self.minutes: dict[tuple[int, str, str], int] = collections.defaultdict(int)

    def _pool(self, pool: str) -> str:
        return pool if pool in self.pools else OTHER

    def _tenant(self, tenant: str | None) -> str:
        return tenant if tenant in self.tenants else NO_TENANT

    def __call__(self, event: Event) -> None:
        counts = self.counts
        if isinstance(event, MessageAccepted):
            for pool in map(self._pool, event.pools or (event.pool,)):
                for reason in event.reasons or ("none",):
                    counts[("deliverypool_messages_total", (("pool", pool), ("reason", reason if reason in _REASON_LABELS else OTHER)))] += 1
            tenant = self._tenant(event.tenant)
            counts[("deliverypool_tenant_messages_total", (("tenant", tenant),))] += 1
            self.minutes[(int(event.at // 60), tenant, "messages")] += 1
            dkim = event.dkim
            if dkim is not None:
                if dkim.signed or dkim.unsigned is not None:
                    result = "signed" if dkim.signed else dkim.unsigned if dkim.unsigned in _UNSIGNED else OTHER
                    counts[("deliverypool_dkim_signing_total", (("result", result),))] += 1
                for check in dkim.checks:
                    counts[("deliverypool_dkim_checks_total", (("result", check.result if check.result in _DKIM_RESULTS else OTHER),))] += 1
            auth = event.auth
            if auth is not None:
                if auth.spf is not None:
                    counts[("deliverypool_spf_results_total", (("result", auth.spf if auth.spf in _SPF_RESULTS else OTHER),))] += 1
                if auth.dmarc is not None:
                    result = auth.dmarc if auth.dmarc in _DMARC_RESULTS else OTHER
                    disposition = auth.disposition if auth.disposition in _DMARC_POLICIES else OTHER
                    counts[("deliverypool_dmarc_results_total", (("result", result), ("disposition", disposition)))] += 1
                if auth.srs:
                    counts[("deliverypool_srs_total", (("outcome", "rewritten"),))] += 1
        elif isinstance(event, SrsChecked):
            counts[("deliverypool_srs_total", (("outcome", event.outcome if event.outcome in _SRS_OUTCOMES else OTHER),))] += 1
        elif isinstance(event, AuthProblem):
            counts[("deliverypool_auth_problems_total", (("problem", event.problem if event.problem in _AUTH_PROBLEMS else OTHER),))] += 1
        elif isinstance(event, DeliveryAttempt):
            pool = self._pool(event.pool)
            source = "none" if event.source is None else event.source if event.source in self.sources.get(event.pool, ()) else OTHER
            for result, count in (("delivered", event.delivered), ("deferred", event.deferred), ("failed", event.failed)):
                if count:
                    counts[("deliverypool_deliveries_total", (("pool", pool), ("source", source), ("result", result)))] += count
        elif isinstance(event, DsnRelayed):
            tenant = self._tenant(event.tenant)
            counts[("deliverypool_dsns_total", (("tenant", tenant), ("origin", "relayed"), ("status_class", status_class(event.report.first_status))))] += 1
            for recipient in event.report.failed:
                counts[("deliverypool_bounces_total", (("tenant", tenant), ("category", recipient.category)))] += 1
            self.minutes[(int(event.at // 60), tenant, "dsns")] += 1
        elif isinstance(event, DsnGenerated):
            first = next((r.status for r in event.recipients), None)
            counts[("deliverypool_dsns_total", (("tenant", self._tenant(event.tenant)), ("origin", "generated"), ("status_class", status_class(first))))] += 1
        elif isinstance(event, AdminRefused):
            counts[("deliverypool_admin_refused_total", (("reason", event.reason if event.reason in ADMIN_REFUSALS else OTHER),))] += 1
        elif isinstance(event, AdminRelease):
            counts[("deliverypool_admin_releases_total", (("result", event.result if event.result in RELEASE_RESULTS else OTHER),))] += 1

    def add(self, name: str, labels: Labels, value: float = 1.0) -> None:
        """Counts for a part of the relay that is not an event subscriber (the blocklist watch);
        its label values must come from closed sets too."""
        self.counts[(name, labels)] += value

    def observe_commit(self, seconds: float) -> None:
        """One spool commit's duration, into the histogram's buckets."""
        counts = self.counts
        for bound in COMMIT_BUCKETS:
            if seconds <= bound:
                counts[("deliverypool_spool_commit_seconds_bucket", (("le", repr(bound)),))] += 1
        counts[("deliverypool_spool_commit_seconds_bucket", (("le", "+Inf"),))] += 1
        counts[("deliverypool_spool_commit_seconds_sum", ())] += seconds

    def take(self) -> tuple[Counts, dict[tuple[int, str, str], int]]:
        counts, minutes = dict(self.counts), dict(self.minutes)
        self.counts.clear()
        self.minutes.clear()
        return counts, minutes


_HELP: Final = {
    "deliverypool_messages_total": ("Messages accepted, by pool and routing reason (once per reason; 'none' for none).", ["pool", "reason"]),
    "deliverypool_tenant_messages_total": ("Messages accepted, by tenant.", ["tenant"]),
    "deliverypool_dsns_total": ("DSNs relayed for clients or generated by the relay, by tenant and status class.", ["tenant", "origin", "status_class"]),
    "deliverypool_deliveries_total": ("Recipients of delivery attempts, by pool, source address and result.", ["pool", "source", "result"]),
    "deliverypool_bounces_total": ("Failed recipients of relayed DSNs, by tenant and bounce category.", ["tenant", "category"]),
    "deliverypool_events_dropped_total": ("Events a subscriber could not take in time (its queue was full).", ["subscriber"]),
    "deliverypool_dnsbl_checks_total": ("Blocklist checks of the source addresses, by zone and result.", ["zone", "result"]),
    "deliverypool_score_checks_total": ("Messages the score source (rspamd) was asked about or skipped, by result.", ["result"]),
    "deliverypool_score_fallbacks_total": ("Messages sent through the high-risk pool because no score could be had (score.fallback).", []),
    "deliverypool_dkim_signing_total": ("Messages by what DKIM signing did: signed, or why they went unsigned.", ["result"]),
    "deliverypool_dkim_checks_total": ("DKIM signatures messages arrived with, by the result of their check (RFC 8601).", ["result"]),
    "deliverypool_dkim_reloads_total": ("Reloads of the DKIM keys on SIGHUP, by result (failed: the keys in use were kept).", ["result"]),
    "deliverypool_spf_results_total": ("Messages by the SPF result of their MAIL FROM identity at acceptance ([auth] enabled).", ["result"]),
    "deliverypool_dmarc_results_total": (
        "Messages by the DMARC result the destination will reach and the disposition the From domain asks for.", ["result", "disposition"]
    ),
    "deliverypool_srs_total": ("SRS: relay-pool senders rewritten, and addresses at the SRS domain checked at RCPT by outcome.", ["outcome"]),
    "deliverypool_auth_problems_total": ("Tenants' own mail that authentication found a problem with (own-domain-no-key).", ["problem"]),
    "deliverypool_spool_conditions_total": (
        "Times a spool shard entered low-space mode or its state changes started failing (stalled).", ["condition"]
    ),
    "deliverypool_spool_refused_total": ("Messages refused because the spool could not store them (disk full: 452; failing: 451).", []),
    "deliverypool_in_flow_delays_total": ("MAIL commands answered only when delivery caught up (listener.in_flow_delay).", []),
    "deliverypool_admin_refused_total": ("Requests the admin listener refused, by reason.", ["reason"]),
    "deliverypool_admin_releases_total": ("Sender releases asked for through the admin API, by result.", ["result"]),
}


def queue_states(spool: str) -> dict[str, int]:
    """Recipients per state over every shard of the spool (read-only)."""
    from deliverypool.queue.listing import databases
    from deliverypool.queue.spool import connect

    totals = {state.value: 0 for state in State}
    for _, path in databases(spool):
        try:
            conn = connect(path, readonly=True)
        except sqlite3.Error:
            continue
        try:
            for state, count in conn.execute("SELECT state, count(*) FROM recipients GROUP BY state"):
                if state in totals:
                    totals[state] += int(count)
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    return totals


class RelayCollector(Collector):
    """Builds the metric families from the state database (all workers) at each scrape."""

    def __init__(
        self,
        store: ObservationStore,
        spool: str,
        *,
        surges: Callable[[], Iterable[Mapping[str, str]]],
        tenants: Iterable[str],
        restricted: Callable[[], Mapping[str, int]] | None = None,
        dnsbl: Callable[[], Iterable[tuple[str, str, str, float]]] = tuple,
        fleet: Callable[[], tuple[float, float]] | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.surges = surges
        self.tenants = tuple(tenants)
        self.restricted = restricted
        self.dnsbl = dnsbl
        self.fleet = fleet

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        rows = self.store.counters()
        families = {name: CounterMetricFamily(name.removesuffix("_total"), text, labels=labels) for name, (text, labels) in _HELP.items()}
        buckets: dict[str, float] = {}
        commit_sum = 0.0
        for name, labels, value in rows:
            if name in families:
                families[name].add_metric([v for _, v in labels], value)
            elif name == "deliverypool_spool_commit_seconds_bucket":
                buckets[labels[0][1]] = value
            elif name == "deliverypool_spool_commit_seconds_sum":
                commit_sum = value
        yield from families.values()
        ordered = [(repr(b), buckets.get(repr(b), 0.0)) for b in COMMIT_BUCKETS] + [("+Inf", buckets.get("+Inf", 0.0))]
        yield HistogramMetricFamily(
            "deliverypool_spool_commit_seconds", "Duration of each spool commit (group commit: COMMIT and its fsync).", buckets=ordered, sum_value=commit_sum
        )
        queue = GaugeMetricFamily("deliverypool_queue_recipients", "Recipients in the spool, by state (every shard).", labels=["state"])
        for state, count in queue_states(self.spool).items():
            queue.add_metric([state], count)
        yield queue
        surge = GaugeMetricFamily("deliverypool_dsn_surge", "1 while a DSN surge fires for the tenant, with its likely cause.", labels=["tenant", "cause"])
        for alert in self.surges():
            surge.add_metric([alert["tenant"], alert["cause"]], 1.0)
        yield surge
        if self.restricted is not None:
            senders = GaugeMetricFamily("deliverypool_senders_restricted", "Senders refused 550 5.1.8 until their restriction ends, by tenant.", labels=["tenant"])
            counts = self.restricted()
            for tenant in (*self.tenants, NO_TENANT):
                senders.add_metric([tenant], float(counts.get(tenant, 0)))
            yield senders
        listed = GaugeMetricFamily(
            "deliverypool_dnsbl_listed", "1 while a source address is listed in a blocklist zone (test points passed), else 0.", labels=["address", "pool", "zone"]
        )
        for address, pool, zone, value in self.dnsbl():
            listed.add_metric([address, pool, zone], value)
        yield listed
        if self.fleet is not None:
            leading, degraded = self.fleet()
            yield GaugeMetricFamily("deliverypool_fleet_leader", "1 while this node holds the fleet's lease (runs the surge monitor and the blocklist watch).", value=leading)
            yield GaugeMetricFamily("deliverypool_fleet_degraded", "1 while this node cannot reach the fleet's Redis (it shows and counts its own view).", value=degraded)


def registry_for(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry

