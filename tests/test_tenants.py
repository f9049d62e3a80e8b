"""Tenant resolution: AUTH identity first, then the longest matching client network, and the
same in the milter as in the relay."""

from __future__ import annotations

from deliverypool import config as cfg
from deliverypool.ingress.milter import MilterService
from deliverypool.routing.scores import Submission
from deliverypool.routing.tenants import Tenants

BASE = """
[pools.normal]
source_addresses = ["192.0.2.10"]
[pools.high-risk]
source_addresses = ["192.0.2.20"]
[dns]
check_sender_domain = false
[tenants.acme]
auth_users = ["acme-app"]
networks = ["10.1.0.0/16"]
domains = ["acme.example"]
threshold = 1.5
[tenants.acme-lab]
networks = ["10.1.7.0/24", "2001:db8::/32"]
"""


def test_auth_then_longest_network_then_none() -> None:
    tenants = Tenants(cfg.loads(BASE).tenants)
    assert tenants.resolve("acme-app", "203.0.113.9") == "acme"
    assert tenants.resolve("acme-app", "10.1.7.3") == "acme"  # AUTH wins over the network
    assert tenants.resolve(None, "10.1.7.3") == "acme-lab"  # the /24 inside acme's /16
    assert tenants.resolve(None, "10.1.8.3") == "acme"
    assert tenants.resolve(None, "::ffff:10.1.8.3") == "acme"  # IPv4-mapped
    assert tenants.resolve(None, "2001:db8::5") == "acme-lab"
    assert tenants.resolve("someone-else", "203.0.113.9") is None and tenants.resolve(None, None) is None
    assert tenants.owner_of("mail.acme.example") == "acme" and tenants.owner_of("acme.example.org") is None
    assert tenants.thresholds() == {"acme": 1.5}


def test_the_milter_resolves_the_tenant_like_the_relay() -> None:
    service = MilterService(cfg.loads(BASE))
    try:
        message = b"From: a@acme.example\r\nSubject: hi\r\nMessage-ID: <m@acme.example>\r\n\r\nHi.\r\n"
        from_network = service.route(message, Submission("a@acme.example", ("x@far.example",), client_address="10.1.2.3"))
        elsewhere = service.route(message, Submission("a@acme.example", ("x@far.example",), client_address="203.0.113.9"))
    finally:
        service.close()
    assert from_network.decision.threshold == 1.5  # acme's threshold, from its network
    assert elsewhere.decision.threshold == 5.0
