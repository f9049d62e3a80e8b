"""Joins the DNS resolver (`deliverypool.dns`, issue 3) to delivery: MX lookups with host
addresses. (The sender-domain check for routing is `deliverypool.router.Router`.)

The resolver answers "which hosts, in which order" (RFC 5321 §5.1: preference order, implicit
MX, null MX); delivery also needs each host's A and AAAA records, asked through the same
nameservers and kept in the same Rust cache. DNS outcomes become SMTP-style replies so logs
and DSNs read like any remote answer: a null MX is ``556 5.1.10``, a domain that does not
exist ``550 5.1.2``, a DNS failure ``451 4.4.3`` (retried; never a fallback to the domain's
own address records).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


from deliverypool import delivery
from deliverypool.config import DnsConfig
from deliverypool.dns import Nameserver, PermanentDnsError, Resolver, ResolverConfig, TemporaryDnsError

_PERMANENT = {
    "null-mx": "556 5.1.10 Recipient domain {domain} has a null MX: it accepts no mail (RFC 7505)",
    "nxdomain": "550 5.1.2 Recipient domain {domain} does not exist",
    "no-records": "550 5.1.2 Recipient domain {domain} has no MX, A or AAAA record",
    "invalid-domain": "550 5.1.2 Recipient domain {domain} is not a valid domain name",
}


def make_resolver(config: DnsConfig) -> Resolver:
    return Resolver(
        ResolverConfig(nameservers=tuple(Nameserver(host, port) for host, port in config.nameservers), timeout=config.timeout)
    )


class ResolverMx:
    """`delivery.MxLookup` backed by a `deliverypool.dns.Resolver`."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def mail_exchangers(self, domain: str) -> Sequence[delivery.MailExchanger]:
        try:
            hosts = await self.resolver.mail_exchangers(domain)
        except PermanentDnsError as exc:
            template = _PERMANENT.get(exc.reason, "550 5.1.2 Recipient domain {domain}: " + exc.reason)
            raise delivery.DestinationError(template.format(domain=domain), permanent=True) from None
        except TemporaryDnsError as exc:
            raise delivery.DestinationError(f"451 4.4.3 DNS lookup for {domain} failed: {exc.reason}", permanent=False) from None
        addresses = await asyncio.gather(*(self.resolver.addresses(mx.host) for mx in hosts))
        result = [delivery.MailExchanger(mx.preference, mx.host, found) for mx, found in zip(hosts, addresses) if found]
        if not result:
            raise delivery.DestinationError(
                f"451 4.4.3 No address found for any mail exchanger of {domain}", permanent=False
            )
        return result
