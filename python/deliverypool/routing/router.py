"""Routing with the sender-domain check: classify() plus DNS, for asyncio servers.

``Router.route`` reads the Rust DNS cache synchronously first; with a warm cache it returns
without suspending (no I/O, no task switch). A cold domain costs one round of MX/A/AAAA
queries however many messages wait on it (the resolver's single flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, Final

from deliverypool._core import AuthFacts, Decision, Policy, classify, classify_many, scan
from deliverypool.lookup.resolver import Resolver, ResolverConfig
from deliverypool.lookup.sender import NO_RECORDS, UNKNOWN, DomainStatus, SenderDomainCheck, SenderDomains
from deliverypool.mail.address import sender_domain

__all__ = ["Router"]

# Batches at least this long are classified on a worker thread (classify_many releases the GIL),
# so that a large batch does not stall the event loop.
_THREAD_BATCH: Final = 64

_SEVERITY: Final[dict[str, int]] = {"has-records": 0, UNKNOWN: 1, NO_RECORDS: 2}
_SCORE_UNAVAILABLE: Final = "spam-score-unavailable"


class Router:
    """Routes messages with ``classify`` and the sender-domain check.

    ``resolver=None`` routes without DNS (the CLI's ``--no-dns``). ``check_header_from``
    also checks the domain of the header From address (`Decision.from_address`, read by the
    same scan that classified the message); the worse of the two outcomes (``no-records``
    over ``unknown`` over ``has-records``) goes into the decision. A From field without a
    usable address (``MAILER-DAEMON``, ``<>``) counts as ``no-records``; no From field, as
    nothing to check. The message is classified again only when the header From's outcome
    is worse than the envelope's.
    """

    def __init__(
        self, resolver: Resolver | None = None, *, policy: Policy | None = None, check_header_from: bool = False
    ) -> None:
        self.resolver = resolver
        self.senders = SenderDomains(resolver) if resolver is not None else None
        self.policy = policy
        self.check_header_from = check_header_from
        # The policy's rules route recipients one by one: classify needs them; and whether
        # classify needs the recipients or the route header's trust at all.
        self.per_recipient = policy is not None and policy.per_recipient
        self.reads_envelope = self.per_recipient or (policy is not None and policy.route_header is not None)

    @classmethod
    def from_nameservers(
        cls,
        nameservers: Iterable[str],
        *,
        policy: Policy | None = None,
        check_header_from: bool = False,
        **resolver_options: Any,
    ) -> Router:
        """``Router.from_nameservers(["127.0.0.1:5353"])``; no nameservers: the system's."""
        resolver = Resolver(ResolverConfig.from_strings(nameservers, **resolver_options))
        return cls(resolver, policy=policy, check_header_from=check_header_from)

    async def sender_check(self, mail_from: str | None) -> SenderDomainCheck | None:
        """The envelope sender's domain check; None for the null sender or without DNS."""
        senders = self.senders
        if senders is None:
            return None
        domain = sender_domain(mail_from)
        if domain is None:
            return None
        # The cache first, synchronously: with a warm cache nothing below suspends.
        return senders.cached(domain) or await senders.check(domain)

    async def route(
        self,
        message: bytes,
        *,
        mail_from: str | None = None,
        score: float | None = None,
        tenant: str | None = None,
        untrusted_client: bool = False,
        score_unavailable: bool = False,
        recipients: Sequence[str] | None = None,
        untrusted_route_header: bool = False,
    ) -> Decision:
        """The decision on `message`; `recipients` are routed one by one when the policy's
        rules name recipient domains (`Decision.recipient_pools`), and the policy's route
        header is read unless `untrusted_route_header`."""
        check = await self.sender_check(mail_from)
        status: DomainStatus | None = None if check is None else check.status
        # What classify needs besides the message, when the policy's rules read it.
        envelope = ((recipients if self.per_recipient else None), untrusted_route_header) if self.reads_envelope else None
        decision = self._decide(message, mail_from, score, tenant, untrusted_client, status, score_unavailable, envelope)
        if self.check_header_from:
            worse = _worse(status, await self._header_from_status(message, decision))
            if worse != status:
                decision = self._decide(message, mail_from, score, tenant, untrusted_client, worse, score_unavailable, envelope)
        return decision

    def _decide(
        self,
        message: bytes,
        mail_from: str | None,
        score: float | None,
        tenant: str | None,
        untrusted_client: bool,
        status: DomainStatus | None,
        score_unavailable: bool,
        envelope: tuple[Sequence[str] | None, bool] | None,
    ) -> Decision:
        """One classify call. A method rather than a closure in `route`: a closure's cells are
        objects the cycle collector tracks, and a call passes only the arguments that matter
        (each costs the call; benches/route_instructions.py counts it)."""
        if envelope is None:
            return classify(message, mail_from=mail_from, score=score, tenant=tenant, policy=self.policy,
                            untrusted_client=untrusted_client, sender_domain=status, score_unavailable=score_unavailable)
        recipients, untrusted_route_header = envelope
        return classify(message, mail_from=mail_from, score=score, tenant=tenant, policy=self.policy, untrusted_client=untrusted_client,
                        sender_domain=status, score_unavailable=score_unavailable, recipients=recipients, untrusted_route_header=untrusted_route_header)

    def redecide(
        self,
        message: bytes,
        decision: Decision,
        auth: AuthFacts,
        *,
        mail_from: str | None = None,
        tenant: str | None = None,
        untrusted_client: bool = False,
        recipients: Sequence[str] | None = None,
        untrusted_route_header: bool = False,
    ) -> Decision:
        """`decision` made again with what authentication found (`auth`): the same sender-domain
        outcome and score (no DNS, no score source asked again)."""
        envelope = ((recipients if self.per_recipient else None), untrusted_route_header) if self.reads_envelope else (None, False)
        return classify(
            message,
            mail_from=mail_from,
            score=decision.score if decision.score_source == "caller" else None,
            tenant=tenant,
            policy=self.policy,
            untrusted_client=untrusted_client,
            sender_domain=decision.sender_domain,
            score_unavailable=_SCORE_UNAVAILABLE in decision.reasons,
            recipients=envelope[0],
            untrusted_route_header=envelope[1],
            auth=auth,
        )

    async def route_many(
        self,
        messages: Sequence[bytes],
        *,
        mail_from: Sequence[str | None] | None = None,
        score: Sequence[float | None] | None = None,
        tenant: Sequence[str | None] | None = None,
        untrusted_client: bool = False,
        recipients: Sequence[Sequence[str] | None] | None = None,
        untrusted_route_header: bool = False,
    ) -> list[Decision]:
        """Routes a batch: cached domains without I/O, every cold domain queried once,
        concurrently, then one ``classify_many`` call (`recipients`: each message's, routed one
        by one when the policy's rules name recipient domains)."""
        statuses: list[DomainStatus | None] | None = None
        if self.senders is not None and mail_from is not None:
            if len(mail_from) != len(messages):
                raise ValueError(f"mail_from has {len(mail_from)} entries for {len(messages)} messages")
            checks = await self.senders.checks(mail_from)
            statuses = [c.status if c is not None else None for c in checks]
        kwargs: dict[str, Any] = {
            "mail_from": mail_from,
            "score": score,
            "tenant": tenant,
            "policy": self.policy,
            "untrusted_client": untrusted_client,
            "recipients": recipients if self.per_recipient else None,
            "untrusted_route_header": untrusted_route_header,
        }
        decisions = await self._classify_many(messages, statuses, kwargs)
        if not self.check_header_from:
            return decisions
        envelope = statuses or [None] * len(messages)
        header = await asyncio.gather(*(self._header_from_status(m, d) for m, d in zip(messages, decisions)))
        worse = [_worse(a, b) for a, b in zip(envelope, header)]
        again = [i for i, (a, b) in enumerate(zip(envelope, worse)) if a != b]
        if again:  # only the messages whose header From is worse than their envelope sender
            def pick(values: Sequence[Any] | None) -> list[Any] | None:
                return None if values is None else [values[i] for i in again]

            picked = {**kwargs, "mail_from": pick(mail_from), "score": pick(score), "tenant": pick(tenant), "recipients": pick(kwargs["recipients"])}
            redone = await self._classify_many([messages[i] for i in again], [worse[i] for i in again], picked)
            for i, decision in zip(again, redone):
                decisions[i] = decision
        return decisions

    async def _classify_many(
        self, messages: Sequence[bytes], statuses: Sequence[DomainStatus | None] | None, kwargs: dict[str, Any]
    ) -> list[Decision]:
        if len(messages) >= _THREAD_BATCH:
            return await asyncio.to_thread(classify_many, messages, sender_domain=statuses, **kwargs)
        return classify_many(messages, sender_domain=statuses, **kwargs)

    async def _header_from_status(self, message: bytes, decision: Decision) -> DomainStatus | None:
        # Nothing is worse than an envelope sender with no records: no check then.
        if self.senders is None or decision.sender_domain == NO_RECORDS:
            return None
        address = decision.from_address
        if address is None:
            # No usable address: either no From field at all (nothing to check; the rare case
            # that needs a scan to tell) or one without an address (nothing valid to check).
            return None if scan(message).from_ is None else NO_RECORDS
        check = await self.sender_check(address)
        return check.status if check is not None else None


def _worse(a: DomainStatus | None, b: DomainStatus | None) -> DomainStatus | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _SEVERITY[a] >= _SEVERITY[b] else b
