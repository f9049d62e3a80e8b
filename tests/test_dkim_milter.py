"""`deliverypool milter` signing beside a real Postfix (tests/postfix.py: the README's lines):
what the sink behind Postfix receives carries the milter's DKIM signatures (Ed25519 and RSA),
and both independent verifiers (dkimpy, OpenDKIM; keys in NSD's dkim.test zone) accept them,
for messages of 2 KB to 1 MB, 8-bit, with long folded headers. A signature the client put on
is checked and logged, and goes on as it came."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.dkim_verifiers import DOMAIN, SessionKeys, Verifiers
from tests.dnsserver import NsdServer
from tests.postfix import PostfixInstance, postfix_installed
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, Delivery, SinkHandler, free_port
from tests.test_dkim import mail, message_id_of
from tests.test_postfix_milter import Milter, need

pytestmark = pytest.mark.slow


@dataclass
class SigningStack:
    postfix: PostfixInstance
    milter: Milter
    sink: SinkHandler

    def send(self, content: bytes, sender: str = f"alice@{DOMAIN}") -> None:
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=60) as client:
            assert client.sendmail(sender, ["bob@dest.test"], content) == {}

    def arrived(self, content: bytes) -> Delivery:
        import time

        mid = message_id_of(content)
        deadline = time.monotonic() + 60
        while not (found := [d for d in list(self.sink.deliveries) if mid in d.content]):
            assert time.monotonic() < deadline, f"{mid!r} did not arrive\n{self.postfix.log()[-3000:]}\n{self.milter.log()[-2000:]}"
            time.sleep(0.05)
        [delivery] = found
        return delivery


@pytest.fixture(scope="module")
def stack(nsd: NsdServer, dkim_keys: SessionKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SigningStack]:
    need(postfix_installed(), "Postfix")
    work = tmp_path_factory.mktemp("dkim-milter")
    sink = SinkHandler("sink")
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    milter_port = free_port()
    config = work / "relay.toml"
    config.write_text(
        f"""
hostname = "milter.test"
[dns]
nameservers = ["{nsd.address}"]
timeout = "1s"
[milter]
address = "127.0.0.1:{milter_port}"
[pools.normal]
source_addresses = ["{NORMAL_SOURCE}"]
[pools.high-risk]
source_addresses = ["{HIGH_RISK_SOURCE}"]
[[dkim.keys]]
domain = "{DOMAIN}"
selector = "ed"
key_file = "{dkim_keys.files["ed"]}"
[[dkim.keys]]
domain = "{DOMAIN}"
selector = "rsa2048"
key_file = "{dkim_keys.files["rsa2048"]}"
"""
    )
    milter = Milter(config, milter_port, work / "milter.log")
    milter.start()
    postfix = PostfixInstance(
        port=free_port(), relay_port=controller.port, milter_port=milter_port, normal_source=NORMAL_SOURCE, high_risk_source=HIGH_RISK_SOURCE
    )
    try:
        postfix.start()
        yield SigningStack(postfix, milter, sink)
    finally:
        postfix.close()
        milter.stop()
        controller.stop()


@pytest.mark.parametrize("size", [2048, 100 * 1024, 1024 * 1024])
def test_what_postfix_delivers_carries_the_milters_signatures_and_both_verifiers_accept_them(size: int, stack: SigningStack, verifiers: Verifiers) -> None:
    content = mail(size, eight_bit=True, folded=True)
    stack.send(content)
    delivery = stack.arrived(content)
    assert delivery.peer == NORMAL_SOURCE
    checks = verifiers.both(delivery.content)
    assert [(c.selector, c.dkimpy, c.opendkim) for c in checks] == [("ed", True, "pass"), ("rsa2048", True, "pass")]
    assert f"dkim=signed:{DOMAIN}/ed,{DOMAIN}/rsa2048" in stack.milter.log()
    # Altered after the milter signed it: both refuse it.
    body = delivery.content.index(b"\r\n\r\n") + 10
    altered = delivery.content[:body] + b"#" + delivery.content[body + 1 :]
    assert [(c.dkimpy, c.opendkim) for c in verifiers.both(altered)] == [(False, "fail")] * 2


def test_a_client_signature_is_checked_and_goes_on_as_it_came(stack: SigningStack, dkim_keys: SessionKeys, verifiers: Verifiers) -> None:
    import dkim

    private = serialization.load_pem_private_key(dkim_keys.files["ed-next"].read_bytes(), password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
    content = mail(4096, subject="client signed")
    content = dkim.sign(content, b"ed-next", DOMAIN.encode(), seed, signature_algorithm=b"ed25519-sha256") + content
    stack.send(content)
    delivery = stack.arrived(content)
    assert [(c.selector, c.dkimpy, c.opendkim) for c in verifiers.both(delivery.content)] == [
        ("ed", True, "pass"), ("rsa2048", True, "pass"), ("ed-next", True, "pass")
    ]
    assert f"dkim-checks=pass:{DOMAIN}" in stack.milter.log()


def test_mail_without_a_key_goes_on_unsigned_with_its_reason(stack: SigningStack) -> None:
    content = mail(2048, sender="carol@mx-only.dp.test", subject="no key")
    stack.send(content, sender="carol@mx-only.dp.test")
    delivery = stack.arrived(content)
    assert b"DKIM-Signature" not in delivery.content
    assert "dkim=unsigned:no-key" in stack.milter.log()
