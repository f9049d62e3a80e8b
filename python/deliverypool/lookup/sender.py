"""The sender-domain check: does the envelope sender's domain have an address or MX record?

Outcomes are kept in the Rust :class:`~deliverypool.DnsCache` (kind ``sender``), which the
per-message path reads synchronously; a cold domain costs one round of MX, A and AAAA queries
through :class:`~deliverypool.lookup.resolver.Resolver`, shared by every concurrent caller.

Outcomes (``SenderDomainCheck.status``):

``has-records``
    The domain has a usable MX record, or an A/AAAA record and no null MX.
``no-records``
    NXDOMAIN; or NODATA for MX, A and AAAA alike; or a syntactically invalid domain; or a
    null MX (RFC 7505, ``MX 0 .``) -- **also when the domain has an A or AAAA record**.
    Why: a null MX is the domain owner saying "this domain receives no mail", so nothing
    can be returned to the sender, and RFC 7505 §4.2 says such domains SHOULD NOT be used
    in envelope senders and lets receivers reject them (550 5.7.27). Mail from them is
    exactly what the high-risk pool is for. ``SenderDomains(resolver, null_mx_with_address=
    "has-records")`` restores the literal reading ("a null MX only counts as no MX").
``unknown``
    SERVFAIL, REFUSED, timeout, truncation that TCP cannot fix, or any other failure to
    get an answer. Never reported as ``no-records``; what it does is the routing policy's
    ``unknown_domain_pool`` (high-risk by default, reason ``sender-domain-unknown``).

Because the null-MX rule makes an A record alone insufficient, ``has-records`` needs the
MX answer unless the MX lookup itself proves it (a real MX). MX, A and AAAA are asked
concurrently and the check returns as soon as the outcome is certain: a real MX or an
NXDOMAIN ends it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import dns.name
import dns.rdatatype
import dns.rrset

from deliverypool.lookup.resolver import Answer, Outcome, Resolver, ResolverConfig
from deliverypool.mail.address import normalize_domain, sender_domain

__all__ = [
    "HAS_RECORDS",
    "NO_RECORDS",
    "UNKNOWN",
    "DomainStatus",
    "SenderDomainCheck",
    "NullMxRule",
    "SenderDomains",
    "check_sender_domains",
    "is_null_mx",
]

DomainStatus = Literal["has-records", "no-records", "unknown"]
NullMxRule = Literal["no-records", "has-records"]

HAS_RECORDS: Final = "has-records"
NO_RECORDS: Final = "no-records"
UNKNOWN: Final = "unknown"

# How long a verdict that needs no DNS (invalid domain) is kept: it cannot change.
_SYNTAX_TTL: Final = 86_400
_CACHE_OUTCOME: Final[dict[str, Outcome]] = {HAS_RECORDS: "positive", NO_RECORDS: "negative", UNKNOWN: "unknown"}


@dataclass(frozen=True, slots=True)
class SenderDomainCheck:
    """The outcome of a sender-domain check, as cached.

    ``detail`` says what decided it: ``mx``, ``address`` (A/AAAA, no MX), ``null-mx``,
    ``nxdomain``, ``nodata``, ``invalid-domain``, or for ``unknown`` the failure
    (``servfail``, ``refused``, ``timeout``, ``error``). ``ttl`` is how long DNS allowed it
    to be kept (before the cache's floors and ceilings).
    """

    domain: str
    status: DomainStatus
    detail: str
    ttl: int

    def as_json(self) -> dict[str, str]:
        return {"domain": self.domain, "status": self.status, "detail": self.detail}



class SenderDomains:
    """Sender-domain checks through one :class:`Resolver` and its cache.

    ``null_mx_with_address="has-records"`` restores the literal reading of RFC 7505 (a null MX
    next to an A record only means "no MX"); see the module documentation."""

    def __init__(self, resolver: Resolver, *, null_mx_with_address: NullMxRule = "no-records") -> None:
        if null_mx_with_address not in ("no-records", "has-records"):
            raise ValueError(f"null_mx_with_address: expected 'no-records' or 'has-records', got {null_mx_with_address!r}")
        self.resolver = resolver
        self.null_mx_with_address = null_mx_with_address

    def cached(self, domain: str) -> SenderDomainCheck | None:
        """The cached outcome for a domain as written in MAIL FROM (synchronous, no I/O)."""
        check: SenderDomainCheck | None = self.resolver.cache.sender_status(domain)  # type: ignore[assignment]
        return check

    async def check(self, domain: str) -> SenderDomainCheck:
        """The sender-domain check for ``domain`` (any case, Unicode or ASCII): from the cache
        when live, else one round of MX, A and AAAA queries shared by every concurrent caller."""
        key = domain.lower()
        cached = self.cached(key)
        if cached is not None:
            return cached
        ascii_domain = normalize_domain(key)
        if ascii_domain is None:
            check = SenderDomainCheck(key, NO_RECORDS, "invalid-domain", _SYNTAX_TTL)
            self._store_sender(key, check)
            return check
        check = await self.resolver.single_flight(("sender", ascii_domain), lambda: self._check_and_store(ascii_domain))
        if key != ascii_domain:
            self._store_sender(key, check)  # so that the Unicode spelling hits too
        return check

    async def checks(self, mail_from: Sequence[str | None]) -> list[SenderDomainCheck | None]:
        """Checks for a batch of envelope senders (None for null senders): cached ones
        without I/O, each cold domain once, all concurrently."""
        checks: list[SenderDomainCheck | None] = []
        cold: dict[str, list[int]] = {}
        for i, sender in enumerate(mail_from):
            domain = sender_domain(sender)
            check = None if domain is None else self.cached(domain)
            if domain is not None and check is None:
                cold.setdefault(domain, []).append(i)
            checks.append(check)
        if cold:
            results = await asyncio.gather(*(self.check(d) for d in cold))
            for indexes, check in zip(cold.values(), results):
                for i in indexes:
                    checks[i] = check
        return checks

    def _store_sender(self, key: str, check: SenderDomainCheck) -> None:
        self.resolver.cache.put("sender", key, check, ttl=check.ttl, outcome=_CACHE_OUTCOME[check.status])

    async def _check_and_store(self, domain: str) -> SenderDomainCheck:
        check = await self._check(domain)
        self._store_sender(domain, check)
        return check

    async def _check(self, domain: str) -> SenderDomainCheck:
        kinds = (dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA)
        tasks = {asyncio.ensure_future(self.resolver.query(domain, rdtype)): rdtype for rdtype in kinds}
        answers: dict[dns.rdatatype.RdataType, Answer] = {}
        try:
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    answers[tasks[task]] = task.result()
                verdict = self._verdict(domain, answers, complete=not pending)
                if verdict is not None:
                    return verdict
        finally:
            for task in tasks:
                task.cancel()
        raise AssertionError("a complete set of answers always has a verdict")  # pragma: no cover

    def _verdict(
        self, domain: str, answers: dict[dns.rdatatype.RdataType, Answer], *, complete: bool
    ) -> SenderDomainCheck | None:
        """The outcome once it is certain, else None (wait for more answers)."""
        for answer in answers.values():
            if answer.nxdomain:  # the name does not exist, whatever the type
                return SenderDomainCheck(domain, NO_RECORDS, "nxdomain", answer.ttl)
        mx = answers.get(dns.rdatatype.MX)
        null_mx = mx is not None and mx.outcome == "positive" and is_null_mx(mx.rrset)
        null_mx_blocks = self.null_mx_with_address == "no-records"
        if mx is not None and mx.outcome == "positive":
            if not null_mx:
                return SenderDomainCheck(domain, HAS_RECORDS, "mx", mx.ttl)
            if null_mx_blocks:
                return SenderDomainCheck(domain, NO_RECORDS, "null-mx", mx.ttl)
        addresses = [a for t, a in answers.items() if t != dns.rdatatype.MX and a.outcome == "positive"]
        if addresses and mx is not None and (mx.outcome == "negative" or (null_mx and not null_mx_blocks)):
            return SenderDomainCheck(domain, HAS_RECORDS, "address", min([mx.ttl] + [a.ttl for a in addresses]))
        if not complete:
            return None
        if addresses or any(a.outcome == "unknown" for a in answers.values()):
            # An address with the MX answer missing: a null MX may hide there, so not certain.
            failed = [a.detail for a in answers.values() if a.outcome == "unknown"]
            return SenderDomainCheck(domain, UNKNOWN, failed[0], 0)
        detail = "null-mx" if null_mx else "nodata"
        return SenderDomainCheck(domain, NO_RECORDS, detail, min(a.ttl for a in answers.values()))


def is_null_mx(rrset: dns.rrset.RRset | None) -> bool:
    """RFC 7505: a single MX record with preference 0 and the root as exchange."""
    return rrset is not None and len(rrset) == 1 and rrset[0].exchange == dns.name.root


# --- for the CLI -------------------------------------------------------------------------------


async def check_sender_domains(
    mail_from: Sequence[str | None], nameservers: Sequence[str] = (), **options: Any
) -> list[SenderDomainCheck | None]:
    """One batch of sender-domain checks with a fresh resolver: ``nameservers`` as
    ``HOST[:PORT]`` strings (empty: the system's); ``options`` go to :class:`ResolverConfig`."""
    resolver = Resolver(ResolverConfig.from_strings(nameservers, **options))
    return await SenderDomains(resolver).checks(mail_from)

