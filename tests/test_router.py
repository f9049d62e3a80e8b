"""Routing with DNS end to end: Router against NSD and a nameserver that never answers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from deliverypool._core import Decision, Policy, classify
from deliverypool.lookup.resolver import Resolver, ResolverConfig
from deliverypool.routing.router import Router
from tests.dnsserver import NsdServer, SilentServer

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]

MESSAGE = b"From: Alice <alice@mx-only.dp.test>\r\nTo: bob@example.net\r\nSubject: hello\r\n\r\nHi Bob.\r\n"


def router_for(server: NsdServer | SilentServer, policy: Policy | None = None, **options: Any) -> Router:
    # Generous: a loaded CI machine can be slow to answer; tests of silence pass their own.
    options.setdefault("timeout", 2.0)
    options.setdefault("retries", 0)
    config = ResolverConfig.from_strings([server.address], min_ttl=0.0, **options)
    return Router(Resolver(config, cache=config.make_cache(manual_clock=True)), policy=policy)


def message_from(domain: str) -> bytes:
    return MESSAGE.replace(b"mx-only.dp.test", domain.encode())


@pytest.mark.parametrize(
    ("mail_from", "status", "high_risk", "reason"),
    [
        ("alice@mx-only.dp.test", "has-records", False, None),
        ("alice@a-only.dp.test", "has-records", False, None),
        ("<alice@Missing.DP.test>", "no-records", True, "sender-domain-no-records"),
        ("alice@nodata.dp.test", "no-records", True, "sender-domain-no-records"),
        ("alice@nullmx-a.dp.test", "no-records", True, "sender-domain-no-records"),
        ("alice@bücher.test", "has-records", False, None),
        ("alice@x.broken.test", "unknown", True, "sender-domain-unknown"),
    ],
)
def test_route(nsd: NsdServer, aio_run: Run[Decision], mail_from: str, status: str, high_risk: bool, reason: str | None) -> None:
    decision = aio_run(router_for(nsd).route(MESSAGE, mail_from=mail_from))
    assert decision.sender_domain == status
    assert decision.high_risk is high_risk
    assert decision.pool == ("high-risk" if high_risk else "normal")
    dns_reasons = [r for r in decision.reasons if r.startswith("sender-domain")]
    assert dns_reasons == ([reason] if reason else [])


def test_unreachable_nameserver_is_unknown_never_no_records(silent_nameserver: SilentServer, aio_run: Run) -> None:
    decision = aio_run(router_for(silent_nameserver, timeout=0.3).route(MESSAGE, mail_from="a@missing.dp.test"))
    assert decision.sender_domain == "unknown"
    assert "sender-domain-unknown" in decision.reasons
    assert "sender-domain-no-records" not in decision.reasons
    assert decision.high_risk, "the default policy sends unknown to the high-risk pool"

    lenient = router_for(silent_nameserver, policy=Policy(unknown_domain_pool="normal"), timeout=0.3)
    decision = aio_run(lenient.route(MESSAGE, mail_from="a@missing.dp.test"))
    assert (decision.pool, decision.reasons) == ("normal", ("sender-domain-unknown",))


def test_null_sender_and_no_dns_are_not_checked(nsd: NsdServer, aio_run: Run) -> None:
    router = router_for(nsd)
    assert aio_run(router.route(MESSAGE, mail_from=None)).sender_domain is None
    assert aio_run(router.route(MESSAGE, mail_from="<>")).sender_domain is None
    assert router.resolver is not None and router.resolver.queries == 0
    no_dns = Router(None)
    assert aio_run(no_dns.route(MESSAGE, mail_from="a@missing.dp.test")).sender_domain is None


def test_warm_cache_routes_without_suspending(nsd: NsdServer, aio_run: Run) -> None:
    router = router_for(nsd)
    aio_run(router.route(MESSAGE, mail_from="a@missing.dp.test"))
    # Drive the coroutine by hand, outside any event loop: if it awaited anything it would
    # yield here instead of finishing on the first step.
    coroutine = router.route(MESSAGE, mail_from="b@MISSING.dp.test")
    with pytest.raises(StopIteration) as finished:
        coroutine.send(None)
    decision: Decision = finished.value.value
    assert decision.reasons == ("sender-domain-no-records",)


def test_a_cold_domain_costs_one_round_for_all_waiting_messages(nsd: NsdServer, aio_run: Run[list[Decision]]) -> None:
    router = router_for(nsd)

    async def main() -> list[Decision]:
        return await asyncio.gather(*(router.route(MESSAGE, mail_from=f"u{i}@nodata.dp.test") for i in range(100)))

    decisions = aio_run(main())
    assert {d.sender_domain for d in decisions} == {"no-records"}
    assert router.resolver is not None and router.resolver.queries == 3


def test_route_many(nsd: NsdServer, aio_run: Run[list[Decision]]) -> None:
    router = router_for(nsd)
    domains = ["mx-only.dp.test", "missing.dp.test", "x.broken.test", "a-only.dp.test"]
    senders: list[str | None] = [f"u{i}@{domains[i % 4]}" for i in range(100)] + [None]
    messages = [message_from(domains[i % 4]) for i in range(100)] + [MESSAGE]
    decisions = aio_run(router.route_many(messages, mail_from=senders))
    assert router.resolver is not None
    assert router.resolver.queries <= 3 * len(domains), "one round per cold domain"
    expected = {"mx-only.dp.test": "has-records", "missing.dp.test": "no-records",
                "x.broken.test": "unknown", "a-only.dp.test": "has-records"}  # fmt: skip
    assert [d.sender_domain for d in decisions] == [expected[domains[i % 4]] for i in range(100)] + [None]
    # Same decisions as classify() given the same statuses.
    for message, sender, decision in zip(messages, senders, decisions):
        again = classify(message, mail_from=sender, sender_domain=decision.sender_domain)
        assert (again.pool, again.reasons) == (decision.pool, decision.reasons)

    queries = router.resolver.queries
    small = aio_run(router.route_many(messages[:3], mail_from=senders[:3]))
    assert [d.sender_domain for d in small] == [d.sender_domain for d in decisions[:3]]
    assert router.resolver.queries == queries, "a warm batch sends no query"


def test_route_many_checks_lengths(nsd: NsdServer, aio_run: Run) -> None:
    with pytest.raises(ValueError, match="mail_from has 1 entries for 2 messages"):
        aio_run(router_for(nsd).route_many([MESSAGE, MESSAGE], mail_from=["a@mx-only.dp.test"]))


def test_header_from_check(nsd: NsdServer, aio_run: Run) -> None:
    config = ResolverConfig.from_strings([nsd.address], min_ttl=0.0)
    router = Router(Resolver(config), check_header_from=True)
    # Envelope fine, header From on a domain without records: the worse outcome wins.
    decision = aio_run(router.route(message_from("missing.dp.test"), mail_from="a@mx-only.dp.test"))
    assert decision.sender_domain == "no-records"
    decision = aio_run(router.route(MESSAGE, mail_from="a@mx-only.dp.test"))
    assert decision.sender_domain == "has-records"
    batch = aio_run(router.route_many([MESSAGE, message_from("x.broken.test")], mail_from=["a@mx-only.dp.test"] * 2))
    assert [d.sender_domain for d in batch] == ["has-records", "unknown"]


def test_header_from_check_classifies_once_unless_the_header_is_worse(nsd: NsdServer, aio_run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header From comes from the decision's own scan: a message is scanned once, and
    classified again only when its header From's domain is worse than its envelope sender's.
    In a batch, only those are classified again, each with its own score and tenant."""
    from deliverypool.routing import router as module

    calls: list[str] = []
    for name in ("scan", "classify", "classify_many"):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    config = ResolverConfig.from_strings([nsd.address], min_ttl=0.0)
    policy = Policy(tenant_thresholds={"t2": 1.5, "t4": 20.0})
    router = Router(Resolver(config), policy=policy, check_header_from=True)
    good, bad = MESSAGE, message_from("missing.dp.test")
    decision = aio_run(router.route(good, mail_from="a@mx-only.dp.test"))
    assert (decision.sender_domain, calls) == ("has-records", ["classify"])
    calls.clear()
    decision = aio_run(router.route(bad, mail_from="a@mx-only.dp.test", score=1.0))
    assert (decision.sender_domain, decision.score, calls) == ("no-records", 1.0, ["classify", "classify"])
    # The envelope sender's domain has no records already: the header From is not looked at.
    # (missing.dp.test is in the cache by now: any query would be for the header's domain.)
    calls.clear()
    assert router.resolver is not None
    queries = router.resolver.queries
    decision = aio_run(router.route(message_from("x.broken.test"), mail_from="a@missing.dp.test"))
    assert (decision.sender_domain, calls, router.resolver.queries) == ("no-records", ["classify"], queries)
    # No From field: nothing to check (one scan tells); a From without an address: no-records.
    for header, expected in ((b"", "has-records"), (b"From: MAILER-DAEMON\r\n", "no-records"), (b"From: <>\r\n", "no-records")):
        calls.clear()
        message = header + b"Subject: hi\r\n\r\nbody\r\n"
        decision = aio_run(router.route(message, mail_from="a@mx-only.dp.test"))
        assert decision.sender_domain == expected, header
        assert calls == ["classify", "scan"] + (["classify"] if expected == "no-records" else []), header
    calls.clear()
    batch = aio_run(router.route_many(
        [good, bad, good, bad], mail_from=["a@mx-only.dp.test"] * 4, score=[1.0, 2.0, 3.0, 9.0], tenant=["t1", "t2", "t3", "t4"],
    ))
    assert calls == ["classify_many", "classify_many"]
    assert [d.sender_domain for d in batch] == ["has-records", "no-records", "has-records", "no-records"]
    assert [d.score for d in batch] == [1.0, 2.0, 3.0, 9.0]
    assert [d.threshold for d in batch] == [5.0, 1.5, 5.0, 20.0]


def test_from_nameservers(nsd: NsdServer, aio_run: Run) -> None:
    router = Router.from_nameservers([nsd.address], timeout=2.0)
    assert router.resolver is not None
    assert router.resolver.config.timeout == 2.0
    decision = aio_run(router.route(MESSAGE, mail_from="a@missing.dp.test"))
    assert decision.reasons == ("sender-domain-no-records",)
    assert router.resolver.cache.stats().insertions == 1
