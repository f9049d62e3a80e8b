"""Group `route`: `await Router.route(message, mail_from=...)` with a warm DNS cache, one
message at a time on one event loop (one core), in messages per second.

* `deliverypool`: `deliverypool.routing.router.Router` over a `Resolver` whose cache already holds
  every sender domain, so no query is sent (the resolver points at a closed loopback port,
  which would fail loudly if one were).
* `baseline`: what a Python user would write instead: the sender domain looked up in a
  `cachetools.TTLCache`, the message classified by the Python baseline
  (`benches/baseline.py`), the pool picked the same way.

The corpus messages get envelope senders from 100 domains, all cached.

Routing rules (docs/concepts/pools.md) are measured in the same group, against today's two
pools on the same work:

* `rules_deliverypool`: a relay's rule set (7 pools, 2 of them a tenant's; 12 rules on tenants,
  sender domains, recipient domains, a route header, size, reasons and report kinds), each
  message with a tenant and a recipient, so that the rules on recipient domains route it
  recipient by recipient.
* `rules_baseline_two_pools`: the same calls with the default policy (two pools, no rules):
  what routing costs without rules. The issue's bound: rules within 10% of it.
"""

from __future__ import annotations

import asyncio

import cachetools
import pytest

from benches import baseline
from deliverypool import Policy
from deliverypool.lookup.resolver import Nameserver, Resolver, ResolverConfig
from deliverypool.lookup.sender import SenderDomainCheck
from deliverypool.mail.address import sender_domain
from deliverypool.routing.router import Router

pytestmark = pytest.mark.benchmark(group="route")

DOMAINS = [f"sender{i}.example" for i in range(100)]


@pytest.fixture(scope="module")
def senders(corpus_messages: list[bytes]) -> list[str]:
    return [f"user{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(len(corpus_messages))]


def checks() -> list[SenderDomainCheck]:
    return [SenderDomainCheck(domain, "has-records", "mx", 3600) for domain in DOMAINS]


def warm_resolver() -> Resolver:
    # Port 9 (discard) on loopback: nothing answers there; a warm cache never asks.
    resolver = Resolver(ResolverConfig(nameservers=(Nameserver.parse("127.0.0.1:9"),), timeout=0.05, retries=0))
    for check in checks():
        resolver.cache.put("sender", check.domain, check, ttl=check.ttl)
    return resolver


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(warm_resolver())


def rules_policy() -> Policy:
    """A relay's rule set: shared pools, a tenant with its own normal and high-risk pools, pools
    warmed for two mailbox providers, a bulk stream chosen by a trusted header (the same as
    examples/corpus_driver.rs's `rules_policy`)."""
    return Policy(
        pools={
            "normal": "normal", "high-risk": "high-risk", "acme-out": "normal", "acme-risky": "high-risk",
            "gmail": "normal", "outlook": "normal", "bulk": "normal", "bounces": "high-risk",
        },
        pool_tenants={"acme-out": "acme", "acme-risky": "acme"},
        route_header="X-Stream",
        rules=[
            {"name": "acme", "tenants": ["acme"], "pool": "acme-out"},
            {"name": "acme-risky", "tenants": ["acme"], "pool": "acme-risky"},
            {"name": "bounces", "reasons": ["dsn"], "report_kinds": ["dsn"], "pool": "bounces"},
            {"name": "newsletters", "header_values": ["newsletter", "campaign"], "pool": "bulk"},
            {"name": "big", "min_size": 1 << 20, "pool": "bulk"},
            {"name": "news-senders", "sender_domains": ["*.news.example", "mailer.example"], "pool": "bulk"},
            {"name": "gmail", "recipient_domains": ["gmail.com", "googlemail.com"], "pool": "gmail"},
            {"name": "outlook", "recipient_domains": ["outlook.com", "hotmail.com", "*.outlook.com"], "pool": "outlook"},
            {"name": "globex-gmail", "tenants": ["globex"], "recipient_domains": ["gmail.com"], "pool": "gmail"},
            {"name": "spam", "reasons": ["spam-score"], "pool": "high-risk"},
            {"name": "mdn", "report_kinds": ["mdn", "auto-reply"], "pool": "normal"},
            {"name": "small", "max_size": 2048, "sender_domains": ["*.example"], "pool": "normal"},
        ],
    )


TENANTS = ["acme", "globex", "initech", None]
RECIPIENTS = ["bob@dest.test", "ann@gmail.com", "joe@hotmail.com", "eve@mail.outlook.com", "sam@example.org"]


@pytest.fixture(scope="module")
def rules_router() -> Router:
    return Router(warm_resolver(), policy=rules_policy())


@pytest.fixture(scope="module")
def two_pools_router() -> Router:
    return Router(warm_resolver())


async def route_with_rules(router: Router, messages: list[bytes], senders: list[str]) -> int:
    high_risk = 0
    for i, (message, sender) in enumerate(zip(messages, senders)):
        decision = await router.route(message, mail_from=sender, tenant=TENANTS[i % 4], recipients=(RECIPIENTS[i % 5],))
        high_risk += decision.high_risk
    return high_risk


async def route_all(router: Router | BaselineRouter, messages: list[bytes], senders: list[str]) -> int:
    high_risk = 0
    for message, sender in zip(messages, senders):
        decision = await router.route(message, mail_from=sender)
        high_risk += decision.high_risk
    return high_risk


class BaselineRouter:
    """The same job with the stdlib parser, the Python DSN rules and a cachetools cache."""

    def __init__(self) -> None:
        self.cache: cachetools.TTLCache[str, SenderDomainCheck] = cachetools.TTLCache(maxsize=100_000, ttl=3600)
        for check in checks():
            self.cache[check.domain] = check

    async def route(self, message: bytes, *, mail_from: str | None = None) -> baseline.Decision:
        decision = baseline.classify(message, mail_from)
        domain = sender_domain(mail_from)
        check = self.cache.get(domain) if domain else None
        if check is None and domain:
            raise AssertionError("the baseline's cache is warm: no lookup expected")
        if check is not None and check.status != "has-records":
            decision.high_risk = True
            decision.pool = "high-risk"
        return decision


def test_deliverypool(benchmark, loop, router, corpus_messages, senders) -> None:  # noqa: ANN001
    benchmark.extra_info["ops"] = len(corpus_messages)
    high_risk = benchmark(lambda: loop.run_until_complete(route_all(router, corpus_messages, senders)))
    benchmark.extra_info["high_risk"] = high_risk
    assert router.resolver is not None and router.resolver.queries == 0


def test_baseline(benchmark, loop, corpus_messages, senders) -> None:  # noqa: ANN001
    router = BaselineRouter()
    benchmark.extra_info["ops"] = len(corpus_messages)
    high_risk = benchmark(lambda: loop.run_until_complete(route_all(router, corpus_messages, senders)))
    benchmark.extra_info["high_risk"] = high_risk


def test_rules_deliverypool(benchmark, loop, rules_router, corpus_messages, senders) -> None:  # noqa: ANN001
    assert rules_router.per_recipient
    benchmark.extra_info["ops"] = len(corpus_messages)
    high_risk = benchmark(lambda: loop.run_until_complete(route_with_rules(rules_router, corpus_messages, senders)))
    benchmark.extra_info["high_risk"] = high_risk


def test_rules_baseline_two_pools(benchmark, loop, two_pools_router, corpus_messages, senders) -> None:  # noqa: ANN001
    benchmark.extra_info["ops"] = len(corpus_messages)
    high_risk = benchmark(lambda: loop.run_until_complete(route_with_rules(two_pools_router, corpus_messages, senders)))
    benchmark.extra_info["high_risk"] = high_risk
