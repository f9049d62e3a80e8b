"""End-to-end delivery: a client speaks SMTP to the relay, the relay routes, spools and delivers
to aiosmtpd sinks on 127.0.0.1x, with MX answers from a real NSD on loopback. The sinks record
the source address of each connection: 127.0.0.2 is the normal pool, 127.0.0.3 high-risk."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.message
import logging
import os
import re
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import aiosmtplib
import pytest
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from deliverypool import classify
from deliverypool.config import RelayConfig
from deliverypool.cli.demo import common_port
from deliverypool.app import Relay, resolver_from_config
from deliverypool.lookup.mx import MailExchanger, MxLookup, MxResolver
from deliverypool.queue.listing import listing, read_counters
from deliverypool.queue.spool import BodyFile
from tests.dnsserver import DP_TEST, NsdServer, nsd_binary
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, CountingSMTP, MidDataDropSMTP, OneMessageSMTP, Sink, eventually, message, relay_config, sink

Run = Callable[[Coroutine[Any, Any, Any]], Any]

MAIL_TEST = """\
$ORIGIN mail.test.
$TTL 300
@           3600 IN SOA ns.dp.test. hostmaster.dp.test. 1 3600 900 604800 60
@           NS ns.dp.test.
; recipient domains
dest        MX 10 mx1.dest
dest        MX 20 mx2.dest
mx1.dest    A 127.0.0.10
mx2.dest    A 127.0.0.11
pref        MX 10 down.pref
pref        MX 20 mx2.dest
down.pref   A 127.0.0.19
implicit    A 127.0.0.12
nullmx      MX 0 .
soft        MX 10 mx.soft
mx.soft     A 127.0.0.13
hard        MX 10 mx.hard
mx.hard     A 127.0.0.14
drop        MX 10 mx.drop
mx.drop     A 127.0.0.15
; sender domains: DSNs to senders at sender.mail.test go to 127.0.0.16
sender      MX 10 mx.sender
mx.sender   A 127.0.0.16
"""

# A domain that does not exist: no records at all.
GHOST_SENDER = "someone@ghost.mail.test"
SENDER = "alice@sender.mail.test"


def missing(what: str) -> NoReturn:
    """A test server or tool is missing: a failure in CI (which installs them), else a skip."""
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@pytest.fixture(scope="module")
def mail_dns() -> Iterator[str]:
    if nsd_binary() is None:
        missing("nsd is not installed: run scripts/install-test-servers.sh")
    # broken.test is configured without a zone file: NSD answers SERVFAIL for it.
    server = NsdServer({"dp.test": DP_TEST, "mail.test": MAIL_TEST, "broken.test": None})
    server.start()
    yield server.address
    server.close()


SINK_HOSTS = {
    "mx1": "127.0.0.10",
    "mx2": "127.0.0.11",
    "implicit": "127.0.0.12",
    "soft": "127.0.0.13",
    "hard": "127.0.0.14",
    "drop": "127.0.0.15",
    "sender": "127.0.0.16",
}


@dataclass
class World:
    relay: Relay
    config: RelayConfig
    sinks: dict[str, Sink]

    async def send(self, msg: bytes, *, sender: str, to: list[str], source: str = "127.0.0.1") -> str:
        return await submit(self.config, msg, sender=sender, to=to, source=source)

    async def settled(self) -> None:
        """Waits until the spool holds nothing unfinished."""
        await eventually(lambda: not [r for r in listing(self.config.spool.directory) if r.state not in ("delivered", "failed")], what="empty queue")


async def submit(config: RelayConfig, msg: bytes, *, sender: str, to: list[str], source: str = "127.0.0.1") -> str:
    """Sends one message to the relay (a null `sender` too, which aiosmtplib.send refuses)."""
    client = aiosmtplib.SMTP(
        hostname=config.listener.host, port=config.listener.port, source_address=(source, 0), start_tls=False
    )
    async with client:
        errors, reply = await client.sendmail(sender, to, msg)
    assert not errors
    return reply


@contextlib.asynccontextmanager
async def world(
    tmp_path: Path, nameserver: str, *, mx: Callable[[RelayConfig], MxLookup] | None = None, **config: Any
) -> AsyncIterator[World]:
    port = common_port(list(SINK_HOSTS.values()))
    conf = relay_config(tmp_path / "spool", mx_port=port, nameserver=nameserver, **config)
    async with contextlib.AsyncExitStack() as stack:
        sinks = {}
        for name, host in SINK_HOSTS.items():
            smtp_class = MidDataDropSMTP if name == "drop" else CountingSMTP
            sinks[name] = await stack.enter_async_context(sink(host, port, name, smtp_class=smtp_class))
        relay = Relay(conf, mx=mx(conf) if mx is not None else None)
        await relay.start()
        await relay.listen()
        try:
            yield World(relay, conf, sinks)
        finally:
            await relay.stop()


def test_each_reason_reaches_its_pool(aio_run: Run, tmp_path: Path, mail_dns: str, corpus: Path) -> None:
    dsn = (corpus / "maildir" / "bsd" / "rfc3464-01.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert "dsn" in classify(dsn, mail_from="").reasons

    async def main() -> None:
        async with world(tmp_path, mail_dns, listener='trusted_score_networks = ["127.0.0.1/32"]') as w:
            await w.send(message("ordinary", message_id="<ordinary@t>"), sender=SENDER, to=["bob@dest.mail.test"])
            await w.send(
                message("spammy", extra_headers="X-Spam-Score: 9.5\r\n", message_id="<scored@t>"),
                sender=SENDER,
                to=["bob@dest.mail.test"],
            )
            # The same header from a client that may not set it is removed: normal pool.
            await w.send(
                message("forged", extra_headers="X-Spam-Score: 9.5\r\n", message_id="<forged@t>"),
                sender=SENDER,
                to=["bob@dest.mail.test"],
                source="127.0.0.5",
            )
            await w.send(dsn, sender="", to=["bob@dest.mail.test"])
            await w.send(message("ghost", sender=GHOST_SENDER, message_id="<ghost@t>"), sender=GHOST_SENDER, to=["bob@dest.mail.test"])
            delivered = await w.sinks["mx1"].wait_for(5)
            seen = {email.message_from_bytes(d.content)["Message-ID"]: d for d in delivered}
            assert seen["<ordinary@t>"].peer == NORMAL_SOURCE
            assert seen["<forged@t>"].peer == NORMAL_SOURCE
            assert b"X-Spam-Score" not in seen["<forged@t>"].content
            assert seen["<scored@t>"].peer == HIGH_RISK_SOURCE
            assert seen["<ghost@t>"].peer == HIGH_RISK_SOURCE
            dsn_delivery = [d for d in delivered if d.mail_from == ""]
            assert [d.peer for d in dsn_delivery] == [HIGH_RISK_SOURCE]
            assert seen["<ordinary@t>"].helo == "normal.relay.test"
            assert seen["<scored@t>"].helo == "high-risk.relay.test"
            assert not w.sinks["mx2"].deliveries  # the preferred MX took everything

    aio_run(main())


def test_mx_preference_and_implicit_mx(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            # pref.mail.test: the preferred MX (127.0.0.19) has no server; the next one gets it.
            await w.send(message("pref"), sender=SENDER, to=["x@pref.mail.test"])
            # implicit.mail.test has only an A record: it is its own MX.
            await w.send(message("implicit"), sender=SENDER, to=["x@implicit.mail.test"])
            assert (await w.sinks["mx2"].wait_for(1))[0].rcpt_tos == ["x@pref.mail.test"]
            assert (await w.sinks["implicit"].wait_for(1))[0].rcpt_tos == ["x@implicit.mail.test"]
            assert not w.sinks["mx1"].deliveries

    aio_run(main())


def test_temporary_failure_then_success(aio_run: Run, tmp_path: Path, mail_dns: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="deliverypool.delivery")

    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            w.sinks["soft"].handler.data_replies[:] = ["451 4.3.0 try again later", "421 4.3.2 busy"]
            await w.send(message("soft"), sender=SENDER, to=["x@soft.mail.test"])
            delivered = await w.sinks["soft"].wait_for(1)
            assert delivered[0].peer == NORMAL_SOURCE
            await w.settled()
            counters = read_counters(w.config.spool.directory)
            assert counters["delivered"] == 1 and counters["failed"] == 0
            assert w.relay.engine is not None and w.relay.engine.stats.deferred == 2
            assert not w.sinks["sender"].deliveries  # no DSN for a delay

    aio_run(main())
    # One log line per attempt: queue and message ids, pool, source, host, reply.
    attempts = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attempt ")]
    assert [line.split(" reply=")[1][:3] for line in attempts] == ["451", "421", "250"]
    for line in attempts:
        assert re.search(r"queue_id=\w{12} message_id=<\d+@sender\.test> pool=normal source=127\.0\.0\.2 host=mx\.soft\.mail\.test\[127\.0\.0\.13\]:\d+ reply=", line), line


def test_permanent_failure_sends_a_dsn_through_the_high_risk_pool(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            w.sinks["hard"].handler.reject_rcpt["nobody@hard.mail.test"] = "550 5.1.1 <nobody@hard.mail.test>: no such user"
            original = message("will bounce", message_id="<bounce-me@t>")
            await w.send(original, sender=SENDER, to=["nobody@hard.mail.test", "x@dest.mail.test"])
            # The other recipient is delivered normally.
            assert (await w.sinks["mx1"].wait_for(1))[0].peer == NORMAL_SOURCE
            (dsn,) = await w.sinks["sender"].wait_for(1)
            assert dsn.peer == HIGH_RISK_SOURCE
            assert dsn.mail_from == ""
            assert dsn.rcpt_tos == [SENDER]
            report = email.message_from_bytes(dsn.content)
            assert report.get_content_type() == "multipart/report"
            assert report.get_param("report-type") == "delivery-status"
            parts = report.get_payload()
            assert isinstance(parts, list)
            text, status, headers = [part for part in parts if isinstance(part, email.message.Message)]
            assert text.get_content_type() == "text/plain"
            assert status.get_content_type() == "message/delivery-status"
            fields = "\n".join(str(block) for block in status.get_payload())
            assert "Reporting-MTA: dns; relay.test" in fields
            assert "Final-Recipient: rfc822; nobody@hard.mail.test" in fields
            assert "Action: failed" in fields
            assert "Status: 5.1.1" in fields
            assert "Diagnostic-Code: smtp; 550 5.1.1" in fields
            assert "x@dest.mail.test" not in fields
            assert headers.get_content_type() == "text/rfc822-headers"
            assert b"Message-ID: <bounce-me@t>" in dsn.content
            decision = classify(dsn.content, mail_from="")
            assert "dsn" in decision.reasons and decision.dsn is not None
            await w.settled()

    aio_run(main())


def test_null_mx_fails_at_once_with_a_dsn(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            await w.send(message("null mx"), sender=SENDER, to=["x@nullmx.mail.test"])
            (dsn,) = await w.sinks["sender"].wait_for(1)
            assert dsn.peer == HIGH_RISK_SOURCE
            assert b"Status: 5.1.10" in dsn.content
            assert w.relay.engine is not None and w.relay.engine.stats.deferred == 0

    aio_run(main())


def test_no_dsn_for_a_message_with_a_null_sender(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            w.sinks["hard"].handler.reject_rcpt["nobody@hard.mail.test"] = "550 5.1.1 no such user"
            await w.send(message("a bounce of a bounce"), sender="", to=["nobody@hard.mail.test"])
            await eventually(lambda: read_counters(w.config.spool.directory)["failed"] == 1, what="the failure")
            await w.settled()
            assert read_counters(w.config.spool.directory)["bounces"] == 0
            assert w.relay.engine is not None and w.relay.engine.stats.bounces == 0
            assert not w.sinks["sender"].deliveries

    aio_run(main())


def test_connection_dropped_mid_data_is_retried(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        MidDataDropSMTP.budget[:] = [2]
        async with world(tmp_path, mail_dns) as w:
            await w.send(message("dropped"), sender=SENDER, to=["x@drop.mail.test"])
            (delivered,) = await w.sinks["drop"].wait_for(1)
            assert delivered.peer == NORMAL_SOURCE
            assert MidDataDropSMTP.budget == [0]
            await w.settled()
            assert w.relay.engine is not None and w.relay.engine.stats.deferred == 2

    aio_run(main())


def test_high_risk_never_falls_back_to_normal_addresses(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    # The high-risk pool only has an IPv6 address, useless for these IPv4 destinations: its
    # mail waits (deferred) rather than leave from the normal pool's 127.0.0.2.
    async def main() -> None:
        async with world(tmp_path, mail_dns, high_risk_sources='["::1"]', listener='trusted_score_networks = ["127.0.0.1/32"]') as w:
            await w.send(message("spam", extra_headers="X-Spam-Score: 50\r\n"), sender=SENDER, to=["x@dest.mail.test"])
            await w.send(message("fine"), sender=SENDER, to=["y@dest.mail.test"])
            (ok,) = await w.sinks["mx1"].wait_for(1)
            assert ok.rcpt_tos == ["y@dest.mail.test"] and ok.peer == NORMAL_SOURCE
            assert w.relay.engine is not None
            await eventually(lambda: w.relay.engine is not None and w.relay.engine.stats.deferred >= 3, what="retries")
            rows = [r for r in listing(w.config.spool.directory) if r.pool == "high-risk"]
            assert rows and all(r.state in ("deferred", "in-flight", "queued") for r in rows)
            assert all(d.rcpt_tos != ["x@dest.mail.test"] for s in w.sinks.values() for d in s.deliveries)

    aio_run(main())


def test_smarthost_mode_binds_each_pools_address(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        port = common_port(["127.0.0.20"])
        conf = relay_config(
            tmp_path / "spool", smarthost=f"127.0.0.20:{port}", listener='trusted_score_networks = ["127.0.0.1/32"]'
        )
        async with sink("127.0.0.20", port, "smarthost") as smarthost:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                for score in ("1", "9"):
                    await submit(
                        conf,
                        message(f"score {score}", extra_headers=f"X-Spam-Score: {score}\r\n"),
                        sender=SENDER,
                        to=["a@anywhere.test", "b@elsewhere.test"],
                    )
                delivered = await smarthost.wait_for(2)
                by_subject = {email.message_from_bytes(d.content)["Subject"]: d for d in delivered}
                assert by_subject["score 1"].peer == NORMAL_SOURCE
                assert by_subject["score 9"].peer == HIGH_RISK_SOURCE
                # One transaction carries both recipients, whatever their domains.
                assert sorted(by_subject["score 1"].rcpt_tos) == ["a@anywhere.test", "b@elsewhere.test"]
            finally:
                await relay.stop()

    aio_run(main())


@pytest.fixture(scope="module")
def server_tls() -> ssl.SSLContext:
    """A certificate for the sinks from a throwaway CA (opportunistic TLS does not verify it)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("mx.test").configure_cert(context)
    return context


@pytest.mark.parametrize("offered", [True, False])
def test_opportunistic_starttls(aio_run: Run, tmp_path: Path, server_tls: ssl.SSLContext, offered: bool) -> None:
    """STARTTLS when the destination offers it (with a certificate nobody could verify), plain
    SMTP when it does not."""

    async def main() -> None:
        port = common_port(["127.0.0.20"])
        conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}")
        async with sink("127.0.0.20", port, "tls", tls_context=server_tls if offered else None) as destination:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                await submit(conf, message("secret"), sender=SENDER, to=["x@anywhere.test"])
                (delivered,) = await destination.wait_for(1)
                assert delivered.tls is offered
                assert delivered.peer == NORMAL_SOURCE
            finally:
                await relay.stop()

    aio_run(main())


def test_required_tls_defers_when_not_offered(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        port = common_port(["127.0.0.20"])
        conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}", pool_extra='tls = "required"')
        async with sink("127.0.0.20", port, "plain") as destination:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                await submit(conf, message("secret"), sender=SENDER, to=["x@anywhere.test"])
                await eventually(lambda: relay.engine is not None and relay.engine.stats.deferred >= 2, what="deferrals")
                assert not destination.deliveries
            finally:
                await relay.stop()

    aio_run(main())


def test_temporary_failures_until_max_age_then_a_dsn(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns, pool_extra='max_age = "1s"') as w:
            w.sinks["soft"].handler.rcpt_replies[:] = ["450 4.2.1 mailbox busy"] * 1000
            await w.send(message("never", message_id="<expire@t>"), sender=SENDER, to=["x@soft.mail.test"])
            (dsn,) = await w.sinks["sender"].wait_for(1)
            assert dsn.peer == HIGH_RISK_SOURCE and dsn.mail_from == ""
            assert b"Action: failed" in dsn.content and b"Status: 4.2.1" in dsn.content
            assert b"Diagnostic-Code: smtp; 450 4.2.1 mailbox busy" in dsn.content
            assert b"Message-ID: <expire@t>" in dsn.content
            assert not w.sinks["soft"].deliveries
            engine = w.relay.engine
            assert engine is not None and engine.stats.deferred >= 2  # it was retried first
            await w.settled()

    aio_run(main())


def test_the_body_arrives_byte_for_byte(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    """Dot-stuffing on the way in and on the way out: lines that are or start with dots, 8-bit
    text, a long line and no final line break in the body the client meant."""
    body = ".\r\n..\r\n.leading dot\r\nmiddle . dot\r\n\u00e9t\u00e9 \u2603\r\n" + "x" * 990 + "\r\n."

    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            original = message("dots", body=body, message_id="<dots@t>")
            await w.send(original, sender=SENDER, to=["x@dest.mail.test"])
            (delivered,) = await w.sinks["mx1"].wait_for(1)
            assert delivered.content.startswith(b"Received: ")
            # aiosmtplib (the test client) ends the message with CRLF; the relay keeps the rest.
            assert delivered.content.endswith(original + b"\r\n")

    aio_run(main())


class ExplodingMx:
    """Real MX answers, except that looking up boom.mail.test raises what no MX lookup is meant
    to raise (as getaddrinfo does with UnicodeError for a name such as ``a..b``)."""

    def __init__(self, config: RelayConfig) -> None:
        self.inner = MxResolver(resolver_from_config(config.dns))
        self.calls = 0

    async def mail_exchangers(self, domain: str) -> list[MailExchanger]:
        if domain == "boom.mail.test":
            self.calls += 1
            raise UnicodeError("encoding with 'idna' codec failed (UnicodeError: label empty or too long)")
        return await self.inner.mail_exchangers(domain)


def test_an_unexpected_error_in_a_lane_defers_then_fails_its_recipients(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    """Every failure of an attempt ends as a deferral or a failure: a lane whose connection
    set-up raises something other than DestinationError is retried with backoff and, at
    max_age, bounced; the co-recipient at another destination is delivered meanwhile."""

    async def main() -> None:
        async with world(tmp_path, mail_dns, mx=ExplodingMx, pool_extra='max_age = "1s"') as w:
            await w.send(message("boom", message_id="<boom@t>"), sender=SENDER, to=["x@boom.mail.test", "y@dest.mail.test"])
            assert (await w.sinks["mx1"].wait_for(1))[0].rcpt_tos == ["y@dest.mail.test"]
            (dsn,) = await w.sinks["sender"].wait_for(1)
            assert dsn.peer == HIGH_RISK_SOURCE and dsn.rcpt_tos == [SENDER]
            assert b"Final-Recipient: rfc822; x@boom.mail.test" in dsn.content
            assert b"Status: 4.3.0" in dsn.content
            mx = w.relay.mx
            assert isinstance(mx, ExplodingMx) and mx.calls >= 2, "retried before it failed"
            await w.settled()
            counters = read_counters(w.config.spool.directory)
            assert counters["delivered"] == 2 and counters["failed"] == 1  # y, then the DSN; x failed

    aio_run(main())


def test_connections_per_destination_are_limited_and_reused(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns, pool_extra="max_connections_per_destination = 2") as w:
            await asyncio.gather(
                *(w.send(message(f"bulk {n}", message_id=f"<bulk{n}@t>"), sender=SENDER, to=[f"u{n}@dest.mail.test"]) for n in range(40))
            )
            await w.sinks["mx1"].wait_for(40)
            # 40 messages over at most 2 connections at a time, each carrying several messages.
            assert w.sinks["mx1"].handler.max_sessions <= 2
            assert len(w.sinks["mx1"].handler.connections) < 40
            # With nothing more to send, the idle connections close after the pool's idle_timeout.
            await eventually(lambda: w.sinks["mx1"].handler.sessions == 0, what="the idle connections closed")

    aio_run(main())


class GatedSMTP(CountingSMTP):
    """Holds every DATA until `gate` is set."""

    gate: asyncio.Event | None = None

    async def smtp_DATA(self, arg: str) -> None:
        assert self.gate is not None
        await self.gate.wait()
        await super().smtp_DATA(arg)


@contextlib.asynccontextmanager
async def gated_relay(make_config: Callable[[int], RelayConfig]) -> AsyncIterator[tuple[RelayConfig, Relay, Sink]]:
    """A listening relay (configured by `make_config` for the sink's port) that delivers to a
    GatedSMTP sink at 127.0.0.20, its gate closed; the gate is opened at the end."""
    port = common_port(["127.0.0.20"])
    conf = make_config(port)
    GatedSMTP.gate = asyncio.Event()
    async with sink("127.0.0.20", port, "gated", smtp_class=GatedSMTP) as destination:
        relay = Relay(conf)
        await relay.start()
        await relay.listen()
        try:
            yield conf, relay, destination
        finally:
            GatedSMTP.gate.set()
            await relay.stop()


def test_mail_a_connection_takes_at_once_is_stored_in_flight(aio_run: Run, tmp_path: Path) -> None:
    """A message that a connection takes as soon as it is accepted is stored with its recipients
    in flight (its first attempt writes no state change of its own); one that must wait for a
    connection is stored queued, so that a crash counts only the first as a possible duplicate.
    Six messages accepted at the same moment for a destination with one connection: exactly one
    is promised that connection."""

    async def main() -> None:
        async with gated_relay(
            lambda port: relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}", pool_extra="max_connections_per_destination = 1")
        ) as (conf, relay, destination):
            await submit(conf, message("first"), sender=SENDER, to=["first@anywhere.test"])
            await submit(conf, message("second"), sender=SENDER, to=["second@anywhere.test"])
            states = {row.address: row.state for row in listing(conf.spool.directory)}
            assert states == {"first@anywhere.test": "in-flight", "second@anywhere.test": "queued"}
            GatedSMTP.gate.set()
            assert len(await destination.wait_for(2)) == 2
            await eventually(lambda: not listing(conf.spool.directory), what="both messages finished")
            assert read_counters(conf.spool.directory)["delivered"] == 2
            # Once more, six at once: one connection, so one message stored in flight.
            GatedSMTP.gate = asyncio.Event()
            await asyncio.gather(*(submit(conf, message(f"at once {n}"), sender=SENDER, to=[f"n{n}@anywhere.test"]) for n in range(6)))
            states = {row.address: row.state for row in listing(conf.spool.directory)}
            assert len(states) == 6 and sorted(states.values()) == ["in-flight"] + ["queued"] * 5, states
            assert relay.engine is not None and all(lane.promised == 0 for lane in relay.engine._lanes.values())
            GatedSMTP.gate.set()
            assert len(await destination.wait_for(8)) == 8
            await eventually(lambda: not listing(conf.spool.directory), what="all messages finished")

    aio_run(main())


IN_FLOW_DELAYS = ("deliverypool_in_flow_delays_total", ())


def _flow_config(tmp_path: Path, port: int, in_flow_delay: str) -> RelayConfig:
    """One connection to a gated smarthost, a 64 KiB memory budget (behind past 8 KiB)."""
    conf = relay_config(
        tmp_path / "spool",
        smarthost=f"127.0.0.20:{port}",
        pool_extra="max_connections_per_destination = 1",
        listener=f"in_flow_delay = {in_flow_delay}",
    )
    return conf.model_copy(update={"spool": conf.spool.model_copy(update={"memory_budget": 64 * 1024})})


@contextlib.asynccontextmanager
async def _behind(tmp_path: Path, in_flow_delay: str) -> AsyncIterator[tuple[RelayConfig, Relay, Sink]]:
    """A listening relay whose delivery is behind: its one connection holds the first message
    at DATA (until GatedSMTP.gate is set), and the second (40 KiB) waits for it, its body held:
    more than an eighth of the memory budget."""
    async with gated_relay(lambda port: _flow_config(tmp_path, port, in_flow_delay)) as (conf, relay, destination):
        assert relay.engine is not None
        relay.engine.stalled_after = 3600.0  # the gated lane counts however slow the machine
        await submit(conf, message("first"), sender=SENDER, to=["first@anywhere.test"])
        await submit(conf, message("big", body=("x" * 78 + "\r\n") * 500), sender=SENDER, to=["second@anywhere.test"])
        assert relay.engine.behind
        yield conf, relay, destination


def test_mail_waits_while_delivery_is_behind(aio_run: Run, tmp_path: Path) -> None:
    """Flow control (listener.in_flow_delay): while the bodies waiting for a connection pass an
    eighth of spool.memory_budget, a MAIL is answered only when delivery catches up, and counted; the
    message then goes through like any other."""

    async def main() -> None:
        async with _behind(tmp_path, '"60s"') as (conf, relay, destination):
            client = aiosmtplib.SMTP(hostname=conf.listener.host, port=conf.listener.port, start_tls=False)
            async with client:
                mail = asyncio.ensure_future(client.mail(SENDER))
                await eventually(lambda: relay.observer.metrics.counts[IN_FLOW_DELAYS] == 1, what="the MAIL held")
                assert not mail.done(), "answered while delivery was behind"
                assert GatedSMTP.gate is not None
                GatedSMTP.gate.set()  # the first is delivered; the connection takes the second
                assert (await asyncio.wait_for(mail, 20)).code == 250
                assert relay.engine is not None and not relay.engine.behind
                await client.rcpt("third@anywhere.test")
                assert (await client.data(message("third"))).code == 250
            assert len(await destination.wait_for(3)) == 3
            assert relay.observer.metrics.counts[IN_FLOW_DELAYS] == 1

    aio_run(main())


@pytest.mark.parametrize(("in_flow_delay", "held"), [('"300ms"', 1), ("0", 0)])
def test_in_flow_delay_bounds_the_wait_and_zero_turns_it_off(aio_run: Run, tmp_path: Path, in_flow_delay: str, held: int) -> None:
    """A MAIL waits at most listener.in_flow_delay, then is answered 250 even though delivery is
    still behind; with 0 it does not wait at all. The relay's own listener and the aiosmtpd
    handler (for those who mount it in their own server) alike."""
    from aiosmtpd.smtp import Envelope, Session

    async def main() -> None:
        async with _behind(tmp_path, in_flow_delay) as (conf, relay, destination):
            client = aiosmtplib.SMTP(hostname=conf.listener.host, port=conf.listener.port, start_tls=False)
            async with client:
                assert (await asyncio.wait_for(client.mail(SENDER), 20)).code == 250
            assert relay.engine is not None and relay.engine.behind
            assert relay.observer.metrics.counts[IN_FLOW_DELAYS] == held
            envelope = Envelope()
            reply = await relay.handler.handle_MAIL(None, Session(asyncio.get_running_loop()), envelope, SENDER, [])  # type: ignore[arg-type]
            assert reply == "250 2.1.0 OK" and envelope.mail_from == SENDER
            assert relay.observer.metrics.counts[IN_FLOW_DELAYS] == 2 * held
            assert GatedSMTP.gate is not None
            GatedSMTP.gate.set()
            assert len(await destination.wait_for(2)) == 2

    aio_run(main())


def _two_lanes(tmp_path: Path) -> tuple[Any, Any, Any]:
    """A delivery engine with an 800-byte memory budget (behind past 100 bytes) and two lanes of
    the normal pool, "flowing" and "stalled", that have taken no work yet."""
    from deliverypool.outbound.scheduler import DeliveryEngine, _Lane
    from deliverypool.queue.spool import Spool

    conf = relay_config(tmp_path / "spool", smarthost="127.0.0.20:25")
    engine = DeliveryEngine(conf, Spool(tmp_path / "spool"), mx=None, route_dsn=classify, memory_budget=800)
    flowing, stalled = _Lane(conf.pools["normal"], "flowing"), _Lane(conf.pools["normal"], "stalled")
    engine._lanes.update({("normal", "flowing"): flowing, ("normal", "stalled"): stalled})
    return engine, flowing, stalled


def test_delivery_lets_one_waiting_mail_in_per_body_that_leaves(aio_run: Run, tmp_path: Path) -> None:
    """`DeliveryEngine.behind` and `caught_up`: behind past an eighth of the memory budget waiting
    in lanes that are taking work, not counting a stalled lane; a body leaving lets one waiting
    MAIL in (Postfix's tokens; waking every waiter would let a burst in); a wait ends False at
    its timeout, and every wait ends False when delivery stops."""
    import time

    async def main() -> None:
        engine, flowing, stalled = _two_lanes(tmp_path)
        job: Any = None
        for _ in range(2):
            engine._put(flowing, job, b"x" * 60)
        engine._put(stalled, job, b"x" * 300)
        works, (stuck,) = list(flowing.queue), list(stalled.queue)
        assert (engine.queued, flowing.queued, stalled.queued) == (420, 120, 300)
        assert engine.held == 420 and all(w.body is not None for w in (*works, stuck))
        assert not engine.behind  # nothing has taken work: both lanes count as stalled
        flowing.took = time.monotonic()
        assert engine.behind  # 120 bytes in a flowing lane, over 800 / 8
        waits = [asyncio.ensure_future(engine.caught_up(30)) for _ in range(3)]
        await asyncio.sleep(0)
        engine._release(works[0], flowing)
        await asyncio.sleep(0)
        assert engine.queued == 360 and not engine.behind  # the stalled lane's 300 do not count
        assert [w.done() for w in waits] == [True, False, False] and waits[0].result() is True
        engine._release(works[1], flowing)
        await asyncio.sleep(0)
        assert [w.done() for w in waits] == [True, True, False]
        stalled.took = flowing.took
        assert engine.behind  # taking work again: it counts
        assert await engine.caught_up(0.01) is False  # nothing leaves: the timeout
        engine._release(stuck, stalled)
        engine._release(stuck, stalled)  # released twice (a lane failed as it stopped): counted once
        assert (engine.queued, engine.held) == (0, 0) and (flowing.queued, stalled.queued) == (0, 0)
        assert all(w.body is None and w.size == 0 for w in (*works, stuck))
        assert await waits[2] is True
        last = asyncio.ensure_future(engine.caught_up(30))
        await asyncio.sleep(0)
        await engine.stop()
        assert await last is False
        assert await engine.caught_up(30) is False  # stopped: at once

    aio_run(main())


def test_bodies_not_held_count_and_a_lane_that_stalls_lets_the_waits_go(aio_run: Run, tmp_path: Path) -> None:
    """Flow control counts the bodies of waiting work whether held in memory or not: past a
    budget that a stalled lane filled, a flowing lane's bodies (and a body file sent back after
    an attempt) are not held but still make delivery behind. When the lane they wait on
    stalls, `behind` turns false with no body leaving: the waiting MAILs go then, not at their
    in_flow_delay."""
    import time

    from deliverypool.queue.spool import BodyFile

    async def main() -> None:
        engine, flowing, stalled = _two_lanes(tmp_path)
        job: Any = None
        engine._put(stalled, job, b"x" * 750)  # a stalled destination fills the memory budget
        engine._put(flowing, job, b"x" * 80)
        engine._put(flowing, job, BodyFile(tmp_path / "body", 40), front=True)
        assert (engine.held, flowing.queued, engine.queued) == (750, 120, 870)
        assert [w.body for w in flowing.queue] == [None, None] and [w.size for w in flowing.queue] == [40, 80]
        engine.stalled_after = 0.2
        flowing.took = time.monotonic()
        assert engine.behind  # 120 waiting bytes in a flowing lane, none of them held
        waits = [asyncio.ensure_future(engine.caught_up(60)) for _ in range(2)]
        # The flowing lane takes nothing more: it stalls after 0.2 s and both waits end then,
        # True (the 60 s in_flow_delay would end them False).
        assert await asyncio.wait_for(asyncio.gather(*waits), 30) == [True, True]
        assert not engine.behind and engine._flow_waiting == [] and engine._stall_timer is None
        await engine.stop()

    aio_run(main())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            # Work in: which lane, its body (in memory, a body file, unknown), at the front or not.
            st.tuples(st.just("put"), st.booleans(), st.one_of(st.none(), st.integers(0, 600), st.integers(0, 600).map(lambda n: -n - 1)), st.booleans()),
            # Work out: the lane, which of its queue, released twice or not.
            st.tuples(st.just("release"), st.booleans(), st.integers(0, 50), st.booleans()),
        ),
        max_size=60,
    )
)
def test_flow_control_counts_add_up_whatever_comes_and_goes(steps: list[tuple[Any, ...]]) -> None:
    """Whatever work comes into and leaves the lanes (held bodies, bodies past the budget, body
    files, unknown sizes, work released twice), the engine's and each lane's counts are the
    sums over the work waiting, held bytes never pass the budget, and once every work is
    released they are all zero."""
    engine, flowing, stalled = _two_lanes(Path("/nonexistent"))
    job: Any = None
    gone: list[Any] = []
    for step in steps:
        lane = flowing if step[1] else stalled
        if step[0] == "put":
            size = step[2]
            body = None if size is None else b"x" * size if size >= 0 else BodyFile(Path("/nonexistent/body"), -size - 1)
            engine._put(lane, job, body, front=step[3])
        elif lane.queue:
            index = step[2] % len(lane.queue)
            work = lane.queue[index]
            del lane.queue[index]  # by place: two works of equal fields are still two
            engine._release(work, lane)
            if step[3]:
                engine._release(work, lane)
            gone.append(work)
        for one in (flowing, stalled):
            assert one.queued == sum(w.size for w in one.queue)
        assert engine.queued == flowing.queued + stalled.queued
        assert engine.held == sum(len(w.body) for one in (flowing, stalled) for w in one.queue if w.body is not None)
        assert engine.held <= engine.memory_budget
        assert all(w.size == 0 and w.body is None for w in gone)
    for one in (flowing, stalled):
        while one.queue:
            engine._release(one.queue.popleft(), one)
    assert (engine.queued, engine.held, flowing.queued, stalled.queued) == (0, 0, 0, 0)


def test_a_promise_of_a_connection_is_given_back_when_the_spool_refuses_the_message(tmp_path: Path) -> None:
    """`claim_at_once` holds one place per lane until the message is submitted or the promise
    released; a released promise leaves no lane behind."""
    from deliverypool.outbound.scheduler import DeliveryEngine
    from deliverypool.queue.spool import Spool

    conf = relay_config(tmp_path / "spool", smarthost="127.0.0.20:25", pool_extra="max_connections_per_destination = 2")
    engine = DeliveryEngine(conf, Spool(tmp_path / "spool"), mx=None, route_dsn=classify)
    first = engine.claim_at_once("normal", ["a@x.test"])
    second = engine.claim_at_once("normal", ["b@y.test", "c@z.test"])  # one smarthost lane: one place
    assert first is not None and second is not None and len(second) == 1
    assert engine.claim_at_once("normal", ["d@x.test"]) is None  # two connections, two promises
    # A message for two pools' lanes that cannot have the second leaves no lane behind for the first.
    assert engine.claim_at_once("normal", ["e@w.test", "d@x.test"], ["high-risk", "normal"]) is None
    assert set(engine._lanes) == {("normal", "[127.0.0.20]:25")}
    engine.release(second)
    third = engine.claim_at_once("normal", ["d@x.test"])
    assert third is not None
    engine.release(first)
    engine.release(third)
    assert engine._lanes == {}
    assert engine.claim_at_once("no-such-pool", ["a@x.test"]) is None


def test_a_claimed_message_goes_into_the_lane_its_promise_held(aio_run: Run, tmp_path: Path) -> None:
    """Submitted with its claim, a message joins the lane the promise held (the same one, not
    one made again after the promise let it go) and the place is given back."""
    from deliverypool.outbound.scheduler import DeliveryEngine
    from deliverypool.queue.spool import Job, Spool

    async def main() -> None:
        conf = relay_config(tmp_path / "spool", smarthost="127.0.0.20:25")
        engine = DeliveryEngine(conf, Spool(tmp_path / "spool"), mx=None, route_dsn=classify)
        claim = engine.claim_at_once("normal", ["a@x.test"])
        assert claim is not None
        (lane,) = claim
        job = Job(message=1, queue_id="Q1", mail_from="s@x.test", pool="normal", reasons=(), header_message_id=None, received_at=0.0, recipients=((1, "a@x.test"),))
        engine.submit(job, b"Subject: x\r\n\r\nbody\r\n", claim=claim)
        try:
            assert engine._lanes[("normal", lane.destination)] is lane
            assert lane.promised == 0 and lane.active == 1 and len(lane.queue) == 1 and lane.queue[0].in_flight
        finally:
            for task in engine._tasks:  # its connection is not opened: nothing listens there
                task.cancel()
            await asyncio.gather(*engine._tasks, return_exceptions=True)

    aio_run(main())


def test_an_idle_lane_wait_ends_with_work_or_its_timeout(aio_run: Run, tmp_path: Path) -> None:
    """A connection waiting for work: woken (True) when work comes, False at the timeout, and
    a wait that ends in any way (cancelled too) leaves no waiter behind."""
    from deliverypool.outbound.scheduler import _Lane

    async def main() -> None:
        lane = _Lane(pool=relay_config(tmp_path / "spool").high_risk_pool, destination="dest.test")
        assert await lane.wait(0.01) is False and lane.waiting == []
        waits = [asyncio.ensure_future(lane.wait(60)) for _ in range(3)]
        await asyncio.sleep(0)
        assert len(lane.waiting) == 3
        waits[2].cancel()
        await asyncio.sleep(0)
        assert len(lane.waiting) == 2
        lane.wake()
        assert await asyncio.gather(*waits[:2]) == [True, True] and lane.waiting == []
        lane.wake()  # nobody waits: nothing to do

    aio_run(main())


def test_large_message_is_read_back_from_the_spool(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        port = common_port(["127.0.0.20"])
        conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}")
        body = "".join(f"line {n:06d} " + "x" * 60 + "\r\n" for n in range(6000))  # ~450 KB
        big = message("big", body=body)
        async with sink("127.0.0.20", port, "big") as destination:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                await submit(conf, big, sender=SENDER, to=["x@anywhere.test"])
                (delivered,) = await destination.wait_for(1)
                assert delivered.content.endswith(big)
            finally:
                await relay.stop()

    aio_run(main())


def test_dns_failure_defers_and_never_fails_over(aio_run: Run, tmp_path: Path, mail_dns: str) -> None:
    async def main() -> None:
        async with world(tmp_path, mail_dns) as w:
            await w.send(message("servfail"), sender=SENDER, to=["x@broken.test"])
            await eventually(lambda: w.relay.engine is not None and w.relay.engine.stats.deferred >= 2, what="retries")
            (row,) = listing(w.config.spool.directory)
            assert row.state in ("deferred", "in-flight", "queued")
            assert row.last_reply is not None and row.last_reply.startswith("451 4.4.3")
            assert read_counters(w.config.spool.directory)["failed"] == 0
            assert all(not s.deliveries for s in w.sinks.values())

    aio_run(main())


def test_a_reused_connection_closed_by_the_server_is_reopened_without_a_retry(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        port = common_port(["127.0.0.20"])
        conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}")
        async with sink("127.0.0.20", port, "one-shot", smtp_class=OneMessageSMTP) as destination:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                await asyncio.gather(*(submit(conf, message(f"m{n}"), sender=SENDER, to=["x@anywhere.test"]) for n in range(6)))
                await destination.wait_for(6)
                assert relay.engine is not None and relay.engine.stats.deferred == 0
                assert len(destination.handler.connections) >= 6
            finally:
                await relay.stop()

    aio_run(main())


def test_source_addresses_are_picked_by_weight_within_the_family(tmp_path: Path) -> None:
    import collections
    import random

    from deliverypool.outbound.scheduler import DeliveryEngine
    from deliverypool.queue.spool import Spool

    conf = relay_config(
        tmp_path / "spool",
        high_risk_sources='["127.0.0.3", { address = "127.0.0.4", weight = 3 }, "::1"]',
    )

    async def route(_: bytes) -> tuple[str, tuple[str, ...]]:
        return "high-risk", ()

    engine = DeliveryEngine(conf, Spool(tmp_path), mx=None, route_dsn=route, rng=random.Random(7))
    pool = conf.pools["high-risk"]
    picks = collections.Counter(str(engine.connector.source_for(pool, "192.0.2.1").address) for _ in range(4000))  # type: ignore[union-attr]
    assert set(picks) == {"127.0.0.3", "127.0.0.4"}
    assert 2.5 < picks["127.0.0.4"] / picks["127.0.0.3"] < 3.5
    assert {str(engine.connector.source_for(pool, "2001:db8::1").address) for _ in range(20)} == {"::1"}  # type: ignore[union-attr]
    # The normal pool has no IPv6 address: no source, rather than anything borrowed.
    assert engine.connector.source_for(conf.pools["normal"], "2001:db8::1") is None
