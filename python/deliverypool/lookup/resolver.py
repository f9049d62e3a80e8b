"""The DNS transport: dnspython's asyncio resolver, one query at a time, with retries, CNAME
chains followed, an in-flight cap and single flight; every outcome goes into the Rust
:class:`~deliverypool.DnsCache`.

What the answers mean is decided elsewhere: :mod:`deliverypool.lookup.sender` (does the sender's
domain have records?) and :mod:`deliverypool.lookup.mx` (where does mail for a domain go?).
Names reach this module in their ASCII form (:func:`deliverypool.mail.address.normalize_domain`,
IDNA 2008); dnspython is given the same IDNA 2008 codec for anything it converts itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from deliverypool._core import DnsCache
from deliverypool.mail.address import IDNA_CODEC, AddressError, parse_host_port

__all__ = ["Answer", "Nameserver", "Outcome", "Resolver", "ResolverConfig"]

_T = TypeVar("_T")
_MAX_CNAME_HOPS = 8

Outcome = Literal["positive", "negative", "unknown"]


@dataclass(frozen=True, slots=True)
class Nameserver:
    host: str
    port: int = 53

    @classmethod
    def parse(cls, text: str) -> Nameserver:
        """``HOST``, ``HOST:PORT``, ``[IPv6]:PORT`` or a bare IPv6 address; HOST must be an IP
        address."""
        try:
            host, port = parse_host_port(text, 53)
        except AddressError as error:
            raise ValueError(f"invalid nameserver {text.strip()!r}: {error.reason}") from None
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid nameserver {text.strip()!r}: expected an IP address, optionally with :PORT") from None
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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



# --- one query -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """One rdtype's answer, CNAMEs followed. ``outcome`` is positive, negative or unknown."""

    outcome: Outcome
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
    """DNS queries for deliverypool, with their outcomes kept in a :class:`DnsCache`.

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

    async def single_flight(self, key: tuple[str, str], work: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
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

    async def query(self, name: str, rdtype: dns.rdatatype.RdataType) -> Answer:
        """One rdtype for one name, with retries, CNAME chains followed (also across zones,
        as an authoritative server answers only the part of the chain it holds)."""
        cname_ttl: int | None = None
        seen = {name}
        for _ in range(_MAX_CNAME_HOPS):
            answer = await self._attempts(name, rdtype)
            if isinstance(answer, Answer):  # negative or unknown
                if cname_ttl is not None and answer.outcome == "negative":
                    return Answer("negative", answer.detail, min(cname_ttl, answer.ttl))
                return answer
            chain = answer.response.resolve_chaining()
            if chain.cnames:
                ttl = min(rrset.ttl for rrset in chain.cnames)
                cname_ttl = ttl if cname_ttl is None else min(cname_ttl, ttl)
            if answer.rrset is not None:
                ttl = answer.rrset.ttl if cname_ttl is None else min(answer.rrset.ttl, cname_ttl)
                return Answer("positive", "records", ttl, answer.rrset)
            target = chain.canonical_name.to_text(omit_final_dot=True).lower()
            soa_ttl = _negative_ttl(answer.response)
            if target == name or soa_ttl is not None or not chain.cnames:
                negative_ttl = soa_ttl or 0
                ttl = negative_ttl if cname_ttl is None else min(negative_ttl, cname_ttl)
                return Answer("negative", "nodata", ttl)
            if target in seen:
                return Answer("unknown", "cname-loop", 0)
            seen.add(target)
            name = target  # the server stopped at a CNAME leaving its zones: ask for the target
        return Answer("unknown", "cname-chain-too-long", 0)

    async def _attempts(self, name: str, rdtype: dns.rdatatype.RdataType) -> dns.resolver.Answer | Answer:
        failure = "error"
        try:
            qname = dns.name.from_text(name, origin=dns.name.root, idna_codec=IDNA_CODEC)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return Answer("unknown", "invalid-name", 0)
        for _ in range(1 + self.config.retries):
            try:
                async with self._loop_state().slots:
                    self.queries += 1
                    return await self._dns.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
            except dns.resolver.NXDOMAIN as e:
                responses: dict[dns.name.Name, dns.message.Message] = e.kwargs.get("responses") or {}
                response = next(iter(responses.values()), None)
                # Without an SOA, RFC 2308 §5 says not to cache: 0 leaves only the cache's floor.
                return Answer("negative", "nxdomain", _negative_ttl(response) or 0)
            except (dns.exception.Timeout, dns.resolver.NoNameservers) as e:
                failure = _failure(e)  # worth another attempt
            except (dns.exception.DNSException, OSError) as e:
                return Answer("unknown", _failure(e), 0)
        return Answer("unknown", failure, 0)
