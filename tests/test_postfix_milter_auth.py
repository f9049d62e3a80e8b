"""`deliverypool milter` with ``[auth] enabled`` behind a real Postfix (tests/postfix.py, with the
milter guide's lines and those of its "Routing by authentication" section): the spoofed bank
leaves through the high-risk transport (``dmarc-fail``); forwarded mail through the relay
pool's transport with the SRS sender the milter set (``chgfrom``), which pyspf passes for the
relay's domain from the relay pool's address; a bounce to it goes back to the original sender
(the milter replaced the recipient) through the high-risk transport; a forged one is refused
at RCPT. NSD serves the zones of tests/test_auth_relay.py."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller

from tests.dnsserver import NsdServer
from tests.messages import GLOBAL_DSN
from tests.postfix import PostfixInstance, auth_blocks, postfix_installed
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, Delivery, SinkHandler, free_port
from tests.test_auth_relay import RELAY, World, pyspf, world  # noqa: F401  (world: the module's NSD and keys)
from tests.test_postfix_milter import Milter, message_id, need

pytestmark = pytest.mark.slow

# The guide's example values and the test's.
GUIDE = {"203.0.113.5": RELAY, "srs.example.net": "relay.test"}


@dataclass
class Stack:
    postfix: PostfixInstance
    milter: Milter
    sink: SinkHandler

    def arrived(self, mid: str, seconds: float = 60.0) -> Delivery:
        deadline = time.monotonic() + seconds
        while True:
            found = [d for d in list(self.sink.deliveries) if message_id(d.content) == mid]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"{mid} did not arrive\n{self.postfix.log()[-3000:]}\n{self.milter.log()[-3000:]}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def stack(world: tuple[World, NsdServer]) -> Iterator[Stack]:  # noqa: F811
    need(postfix_installed(), "Postfix")
    setting, server = world
    blocks = auth_blocks()
    sink = SinkHandler("sink")
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    milter_port = free_port()
    config = setting.directory / "milter.toml"
    toml = blocks["relay.toml"].replace("/etc/deliverypool/srs.keys", str(setting.srs_keys))
    for old, new in GUIDE.items():
        toml = toml.replace(old, new)
    config.write_text(
        f"""
hostname = "relay.test"
[dns]
nameservers = ["{server.address}"]
timeout = "1s"
check_sender_domain = false
[milter]
address = "127.0.0.1:{milter_port}"
[pools.normal]
source_addresses = ["{NORMAL_SOURCE}"]
[pools.high-risk]
source_addresses = ["{HIGH_RISK_SOURCE}"]
"""
        + toml
    )
    milter = Milter(config, milter_port, setting.directory / "milter.log")
    milter.start()
    postfix = PostfixInstance(
        port=free_port(), relay_port=controller.port, milter_port=milter_port, normal_source=NORMAL_SOURCE, high_risk_source=HIGH_RISK_SOURCE,
        extra_main=blocks["main.cf"], extra_master=blocks["master.cf"], substitute=GUIDE,
    )
    try:
        postfix.start()
        yield Stack(postfix, milter, sink)
    finally:
        postfix.close()
        milter.stop()
        controller.stop()


def mail(sender: str, subject: str) -> str:
    mid = f"<{subject.replace(' ', '-')}.{time.monotonic_ns()}@milter.test>"
    return f"From: {sender}\r\nTo: bob@dest.test\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n\r\nHello.\r\n"


def test_dmarc_fail_srs_and_its_bounces_through_postfix(stack: Stack, world: tuple[World, NsdServer]) -> None:  # noqa: F811
    _, server = world
    with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
        bank = mail("CEO <ceo@bank.example>", "spoofed bank")
        assert client.sendmail("news@globex.example", ["bob@dest.test"], bank.encode()) == {}
        forwarded = mail("alice@forwarded.example", "forwarded")
        assert client.sendmail("alice@forwarded.example", ["carol@dest.test"], forwarded.encode()) == {}
    spoofed = stack.arrived(message_id(bank.encode()))
    assert spoofed.peer == HIGH_RISK_SOURCE
    assert "pool=high-risk transport=dp-high-risk reasons=dmarc-fail,relayed-spf-fail" in stack.milter.log()
    # Its Authentication-Results field, the milter's, at the top.
    assert b"Authentication-Results: relay.test;" in spoofed.content and b"dmarc=fail" in spoofed.content
    # Forwarded: the relay pool's transport, the SRS sender the milter set.
    relayed = stack.arrived(message_id(forwarded.encode()))
    srs = relayed.mail_from
    assert relayed.peer == RELAY and srs.startswith("SRS0=") and srs.endswith("=forwarded.example=alice@relay.test"), (relayed.peer, srs)
    assert pyspf(server, RELAY, srs, "fwd.example.net") == "pass"
    # A bounce to it goes back to the original sender, high-risk; a forged one is refused.
    bounce = f"Message-ID: <srs-bounce.{time.monotonic_ns()}@milter.test>\r\n".encode() + GLOBAL_DSN
    with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
        assert client.sendmail("", [srs], bounce) == {}
        client.mail("")
        code, text = client.rcpt("SRS0=AAAA=" + srs.split("=", 2)[2])
    assert code == 550 and b"invalid SRS address (bad-hash)" in text
    back = stack.arrived(message_id(bounce))
    assert (back.rcpt_tos, back.peer, back.mail_from) == (["alice@forwarded.example"], HIGH_RISK_SOURCE, "")
    assert "reasons=dsn,srs-bounce" in stack.milter.log()
