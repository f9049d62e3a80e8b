"""Which tenant a message belongs to: the client's AUTH identity first, else the network its
address lies in (the longest prefix among the tenants' ``networks``), else none.

The tenant of a message decides its spam threshold (``[tenants.NAME] threshold``), is stored
with it in the spool, and labels its events, metrics and surge windows."""

from __future__ import annotations

import functools
from collections.abc import Mapping

from deliverypool.config import TenantConfig
from deliverypool.ingress.handler import peer_ip

__all__ = ["Tenants"]


class Tenants:
    """The tenants of a configuration, indexed for look-ups on the accept path."""

    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self.config = dict(tenants)
        self.names: tuple[str, ...] = tuple(sorted(tenants))
        self._users = {user: name for name, tenant in tenants.items() for user in tenant.auth_users}
        networks = [(network, name) for name, tenant in tenants.items() for network in tenant.networks]
        # Longest prefix first: the most specific network wins.
        self._networks = sorted(networks, key=lambda item: -item[0].prefixlen)
        self._domains = {domain: name for name, tenant in tenants.items() for domain in tenant.domains}
        self.of_peer = functools.lru_cache(maxsize=4096)(self._of_peer)

    def __bool__(self) -> bool:
        return bool(self.config)

    def resolve(self, login: str | None, peer: str | None) -> str | None:
        """The tenant of a client logged in as `login` (or not) connecting from `peer`."""
        if login is not None:
            tenant = self._users.get(login)
            if tenant is not None:
                return tenant
        return self.of_peer(peer) if peer and self._networks else None

    def _of_peer(self, peer: str) -> str | None:
        ip = peer_ip(peer)
        if ip is None:
            return None
        for network, name in self._networks:
            if ip.version == network.version and ip in network:
                return name
        return None

    def domains(self, tenant: str | None) -> frozenset[str]:
        """The tenant's own domains (lower-case, IDNA ASCII)."""
        if tenant is None or tenant not in self.config:
            return frozenset()
        return frozenset(self.config[tenant].domains)

    def owner_of(self, domain: str) -> str | None:
        """The tenant whose own domain `domain` is (or a parent of it is)."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            tenant = self._domains.get(".".join(labels[i:]))
            if tenant is not None:
                return tenant
        return None

    def thresholds(self) -> dict[str, float]:
        return {name: t.threshold for name, t in self.config.items() if t.threshold is not None}
