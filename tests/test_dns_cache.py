"""The Rust DNS cache as Python sees it: TTL rules, counters, LRU order, threads, and a
hypothesis state machine checking it against a plain model on a manual clock."""

from __future__ import annotations

import gc
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from deliverypool._core import CacheError, CacheStats, DnsCache


def manual(capacity: int = 8, **limits: float) -> DnsCache:
    options = {"min_ttl": 0.0, "max_ttl": 100.0, "max_negative_ttl": 50.0, "unknown_ttl": 3.0, **limits}
    return DnsCache(capacity, manual_clock=True, **options)


def test_hit_miss_expiry_and_stats() -> None:
    cache = manual()
    assert cache.get("sender", "a.test") is None
    assert cache.put("sender", "a.test", "has-records", ttl=10) == 10.0
    assert cache.sender_status("a.test") == "has-records"
    assert cache.get("sender", "A.Test.") == "has-records", "domains compare without case or root dot"
    cache.advance_clock(9.5)
    assert cache.remaining_ttl("sender", "a.test") == pytest.approx(0.5)
    assert cache.sender_status("a.test") == "has-records"
    cache.advance_clock(0.5)
    assert cache.sender_status("a.test") is None, "dead exactly at expiry"
    stats = cache.stats()
    assert isinstance(stats, CacheStats)
    assert (stats.hits, stats.misses, stats.expirations, stats.evictions, stats.insertions, stats.len) == (3, 2, 1, 0, 1, 0)
    assert stats.as_dict() == {
        "hits": 3, "misses": 2, "expirations": 1, "evictions": 0, "insertions": 1, "len": 0, "capacity": 8,
    }  # fmt: skip
    assert stats == cache.stats()


def test_ttl_rules_per_outcome() -> None:
    cache = manual(min_ttl=5, max_ttl=100, max_negative_ttl=50, unknown_ttl=3)
    assert cache.put("MX", "a.test", (), ttl=1) == 5, "floor"
    assert cache.put("MX", "b.test", (), ttl=10**6) == 100, "positive ceiling"
    assert cache.put("MX", "c.test", (), ttl=3600, outcome="negative") == 50, "negative ceiling"
    assert cache.put("MX", "d.test", (), ttl=999, outcome="unknown") == 3, "unknown ignores the ttl"
    assert cache.put("MX", "e.test", (), outcome="unknown") == 3
    assert DnsCache.negative_ttl(3600, 60) == 60
    assert DnsCache.negative_ttl(30, 600) == 30
    assert (cache.min_ttl, cache.max_ttl, cache.max_negative_ttl, cache.unknown_ttl) == (5, 100, 50, 3)


def test_kinds_are_separate() -> None:
    cache = manual()
    cache.put("sender", "a.test", 1, ttl=10)
    cache.put("MX", "a.test", 2, ttl=10)
    cache.put("A", "a.test", 3, ttl=10)
    cache.put("AAAA", "a.test", 4, ttl=10)
    assert [cache.get(k, "a.test") for k in ("sender", "MX", "A", "AAAA")] == [1, 2, 3, 4]
    assert len(cache) == 4


def test_capacity_and_lru_order() -> None:
    cache = manual(capacity=3)
    for name in "abc":
        cache.put("sender", f"{name}.test", name, ttl=60)
    assert cache.get("sender", "a.test") == "a"
    cache.put("sender", "d.test", "d", ttl=60)
    assert cache.keys() == [("sender", "d.test"), ("sender", "a.test"), ("sender", "c.test")]
    assert cache.get("sender", "b.test") is None
    assert cache.stats().evictions == 1
    assert len(cache) == 3 == cache.capacity


def test_zero_ttl_is_not_stored() -> None:
    cache = manual()
    cache.put("sender", "a.test", "x", ttl=60)
    assert cache.put("sender", "a.test", "y", ttl=0) == 0
    assert cache.get("sender", "a.test") is None
    assert len(cache) == 0


def test_bad_arguments() -> None:
    assert issubclass(CacheError, ValueError)
    with pytest.raises(CacheError, match="capacity"):
        DnsCache(0)
    with pytest.raises(CacheError, match="max_ttl"):
        DnsCache(10, min_ttl=10, max_ttl=5)
    with pytest.raises(CacheError, match="^min_ttl must be a finite number of seconds >= 0, got NaN$"):
        DnsCache(10, min_ttl=float("nan"))
    cache = DnsCache(10)
    with pytest.raises(CacheError, match='kind "SPF"'):
        cache.get("SPF", "a.test")  # type: ignore[arg-type]
    for method in (cache.remaining_ttl, cache.remove):
        with pytest.raises(CacheError, match="kind"):
            method("spf", "a.test")  # type: ignore[arg-type]
    with pytest.raises(CacheError, match="outcome"):
        cache.put("MX", "a.test", 1, ttl=1, outcome="maybe")  # type: ignore[arg-type]
    with pytest.raises(CacheError, match="^a negative answer needs its ttl$"):
        cache.put("MX", "a.test", 1, outcome="negative")
    with pytest.raises(CacheError, match="needs its ttl"):
        cache.put("MX", "a.test", 1)
    assert len(cache) == 0
    with pytest.raises(CacheError, match="^seconds must be"):
        DnsCache(10, manual_clock=True).advance_clock(-1)
    # A state, not an argument: not a CacheError.
    with pytest.raises(RuntimeError, match="manual clock") as not_manual:
        cache.advance_clock(1)
    assert not isinstance(not_manual.value, ValueError)


def test_values_are_released_on_eviction_and_clear() -> None:
    class Value:
        pass

    cache = manual(capacity=1)
    first, second = Value(), Value()
    refs = [weakref.ref(first), weakref.ref(second)]
    cache.put("MX", "a.test", first, ttl=10)
    cache.put("MX", "b.test", second, ttl=10)
    del first, second
    gc.collect()
    assert refs[0]() is None, "the evicted value is released"
    assert refs[1]() is not None
    cache.clear()
    gc.collect()
    assert refs[1]() is None
    assert len(cache) == 0


def test_finalizer_may_use_the_cache() -> None:
    """Evicted objects are released after the lock: a __del__ that reads the cache must not
    deadlock it."""
    cache = manual(capacity=1)
    seen: list[object] = []

    class Reentrant:
        def __del__(self) -> None:
            seen.append(cache.get("MX", "b.test"))

    def work() -> None:
        cache.put("MX", "a.test", Reentrant(), ttl=10)
        cache.put("MX", "b.test", "b", ttl=10)  # evicts a.test and runs __del__

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), "deadlock: a value was released under the cache lock"
    assert seen == ["b"]


def test_shared_between_threads() -> None:
    cache = DnsCache(50, min_ttl=0)
    domains = [f"d{i}.test" for i in range(200)]

    def worker(offset: int) -> int:
        found = 0
        for i in range(2000):
            domain = domains[(i * 7 + offset) % len(domains)]
            if cache.get("sender", domain) is None:
                cache.put("sender", domain, domain, ttl=60)
            else:
                found += 1
        return found

    with ThreadPoolExecutor(4) as pool:
        hits = sum(pool.map(worker, range(4)))
    stats = cache.stats()
    assert stats.hits == hits
    assert stats.hits + stats.misses == 8000
    assert stats.len == len(cache) <= 50
    for kind, domain in cache.keys():
        assert cache.get(kind, domain) == domain  # type: ignore[arg-type]


KEYS = [(kind, domain) for kind in ("sender", "MX") for domain in ("a.test", "b.test", "c.test", "d.test", "e.test")]


class CacheModel(RuleBasedStateMachine):
    """The cache against an ordered dict (least recent first) on the same manual clock."""

    @initialize(capacity=st.integers(1, 6))
    def start(self, capacity: int) -> None:
        self.capacity = capacity
        self.cache = manual(capacity, min_ttl=1, max_ttl=20, max_negative_ttl=8, unknown_ttl=3)
        self.model: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()  # key -> (value, expires)
        self.now = 0
        self.counter = 0

    def lifetime(self, ttl: int, outcome: str) -> int:
        if outcome == "unknown":
            return 3
        return max(1, min(ttl, 20 if outcome == "positive" else 8))

    @rule(key=st.sampled_from(KEYS), ttl=st.integers(0, 30), outcome=st.sampled_from(["positive", "negative", "unknown"]))
    def put(self, key: tuple[str, str], ttl: int, outcome: str) -> None:
        self.counter += 1
        lifetime = self.cache.put(key[0], key[1], self.counter, ttl=ttl, outcome=outcome)  # type: ignore[arg-type]
        assert lifetime == self.lifetime(ttl, outcome)
        self.model.pop(key, None)
        if len(self.model) == self.capacity:
            self.model.popitem(last=False)
        self.model[key] = (self.counter, self.now + int(lifetime))

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: tuple[str, str]) -> None:
        got = self.cache.get(key[0], key[1])  # type: ignore[arg-type]
        entry = self.model.get(key)
        if entry is not None and entry[1] > self.now:
            self.model.move_to_end(key)
            assert got == entry[0]
        else:
            assert got is None, f"returned {got!r} for an absent or expired entry"
            self.model.pop(key, None)

    @rule(seconds=st.integers(1, 10))
    def advance(self, seconds: int) -> None:
        self.cache.advance_clock(seconds)
        self.now += seconds

    @precondition(lambda self: self.counter % 7 == 3)
    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.clear()

    @invariant()
    def never_over_capacity_and_same_lru_order(self) -> None:
        assert len(self.cache) <= self.capacity
        assert self.cache.keys() == [tuple(k) for k in reversed(self.model)]

    @invariant()
    def no_live_entry_past_its_time(self) -> None:
        for (kind, domain), (_, expires) in self.model.items():
            remaining = self.cache.remaining_ttl(kind, domain)  # type: ignore[arg-type]
            if expires > self.now:
                assert remaining == pytest.approx(expires - self.now)
            else:
                assert remaining is None


TestCacheModel = CacheModel.TestCase
# Enough runs to reach every rule sequence of interest; the CI profile's 500 would take ~10 s.
TestCacheModel.settings = settings(max_examples=150, stateful_step_count=40)
