"""Group `auth`: SPF (MAIL FROM) and DMARC for a message from a warm cache, as the relay runs
them at acceptance: ``AuthDns.run_cached`` over ``SpfCheck`` then ``DmarcCheck`` (Rust
evaluators, answers read from the Rust ``DnsCache``).

Contenders, on the same warm data in the same ``DnsCache``:

* `spf_dmarc_deliverypool`: SPF + DMARC per message (the issue's budget: <= 20 us).
* `spf_dmarc_baseline_pyspf`: pyspf 2.0.14 (``spf.query(...).check()``), its ``DNSLookup``
  answering from the cache, then a straightforward Python DMARC (discovery with the
  organisational-domain fallback from ``publicsuffixlist``, tag parsing, relaxed alignment)
  on the cached TXT answers. pyspf builds a query object per message and keeps no state
  between messages, as a milter using it does.
* `spf_deliverypool` / `spf_baseline_pyspf`, `dmarc_deliverypool` / `dmarc_baseline_python`:
  each half alone.

The data: 100 tenant domains, each `v=spf1 mx include:_spf.provider.example -all` with one MX
host; the provider's record includes a second one; the client matches in the second include
(three TXT, one MX and one A lookup: a typical ESP chain). The From domain is `news.` the
tenant's, without its own DMARC record, so discovery falls back to the tenant's `p=reject`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from deliverypool import DnsCache
from deliverypool.auth import DmarcCheck, DmarcOutcome, SpfCheck, SpfOutcome
from deliverypool.auth.dns import AuthDns
from deliverypool.lookup.mx import Addresses, MailExchanger
from deliverypool.lookup.resolver import Resolver
from deliverypool.lookup.txt import TxtAnswer

pytestmark = pytest.mark.benchmark(group="auth")

TENANTS = 100
CLIENT = "192.0.2.200"
HELO = "out.provider.example"
TTL = 3_600


def messages() -> list[tuple[str, str]]:
    """(envelope sender, From domain) per message."""
    return [(f"bounce-{i}@t{i % TENANTS}.example", f"news.t{i % TENANTS}.example") for i in range(TENANTS)]


def warm_cache() -> DnsCache:
    cache = DnsCache(10_000)

    def txt(name: str, *records: bytes) -> None:
        answer = TxtAnswer("positive", "records", TTL, records) if records else TxtAnswer("negative", "nxdomain", TTL)
        cache.put("TXT", name, answer, ttl=TTL, outcome=answer.outcome)

    txt("_spf.provider.example", b"v=spf1 ip4:198.51.100.0/24 ip4:203.0.113.0/25 ip6:2001:db8:10::/48 include:_spf2.provider.example ~all")
    txt("_spf2.provider.example", b"v=spf1 ip4:192.0.2.128/25 -all")
    for i in range(TENANTS):
        domain = f"t{i}.example"
        txt(domain, b"google-site-verification=abc", b"v=spf1 mx include:_spf.provider.example -all")
        txt(f"_dmarc.{domain}", b"v=DMARC1; p=reject; rua=mailto:dmarc@" + domain.encode())
        txt(f"_dmarc.news.{domain}")
        cache.put("MX", domain, (MailExchanger(10, f"mx.{domain}"),), ttl=TTL)
        cache.put("A", f"mx.{domain}", Addresses((f"198.18.{i}.1",), "positive", "records"), ttl=TTL)
    return cache


@pytest.fixture(scope="module")
def dns() -> AuthDns:
    return AuthDns(Resolver(cache=warm_cache()))


# --- deliverypool ----------------------------------------------------------------------------


def ours_spf(dns: AuthDns, sender: str, now: int) -> SpfOutcome:
    outcome = dns.run_cached(SpfCheck(CLIENT, sender, HELO, now=now))
    assert isinstance(outcome, SpfOutcome)
    return outcome


def ours_dmarc(dns: AuthDns, from_domain: str, spf: SpfOutcome) -> DmarcOutcome:
    outcome = dns.run_cached(DmarcCheck(from_domain, spf=(spf.domain, spf.result)))
    assert isinstance(outcome, DmarcOutcome)
    return outcome


def ours(dns: AuthDns, batch: list[tuple[str, str]]) -> list[str]:
    now = int(time.time())
    return [ours_dmarc(dns, from_domain, ours_spf(dns, sender, now)).result for sender, from_domain in batch]


# --- baselines -------------------------------------------------------------------------------


def pyspf_lookup(cache: DnsCache) -> Any:
    """pyspf's DNSLookup hook, answering from the cache as pyspf expects its answers."""

    def lookup(name: str, qtype: str, tcpfallback: bool = True, timeout: int = 30) -> Iterator[tuple[tuple[str, str], Any]]:
        found = cache.get(qtype, name) if qtype in ("TXT", "A", "AAAA", "MX") else None
        if qtype == "TXT" and isinstance(found, TxtAnswer):
            for record in found.records:
                yield (name, "TXT"), (record,)
        elif qtype == "MX" and isinstance(found, tuple):
            for mx in found:
                yield (name, "MX"), (mx.preference, mx.host)
        elif qtype in ("A", "AAAA") and isinstance(found, tuple):
            for address in found:
                yield (name, qtype), address

    return lookup


def python_dmarc(cache: DnsCache, psl: Any, from_domain: str, spf_domain: str, spf_result: str) -> str:
    """DMARC in plain Python: discovery, parsing, relaxed SPF alignment."""

    def record(name: str) -> dict[str, str] | None:
        found = cache.get("TXT", f"_dmarc.{name}")
        records = [r for r in getattr(found, "records", ()) if r[:8].lower() == b"v=dmarc1"]
        if len(records) != 1:
            return None
        tags = {}
        for part in records[0].decode("ascii", "replace").split(";"):
            key, sep, value = part.partition("=")
            if sep:
                tags.setdefault(key.strip().lower(), value.strip())
        return tags

    org = psl.privatesuffix(from_domain) or from_domain
    tags = record(from_domain)
    at_org = tags is None and org != from_domain
    if at_org:
        tags = record(org)
    if tags is None or tags.get("p", "").lower() not in ("none", "quarantine", "reject"):
        return "none"
    spf_org = psl.privatesuffix(spf_domain) or spf_domain
    aligned = spf_result == "pass" and (spf_org == org if tags.get("aspf", "r") == "r" else spf_domain == from_domain)
    return "pass" if aligned else "fail"


@pytest.fixture(scope="module")
def baseline(dns: AuthDns) -> Any:
    spf = pytest.importorskip("spf")
    publicsuffixlist = pytest.importorskip("publicsuffixlist")
    spf.DNSLookup = pyspf_lookup(dns.resolver.cache)
    return spf, publicsuffixlist.PublicSuffixList()


def theirs(dns: AuthDns, baseline: Any, batch: list[tuple[str, str]]) -> list[str]:
    spf, psl = baseline
    results = []
    for sender, from_domain in batch:
        result, _, _ = spf.query(i=CLIENT, s=sender, h=HELO).check()
        results.append(python_dmarc(dns.resolver.cache, psl, from_domain, sender.rpartition("@")[2], result))
    return results


# --- the benchmarks --------------------------------------------------------------------------


def test_spf_dmarc_deliverypool(benchmark: Any, dns: AuthDns) -> None:
    batch = messages()
    benchmark.extra_info["ops"] = len(batch)
    results = benchmark(ours, dns, batch)
    assert results == ["pass"] * len(batch)


def test_spf_dmarc_baseline_pyspf(benchmark: Any, dns: AuthDns, baseline: Any) -> None:
    batch = messages()
    benchmark.extra_info["ops"] = len(batch)
    results = benchmark(theirs, dns, baseline, batch)
    assert results == ["pass"] * len(batch), "the baseline reaches the same results"


def test_spf_deliverypool(benchmark: Any, dns: AuthDns) -> None:
    batch = messages()
    now = int(time.time())
    benchmark.extra_info["ops"] = len(batch)
    outcomes = benchmark(lambda: [ours_spf(dns, sender, now) for sender, _ in batch])
    assert {o.result for o in outcomes} == {"pass"}


def test_spf_baseline_pyspf(benchmark: Any, dns: AuthDns, baseline: Any) -> None:
    spf, _ = baseline
    batch = messages()
    benchmark.extra_info["ops"] = len(batch)
    results = benchmark(lambda: [spf.query(i=CLIENT, s=sender, h=HELO).check()[0] for sender, _ in batch])
    assert set(results) == {"pass"}


def test_dmarc_deliverypool(benchmark: Any, dns: AuthDns) -> None:
    batch = messages()
    spf = {sender: ours_spf(dns, sender, 0) for sender, _ in batch}
    benchmark.extra_info["ops"] = len(batch)
    results = benchmark(lambda: [ours_dmarc(dns, from_domain, spf[sender]).result for sender, from_domain in batch])
    assert set(results) == {"pass"}


def test_dmarc_baseline_python(benchmark: Any, dns: AuthDns, baseline: Any) -> None:
    _, psl = baseline
    batch = messages()
    cache = dns.resolver.cache
    benchmark.extra_info["ops"] = len(batch)
    results = benchmark(lambda: [python_dmarc(cache, psl, f, s.rpartition("@")[2], "pass") for s, f in batch])
    assert set(results) == {"pass"}


# --- the authentication steps of routing -------------------------------------------------------
#
# `route_auth_deliverypool`: `ScoredRouter.route` as the relay calls it with `[auth] enabled`
# (routing/auth.py): SPF at acceptance (MAIL FROM and HELO), the decision, SPF again from the
# normal pool's source address (inside the provider's range: it passes), DMARC (aligned SPF),
# the decision made again with those facts. `route_auth_without`: the same calls without
# `[auth]`. Their difference is what authentication adds to routing a message (the issue's
# budget, 20 us, is for SPF + DMARC from a warm cache).

DEPARTURE = "198.51.100.5"


def routing_messages() -> list[tuple[bytes, str]]:
    return [
        (f"From: News <news@news.t{i % TENANTS}.example>\r\nTo: bob@dest.test\r\nSubject: hi {i}\r\nMessage-ID: <{i}@t.example>\r\n\r\nHello.\r\n".encode(),
         f"bounce-{i}@t{i % TENANTS}.example")
        for i in range(TENANTS)
    ]


def scored_router(with_auth: bool) -> Any:
    from deliverypool import config as cfg
    from deliverypool.auth import Authenticator
    from deliverypool.routing.auth import AuthRouting
    from deliverypool.routing.pools import policy_from_config
    from deliverypool.routing.router import Router
    from deliverypool.routing.scores import ScoredRouter
    from deliverypool.routing.tenants import Tenants

    config = cfg.loads(
        f'[pools.normal]\nsource_addresses = ["{DEPARTURE}"]\n[pools.high-risk]\nsource_addresses = ["203.0.113.200"]\n'
        f'[pools.relay]\nsource_addresses = ["203.0.113.201"]\n[policy]\nrelay_pool = "relay"\n[auth]\nenabled = true\n'
    )
    cache = warm_cache()
    cache.put("TXT", HELO, TxtAnswer("negative", "nxdomain", TTL), ttl=TTL, outcome="negative")
    resolver = Resolver(cache=cache)
    auth = AuthRouting(Authenticator(resolver, receiver="relay.example"), config, tenants=Tenants(config.tenants)) if with_auth else None
    return ScoredRouter(Router(None, policy=policy_from_config(config)), auth=auth), resolver


async def route_batch(router: Any, batch: list[tuple[bytes, str]]) -> list[tuple[str, str | None, str | None]]:
    """Each message's pool, SPF at acceptance and DMARC."""
    from deliverypool.routing.scores import Submission

    found = []
    for message, sender in batch:
        routed = await router.route(message, Submission(sender, ("bob@dest.test",), client_address=CLIENT, helo=HELO))
        facts = routed.decision.auth
        found.append((routed.pool, facts and facts.spf, facts and facts.dmarc))
    return found


@pytest.mark.parametrize("with_auth", [True, False], ids=["deliverypool", "without"])
def test_route_auth(benchmark: Any, with_auth: bool) -> None:
    import asyncio

    router, resolver = scored_router(with_auth)
    batch = routing_messages()
    loop = asyncio.new_event_loop()
    try:
        benchmark.extra_info["ops"] = len(batch)
        found = benchmark(lambda: loop.run_until_complete(route_batch(router, batch)))
    finally:
        loop.close()
    assert set(found) == {("normal", "pass", "pass") if with_auth else ("normal", None, None)}
    assert resolver.queries == 0, "a warm cache answers every question"
