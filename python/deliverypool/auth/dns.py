"""Answers to the SPF and DMARC evaluators' DNS questions, through the one resolver and its
cache.

The Rust evaluators are sans-IO: a check's ``step()`` returns its result, or the questions
still open as ``(type, name)`` pairs. :class:`AuthDns` answers each from the
:class:`~deliverypool.DnsCache` synchronously (a warm check never suspends) and looks up the
rest through the :class:`~deliverypool.lookup.resolver.Resolver` (concurrently, single-flight,
stored in the cache for everyone): TXT through :class:`~deliverypool.lookup.txt.TxtLookup`,
MX and A/AAAA through :class:`~deliverypool.lookup.mx.MxResolver` (the cache entries delivery
uses), PTR here (cache kind ``PTR``).

How cached values become answers:

* TXT: :class:`~deliverypool.lookup.txt.TxtAnswer` as it is.
* A/AAAA: :class:`~deliverypool.lookup.mx.Addresses` (outcome kept); a plain empty tuple,
  whose outcome is unknown, is a failure (never read as "no addresses").
The Rust side reads the same objects the same way (``SpfCheck.run_cached``, one call for a
warm check); tests/test_auth_dns.py compares the two readings.

* MX: the exchangers delivery caches. A domain without MX records is cached as its implicit
  exchanger, or ``no-records``: for SPF both are "no MX records" (RFC 7208 §5.4 uses no
  implicit MX). A null MX is a record with no usable name. When MX is NODATA and the domain's
  A/AAAA lookups fail, delivery caches a temporary error, and SPF sees a temperror for that
  ``mx`` (the one place this is stricter than the raw MX answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal, Protocol, TypeAlias

import dns.rdatatype

from deliverypool._core import DnsCache

from deliverypool.errors import DnsLookupError, PermanentDnsError
from deliverypool.lookup.mx import Addresses, MailExchanger, MxResolver
from deliverypool.lookup.resolver import Outcome, Resolver
from deliverypool.lookup.txt import TxtAnswer, TxtLookup

__all__ = ["AuthDns", "Check", "DnsReply", "PtrAnswer"]

# (outcome, records, detail): what a check's answer() takes after the question.
DnsReply: TypeAlias = tuple[Outcome, Sequence[bytes] | Sequence[str], str]

_KINDS: Final[dict[str, Literal["TXT", "A", "AAAA", "MX", "PTR"]]] = {k: k for k in ("TXT", "A", "AAAA", "MX", "PTR")}
_NXDOMAIN: Final[DnsReply] = ("negative", (), "nxdomain")
_NODATA: Final[DnsReply] = ("negative", (), "nodata")


class Check(Protocol):
    """What :class:`~deliverypool.SpfCheck` and :class:`~deliverypool.DmarcCheck` have in common."""

    def step(self, answers: Sequence[tuple[str, str, str, Sequence[bytes] | Sequence[str], str]] | None = None) -> object: ...

    def run_cached(self, cache: DnsCache) -> object | None: ...

    def answer(
        self, qtype: str, name: str, outcome: str, records: Sequence[bytes] | Sequence[str] | None = None, detail: str = ""
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class PtrAnswer:
    """An address's PTR names, as cached (kind ``PTR``, keyed by the reverse name)."""

    outcome: Outcome
    detail: str
    ttl: int
    names: tuple[str, ...] = ()


def _from_txt(answer: TxtAnswer) -> DnsReply:
    return (answer.outcome, answer.records, answer.detail)


def _from_addresses(found: tuple[str, ...]) -> DnsReply:
    if isinstance(found, Addresses):
        return (found.outcome, tuple(found), found.detail)
    if found:
        return ("positive", found, "records")
    return ("unknown", (), "outcome-not-cached")


def _from_mx(found: object) -> DnsReply:
    if isinstance(found, tuple):
        hosts = [mx for mx in found if isinstance(mx, MailExchanger)]
        if len(hosts) == 1 and hosts[0].implicit:
            return _NODATA  # no MX records: RFC 7208 §5.4 uses no implicit MX
        return ("positive", tuple(mx.host for mx in hosts), "records")
    if isinstance(found, PermanentDnsError):
        if found.reason == "null-mx":
            return ("positive", (".",), "records")
        return _NXDOMAIN if found.reason in ("nxdomain", "invalid-domain") else _NODATA
    if isinstance(found, DnsLookupError):
        return ("unknown", (), found.reason)
    return ("unknown", (), "error")


def _from_ptr(answer: PtrAnswer) -> DnsReply:
    return (answer.outcome, answer.names, answer.detail)


class AuthDns:
    """Answers authentication checks' questions from the cache, then the resolver."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.txt = TxtLookup(resolver)
        self.mx = MxResolver(resolver)

    def cached(self, qtype: str, name: str) -> DnsReply | None:
        """The answer from the cache, or None on a miss (synchronous, no I/O)."""
        kind = _KINDS.get(qtype)
        found = None if kind is None else self.resolver.cache.get(kind, name)
        if found is None:
            return None
        if qtype == "TXT" and isinstance(found, TxtAnswer):
            return _from_txt(found)
        if qtype in ("A", "AAAA") and isinstance(found, tuple):
            return _from_addresses(found)
        if qtype == "MX":
            return _from_mx(found)
        if qtype == "PTR" and isinstance(found, PtrAnswer):
            return _from_ptr(found)
        return None

    async def fetch(self, qtype: str, name: str) -> DnsReply:
        """The answer, looked up (and cached) through the resolver."""
        if qtype == "TXT":
            return _from_txt(await self.txt.records_as_written(name))
        if qtype in ("A", "AAAA"):
            return _from_addresses(await self.mx.address_records(name, "A" if qtype == "A" else "AAAA"))
        if qtype == "MX":
            try:
                await self.mx.exchangers(name)
            except PermanentDnsError as error:
                if error.reason == "invalid-domain":  # IDNA refuses it: no such host name
                    return _NXDOMAIN
            except DnsLookupError:
                pass
            reply = self.cached("MX", name)
            return reply if reply is not None else ("unknown", (), "error")
        if qtype == "PTR":
            return _from_ptr(await self._ptr(name))
        return ("unknown", (), "unsupported-type")

    async def _ptr(self, name: str) -> PtrAnswer:
        found = self.resolver.cache.get("PTR", name)
        if isinstance(found, PtrAnswer):
            return found
        return await self.resolver.single_flight(("PTR", name), lambda: self._ptr_and_store(name))

    async def _ptr_and_store(self, name: str) -> PtrAnswer:
        answer = await self.resolver.query(name, dns.rdatatype.PTR)
        names: tuple[str, ...] = ()
        if answer.rrset is not None:
            names = tuple(rd.target.to_text(omit_final_dot=True).lower() for rd in answer.rrset)
        result = PtrAnswer(answer.outcome, answer.detail, answer.ttl, names)
        self.resolver.cache.put("PTR", name, result, ttl=answer.ttl, outcome=answer.outcome)
        return result

    def run_cached(self, check: Check) -> object | None:
        """Runs `check` to its result from the cache alone, in one call into Rust (which reads
        the cached objects as :meth:`cached` does); None as soon as an answer is not cached
        (the check keeps the answers it found)."""
        return check.run_cached(self.resolver.cache)

    async def run(self, check: Check) -> object:
        """Runs `check` to its result: cached answers without suspending, the others looked up
        concurrently, round after round."""
        cached = self.cached
        step = check.step()
        while isinstance(step, tuple):
            replies: list[tuple[str, str, str, Sequence[bytes] | Sequence[str], str]] = []
            missing: list[tuple[str, str]] = []
            for qtype, name in step:
                reply = cached(qtype, name)
                if reply is None:
                    missing.append((qtype, name))
                else:
                    replies.append((qtype, name, *reply))
            if missing:
                fetched = await asyncio.gather(*(self.fetch(qtype, name) for qtype, name in missing))
                replies.extend((qtype, name, *reply) for (qtype, name), reply in zip(missing, fetched))
            step = check.step(replies)
        return step
