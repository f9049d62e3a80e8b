"""Group `dns-cache`: the sender-domain cache as the per-message path uses it, from Python.

* `hit_*`: 1,000 cached domains looked up in turn (every lookup a hit).
* `miss_insert_*`: 10,000 new domains, each looked up (a miss) and then stored, into a cache
  of 1,000 entries, so that every insert past the first thousand also evicts.

Contenders: deliverypool's `DnsCache` (Rust LRU with per-entry expiry, behind one mutex),
`cachetools.TTLCache` (the usual pure-Python TTL cache) and `functools.lru_cache` (C, but no
expiry at all: the floor for a Python call that hits a cache). `hit_baseline_dict` is a plain
dict, no bound and no expiry: what the loop itself costs.

Every contender runs the same loop shape (`deque(map(lookup, domains), maxlen=0)` for hits, a
Python `for` loop for miss plus insert), so the loop's cost is the same in each.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable

import cachetools
import pytest

from deliverypool import _core

pytestmark = pytest.mark.benchmark(group="dns-cache")

CAPACITY = 1_000
TTL = 3_600
HIT_DOMAINS = [f"mx{i}.example{i % 97}.com" for i in range(CAPACITY)]
NEW_DOMAINS = [f"new{i}.example{i % 89}.net" for i in range(10 * CAPACITY)]
VALUE = "has-records"


def consume(lookup: Callable[[str], object], domains: list[str]) -> None:
    deque(map(lookup, domains), maxlen=0)


# --- hit -------------------------------------------------------------------------------------


def test_hit_deliverypool(benchmark) -> None:
    cache = _core.DnsCache(CAPACITY)
    for domain in HIT_DOMAINS:
        cache.put("sender", domain, VALUE, ttl=TTL)
    benchmark.extra_info["ops"] = len(HIT_DOMAINS)
    benchmark(consume, cache.sender_status, HIT_DOMAINS)
    stats = cache.stats()
    assert stats.misses == 0 and stats.hits > 0


def test_hit_baseline_ttlcache(benchmark) -> None:
    cache: cachetools.TTLCache[str, str] = cachetools.TTLCache(maxsize=CAPACITY, ttl=TTL)
    for domain in HIT_DOMAINS:
        cache[domain] = VALUE
    benchmark.extra_info["ops"] = len(HIT_DOMAINS)
    benchmark(consume, cache.__getitem__, HIT_DOMAINS)


def test_hit_baseline_lru_cache(benchmark) -> None:
    @functools.lru_cache(maxsize=CAPACITY)
    def sender_status(domain: str) -> str:
        return VALUE

    consume(sender_status, HIT_DOMAINS)
    benchmark.extra_info["ops"] = len(HIT_DOMAINS)
    benchmark(consume, sender_status, HIT_DOMAINS)
    assert sender_status.cache_info().misses == len(HIT_DOMAINS)


def test_hit_baseline_dict(benchmark) -> None:
    cache = dict.fromkeys(HIT_DOMAINS, VALUE)
    benchmark.extra_info["ops"] = len(HIT_DOMAINS)
    benchmark(consume, cache.__getitem__, HIT_DOMAINS)


# --- miss plus insert ------------------------------------------------------------------------


def fill_deliverypool(cache: _core.DnsCache) -> None:
    for domain in NEW_DOMAINS:
        if cache.sender_status(domain) is None:
            cache.put("sender", domain, VALUE, ttl=TTL)


def fill_ttlcache(cache: cachetools.TTLCache) -> None:
    for domain in NEW_DOMAINS:
        if cache.get(domain) is None:
            cache[domain] = VALUE


def fill_lru_cache(sender_status: Callable[[str], str]) -> None:
    for domain in NEW_DOMAINS:
        sender_status(domain)


def new_lru_cache() -> Callable[[str], str]:
    @functools.lru_cache(maxsize=CAPACITY)
    def sender_status(domain: str) -> str:
        return VALUE

    return sender_status


def miss_insert(benchmark, fill: Callable[[object], None], make: Callable[[], object]) -> None:  # noqa: ANN001
    benchmark.extra_info["ops"] = len(NEW_DOMAINS)
    benchmark.pedantic(fill, setup=lambda: ((make(),), {}), rounds=20, warmup_rounds=1)


def test_miss_insert_deliverypool(benchmark) -> None:
    miss_insert(benchmark, fill_deliverypool, lambda: _core.DnsCache(CAPACITY))


def test_miss_insert_baseline_ttlcache(benchmark) -> None:
    miss_insert(benchmark, fill_ttlcache, lambda: cachetools.TTLCache(maxsize=CAPACITY, ttl=TTL))


def test_miss_insert_baseline_lru_cache(benchmark) -> None:
    miss_insert(benchmark, fill_lru_cache, new_lru_cache)
