"""SPF and DMARC end to end against real zones served by NSD on loopback (spf.test,
dmarc.test), through the Resolver and its cache, as the relay will run them: each SPF
mechanism, macros, the lookup and void-lookup limits, DNS failure as temperror; DMARC reject,
quarantine, none, pct, sp and the organisational-domain fallback; the warm path answering
without a query and a cold lookup leaving the event loop free."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from deliverypool.auth import Authenticator, Departure, DkimIdentity, SpfCheck, SpfOutcome
from deliverypool.lookup.resolver import Resolver
from tests.dnsserver import DP_TEST, NsdServer, nsd_binary

_T = TypeVar("_T")
Run = Callable[[Coroutine[Any, Any, _T]], _T]

SOA = "@ 3600 IN SOA ns.spf.test. hostmaster.spf.test. 1 3600 900 604800 60\n@ NS ns.spf.test.\n"

SPF_TEST = (
    "$ORIGIN spf.test.\n$TTL 300\n"
    + SOA
    + """\
ns          A 127.0.0.1
ip4         TXT "v=spf1 ip4:192.0.2.0/24 -all"
ip6         TXT "v=spf1 ip6:2001:db8:1::/48 -all"
a           TXT "v=spf1 a:host.spf.test/28 -all"
host        A 192.0.2.16
host        AAAA 2001:db8:2::10
mx          TXT "v=spf1 mx -all"
mx          MX 10 mail1.spf.test.
mx          MX 20 mail2.spf.test.
mail1       A 198.51.100.21
mail2       A 198.51.100.22
include     TXT "v=spf1 include:ip4.spf.test ~all"
redirect    TXT "v=spf1 redirect=ip4.spf.test"
exists      TXT "v=spf1 exists:%{ir}.%{l}._e.spf.test -all"
1.2.0.192.alice._e A 127.0.0.2
1.2.0.192.a+b=c._e A 127.0.0.2
macros      TXT "v=spf1 a:%{l1r-}.%{d2} -all exp=why.%{d2}"
bob         A 198.51.100.30
why         TXT "%{i} may not send mail from %{o}"
limit       TXT "v=spf1 a:h1.spf.test a:h2.spf.test a:h3.spf.test a:h4.spf.test a:h5.spf.test a:h6.spf.test a:h7.spf.test a:h8.spf.test a:h9.spf.test a:h10.spf.test a:h11.spf.test +all"
ten         TXT "v=spf1 a:h1.spf.test a:h2.spf.test a:h3.spf.test a:h4.spf.test a:h5.spf.test a:h6.spf.test a:h7.spf.test a:h8.spf.test a:h9.spf.test a:h10.spf.test +all"
void        TXT "v=spf1 a:nx1.spf.test a:nx2.spf.test a:nx3.spf.test +all"
twovoid     TXT "v=spf1 a:nx1.spf.test a:nx2.spf.test +all"
temp        TXT "v=spf1 include:spf.broken.test +all"
multi       TXT "v=spf1 +all"
multi       TXT "v=spf1 -all"
helo        TXT "v=spf1 ip4:192.0.2.1 -all"
"""
    + "".join(f"h{i} A 203.0.113.{i}\n" for i in range(1, 12))
)

DMARC_TEST = (
    "$ORIGIN dmarc.test.\n$TTL 300\n"
    + SOA.replace("spf.test", "dmarc.test")
    + """\
ns          A 127.0.0.1
_dmarc      TXT "v=DMARC1; p=quarantine; sp=reject; rua=mailto:agg@dmarc.test"
_dmarc.reject      TXT "v=DMARC1; p=reject"
_dmarc.quarantine  TXT "v=DMARC1; p=quarantine"
_dmarc.none        TXT "v=DMARC1; p=none; rua=mailto:agg@dmarc.test"
_dmarc.pct         TXT "v=DMARC1; p=reject; pct=25"
_dmarc.strict      TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
reject      TXT "v=spf1 ip4:192.0.2.50 -all"
strict      TXT "v=spf1 ip4:192.0.2.50 -all"
bounces.reject TXT "v=spf1 ip4:192.0.2.50 -all"
"""
)

# dp.test: NsdServer waits for its SOA to know the server is up.
ZONES: dict[str, str | None] = {"dp.test": DP_TEST, "spf.test": SPF_TEST, "dmarc.test": DMARC_TEST, "broken.test": None}


@pytest.fixture(scope="module")
def auth_dns() -> Iterator[NsdServer]:
    if nsd_binary() is None:
        pytest.skip("nsd is not installed: run scripts/install-test-servers.sh")
    server = NsdServer(ZONES)
    server.start()
    yield server
    server.close()


def authenticator(server: NsdServer) -> Authenticator:
    return Authenticator(Resolver.from_nameservers([server.address], timeout=1.0, retries=0), receiver="relay.test")


def spf(server: NsdServer, ip: str, mail_from: str, helo: str = "relay.example") -> SpfOutcome:
    return asyncio.run(authenticator(server).spf(ip, mail_from, helo))


@pytest.mark.parametrize(
    ("ip", "sender", "result", "mechanism"),
    [
        ("192.0.2.7", "x@ip4.spf.test", "pass", "ip4:192.0.2.0/24"),
        ("192.0.3.7", "x@ip4.spf.test", "fail", "-all"),
        ("2001:db8:1:ff::1", "x@ip6.spf.test", "pass", "ip6:2001:db8:1::/48"),
        ("2001:db8:2::1", "x@ip6.spf.test", "fail", "-all"),
        ("192.0.2.30", "x@a.spf.test", "pass", "a:host.spf.test/28"),
        ("192.0.2.32", "x@a.spf.test", "fail", "-all"),
        ("2001:db8:2::10", "x@a.spf.test", "pass", "a:host.spf.test/28"),
        ("198.51.100.22", "x@mx.spf.test", "pass", "mx"),
        ("198.51.100.23", "x@mx.spf.test", "fail", "-all"),
        ("192.0.2.7", "x@include.spf.test", "pass", "include:ip4.spf.test"),
        ("192.0.3.7", "x@include.spf.test", "softfail", "~all"),
        ("192.0.2.7", "x@redirect.spf.test", "pass", "ip4:192.0.2.0/24"),
        ("192.0.3.7", "x@redirect.spf.test", "fail", "-all"),
        ("192.0.2.1", "alice@exists.spf.test", "pass", "exists:%{ir}.%{l}._e.spf.test"),
        ("192.0.2.1", "carol@exists.spf.test", "fail", "-all"),
        # A local part IDNA would refuse (+, =) is still a DNS label: asked as written.
        ("192.0.2.1", "a+b=c@exists.spf.test", "pass", "exists:%{ir}.%{l}._e.spf.test"),
        ("198.51.100.30", "bob-smith@macros.spf.test", "pass", "a:%{l1r-}.%{d2}"),
    ],
)
def test_each_mechanism_against_nsd(auth_dns: NsdServer, ip: str, sender: str, result: str, mechanism: str) -> None:
    outcome = spf(auth_dns, ip, sender)
    assert (outcome.result, outcome.mechanism) == (result, mechanism), outcome.detail


def test_explanation_macros_limits_and_errors(auth_dns: NsdServer) -> None:
    outcome = spf(auth_dns, "198.51.100.31", "bob-smith@macros.spf.test")
    assert outcome.result == "fail"
    assert outcome.explanation == "198.51.100.31 may not send mail from macros.spf.test"
    # Ten DNS-querying terms are allowed, an eleventh is a permerror.
    assert spf(auth_dns, "192.0.2.1", "x@ten.spf.test").result == "pass"
    outcome = spf(auth_dns, "192.0.2.1", "x@limit.spf.test")
    assert (outcome.result, outcome.reason, outcome.lookups) == ("permerror", "lookup-limit", 11)
    # Two void lookups are allowed, a third is a permerror.
    assert spf(auth_dns, "192.0.2.1", "x@twovoid.spf.test").result == "pass"
    outcome = spf(auth_dns, "192.0.2.1", "x@void.spf.test")
    assert (outcome.result, outcome.reason, outcome.void_lookups) == ("permerror", "void-limit", 3)
    # A failing nameserver (NSD's SERVFAIL for a zone it cannot load) is temperror, not a pass.
    outcome = spf(auth_dns, "192.0.2.1", "x@temp.spf.test")
    assert (outcome.result, outcome.reason) == ("temperror", "dns-error")
    assert spf(auth_dns, "192.0.2.1", "x@multi.spf.test").reason == "multiple-records"
    assert (spf(auth_dns, "192.0.2.1", "x@nothing.spf.test").result, spf(auth_dns, "192.0.2.1", "x@nothing.spf.test").reason) == ("none", "nxdomain")


def test_helo_identity(auth_dns: NsdServer) -> None:
    result = asyncio.run(authenticator(auth_dns).authenticate(client_ip="192.0.2.1", mail_from="", helo="helo.spf.test"))
    assert (result.spf.result, result.spf.sender) == ("pass", "postmaster@helo.spf.test")
    assert (result.helo.identity, result.helo.result) == ("helo", "pass")


def dmarc(server: NsdServer, from_domain: str, *, source_ip: str = "192.0.2.51", sender: str | None = None, dkim: tuple[DkimIdentity, ...] = ()) -> Any:
    auth = authenticator(server)
    sender = sender or f"bounce@{from_domain}"
    departure = Departure(source_ip, sender, "relay.example")
    return asyncio.run(
        auth.authenticate(client_ip="192.0.2.99", mail_from=sender, helo="client.example", from_domain=from_domain, dkim=dkim, departure=departure)
    )


def test_dmarc_policies_against_nsd(auth_dns: NsdServer) -> None:
    # p=reject, nothing aligned passes: the destination is asked to reject.
    result = dmarc(auth_dns, "reject.dmarc.test")
    assert (result.dmarc.result, result.dmarc.policy, result.dmarc.disposition) == ("fail", "reject", "reject")
    assert result.dmarc_fails_enforced
    # SPF passing for the departure address, aligned: pass.
    result = dmarc(auth_dns, "reject.dmarc.test", source_ip="192.0.2.50")
    assert (result.departure_spf.result, result.dmarc.result, result.dmarc.reason) == ("pass", "pass", "aligned-spf")
    # Relaxed alignment: a subdomain's SPF pass aligns; strict does not.
    assert dmarc(auth_dns, "reject.dmarc.test", source_ip="192.0.2.50", sender="b@bounces.reject.dmarc.test").dmarc.result == "pass"
    # An aligned DKIM signature that verifies: pass whatever SPF says; one that does not verify counts for nothing.
    signed = (DkimIdentity("reject.dmarc.test", "pass", "sel"),)
    assert dmarc(auth_dns, "reject.dmarc.test", dkim=signed).dmarc.reason == "aligned-dkim"
    assert dmarc(auth_dns, "reject.dmarc.test", dkim=(DkimIdentity("reject.dmarc.test", "fail"),)).dmarc.result == "fail"
    assert dmarc(auth_dns, "strict.dmarc.test", dkim=(DkimIdentity("sub.strict.dmarc.test", "pass"),)).dmarc.result == "fail"
    # quarantine, none, pct.
    assert dmarc(auth_dns, "quarantine.dmarc.test").dmarc.disposition == "quarantine"
    none = dmarc(auth_dns, "none.dmarc.test").dmarc
    assert (none.result, none.disposition, none.rua) == ("fail", "none", ["mailto:agg@dmarc.test"])
    assert not dmarc(auth_dns, "none.dmarc.test").dmarc_fails_enforced
    pct = dmarc(auth_dns, "pct.dmarc.test").dmarc
    assert (pct.disposition, pct.pct) == ("reject", 25)
    # Organisational-domain fallback: no record at the From domain; the organisation's sp= applies.
    sub = dmarc(auth_dns, "deep.sub.dmarc.test").dmarc
    assert (sub.record_domain, sub.organizational_domain, sub.policy, sub.disposition) == ("dmarc.test", "dmarc.test", "reject", "reject")
    org = dmarc(auth_dns, "dmarc.test").dmarc
    assert (org.policy, org.disposition) == ("quarantine", "quarantine")
    # No record anywhere: none.
    assert (dmarc(auth_dns, "spf.test").dmarc.result, dmarc(auth_dns, "spf.test").dmarc.reason) == ("none", "no-record")


def test_warm_cache_answers_without_a_query(auth_dns: NsdServer) -> None:
    auth = authenticator(auth_dns)
    args: dict[str, Any] = {
        "client_ip": "198.51.100.22",
        "mail_from": "x@mx.spf.test",
        "helo": "helo.spf.test",
        "from_domain": "reject.dmarc.test",
        "departure": Departure("192.0.2.50", "b@reject.dmarc.test", "relay.example"),
    }
    assert auth.authenticate_cached(**args) is None  # cold
    cold = asyncio.run(auth.authenticate(**args))
    queries = auth.dns.resolver.queries
    warm = auth.authenticate_cached(**args)
    assert warm is not None and auth.dns.resolver.queries == queries
    assert (warm.spf.result, warm.helo.result, warm.dmarc.result) == (cold.spf.result, cold.helo.result, cold.dmarc.result) == ("pass", "fail", "pass")

    async def no_suspension() -> None:
        # A warm authenticate() completes in one send(): it never yields to the loop.
        coroutine = auth.authenticate(**args)
        with pytest.raises(StopIteration):
            coroutine.send(None)

    asyncio.run(no_suspension())


def test_a_cold_lookup_leaves_the_loop_free_and_fails_as_temperror(silent_nameserver: Any, aio_run: Run[Any]) -> None:
    async def main() -> tuple[SpfOutcome, int]:
        auth = Authenticator(Resolver.from_nameservers([silent_nameserver.address], timeout=0.3, retries=0))
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.ensure_future(ticker())
        outcome = await auth.spf("192.0.2.1", "x@example.test", "helo.example.test")
        task.cancel()
        return outcome, ticks

    outcome, ticks = aio_run(main())
    assert (outcome.result, outcome.reason) == ("temperror", "dns-error")
    assert ticks > 1, "the loop ran other tasks while the query waited"


def test_rust_and_python_read_the_cache_alike(auth_dns: NsdServer) -> None:
    """SpfCheck.run_cached (Rust reading the cached objects) and the Python reading
    (AuthDns.cached, answers given by step) reach the same outcome for every cache shape: TXT,
    Addresses, MX exchangers, an implicit MX, a null MX, NXDOMAIN, a DNS failure."""
    from deliverypool import DnsCache
    from deliverypool.auth.dns import AuthDns
    from deliverypool.errors import PermanentDnsError, TemporaryDnsError
    from deliverypool.lookup.mx import Addresses, MailExchanger
    from deliverypool.lookup.txt import TxtAnswer

    cache = DnsCache(100)
    txt = {
        "mx.test": b"v=spf1 mx -all",
        "implicit.test": b"v=spf1 mx ?all",
        "null.test": b"v=spf1 mx ~all",
        "gone.test": b"v=spf1 mx:nx.test a:plain.test +all",
        "down.test": b"v=spf1 mx -all",
    }
    for name, record in txt.items():
        cache.put("TXT", name, TxtAnswer("positive", "records", 300, (record,)), ttl=300)
    cache.put("MX", "mx.test", (MailExchanger(10, "a.mx.test"), MailExchanger(20, "b.mx.test")), ttl=300)
    cache.put("A", "a.mx.test", Addresses(("192.0.2.9",), "positive", "records"), ttl=300)
    cache.put("A", "b.mx.test", Addresses((), "negative", "nodata"), ttl=300, outcome="negative")
    cache.put("MX", "implicit.test", (MailExchanger(0, "implicit.test", implicit=True),), ttl=300)
    cache.put("MX", "null.test", PermanentDnsError("null.test", "null-mx"), ttl=300, outcome="negative")
    cache.put("MX", "nx.test", PermanentDnsError("nx.test", "nxdomain"), ttl=300, outcome="negative")
    cache.put("A", "plain.test", (), ttl=300)  # a plain empty tuple: its outcome unknown
    cache.put("MX", "down.test", TemporaryDnsError("down.test", "servfail"), outcome="unknown")
    dns = AuthDns(Resolver(cache=cache))
    for domain, expected in [("mx.test", "pass"), ("implicit.test", "neutral"), ("null.test", "softfail"), ("gone.test", "temperror"), ("down.test", "temperror")]:
        for ip in ("192.0.2.9", "192.0.2.10"):
            rust = SpfCheck(ip, f"x@{domain}", "h.test").run_cached(cache)
            python = SpfCheck(ip, f"x@{domain}", "h.test")
            step = python.step()
            while isinstance(step, tuple):
                replies = [(q, n, *reply) for q, n in step if (reply := dns.cached(q, n)) is not None]
                assert len(replies) == len(step)
                step = python.step(replies)
            assert rust is not None and isinstance(step, SpfOutcome)
            assert (rust.result, rust.reason, rust.mechanism) == (step.result, step.reason, step.mechanism), domain
        assert SpfCheck("192.0.2.9", f"x@{domain}", "h.test").run_cached(cache).result == expected  # type: ignore[union-attr]
    assert SpfCheck("192.0.2.9", "x@cold.test", "h.test").run_cached(cache) is None
