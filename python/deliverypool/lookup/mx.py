"""Where mail for a domain goes (RFC 5321 §5.1): the MX hosts by preference, with their
addresses, through the :class:`~deliverypool.lookup.resolver.Resolver` and its cache.

The MX policy: MX hosts most preferred first, equal preferences in random order
(:func:`order_exchangers`, the one ordering); without MX records the domain itself is the one
implicit exchanger when it has an A or AAAA record; a null MX (RFC 7505) means the domain takes
no mail. DNS outcomes become SMTP-style replies (:class:`~deliverypool.errors.DestinationError`)
so logs and DSNs read like any remote answer: a null MX is ``556 5.1.10``, a domain that does
not exist ``550 5.1.2``, a DNS failure ``451 4.4.3`` (retried; never a fallback to the
domain's own address records on a DNS error).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import dns.name
import dns.rdatatype

from deliverypool.errors import DestinationError, DnsLookupError, PermanentDnsError, TemporaryDnsError
from deliverypool.lookup.resolver import Outcome, Resolver
from deliverypool.mail.address import normalize_domain

__all__ = ["Addresses", "MailExchanger", "MxLookup", "MxResolver", "order_exchangers"]

_PERMANENT: Final = {
    "null-mx": "556 5.1.10 Recipient domain {domain} has a null MX: it accepts no mail (RFC 7505)",
    "nxdomain": "550 5.1.2 Recipient domain {domain} does not exist",
    "no-records": "550 5.1.2 Recipient domain {domain} has no MX, A or AAAA record",
    "invalid-domain": "550 5.1.2 Recipient domain {domain} is not a valid domain name",
}


@dataclass(frozen=True, order=True, slots=True)
class MailExchanger:
    """One host that accepts mail for a domain. ``addresses`` are its A then AAAA records
    (empty until looked up); ``implicit`` marks the RFC 5321 §5.1 fallback to the domain's own
    address records when it has no MX."""

    preference: int
    host: str
    addresses: tuple[str, ...] = ()
    implicit: bool = False


class Addresses(tuple[str, ...]):
    """A host's addresses of one family as the cache keeps them (kinds ``A`` and ``AAAA``): the
    tuple delivery reads, and what DNS said, which SPF needs to tell a name without addresses
    (``negative``, a void lookup) from a failed lookup (``unknown``, a temperror)."""

    outcome: Outcome
    detail: str  # "records", "nxdomain"/"nodata", or the failure

    def __new__(cls, addresses: tuple[str, ...], outcome: Outcome, detail: str) -> Addresses:
        self = super().__new__(cls, addresses)
        self.outcome = outcome
        self.detail = detail
        return self


def order_exchangers(exchangers: Sequence[MailExchanger], rng: random.Random | None = None) -> list[MailExchanger]:
    """Sorts by preference, shuffling hosts of equal preference (RFC 5321 §5.1)."""
    rng = rng or random.Random()
    keyed = [(mx.preference, rng.random(), mx) for mx in exchangers]
    return [mx for _, _, mx in sorted(keyed, key=lambda k: (k[0], k[1]))]


class MxLookup(Protocol):
    """Where mail for a domain goes: the exchangers in the order to try them, each with its
    addresses. Raises :class:`~deliverypool.errors.DestinationError`: permanent for a null MX
    or a domain that does not exist, temporary for DNS failures."""

    async def mail_exchangers(self, domain: str) -> Sequence[MailExchanger]: ...


class MxResolver:
    """:class:`MxLookup` through a :class:`Resolver`: MX, then each host's A and AAAA records,
    every record type cached and single-flighted on its own."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def mail_exchangers(self, domain: str) -> list[MailExchanger]:
        try:
            hosts = await self.exchangers(domain)
        except PermanentDnsError as exc:
            template = _PERMANENT.get(exc.reason, "550 5.1.2 Recipient domain {domain}: " + exc.reason)
            raise DestinationError(template.format(domain=domain), permanent=True) from None
        except TemporaryDnsError as exc:
            raise DestinationError(f"451 4.4.3 DNS lookup for {domain} failed: {exc.reason}", permanent=False) from None
        addresses = await asyncio.gather(*(self.addresses(mx.host) for mx in hosts))
        result = [
            MailExchanger(mx.preference, mx.host, found, mx.implicit) for mx, found in zip(hosts, addresses) if found
        ]
        if not result:
            raise DestinationError(f"451 4.4.3 No address found for any mail exchanger of {domain}", permanent=False)
        return result

    async def exchangers(self, domain: str) -> list[MailExchanger]:
        """The exchangers of ``domain`` without their addresses, in the order to try them.

        Raises :class:`PermanentDnsError` (null MX, NXDOMAIN, no records, invalid name) or
        :class:`TemporaryDnsError` (SERVFAIL, timeout, ...)."""
        ascii_domain = normalize_domain(domain)
        if ascii_domain is None:
            raise PermanentDnsError(domain, "invalid-domain")
        cache = self.resolver.cache
        cached = cache.get("MX", ascii_domain)
        if cached is None:
            cached = await self.resolver.single_flight(("MX", ascii_domain), lambda: self._mx_and_store(ascii_domain))
        if isinstance(cached, DnsLookupError):
            raise type(cached)(cached.domain, cached.reason)
        assert isinstance(cached, tuple)
        return order_exchangers(cached)

    async def _mx_and_store(self, domain: str) -> tuple[MailExchanger, ...] | DnsLookupError:
        result, outcome, ttl = await self._mx(domain)
        self.resolver.cache.put("MX", domain, result, ttl=ttl, outcome=outcome)
        return result

    async def _mx(self, domain: str) -> tuple[tuple[MailExchanger, ...] | DnsLookupError, Outcome, int]:
        query = self.resolver.query
        mx = await query(domain, dns.rdatatype.MX)
        if mx.outcome == "unknown":
            return TemporaryDnsError(domain, mx.detail), "unknown", 0
        if mx.outcome == "negative" and mx.nxdomain:
            return PermanentDnsError(domain, "nxdomain"), "negative", mx.ttl
        if mx.outcome == "positive":
            assert mx.rrset is not None
            hosts = tuple(
                sorted(
                    MailExchanger(rd.preference, rd.exchange.to_text(omit_final_dot=True).lower())
                    for rd in mx.rrset
                    if rd.exchange != dns.name.root
                )
            )
            # RFC 7505 §3: a null MX must stand alone; next to real MX records it is ignored.
            if hosts:
                return hosts, "positive", mx.ttl
            return PermanentDnsError(domain, "null-mx"), "negative", mx.ttl
        # No MX: the implicit MX is the domain itself, if it has an address (RFC 5321 §5.1).
        a, aaaa = await asyncio.gather(query(domain, dns.rdatatype.A), query(domain, dns.rdatatype.AAAA))
        found = [x for x in (a, aaaa) if x.outcome == "positive"]
        if found:
            return (MailExchanger(0, domain, implicit=True),), "positive", min([mx.ttl] + [x.ttl for x in found])
        if a.outcome == "unknown" or aaaa.outcome == "unknown":
            return TemporaryDnsError(domain, a.detail if a.outcome == "unknown" else aaaa.detail), "unknown", 0
        return PermanentDnsError(domain, "no-records"), "negative", min(mx.ttl, a.ttl, aaaa.ttl)

    async def addresses(self, host: str) -> tuple[str, ...]:
        """A mail exchanger's IPv4 then IPv6 addresses, CNAMEs followed. A type whose lookup
        fails or has no records adds nothing: delivery then moves on to the next exchanger
        (and reports 4.4.3 when none has an address)."""
        ascii_host = normalize_domain(host)
        if ascii_host is None:
            return ()
        v4, v6 = await asyncio.gather(self._addresses(ascii_host, "A"), self._addresses(ascii_host, "AAAA"))
        return v4 + v6

    async def address_records(self, host: str, kind: Literal["A", "AAAA"]) -> tuple[str, ...]:
        """One family's addresses of `host` (an ASCII name as it stands, no IDNA), as cached:
        an :class:`Addresses` that also says what DNS answered."""
        return await self._addresses(host.lower().rstrip("."), kind)

    async def _addresses(self, host: str, kind: Literal["A", "AAAA"]) -> tuple[str, ...]:
        cached = self.resolver.cache.get(kind, host)
        if cached is None:
            cached = await self.resolver.single_flight((kind, host), lambda: self._addresses_and_store(host, kind))
        assert isinstance(cached, tuple)
        return cached

    async def _addresses_and_store(self, host: str, kind: Literal["A", "AAAA"]) -> tuple[str, ...]:
        answer = await self.resolver.query(host, dns.rdatatype.A if kind == "A" else dns.rdatatype.AAAA)
        found = Addresses(tuple(rd.address for rd in answer.rrset) if answer.rrset is not None else (), answer.outcome, answer.detail)
        self.resolver.cache.put(kind, host, found, ttl=answer.ttl, outcome=answer.outcome)
        return found
