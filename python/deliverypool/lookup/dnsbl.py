"""Blocklist (DNSBL) lookups of the relay's own source addresses (RFC 5782).

An address is looked up in a zone by its reversed name: IPv4 octets in reverse
(``192.0.2.10`` in ``zen.spamhaus.org`` is ``10.2.0.192.zen.spamhaus.org``), IPv6 nibbles in
reverse (32 labels). The answer's meaning, the *verdict* (one of :data:`VERDICTS`):

``listed``
    An ``A`` record in 127.0.0.0/8 (its addresses are the list's return codes); the zone's
    ``TXT`` record for the name, when it has one, is the reason.
``not-listed``
    NXDOMAIN (or a name without an ``A`` record).
``refused``
    An ``A`` record in 127.255.255.0/24: the list refusing the query, never a listing (Spamhaus:
    127.255.255.254 a query through a public resolver, .255 an excessive number of queries,
    .252 a typo in the zone name).
``unknown``
    SERVFAIL, a timeout, or an answer outside 127.0.0.0/8 (a resolver that rewrites NXDOMAIN):
    nothing can be concluded; the watcher keeps the previous state.

Before a zone's answers are believed, its RFC 5782 §5 test points are checked: 127.0.0.2 must
be listed and 127.0.0.1 must not (``::FFFF:7F00:2`` and ``::FFFF:7F00:1`` for IPv6, checked
only when there are IPv6 addresses to look up). A zone that fails them is ``broken`` (a lapsed
list domain that now answers everything, or one that answers nothing) and its addresses are not
looked up in that cycle (:data:`ZONE_STATES`).

Every lookup goes through the relay's :class:`~deliverypool.lookup.resolver.Resolver` and its
Rust cache (kind ``dnsbl``, keyed by the reversed name): an answer lives for its TTL (a listing
for the ``A`` record's, a non-listing for the zone's negative TTL), within the cache's floors.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Union

import dns.rdatatype

from deliverypool.lookup.resolver import Answer, Outcome, Resolver

__all__ = [
    "REFUSAL_CODES",
    "TEST_POINTS",
    "VERDICTS",
    "ZONE_STATES",
    "Cycle",
    "Dnsbl",
    "DnsblAnswer",
    "Verdict",
    "ZoneCheck",
    "ZoneState",
    "family_name",
    "queries_per_cycle",
    "reversed_name",
]

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Verdict = Literal["listed", "not-listed", "refused", "unknown"]
ZoneState = Literal["ok", "broken", "refused", "unknown"]

VERDICTS: Final[tuple[Verdict, ...]] = ("listed", "not-listed", "refused", "unknown")
ZONE_STATES: Final[tuple[ZoneState, ...]] = ("ok", "broken", "refused", "unknown")

_LISTING: Final = ipaddress.ip_network("127.0.0.0/8")
_REFUSAL: Final = ipaddress.ip_network("127.255.255.0/24")
# What the lists say with their refusal codes (Spamhaus's; other lists use the same range).
REFUSAL_CODES: Final[Mapping[str, str]] = {
    "127.255.255.252": "typo in the zone name",
    "127.255.255.254": "query through a public or open resolver",
    "127.255.255.255": "excessive number of queries",
}
# RFC 5782 §5: (must be listed, must not be listed) per address family.
TEST_POINTS: Final[Mapping[int, tuple[Address, Address]]] = {
    4: (ipaddress.IPv4Address("127.0.0.2"), ipaddress.IPv4Address("127.0.0.1")),
    6: (ipaddress.IPv6Address("::ffff:7f00:2"), ipaddress.IPv6Address("::ffff:7f00:1")),
}
_REASON_LENGTH: Final = 300
_CACHE_OUTCOME: Final[Mapping[Verdict, Outcome]] = {"listed": "positive", "not-listed": "negative", "refused": "positive", "unknown": "unknown"}


def family_name(family: int) -> str:
    return f"ipv{family}"


def reversed_name(address: Address | str, zone: str) -> str:
    """The name of `address` under `zone` (RFC 5782 §2.1 and §2.4)."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if ip.version == 4:
        labels = reversed(str(ip).split("."))
    else:
        labels = reversed(ip.exploded.replace(":", ""))
    return ".".join(labels) + "." + zone.strip(".").lower()


def _text(rdata: Any) -> str:
    """A TXT record's strings as one printable line (it goes into alerts and logs)."""
    joined = "".join(part.decode("utf-8", "replace") for part in rdata.strings)
    return "".join(c if c.isprintable() else " " for c in joined)


@dataclass(frozen=True, slots=True)
class DnsblAnswer:
    """One address in one zone. ``codes`` are the ``A`` records (for ``listed`` and
    ``refused``); ``reason`` the ``TXT`` text of a listing; ``detail`` what decided it
    (``nxdomain``/``nodata``, a refusal's meaning, the failure of an ``unknown``)."""

    address: str
    zone: str
    verdict: Verdict
    codes: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ""
    ttl: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "codes": list(self.codes), "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ZoneCheck:
    """A zone's RFC 5782 test points for one address family: ``ok`` when 127.0.0.2 (or
    ``::FFFF:7F00:2``) is listed and 127.0.0.1 is not; ``refused`` when the list refused a test
    point; ``broken`` when a test point has the wrong answer; ``unknown`` when one could not
    be looked up. Only an ``ok`` zone's answers are used."""

    zone: str
    family: int
    state: ZoneState
    detail: str
    answers: tuple[DnsblAnswer, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "detail": self.detail}


@dataclass
class Cycle:
    """One check of every address in every zone. ``zones`` has the test points per (zone,
    family); ``answers`` the lookups, per (address, zone), of the families whose test points
    passed (the others were not looked up); ``queries`` the DNS queries it sent."""

    zones: dict[tuple[str, int], ZoneCheck] = field(default_factory=dict)
    answers: dict[tuple[str, str], DnsblAnswer] = field(default_factory=dict)
    queries: int = 0


def queries_per_cycle(addresses: Iterable[Address], zones: int) -> int:
    """The most queries one cycle sends without cache hits and listings: per zone, two test
    points per address family and one ``A`` query per address (a listed address adds its
    ``TXT`` query)."""
    addresses = list(addresses)
    families = {a.version for a in addresses}
    return zones * (len(addresses) + 2 * len(families))


class Dnsbl:
    """Blocklist lookups through one :class:`Resolver` and its cache."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def lookup(self, address: Address | str, zone: str, *, reason: bool = True) -> DnsblAnswer:
        """The verdict for `address` in `zone`: from the cache while it lives, else the ``A``
        query (and, with `reason`, the ``TXT`` query of a listing), shared by concurrent
        callers."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        name = reversed_name(ip, zone)
        cached = self.resolver.cache.get("dnsbl", name)
        if isinstance(cached, DnsblAnswer):
            return cached
        return await self.resolver.single_flight(
            ("dnsbl", name), lambda: self._lookup_and_store(str(ip), zone.strip(".").lower(), name, reason)
        )

    async def _lookup_and_store(self, address: str, zone: str, name: str, reason: bool) -> DnsblAnswer:
        answer = await self._lookup(address, zone, name, reason)
        self.resolver.cache.put("dnsbl", name, answer, ttl=answer.ttl, outcome=_CACHE_OUTCOME[answer.verdict])
        return answer

    async def _lookup(self, address: str, zone: str, name: str, with_reason: bool) -> DnsblAnswer:
        a: Answer = await self.resolver.query(name, dns.rdatatype.A)
        if a.outcome == "unknown":
            return DnsblAnswer(address, zone, "unknown", detail=a.detail)
        if a.outcome == "negative":
            return DnsblAnswer(address, zone, "not-listed", detail=a.detail, ttl=a.ttl)
        assert a.rrset is not None
        codes = sorted({ipaddress.IPv4Address(rd.address) for rd in a.rrset})
        refusals = [c for c in codes if c in _REFUSAL]
        if refusals:
            first = str(refusals[0])
            meaning = REFUSAL_CODES.get(first, "the list refused the query")
            return DnsblAnswer(address, zone, "refused", tuple(map(str, refusals)), detail=f"{first}: {meaning}", ttl=a.ttl)
        listed = [c for c in codes if c in _LISTING]
        if not listed:
            # Not a DNSBL answer at all: a resolver that answers NXDOMAIN with its own address.
            return DnsblAnswer(address, zone, "unknown", detail=f"answer outside 127.0.0.0/8: {codes[0]}")
        reason = None
        ttl = a.ttl
        txt = await self.resolver.query(name, dns.rdatatype.TXT) if with_reason else None
        if txt is not None and txt.outcome == "positive" and txt.rrset is not None:
            reason = "; ".join(sorted(_text(rd) for rd in txt.rrset))[:_REASON_LENGTH] or None
            ttl = min(ttl, txt.ttl)
        return DnsblAnswer(address, zone, "listed", tuple(map(str, listed)), reason, "", ttl)

    async def test_points(self, zone: str, family: int) -> ZoneCheck:
        """The RFC 5782 test points of `zone` for address family `family` (4 or 6)."""
        must, must_not = TEST_POINTS[family]
        # The test points' reasons are of no interest: A queries only.
        listed, unlisted = await asyncio.gather(self.lookup(must, zone, reason=False), self.lookup(must_not, zone, reason=False))
        answers = (listed, unlisted)
        refused = [a for a in answers if a.verdict == "refused"]
        if refused:
            return ZoneCheck(zone, family, "refused", f"{refused[0].address}: {refused[0].detail}", answers)
        wrong = []
        if listed.verdict == "not-listed":
            wrong.append(f"test point {must} is not listed")
        if unlisted.verdict == "listed":
            wrong.append(f"test point {must_not} is listed")
        if wrong:
            return ZoneCheck(zone, family, "broken", "; ".join(wrong), answers)
        failed = [a for a in answers if a.verdict == "unknown"]
        if failed:
            return ZoneCheck(zone, family, "unknown", f"test point {failed[0].address}: {failed[0].detail}", answers)
        return ZoneCheck(zone, family, "ok", "test points answered as RFC 5782 says", answers)

    async def check(self, addresses: Sequence[Address], zones: Sequence[str]) -> Cycle:
        """One cycle: each zone's test points for the families of `addresses`, then every
        address of a family whose test points passed, all zones at once."""
        before = self.resolver.queries
        cycle = Cycle()
        families = sorted({a.version for a in addresses})

        async def one_zone(zone: str) -> None:
            checks = await asyncio.gather(*(self.test_points(zone, family) for family in families))
            for zone_check in checks:
                cycle.zones[(zone, zone_check.family)] = zone_check
            passed = {c.family for c in checks if c.state == "ok"}
            wanted = [a for a in addresses if a.version in passed]
            for answer in await asyncio.gather(*(self.lookup(a, zone) for a in wanted)):
                cycle.answers[(answer.address, zone)] = answer

        await asyncio.gather(*(one_zone(zone) for zone in zones))
        cycle.queries = self.resolver.queries - before
        return cycle
