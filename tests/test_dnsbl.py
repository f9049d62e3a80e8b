"""The blocklist watch end to end: NSD on loopback serves test blocklist zones (one that lists the
RFC 5782 test points and some pool addresses, IPv4 and IPv6; one that answers 127.255.255.254
for everything; one that fails the test points, listing everything), listings change by
reloading the zone, and a relay with two normal addresses delivers to a sink that records which
source address each message came from."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from deliverypool import config as cfg
from deliverypool.app import Relay
from deliverypool.cli import main as cli_main
from deliverypool.config import RelayConfig
from deliverypool.lookup.dnsbl import Dnsbl, queries_per_cycle, reversed_name
from deliverypool.lookup.resolver import Resolver, ResolverConfig
from deliverypool.queue.listing import listing, read_counters
from deliverypool.supervisor import shard_directory
from deliverypool.watch.dnsbl import CHECK_RESULTS, BlocklistWatch, queries_per_day
from tests.dnsserver import NsdServer, nsd_binary
from tests.smtp_sinks import Sink, eventually, free_port, message, sink, webhook_receiver

Run = Callable[[Coroutine[Any, Any, Any]], Any]

NORMAL_A = "127.0.2.2"
NORMAL_B = "127.0.2.4"
NORMAL_V6 = "2001:db8::a"
HIGH_RISK = "127.0.2.3"
HIGH_RISK_V6 = "2001:db8::b"

HEADER = """\
$TTL 0
@ 3600 IN SOA ns.dp.test. hostmaster.dp.test. {serial} 3600 900 604800 0
@ NS ns.dp.test.
"""
DP_TEST = """\
$ORIGIN dp.test.
@ 3600 IN SOA ns hostmaster 1 3600 900 604800 60
@ NS ns
ns A 127.0.0.1
"""
SERIALS = itertools.count(2)


def name(address: str, zone: str = "bl.test") -> str:
    return reversed_name(address, zone) + "."


def bl_zone(serial: int, listed: Mapping[str, tuple[str, str | None]] | None = None, servfail: tuple[str, ...] = ()) -> str:
    """bl.test: the test points (IPv4 and IPv6), the addresses in `listed` (code, TXT), the
    names of `servfail` as CNAMEs into broken.test (which NSD answers with SERVFAIL), and fixed
    entries for the verdict tests."""
    lines = [
        "$ORIGIN bl.test.",
        HEADER.format(serial=serial),
        f'{name("127.0.0.2")} A 127.0.0.2',
        f'{name("127.0.0.2")} TXT "RFC 5782 test point"',
        f'{name("::ffff:7f00:2")} A 127.0.0.2',
        f'{name("192.0.2.252")} A 127.255.255.252',
        f'{name("192.0.2.255")} A 127.255.255.255',
        f'{name("192.0.2.99")} A 192.0.2.1',
        f'{name("192.0.2.60")} 60 A 127.0.0.4',
        f'{name("192.0.2.60")} 60 TXT "listed for a minute"',
        f'{name("192.0.2.50")} CNAME 50.broken.test.',
    ]
    for address, (code, reason) in (listed or {}).items():
        lines.append(f"{name(address)} A {code}")
        if reason is not None:
            lines.append(f'{name(address)} TXT "{reason}"')
    for address in servfail:
        lines.append(f"{name(address)} CNAME x.broken.test.")
    return "\n".join(lines) + "\n"


ZONES: dict[str, str | None] = {
    "dp.test": DP_TEST,
    "bl.test": bl_zone(1),
    # The list refusing every query (Spamhaus's answer to a query through a public resolver).
    "refusing.test": "$ORIGIN refusing.test.\n" + HEADER.format(serial=1) + "* A 127.255.255.254\n",
    # A lapsed list that lists everything: 127.0.0.1 too, so it fails the test points.
    "failing.test": "$ORIGIN failing.test.\n" + HEADER.format(serial=1) + "* A 127.0.0.2\n* TXT \"everything\"\n",
    "broken.test": None,
}


@pytest.fixture(scope="module")
def bl_dns() -> Iterator[NsdServer]:
    if nsd_binary() is None:
        pytest.skip("nsd is not installed: run scripts/install-test-servers.sh")
    server = NsdServer(ZONES)
    server.start()
    yield server
    server.close()


def serve(nsd: NsdServer, listed: Mapping[str, tuple[str, str | None]] | None = None, servfail: tuple[str, ...] = ()) -> None:
    """Reloads bl.test with these listings (and nothing else listed)."""
    serial = next(SERIALS)
    nsd.reload("bl.test", bl_zone(serial, listed, servfail), serial)


def fresh_resolver(nsd: NsdServer, *, manual_clock: bool = False) -> Resolver:
    """The relay's resolver type on NSD; the cache keeps TTL-0 answers for no time at all, so a
    reloaded zone is seen by the next cycle."""
    config = ResolverConfig.from_strings([nsd.address], timeout=2.0, min_ttl=0.0, unknown_ttl=0.0)
    return Resolver(config, cache=config.make_cache(manual_clock=manual_clock))


# --- names and verdicts ---------------------------------------------------------------------


def test_reversed_names_follow_rfc_5782() -> None:
    assert reversed_name("192.0.2.99", "zen.spamhaus.org") == "99.2.0.192.zen.spamhaus.org"
    # RFC 5782 §2.4's example.
    assert reversed_name("2001:db8:1:2:3:4:567:89ab", "ugly.example.com.") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
    )
    assert reversed_name("::FFFF:7F00:2", "BL.test") == "2.0.0.0.0.0.f.7.f.f.f.f" + ".0" * 20 + ".bl.test"


@given(st.ip_addresses(), st.sampled_from(["bl.test", "BL.Test.", "zen.spamhaus.org"]))
def test_a_reversed_name_reads_back_as_its_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> None:
    name = reversed_name(address, zone)
    suffix = "." + zone.strip(".").lower()
    assert name.endswith(suffix)
    labels = name.removesuffix(suffix).split(".")
    if address.version == 4:
        assert len(labels) == 4 and ipaddress.ip_address(".".join(reversed(labels))) == address
    else:
        nibbles = "".join(reversed(labels))
        assert len(labels) == 32 and all(len(n) == 1 for n in labels)
        assert ipaddress.ip_address(":".join(nibbles[i : i + 4] for i in range(0, 32, 4))) == address


def test_verdicts_and_test_points_from_nsd(bl_dns: NsdServer, aio_run: Run) -> None:
    serve(bl_dns, {NORMAL_A: ("127.0.0.3", "spam seen from 127.0.2.2"), NORMAL_V6: ("127.0.0.2", None)})
    dnsbl = Dnsbl(fresh_resolver(bl_dns))

    async def main() -> dict[str, Any]:
        names = [NORMAL_A, NORMAL_B, NORMAL_V6, HIGH_RISK_V6, "192.0.2.252", "192.0.2.255", "192.0.2.99", "192.0.2.50"]
        found: dict[str, Any] = {a: await dnsbl.lookup(a, "bl.test") for a in names}
        found["refusing"] = await dnsbl.lookup(NORMAL_B, "refusing.test")
        for zone in ("bl.test", "refusing.test", "failing.test", "broken.test"):
            for family in (4, 6):
                found[f"{zone}/{family}"] = await dnsbl.test_points(zone, family)
        return found

    found = aio_run(main())
    listed = found[NORMAL_A]
    assert (listed.verdict, listed.codes, listed.reason) == ("listed", ("127.0.0.3",), "spam seen from 127.0.2.2")
    assert (found[NORMAL_V6].verdict, found[NORMAL_V6].codes, found[NORMAL_V6].reason) == ("listed", ("127.0.0.2",), None)
    assert (found[NORMAL_B].verdict, found[NORMAL_B].detail) == ("not-listed", "nxdomain")
    assert found[HIGH_RISK_V6].verdict == "not-listed"
    # Refusals are never listings, and say what the list meant.
    assert (found["192.0.2.252"].verdict, found["192.0.2.252"].detail) == ("refused", "127.255.255.252: typo in the zone name")
    assert found["192.0.2.255"].detail == "127.255.255.255: excessive number of queries"
    assert found["refusing"].verdict == "refused" and found["refusing"].codes == ("127.255.255.254",)
    assert "public" in found["refusing"].detail
    # Not a DNSBL answer (outside 127/8), and SERVFAIL: unknown.
    assert found["192.0.2.99"].verdict == "unknown" and "outside 127.0.0.0/8" in found["192.0.2.99"].detail
    assert (found["192.0.2.50"].verdict, found["192.0.2.50"].detail) == ("unknown", "servfail")
    states = {key: found[key].state for key in found if "/" in key}
    assert states == {
        "bl.test/4": "ok", "bl.test/6": "ok",
        "refusing.test/4": "refused", "refusing.test/6": "refused",
        "failing.test/4": "broken", "failing.test/6": "broken",
        "broken.test/4": "unknown", "broken.test/6": "unknown",
    }
    assert found["failing.test/4"].detail == "test point 127.0.0.1 is listed"


def test_answers_live_for_their_ttl_in_the_resolver_cache(bl_dns: NsdServer) -> None:
    resolver = fresh_resolver(bl_dns, manual_clock=True)
    dnsbl = Dnsbl(resolver)

    async def main() -> list[int]:
        sent = []
        first = await dnsbl.lookup("192.0.2.60", "bl.test")
        sent.append(resolver.queries)  # A and TXT
        again = await dnsbl.lookup("192.0.2.60", "bl.test")
        sent.append(resolver.queries)
        assert again is first and first.verdict == "listed" and first.ttl == 60
        resolver.cache.advance_clock(59)
        await dnsbl.lookup("192.0.2.60", "bl.test")
        sent.append(resolver.queries)
        resolver.cache.advance_clock(2)
        await dnsbl.lookup("192.0.2.60", "bl.test")
        sent.append(resolver.queries)
        return sent

    assert asyncio.run(main()) == [2, 2, 2, 4]
    assert resolver.cache.remaining_ttl("dnsbl", reversed_name("192.0.2.60", "bl.test")) == pytest.approx(60)


def test_query_volume_formula() -> None:
    addresses = [ipaddress.ip_address(a) for a in ("192.0.2.1", "192.0.2.2", "2001:db8::1")]
    # Per zone: 3 addresses + 2 test points for each of the two families.
    assert queries_per_cycle(addresses, zones=3) == 3 * (3 + 4)
    text = """
[pools.normal]
source_addresses = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13", "192.0.2.14", "192.0.2.15"]
[pools.high-risk]
source_addresses = ["198.51.100.7", "198.51.100.8"]
[dnsbl]
zones = ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org"]
interval = "15m"
"""
    conf = cfg.loads(text)
    # 96 cycles a day x 3 zones x (8 addresses + 2 test points): the example figure of docs/operations/blocklist-watch.md.
    assert queries_per_day(conf) == 96 * 3 * 10 == 2880


def test_dnsbl_configuration_is_validated() -> None:
    base = '[pools.normal]\nsource_addresses = ["192.0.2.1"]\n[pools.high-risk]\nsource_addresses = ["192.0.2.2"]\n'
    conf = cfg.loads(base + '[dnsbl]\nzones = ["Zen.Spamhaus.org."]\nnameservers = ["127.0.0.1:5353"]\n')
    assert conf.dnsbl.zones == ("zen.spamhaus.org",) and conf.dnsbl.interval == 900 and conf.dnsbl.normal_listed == "drain"
    assert conf.dnsbl.nameservers == (("127.0.0.1", 5353),)
    for bad, problem in [
        ('zones = ["a.test", "A.test"]', "dnsbl.zones[1]: 'a.test' is listed twice"),
        ('normal_listed = "ignore"', "dnsbl.normal_listed: must be 'drain' or 'alert'"),
        ('zones = ["not a zone"]', "dnsbl.zones[0]: not a domain name"),
        ('nameservers = ["resolver.example"]', "dnsbl.nameservers[0]"),
        ("interval = 0", "dnsbl.interval: must be longer than zero"),
    ]:
        with pytest.raises(cfg.ConfigError) as error:
            cfg.loads(base + "[dnsbl]\n" + bad + "\n")
        assert str(error.value).startswith(problem), (bad, str(error.value))


# --- the relay -------------------------------------------------------------------------------


def watch_toml(
    tmp_path: Path,
    sink_port: int,
    *,
    zones: tuple[str, ...] = ("bl.test",),
    normal: tuple[str, ...] = (NORMAL_A, NORMAL_B, NORMAL_V6),
    high_risk: tuple[str, ...] = (HIGH_RISK, HIGH_RISK_V6),
    normal_listed: str = "drain",
    interval: str = "1h",
    admin: bool = True,
    dnsbl_extra: str = "",
    extra: str = "",
) -> str:
    """Two pools on loopback addresses that are not RFC 5782 test points, delivering to a sink
    on 127.0.0.1 one message per connection (so each message picks its source address anew)."""
    pool = f"""
delivery = "smarthost"
smarthost = "127.0.0.1:{sink_port}"
idle_timeout = "100ms"
max_messages_per_connection = 1
retry = {{ initial = "100ms", maximum = "200ms", jitter = 0.0 }}
"""
    text = f"""
hostname = "relay.test"
[listener]
address = "127.0.0.1:{free_port()}"
trusted_score_networks = ["127.0.0.1/32"]
[spool]
directory = "{tmp_path / 'spool'}"
[policy]
score_header = "X-Spam-Score"
[dns]
check_sender_domain = false
[pools.normal]
source_addresses = {json.dumps(list(normal))}
{pool}
[pools.high-risk]
source_addresses = {json.dumps(list(high_risk))}
{pool}
[observe]
flush_interval = "50ms"
[dnsbl]
zones = {json.dumps(list(zones))}
interval = "{interval}"
normal_listed = "{normal_listed}"
{dnsbl_extra}
"""
    if admin:
        # Only reads here: the open routes, no token (tests/test_admin.py tests the credentials).
        text += f'[admin]\naddress = "127.0.0.1:{free_port()}"\nopen_reads = true\nopen_metrics = true\n'
    return text + extra


def watch_config(tmp_path: Path, sink_port: int, **options: Any) -> RelayConfig:
    return cfg.loads(watch_toml(tmp_path, sink_port, **options))


@contextlib.asynccontextmanager
async def running(conf: RelayConfig, nsd: NsdServer, *, seed: int = 3, listen: bool = True, **kwargs: Any) -> AsyncIterator[Relay]:
    relay = Relay(conf, dnsbl_resolver=fresh_resolver(nsd), **kwargs)
    await relay.start()
    assert relay.engine is not None
    # Reproducible choices among a pool's addresses (which would otherwise be random).
    relay.engine.connector.rng = random.Random(seed)
    if listen:
        await relay.listen()
    try:
        yield relay
    finally:
        await relay.stop()


def watch_of(relay: Relay) -> BlocklistWatch:
    assert relay.dnsbl is not None
    return relay.dnsbl


async def send(conf: RelayConfig, count: int, *, tag: str, spam: bool = False) -> None:
    for n in range(count):
        extra = "X-Spam-Score: 9.5\r\n" if spam else ""
        content = message(f"{tag} {n}", extra_headers=extra, message_id=f"<{tag}-{n}@sender.test>")
        await aiosmtplib.send(content, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=conf.listener.port, start_tls=False)


def peers(mx: Sink, tag: str) -> list[str]:
    return [d.peer for d in mx.deliveries if f"Subject: {tag} ".encode() in d.content]


async def get_json(conf: RelayConfig, path: str) -> Any:
    assert conf.admin.address is not None
    host, port = conf.admin.address
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}{path}") as response:
        assert response.status == 200
        return await response.json()


async def scrape(conf: RelayConfig) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    assert conf.admin.address is not None
    host, port = conf.admin.address
    async with aiohttp.ClientSession() as session, session.get(f"http://{host}:{port}/metrics") as response:
        text = await response.text()
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def listed_metric(metrics: Mapping[str, Mapping[tuple[tuple[str, str], ...], float]], address: str, pool: str, zone: str = "bl.test") -> float | None:
    return metrics.get("deliverypool_dnsbl_listed", {}).get((("address", address), ("pool", pool), ("zone", zone)))


def test_a_listed_normal_address_is_drained_and_returns_after_delisting(
    bl_dns: NsdServer, aio_run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    serve(bl_dns)
    port = free_port()
    conf = watch_config(tmp_path, port)
    caplog.set_level(logging.INFO, logger="deliverypool")

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx, running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            assert watch.leader
            await watch.check_now()
            await send(conf, 12, tag="before")
            await mx.wait_for(12)
            # Both normal addresses carry mail while neither is listed.
            assert set(peers(mx, "before")) == {NORMAL_A, NORMAL_B}

            # NORMAL_A, the normal IPv6 address and a high-risk address get listed.
            serve(bl_dns, {NORMAL_A: ("127.0.0.3", "spam trap hits from 127.0.2.2"), NORMAL_V6: ("127.0.0.2", None), HIGH_RISK: ("127.0.0.4", "expected")})
            await watch.check_now()
            alerts = await get_json(conf, "/api/alerts")
            view = await get_json(conf, "/api/dnsbl")
            metrics = await scrape(conf)

            await send(conf, 12, tag="drained")
            await send(conf, 3, tag="spam", spam=True)
            await mx.wait_for(27)
            assert set(peers(mx, "drained")) == {NORMAL_B}  # the other address carries the mail
            assert set(peers(mx, "spam")) == {HIGH_RISK}  # a listed high-risk address is not drained

            # Delisted: back in rotation.
            serve(bl_dns)
            await watch.check_now()
            await send(conf, 12, tag="after")
            await mx.wait_for(39)
            assert NORMAL_A in peers(mx, "after")
            after = await get_json(conf, "/api/alerts")
            view_after = await get_json(conf, "/api/dnsbl")

            async def counted() -> bool:
                checks = (await scrape(conf)).get("deliverypool_dnsbl_checks_total", {})
                return sum(checks.values()) == 5 * watch.cycles

            await eventually(counted, what="the checks counter")
            metrics_after = await scrape(conf)
            cycles = watch.cycles

        firing = {a["address"]: a for a in alerts["active"] if a["type"] == "dnsbl-listed"}
        assert set(firing) == {NORMAL_A, NORMAL_V6, HIGH_RISK}
        normal = firing[NORMAL_A]
        assert (normal["severity"], normal["pool"], normal["zone"], normal["codes"]) == ("critical", "normal", "bl.test", ["127.0.0.3"])
        assert normal["reason"] == "spam trap hits from 127.0.2.2" and normal["drained"] is True
        assert normal["in_rotation"] == {"normal": [NORMAL_B]}
        hr = firing[HIGH_RISK]
        assert (hr["severity"], hr["expected"], hr["drained"], hr["pool"]) == ("info", True, False, "high-risk")
        # The log: critical for the normal address, info for the high-risk one.
        levels = {r.getMessage().split(" {")[0]: r.levelname for r in caplog.records if r.name == "deliverypool.alerts"}
        assert levels[f"dnsbl-listed firing address={NORMAL_A} pool=normal zone=bl.test"] == "CRITICAL"
        assert levels[f"dnsbl-listed firing address={HIGH_RISK} pool=high-risk zone=bl.test"] == "INFO"
        assert any(f"{NORMAL_A} drained from pool normal" in r.getMessage() for r in caplog.records)

        assert listed_metric(metrics, NORMAL_A, "normal") == 1.0
        assert listed_metric(metrics, NORMAL_V6, "normal") == 1.0
        assert listed_metric(metrics, NORMAL_B, "normal") == 0.0
        assert listed_metric(metrics, HIGH_RISK, "high-risk") == 1.0
        assert listed_metric(metrics_after, NORMAL_A, "normal") == 0.0
        # Label values from the configuration and CHECK_RESULTS only, never from DNS answers.
        allowed = {"address": {NORMAL_A, NORMAL_B, NORMAL_V6, HIGH_RISK, HIGH_RISK_V6}, "pool": {"normal", "high-risk"}, "zone": {"bl.test"}, "result": set(CHECK_RESULTS)}
        for family in ("deliverypool_dnsbl_listed", "deliverypool_dnsbl_checks_total"):
            assert metrics_after[family]
            for labels in metrics_after[family]:
                assert all(value in allowed[key] for key, value in labels), (family, labels)
        assert len(metrics_after["deliverypool_dnsbl_listed"]) == 5  # one per configured address and zone
        checks = metrics_after["deliverypool_dnsbl_checks_total"]
        # Five addresses a cycle (the first cycle at start, and the test's three): three listings.
        assert cycles == 4
        assert checks[(("result", "listed"), ("zone", "bl.test"))] == 3
        assert checks[(("result", "not-listed"), ("zone", "bl.test"))] == 5 * cycles - 3

        assert view["drained"] == {"normal": [NORMAL_A, NORMAL_V6]}
        assert view["in_rotation"]["normal"] == [NORMAL_B] and view["in_rotation"]["high-risk"] == [HIGH_RISK, HIGH_RISK_V6]
        row = next(a for a in view["addresses"] if a["address"] == NORMAL_A)
        assert row["drained"] is True and row["zones"]["bl.test"]["state"] == "listed"
        assert view["zones"]["bl.test"]["ipv4"]["state"] == "ok" and view["zones"]["bl.test"]["ipv6"]["state"] == "ok"
        assert view_after["drained"] == {}
        resolved = {a["address"]: a for a in after["resolved"] if a["type"] == "dnsbl-listed"}
        assert set(resolved) == {NORMAL_A, NORMAL_V6, HIGH_RISK} and not [a for a in after["active"] if a["type"] == "dnsbl-listed"]
        assert resolved[NORMAL_A]["id"] == normal["id"] and resolved[NORMAL_A]["state"] == "resolved"

    aio_run(main())


def test_the_last_normal_address_drained_mail_waits_never_borrows(bl_dns: NsdServer, tmp_path: Path) -> None:
    port = free_port()
    conf = watch_config(tmp_path, port, normal=(NORMAL_A,), admin=False)
    serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx, running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            await watch.check_now()
            assert watch.in_rotation("normal") == []
            await send(conf, 2, tag="waits")
            # Retried (every 100-200 ms) and deferred each time: nothing reaches the sink.
            await eventually(lambda: all(r.attempts >= 2 for r in listing(conf.spool.directory)), what="two deferrals")
            rows = listing(conf.spool.directory)
            assert mx.deliveries == [] and {r.state for r in rows} <= {"deferred", "in-flight"}
            assert all("drained" in (r.last_reply or "") for r in rows), [r.last_reply for r in rows]
            serve(bl_dns)
            await watch.check_now()
            await mx.wait_for(2)
        assert set(peers(mx, "waits")) == {NORMAL_A}

    asyncio.run(main())


def test_an_open_connection_from_a_drained_address_carries_no_more_mail(bl_dns: NsdServer, tmp_path: Path) -> None:
    port = free_port()
    text = watch_toml(tmp_path, port, normal=(NORMAL_A,), admin=False)
    # Connections kept open for more mail, as in production.
    text = text.replace('idle_timeout = "100ms"\nmax_messages_per_connection = 1', 'idle_timeout = "30s"\nmax_messages_per_connection = 100')
    conf = cfg.loads(text)
    serve(bl_dns)

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx, running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            await watch.check_now()
            await send(conf, 1, tag="first")
            await mx.wait_for(1)
            assert mx.handler.sessions == 1  # still open, idle, bound to NORMAL_A
            serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})
            await watch.check_now()
            await send(conf, 1, tag="second")
            await eventually(lambda: mx.handler.sessions == 0, what="the drained connection closed")
            await eventually(lambda: any(r.attempts >= 1 for r in listing(conf.spool.directory) if r.state != "delivered"), what="a deferral")
            assert len(mx.deliveries) == 1
            serve(bl_dns)

    asyncio.run(main())


def test_servfail_keeps_the_previous_state(bl_dns: NsdServer, tmp_path: Path) -> None:
    port = free_port()
    # With the observer off too: the watch still drains (its alerts are only logged).
    conf = cfg.loads(watch_toml(tmp_path, port, admin=False).replace('flush_interval = "50ms"', 'flush_interval = "50ms"\nenabled = false'))
    assert not conf.observe.enabled
    serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})

    async def main() -> None:
        async with running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            await watch.check_now()
            assert watch.drained.is_drained("normal", NORMAL_A)
            # NORMAL_A's name now fails (SERVFAIL), NORMAL_B's too: neither changes.
            serve(bl_dns, servfail=(NORMAL_A, NORMAL_B))
            cycle = await watch.check_now()
            assert cycle.answers[(NORMAL_A, "bl.test")].verdict == "unknown"
            view = watch.view()
            cells = {a["address"]: a["zones"]["bl.test"] for a in view["addresses"]}
            assert cells[NORMAL_A]["state"] == "listed" and cells[NORMAL_A]["listed"] is True
            assert "servfail" in cells[NORMAL_A]["detail"]
            assert cells[NORMAL_B]["state"] == "not-listed"
            assert watch.drained.is_drained("normal", NORMAL_A) and not watch.drained.is_drained("normal", NORMAL_B)
            # The answer comes back: delisted.
            serve(bl_dns)
            await watch.check_now()
            assert not watch.drained.is_drained("normal", NORMAL_A)

    asyncio.run(main())


def test_a_refusing_zone_alerts_and_never_lists(bl_dns: NsdServer, tmp_path: Path) -> None:
    conf = watch_config(tmp_path, free_port(), zones=("refusing.test", "bl.test"))
    serve(bl_dns)

    async def main() -> None:
        async with running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            await watch.check_now()
            await watch.check_now()  # once only: the refusal is still going on
            alerts = await get_json(conf, "/api/alerts")
            view = await get_json(conf, "/api/dnsbl")
            metrics = await scrape(conf)
        refused = [a for a in alerts["active"] if a["type"] == "dnsbl-refused"]
        assert len(refused) == 1 and refused[0]["zone"] == "refusing.test" and "127.255.255.254" in refused[0]["detail"]
        assert refused[0]["severity"] == "warning"
        assert not [a for a in alerts["active"] if a["type"] == "dnsbl-listed"]
        assert view["drained"] == {} and view["zones"]["refusing.test"]["refusing"] is True
        assert view["zones"]["refusing.test"]["ipv4"]["state"] == "refused"
        assert {a["zones"]["refusing.test"]["state"] for a in view["addresses"]} == {"refused"}
        assert {a["zones"]["bl.test"]["state"] for a in view["addresses"]} == {"not-listed"}
        assert listed_metric(metrics, NORMAL_A, "normal", "refusing.test") == 0.0

    asyncio.run(main())


def test_a_zone_failing_its_test_points_is_broken_and_its_answers_ignored(bl_dns: NsdServer, tmp_path: Path) -> None:
    conf = watch_config(tmp_path, free_port(), zones=("failing.test",))

    async def main() -> None:
        async with running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            cycle = await watch.check_now()
            alerts = await get_json(conf, "/api/alerts")
            view = watch.view()

            async def skipped() -> bool:
                checks = (await scrape(conf)).get("deliverypool_dnsbl_checks_total", {})
                return checks.get((("result", "skipped"), ("zone", "failing.test")), 0.0) == 5 * watch.cycles

            await eventually(skipped, what="skipped checks counted")
            # The zone is repaired: the alert resolves.
            good = "$ORIGIN failing.test.\n" + HEADER.format(serial=5) + f'{name("127.0.0.2", "failing.test")} A 127.0.0.2\n{name("::ffff:7f00:2", "failing.test")} A 127.0.0.2\n'
            bl_dns.reload("failing.test", good, 5)
            try:
                await watch.check_now()
                after = await get_json(conf, "/api/alerts")
            finally:
                bl_dns.reload("failing.test", ZONES["failing.test"].replace(" 1 3600", " 6 3600"), 6)  # type: ignore[union-attr]
        # The zone lists everything, NORMAL_A included: none of it counts.
        assert cycle.answers == {}
        broken = [a for a in alerts["active"] if a["type"] == "dnsbl-zone-broken"]
        assert {(a["zone"], a["family"]) for a in broken} == {("failing.test", "ipv4"), ("failing.test", "ipv6")}
        assert broken[0]["detail"].startswith("test point")
        assert view["drained"] == {} and {a["zones"]["failing.test"]["listed"] for a in view["addresses"]} == {False}
        assert not [a for a in after["active"] if a["type"] == "dnsbl-zone-broken"]
        assert {a["id"] for a in after["resolved"] if a["type"] == "dnsbl-zone-broken"} == {a["id"] for a in broken}

    asyncio.run(main())


def test_normal_listed_alert_only_keeps_the_address_in_rotation(bl_dns: NsdServer, tmp_path: Path) -> None:
    hook = free_port()
    webhook = f'[alerts]\nwebhook = "http://127.0.0.1:{hook}/hook"\nretry_initial = "50ms"\n'
    conf = watch_config(tmp_path, free_port(), normal_listed="alert", extra=webhook)
    serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})

    async def main() -> None:
        async with webhook_receiver(hook) as received, running(conf, bl_dns) as relay:
            watch = watch_of(relay)
            await watch.check_now()
            alerts = await get_json(conf, "/api/alerts")
            assert relay.engine is not None and not relay.engine.connector.is_drained("normal", NORMAL_A)
            assert watch.in_rotation("normal") == [NORMAL_A, NORMAL_B, NORMAL_V6]
            await eventually(lambda: bool(received), what="the alert at the webhook")
        [alert] = [a for a in alerts["active"] if a["type"] == "dnsbl-listed"]
        assert (alert["address"], alert["severity"], alert["drained"]) == (NORMAL_A, "critical", False)
        assert alert["action"].startswith("alert only")
        assert [(a["type"], a["id"], a["state"]) for a in received] == [("dnsbl-listed", alert["id"], "firing")]

    asyncio.run(main())


def test_every_worker_follows_the_drained_set_and_a_restart_keeps_it(bl_dns: NsdServer, tmp_path: Path) -> None:
    """Worker 0 (the leader, its own periodic cycles) and worker 1 in one process, as the
    supervisor runs them: the follower learns the drained set from SPOOL/state.sqlite3 and sends
    only from the other address; a restarted worker has it before it delivers anything."""
    port = free_port()
    conf = watch_config(tmp_path, port, interval="100ms", admin=False)
    root = conf.spool.directory
    serve(bl_dns)

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx, running(conf, bl_dns, listen=False, spool_directory=shard_directory(root, 0)) as leader:
            async with running(conf, bl_dns, listen=False, spool_directory=shard_directory(root, 1)) as follower:
                assert leader.dnsbl is not None and follower.dnsbl is not None and not follower.dnsbl.leader
                assert follower.dnsbl.resolver is None  # followers send no blocklist queries
                serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})
                await eventually(lambda: follower.dnsbl is not None and follower.dnsbl.drained.is_drained("normal", NORMAL_A), what="the follower's drained set")
                for n in range(10):
                    await follower.accept(
                        mail_from="alice@sender.test", recipients=("bob@dest.test",), content=message(f"worker1 {n}", message_id=f"<w1-{n}@t>"), peer="127.0.0.1", helo="client"
                    )
                await mx.wait_for(10)
                assert set(peers(mx, "worker1")) == {NORMAL_B}
            # A new worker 1 on the same spool: drained from its start, before any cycle of its own.
            restarted = Relay(conf, spool_directory=shard_directory(root, 1))
            await restarted.start()
            try:
                assert restarted.dnsbl is not None and restarted.dnsbl.drained.is_drained("normal", NORMAL_A)
            finally:
                await restarted.stop()
        serve(bl_dns)

    asyncio.run(main())


@pytest.mark.slow
def test_deliverypool_relay_with_two_workers_drains_in_both(bl_dns: NsdServer, tmp_path: Path) -> None:
    """`deliverypool relay --workers 2`, the blocklist queries on [dnsbl] nameservers: worker 0
    lists NORMAL_A at its first cycle, worker 1 learns it from SPOOL/state.sqlite3, and the mail
    each of them takes leaves from NORMAL_B only."""
    from tests.test_crash import RelayProcess

    serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})
    port = free_port()
    path = tmp_path / "relay.toml"
    # Only this machine's addresses: deliverypool relay checks at start that each source address
    # binds (the IPv6 documentation addresses of the other tests do not).
    path.write_text(
        watch_toml(tmp_path, port, normal=(NORMAL_A, NORMAL_B), high_risk=(HIGH_RISK,), dnsbl_extra=f'nameservers = ["{bl_dns.address}"]')
    )
    conf = cfg.load(path)
    relay = RelayProcess(path, conf.listener.port, "asyncio", workers=2)

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx:
            await relay.start()
            try:
                # Worker 1 logs the drained set it read (worker 0 has it from its own cycle).
                await eventually(lambda: "drained source addresses now normal: 127.0.2.2" in relay.log.read_text(), what="worker 1's drained set")
                view = await get_json(conf, "/api/dnsbl")
                assert view["drained"] == {"normal": [NORMAL_A]}
                sent = 0
                while True:  # each message on a connection of its own: the kernel picks the worker
                    by_shard = [read_counters(shard_directory(conf.spool.directory, k))["accepted"] for k in (0, 1)]
                    if sent >= 20 and min(by_shard) >= 8:
                        break
                    assert sent < 400, f"one worker took every connection: {by_shard}"
                    await send(conf, 1, tag=f"w{sent}")
                    sent += 1
                await mx.wait_for(sent, timeout=30)
            finally:
                relay.stop()
        assert {d.peer for d in mx.deliveries} == {NORMAL_B}

    asyncio.run(main())
    serve(bl_dns)


def test_dnsbl_check_command_prints_address_by_zone(bl_dns: NsdServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serve(bl_dns, {NORMAL_A: ("127.0.0.3", "spam trap"), HIGH_RISK: ("127.0.0.2", None)})
    nameservers = f'nameservers = ["{bl_dns.address}"]'
    path = tmp_path / "relay.toml"
    path.write_text(watch_toml(tmp_path, free_port(), zones=("bl.test", "failing.test"), interval="15m", admin=False, dnsbl_extra=nameservers))

    assert cli_main(["dnsbl", "check", "--config", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert cli_main(["dnsbl", "check", "--config", str(path)]) == 1
    table = capsys.readouterr().out
    serve(bl_dns)
    good = tmp_path / "good.toml"
    good.write_text(watch_toml(tmp_path, free_port(), admin=False, dnsbl_extra=nameservers))
    assert cli_main(["dnsbl", "check", "--config", str(good)]) == 0
    clean = capsys.readouterr().out
    none = tmp_path / "none.toml"
    none.write_text(watch_toml(tmp_path, free_port(), admin=False).replace('zones = ["bl.test"]', "zones = []"))
    assert cli_main(["dnsbl", "check", "--config", str(none)]) == 2
    assert "has no [dnsbl] zones" in capsys.readouterr().err

    cells = {a["address"]: a["zones"] for a in report["addresses"]}
    assert cells[NORMAL_A]["bl.test"] == {"verdict": "listed", "codes": ["127.0.0.3"], "reason": "spam trap", "detail": ""}
    assert cells[NORMAL_B]["bl.test"]["verdict"] == "not-listed" and cells[HIGH_RISK]["bl.test"]["verdict"] == "listed"
    assert cells[NORMAL_A]["failing.test"]["verdict"] is None
    assert report["zones"]["failing.test"]["ipv4"]["state"] == "broken" and report["zones"]["bl.test"]["ipv6"]["state"] == "ok"
    # Per zone 2 x 2 test points, then in bl.test 5 addresses and the TXT of the two listings.
    assert report["queries"] == 4 + 4 + 5 + 2 and report["queries_per_day"] == 96 * 2 * (5 + 4)
    assert any("127.0.2.2 (normal) is listed in bl.test" in p for p in report["problems"])
    assert not any(HIGH_RISK in p for p in report["problems"])  # expected, not a problem
    lines = table.splitlines()
    assert lines[0].split() == ["ADDRESS", "POOL", "bl.test", "failing.test"]
    row = next(line for line in lines if line.startswith(NORMAL_A))
    assert row.split()[:4] == [NORMAL_A, "normal", "LISTED", "127.0.0.3"] and row.split()[-1] == "-"
    assert "zone failing.test ipv4: broken" in table and "PROBLEM:" in table
    assert "PROBLEM" not in clean and "LISTED" not in clean
