"""`deliverypool milter` in front of a real Postfix (tests/postfix.py: a private instance
configured with the milter guide's lines) with a real rspamd scoring and NSD answering the
sender-domain check. The sink Postfix relays to records which source address each message came
from: 127.0.0.2 (the normal pool's transport) or 127.0.0.3 (the high-risk pool's).

Postfix, rspamd, NSD and the milter start once for the module.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from aiosmtpd.controller import Controller

from tests.conftest import CORPUS
from tests.dnsserver import NsdServer
from tests.postfix import PostfixInstance, postfix_installed, readme_blocks, wait_listening
from tests.rspamd import GTUBE, RspamdServer, rspamd_installed
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, Delivery, SinkHandler, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
_T = TypeVar("_T")
BOUNCING = "nobody@dest.test"  # the sink refuses this recipient: Postfix bounces to the sender


def message(subject: str, *, sender: str = "alice@mx-only.dp.test", body: str = "Hi.", extra: str = "") -> str:
    mid = f"<{subject.replace(' ', '-')}.{time.monotonic_ns()}@milter.test>"
    return f"From: {sender}\r\nTo: bob@dest.test\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}\r\n{body}\r\n"


def message_id(content: bytes) -> str:
    for line in content.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode()
    return ""


class Milter:
    """`deliverypool milter --config PATH` as a child process."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log_path = config, port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deliverypool.cli", "milter", "--config", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while "milter listening on" not in self.log():
            assert self.process.poll() is None, f"the milter exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"the milter did not start:\n{self.log()}"
            time.sleep(0.05)
        # libmilter opens its socket just after that line.
        wait_listening(self.port, lambda: f"the milter does not listen:\n{self.log()}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Stack:
    postfix: PostfixInstance
    milter: Milter
    sink: SinkHandler
    rspamd: RspamdServer

    def send(self, content: str, *, sender: str = "alice@mx-only.dp.test", recipients: tuple[str, ...] = ("bob@dest.test",)) -> None:
        with smtplib.SMTP("127.0.0.1", self.postfix.port, timeout=60) as client:
            refused = client.sendmail(sender, list(recipients), content.encode())
        assert refused == {}

    def poll(self, found: Callable[[], list[_T]], seconds: float = 60.0, what: str = "") -> list[_T]:
        """Calls `found` until it returns a non-empty list; fails after `seconds`."""
        deadline = time.monotonic() + seconds
        while not (result := found()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what or 'nothing found'}\n{self.postfix.log()[-3000:]}\n{self.milter.log()[-2000:]}")
            time.sleep(0.05)
        return result

    def arrived(self, mid: str) -> list[Delivery]:
        """The deliveries of the message with Message-ID `mid`, once there is one."""
        return self.poll(lambda: [d for d in list(self.sink.deliveries) if message_id(d.content) == mid], what=f"{mid} did not arrive")


def need(installed: bool, what: str) -> None:
    if not installed:
        message = f"{what} is not installed: run scripts/install-test-servers.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def stack(nsd: NsdServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    need(postfix_installed(), "Postfix")
    need(rspamd_installed(), "rspamd")
    work = tmp_path_factory.mktemp("milter")
    rspamd = RspamdServer(free_port())
    rspamd.start()
    sink = SinkHandler("sink", reject_rcpt={BOUNCING: "550 5.1.1 no such user"})
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    milter_port = free_port()
    config = work / "relay.toml"
    config.write_text(
        f"""
hostname = "milter.test"
[policy]
threshold = 5.0
[score]
source = "rspamd"
url = "{rspamd.url}"
timeout = "5s"
[dns]
nameservers = ["{nsd.address}"]
timeout = "1s"
[milter]
address = "127.0.0.1:{milter_port}"
[pools.normal]
source_addresses = ["{NORMAL_SOURCE}"]
[pools.high-risk]
source_addresses = ["{HIGH_RISK_SOURCE}"]
"""
    )
    milter = Milter(config, milter_port, work / "milter.log")
    milter.start()
    postfix = PostfixInstance(
        port=free_port(), relay_port=controller.port, milter_port=milter_port, normal_source=NORMAL_SOURCE, high_risk_source=HIGH_RISK_SOURCE
    )
    try:
        postfix.start()
        yield Stack(postfix, milter, sink, rspamd)
    finally:
        postfix.close()
        milter.stop()
        controller.stop()
        rspamd.close()


def test_the_test_uses_the_readmes_postfix_lines() -> None:
    blocks = readme_blocks()
    assert set(blocks) == {
        "main.cf", "master.cf", "deliverypool_transport.regexp", "deliverypool_client_headers.regexp", "deliverypool_outgoing.regexp"
    }
    assert "milter_default_action = tempfail" in blocks["main.cf"]
    assert "default_transport = dp-high-risk" in blocks["main.cf"]
    assert "-o smtp_bind_address=192.0.2.10" in blocks["master.cf"]


def test_ordinary_mail_leaves_from_the_normal_pools_address(stack: Stack) -> None:
    content = message("ordinary", body="Shall we meet at noon?")
    stack.send(content)
    [delivery] = stack.arrived(message_id(content.encode()))
    assert delivery.peer == NORMAL_SOURCE
    # The routing header is Postfix's business: it does not leave the machine.
    assert b"X-Deliverypool-Transport" not in delivery.content
    assert "pool=normal transport=dp-normal reasons=- spam=rspamd:no-action" in stack.milter.log()


def test_spam_scored_by_rspamd_leaves_from_the_high_risk_address_whatever_the_client_wrote(stack: Stack) -> None:
    # The client's own score and routing header count for nothing.
    content = message("gtube", body=GTUBE, extra="X-Spam-Score: -100\r\nX-Deliverypool-Transport: dp-normal\r\n")
    stack.send(content)
    [delivery] = stack.arrived(message_id(content.encode()))
    assert delivery.peer == HIGH_RISK_SOURCE
    assert b"X-Spam-Score" not in delivery.content and b"X-Deliverypool" not in delivery.content
    assert "pool=high-risk transport=dp-high-risk reasons=spam-score spam=rspamd:reject:15" in stack.milter.log()


def test_a_dsn_leaves_from_the_high_risk_address(stack: Stack) -> None:
    dsn = (CORPUS / "maildir" / "bsd" / "lhost-postfix-01.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    mid = f"<dsn.{time.monotonic_ns()}@milter.test>"
    content = f"Message-ID: {mid}\r\n".encode() + b"\r\n".join(
        line for line in dsn.split(b"\r\n") if not line.lower().startswith(b"message-id:")
    )
    with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
        assert client.sendmail("", ["bob@dest.test"], content) == {}
    [delivery] = stack.arrived(mid)
    assert (delivery.peer, delivery.mail_from) == (HIGH_RISK_SOURCE, "")


def test_mail_from_a_sender_domain_without_records_leaves_from_the_high_risk_address(stack: Stack) -> None:
    content = message("dead domain", sender="alice@missing.dp.test")
    stack.send(content, sender="alice@missing.dp.test")
    [delivery] = stack.arrived(message_id(content.encode()))
    assert delivery.peer == HIGH_RISK_SOURCE
    assert "reasons=sender-domain-no-records" in stack.milter.log()


def test_postfixs_own_bounce_leaves_from_the_high_risk_address(stack: Stack) -> None:
    content = message("to bounce")
    mid = message_id(content.encode())
    stack.send(content, recipients=(BOUNCING,))
    # The original was ordinary mail: it went out through the normal transport and was refused...
    refused = stack.poll(lambda: [line for line in stack.postfix.log().splitlines() if f"to=<{BOUNCING}>" in line and "status=bounced" in line])
    assert "postfix/dp-normal/smtp" in refused[0] and "550 5.1.1 no such user" in refused[0]
    # ... and Postfix's bounce (null sender, never seen by a milter) took default_transport.
    [bounce] = stack.poll(lambda: [d for d in list(stack.sink.deliveries) if d.mail_from == "" and mid.encode() in d.content])
    assert bounce.peer == HIGH_RISK_SOURCE and bounce.rcpt_tos == ["alice@mx-only.dp.test"]
    assert b"Undelivered Mail Returned to Sender" in bounce.content


def test_milter_killed_while_postfix_accepts_mail_nothing_is_lost(stack: Stack) -> None:
    """A client sends 30 messages one after the other, retrying after a 4xx as an MTA would,
    while the milter is killed and, once the client has seen a tempfail, started again. Every
    message arrives exactly once, every one classified (from the normal address: none of
    them is risky), and the ones sent while the milter was down were tempfailed first."""
    count = 30
    contents = [message(f"under fire {i}") for i in range(count)]
    tempfails: list[str] = []
    errors: list[BaseException] = []
    saw_tempfail = threading.Event()

    def client() -> None:
        try:
            for content in contents:
                deadline = time.monotonic() + 120
                while True:
                    try:
                        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as smtp:
                            smtp.sendmail("alice@mx-only.dp.test", ["bob@dest.test"], content.encode())
                        break
                    except (smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused) as error:
                        code = error.smtp_code if not isinstance(error, smtplib.SMTPRecipientsRefused) else next(iter(error.recipients.values()))[0]
                        assert 400 <= code < 500, f"a permanent refusal: {error}"
                        tempfails.append(message_id(content.encode()))
                        saw_tempfail.set()
                        assert time.monotonic() < deadline, "still tempfailed after 120 s"
                        time.sleep(0.2)
        except BaseException as error:  # reported by the test thread
            errors.append(error)

    thread = threading.Thread(target=client)
    thread.start()
    stack.arrived(message_id(contents[3].encode()))  # a few went through before
    stack.milter.kill()
    assert saw_tempfail.wait(60), "no message was tempfailed while the milter was down"
    stack.milter.start()
    thread.join(300)
    assert not thread.is_alive() and errors == []
    for content in contents:
        delivered = stack.arrived(message_id(content.encode()))
        assert [d.peer for d in delivered] == [NORMAL_SOURCE]
    time.sleep(1)  # nothing arrives twice late either
    ids = [message_id(d.content) for d in stack.sink.deliveries]
    assert all(ids.count(message_id(c.encode())) == 1 for c in contents)
    assert tempfails and set(tempfails) <= {message_id(c.encode()) for c in contents}
    assert "451 4.7.1 Service unavailable - try again later" in stack.postfix.log()
    assert stack.postfix.queue() == []


def test_a_classification_slower_than_milter_timeout_is_tempfailed(stack: Stack, tmp_path: Path) -> None:
    """rspamd that never answers, a score timeout longer than the milter's: the milter gives
    up after milter.timeout and tempfails the message (451 4.3.0); the client keeps it."""
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (the kernel does), never answers
    slow = tmp_path / "slow.toml"
    slow.write_text(
        stack.milter.config.read_text()
        .replace(stack.rspamd.url, f"http://127.0.0.1:{silent.getsockname()[1]}")
        .replace('timeout = "5s"', 'timeout = "30s"')
        .replace("[milter]\n", '[milter]\ntimeout = "1s"\n')
    )
    original = stack.milter.config
    stack.milter.stop()
    stack.milter.config = slow
    stack.milter.start()
    try:
        content = message("slow")
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail("alice@mx-only.dp.test", ["bob@dest.test"], content.encode())
        assert refused.value.smtp_code == 451 and b"4.3.0" in refused.value.smtp_error
        assert "tempfailed queue_id=" in stack.milter.log()
    finally:
        stack.milter.stop()
        stack.milter.config = original
        stack.milter.start()
        silent.close()
    # Once classification works again, the client's retry goes through.
    stack.send(content)
    assert [d.peer for d in stack.arrived(message_id(content.encode()))] == [NORMAL_SOURCE]


def test_sender_limits_refuse_recipients_at_rcpt_through_postfix(stack: Stack, tmp_path: Path) -> None:
    """The milter with [limits] per_day = 2, action block: a client's transaction to four
    recipients gets 250 for two and Postfix's 550 5.1.8 (the milter's reply) for the others;
    the message reaches the two accepted recipients, from its pool's address; the sender's next
    message is refused at its first recipient; a null-sender message still passes."""
    limited = tmp_path / "limited.toml"
    limited.write_text(stack.milter.config.read_text() + f'\n[limits]\nper_day = 2\naction = "block"\n[spool]\ndirectory = "{tmp_path / "spool"}"\n')
    original = stack.milter.config
    stack.milter.stop()
    stack.milter.config = limited
    stack.milter.start()
    try:
        recipients = [f"r{i}@dest.test" for i in range(4)]
        content = message("over the limit", sender="burst@mx-only.dp.test")
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
            refused = client.sendmail("burst@mx-only.dp.test", recipients, content.encode())
        assert refused == {r: (550, b"5.1.8 Access denied, bad outbound sender") for r in recipients[2:]}
        [delivery] = stack.arrived(message_id(content.encode()))
        assert sorted(delivery.rcpt_tos) == recipients[:2] and delivery.peer == NORMAL_SOURCE
        later = message("after the restriction", sender="burst@mx-only.dp.test")
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as all_refused:
                client.sendmail("burst@mx-only.dp.test", ["r9@dest.test"], later.encode())
        assert all_refused.value.recipients == {"r9@dest.test": (550, b"5.1.8 Access denied, bad outbound sender")}
        bounce = message("Undelivered Mail Returned to Sender", sender="MAILER-DAEMON@mx-only.dp.test")
        with smtplib.SMTP("127.0.0.1", stack.postfix.port, timeout=60) as client:
            assert client.sendmail("<>", ["r9@dest.test"], bounce.encode()) == {}
        stack.arrived(message_id(bounce.encode()))
        assert "sender burst@mx-only.dp.test restricted: per_day 2/2" in stack.milter.log()
    finally:
        stack.milter.stop()
        stack.milter.config = original
        stack.milter.start()


def test_a_later_main_cf_setting_replaces_the_earlier_one() -> None:
    """The private instances' main.cf sets each parameter once (tests/postfix.later_wins): a
    duplicate makes every Postfix process warn at start, and a dozen warnings at once fill
    postlogd's socket and wedge the instance."""
    from tests.postfix import later_wins

    text = "a = 1\n# note\nb = x,\n    y\nsmtp_tls_security_level = none\n\nb = z\nsmtp_tls_security_level = verify\nc = $a\n"
    assert later_wins(text) == "a = 1\n# note\nb = z\nsmtp_tls_security_level = verify\n\nc = $a\n"
    assert later_wins(later_wins(text)) == later_wins(text)
