"""A fleet of nodes sharing one real redis-server (``[state] redis``): the store's lease, fencing
and bounded streams; observers on a simulated clock for takeovers and Redis outages; and, marked
slow, three ``deliverypool relay`` processes on loopback with a harvest surge sent a third
through each, a blocklist listing drained on all three, the leader killed, and Redis killed under
load (docs/operations/fleet.md)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import redis as redis_client

from deliverypool import config as cfg
from deliverypool.cli.monitor import fleet_caption, monitor_command
from deliverypool.config import RelayConfig
from deliverypool.observe.service import Observer
from deliverypool.state.fleet import FleetStore
from deliverypool.testing.scenarios import SCENARIOS
from tests.redis_server import RedisServer, redis_server
from tests.smtp_sinks import eventually, free_port, sink, webhook_receiver

BASE = """
hostname = "relay.test"
[spool]
directory = "{spool}"
[dns]
check_sender_domain = false
[pools.normal]
source_addresses = ["127.0.0.2"]
[pools.high-risk]
source_addresses = ["127.0.0.3"]
[tenants.acme]
networks = ["127.0.1.0/24"]
domains = ["acme.example"]
[monitor]
window = "60s"
baseline = "1h"
min_dsns = 12
interval = "10s"
[state]
redis = "{redis}"
key_prefix = "{prefix}:"
leader_ttl = "{ttl}"
timeout = "300ms"
"""


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def harvest_record(n: int) -> dict[str, Any]:
    """What a worker records of a directory-harvest DSN (observe/service.py `_window_record`)."""
    return {
        "s": ["5.1.1"], "c": ["bad-mailbox"], "r": [[f"guess{n}", "acme.example"]], "own": 1, "m": "mx.acme.example",
        "cl": "127.0.1.5", "k": False, "ft": False, "fp": f"fp{n}", "x": False, "loop": False,
    }


def ordinary_record(n: int) -> dict[str, Any]:
    return {
        "s": ["5.2.2"], "c": ["quota"], "r": [[f"user{n}", f"far{n % 7}.example"]], "own": 0, "m": f"mx.far{n % 7}.example",
        "cl": "127.0.1.5", "k": True, "ft": False, "fp": f"o{n}", "x": False, "loop": False,
    }


# --- the store ---------------------------------------------------------------------------------


def test_the_lease_is_one_nodes_until_it_expires_and_a_stale_holder_cannot_write(redis: RedisServer) -> None:
    alert = {"id": "a1", "type": "dsn-surge", "state": "firing", "tenant": "acme", "cause": "unknown"}

    async def main() -> None:
        a, b = FleetStore(redis.url, prefix="lease:"), FleetStore(redis.url, prefix="lease:")
        await a.open()
        await b.open()
        try:
            first = await a.acquire("a", 0.3)
            assert (first.held, first.node, first.epoch) == (True, "a", 1)
            bid = await b.acquire("b", 0.3)
            assert (bid.held, bid.node) == (False, "a")
            assert (await a.acquire("a", 0.3)).token == first.token  # a holds it still: renewed, same epoch
            assert await a.commit(first.token, alerts=[(alert, 1.0, None)], hashes=[("baselines", {"acme": "2.5"}, False)])
            await asyncio.sleep(0.45)  # a stalls past its lease (a paused VM)
            second = await b.acquire("b", 5)
            assert (second.held, second.node, second.epoch) == (True, "b", 2)
            # a wakes up: it can neither renew nor write what it decided meanwhile.
            assert not await a.renew(first.token, 0.3)
            late = dict(alert, id="a2")
            assert not await a.commit(first.token, alerts=[(late, 2.0, None)], hashes=[("baselines", {"acme": "99"}, False)])
            assert await b.commit(second.token, alerts=[(dict(alert, state="resolved"), 1.0, 3.0)])
            active, resolved = await b.alerts()
            assert active == [] and [x["id"] for x in resolved] == ["a1"]
            assert await b.hash("baselines") == {"acme": "2.5"}
            # Sender-limit alerts: stored once whoever raises them, resolved once.
            sender = {"id": "sr-x", "type": "sender-restricted", "state": "firing", "tenant": "acme", "cause": "per_day"}
            assert await a.fire_alert(sender, 5.0) and not await b.fire_alert(sender, 5.0)
            assert (await b.resolve_alert("sr-x", {"reason": "released"}, 6.0, 50) or {}).get("reason") == "released"
            assert await a.resolve_alert("sr-x", {"reason": "released"}, 6.0, 50) is None
            assert await b.resign(second.token) and await b.holder() is None
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_tenants_dsn_records_are_bounded_by_count_and_by_time(redis: RedisServer) -> None:
    async def main() -> tuple[int, int, int, int]:
        store = FleetStore(redis.url, prefix="bound:", window=60.0, dsns_per_tenant=100)
        brief = FleetStore(redis.url, prefix="bound:", window=0.05, dsns_per_tenant=100)  # kept 100 ms
        await store.open()
        await brief.open()
        try:
            now = time.time()
            await store.add([(now, "acme", "w", harvest_record(n)) for n in range(300)], {(int(now // 60), "acme", "dsns"): 300}, now=now)
            client = redis_client.Redis.from_url(redis.url)
            capped = int(client.xlen(store.dsn_key("acme")))
            memory = int(client.memory_usage(store.dsn_key("acme"), samples=0) or 0)
            last: dict[str, str] = {}
            read = await store.new_dsns(last)
            again = await store.new_dsns(last)
            assert list(read) == ["acme"] and len(read["acme"]) == 100 and again == {}
            assert read["acme"][-1][1] == harvest_record(299)
            assert await store.rates(int(now // 60) - 1, int(now // 60)) == {("acme", "dsns"): 300}
            await brief.add([(now, "globex", "w", ordinary_record(n)) for n in range(20)], {}, now=now)
            # The writer's clock, 250 ms on (kept: 100 ms); one record is late (written with an old time).
            await brief.add([(now + 0.25, "globex", "w", ordinary_record(99)), (now - 5, "globex", "w", ordinary_record(98))], {}, now=now + 0.25)
            timed = int(client.xlen(brief.dsn_key("globex")))
            client.close()
            return capped, timed, memory, len(last)
        finally:
            await store.close()
            await brief.close()

    capped, timed, memory, tenants = run(main())
    assert capped == 100 and timed == 2 and tenants == 1
    # ~250 bytes a record (docs/operations/fleet.md: memory per tenant).
    assert memory < 100 * 400, memory


# --- observers on a simulated clock ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def node_config(tmp_path: Path, name: str, redis: RedisServer, prefix: str, ttl: str = "600ms", state: str = "") -> RelayConfig:
    return cfg.loads(BASE.format(spool=tmp_path / name, redis=redis.url, prefix=prefix, ttl=ttl) + state)


@contextlib.asynccontextmanager
async def observer(config: RelayConfig, clock: Clock, name: str) -> AsyncIterator[Observer]:
    node = Observer(config, spool_root=config.spool.directory, worker="shard-0", leader=True, clock=clock, run_loops=False)
    assert node.fleet is not None
    node.fleet.node = name
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def feed(node: Observer, clock: Clock, records: list[dict[str, Any]]) -> None:
    node._dsns.extend((clock.now, "acme", node.worker, record) for record in records)
    await node.flush()


def test_a_takeover_keeps_the_firing_surge_and_the_baseline_and_fires_nothing_twice(redis: RedisServer, tmp_path: Path) -> None:
    """Two nodes' leading processes on one simulated clock: a learns a baseline and fires a
    harvest made of both nodes' DSNs; a stops renewing; b takes over with a's baseline, window and
    firing surge, fires nothing again and resolves a's alert by its id; a, waking up, writes nothing."""
    clock = Clock()

    async def main() -> None:
        async with observer(node_config(tmp_path, "a", redis, "take"), clock, "a") as a, observer(node_config(tmp_path, "b", redis, "take"), clock, "b") as b:
            assert a.fleet is not None and b.fleet is not None
            assert a.fleet.leading and not b.fleet.leading and b.fleet.holder == "a"
            for minute in range(12):  # 12 minutes at 2 DSNs a minute, half through each node: the baseline
                await feed(a if minute % 2 else b, clock, [ordinary_record(minute * 10 + i) for i in range(2)])
                for _ in range(6):
                    clock.now += 10
                    await a.fleet.tick()  # a renews its lease (the loop does, every third of it)
                    await a.evaluate()
            assert a.monitor is not None and a.monitor.learned
            assert a.monitor.windows["acme"].baseline > 0.1
            await feed(a, clock, [harvest_record(n) for n in range(7)])
            await feed(b, clock, [harvest_record(n) for n in range(7, 14)])
            clock.now += 10
            await a.fleet.tick()
            [fired] = await a.evaluate()
            assert (fired["state"], fired["cause"], fired["evidence"]["dsns"]) == ("firing", "directory-harvest", 7 + 7)
            frozen = a.monitor.windows["acme"].baseline

            await asyncio.sleep(0.7)  # a stops renewing (a dead or paused leader): its lease expires
            await b.fleet.tick()
            assert b.fleet.leading and b.monitor is not None
            assert b.monitor.windows["acme"].baseline == pytest.approx(frozen)
            assert b.monitor.learned and b.monitor.windows["acme"].alert is not None
            assert len(b.monitor.windows["acme"].records) == len(a.monitor.windows["acme"].records)
            clock.now += 10
            await b.fleet.tick()
            assert await b.evaluate() == []  # still firing: nothing fires twice

            assert await a.evaluate() == [] and not a.fleet.leading  # a wakes up: fenced out, it steps down
            clock.now += 70  # the window empties
            await b.fleet.tick()
            [resolved] = await b.evaluate()
            assert (resolved["state"], resolved["id"]) == ("resolved", fired["id"])
            active, done = await b.alerts()
            assert active == [] and [x["id"] for x in done if x["type"] == "dsn-surge"] == [fired["id"]]

    run(main())


def test_redis_away_the_records_wait_and_are_added_and_the_degraded_alert_clears(tmp_path: Path) -> None:
    clock = Clock()
    with redis_server() as server:
        config = node_config(tmp_path, "a", server, "away", ttl="1s", state="backlog = 50\n")

        async def main() -> None:
            async with observer(config, clock, "a") as node:
                fleet = node.fleet
                assert fleet is not None and fleet.leading
                server.kill()
                await feed(node, clock, [harvest_record(n) for n in range(10)])  # counted while Redis is away
                await fleet.tick()
                assert fleet.degraded
                await asyncio.sleep(0.2)
                active, _ = await node.alerts()  # this node's own view
                assert [a["type"] for a in active] == ["fleet-degraded"] and active[0]["node"] == "a"
                view = await node.tenant_view()
                assert view["fleet"]["degraded"] and set(view["tenants"]) == {"acme", "none"}
                clock.now += 120  # these are older than the window when Redis returns: they no longer count
                await feed(node, clock, [harvest_record(n) for n in range(100, 160)])  # 60: past the backlog of 50
                assert len(fleet.backlog) == 50 and fleet.dropped == 10 + 10
                server.start()
                await fleet.tick()
                await asyncio.sleep(0.2)
                assert not fleet.degraded and fleet.leading and fleet.added_late == 50
                client = redis_client.Redis.from_url(server.url)
                assert int(client.xlen(fleet.store.dsn_key("acme"))) == 50
                client.close()
                active, resolved = await node.alerts()
                assert not [a for a in active if a["type"] == "fleet-degraded"]
                cleared = next(a for a in resolved if a["type"] == "fleet-degraded")
                assert (cleared["added_late"], cleared["dropped"]) == (50, 20)

        run(main())


def test_a_node_starting_while_redis_is_away_comes_up_degraded_and_delivers(tmp_path: Path) -> None:
    """A relay whose fleet Redis does not answer at its start: it starts, accepts and delivers a
    message over SMTP, and says its view is its own."""
    from deliverypool.app import Relay

    sink_port = free_port()
    text = BASE.format(spool=tmp_path / "spool", redis=f"redis://127.0.0.1:{free_port()}/0", prefix="nobody", ttl="1s")
    text = text.replace("[pools.normal]\n", f'[pools.normal]\ndelivery = "smarthost"\nsmarthost = "127.0.0.1:{sink_port}"\n')
    text = text.replace("[spool]", f'[listener]\naddress = "127.0.0.1:{free_port()}"\n[spool]')
    conf = cfg.loads(text)

    async def main() -> None:
        async with sink("127.0.0.1", sink_port) as mx:
            relay = Relay(conf)
            await relay.start()
            await relay.listen()
            try:
                fleet = relay.observer.fleet
                assert fleet is not None and fleet.degraded and not fleet.leading
                await aiosmtplib.send(b"Subject: hi\r\n\r\nhi\r\n", sender="a@acme.example", recipients=["b@dest.test"],
                                      hostname="127.0.0.1", port=conf.listener.port, start_tls=False)
                await mx.wait_for(1)
                await eventually(lambda: bool(relay.observer.senders._tasks) is False, what="the alert stored")
                active, _ = await relay.observer.alerts()
                view = await relay.observer.tenant_view()
            finally:
                await relay.stop()
        assert [a["type"] for a in active] == ["fleet-degraded"]
        assert view["fleet"]["degraded"] and view["fleet"]["node"] == fleet.node

    run(main())


# --- three relay processes on loopback ---------------------------------------------------------

from tests.dnsserver import NsdServer  # noqa: E402
from tests.test_crash import RelayProcess  # noqa: E402
from tests.test_dnsbl import HIGH_RISK, NORMAL_A, NORMAL_B, bl_dns, serve, watch_toml  # noqa: E402, F401
from tests.test_monitor import FACTORY, TENANTS, send_dsn  # noqa: E402

TTL = 1.0  # leader_ttl of the process tests: a dead leader's jobs move within 4/3 s


class Node:
    def __init__(
        self, tmp_path: Path, name: str, sink_port: int, hook_port: int, redis: RedisServer, *, zones: tuple[str, ...] = (), extra: str = "", window: str = "3s"
    ) -> None:
        nameservers = extra
        # Only this machine's source addresses: deliverypool relay checks at start that each binds.
        text = watch_toml(tmp_path / name, sink_port, zones=zones, normal=(NORMAL_A, NORMAL_B), high_risk=(HIGH_RISK,), interval="1s", dnsbl_extra=nameservers)
        text += TENANTS + f"""
[monitor]
window = "{window}"
baseline = "24s"
min_dsns = 12
interval = "100ms"
[alerts]
webhook = "http://127.0.0.1:{hook_port}/hook"
retry_initial = "100ms"
[state]
redis = "{redis.url}"
key_prefix = "{tmp_path.name}:"
leader_ttl = "{TTL}s"
timeout = "2s"
"""
        path = tmp_path / name / "relay.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        self.config = cfg.load(path)
        self.port = self.config.listener.port
        self.node = f"{__import__('socket').gethostname()}:{self.port}"
        assert self.config.admin.address is not None
        self.admin = "http://%s:%d" % self.config.admin.address
        self.process = RelayProcess(path, self.port, "asyncio", workers=1)

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(self.admin + path) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    def log(self) -> str:
        return self.process.log.read_text()


@contextlib.asynccontextmanager
async def fleet_of_three(tmp_path: Path, redis: RedisServer, sink_port: int, hook_port: int, **options: Any) -> AsyncIterator[list[Node]]:
    nodes = [Node(tmp_path, name, sink_port, hook_port, redis, **options) for name in ("a", "b", "c")]
    await asyncio.gather(*(n.process.start() for n in nodes))
    try:
        async def one_leader() -> bool:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                views = [(await n.get("/api/tenants"))["fleet"] for n in nodes]
                return sum(v["leading"] for v in views) == 1 and all(len(v.get("nodes", ())) == 3 for v in views)
            return False

        await eventually(one_leader, timeout=30, what="one leader among three nodes")
        yield nodes
    finally:
        for n in nodes:
            n.process.stop()


async def leader_of(nodes: list[Node]) -> Node:
    """The node that says it leads (each says so of itself at once; of another within a third of the lease)."""
    leading = [n for n in nodes if (await n.get("/api/tenants"))["fleet"]["leading"]]
    assert len(leading) == 1, [n.node for n in leading]
    return leading[0]


async def send_mail(node: Node, tag: str) -> None:
    content = f"From: app@acme.example\r\nTo: bob@dest.test\r\nSubject: {tag}\r\nMessage-ID: <{tag}@acme.example>\r\n\r\nHi.\r\n".encode()
    await aiosmtplib.send(content, sender="app@acme.example", recipients=["bob@dest.test"], hostname="127.0.0.1", port=node.port,
                          source_address=("127.0.1.5", 0), start_tls=False, timeout=30)


async def send_harvest(node: Node, rng: random.Random, n: int) -> str:
    spec, _ = SCENARIOS["directory-harvest"](FACTORY, rng, "acme.example", n)
    await send_dsn(node.config, FACTORY.dsn(spec), source="127.0.1.5", rcpt=spec.original_from)
    return spec.recipient.split("@")[0]


@pytest.mark.slow
def test_three_nodes_one_surge_one_watch_and_the_leader_killed(redis: RedisServer, bl_dns: NsdServer, tmp_path: Path) -> None:
    """Three `deliverypool relay` processes sharing one Redis, the blocklists on NSD: a listed
    normal address is drained on all three (the sink sees only the other one) and only the leader
    queries; a directory harvest sent a third through each node (5 DSNs each, min_dsns 12) fires
    exactly one alert, from the leader, with the DSNs of all three as evidence; the leader is
    killed while the surge goes on: another node leads within the lease, with the same baseline
    and alert (no second one), its blocklist cycles go on from the same state, and it resolves
    the surge by its id."""
    serve(bl_dns, {NORMAL_A: ("127.0.0.2", "listed")})
    sink_port, hook_port = free_port(), free_port()
    nameservers = f'nameservers = ["{bl_dns.address}"]'

    async def main() -> None:
        async with sink("127.0.0.1", sink_port) as mx, webhook_receiver(hook_port) as hooks:
            async with fleet_of_three(tmp_path, redis, sink_port, hook_port, zones=("bl.test",), extra=nameservers) as nodes:
                first = await leader_of(nodes)

                async def drained_everywhere() -> bool:
                    views = [await n.get("/api/dnsbl") for n in nodes]
                    return all(v["drained"] == {"normal": [NORMAL_A]} and v["fleet"]["checked_by"] == first.node for v in views)

                await eventually(drained_everywhere, what="the drained set on every node")
                for i, node in enumerate(nodes * 4):  # each message on a connection of its own, on every node
                    await send_mail(node, f"mail-{i}")
                await mx.wait_for(12)
                assert {d.peer for d in mx.deliveries} == {NORMAL_B}

                async def learned() -> bool:
                    return bool((await nodes[1].get("/api/tenants"))["fleet"]["monitor"]["learned"])

                await eventually(learned, what="the monitor's learning period")
                rng = random.Random(5)
                for n in range(15):
                    await send_harvest(nodes[n % 3], rng, n)
                await eventually(lambda: any(h["type"] == "dsn-surge" for h in hooks), what="the surge alert")
                fired = next(h for h in hooks if h["type"] == "dsn-surge")
                views = [await n.get("/api/alerts") for n in nodes]
                before = (await nodes[1].get("/api/tenants"))["tenants"]["acme"]
                out = io.StringIO()  # deliverypool monitor, from a node that does not lead
                follower = next(n for n in nodes if n is not first)
                assert await asyncio.to_thread(monitor_command, follower.admin.removeprefix("http://"), as_json=True, out=out) == 0
                snapshot = json.loads(out.getvalue())

                # The surge goes on (4 DSNs a second) while the leader is killed.
                live = [n for n in nodes if n is not first]
                going = asyncio.Event()
                going.set()

                async def trickle() -> None:
                    n = 100
                    while going.is_set():
                        await send_harvest(live[n % 2], rng, n)
                        n += 1
                        await asyncio.sleep(0.25)

                task = asyncio.ensure_future(trickle())
                await asyncio.sleep(0.5)
                killed_at = time.monotonic()
                first.process.kill()

                async def moved() -> bool:
                    views = [(await n.get("/api/tenants"))["fleet"] for n in live]
                    return any(v["leading"] for v in views)

                await eventually(moved, timeout=6 * TTL, what="a new leader")
                takeover = time.monotonic() - killed_at
                second = await leader_of(live)

                async def new_cycles() -> bool:
                    view = await live[0].get("/api/dnsbl")
                    return bool(view["fleet"]["checked_by"] == second.node)

                await eventually(new_cycles, what="the blocklist cycles on the new leader")

                async def monitor_moved() -> bool:
                    return bool((await live[0].get("/api/tenants"))["fleet"]["monitor"]["node"] == second.node)

                await eventually(monitor_moved, what="the monitor on the new leader")
                after = (await live[0].get("/api/tenants"))["tenants"]["acme"]
                going.clear()
                await task
                await eventually(lambda: any(h["type"] == "dsn-surge" and h["state"] == "resolved" for h in hooks), what="the surge resolved")
                await asyncio.sleep(0.5)
                surges = [(h["state"], h["id"]) for h in hooks if h["type"] == "dsn-surge"]
                listed = [h for h in hooks if h["type"] == "dnsbl-listed"]
                logs = {n.node: n.log() for n in nodes}
        print(f"takeover after {takeover:.2f}s (lease {TTL}s)")
        assert (fired["state"], fired["tenant"], fired["cause"]) == ("firing", "acme", "directory-harvest")
        # More than any node's share (5): the evidence is summed over the nodes.
        assert fired["evidence"]["dsns"] >= 12 and fired["evidence"]["distinct_local_parts"] >= 12
        assert all([a["id"] for a in v["active"] if a["type"] == "dsn-surge"] == [fired["id"]] for v in views)
        assert snapshot["tenants"]["acme"]["surge"]["id"] == fired["id"] and snapshot["tenants"]["acme"]["dsns_in_window"] >= 12
        assert fleet_caption(snapshot["fleet"]) == f"fleet of 3 node(s), leader {first.node}; seen from {follower.node}"
        assert surges == [("firing", fired["id"]), ("resolved", fired["id"])]
        assert [n for n, text in logs.items() if "dsn-surge firing" in text] == [first.node]  # no node fired its own
        assert [n for n, text in logs.items() if "dsn-surge resolved" in text] == [second.node]
        assert before["baseline_per_minute"] == after["baseline_per_minute"] and after["surge"]["id"] == fired["id"]
        assert [(h["state"], h["address"]) for h in listed] == [("firing", NORMAL_A)]  # the new leader did not list it again
        assert sum("dnsbl-listed firing" in text for text in logs.values()) == 1

    asyncio.run(main())
    serve(bl_dns)


@pytest.mark.slow
def test_redis_killed_under_load_mail_flows_the_degraded_alert_clears_and_the_counts_are_added(tmp_path: Path) -> None:
    """Three nodes under a steady load of mail and DSNs; Redis is killed and started again (empty):
    every message answered 250 reaches the sink, no client sees an error, each node raises
    fleet-degraded and clears it, and every DSN taken meanwhile is in the new Redis."""
    sink_port, hook_port = free_port(), free_port()
    with redis_server() as server:

        async def main() -> None:
            async with sink("127.0.0.1", sink_port) as mx, webhook_receiver(hook_port) as hooks:
                # A window longer than the outage: the DSNs taken meanwhile still count when Redis is back.
                async with fleet_of_three(tmp_path, server, sink_port, hook_port, window="60s") as nodes:
                    accepted: list[str] = []
                    during: list[str] = []  # answered 250 while Redis was down
                    down_at: list[float] = []
                    back_at: list[float] = []
                    errors: list[str] = []
                    dsns: list[tuple[float, str]] = []
                    going = asyncio.Event()
                    going.set()

                    async def load(node: Node, k: int) -> None:
                        rng = random.Random(k)
                        n = 0
                        while going.is_set():
                            tag = f"load-{k}-{n}"
                            try:
                                if n % 4 == 3:
                                    dsns.append((time.monotonic(), await send_harvest(node, rng, k * 10000 + n)))
                                else:
                                    await send_mail(node, tag)
                                    accepted.append(tag)
                                    if down_at and not back_at:
                                        during.append(tag)
                            except Exception as exc:
                                errors.append(f"{node.node}: {exc!r}")
                            n += 1

                    tasks = [asyncio.ensure_future(load(node, k)) for k, node in enumerate(nodes)]
                    await asyncio.sleep(1.0)
                    killed_at = time.monotonic()
                    server.kill()
                    down_at.append(killed_at)
                    await eventually(lambda: sum(h["type"] == "fleet-degraded" for h in hooks) == 3, what="three fleet-degraded alerts")
                    await eventually(lambda: len(during) >= 3, timeout=60, what="mail accepted while Redis is down")
                    server.start()
                    back_at.append(time.monotonic())
                    await eventually(lambda: sum(h["type"] == "fleet-degraded" and h["state"] == "resolved" for h in hooks) == 3,
                                     what="the alerts cleared")
                    await asyncio.sleep(0.5)
                    going.clear()
                    await asyncio.gather(*tasks)
                    await mx.wait_for(len(accepted), timeout=60)
                    sent_since = {local for at, local in dsns if at >= killed_at}
                    client = redis_client.Redis.from_url(server.url, decode_responses=True)
                    stored: set[str] = set()

                    def all_in() -> bool:  # the last ones wait for their worker's next flush
                        stored.update(json.loads(fields["r"])["r"][0][0] for _, fields in client.xrange(f"{tmp_path.name}:dsns:{{acme}}"))
                        return sent_since <= stored

                    with contextlib.suppress(AssertionError):
                        await eventually(all_in, timeout=30, what="the DSNs in Redis")
                    client.close()
                    views = [(await n.get("/api/tenants"))["fleet"] for n in nodes]
                    degraded = [h for h in hooks if h["type"] == "fleet-degraded"]
            assert errors == []
            delivered = [d.content.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for d in mx.deliveries]
            assert set(accepted) <= set(delivered) and len(during) >= 3
            assert sent_since and sent_since <= stored, sorted(sent_since - stored)[:5]
            # Each node: fired and cleared (again, if a slow round trip made it degraded once more).
            for node in nodes:
                states = [h["state"] for h in degraded if h["node"] == node.node]
                assert states and states == ["firing", "resolved"] * (len(states) // 2), (node.node, states)
            assert sum(h.get("added_late", 0) for h in degraded if h["state"] == "resolved") > 0
            assert not any(v["degraded"] for v in views) and sum(v["leading"] for v in views) == 1

        asyncio.run(main())
