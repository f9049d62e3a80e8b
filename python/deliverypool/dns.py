"""DNS for deliverypool: the sender-domain check and the relay's MX lookups.

Queries go through dnspython's asyncio resolver; every outcome is kept in the Rust
:class:`~deliverypool.DnsCache`, which the per-message path reads synchronously.

Sender-domain outcomes (``SenderDomainCheck.status``):

``has-records``
    The domain has a usable MX record, or an A/AAAA record and no null MX.
``no-records``
    NXDOMAIN; or NODATA for MX, A and AAAA alike; or a syntactically invalid domain; or a
    null MX (RFC 7505, ``MX 0 .``) -- **also when the domain has an A or AAAA record**.
    Why: a null MX is the domain owner saying "this domain receives no mail", so nothing
    can be returned to the sender, and RFC 7505 §4.2 says such domains SHOULD NOT be used
    in envelope senders and lets receivers reject them (550 5.7.27). Mail from them is
    exactly what the high-risk pool is for. ``ResolverConfig(null_mx_with_address=
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
import ipaddress
import random
import re
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import dns.rrset

from deliverypool._core import DnsCache

__all__ = [
    "DnsLookupError",
    "DomainStatus",
    "MailExchanger",
    "Nameserver",
    "PermanentDnsError",
    "Resolver",
    "ResolverConfig",
    "SenderDomainCheck",
    "TemporaryDnsError",
    "check_sender_domains",
    "normalize_domain",
    "sender_domain",
]

DomainStatus = Literal["has-records", "no-records", "unknown"]
_T = TypeVar("_T")

HAS_RECORDS: Final = "has-records"
NO_RECORDS: Final = "no-records"
UNKNOWN: Final = "unknown"

# How long a verdict that needs no DNS (invalid domain) is kept: it cannot change.
_SYNTAX_TTL: Final = 86_400
_MAX_CNAME_HOPS: Final = 8
_Outcome = Literal["positive", "negative", "unknown"]
_CACHE_OUTCOME: Final[dict[str, _Outcome]] = {HAS_RECORDS: "positive", NO_RECORDS: "negative", UNKNOWN: "unknown"}


class DnsLookupError(LookupError):
    """A lookup gave no usable answer. ``reason`` names why, ``domain`` is the ASCII name."""

    def __init__(self, domain: str, reason: str, message: str | None = None) -> None:
        super().__init__(message or f"{domain}: {reason}")
        self.domain = domain
        self.reason = reason


class PermanentDnsError(DnsLookupError):
    """The domain cannot receive mail: ``reason`` is ``null-mx`` (RFC 7505; SMTP 5.1.10),
    ``nxdomain``, ``no-records`` (no MX, A or AAAA) or ``invalid-domain``."""


class TemporaryDnsError(DnsLookupError):
    """No answer for now (``servfail``, ``refused``, ``timeout``, ``error``): try later (4.4.3)."""


@dataclass(frozen=True, slots=True)
class Nameserver:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address."""
        text = text.strip()
        host, port = text, 53
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid nameserver {text!r}: expected [IPv6]:PORT")
            if rest:
                port = _port(text, rest[1:])
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = _port(text, port_text)
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid nameserver {text!r}: expected an IP address, optionally with :PORT") from None
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid nameserver {text!r}: port must be 1-65535")
    return int(port)


@dataclass(frozen=True, slots=True)
class ResolverConfig:
    """Everything a :class:`Resolver` needs, validated at construction.

    ``nameservers`` empty means the system's (``/etc/resolv.conf``).
    ``timeout`` is how long one nameserver gets per attempt; an attempt tries each nameserver
    in turn, and a query makes ``1 + retries`` attempts at most.
    """

    nameservers: tuple[Nameserver, ...] = ()
    timeout: float = 2.0
    retries: int = 1
    max_in_flight: int = 64
    null_mx_with_address: Literal["no-records", "has-records"] = "no-records"
    cache_capacity: int = 100_000
    min_ttl: float = 5.0
    max_ttl: float = 86_400.0
    max_negative_ttl: float = 3_600.0
    unknown_ttl: float = 10.0

    def __post_init__(self) -> None:
        if not all(isinstance(ns, Nameserver) for ns in self.nameservers):
            raise ValueError("nameservers: expected Nameserver values (see Nameserver.parse)")
        if not self.timeout > 0:
            raise ValueError(f"timeout: must be > 0 seconds, got {self.timeout!r}")
        if self.retries < 0:
            raise ValueError(f"retries: must be >= 0, got {self.retries!r}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight: must be >= 1, got {self.max_in_flight!r}")
        if self.null_mx_with_address not in ("no-records", "has-records"):
            raise ValueError(f"null_mx_with_address: expected 'no-records' or 'has-records', got {self.null_mx_with_address!r}")

    @classmethod
    def from_strings(cls, nameservers: Iterable[str], **options: Any) -> ResolverConfig:
        return cls(nameservers=tuple(Nameserver.parse(ns) for ns in nameservers), **options)

    def make_cache(self, *, manual_clock: bool = False) -> DnsCache:
        return DnsCache(
            self.cache_capacity,
            min_ttl=self.min_ttl,
            max_ttl=self.max_ttl,
            max_negative_ttl=self.max_negative_ttl,
            unknown_ttl=self.unknown_ttl,
            manual_clock=manual_clock,
        )


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


@dataclass(frozen=True, order=True, slots=True)
class MailExchanger:
    """One host to deliver to. ``implicit`` marks the RFC 5321 §5.1 fallback to the domain's
    own A/AAAA records when it has no MX."""

    preference: int
    host: str
    implicit: bool = False


# --- names -------------------------------------------------------------------------------

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def sender_domain(mail_from: str | None) -> str | None:
    """The domain of an envelope sender, lowercased; None for the null sender (``<>``).

    A sender without ``@`` yields ``""``, which :func:`normalize_domain` rejects.
    """
    if not mail_from:
        return None
    if mail_from[0] == "<" and mail_from[-1] == ">":
        mail_from = mail_from[1:-1]
        if not mail_from:
            return None
    _, at, domain = mail_from.rpartition("@")
    return domain.lower() if at else ""


def normalize_domain(domain: str) -> str | None:
    """The ASCII (IDNA) form of a mail domain, lowercased, without the trailing dot, or
    None when it is not a valid host name: empty, an address literal, a single label, a
    label outside letters/digits/hyphen, an all-numeric top-level label, too long."""
    domain = domain.strip().lower()
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or domain.startswith("["):
        return None
    if not domain.isascii():
        try:
            domain = dns.name.from_unicode(domain).to_text(omit_final_dot=True).lower()
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return None
    if len(domain) > 253:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    if not all(_LABEL.match(label) for label in labels):
        return None
    return domain


# --- one query -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Answer:
    """One rdtype's answer, CNAMEs followed. ``outcome`` is positive, negative or unknown."""

    outcome: Literal["positive", "negative", "unknown"]
    detail: str  # positive: "records"; negative: "nxdomain"/"nodata"; unknown: the failure
    ttl: int
    rrset: dns.rrset.RRset | None = None

    @property
    def nxdomain(self) -> bool:
        return self.detail == "nxdomain"


def _negative_ttl(response: dns.message.Message | None) -> int | None:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section; None without an SOA."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return int(DnsCache.negative_ttl(rrset.ttl, rrset[0].minimum))
    return None


def _failure(error: BaseException) -> str:
    """Names an unknown outcome from dnspython's exception."""
    if isinstance(error, dns.exception.Timeout):
        return "timeout"
    if isinstance(error, dns.message.ChainTooLong):
        return "cname-loop"
    if isinstance(error, dns.resolver.NoNameservers):
        errors = [e[3] for e in error.kwargs.get("errors", ()) if len(e) > 3]
        if any(isinstance(e, dns.message.ChainTooLong) for e in errors):
            return "cname-loop"
        texts = [str(e) for e in errors]
        for rcode in ("SERVFAIL", "REFUSED", "NOTIMP", "FORMERR"):
            if rcode in texts:
                return rcode.lower()
        if any(isinstance(e, dns.message.Truncated) for e in errors):
            return "truncated"  # over UDP, and TCP did not fix it
    return "error"


# --- the resolver --------------------------------------------------------------------------


class _LoopState:
    """What must belong to one event loop: the in-flight cap and the single-flight table."""

    def __init__(self, max_in_flight: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.slots = asyncio.Semaphore(max_in_flight)
        self.flights: dict[tuple[str, str], asyncio.Future[Any]] = {}


class Resolver:
    """Sender-domain checks and MX lookups, cached in a :class:`DnsCache`.

    One resolver serves any number of concurrent callers: a domain's lookup runs once however
    many wait on it, and at most ``max_in_flight`` queries are outstanding. It belongs to one
    event loop at a time (the cache itself may be shared by resolvers on other threads).
    """

    def __init__(self, config: ResolverConfig | None = None, *, cache: DnsCache | None = None) -> None:
        self.config = config = config or ResolverConfig()
        self.cache: DnsCache = cache if cache is not None else config.make_cache()
        resolver = dns.asyncresolver.Resolver(configure=not config.nameservers)
        if config.nameservers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in config.nameservers]
        # One attempt asks each nameserver in turn, each for at most `timeout`.
        resolver.timeout = config.timeout
        resolver.lifetime = config.timeout * max(1, len(resolver.nameservers))
        resolver.retry_servfail = False
        resolver.cache = None  # ours is the cache
        # 1232 bytes: the DNS Flag Day 2020 EDNS buffer size, which avoids fragmentation.
        resolver.use_edns(0, 0, 1232)
        self._dns = resolver
        self._state: _LoopState | None = None
        self.queries = 0  # queries sent (each attempt counts), for tests and metrics

    @classmethod
    def from_nameservers(cls, nameservers: Iterable[str], **options: Any) -> Resolver:
        """``Resolver.from_nameservers(["127.0.0.1:5353"], timeout=1.0)``."""
        return cls(ResolverConfig.from_strings(nameservers, **options))

    def _loop_state(self) -> _LoopState:
        state = self._state
        if state is None or state.loop is not asyncio.get_running_loop():
            state = self._state = _LoopState(self.config.max_in_flight)
        return state

    async def _single_flight(self, key: tuple[str, str], work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        """Runs ``work`` once for all concurrent callers with the same key. A caller that is
        cancelled does not cancel the shared lookup (the others still want it)."""
        flights = self._loop_state().flights
        flight = flights.get(key)
        if flight is None:
            flight = asyncio.ensure_future(work())
            flights[key] = flight

            def done(f: asyncio.Future[Any]) -> None:
                if flights.get(key) is f:
                    del flights[key]

            flight.add_done_callback(done)
        result: _T = await asyncio.shield(flight)
        return result

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Answer:
        """One rdtype for one name, with retries, CNAME chains followed (also across zones,
        as an authoritative server answers only the part of the chain it holds)."""
        cname_ttl: int | None = None
        seen = {name}
        for _ in range(_MAX_CNAME_HOPS):
            answer = await self._attempts(name, rdtype)
            if isinstance(answer, _Answer):  # negative or unknown
                if cname_ttl is not None and answer.outcome == "negative":
                    return _Answer("negative", answer.detail, min(cname_ttl, answer.ttl))
                return answer
            chain = answer.response.resolve_chaining()
            if chain.cnames:
                ttl = min(rrset.ttl for rrset in chain.cnames)
                cname_ttl = ttl if cname_ttl is None else min(cname_ttl, ttl)
            if answer.rrset is not None:
                ttl = answer.rrset.ttl if cname_ttl is None else min(answer.rrset.ttl, cname_ttl)
                return _Answer("positive", "records", ttl, answer.rrset)
            target = chain.canonical_name.to_text(omit_final_dot=True).lower()
            soa_ttl = _negative_ttl(answer.response)
            if target == name or soa_ttl is not None or not chain.cnames:
                negative_ttl = soa_ttl or 0
                ttl = negative_ttl if cname_ttl is None else min(negative_ttl, cname_ttl)
                return _Answer("negative", "nodata", ttl)
            if target in seen:
                return _Answer("unknown", "cname-loop", 0)
            seen.add(target)
            name = target  # the server stopped at a CNAME leaving its zones: ask for the target
        return _Answer("unknown", "cname-chain-too-long", 0)

    async def _attempts(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | _Answer:
        failure = "error"
        for _ in range(1 + self.config.retries):
            try:
                async with self._loop_state().slots:
                    self.queries += 1
                    return await self._dns.resolve(name + ".", rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN as e:
                responses: dict[dns.name.Name, dns.message.Message] = e.kwargs.get("responses") or {}
                response = next(iter(responses.values()), None)
                # Without an SOA, RFC 2308 §5 says not to cache: 0 leaves only the cache's floor.
                return _Answer("negative", "nxdomain", _negative_ttl(response) or 0)
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
                failure = _failure(e)  # worth another attempt
            except (dns.exception.DNSException, OSError) as e:
                return _Answer("unknown", _failure(e), 0)
        return _Answer("unknown", failure, 0)

    # --- the sender-domain check ---------------------------------------------------------------

    def cached_sender_check(self, domain: str) -> SenderDomainCheck | None:
        """The cached outcome for a domain as written in MAIL FROM (synchronous, no I/O)."""
        check: SenderDomainCheck | None = self.cache.sender_status(domain)  # type: ignore[assignment]
        return check

    async def check_sender_domain(self, domain: str) -> SenderDomainCheck:
        """The sender-domain check for ``domain`` (any case, Unicode or ASCII): from the cache
        when live, else one round of MX, A and AAAA queries shared by every concurrent caller."""
        key = domain.lower()
        cached = self.cached_sender_check(key)
        if cached is not None:
            return cached
        ascii_domain = normalize_domain(key)
        if ascii_domain is None:
            check = SenderDomainCheck(key, NO_RECORDS, "invalid-domain", _SYNTAX_TTL)
            self._store_sender(key, check)
            return check
        check = await self._single_flight(("sender", ascii_domain), lambda: self._check_and_store(ascii_domain))
        if key != ascii_domain:
            self._store_sender(key, check)  # so that the Unicode spelling hits too
        return check

    async def sender_domain_checks(self, mail_from: Sequence[str | None]) -> list[SenderDomainCheck | None]:
        """Checks for a batch of envelope senders (None for null senders): cached ones
        without I/O, each cold domain once, all concurrently."""
        checks: list[SenderDomainCheck | None] = []
        cold: dict[str, list[int]] = {}
        for i, sender in enumerate(mail_from):
            domain = sender_domain(sender)
            check = None if domain is None else self.cached_sender_check(domain)
            if domain is not None and check is None:
                cold.setdefault(domain, []).append(i)
            checks.append(check)
        if cold:
            results = await asyncio.gather(*(self.check_sender_domain(d) for d in cold))
            for indexes, check in zip(cold.values(), results):
                for i in indexes:
                    checks[i] = check
        return checks

    def _store_sender(self, key: str, check: SenderDomainCheck) -> None:
        self.cache.put("sender", key, check, ttl=check.ttl, outcome=_CACHE_OUTCOME[check.status])

    async def _check_and_store(self, domain: str) -> SenderDomainCheck:
        check = await self._check(domain)
        self._store_sender(domain, check)
        return check

    async def _check(self, domain: str) -> SenderDomainCheck:
        kinds = (dns.rdatatype.MX, dns.rdatatype.A, dns.rdatatype.AAAA)
        tasks = {asyncio.ensure_future(self._query(domain, rdtype)): rdtype for rdtype in kinds}
        answers: dict[dns.rdatatype.RdataType, _Answer] = {}
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
        self, domain: str, answers: dict[dns.rdatatype.RdataType, _Answer], *, complete: bool
    ) -> SenderDomainCheck | None:
        """The outcome once it is certain, else None (wait for more answers)."""
        for answer in answers.values():
            if answer.nxdomain:  # the name does not exist, whatever the type
                return SenderDomainCheck(domain, NO_RECORDS, "nxdomain", answer.ttl)
        mx = answers.get(dns.rdatatype.MX)
        null_mx = mx is not None and mx.outcome == "positive" and _is_null_mx(mx.rrset)
        null_mx_blocks = self.config.null_mx_with_address == "no-records"
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

    # --- MX lookups for delivery ---------------------------------------------------------------

    async def mail_exchangers(self, domain: str) -> list[MailExchanger]:
        """Where to deliver mail for ``domain`` (RFC 5321 §5.1), most preferred first, equal
        preferences in random order. Without MX records the domain itself is the one implicit
        exchanger (when it has an A or AAAA record).

        Raises :class:`PermanentDnsError` (null MX, NXDOMAIN, no records, invalid name) or
        :class:`TemporaryDnsError` (SERVFAIL, timeout, ...).
        """
        ascii_domain = normalize_domain(domain)
        if ascii_domain is None:
            raise PermanentDnsError(domain, "invalid-domain")
        cached = self.cache.get("MX", ascii_domain)
        if cached is None:
            cached = await self._single_flight(("MX", ascii_domain), lambda: self._mx_and_store(ascii_domain))
        if isinstance(cached, DnsLookupError):
            raise type(cached)(cached.domain, cached.reason)
        return _shuffle_equal_preferences(cached)  # type: ignore[arg-type]

    async def _mx_and_store(self, domain: str) -> tuple[MailExchanger, ...] | DnsLookupError:
        result, outcome, ttl = await self._mx(domain)
        self.cache.put("MX", domain, result, ttl=ttl, outcome=outcome)
        return result

    async def _mx(
        self, domain: str
    ) -> tuple[tuple[MailExchanger, ...] | DnsLookupError, Literal["positive", "negative", "unknown"], int]:
        mx = await self._query(domain, dns.rdatatype.MX)
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
        a, aaaa = await asyncio.gather(self._query(domain, dns.rdatatype.A), self._query(domain, dns.rdatatype.AAAA))
        found = [x for x in (a, aaaa) if x.outcome == "positive"]
        if found:
            return (MailExchanger(0, domain, implicit=True),), "positive", min([mx.ttl] + [x.ttl for x in found])
        if a.outcome == "unknown" or aaaa.outcome == "unknown":
            return TemporaryDnsError(domain, a.detail if a.outcome == "unknown" else aaaa.detail), "unknown", 0
        return PermanentDnsError(domain, "no-records"), "negative", min(mx.ttl, a.ttl, aaaa.ttl)

    async def addresses(self, host: str) -> tuple[str, ...]:
        """A mail exchanger's IPv4 then IPv6 addresses, CNAMEs followed, each record type
        cached and single-flighted on its own. A type whose lookup fails or has no records
        adds nothing: delivery then moves on to the next exchanger (and reports 4.4.3 when
        none has an address)."""
        ascii_host = normalize_domain(host)
        if ascii_host is None:
            return ()
        v4, v6 = await asyncio.gather(self._addresses(ascii_host, "A"), self._addresses(ascii_host, "AAAA"))
        return v4 + v6

    async def _addresses(self, host: str, kind: Literal["A", "AAAA"]) -> tuple[str, ...]:
        cached = self.cache.get(kind, host)
        if cached is None:
            cached = await self._single_flight((kind, host), lambda: self._addresses_and_store(host, kind))
        return cached  # type: ignore[return-value]

    async def _addresses_and_store(self, host: str, kind: Literal["A", "AAAA"]) -> tuple[str, ...]:
        answer = await self._query(host, dns.rdatatype.A if kind == "A" else dns.rdatatype.AAAA)
        found = tuple(rd.address for rd in answer.rrset) if answer.rrset is not None else ()
        self.cache.put(kind, host, found, ttl=answer.ttl, outcome=answer.outcome)
        return found


def _is_null_mx(rrset: dns.rrset.RRset | None) -> bool:
    """RFC 7505: a single MX record with preference 0 and the root as exchange."""
    return rrset is not None and len(rrset) == 1 and rrset[0].exchange == dns.name.root


def _shuffle_equal_preferences(exchangers: Sequence[MailExchanger]) -> list[MailExchanger]:
    """RFC 5321 §5.1: hosts of equal preference are tried in random order."""
    ordered = list(exchangers)
    start = 0
    for end in range(1, len(ordered) + 1):
        if end == len(ordered) or ordered[end].preference != ordered[start].preference:
            if end - start > 1:
                group = ordered[start:end]
                random.shuffle(group)
                ordered[start:end] = group
            start = end
    return ordered


# --- for the CLI -------------------------------------------------------------------------------


async def check_sender_domains(
    mail_from: Sequence[str | None], nameservers: Sequence[str] = (), **options: Any
) -> list[SenderDomainCheck | None]:
    """One batch of sender-domain checks with a fresh resolver: ``nameservers`` as
    ``HOST[:PORT]`` strings (empty: the system's); ``options`` go to :class:`ResolverConfig`."""
    resolver = Resolver(ResolverConfig.from_strings(nameservers, **options))
    return await resolver.sender_domain_checks(mail_from)
