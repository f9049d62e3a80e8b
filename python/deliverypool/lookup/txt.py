"""TXT records through the :class:`~deliverypool.lookup.resolver.Resolver` and its cache: the
one DNS path for the authentication records (SPF and DMARC policies, DKIM keys).

A lookup has three outcomes, as every lookup of the resolver does, and they must stay apart:
``positive`` (the name has TXT records: they are returned, each record's strings joined as
RFC 7208 §3.3 and RFC 6376 §3.6.2.2 say), ``negative`` (NXDOMAIN or no TXT records: a definite
"none", cached for the RFC 2308 negative TTL) and ``unknown`` (a timeout, SERVFAIL, ...: a
temporary error the caller turns into ``temperror``, never into "none"; cached only briefly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import dns.rdatatype

from deliverypool.lookup.resolver import Outcome, Resolver
from deliverypool.mail.address import normalize_domain

__all__ = ["TxtAnswer", "TxtLookup"]

# A TXT RRset is bounded by the DNS message (64 KiB); this bounds what one answer keeps.
MAX_RECORDS: Final = 64


@dataclass(frozen=True, slots=True)
class TxtAnswer:
    """One name's TXT records. ``records`` holds each record's character-strings joined, as
    bytes (a record need not be UTF-8); empty unless ``outcome`` is positive. ``detail`` is
    ``records``, ``nxdomain``/``nodata`` or the failure (``timeout``, ``servfail``,
    ``invalid-name``, ...). ``ttl`` is what the cache keeps it for."""

    outcome: Outcome
    detail: str
    ttl: int
    records: tuple[bytes, ...] = ()

    @property
    def nxdomain(self) -> bool:
        return self.detail == "nxdomain"

    def starting_with(self, prefix: bytes) -> tuple[bytes, ...]:
        """The records whose text starts with `prefix`, case-insensitively (``v=spf1``,
        ``v=DMARC1``): the selection RFC 7208 §4.5 and RFC 7489 §6.6.3 make before they count
        the records."""
        n = len(prefix)
        lower = prefix.lower()
        return tuple(r for r in self.records if r[:n].lower() == lower)


class TxtLookup:
    """TXT lookups through a :class:`Resolver`: its cache first (synchronously, so a warm
    lookup never suspends), then one query per name however many callers wait on it."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    def cached(self, name: str) -> TxtAnswer | None:
        """The cached answer for `name` (already in ASCII form), or None on a miss."""
        found = self.resolver.cache.get("TXT", name)
        return found if isinstance(found, TxtAnswer) else None

    async def records(self, name: str) -> TxtAnswer:
        """The TXT records of `name` (a domain in any form; IDNA 2008 applies)."""
        ascii_name = normalize_domain(name, allow_underscore=True)
        if ascii_name is None:
            return TxtAnswer("unknown", "invalid-name", 0)
        cached = self.cached(ascii_name)
        if cached is not None:
            return cached
        return await self.resolver.single_flight(("TXT", ascii_name), lambda: self._query_and_store(ascii_name))

    async def records_as_written(self, name: str) -> TxtAnswer:
        """The TXT records of `name` taken as an ASCII DNS name as it stands, without IDNA:
        SPF's macros build names from local parts and addresses (``%{l}`` of ``a+b``, ``%{i}``),
        whose labels may hold any octet DNS allows (``+``, ``=``, spaces) but that IDNA refuses."""
        if not name.isascii():
            return await self.records(name)
        ascii_name = name.lower().rstrip(".")
        cached = self.cached(ascii_name)
        if cached is not None:
            return cached
        return await self.resolver.single_flight(("TXT", ascii_name), lambda: self._query_and_store(ascii_name))

    async def _query_and_store(self, name: str) -> TxtAnswer:
        answer = await self.resolver.query(name, dns.rdatatype.TXT)
        records: tuple[bytes, ...] = ()
        if answer.rrset is not None:
            records = tuple(b"".join(rdata.strings) for rdata in list(answer.rrset)[:MAX_RECORDS])
        result = TxtAnswer(answer.outcome, answer.detail, answer.ttl, records)
        self.resolver.cache.put("TXT", name, result, ttl=answer.ttl, outcome=answer.outcome)
        return result
