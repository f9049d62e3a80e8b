"""Delivery under conditions that used to leave mail stuck or loop: addresses that need SMTPUTF8,
a next hop that takes ten recipients per transaction, a relay that is its own MX, a failing
spool. Real relay, real aiosmtpd sinks on loopback, both event loops."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosmtplib

from deliverypool.app import Relay
from deliverypool.cli.demo import common_port
from deliverypool.config import RelayConfig
from deliverypool.lookup.mx import MailExchanger
from deliverypool.testing.static_mx import StaticMx
from deliverypool.queue.listing import listing, read_counters
from tests.test_relay import running
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, Sink, eventually, message, relay_config, sink

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SENDER = "alice@sender.test"
DESTINATION = "127.0.0.20"


@contextlib.asynccontextmanager
async def smarthost_relay(tmp_path: Path, **sink_options: Any) -> AsyncIterator[tuple[Relay, RelayConfig, Sink]]:
    """A relay whose pools both send to one aiosmtpd sink (the smarthost) on 127.0.0.20."""
    port = common_port([DESTINATION])
    conf = relay_config(tmp_path / "spool", smarthost=f"{DESTINATION}:{port}", pool_extra='max_age = "2s"')
    async with sink(DESTINATION, port, "smarthost", **sink_options) as destination, running(conf) as relay:
        yield relay, conf, destination


async def submit(conf: RelayConfig, msg: bytes, to: list[str], *, sender: str = SENDER, smtputf8: bool = False) -> None:
    client = aiosmtplib.SMTP(hostname=conf.listener.host, port=conf.listener.port, start_tls=False)
    async with client:
        errors, _ = await client.sendmail(sender, to, msg, mail_options=["SMTPUTF8"] if smtputf8 else [])
    assert not errors


async def settled(conf: RelayConfig) -> None:
    await eventually(lambda: all(row.finished for row in listing(conf.spool.directory)), what="every recipient finished")


def test_utf8_addresses_go_out_with_smtputf8_when_the_next_hop_offers_it(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with smarthost_relay(tmp_path) as (relay, conf, destination):
            await submit(conf, message("utf8"), ["jos\u00e9@b\u00fccher.test", "plain@dest.test"], smtputf8=True)
            (delivered,) = await destination.wait_for(1)
            assert sorted(delivered.rcpt_tos) == ["jos\u00e9@xn--bcher-kva.test", "plain@dest.test"]
            assert "SMTPUTF8" in destination.handler.mail_options[-1]
            await settled(conf)

    aio_run(main())


def test_utf8_addresses_fail_with_5_6_7_without_smtputf8_and_the_others_are_delivered(aio_run: Run, tmp_path: Path) -> None:
    """Before: accepted with 250, then in flight with 0 attempts forever, the ASCII co-recipient
    stuck with them. Now: the UTF-8 recipient fails at once (553 5.6.7, one attempt) and gets a
    DSN (which itself needs no SMTPUTF8); the ASCII one is delivered in the same transaction."""

    async def main() -> None:
        async with smarthost_relay(tmp_path, smtputf8=False) as (relay, conf, destination):
            await submit(conf, message("utf8", message_id="<utf8@t>"), ["jos\u00e9@dest.test", "plain@dest.test"], smtputf8=True)
            first, dsn = await destination.wait_for(2)
            assert first.rcpt_tos == ["plain@dest.test"] and first.peer == NORMAL_SOURCE
            assert dsn.mail_from == "" and dsn.rcpt_tos == [SENDER] and dsn.peer == HIGH_RISK_SOURCE
            assert b"Status: 5.6.7" in dsn.content
            await settled(conf)
            counters = read_counters(conf.spool.directory)
            assert counters["failed"] == 1 and counters["delivered"] == 2

    aio_run(main())


def test_recipients_refused_as_too_many_go_out_at_once_in_the_next_transaction(aio_run: Run, tmp_path: Path) -> None:
    """A smarthost that takes at most ten recipients per transaction: 35 recipients leave in
    four transactions on one connection, none deferred (before: 4 attempts, with backoff)."""
    recipients = [f"r{i:02d}@dest.test" for i in range(35)]

    async def main() -> None:
        async with smarthost_relay(tmp_path, max_recipients=10) as (relay, conf, destination):
            await submit(conf, message("many"), recipients)
            delivered = await destination.wait_for(4)
            assert [len(d.rcpt_tos) for d in delivered] == [10, 10, 10, 5]
            assert sorted(r for d in delivered for r in d.rcpt_tos) == recipients
            await settled(conf)
            assert relay.engine is not None and relay.engine.stats.deferred == 0
            assert relay.engine.stats.connections == 1

    aio_run(main())


def test_a_relay_that_is_its_own_mx_stops_the_loop_with_5_4_6_and_a_dsn(aio_run: Run, tmp_path: Path) -> None:
    """loop.test's MX is the relay itself. Before: one message accepted again 1,630 times in
    20 s. Now: at the hop limit (50 Received fields) the relay refuses it with 554 5.4.6, the
    copy before it fails, and the sender gets one DSN saying so."""
    port = common_port(["127.0.0.1", DESTINATION])
    conf = relay_config(tmp_path / "spool", mx_port=port, listen_port=port)
    mx = StaticMx(
        {
            "loop.test": [MailExchanger(10, "relay.loop.test", ("127.0.0.1",))],
            "sender.test": [MailExchanger(10, "mx.sender.test", (DESTINATION,))],
        }
    )

    async def main() -> None:
        async with sink(DESTINATION, port, "sender-mx") as destination, running(conf, mx):
            await submit(conf, message("loop", message_id="<loop@t>"), ["someone@loop.test"])
            (dsn,) = await destination.wait_for(1, timeout=60)
            assert dsn.mail_from == "" and dsn.rcpt_tos == [SENDER]
            assert b"Status: 5.4.6" in dsn.content and b"Too many hops" in dsn.content
            await settled(conf)
            counters = read_counters(conf.spool.directory)
            # The client's copy and 49 more, each with one more Received field, then refused.
            assert counters["accepted"] == conf.listener.max_hops + 1  # the 50 copies and the DSN
            assert counters["bounces"] == 1

    aio_run(main())


def test_one_message_to_fifty_dead_domains_gets_one_dsn(aio_run: Run, tmp_path: Path) -> None:
    """Fifty recipients at fifty domains that do not exist, one lane each. Before: fifty DSNs to
    the (possibly forged) sender. Now: one, listing all fifty failures."""
    port = common_port([DESTINATION])
    conf = relay_config(tmp_path / "spool", mx_port=port)
    mx = StaticMx({"sender.test": [MailExchanger(10, "mx.sender.test", (DESTINATION,))]})
    dead = [f"user{i}@dead{i}.test" for i in range(50)]

    async def main() -> None:
        async with sink(DESTINATION, port, "sender-mx") as destination, running(conf, mx):
            await submit(conf, message("fifty"), dead)
            (dsn,) = await destination.wait_for(1)
            await settled(conf)
            assert len(destination.deliveries) == 1
            finals = [line.split(b"; ", 1)[1].decode() for line in dsn.content.split(b"\r\n") if line.startswith(b"Final-Recipient:")]
            assert sorted(finals) == sorted(dead)
            assert dsn.content.count(b"Status: 5.1.2") == 50
            assert read_counters(conf.spool.directory)["bounces"] == 1

    aio_run(main())


def test_a_bounce_padded_past_the_scanners_limit_never_leaves_from_the_normal_pool(aio_run: Run, tmp_path: Path) -> None:
    """A real bounce with over 1 MiB of header padding and a non-null sender. Before: routed
    normal (defect header-too-large), so a sender could pick the normal pool by padding its
    headers. Now: reason unscannable, high-risk."""
    padding = "".join(f"X-Padding-{i:04d}: {'p' * 960}\r\n" for i in range(1100))
    report = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n\r\n"
        "This is the mail system at host mx.example.org.\r\n\r\nI'm sorry to have to inform you that your message could not\r\n"
        "be delivered to one or more recipients.\r\n"
    )
    # Every bounce marker behind the padding: the scanner sees nothing but padding.
    hidden = (padding + report).encode()
    # The sender in front: the detector still reads enough to call it a DSN.
    seen = (report.split("\r\n", 1)[0] + "\r\n" + padding + report.split("\r\n", 1)[1]).encode()

    async def main() -> None:
        async with smarthost_relay(tmp_path) as (relay, conf, destination):
            accepted: list[tuple[str, ...]] = []
            relay.on_accept = lambda result, content: accepted.append(result.reasons)
            await submit(conf, hidden, ["x@dest.test"])
            await submit(conf, seen, ["y@dest.test"])
            delivered = await destination.wait_for(2)
            assert {d.peer for d in delivered} == {HIGH_RISK_SOURCE}
            assert accepted == [("unscannable",), ("dsn",)]

    aio_run(main())
