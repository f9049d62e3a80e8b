"""Routing by authentication end to end (docs/concepts/authentication.md): a relay with three
pools (normal, high-risk, relay), each sending from its own loopback address to a real SMTP
sink that records the source of every connection; SPF, DMARC and DKIM keys in real NSD zones.

Each rule as a client sees it: a tenant's own mail signed by the relay, and one the tenant
signed itself, to a ``p=reject`` domain leave normal; a spoofed ``From: ...@bank.example``
(``p=reject``, nothing aligned passes) leaves high-risk with ``dmarc-fail``; the tenant's own
domain without a key is reported; forwarded mail whose SPF fails for the client leaves from
the relay pool with an SRS0 envelope sender that pyspf (an independent SPF implementation,
asking NSD itself) passes for the relay's domain from the relay pool's address; a bounce to
that address, from a client that may not relay, goes back to the original sender from the
high-risk pool; a forged one is refused at RCPT; a SERVFAIL zone gives ``temperror`` and
``auth_unknown_pool``."""

from __future__ import annotations

import asyncio
import base64
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deliverypool import _core
from deliverypool import config as cfg
from deliverypool.app import Relay
from deliverypool.observe.events import AuthProblem, Event, MessageAccepted, MessageAuth, SrsChecked
from deliverypool.routing.scores import Submission
from tests.dnsserver import DP_TEST, NsdServer, nsd_binary
from tests.messages import GLOBAL_DSN
from tests.smtp_sinks import Delivery, free_port, sink
from tests.test_pools_relay import subject_of

NORMAL, HIGH_RISK, RELAY = "127.0.0.2", "127.0.0.3", "127.0.0.4"
# Clients: acme's and globex's servers (globex also forwards its users' mail), and a remote MTA
# that may not relay (it bounces mail the relay sent).
ACME, GLOBEX, REMOTE = "127.0.0.20", "127.0.0.21", "127.0.0.30"


def _soa(origin: str) -> str:
    return f"$ORIGIN {origin}.\n$TTL 300\n@ 3600 IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 900 604800 60\n@ NS ns.{origin}.\nns A 127.0.0.1\n"


def ed25519_key(directory: Path, name: str) -> tuple[Path, bytes, str]:
    """A new Ed25519 key: its PEM file, its PKCS#8 DER and its DKIM record."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    path = directory / f"{name}.pem"
    path.write_bytes(pem)
    return path, der, f'"v=DKIM1; k=ed25519; p={base64.b64encode(public).decode()}"'


class World:
    """The zones, keys and configuration the tests share."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.acme_key, _, acme_record = ed25519_key(directory, "acme")
        _, self.globex_der, globex_record = ed25519_key(directory, "globex")
        self.srs_keys = directory / "srs.keys"
        self.srs_keys.write_text("# signing key first\nfirst-secret\nolder-secret\n")
        self.zones: dict[str, str | None] = {
            "dp.test": DP_TEST,
            # The relay's own domain, where SRS addresses are written: its SPF names the relay pool.
            "relay.test": _soa("relay.test") + f'@ TXT "v=spf1 ip4:{RELAY} -all"\n@ MX 10 mx.relay.test.\nmx A 127.0.0.1\n',
            # acme: p=reject, an SPF record that authorises nobody (DMARC must pass by DKIM); the
            # relay signs its mail with the key published here.
            "acme.example": _soa("acme.example") + f'@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject"\nrelay._domainkey TXT {acme_record}\n',
            # globex signs its own mail (selector gx); the relay has no key for it.
            "globex.example": _soa("globex.example") + f'@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject"\ngx._domainkey TXT {globex_record}\n',
            "bank.example": _soa("bank.example") + '@ TXT "v=spf1 ip4:192.0.2.99 -all"\n_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@bank.example"\n',
            # A domain whose users' mail globex forwards: SPF fails from globex's server; DMARC p=none.
            "forwarded.example": _soa("forwarded.example") + '@ TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc TXT "v=DMARC1; p=none"\n',
            "broken.test": None,  # SERVFAIL
        }

    def toml(self, nameserver: str, sink_port: int, *, extra: str = "") -> str:
        """The relay's configuration; `extra`: more keys of [auth]."""
        delivery = f"""delivery = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
max_messages_per_connection = 1
idle_timeout = "100ms"
retry = {{ initial = "100ms", maximum = "200ms", jitter = 0.0 }}
"""
        pools = {"normal": NORMAL, "high-risk": HIGH_RISK, "relay": RELAY}
        text = f"""
hostname = "relay.test"
[listener]
address = "127.0.0.1:{free_port()}"
allowed_networks = ["{ACME}/32", "{GLOBEX}/32"]
[spool]
directory = "{self.directory / 'spool'}"
[policy]
relay_pool = "relay"
[dns]
nameservers = ["{nameserver}"]
timeout = "1s"
check_sender_domain = false
[tenants.acme]
networks = ["{ACME}/32"]
domains = ["acme.example"]
[tenants.globex]
networks = ["{GLOBEX}/32"]
domains = ["globex.example"]
[[dkim.keys]]
domain = "acme.example"
selector = "relay"
key_file = "{self.acme_key}"
[auth]
enabled = true
add_authentication_results = true
{extra}[auth.srs]
domain = "relay.test"
key_file = "{self.srs_keys}"
"""
        for name, address in pools.items():
            text += f'[pools.{name}]\nsource_addresses = ["{address}"]\nehlo_name = "{name}.relay.test"\n{delivery}'
        return text

    def globex_signed(self, content: bytes) -> bytes:
        """`content` with globex's own signature, as its server would send it."""
        key = _core.DkimKey(self.globex_der, algorithm="ed25519-sha256", domain="globex.example", selector="gx", headers=["From", "Subject", "To"])
        signing = _core.dkim_sign(content, [key], int(time.time()))
        assert signing.problem is None
        return signing.header + content


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, NsdServer]]:
    if nsd_binary() is None:
        pytest.skip("nsd is not installed: run scripts/install-test-servers.sh")
    world = World(tmp_path_factory.mktemp("auth"))
    server = NsdServer(world.zones)
    server.start()
    yield world, server
    server.close()


def mail(sender: str, subject: str, to: str = "bob@dest.test") -> bytes:
    return (
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: <{time.monotonic_ns()}@x.test>\r\n"
        "Date: Mon, 6 Jan 2025 10:00:00 +0000\r\n\r\nHello.\r\n"
    ).encode()


def pyspf(server: NsdServer, ip: str, sender: str, helo: str) -> str:
    """SPF as an independent implementation reaches it: pyspf with dnspython's resolver
    pointed at NSD."""
    spf = pytest.importorskip("spf")
    host, port = server.address.rsplit(":", 1)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = [host], int(port)
    saved = dns.resolver.default_resolver
    dns.resolver.default_resolver = resolver
    try:
        with warnings.catch_warnings():
            # pyspf calls dns.resolver.query, which dnspython 2 deprecates.
            warnings.simplefilter("ignore", DeprecationWarning)
            result, _ = spf.check2(i=ip, s=sender, h=helo)
    finally:
        dns.resolver.default_resolver = saved
    return str(result)


def test_the_three_pools_srs_and_its_bounces_end_to_end(world: tuple[World, NsdServer]) -> None:
    setting, server = world

    async def main() -> dict[str, Any]:
        sink_port = free_port()
        conf = cfg.loads(setting.toml(server.address, sink_port))
        events: list[Event] = []
        outcome: dict[str, Any] = {}
        async with sink("127.0.0.1", sink_port, reject_rcpt={"nobody@dest.test": "550 5.1.1 No such user"}) as received:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            relay.observer.bus.subscribe("test", events.append)
            port = conf.listener.port
            accepted: dict[str, Any] = {}
            relay.on_accept = lambda a, content: accepted.__setitem__(subject_of(content), a)
            count = 0

            async def send(content: bytes, source: str, recipients: list[str], sender: str) -> None:
                nonlocal count
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0), start_tls=False)
                async with client:
                    await client.sendmail(sender, recipients, content)
                count += len(recipients)
                await received.wait_for(count)

            try:
                await send(mail("Alice <alice@acme.example>", "acme own"), ACME, ["bob@dest.test"], "alice@acme.example")
                # Two From fields: the signer refuses it (multiple-from), so the signature DMARC
                # counted on is not there: routed again without it.
                twice = mail("Alice <alice@acme.example>", "acme two froms").replace(b"To:", b"From: eve@acme.example\r\nTo:", 1)
                await send(twice, ACME, ["bob@dest.test"], "alice@acme.example")
                await send(setting.globex_signed(mail("news@globex.example", "globex signed")), GLOBEX, ["bob@dest.test"], "news@globex.example")
                await send(mail("news@globex.example", "globex unsigned"), GLOBEX, ["bob@dest.test"], "news@globex.example")
                await send(mail("CEO <ceo@bank.example>", "spoofed bank"), GLOBEX, ["bob@dest.test"], "news@globex.example")
                await send(mail("alice@forwarded.example", "forwarded"), GLOBEX, ["carol@dest.test"], "alice@forwarded.example")
                await send(mail("x@sub.broken.test", "broken dns"), GLOBEX, ["bob@dest.test"], "x@sub.broken.test")
                # Forwarded mail the destination refuses: the relay's own DSN goes to the original
                # sender, not to the SRS address (and leaves high-risk).
                await send(mail("alice@forwarded.example", "forwarded refused"), GLOBEX, ["nobody@dest.test"], "alice@forwarded.example")
                [forwarded] = [d for d in received.deliveries if subject_of(d) == "forwarded"]
                outcome["srs"] = srs = forwarded.mail_from
                # The destination bounces it: a remote MTA, which may not relay, writes to the
                # SRS address; the bounce goes back to the original sender.
                bounce = GLOBAL_DSN.replace(b"Subject: Undelivered", b"Subject: srs bounce Undelivered")
                await send(bounce, REMOTE, [srs], "")
                # A forged SRS address and one at the SRS domain that is no SRS address: refused
                # at RCPT, from anyone; relaying is still refused to the remote client.
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(REMOTE, 0), start_tls=False)
                async with client:
                    await client.mail("")
                    forged = "SRS0=AAAA=" + srs.split("=", 2)[2]
                    for key, address in (("forged", forged), ("plain", "postmaster@relay.test"), ("relay", "bob@dest.test")):
                        reply = await client.execute_command(b"RCPT", f"TO:<{address}>".encode())
                        outcome[key] = (reply.code, reply.message)
                await relay.engine.wait_idle()  # type: ignore[union-attr]
                await asyncio.sleep(0.2)  # the event subscribers' latency
            finally:
                await relay.stop()
        outcome["deliveries"] = list(received.deliveries)
        outcome["events"] = events
        outcome["accepted"] = accepted
        return outcome

    outcome = asyncio.run(main())
    by_subject: dict[str, Delivery] = {subject_of(d): d for d in outcome["deliveries"]}
    accepted = outcome["accepted"]

    # The tenant's own mail to its p=reject domain, signed by the relay: normal, and signed.
    own = by_subject["acme own"]
    assert own.peer == NORMAL and accepted["acme own"].reasons == ()
    assert b"DKIM-Signature: v=1; a=ed25519-sha256;" in own.content and b"d=acme.example" in own.content
    # Its Authentication-Results (what the relay found on arrival) comes first, above the signature.
    head = own.content.split(b"\r\n\r\n", 1)[0]
    assert head.index(b"DKIM-Signature:") < head.index(b"Authentication-Results: relay.test;") < head.index(b"Received:")
    assert b"spf=fail" in head and b"smtp.mailfrom=alice@acme.example" in head
    assert by_subject["acme two froms"].peer == HIGH_RISK and accepted["acme two froms"].reasons == ("dmarc-fail",)
    assert b"DKIM-Signature" not in by_subject["acme two froms"].content
    # Signed by the tenant itself, checked on arrival: normal.
    assert by_subject["globex signed"].peer == NORMAL and accepted["globex signed"].reasons == ()
    assert b"dkim=pass header.d=globex.example header.s=gx" in by_subject["globex signed"].content
    # The same domain without a signature would fail DMARC: high-risk, and reported.
    assert by_subject["globex unsigned"].peer == HIGH_RISK and accepted["globex unsigned"].reasons == ("dmarc-fail",)
    problems = [e for e in outcome["events"] if isinstance(e, AuthProblem)]
    assert [(p.problem, p.tenant, p.domain) for p in problems] == [("own-domain-no-key", "globex", "globex.example")]
    # A spoofed bank: p=reject, nothing aligned passes: high-risk.
    assert by_subject["spoofed bank"].peer == HIGH_RISK and accepted["spoofed bank"].reasons == ("dmarc-fail",)
    # Forwarded mail: the relay pool, with an SRS0 sender at the relay's domain that an
    # independent SPF implementation passes from the relay pool's address.
    forwarded = by_subject["forwarded"]
    assert forwarded.peer == RELAY and accepted["forwarded"].reasons == ("relayed-spf-fail",)
    srs = outcome["srs"]
    assert srs.startswith("SRS0=") and srs.endswith("=forwarded.example=alice@relay.test"), srs
    assert pyspf(server, RELAY, srs, "relay.relay.test") == "pass"
    assert pyspf(server, NORMAL, srs, "normal.relay.test") == "fail"
    assert pyspf(server, RELAY, "alice@forwarded.example", "relay.relay.test") == "fail"  # what SRS saves it from
    # The bounce to it: back to the original sender, from the high-risk pool, its sender null.
    bounce = by_subject["srs bounce Undelivered Mail Returned to Sender"]
    assert (bounce.rcpt_tos, bounce.peer, bounce.mail_from) == (["alice@forwarded.example"], HIGH_RISK, "")
    assert "srs-bounce" in accepted["srs bounce Undelivered Mail Returned to Sender"].reasons
    # The destination refused a forwarded message: the DSN goes to the original sender.
    [dsn] = [d for d in outcome["deliveries"] if d.mail_from == "" and d.rcpt_tos == ["alice@forwarded.example"] and b"forwarded refused" in d.content]
    assert dsn.peer == HIGH_RISK
    # Forged: refused at RCPT with the reason; relaying for the remote client still refused.
    assert outcome["forged"][0] == 550 and "invalid SRS address (bad-hash)" in outcome["forged"][1]
    assert outcome["plain"][0] == 550 and "(not-srs)" in outcome["plain"][1]
    assert outcome["relay"][0] == 554
    checked = [e.outcome for e in outcome["events"] if isinstance(e, SrsChecked)]
    assert checked == ["reversed", "bad-hash", "not-srs"]
    # A SERVFAIL zone: temperror, never a pass: auth-unknown, high-risk (the default).
    assert by_subject["broken dns"].peer == HIGH_RISK and accepted["broken dns"].reasons == ("auth-unknown",)
    # The event of each message carries SPF and DMARC.
    auth = {e.queue_id: e.auth for e in outcome["events"] if isinstance(e, MessageAccepted)}
    assert auth[accepted["spoofed bank"].queue_id] == MessageAuth("fail", "fail", "reject", False)
    assert auth[accepted["acme own"].queue_id] == MessageAuth("fail", "pass", "none", False)
    # forwarded.example asks for nothing (p=none): DMARC fails there without consequence.
    assert auth[accepted["forwarded"].queue_id] == MessageAuth("fail", "fail", "none", True)
    assert auth[accepted["broken dns"].queue_id] == MessageAuth("temperror", "temperror", "none", False)


def test_auth_unknown_pool_and_the_milters_view(world: tuple[World, NsdServer]) -> None:
    """With ``auth_unknown_pool = "normal"`` a DNS failure keeps the mail normal (the operator's
    choice), while a DMARC failure stays high-risk; the milter's service routes as the relay."""
    pytest.importorskip("Milter", reason="pymilter is not installed (the milter extra)")
    from deliverypool.ingress.milter import MilterService
    from tests.test_milter_service import route_from_a_thread

    setting, server = world
    conf = cfg.loads(setting.toml(server.address, free_port(), extra='auth_unknown_pool = "normal"\n'), command="milter")
    running = MilterService(conf)
    try:
        routed = {
            name: route_from_a_thread(running, content, Submission(sender, ("bob@dest.test",), client_address=GLOBEX, helo="mx.globex.example"))
            for name, content, sender in [
                ("broken", mail("x@sub.broken.test", "broken"), "x@sub.broken.test"),
                ("bank", mail("ceo@bank.example", "bank"), "news@globex.example"),
                ("forwarded", mail("alice@forwarded.example", "fwd"), "alice@forwarded.example"),
            ]
        }
    finally:
        running.close()
    assert (routed["broken"].pool, routed["broken"].reasons) == ("normal", ("auth-unknown",))
    assert (routed["bank"].pool, routed["bank"].reasons) == ("high-risk", ("dmarc-fail",))
    fwd = routed["forwarded"]
    assert (fwd.pool, fwd.reasons) == ("relay", ("relayed-spf-fail",))
    assert fwd.auth is not None and fwd.auth.envelope_from is not None and fwd.auth.envelope_from.startswith("SRS0=")
    # It leaves from the relay pool's address with its SRS sender: SPF for relay.test, which
    # cannot align with forwarded.example, so DMARC does not ask for it.
    assert fwd.auth.departure is not None and (fwd.auth.departure.source_ip, fwd.auth.departure.mail_from) == (RELAY, fwd.auth.envelope_from)
    assert fwd.auth.result.departure_spf is None
