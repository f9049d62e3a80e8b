"""Pools and rules end to end: a relay with two tenants, one with its own normal and high-risk
pools, delivering to a real SMTP sink that records the source address of every connection;
each pool sends from its own loopback address (docs/concepts/pools.md). Also the milter's view
of the same rules (without Postfix)."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path

import aiosmtplib
import pytest

from deliverypool import config as cfg
from deliverypool.app import Relay
from deliverypool.queue.listing import listing
from deliverypool.routing.scores import Submission
from tests.messages import GLOBAL_DSN
from tests.test_pools import ACME_RULES
from tests.smtp_sinks import Delivery, free_port, message, sink

# Clients: acme's server, globex's server (also the platform whose stream header is trusted),
# and a client of no tenant.
ACME, GLOBEX, STRANGER = "127.0.0.20", "127.0.0.21", "127.0.0.22"
# Each pool's source address.
NORMAL, HIGH_RISK, ACME_OUT, ACME_RISKY, GMAIL, WARM, WARM_OTHER = (f"127.0.0.{n}" for n in range(2, 9))


def pools_toml(spool: Path, sink_port: int) -> str:
    """Two tenants (acme with pools of its own), a pool for one recipient domain, a warming-up
    pool chosen by a trusted stream header; every pool to the sink on 127.0.0.1:`sink_port`."""
    delivery = f"""delivery = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
max_messages_per_connection = 1
idle_timeout = "100ms"
retry = {{ initial = "100ms", maximum = "200ms", jitter = 0.0 }}
"""
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    pools = {
        "normal": f'source_addresses = ["{NORMAL}"]',
        "high-risk": f'source_addresses = ["{HIGH_RISK}"]',
        "acme-out": f'tenant = "acme"\nsource_addresses = ["{ACME_OUT}"]',
        "acme-risky": f'class = "high-risk"\ntenant = "acme"\nsource_addresses = ["{ACME_RISKY}"]',
        "gmail": f'source_addresses = ["{GMAIL}"]',
        "warm": f'source_addresses = [{{ address = "{WARM}", warmup = {{ start = {today}, per_day = [2, 4] }} }}, "{WARM_OTHER}"]',
    }
    text = f"""
hostname = "relay.test"
[listener]
address = "127.0.0.1:{free_port()}"
trusted_score_networks = ["127.0.0.0/8"]
trusted_route_networks = ["{GLOBEX}/32"]
[spool]
directory = "{spool}"
[policy]
score_header = "X-Spam-Score"
route_header = "X-Stream"
{ACME_RULES}[[policy.rules]]
name = "gmail"
recipient_domains = ["gmail.test"]
pool = "gmail"
[[policy.rules]]
name = "warm-stream"
header_values = ["warm"]
pool = "warm"
[dns]
check_sender_domain = false
[tenants.acme]
networks = ["{ACME}/32"]
[tenants.globex]
networks = ["{GLOBEX}/32"]
"""
    for name, body in pools.items():
        text += f"[pools.{name}]\n{body}\n{delivery}"
    return text


def subject_of(delivery: Delivery | bytes) -> str:
    """The Subject of a delivered message (or of a message's bytes)."""
    content = delivery if isinstance(delivery, bytes) else delivery.content
    for line in content.split(b"\r\n"):
        if line.startswith(b"Subject: "):
            return line[len(b"Subject: ") :].decode()
        if not line:
            break
    return ""


def test_tenants_rules_and_warmup_end_to_end(tmp_path: Path) -> None:
    async def main() -> tuple[list[Delivery], list[str]]:
        sink_port = free_port()
        conf = cfg.loads(pools_toml(tmp_path / "spool", sink_port))
        async with sink("127.0.0.1", sink_port, reject_rcpt={"nobody@dest.test": "550 5.1.1 No such user"}) as received:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            port = conf.listener.port
            delivered = 0

            async def send(content: bytes, source: str, recipients: list[str], sender: str = "app@tenant.test", expect: int = 1) -> None:
                nonlocal delivered
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0), start_tls=False)
                async with client:
                    await client.sendmail(sender, recipients, content)
                delivered += expect
                await received.wait_for(delivered)

            try:
                # acme: ordinary mail, a bounce its server relays, spam, and a message the
                # destination refuses (the relay's own DSN for it is acme's mail too).
                await send(message("acme ordinary"), ACME, ["bob@dest.test"])
                await send(GLOBAL_DSN.replace(b"Subject: Undelivered", b"Subject: acme bounce Undelivered"), ACME, ["kim@dest.test"], sender="")
                await send(message("acme spam", extra_headers="X-Spam-Score: 9.5\r\n"), ACME, ["bob@dest.test"])
                await send(message("acme refused"), ACME, ["nobody@dest.test"], sender="app@acme.test")
                # globex: ordinary mail split by recipient domain, spam to the gmail domain, a
                # bounce; a stream of its campaign platform through the warming-up pool.
                await send(message("globex split"), GLOBEX, ["ann@gmail.test", "bob@dest.test"], expect=2)
                await send(message("globex spam", extra_headers="X-Spam-Score: 9.5\r\n"), GLOBEX, ["ann@gmail.test"])
                await send(GLOBAL_DSN.replace(b"Subject: Undelivered", b"Subject: globex bounce Undelivered"), GLOBEX, ["kim@dest.test"], sender="")
                for n in range(6):
                    await send(message(f"warm {n}", extra_headers="X-Stream: warm\r\n"), GLOBEX, [f"w{n}@dest.test"])
                # A client whose stream header is not trusted cannot choose the pool.
                await send(message("stranger", extra_headers="X-Stream: warm\r\n"), STRANGER, ["bob@dest.test"])
                await relay.engine.wait_idle()  # type: ignore[union-attr]
            finally:
                await relay.stop()
            return list(received.deliveries), [row.pool for row in listing(conf.spool.directory)]

    deliveries, left = asyncio.run(main())
    assert left == []
    by_subject: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_subject.setdefault(subject_of(delivery), []).append(delivery)

    def sources(subject: str) -> list[str]:
        return [d.peer for d in by_subject[subject]]

    # acme's ordinary mail, its bounces (relayed and the relay's own) and its spam, each from
    # the right one of its own addresses.
    assert sources("acme ordinary") == [ACME_OUT]
    assert sources("acme bounce Undelivered Mail Returned to Sender") == [ACME_RISKY]
    assert sources("acme spam") == [ACME_RISKY]
    [own_dsn] = [d for d in deliveries if d.rcpt_tos == ["app@acme.test"]]
    assert own_dsn.peer == ACME_RISKY and own_dsn.mail_from == ""
    # globex never from acme's addresses: its message split by recipient domain, its spam
    # high-risk whatever the recipient's domain.
    assert sorted((d.rcpt_tos[0], d.peer) for d in by_subject["globex split"]) == [("ann@gmail.test", GMAIL), ("bob@dest.test", NORMAL)]
    assert sources("globex spam") == [HIGH_RISK]
    assert sources("globex bounce Undelivered Mail Returned to Sender") == [HIGH_RISK]
    acme_addresses = {ACME_OUT, ACME_RISKY}
    globex = [d for subject, ds in by_subject.items() if not subject.startswith("acme") for d in ds if d is not own_dsn]
    assert globex and not {d.peer for d in globex} & acme_addresses
    # The warm-up cap (2 today) moved the rest of the stream to the pool's other address.
    warm = [d.peer for n in range(6) for d in by_subject[f"warm {n}"]]
    assert sorted(warm) == [WARM] * 2 + [WARM_OTHER] * 4
    # The stranger's stream header was removed, and its mail took the default pool.
    [stranger] = by_subject["stranger"]
    assert stranger.peer == NORMAL and b"X-Stream" not in stranger.content


# --- the milter: the same rules, one pool per message -----------------------------------------


def test_the_milter_routes_by_the_rules_with_a_transport_per_pool(tmp_path: Path) -> None:
    pytest.importorskip("Milter", reason="pymilter is not installed (the milter extra)")
    from deliverypool.ingress.milter import MilterService
    from tests.test_milter_service import route_from_a_thread

    milter = '[milter]\ntrust_score_header = true\ntransports = { acme-risky = "out-acme-risky" }\n'
    conf = cfg.loads(pools_toml(tmp_path / "spool", free_port()) + milter)
    running = MilterService(conf)
    try:
        routed = {
            name: route_from_a_thread(running, content, Submission("app@x.test", recipients, client_address=client))
            for name, content, recipients, client in [
                ("acme", message("acme"), ("bob@dest.test",), ACME),
                ("spam", message("spam", extra_headers="X-Spam-Score: 9\r\n"), ("bob@dest.test",), ACME),
                ("split", message("split"), ("bob@dest.test", "ann@gmail.test"), GLOBEX),
                ("stream", message("stream", extra_headers="X-Stream: warm\r\n"), ("bob@dest.test",), GLOBEX),
            ]
        }
    finally:
        running.close()
    acme, spam, split, stream = routed["acme"], routed["spam"], routed["split"], routed["stream"]
    assert (acme.pool, acme.decision.rule, conf.transport_for(acme.pool)) == ("acme-out", "acme", "dp-acme-out")
    assert (spam.pool, conf.transport_for(spam.pool)) == ("acme-risky", "out-acme-risky")
    # FILTER is per message: the first recipient's pool, and the split the rules wanted is said.
    assert (split.pool, split.recipient_pools) == ("normal", ("normal", "gmail"))
    # Without milter.trust_route_header the stream header chooses nothing.
    assert (stream.pool, stream.decision.rule) == ("normal", None)
