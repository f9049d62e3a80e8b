"""The resolver against a real authoritative server (NSD on 127.0.0.1, zones in
tests/dnsserver.py), a nameserver that never answers, and one that only truncates."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliverypool._core import DnsCache
from deliverypool.errors import PermanentDnsError, TemporaryDnsError
from deliverypool.lookup.mx import MailExchanger, MxResolver
from deliverypool.lookup.resolver import Answer, Nameserver, Resolver, ResolverConfig
from deliverypool.lookup.sender import SenderDomainCheck, SenderDomains, check_sender_domains
from deliverypool.lookup.txt import TxtLookup
from deliverypool.mail.address import normalize_domain, sender_domain
from tests.dnsserver import NsdServer, SilentServer, TruncatingServer, ttl_zone

T = TypeVar("T")
Run = Callable[[Coroutine[Any, Any, T]], T]


def resolver_for(*servers: NsdServer | SilentServer | TruncatingServer, **options: Any) -> Resolver:
    # Generous: a loaded CI machine can be slow to answer; tests of silence pass their own.
    options.setdefault("timeout", 2.0)
    options.setdefault("min_ttl", 0.0)
    config = ResolverConfig.from_strings([s.address for s in servers], **options)
    return Resolver(config, cache=config.make_cache(manual_clock=True))


SENDER_CASES = [
    ("mx-only.dp.test", "has-records", "mx", 300),
    ("a-only.dp.test", "has-records", "address", 60),  # min(A 120, MX NODATA 60)
    ("aaaa-only.dp.test", "has-records", "address", 60),
    ("nullmx.dp.test", "no-records", "null-mx", 300),
    ("nullmx-a.dp.test", "no-records", "null-mx", 300),  # null MX next to an A record
    ("mixed-null.dp.test", "has-records", "mx", 300),
    ("nodata.dp.test", "no-records", "nodata", 60),
    ("missing.dp.test", "no-records", "nxdomain", 60),  # min(SOA TTL 3600, MINIMUM 60)
    ("nothing.other.test", "no-records", "nxdomain", 30),  # min(SOA TTL 30, MINIMUM 600)
    ("alias.dp.test", "has-records", "address", 60),
    ("chain.dp.test", "has-records", "address", 60),
    ("alias-ext.dp.test", "has-records", "address", 30),  # CNAME leaving the zone, chased
    ("alias-nx.dp.test", "no-records", "nxdomain", 60),
    ("bücher.test", "has-records", "mx", 300),
    ("x.broken.test", "unknown", "servfail", 0),
    ("unserved.example", "unknown", "refused", 0),
    ("loop1.dp.test", "unknown", "cname-loop", 0),
]


@pytest.mark.parametrize(("domain", "status", "detail", "ttl"), SENDER_CASES)
def test_sender_domain_outcomes(
    nsd: NsdServer, aio_run: Run[SenderDomainCheck], domain: str, status: str, detail: str, ttl: int
) -> None:
    resolver = resolver_for(nsd)
    check = aio_run(SenderDomains(resolver).check(domain))
    assert (check.status, check.detail, check.ttl) == (status, detail, ttl)
    # Cached for the DNS TTL, or the unknown TTL for failures.
    remaining = resolver.cache.remaining_ttl("sender", domain)
    assert remaining == pytest.approx(ttl if status != "unknown" else resolver.config.unknown_ttl)
    assert SenderDomains(resolver).cached(domain) is check


def test_null_mx_next_to_an_address_can_count_as_no_mx(nsd: NsdServer, aio_run: Run) -> None:
    senders = SenderDomains(resolver_for(nsd), null_mx_with_address="has-records")
    with_a = aio_run(senders.check("nullmx-a.dp.test"))
    alone = aio_run(senders.check("nullmx.dp.test"))
    assert (with_a.status, with_a.detail) == ("has-records", "address")
    assert (alone.status, alone.detail) == ("no-records", "null-mx")


def test_verdict_is_given_as_soon_as_it_is_certain() -> None:
    """The decision table behind "stop as soon as the answer is known", fed partial answers."""
    verdict = SenderDomains(Resolver(ResolverConfig.from_strings(["127.0.0.1:9"])))._verdict
    mx_rrset = dns.rrset.from_text("d.test.", 300, "IN", "MX", "10 mail.d.test.")
    null_rrset = dns.rrset.from_text("d.test.", 300, "IN", "MX", "0 .")
    a_rrset = dns.rrset.from_text("d.test.", 120, "IN", "A", "192.0.2.1")
    mx, null_mx = Answer("positive", "records", 300, mx_rrset), Answer("positive", "records", 300, null_rrset)
    a, nodata, nx = Answer("positive", "records", 120, a_rrset), Answer("negative", "nodata", 60), Answer("negative", "nxdomain", 60)
    failed = Answer("unknown", "timeout", 0)
    MX, A, AAAA = dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA

    def status(answers: dict[dns.rdatatype.RdataType, Answer], complete: bool = False) -> str | None:
        check = verdict("d.test", answers, complete=complete)
        return None if check is None else f"{check.status}/{check.detail}"

    assert status({MX: mx}) == "has-records/mx", "a real MX decides alone"
    assert status({A: nx}) == "no-records/nxdomain", "NXDOMAIN for any type decides alone"
    assert status({MX: null_mx}) == "no-records/null-mx"
    assert status({A: a}) is None, "an address alone waits for the MX answer (a null MX would win)"
    assert status({A: a, MX: nodata}) == "has-records/address"
    assert status({MX: nodata, A: nodata}) is None
    assert status({MX: nodata, A: nodata, AAAA: nodata}, complete=True) == "no-records/nodata"
    assert status({MX: failed, A: nodata, AAAA: nodata}, complete=True) == "unknown/timeout"
    assert status({MX: failed, A: a, AAAA: nodata}, complete=True) == "unknown/timeout"
    assert status({MX: mx, A: failed}) == "has-records/mx"


def test_idn_is_looked_up_as_a_label_and_cached_under_both_spellings(nsd: NsdServer, aio_run: Run) -> None:
    resolver = resolver_for(nsd)
    check = aio_run(SenderDomains(resolver).check("BÜCHER.test"))
    assert (check.domain, check.status) == ("xn--bcher-kva.test", "has-records")
    queries = resolver.queries
    for spelling in ("bücher.test", "xn--bcher-kva.test", "XN--BCHER-KVA.TEST."):
        assert aio_run(SenderDomains(resolver).check(spelling)).status == "has-records"
    assert resolver.queries == queries, "every spelling is served from the cache"


@pytest.mark.parametrize(
    "domain", ["", "localhost", "bad_domain.test", "-dash.test", "a..test", "1.2.3.4", "[192.0.2.1]", "x" * 64 + ".test"]
)
def test_invalid_domains_are_no_records_without_a_query(nsd: NsdServer, domain: str, aio_run: Run) -> None:
    resolver = resolver_for(nsd)
    check = aio_run(SenderDomains(resolver).check(domain))
    assert (check.status, check.detail) == ("no-records", "invalid-domain")
    assert resolver.queries == 0


def test_timeout_is_unknown_never_no_records(silent_nameserver: SilentServer, aio_run: Run[SenderDomainCheck]) -> None:
    resolver = resolver_for(silent_nameserver, timeout=0.2, retries=1)
    started = time.monotonic()
    check = aio_run(SenderDomains(resolver).check("mx-only.dp.test"))
    elapsed = time.monotonic() - started
    assert (check.status, check.detail) == ("unknown", "timeout")
    # Two attempts of 0.2 s each were waited for (no upper bound: a loaded machine is slower).
    assert elapsed > 0.35, "two attempts of 0.2 s"
    assert resolver.queries == 6, "1 + 1 retry for each of MX, A, AAAA"


def test_truncation_that_tcp_cannot_fix_is_unknown(truncating_nameserver: TruncatingServer, aio_run: Run) -> None:
    resolver = resolver_for(truncating_nameserver, retries=0)
    check = aio_run(SenderDomains(resolver).check("mx-only.dp.test"))
    assert (check.status, check.detail) == ("unknown", "truncated")
    assert truncating_nameserver.queries >= 3


def test_second_nameserver_answers_when_the_first_is_silent(nsd: NsdServer, silent_nameserver: SilentServer, aio_run: Run) -> None:
    resolver = resolver_for(silent_nameserver, nsd, timeout=1.0)
    check = aio_run(SenderDomains(resolver).check("missing.dp.test"))
    assert (check.status, check.detail) == ("no-records", "nxdomain")


def test_concurrent_checks_of_a_cold_domain_share_one_round(nsd: NsdServer, aio_run: Run[list[SenderDomainCheck]]) -> None:
    resolver = resolver_for(nsd)

    async def many() -> list[SenderDomainCheck]:
        return await asyncio.gather(*(SenderDomains(resolver).check("nodata.dp.test") for _ in range(50)))

    checks = aio_run(many())
    assert {c.status for c in checks} == {"no-records"}
    assert all(c is checks[0] for c in checks)
    assert resolver.queries == 3, "one MX, one A, one AAAA query for 50 callers"


def test_a_cancelled_caller_does_not_cancel_the_shared_lookup(nsd: NsdServer, aio_run: Run) -> None:
    resolver = resolver_for(nsd)

    async def main() -> SenderDomainCheck:
        first = asyncio.ensure_future(SenderDomains(resolver).check("a-only.dp.test"))
        second = asyncio.ensure_future(SenderDomains(resolver).check("a-only.dp.test"))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert aio_run(main()).status == "has-records"
    assert resolver.queries == 3


def test_queries_in_flight_are_capped(silent_nameserver: SilentServer, aio_run: Run) -> None:
    """With max_in_flight=2, the silent server receives exactly 2 queries while 15 wait."""
    resolver = resolver_for(silent_nameserver, timeout=1.0, retries=0, max_in_flight=2)

    drain(silent_nameserver.udp)  # what earlier tests left there

    async def main() -> int:
        tasks = [asyncio.ensure_future(SenderDomains(resolver).check(f"d{i}.dp.test")) for i in range(5)]
        await asyncio.sleep(0.3)
        received = drain(silent_nameserver.udp)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return received

    assert aio_run(main()) == 2


def drain(sock: socket.socket) -> int:
    sock.setblocking(False)
    count = 0
    try:
        while True:
            sock.recv(4096)
            count += 1
    except BlockingIOError:
        return count
    finally:
        sock.setblocking(True)


def test_ttl_old_answer_until_expiry_then_the_new_one(nsd: NsdServer, aio_run: Run) -> None:
    """Change the zone and reload NSD: the cache serves the old answer for the record's TTL,
    then asks again and gets the new one (and the same for a negative answer)."""
    nsd.reload("ttl.test", ttl_zone(10, "www 30 A 192.0.2.30\n"), serial=10)
    resolver = resolver_for(nsd)
    cache = resolver.cache

    def check() -> SenderDomainCheck:
        return aio_run(SenderDomains(resolver).check("www.ttl.test"))

    first = check()
    assert (first.status, first.ttl) == ("has-records", 30)  # min(A 30, MX NODATA 60)
    nsd.reload("ttl.test", ttl_zone(11, 'www 30 TXT "gone"\n'), serial=11)
    queries = resolver.queries
    cache.advance_clock(29)
    assert check() is first, "the old answer lives until its TTL runs out"
    assert resolver.queries == queries
    cache.advance_clock(1)
    second = check()
    assert (second.status, second.detail, second.ttl) == ("no-records", "nodata", 60)
    assert resolver.queries > queries
    assert cache.stats().expirations >= 1

    nsd.reload("ttl.test", ttl_zone(12, "www 30 MX 10 mail.other.test.\n"), serial=12)
    cache.advance_clock(59)
    assert check() is second, "a negative answer lives for the RFC 2308 negative TTL"
    cache.advance_clock(1)
    assert (check().status, check().detail) == ("has-records", "mx")


def test_unknown_is_retried_after_the_unknown_ttl(nsd: NsdServer, aio_run: Run) -> None:
    resolver = resolver_for(nsd, unknown_ttl=4.0)
    assert aio_run(SenderDomains(resolver).check("x.broken.test")).status == "unknown"
    queries = resolver.queries
    resolver.cache.advance_clock(3.9)
    aio_run(SenderDomains(resolver).check("x.broken.test"))
    assert resolver.queries == queries
    resolver.cache.advance_clock(0.1)
    aio_run(SenderDomains(resolver).check("x.broken.test"))
    assert resolver.queries > queries


# --- MX lookups for delivery ---------------------------------------------------------------------


def test_mail_exchangers_by_preference_equal_ones_shuffled(nsd: NsdServer, aio_run: Run[Any]) -> None:
    resolver = resolver_for(nsd)

    async def main() -> list[list[MailExchanger]]:
        return [await MxResolver(resolver).exchangers("multi-mx.dp.test") for _ in range(40)]

    results = aio_run(main())
    for exchangers in results:
        assert [mx.preference for mx in exchangers] == [10, 10, 20]
        assert {mx.host for mx in exchangers[:2]} == {"a.mx.dp.test", "b.mx.dp.test"}
        assert exchangers[2] == MailExchanger(20, "c.mx.dp.test")
    assert len({tuple(mx.host for mx in r) for r in results}) == 2, "equal preferences in random order"
    assert resolver.queries == 1, "later lookups come from the cache"


@pytest.mark.parametrize(
    ("domain", "expected"),
    [
        ("mx-only.dp.test", [MailExchanger(10, "mail.other.test")]),
        ("a-only.dp.test", [MailExchanger(0, "a-only.dp.test", implicit=True)]),
        ("aaaa-only.dp.test", [MailExchanger(0, "aaaa-only.dp.test", implicit=True)]),
        ("alias-ext.dp.test", [MailExchanger(0, "alias-ext.dp.test", implicit=True)]),
        ("mixed-null.dp.test", [MailExchanger(10, "real.mx.dp.test")]),
        ("Bücher.test", [MailExchanger(10, "mail.xn--bcher-kva.test")]),
    ],
)
def test_mail_exchangers(nsd: NsdServer, domain: str, expected: list[MailExchanger], aio_run: Run) -> None:
    assert aio_run(MxResolver(resolver_for(nsd)).exchangers(domain)) == expected


@pytest.mark.parametrize(
    ("domain", "error", "reason"),
    [
        ("nullmx.dp.test", PermanentDnsError, "null-mx"),
        ("nullmx-a.dp.test", PermanentDnsError, "null-mx"),  # RFC 7505: no implicit MX either
        ("missing.dp.test", PermanentDnsError, "nxdomain"),
        ("nodata.dp.test", PermanentDnsError, "no-records"),
        ("bad_name.test", PermanentDnsError, "invalid-domain"),
        ("x.broken.test", TemporaryDnsError, "servfail"),
        ("unserved.example", TemporaryDnsError, "refused"),
    ],
)
def test_mail_exchanger_failures(nsd: NsdServer, domain: str, error: type[Exception], reason: str, aio_run: Run) -> None:
    resolver = resolver_for(nsd)
    for _ in range(2):  # the second time from the cache, same error
        with pytest.raises(error) as info:
            aio_run(MxResolver(resolver).exchangers(domain))
        assert info.value.reason == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("target.dp.test", ("192.0.2.3",)),
        ("aaaa-only.dp.test", ("2001:db8::1",)),
        ("nullmx-a.dp.test", ("192.0.2.2",)),
        ("alias-ext.dp.test", ("192.0.2.9",)),  # CNAME into another zone
        ("nodata.dp.test", ()),
        ("missing.dp.test", ()),
        ("x.broken.test", ()),
        ("not a host", ()),
    ],
)
def test_addresses_of_a_host(nsd: NsdServer, host: str, expected: tuple[str, ...], aio_run: Run) -> None:
    resolver = resolver_for(nsd)
    assert aio_run(MxResolver(resolver).addresses(host)) == expected
    queries = resolver.queries
    assert aio_run(MxResolver(resolver).addresses(host)) == expected
    assert resolver.queries == queries, "the second time from the cache"


def test_mail_exchangers_timeout_is_temporary(silent_nameserver: SilentServer, aio_run: Run) -> None:
    resolver = resolver_for(silent_nameserver, timeout=0.2, retries=0)
    with pytest.raises(TemporaryDnsError) as info:
        aio_run(MxResolver(resolver).exchangers("mx-only.dp.test"))
    assert info.value.reason == "timeout"
    assert isinstance(info.value, LookupError)


# --- configuration and helpers -------------------------------------------------------------------


def test_nameserver_parsing() -> None:
    assert Nameserver.parse("127.0.0.1") == Nameserver("127.0.0.1", 53)
    assert Nameserver.parse("127.0.0.1:5353") == Nameserver("127.0.0.1", 5353)
    assert Nameserver.parse("[::1]:5353") == Nameserver("::1", 5353)
    assert Nameserver.parse("::1") == Nameserver("::1", 53)
    assert str(Nameserver("::1", 5353)) == "[::1]:5353"
    for bad in ["ns.example:53", "127.0.0.1:0", "127.0.0.1:x", "[::1", "127.0.0.1:70000"]:
        with pytest.raises(ValueError, match="invalid nameserver"):
            Nameserver.parse(bad)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"timeout": 0}, "timeout"), ({"retries": -1}, "retries"), ({"max_in_flight": 0}, "max_in_flight")],
)  # fmt: skip
def test_config_errors_name_the_key(options: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=f"^{key}:"):
        ResolverConfig(**options)


def test_an_unknown_null_mx_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="^null_mx_with_address:"):
        SenderDomains(Resolver(), null_mx_with_address="maybe")  # type: ignore[arg-type]


def test_sender_domain_and_normalization() -> None:
    assert sender_domain(None) is None
    assert sender_domain("") is None
    assert sender_domain("<>") is None
    assert sender_domain("<User@Example.COM>") == "example.com"
    assert sender_domain('"a@b"@c.test') == "c.test"
    assert sender_domain("postmaster") == ""
    assert normalize_domain("Example.COM.") == "example.com"
    assert normalize_domain("bücher.test") == "xn--bcher-kva.test"
    assert normalize_domain("a" * 63 + ".test") is not None
    assert normalize_domain("a" * 64 + ".test") is None


@pytest.mark.parametrize("text", ["0.a", "0.a ", "0.A .", "0.a. ", " 0.A\t.\t", "0.a."])
def test_normalize_domain_ignores_white_space_around_the_trailing_dot(text: str) -> None:
    # Hypothesis found "0.a " -> "0.a" but "0.A ." -> None: the white space was stripped before
    # the trailing dot was removed, not after.
    assert normalize_domain(text) == "0.a"
    assert normalize_domain(normalize_domain(text) or "") == "0.a"


@pytest.mark.parametrize("text", ["0.a..", "0.a. .", ".", " . ", "0.a .."])
def test_normalize_domain_takes_one_trailing_dot(text: str) -> None:
    assert normalize_domain(text) is None


def test_batch_helper_for_the_cli(nsd: NsdServer, aio_run: Run) -> None:
    checks = aio_run(
        check_sender_domains(["a@mx-only.dp.test", None, "b@missing.dp.test", "c@mx-only.dp.test"], [nsd.address])
    )
    assert [c.status if c else None for c in checks] == ["has-records", None, "no-records", "has-records"]
    assert checks[0] is checks[3]
    assert checks[2] is not None and checks[2].as_json() == {
        "domain": "missing.dp.test", "status": "no-records", "detail": "nxdomain",
    }  # fmt: skip


def test_a_given_cache_is_used(nsd: NsdServer, aio_run: Run) -> None:
    cache = DnsCache(10, min_ttl=0)
    resolver = Resolver(ResolverConfig.from_strings([nsd.address]), cache=cache)
    aio_run(SenderDomains(resolver).check("mx-only.dp.test"))
    assert cache.stats().insertions == 1
    assert cache.sender_status("mx-only.dp.test") is not None


# --- properties of the name helpers ---------------------------------------------------------------

_LDH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-ÄÖÜäöüßé_. ", min_size=0, max_size=80)


@given(_LDH)
def test_normalize_domain_yields_valid_idempotent_names(text: str) -> None:
    result = normalize_domain(text)
    if result is None:
        return
    assert result.isascii() and result == result.lower() and not result.endswith(".")
    assert len(result) <= 253
    labels = result.split(".")
    assert len(labels) >= 2
    assert all(0 < len(label) <= 63 and not label.startswith("-") and not label.endswith("-") for label in labels)
    assert normalize_domain(result) == result
    # The same name as a fully qualified one (white space around `text` is not part of it).
    assert normalize_domain(text.strip().upper().removesuffix(".") + ".") == result or not text.isascii()


@given(st.ip_addresses(), st.integers(1, 65535))
def test_nameserver_round_trip(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> None:
    nameserver = Nameserver(str(address), port)
    assert Nameserver.parse(str(nameserver)) == nameserver


@settings(max_examples=100)  # st.emails() is slow to draw from
@given(st.emails())
def test_sender_domain_of_an_address(address: str) -> None:
    domain = sender_domain(address)
    assert domain == address.rpartition("@")[2].lower()
    assert sender_domain(f"<{address}>") == domain


TXT_CASES = [
    ("txt-multi.dp.test", "positive", "records", (b"v=spf1 ip4:192.0.2.1 -all", b"second record")),
    ("_dmarc.txt-multi.dp.test", "positive", "records", (b"v=DMARC1; p=reject",)),
    ("SEL._domainkey.TXT-multi.dp.test.", "positive", "records", (b"v=DKIM1; k=ed25519; p=AAAA",)),
    ("mx-only.dp.test", "negative", "nodata", ()),
    ("_dmarc.missing.dp.test", "negative", "nxdomain", ()),
    ("x.broken.test", "unknown", "servfail", ()),
    ("bad..name.test", "unknown", "invalid-name", ()),
]


@pytest.mark.parametrize(("name", "outcome", "detail", "records"), TXT_CASES)
def test_txt_records_keep_none_and_failure_apart(
    nsd: NsdServer, name: str, outcome: str, detail: str, records: tuple[bytes, ...], aio_run: Run
) -> None:
    """A record's strings are joined; no records is negative (a definite "none"), a failure is
    unknown (temperror for SPF and DMARC), never negative."""

    async def run() -> None:
        lookup = TxtLookup(resolver_for(nsd))
        answer = await lookup.records(name)
        assert (answer.outcome, answer.detail) == (outcome, detail)
        assert sorted(answer.records) == sorted(records)
        queries = lookup.resolver.queries
        again = await lookup.records(name)
        assert again == answer
        if detail != "invalid-name":
            assert lookup.resolver.queries == queries, "the second lookup is answered by the cache"

    aio_run(run())


def test_txt_records_selected_by_prefix(nsd: NsdServer, aio_run: Run) -> None:
    answer = aio_run(TxtLookup(resolver_for(nsd)).records("txt-multi.dp.test"))
    assert answer.starting_with(b"V=SPF1") == (b"v=spf1 ip4:192.0.2.1 -all",)
    assert answer.starting_with(b"v=DMARC1") == ()


def test_normalize_domain_with_underscores() -> None:
    assert normalize_domain("_dmarc.example.com") is None
    assert normalize_domain("_dmarc.Example.COM.", allow_underscore=True) == "_dmarc.example.com"
    assert normalize_domain("s_1._domainkey.bücher.test", allow_underscore=True) == "s_1._domainkey.xn--bcher-kva.test"
    assert normalize_domain("-x._domainkey.a.test", allow_underscore=True) is None
