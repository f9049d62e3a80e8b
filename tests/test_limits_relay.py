"""Sender limits through the relay, over SMTP: two relay processes on two ports sharing one
real redis-server; the embedded default (the state database in the spool) with its operator
surface (the 550 5.1.8 replies, alerts on the webhook and the API, events, the gauge, the CLI, a
restart); Redis killed in the middle of a run."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
import redis as redis_client

from deliverypool import config as cfg
from deliverypool.cli.senders import senders_command
from tests.redis_server import RedisServer, redis_server
from tests.smtp_sinks import eventually, free_port, message, sink
from tests.test_crash import RelayProcess, crash_config
from tests.admin_api import HEADERS, admin_toml
from tests.test_monitor import running, scrape, webhook_receiver


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


async def transaction(port: int, sender: str, recipients: list[str], *, login: str | None = None, source: str = "127.0.0.1") -> tuple[list[str], list[str]]:
    """One SMTP transaction: the recipients accepted and the replies of those refused; DATA
    when any was accepted."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(source, 0), start_tls=False, timeout=30)
    accepted, refused = [], []
    async with client:
        if login is not None:
            await client.login(login, "pw")
        await client.mail(sender)
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt)
                accepted.append(rcpt)
            except aiosmtplib.SMTPRecipientRefused as exc:
                refused.append(f"{exc.code} {exc.message}")
        if accepted:
            await client.data(message("limits", sender=sender or "mailer-daemon@relay.test"))
    return accepted, refused


async def port_closed(port: int, timeout: float = 10.0) -> None:
    """Waits until nothing listens on `port`: the listening socket of a killed worker may outlive
    its process for a moment, and a client that connects then is reset."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return
        writer.close()
        await asyncio.sleep(0.05)
    raise AssertionError(f"port {port} still listens")


async def post_json(address: tuple[str, int], path: str, body: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"http://{address[0]}:{address[1]}{path}", json=body, headers=HEADERS) as response:
            return response.status, await response.json()


async def get_json(address: tuple[str, int], path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{address[0]}:{address[1]}{path}", headers=HEADERS) as response:
            assert response.status == 200, await response.text()
            return await response.json()


def test_two_relays_sharing_one_redis_accept_exactly_the_limit(redis: RedisServer, tmp_path: Path) -> None:
    """per_day = 50; 30 recipients through each of two relay processes, at once: exactly 50
    accepted in all, the other 10 get 550 5.1.8, and the sink gets the 50. A restart keeps the
    restriction (in Redis); a release on one node lets the sender through on the other."""
    sink_port = free_port("127.0.0.20")
    nodes = []
    for name in ("a", "b"):
        listen, admin = free_port(), free_port()
        path = tmp_path / name / "relay.toml"
        path.parent.mkdir()
        path.write_text(
            crash_config(tmp_path / name / "spool", listen, sink_port)
            + f'[limits]\nper_day = 50\naction = "block"\n[state]\nredis = "{redis.url}"\nkey_prefix = "{tmp_path.name}:"\n'
            + admin_toml(tmp_path / name, admin)
            + '[observe]\nflush_interval = "100ms"\n'
        )
        nodes.append((RelayProcess(path, listen, "asyncio", workers=1), listen, ("127.0.0.1", admin)))
    (a, port_a, _), (b, port_b, admin_b) = nodes
    sender = "Bulk@Sender.test"

    async def main() -> None:
        async with sink("127.0.0.20", sink_port, "sink") as mx:
            await asyncio.gather(a.start(), b.start())
            try:
                batches = [[f"r{n}-{i}@dest.test" for i in range(10)] for n in range(6)]
                results = await asyncio.gather(*(transaction(port_a if n % 2 else port_b, sender, batch) for n, batch in enumerate(batches)))
                accepted = [r for ok, _ in results for r in ok]
                refused = [reply for _, no in results for reply in no]
                assert len(accepted) == 50 and len(refused) == 10, (len(accepted), refused)
                assert set(refused) == {"550 5.1.8 Access denied, bad outbound sender"}, refused
                await eventually(lambda: sum(len(d.rcpt_tos) for d in mx.deliveries) == 50, what="the 50 accepted recipients at the sink")
                assert sorted(r for d in mx.deliveries for r in d.rcpt_tos) == sorted(accepted)

                a.kill()  # the whole node gone at once: what it counted is in Redis
                await port_closed(port_a)
                await a.start()
                assert (await transaction(port_a, sender.lower(), ["after-restart@dest.test"]))[0] == []

                status, body = await post_json(admin_b, "/api/senders/release", {"sender": "BULK@sender.test"})
                assert status == 200 and body["released"]["sender"] == "bulk@sender.test" and body["released"]["count"] == 50
                assert (await transaction(port_a, sender, ["released@dest.test"]))[0] == ["released@dest.test"]
                status, _ = await post_json(admin_b, "/api/senders/release", {"sender": sender})
                assert status == 404
            finally:
                for node in (a, b):
                    if node.process is not None and node.process.poll() is None:
                        node.kill()

    asyncio.run(main())


TENANT = """
[tenants.acme]
auth_users = ["acme-app"]
domains = ["acme.example"]
limits = { per_day = 3, action = "block" }
"""


def relay_toml(tmp_path: Path, sink_port: int, hook_port: int, extra: str = "") -> tuple[Path, cfg.RelayConfig]:
    """A relay that delivers to the sink, with acme's AUTH user, the admin listener, the webhook
    and the event log; its file on disk (for the CLI) and its configuration."""
    text = crash_config(tmp_path / "spool", free_port(), sink_port).replace(
        "[listener]\n", '[listener]\nallow_plaintext_auth = true\nauth_users = { acme-app = "pw" }\n', 1
    )
    text += TENANT + (
        admin_toml(tmp_path, free_port())
        + f'[alerts]\nwebhook = "http://127.0.0.1:{hook_port}/hook"\nretry_initial = "100ms"\n'
        '[observe]\nflush_interval = "100ms"\nevent_log = "events.jsonl"\n' + extra
    )
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path, cfg.load(path)


def test_embedded_state_refuses_alerts_and_releases_through_the_cli(tmp_path: Path) -> None:
    sink_port, hook_port = free_port("127.0.0.20"), free_port()
    path, conf = relay_toml(tmp_path, sink_port, hook_port)
    port = conf.listener.port
    assert conf.admin.address is not None
    admin = conf.admin.address

    def cli(*args: str, **kwargs: Any) -> tuple[int, str]:
        out = io.StringIO()
        return senders_command(*args, str(path), out=out, **kwargs), out.getvalue()

    async def gauge(expected: float) -> bool:
        rows = (await scrape(conf)).get("deliverypool_senders_restricted", [])
        return next((v for labels, v in rows if labels == {"tenant": "acme"}), None) == expected

    async def main() -> list[dict[str, Any]]:
        async with sink("127.0.0.20", sink_port, "sink") as mx, webhook_receiver(hook_port, lambda: (conf.spool.directory / "webhook-secret").read_text()) as hooks:
            async with running(conf):
                # One transaction: three recipients taken, the fourth refused; the three are delivered.
                ok, no = await transaction(port, "noreply@acme.example", ["a@far.example", "b@acme.example", "c@far.example", "d@far.example"], login="acme-app")
                assert ok == ["a@far.example", "b@acme.example", "c@far.example"] and no == ["550 5.1.8 Access denied, bad outbound sender"]
                await mx.wait_for(1)
                assert mx.deliveries[0].rcpt_tos == ok
                # The AUTH identity is restricted whatever envelope sender it uses; its DSNs still go.
                assert (await transaction(port, "other@acme.example", ["e@far.example"], login="acme-app"))[1] == ["550 5.1.8 Access denied, bad outbound sender"]
                assert (await transaction(port, "", ["bounce@far.example"], login="acme-app"))[0] == ["bounce@far.example"]
                # An unauthenticated sender of no tenant is not limited.
                assert (await transaction(port, "x@elsewhere.test", [f"n{i}@far.example" for i in range(5)]))[1] == []

                await eventually(lambda: any(h["type"] == "sender-restricted" for h in hooks), what="the webhook's sender-restricted alert")
                await eventually(lambda: gauge(1.0), what="one restricted sender in the gauge")
                alerts = await get_json(admin, "/api/alerts")
                listed = await get_json(admin, "/api/senders?tenant=acme")
                status, code_out = await asyncio.to_thread(cli, "list", as_json=True)
                assert status == 0 and json.loads(code_out)["senders"][0]["sender"] == "acme-app"
            # A restart keeps the restriction: it is in the state database.
            async with running(conf):
                assert (await transaction(port, "noreply@acme.example", ["after@far.example"], login="acme-app"))[1] == ["550 5.1.8 Access denied, bad outbound sender"]
                assert (await asyncio.to_thread(cli, "release", address="Acme-App"))[0] == 0
                assert (await asyncio.to_thread(cli, "release", address="acme-app"))[0] == 1  # released already
                assert (await transaction(port, "noreply@acme.example", ["free@far.example"], login="acme-app"))[0] == ["free@far.example"]
                # The leader's sweep notices the release made elsewhere: the alert resolves once.
                await eventually(lambda: any(h["type"] == "sender-released" for h in hooks), what="the sender-released alert")
                await eventually(lambda: gauge(0.0), what="no restricted sender in the gauge")
                after = await get_json(admin, "/api/alerts")
            webhook = list(hooks)
        firing = next(a for a in alerts["active"] if a["type"] == "sender-restricted")
        assert (firing["tenant"], firing["sender"], firing["window"], firing["count"], firing["maximum"], firing["action"], firing["until"]) == (
            "acme", "acme-app", "per_day", 3, 3, "block", None
        )
        assert [s["sender"] for s in listed["senders"]] == ["acme-app"] and listed["backend"] == "sqlite"
        assert [(h["type"], h["state"]) for h in webhook] == [("sender-restricted", "firing"), ("sender-released", "resolved")]
        assert webhook[1]["id"] == firing["id"] and webhook[1]["reason"] == "released"
        assert not [a for a in after["active"] if a["type"] == "sender-restricted"]
        assert after["resolved"][0]["id"] == firing["id"]
        return webhook

    asyncio.run(main())
    kinds = [json.loads(line)["kind"] for line in (conf.spool.directory / "events.jsonl").read_text().splitlines()]
    assert kinds.count("sender-restricted") == 1 and kinds.count("sender-released") == 1
    restricted = next(json.loads(line) for line in (conf.spool.directory / "events.jsonl").read_text().splitlines() if '"sender-restricted"' in line)
    assert restricted["sender"] == "acme-app" and restricted["tenant"] == "acme" and restricted["window"] == "per_day"
    status, text = cli("list")
    assert status == 0 and text.strip() == "0 restricted sender(s)"


def test_redis_killed_mid_run_mail_flows_the_alert_fires_and_counting_returns(tmp_path: Path) -> None:
    with redis_server() as server:
        sink_port, hook_port = free_port("127.0.0.20"), free_port()
        extra = f'[limits]\nper_day = 1000\n[state]\nredis = "{server.url}"\ntimeout = "2s"\nretry_interval = "100ms"\n'
        extra += "lease = 0\n"  # every recipient counted in Redis by itself: the counts below are exact
        _, conf = relay_toml(tmp_path, sink_port, hook_port, extra)
        port = conf.listener.port
        sender = "steady@sender.test"
        key = f"deliverypool:c:s:{sender}:per_day"

        def redis_count() -> int:
            client = redis_client.Redis.from_url(server.url, decode_responses=True)
            try:
                return sum(int(v) for v in client.hgetall(key).values())
            finally:
                client.close()

        async def main() -> None:
            async with sink("127.0.0.20", sink_port, "sink") as mx, webhook_receiver(hook_port, lambda: (conf.spool.directory / "webhook-secret").read_text()) as hooks, running(conf) as relay:
                assert relay.limits is not None
                for i in range(5):
                    assert (await transaction(port, sender, [f"before{i}@far.example"]))[1] == []
                assert redis_count() == 5
                server.kill()
                for i in range(10):  # Redis is gone: the mail keeps flowing
                    assert (await transaction(port, sender, [f"during{i}@far.example"]))[1] == []
                await eventually(lambda: any(h["type"] == "state-backend-unavailable" and h["state"] == "firing" for h in hooks), what="the alert")
                firing = next(h for h in hooks if h["type"] == "state-backend-unavailable")
                assert firing["backend"] == server.url and firing["fail"] == "open"
                server.start()
                await eventually(lambda: relay.limits is not None and relay.limits.down_since is None, what="Redis again")
                await eventually(lambda: any(h["type"] == "state-backend-unavailable" and h["state"] == "resolved" for h in hooks), what="the resolution")
                for i in range(4):
                    assert (await transaction(port, sender, [f"after{i}@far.example"]))[1] == []
                # The new Redis has what was sent since it came back (it kept nothing: no persistence).
                assert redis_count() == 4
                await mx.wait_for(19)
                assert [h["state"] for h in hooks if h["type"] == "state-backend-unavailable"] == ["firing", "resolved"]

        asyncio.run(main())
