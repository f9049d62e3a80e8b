"""Routing by authentication (``[auth] enabled``; docs/concepts/authentication.md): what SPF, DKIM
and DMARC say about a message, as the routing decision's :class:`~deliverypool.AuthFacts`.

For each message, beside the score and the sender-domain check (:class:`~deliverypool.routing.
scores.ScoredRouter`):

1. **At acceptance**: SPF of the MAIL FROM and HELO identities for the client's address
   (:meth:`Authenticator.arrival`), and the check of the DKIM signatures the client put on
   (the verifier's result is awaited before the decision).
2. **Relayed?** The envelope sender's domain is not one of the tenant's ``domains`` (their
   organisational domains compared, RFC 7489 §3.2) and SPF did not pass: reason
   ``relayed-spf-fail``, and the message takes a relay pool (the relay class's rules, then
   ``policy.relay_pool``; the high-risk way without one). A ``temperror`` is not a guess
   either way: ``auth-unknown``.
3. **At the destination**: the pool that message gets is the one it leaves from, so SPF is
   evaluated again for that pool's source address (of the client's address family; the first
   one: a pool's addresses are published together) and the envelope sender it will carry (its
   SRS rewriting for a relay pool); a pool without source addresses gives DMARC no SPF result
   (the address the destination will see is not known; only signatures count). DKIM: the
   signatures the relay **will** put on (the signer knows which keys sign mail of this From
   domain and tenant: signing happens after routing, on the bytes routing decided on) and the
   client's signatures that verified. DMARC with those: ``fail`` where the From domain asks for
   quarantine or reject is ``dmarc-fail`` (high-risk, no override); a failure that rests on a
   ``temperror`` is ``auth-unknown``.

The prediction of the relay's own signatures is checked after signing: a message that was not
signed after all (a problem the signer reports) is routed again without them
(``Relay.accept``).

A From domain of one of the tenant's own domains that DMARC fails for want of a signing key is
reported (``own-domain-no-key``: the event ``auth-problem``, a log line, a metric), not sent to
fail in silence; it still goes where the rules say (high-risk for ``p=reject``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from deliverypool._core import AuthFacts, Decision, SpfOutcome, organizational_domain
from deliverypool.auth.authenticator import AuthResult, Authenticator, Departure, DkimIdentity
from deliverypool.config import RelayConfig
from deliverypool.ingress.handler import peer_ip
from deliverypool.mail.address import normalize_domain, sender_domain
from deliverypool.observe.events import AUTH_PROBLEMS
from deliverypool.routing.tenants import Tenants

if TYPE_CHECKING:
    from deliverypool.auth.dkim import DkimCheck, DkimSigner
    from deliverypool.ingress.srs import SrsBounces
    from deliverypool.routing.scores import Submission

__all__ = ["AUTH_PROBLEMS", "AuthRouting", "AuthVerdict", "Arrival"]

log = logging.getLogger("deliverypool.auth")


# SPF at acceptance: MAIL FROM, and HELO when the Authentication-Results field is wanted.
Arrival = tuple[SpfOutcome, SpfOutcome | None]


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Authentication of one message as routing used it: ``result`` (SPF at acceptance, SPF
    from the departure address, DMARC as the destination will judge it, the signatures it
    counted), the ``facts`` the decision got, the SRS envelope sender the message leaves with
    (``envelope_from``; None: its own), the relay's own signatures that were predicted, and a
    ``problem`` (``AUTH_PROBLEMS``) to report."""

    result: AuthResult
    facts: AuthFacts
    envelope_from: str | None = None
    own_signatures: tuple[DkimIdentity, ...] = ()
    problem: str | None = None
    departure: Departure | None = None

    def summary(self) -> str:
        """The accepted line's words: `` spf=fail dmarc=fail/reject srs=yes``."""
        facts = self.facts
        words = f" spf={facts.spf or '-'} dmarc={facts.dmarc or '-'}"
        if facts.dmarc == "fail":
            words += f"/{facts.disposition}"
        if self.envelope_from is not None:
            words += " srs=yes"
        return words


@dataclass(frozen=True, slots=True)
class _PoolDeparture:
    v4: str | None
    v6: str | None
    helo: str


@functools.lru_cache(maxsize=4096)
def _client_ip(address: str) -> str | None:
    ip = peer_ip(address)
    return None if ip is None else str(ip)


@functools.lru_cache(maxsize=4096)
def _sender_domain(mail_from: str) -> str | None:
    return sender_domain(mail_from)


@functools.lru_cache(maxsize=4096)
def _org(domain: str) -> str:
    ascii_domain = normalize_domain(domain) or domain.lower().rstrip(".")
    return organizational_domain(ascii_domain)


class AuthRouting:
    """The authentication steps of routing for one configuration (see the module)."""

    def __init__(
        self,
        authenticator: Authenticator,
        config: RelayConfig,
        *,
        tenants: Tenants,
        signer: DkimSigner | None = None,
        srs: SrsBounces | None = None,
    ) -> None:
        self.authenticator = authenticator
        # SPF of the HELO identity at acceptance is only read by the Authentication-Results field.
        self.with_helo = config.auth.add_authentication_results
        self.tenants = tenants
        self.signer = signer
        self.srs = srs
        self._departures: dict[str, _PoolDeparture] = {}
        for name, pool in config.pools.items():
            v4 = next((str(s.address) for s in pool.source_addresses if s.address.version == 4), None)
            v6 = next((str(s.address) for s in pool.source_addresses if s.address.version == 6), None)
            self._departures[name] = _PoolDeparture(v4, v6, pool.ehlo_name)
        self._tenant_orgs = {name: frozenset(_org(d) for d in tenant.domains) for name, tenant in config.tenants.items()}

    # --- the steps -------------------------------------------------------------------------

    @staticmethod
    def client(submission: Submission) -> tuple[str, str, str] | None:
        """What SPF at acceptance is asked about: the client's address (IPv4-mapped as IPv4),
        the envelope sender, the HELO name; None without a client address (local mail)."""
        ip = _client_ip(submission.client_address) if submission.client_address else None
        if ip is None:
            return None
        return ip, submission.mail_from, submission.helo or ""

    def own(self, domain: str | None, tenant: str | None) -> bool:
        """Whether `domain` is (in the organisational domain of) one of `tenant`'s domains."""
        if not domain or tenant is None:
            return False
        orgs = self._tenant_orgs.get(tenant)
        return orgs is not None and _org(domain) in orgs

    def arrival_facts(self, arrival: Arrival | None, mail_from: str, tenant: str | None, srs_bounce: bool) -> AuthFacts:
        """The facts known at acceptance (no DMARC yet): what decides whether the message is
        relayed mail."""
        spf = arrival[0].result if arrival is not None else None
        return AuthFacts(spf=spf, own_sender=self.own(_sender_domain(mail_from) if mail_from else None, tenant), srs_bounce=srs_bounce)

    def departure(self, pool: str, client_ip: str | None, mail_from: str) -> Departure | None:
        """How a message of `pool` leaves: the pool's source address of the client's family
        (else its other one), the envelope sender, the pool's EHLO name; None when the pool has
        no source address."""
        found = self._departures.get(pool)
        if found is None:
            return None
        v6_client = client_ip is not None and ":" in client_ip
        source = (found.v6 or found.v4) if v6_client else (found.v4 or found.v6)
        return None if source is None else Departure(source, mail_from, found.helo)

    def own_signatures(self, from_domain: str | None, tenant: str | None) -> tuple[DkimIdentity, ...]:
        """The signatures the relay will put on a message of this From domain and tenant."""
        if self.signer is None or not self.signer.keys:
            return ()
        keys, _ = self.signer.choose(from_domain, tenant)
        return tuple(DkimIdentity(key.domain, "pass", key.selector) for key in keys)

    async def arrival_result(self, verdict: AuthVerdict, checks: Sequence[DkimCheck]) -> AuthResult:
        """Authentication of the message as it arrived, for its Authentication-Results field
        (RFC 8601: what this relay found, not what it predicts): SPF at acceptance, the
        client's signatures as checked, DMARC with those two."""
        result = verdict.result
        identities = tuple(DkimIdentity(c.domain, c.result, c.selector) for c in checks if c.domain)
        dmarc = None
        from_domain = result.dmarc.from_domain if result.dmarc is not None else None
        if from_domain:
            dmarc = await self.authenticator.dmarc(from_domain, dkim=identities, spf=result.spf)
        return AuthResult(result.spf, result.helo, None, dmarc, identities)

    async def route(
        self,
        first: Decision,
        decide: Callable[[AuthFacts], Decision],
        *,
        submission: Submission,
        tenant: str | None,
        client: tuple[str, str, str] | None,
        arrival: Arrival | None,
        checks: Sequence[DkimCheck] = (),
        srs_bounce: bool = False,
        predict_signatures: bool = True,
    ) -> tuple[Decision, AuthVerdict]:
        """The decision with authentication: `first` is the decision without it, `decide` makes
        one again with facts (no DNS, no score source again); `client` and `arrival`: what
        :meth:`client` gave and SPF at acceptance for it."""
        mail_from = submission.mail_from
        facts = self.arrival_facts(arrival, mail_from, tenant, srs_bounce)
        # Relayed mail (or mail whose SPF could not be told) may take another pool: the one it
        # leaves from, whose address the destination judges.
        placed = decide(facts) if facts.spf not in (None, "pass") and not facts.own_sender and mail_from else first
        envelope_from = self.srs.forward(mail_from) if self.srs is not None and placed.pool_class == "relay" else None
        client_ip = None if client is None else client[0]
        departure = self.departure(placed.pool, client_ip, envelope_from or mail_from)
        from_domain = first.from_domain
        keyed = self.own_signatures(from_domain, tenant)
        own = keyed if predict_signatures else ()
        identities = own + tuple(DkimIdentity(c.domain, c.result, c.selector) for c in checks)
        result = self.authenticator.destination_cached(arrival, from_domain=from_domain, dkim=identities, departure=departure)
        if result is None:
            result = await self.authenticator.destination(arrival, from_domain=from_domain, dkim=identities, departure=departure)
        dmarc = result.dmarc
        unsure = False
        if dmarc is not None and dmarc.result == "fail":
            used = result.departure_spf
            unsure = (used is not None and used.result == "temperror") or any(i.result == "temperror" for i in identities)
        facts = AuthFacts(
            spf=facts.spf,
            own_sender=facts.own_sender,
            dmarc=dmarc.result if dmarc is not None else None,
            disposition=dmarc.disposition if dmarc is not None else "none",  # type: ignore[arg-type]
            unsure=unsure,
            srs_bounce=srs_bounce,
        )
        decision = decide(facts)
        if decision.pool_class != "relay":
            envelope_from = None
        elif envelope_from is None and self.srs is not None:
            envelope_from = self.srs.forward(mail_from)
        problem = None
        if dmarc is not None and dmarc.result == "fail" and not keyed and self.own(from_domain, tenant):
            problem = "own-domain-no-key"
            log.warning(
                "own-domain-no-key: tenant %s sends mail from its own domain %s without a DKIM key, and DMARC fails (p=%s)",
                tenant, from_domain, dmarc.policy, extra={"rate_limit": f"own-domain-no-key {tenant} {from_domain}"},
            )
        return decision, AuthVerdict(result, facts, envelope_from, own, problem, departure)

