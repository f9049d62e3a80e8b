"""An MX lookup from a fixed table, for tests, the demo and embedding without DNS."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from deliverypool.errors import DestinationError
from deliverypool.lookup.mx import MailExchanger, order_exchangers
from deliverypool.mail.address import normalize_domain

__all__ = ["StaticMx"]


class StaticMx:
    """A :class:`~deliverypool.lookup.mx.MxLookup` from a fixed table. Values: a list of
    :class:`~deliverypool.lookup.mx.MailExchanger` (with their addresses), ``"null"`` (a null
    MX), ``"nxdomain"`` or ``"servfail"``; domains missing from the table do not exist."""

    def __init__(self, table: Mapping[str, Sequence[MailExchanger] | str]) -> None:
        self.table = {normalize_domain(k) or k.lower(): v for k, v in table.items()}

    async def mail_exchangers(self, domain: str) -> Sequence[MailExchanger]:
        entry = self.table.get(normalize_domain(domain) or domain.lower(), "nxdomain")
        if entry == "null":
            raise DestinationError("556 5.1.10 Recipient domain has a null MX (RFC 7505)", permanent=True)
        if entry == "nxdomain":
            raise DestinationError(f"550 5.1.2 Domain {domain} does not exist", permanent=True)
        if entry == "servfail":
            raise DestinationError(f"451 4.4.3 DNS lookup for {domain} failed", permanent=False)
        assert not isinstance(entry, str)
        return order_exchangers(entry)
