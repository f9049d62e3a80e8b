"""Routing with the sender-domain check: classify() plus DNS, for asyncio servers.

``Router.route`` reads the Rust DNS cache synchronously first; with a warm cache it returns
without suspending (no I/O, no task switch). A cold domain costs one round of MX/A/AAAA
queries however many messages wait on it (the resolver's single flight).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from email.utils import getaddresses
from typing import Any, Final

from deliverypool._core import Decision, Policy, classify, classify_many, scan
from deliverypool.lookup.resolver import Resolver, ResolverConfig
from deliverypool.lookup.sender import NO_RECORDS, UNKNOWN, DomainStatus, SenderDomainCheck, SenderDomains
from deliverypool.mail.address import sender_domain

__all__ = ["Router"]

# Batches at least this long are classified on a worker thread (classify_many releases the GIL),
# so that a large batch does not stall the event loop.
_THREAD_BATCH: Final = 64

_SEVERITY: Final[dict[str, int]] = {"has-records": 0, UNKNOWN: 1, NO_RECORDS: 2}


class Router:
    """Routes messages with ``classify`` and the sender-domain check.

    ``resolver=None`` routes without DNS (the CLI's ``--no-dns``). ``check_header_from``
    also checks the domain of the header From address; the worse of the two outcomes
    (``no-records`` over ``unknown`` over ``has-records``) goes into the decision.
    """

    def __init__(
        self, resolver: Resolver | None = None, *, policy: Policy | None = None, check_header_from: bool = False
    ) -> None:
        self.resolver = resolver
        self.senders = SenderDomains(resolver) if resolver is not None else None
        self.policy = policy
        self.check_header_from = check_header_from

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
    ) -> Decision:
        check = await self.sender_check(mail_from)
        status: DomainStatus | None = None if check is None else check.status
        if self.check_header_from:
            status = _worse(status, await self._header_from_status(message))
        return classify(
            message,
            mail_from=mail_from,
            score=score,
            tenant=tenant,
            policy=self.policy,
            untrusted_client=untrusted_client,
            sender_domain=status,
            score_unavailable=score_unavailable,
        )

    async def route_many(
        self,
        messages: Sequence[bytes],
        *,
        mail_from: Sequence[str | None] | None = None,
        score: Sequence[float | None] | None = None,
        tenant: Sequence[str | None] | None = None,
        untrusted_client: bool = False,
    ) -> list[Decision]:
        """Routes a batch: cached domains without I/O, every cold domain queried once,
        concurrently, then one ``classify_many`` call."""
        statuses: list[DomainStatus | None] | None = None
        if self.senders is not None and mail_from is not None:
            if len(mail_from) != len(messages):
                raise ValueError(f"mail_from has {len(mail_from)} entries for {len(messages)} messages")
            checks = await self.senders.checks(mail_from)
            statuses = [c.status if c is not None else None for c in checks]
        if self.check_header_from:
            header = await asyncio.gather(*(self._header_from_status(m) for m in messages))
            statuses = [_worse(a, b) for a, b in zip(statuses or [None] * len(messages), header)]
        kwargs: dict[str, Any] = {
            "mail_from": mail_from,
            "score": score,
            "tenant": tenant,
            "policy": self.policy,
            "untrusted_client": untrusted_client,
            "sender_domain": statuses,
        }
        if len(messages) >= _THREAD_BATCH:
            return await asyncio.to_thread(classify_many, messages, **kwargs)
        return classify_many(messages, **kwargs)

    async def _header_from_status(self, message: bytes) -> DomainStatus | None:
        if self.senders is None:
            return None
        from_ = scan(message).from_
        if from_ is None:
            return None
        addresses = [addr for _, addr in getaddresses([from_]) if addr]
        if not addresses:
            return NO_RECORDS  # a From field without a usable address: nothing to check, nothing valid
        check = await self.sender_check(addresses[0])
        return check.status if check is not None else None


def _worse(a: DomainStatus | None, b: DomainStatus | None) -> DomainStatus | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if _SEVERITY[a] >= _SEVERITY[b] else b
