"""Group `route`: `await Router.route(message, mail_from=...)` with a warm DNS cache, one
message at a time on one event loop (one core), in messages per second.

* `deliverypool`: `deliverypool.routing.router.Router` over a `Resolver` whose cache already holds
  every sender domain, so no query is sent (the resolver points at a closed loopback port,
  which would fail loudly if one were).
* `baseline`: what a Python user would write instead: the sender domain looked up in a
  `cachetools.TTLCache`, the message classified by the Python baseline
  (`benches/baseline.py`), the pool picked the same way.

The corpus messages get envelope senders from 100 domains, all cached.
"""

from __future__ import annotations

import asyncio

import cachetools
import pytest

from benches import baseline
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


@pytest.fixture(scope="module")
def router() -> Router:
    # Port 9 (discard) on loopback: nothing answers there; a warm cache never asks.
    resolver = Resolver(ResolverConfig(nameservers=(Nameserver.parse("127.0.0.1:9"),), timeout=0.05, retries=0))
    for check in checks():
        resolver.cache.put("sender", check.domain, check, ttl=check.ttl)
    return Router(resolver)


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
