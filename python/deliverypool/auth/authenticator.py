"""The :class:`Authenticator`: SPF at acceptance (MAIL FROM and HELO), SPF again for the way
the message will leave (its source address and envelope sender), and DMARC as the destination
will judge it, in one immutable :class:`AuthResult`.

Every DNS answer comes from the resolver's cache when it is there (then nothing awaits) and
from the resolver otherwise (:class:`~deliverypool.auth.dns.AuthDns`). A DNS failure is a
``temperror``: the result never guesses that mail passes.

What is predicted at the destination: DMARC with the DKIM signatures the destination will see
(:class:`DkimIdentity`: the relay's own and the customer's valid ones;
:meth:`DkimIdentity.from_outcome` reads them from the DKIM signer's and verifier's
:class:`~deliverypool.auth.dkim.DkimOutcome`) and the SPF result for the envelope sender from the source address the message
leaves from (:class:`Departure`). Phase 2 (routing) reads ``AuthResult.dmarc`` to send mail
that would fail a ``p=reject``/``quarantine`` policy through the high-risk pool.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from deliverypool._core import DKIM_RESULTS, DmarcCheck, DmarcOutcome, SpfCheck, SpfOutcome, organizational_domain
from deliverypool.auth.dkim import DkimOutcome
from deliverypool.auth.dns import AuthDns
from deliverypool.lookup.resolver import Resolver
from deliverypool.mail.address import normalize_domain

__all__ = ["AuthResult", "Authenticator", "Departure", "DkimIdentity"]

@functools.lru_cache(maxsize=4096)
def _ascii(domain: str) -> str:
    return normalize_domain(domain) or domain


def _may_align(departure: Departure, from_domain: str) -> bool:
    """Whether SPF for `departure` can align with `from_domain` (relaxed alignment, the
    loosest: the same organisational domain). Its SPF domain is the envelope sender's, or the
    HELO name's for the null sender (RFC 7208 §2.4)."""
    domain = departure.mail_from.rpartition("@")[2] if departure.mail_from else departure.helo
    return _org(domain) == _org(from_domain)


@functools.lru_cache(maxsize=4096)
def _org(domain: str) -> str:
    return organizational_domain(_ascii(domain.lower()))


# RFC 8601 §2.7.1: a signature's result (`DKIM_RESULTS`, the DKIM checker's), or none.
_DKIM_RESULTS: Final = frozenset(DKIM_RESULTS) | {"none"}


@dataclass(frozen=True, slots=True)
class DkimIdentity:
    """A DKIM signature as the destination will judge it, for DMARC: its ``d=`` domain (the
    Signing Domain Identifier), its result in RFC 8601's words (``DKIM_RESULTS``; only
    ``pass`` counts), and its selector (for the Authentication-Results field)."""

    domain: str
    result: str
    selector: str | None = None

    def __post_init__(self) -> None:
        if self.result not in _DKIM_RESULTS:
            raise ValueError(f"DkimIdentity.result: expected one of {', '.join(sorted(_DKIM_RESULTS))}, got {self.result!r}")

    @classmethod
    def from_outcome(cls, outcome: DkimOutcome) -> tuple[DkimIdentity, ...]:
        """What the destination will see of a message's DKIM (:mod:`deliverypool.auth.dkim`):
        the relay's own signatures, which verify (``pass``), and the signatures the message
        arrived with, as they were checked."""
        own = tuple(cls(s.domain, "pass", s.selector) for s in outcome.signed)
        return own + tuple(cls(c.domain, c.result, c.selector) for c in outcome.checks)


@dataclass(frozen=True, slots=True)
class Departure:
    """How the message leaves: the source address, the envelope sender it carries (the
    original, or its SRS rewriting) and the relay's HELO name."""

    source_ip: str
    mail_from: str
    helo: str


@dataclass(frozen=True, slots=True)
class AuthResult:
    """What the relay knows about a message's authentication.

    ``spf`` and ``helo``: SPF at acceptance, for the client's address, of the MAIL FROM and
    HELO identities (None when there was no client address: mail submitted locally). ``departure_spf``: SPF of the envelope sender from the source address it
    will leave from (None when no departure was given). ``dmarc``: the From domain's policy
    and the result the destination will reach (None without a From domain). ``dkim``: the
    signatures DMARC was given."""

    spf: SpfOutcome | None
    helo: SpfOutcome | None
    departure_spf: SpfOutcome | None = None
    dmarc: DmarcOutcome | None = None
    dkim: tuple[DkimIdentity, ...] = field(default=())

    @property
    def dmarc_fails_enforced(self) -> bool:
        """The From domain asks for quarantine or reject and no aligned identifier passes:
        what phase 2 routes as ``dmarc-fail``."""
        return self.dmarc is not None and self.dmarc.result == "fail" and self.dmarc.disposition != "none"

    def authentication_results(self, authserv_id: str) -> str:
        """The RFC 8601 ``Authentication-Results`` field (name, value, CRLF)."""
        from deliverypool.auth.results import authentication_results

        return authentication_results(authserv_id, self)


class Authenticator:
    """SPF and DMARC for messages, through one :class:`Resolver` and its cache.

    ``receiver`` is the relay's own domain (``%{r}`` in SPF explanations); ``clock`` gives
    seconds since the epoch (``%{t}``)."""

    def __init__(self, resolver: Resolver, *, receiver: str = "", clock: Callable[[], float] = time.time) -> None:
        self.dns = AuthDns(resolver)
        self.receiver = receiver
        self.clock = clock

    def _spf_check(self, ip: str, mail_from: str, helo: str, identity: Literal["mailfrom", "helo"]) -> SpfCheck:
        return SpfCheck(ip, mail_from, helo, identity=identity, receiver=self.receiver, now=int(self.clock()))

    @staticmethod
    def _dmarc_check(from_domain: str, dkim: Sequence[DkimIdentity], spf: SpfOutcome | None) -> DmarcCheck:
        ascii_domain = _ascii(from_domain)
        return DmarcCheck(
            ascii_domain,
            dkim=[(s.domain, s.result == "pass") for s in dkim],
            spf=(spf.domain, spf.result) if spf is not None else None,
        )

    async def spf(self, ip: str, mail_from: str, helo: str, *, identity: Literal["mailfrom", "helo"] = "mailfrom") -> SpfOutcome:
        """SPF of one identity (RFC 7208) for a client address."""
        outcome = await self.dns.run(self._spf_check(ip, mail_from, helo, identity))
        assert isinstance(outcome, SpfOutcome)
        return outcome

    async def dmarc(
        self, from_domain: str, *, dkim: Sequence[DkimIdentity] = (), spf: SpfOutcome | None = None
    ) -> DmarcOutcome:
        """DMARC (RFC 7489) for a From domain, with these signatures and this SPF result."""
        outcome = await self.dns.run(self._dmarc_check(from_domain, dkim, spf))
        assert isinstance(outcome, DmarcOutcome)
        return outcome

    # --- in two stages, as routing runs them -------------------------------------------------

    def arrival_cached(self, client_ip: str, mail_from: str, helo: str, *, with_helo: bool = True) -> tuple[SpfOutcome, SpfOutcome | None] | None:
        """SPF at acceptance, MAIL FROM and (`with_helo`) HELO, from the cache alone; None when
        an answer is not cached (then await :meth:`arrival`)."""
        run = self.dns.run_cached
        spf = run(self._spf_check(client_ip, mail_from, helo, "mailfrom"))
        if not isinstance(spf, SpfOutcome):
            return None
        if not with_helo:
            return spf, None
        helo_spf = run(self._spf_check(client_ip, mail_from, helo, "helo"))
        if not isinstance(helo_spf, SpfOutcome):
            return None
        return spf, helo_spf

    async def arrival(self, client_ip: str, mail_from: str, helo: str, *, with_helo: bool = True) -> tuple[SpfOutcome, SpfOutcome | None]:
        """SPF at acceptance (MAIL FROM, and HELO with `with_helo`): from the cache when it
        can, else concurrently through the resolver."""
        cached = self.arrival_cached(client_ip, mail_from, helo, with_helo=with_helo)
        if cached is not None:
            return cached
        if not with_helo:
            return await self.spf(client_ip, mail_from, helo), None
        spf, helo_spf = await asyncio.gather(self.spf(client_ip, mail_from, helo), self.spf(client_ip, mail_from, helo, identity="helo"))
        return spf, helo_spf

    def destination_cached(
        self, arrival: tuple[SpfOutcome, SpfOutcome | None] | None, *, from_domain: str | None, dkim: Sequence[DkimIdentity], departure: Departure | None
    ) -> AuthResult | None:
        """What the destination will see, from the cache alone (None when an answer is not
        cached): DMARC with `dkim` and the SPF result for `departure`. SPF is evaluated only
        when DMARC needs it (a policy, no aligned signature that passes, and an envelope sender
        in the From domain's organisational domain, which SPF alignment needs: then
        ``departure_spf`` is set). Unlike :meth:`authenticate`, no departure means no SPF for
        DMARC (the address the destination will see is not known): only the signatures count."""
        run = self.dns.run_cached
        departure_spf: SpfOutcome | None = None
        dmarc = None
        if from_domain is not None:
            found = run(self._dmarc_check(from_domain, dkim, None))
            if not isinstance(found, DmarcOutcome):
                return None
            if found.result == "fail" and departure is not None and _may_align(departure, from_domain):
                spf = run(self._spf_check(departure.source_ip, departure.mail_from, departure.helo, "mailfrom"))
                if not isinstance(spf, SpfOutcome):
                    return None
                departure_spf = spf
                found = run(self._dmarc_check(from_domain, dkim, departure_spf))
                if not isinstance(found, DmarcOutcome):
                    return None
            dmarc = found
        spf_at_arrival, helo = arrival if arrival is not None else (None, None)
        return AuthResult(spf_at_arrival, helo, departure_spf, dmarc, tuple(dkim))

    async def destination(
        self, arrival: tuple[SpfOutcome, SpfOutcome | None] | None, *, from_domain: str | None, dkim: Sequence[DkimIdentity], departure: Departure | None
    ) -> AuthResult:
        """:meth:`destination_cached`, through the resolver for what is not cached."""
        cached = self.destination_cached(arrival, from_domain=from_domain, dkim=dkim, departure=departure)
        if cached is not None:
            return cached
        departure_spf = None
        dmarc = None
        if from_domain is not None:
            dmarc = await self.dmarc(from_domain, dkim=dkim)
            if dmarc.result == "fail" and departure is not None and _may_align(departure, from_domain):
                departure_spf = await self.spf(departure.source_ip, departure.mail_from, departure.helo)
                dmarc = await self.dmarc(from_domain, dkim=dkim, spf=departure_spf)
        spf, helo = arrival if arrival is not None else (None, None)
        return AuthResult(spf, helo, departure_spf, dmarc, tuple(dkim))

    async def authenticate(
        self,
        *,
        client_ip: str,
        mail_from: str,
        helo: str,
        from_domain: str | None = None,
        dkim: Sequence[DkimIdentity] = (),
        departure: Departure | None = None,
    ) -> AuthResult:
        """Everything for one message. A warm cache answers without suspending
        (:meth:`authenticate_cached`); otherwise the SPF checks run concurrently, then DMARC."""
        cached = self.authenticate_cached(
            client_ip=client_ip, mail_from=mail_from, helo=helo, from_domain=from_domain, dkim=dkim, departure=departure
        )
        if cached is not None:
            return cached
        checks = [self.spf(client_ip, mail_from, helo), self.spf(client_ip, mail_from, helo, identity="helo")]
        if departure is not None:
            checks.append(self.spf(departure.source_ip, departure.mail_from, departure.helo))
        spf, helo_spf, *rest = await asyncio.gather(*checks)
        departure_spf = rest[0] if rest else None
        dmarc = None
        if from_domain is not None:
            dmarc = await self.dmarc(from_domain, dkim=dkim, spf=departure_spf if departure_spf is not None else spf)
        return AuthResult(spf, helo_spf, departure_spf, dmarc, tuple(dkim))

    def authenticate_cached(
        self,
        *,
        client_ip: str,
        mail_from: str,
        helo: str,
        from_domain: str | None = None,
        dkim: Sequence[DkimIdentity] = (),
        departure: Departure | None = None,
    ) -> AuthResult | None:
        """:meth:`authenticate` from the cache alone, synchronously; None when an answer is
        not cached (then await :meth:`authenticate`)."""
        run = self.dns.run_cached
        spf = run(self._spf_check(client_ip, mail_from, helo, "mailfrom"))
        helo_spf = run(self._spf_check(client_ip, mail_from, helo, "helo"))
        if not isinstance(spf, SpfOutcome) or not isinstance(helo_spf, SpfOutcome):
            return None
        departure_spf: SpfOutcome | None = None
        if departure is not None:
            found_spf = run(self._spf_check(departure.source_ip, departure.mail_from, departure.helo, "mailfrom"))
            if not isinstance(found_spf, SpfOutcome):
                return None
            departure_spf = found_spf
        dmarc = None
        if from_domain is not None:
            found = run(self._dmarc_check(from_domain, dkim, departure_spf if departure_spf is not None else spf))
            if not isinstance(found, DmarcOutcome):
                return None
            dmarc = found
        return AuthResult(spf, helo_spf, departure_spf, dmarc, tuple(dkim))
