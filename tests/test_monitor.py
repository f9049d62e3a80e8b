"""The monitor end to end: a relay on loopback with tenants, the admin listener and a short
monitor window; mail and DSNs (made from corpus bounces) sent over SMTP from tenant networks;
metrics scraped over HTTP; alerts read from the API and from a real webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deliverypool import config as cfg
from deliverypool.config.loader import tomllib
from deliverypool.cli.queue import queue_command
from deliverypool.config import RelayConfig
from deliverypool.observe.bounce import BOUNCE_CATEGORIES, STATUS_CLASSES
from deliverypool._core import scan
from deliverypool.observe.events import Event
from deliverypool.observe.reports import read_report
from deliverypool.observe.surge import CAUSES
from deliverypool.queue.listing import listing
from deliverypool.testing.scenarios import SCENARIOS, SENDS_ORIGINALS, DsnFactory, DsnSpec
from tests.admin_api import HEADERS, SECRET, TOKEN, admin_toml, secret_file
from tests.conftest import CORPUS
from tests.smtp_sinks import eventually, free_port, message, relay_config, sink, webhook_receiver
from tests.test_relay import running

Run = Callable[[Coroutine[Any, Any, Any]], Any]

TENANTS = """
[tenants.acme]
auth_users = ["acme-app"]
networks = ["127.0.1.0/24"]
domains = ["acme.example"]
threshold = 3.0
[tenants.globex]
networks = ["127.0.2.0/24"]
domains = ["globex.example"]
"""


def monitor_config(tmp_path: Path, sink_port: int, webhook: str | None = None, extra: str = "") -> RelayConfig:
    admin = free_port()
    text = relay_config(tmp_path / "spool", smarthost=f"127.0.0.1:{sink_port}").model_dump(mode="json")
    text["listener"].update(allowed_networks=["127.0.0.0/8"], allow_plaintext_auth=True, auth_users={"acme-app": "pw"})
    extra_toml = tomllib.loads(
        TENANTS
        + f'[monitor]\nwindow = "2s"\nbaseline = "24s"\nmin_dsns = 10\nfactor = 4.0\ninterval = "100ms"\n'
        + admin_toml(tmp_path, admin)
        + '[observe]\nflush_interval = "100ms"\nevent_log = "events.jsonl"\n'
        + (f'[alerts]\nwebhook = "{webhook}"\nretry_initial = "100ms"\nretry_maximum = "200ms"\nsecret_file = "{secret_file(tmp_path)}"\n' if webhook else "")
        + extra
    )
    text.update(extra_toml)
    return cfg.from_dict(text)


async def send(conf: RelayConfig, content: bytes, *, source: str, sender: str = "app@acme.example", rcpt: str = "bob@dest.test", **kwargs: Any) -> None:
    await aiosmtplib.send(
        content, sender=sender, recipients=[rcpt], hostname="127.0.0.1", port=conf.listener.port, source_address=(source, 0), start_tls=False, **kwargs
    )


async def send_dsn(conf: RelayConfig, content: bytes, *, source: str, rcpt: str, username: str | None = None) -> None:
    """A DSN with the null reverse-path (aiosmtplib.send refuses an empty sender)."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=conf.listener.port, source_address=(source, 0), start_tls=False)
    async with client:
        if username is not None:
            await client.login(username, "pw")
        await client.sendmail("", [rcpt], content)


async def get_json(conf: RelayConfig, path: str) -> Any:
    assert conf.admin.address is not None
    host, port = conf.admin.address
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{host}:{port}{path}", headers=HEADERS) as response:
            assert response.status == 200
            return await response.json()


async def scrape(conf: RelayConfig) -> dict[str, list[tuple[dict[str, str], float]]]:
    assert conf.admin.address is not None
    host, port = conf.admin.address
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://{host}:{port}/metrics", headers=HEADERS) as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
            text = await response.text()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return found


FACTORY = DsnFactory(CORPUS / "maildir" / "bsd")


def test_the_corpus_gives_templates() -> None:
    assert len(FACTORY.templates) >= 10


@pytest.mark.parametrize(("status", "action"), [("5.1.1", "failed"), ("4.2.2", "delayed")])
def test_every_template_reads_as_its_spec_in_the_monitor(status: str, action: str) -> None:
    # Each template, whatever its own Action (some are delay notices), reads as the asked status
    # and action in the monitor's report: an attack made of them counts every failed recipient.
    factory = DsnFactory(CORPUS / "maildir" / "bsd")
    spec = DsnSpec("who@acme.example", status, f"smtp; 550 {status} no", "<o@acme.example>", "x@acme.example", "mx.far.test")
    for template in factory.templates:
        report = read_report(scan(DsnFactory._fill(template, spec)))
        assert [(r.address, r.action, r.status) for r in report.recipients] == [("who@acme.example", action, status)], template[0][:200]


def test_tenants_from_auth_and_networks_in_the_spool_and_queue(aio_run: Run, tmp_path: Path) -> None:
    # Nothing listens on the sink port: the mail stays in the spool.
    conf = monitor_config(tmp_path, free_port())

    async def main() -> None:
        async with running(conf):
            await send(conf, message("a", message_id="<auth@t>"), source="127.0.0.9", username="acme-app", password="pw")
            await send(conf, message("n", message_id="<net@t>"), source="127.0.2.7")
            await send(conf, message("x", message_id="<none@t>"), source="127.0.0.9")
            # AUTH wins over the network: acme's user from globex's network is acme's.
            await send(conf, message("b", message_id="<both@t>"), source="127.0.2.8", username="acme-app", password="pw")
            # The tenant's threshold applies: 4.0 is above acme's 3.0, not above the default 5.0.
            await send(conf, message("s", message_id="<score@t>", extra_headers="X-Spam-Score: 4.0\r\n"), source="127.0.1.2")

    aio_run(main())
    rows = {row.header_message_id: row for row in listing(conf.spool.directory)}
    assert {mid: row.tenant for mid, row in rows.items()} == {
        "<auth@t>": "acme", "<net@t>": "globex", "<none@t>": None, "<both@t>": "acme", "<score@t>": "acme"
    }
    assert rows["<score@t>"].pool == "normal"  # the client's score header is not trusted
    buffer = io.StringIO()
    assert queue_command(spool_directory=str(conf.spool.directory), out=buffer) == 0
    out = buffer.getvalue()
    assert "TENANT" in out and "globex" in out and "acme" in out


def test_every_metric_over_http_from_a_running_relay(aio_run: Run, tmp_path: Path) -> None:
    port = free_port()
    conf = monitor_config(tmp_path, port)

    async def main() -> None:
        async with sink("127.0.0.1", port, reject_rcpt={"gone@dest.test": "550 5.1.1 No such user"}) as mx, running(conf):
            await send(conf, message("hello"), source="127.0.1.5")
            await send(conf, message("fails"), source="127.0.1.5", rcpt="gone@dest.test")
            spec = DsnSpec("u1@acme.example", "5.1.1", "smtp; 550 5.1.1 User unknown", "<o1@far.example>", "x@far.example", "mx.acme.example")
            await send_dsn(conf, FACTORY.dsn(spec), source="127.0.1.5", rcpt="x@far.example")
            await mx.wait_for(3)  # hello, the relayed DSN, the relay's own DSN for gone@

            wanted = {
                (("pool", "normal"), ("result", "delivered"), ("source", "127.0.0.2")): 1,
                (("pool", "normal"), ("result", "failed"), ("source", "127.0.0.2")): 1,
                (("pool", "high-risk"), ("result", "delivered"), ("source", "127.0.0.3")): 2,
            }

            async def complete() -> bool:
                # Each worker adds its counts to the shared state every second: wait for them all.
                m = await scrape(conf)
                deliveries = {tuple(sorted(labels.items())): value for labels, value in m.get("deliverypool_deliveries_total", [])}
                generated = any(l.get("origin") == "generated" for l, _ in m.get("deliverypool_dsns_total", []))
                return generated and all(deliveries.get(key) == value for key, value in wanted.items())
            await eventually(complete, what="every counter")
            metrics = await scrape(conf)
            health = await get_json(conf, "/healthz")
            tenants = await get_json(conf, "/api/tenants")
        samples = {name: {tuple(sorted(labels.items())): value for labels, value in rows} for name, rows in metrics.items()}
        assert samples["deliverypool_messages_total"][(("pool", "normal"), ("reason", "none"))] == 2
        assert samples["deliverypool_messages_total"][(("pool", "high-risk"), ("reason", "dsn"))] == 1
        assert samples["deliverypool_tenant_messages_total"][(("tenant", "acme"),)] == 3
        assert samples["deliverypool_dsns_total"][(("origin", "relayed"), ("status_class", "5.1"), ("tenant", "acme"))] == 1
        assert samples["deliverypool_dsns_total"][(("origin", "generated"), ("status_class", "5.1"), ("tenant", "acme"))] == 1
        assert samples["deliverypool_bounces_total"][(("category", "bad-mailbox"), ("tenant", "acme"))] == 1
        deliveries = samples["deliverypool_deliveries_total"]
        assert deliveries[(("pool", "normal"), ("result", "delivered"), ("source", "127.0.0.2"))] == 1
        assert deliveries[(("pool", "normal"), ("result", "failed"), ("source", "127.0.0.2"))] == 1
        assert deliveries[(("pool", "high-risk"), ("result", "delivered"), ("source", "127.0.0.3"))] == 2
        assert set(samples["deliverypool_queue_recipients"]) == {(("state", s),) for s in ("queued", "in-flight", "deferred", "delivered", "failed")}
        assert samples["deliverypool_spool_commit_seconds_count"][()] >= 3
        assert samples["deliverypool_spool_commit_seconds_bucket"][(("le", "+Inf"),)] == samples["deliverypool_spool_commit_seconds_count"][()]
        assert "deliverypool_dsn_surge" not in samples or samples["deliverypool_dsn_surge"] == {}
        assert health["status"] == "ok"
        assert tenants["tenants"]["acme"]["messages_per_minute"] > 0 and set(tenants["tenants"]) == {"acme", "globex", "none"}

    aio_run(main())
    lines = [json.loads(line) for line in (conf.spool.directory / "events.jsonl").read_text().splitlines()]
    kinds = {line["kind"] for line in lines}
    assert {"message-accepted", "delivery-attempt", "dsn-relayed", "dsn-generated"} <= kinds
    relayed = next(line for line in lines if line["kind"] == "dsn-relayed")
    assert relayed["report"]["failed"] == ["u1@acme.example"] and relayed["report"]["original_message_id"] == "<o1@far.example>"
    assert relayed["report"]["reporting_mta"] == "mx.acme.example" and relayed["original_relayed"] is False


async def _attack(conf: RelayConfig, scenario: str, count: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    make = SCENARIOS[scenario]
    for n in range(count):
        spec, client = make(FACTORY, rng, "acme.example", n)
        source = "127.0.1.66" if client == "rogue" else "127.0.1.5"
        if scenario in SENDS_ORIGINALS:
            await send(conf, message(f"spam {n}", sender=spec.original_from, message_id=spec.original_message_id), source=source, sender=spec.original_from)
        await send_dsn(conf, FACTORY.dsn(spec), source=source, rcpt=spec.original_from)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_cause_fires_with_its_evidence_and_resolves(aio_run: Run, tmp_path: Path, scenario: str) -> None:
    port, hook_port = free_port(), free_port()
    conf = monitor_config(tmp_path, port, webhook=f"http://127.0.0.1:{hook_port}/hook")

    async def main() -> None:
        async with sink("127.0.0.1", port), webhook_receiver(hook_port, SECRET) as received, running(conf) as relay:
            # Steady traffic while the baseline is learned: acme's ordinary mail, a bounce of it.
            assert relay.observer.monitor is not None
            for i in range(5):
                await send(conf, message(f"m{i}", message_id=f"<m{i}@acme.example>"), source="127.0.1.5")
            await eventually(lambda: relay.observer.monitor is not None and relay.observer.monitor.learned, what="the learning period")
            await _attack(conf, scenario, 14)
            await eventually(lambda: any(a["state"] == "firing" for a in received), what="the firing alert")
            firing = next(a for a in received if a["state"] == "firing")
            alerts = await get_json(conf, "/api/alerts")
            metrics = await scrape(conf)
            # The attack stops: the window empties and the surge resolves, once.
            await eventually(lambda: any(a["state"] == "resolved" for a in received), what="the resolved alert")
            after = await get_json(conf, "/api/alerts")
        assert (firing["type"], firing["tenant"], firing["cause"]) == ("dsn-surge", "acme", scenario), firing
        evidence = firing["evidence"]
        assert evidence["dsns"] >= 10 and firing["dsns_per_minute"] > 4 * firing["baseline_per_minute"]
        if scenario == "directory-harvest":
            assert evidence["own_domain_recipients"] == evidence["failed_recipients"] >= 10
            assert evidence["distinct_local_parts"] >= 10 and evidence["categories"]["bad-mailbox"] >= 10
        elif scenario == "backscatter":
            assert evidence["originals_not_relayed_from_tenant"] == evidence["dsns"]
        elif scenario == "spam-attack":
            assert evidence["categories"].get("spam-related", 0) + evidence["categories"].get("policy-related", 0) >= 10
            assert evidence["distinct_failed_domains"] >= 5
        else:
            assert evidence["repeated_dsns"] >= evidence["dsns"] // 2 and evidence["top_client"] == "127.0.1.66"
        assert [a["id"] for a in alerts["active"]] == [firing["id"]]
        assert ({"tenant": "acme", "cause": scenario}, 1.0) in metrics["deliverypool_dsn_surge"]
        assert [a["state"] for a in received] == ["firing", "resolved"] and received[1]["id"] == firing["id"]
        assert after["active"] == [] and after["resolved"][0]["id"] == firing["id"]

    aio_run(main())


def test_webhook_down_alerts_are_retried_and_the_relay_is_unaffected(aio_run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    port, hook_port = free_port(), free_port()
    conf = monitor_config(tmp_path, port, webhook=f"http://127.0.0.1:{hook_port}/hook")

    async def main() -> None:
        async with sink("127.0.0.1", port) as mx, running(conf) as relay:
            await eventually(lambda: relay.observer.monitor is not None and relay.observer.monitor.learned, what="learning")
            await _attack(conf, "directory-harvest", 14)
            webhook = relay.observer.webhook
            assert webhook is not None
            await eventually(lambda: webhook.failed_attempts >= 3, what="failed POSTs")
            # The relay accepts and delivers while the webhook is down.
            for i in range(5):
                await send(conf, message(f"during {i}"), source="127.0.1.5")
            await mx.wait_for(14 + 5)
            assert webhook.sent == 0
            async with webhook_receiver(hook_port, SECRET) as received:
                await eventually(lambda: bool(received), what="the retried alert")
            assert received[0]["cause"] == "directory-harvest" and received[0]["state"] == "firing"
            status = await get_json(conf, "/api/status")
            assert status["webhook"]["failed_attempts"] >= 3 and status["webhook"]["sent"] >= 1
            # The alert was logged on deliverypool.alerts, once, as a warning with its JSON.
            logged = [r for r in caplog.records if r.name == "deliverypool.alerts" and "dsn-surge firing" in r.getMessage()]
            assert len(logged) == 1 and logged[0].levelname == "WARNING" and '"cause": "directory-harvest"' in logged[0].getMessage()

    aio_run(main())


def test_a_subscriber_that_raises_or_stalls_does_not_affect_acceptance(aio_run: Run, tmp_path: Path) -> None:
    conf = monitor_config(tmp_path, free_port())

    async def main() -> None:
        async with running(conf) as relay:
            def raising(event: Event) -> None:
                raise RuntimeError("subscriber bug")

            async def stalled(event: Event) -> None:
                await asyncio.Event().wait()

            relay.observer.bus.subscribe("raising", raising)
            relay.observer.bus.subscribe("stalled", stalled, queue_size=3)
            for i in range(10):
                await send(conf, message(f"m{i}"), source="127.0.1.5")
            stats = relay.observer.bus.stats()
            assert len(listing(conf.spool.directory)) == 10
            # Every event (acceptances, and the deferred delivery attempts) reached the raising
            # subscriber and failed there; the stalled one took one, holds three, dropped the rest.
            await eventually(lambda: relay.observer.bus.stats()["raising"]["errors"] >= 10, what="errors counted")
            stats = relay.observer.bus.stats()
            assert stats["raising"]["delivered"] == 0
            assert stats["stalled"]["queued"] == 3 and stats["stalled"]["dropped"] >= 10 - 1 - 3
            assert stats["metrics"]["errors"] == 0 and stats["metrics"]["dropped"] == 0

            async def dropped_metric() -> bool:
                rows = (await scrape(conf)).get("deliverypool_events_dropped_total", [])
                return any(labels == {"subscriber": "stalled"} and value >= 6 for labels, value in rows)
            await eventually(dropped_metric, what="the drop counter")

    aio_run(main())


CRAFTED = (
    b"From: MAILER-DAEMON@evil.test\r\nSubject: Undelivered Mail\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"
    b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; evil\"} 1\r\n\r\n"
    b"Final-Recipient: rfc822; x@acme.example\r\nAction: pwned\"}\r\nStatus: 9.9.9\"} tenant=\"admin\r\n"
    b"Diagnostic-Code: smtp; 550 spam{cause=\"x\"}\r\n\r\n"
    b"Final-Recipient: rfc822; y@acme.example\r\nAction: failed\r\nStatus: 5.77.1\r\n\r\n--b--\r\n"
)


def test_label_values_cannot_be_chosen_by_a_client(aio_run: Run, tmp_path: Path) -> None:
    conf = monitor_config(tmp_path, free_port(), extra='')

    async def main() -> dict[str, list[tuple[dict[str, str], float]]]:
        async with running(conf):
            for _ in range(12):
                await send_dsn(conf, CRAFTED, source="127.0.3.3", rcpt="z@far.test", username="acme-app")
            await send(conf, message("pool?", extra_headers="X-Pool: evil\r\n"), source="127.0.0.9", sender="a@b.test")

            async def counted() -> bool:
                return sum(v for _, v in (await scrape(conf)).get("deliverypool_dsns_total", [])) == 12
            await eventually(counted, what="the DSNs counted")
            return await scrape(conf)

    metrics = aio_run(main())
    allowed = {
        "tenant": {"acme", "globex", "none"},
        "status_class": set(STATUS_CLASSES),
        "category": set(BOUNCE_CATEGORIES),
        "origin": {"relayed", "generated"},
        "pool": {"normal", "high-risk", "other"},
        "reason": {"dsn", "spam-score", "sender-domain-no-records", "sender-domain-unknown", "none", "other"},
        "cause": set(CAUSES),
        "state": {"queued", "in-flight", "deferred", "delivered", "failed"},
        "source": {"127.0.0.2", "127.0.0.3", "none", "other"},
        "subscriber": {"metrics", "dsn-windows", "event-log"},
        "result": {"delivered", "deferred", "failed"},
        "le": None,
    }
    for name, rows in metrics.items():
        for labels, _ in rows:
            for key, value in labels.items():
                assert key in allowed, (name, key)
                assert allowed[key] is None or value in allowed[key], (name, key, value)
    dsns = {tuple(sorted(labels.items())): v for labels, v in metrics["deliverypool_dsns_total"]}
    assert dsns == {(("origin", "relayed"), ("status_class", "unknown"), ("tenant", "acme")): 12.0}
    bounces = {labels["category"]: v for labels, v in metrics["deliverypool_bounces_total"]}
    assert bounces == {"other": 12.0}  # 5.77.1: no such subject; the text decides, and says nothing known


def test_the_monitor_command_prints_a_snapshot_and_a_table(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deliverypool.cli.monitor import monitor_command, snapshot_table
    from rich.console import Console

    conf = monitor_config(tmp_path, free_port())
    assert conf.admin.address is not None
    admin = "%s:%d" % conf.admin.address

    async def main() -> str:
        async with running(conf):
            await send(conf, message("hi"), source="127.0.2.5")


            async def counted() -> bool:  # the message is in the rates once the observer flushed
                return (await get_json(conf, "/api/tenants"))["tenants"]["globex"]["messages_per_minute"] > 0
            await eventually(counted, what="the message in the tenant view")
            # Without a token the listener refuses (401): exit status 1.
            assert await asyncio.to_thread(monitor_command, admin, as_json=True, out=io.StringIO()) == 1
            monkeypatch.setenv("DELIVERYPOOL_ADMIN_TOKEN", f"tests:{TOKEN}")
            out = io.StringIO()
            assert await asyncio.to_thread(monitor_command, admin, as_json=True, out=out) == 0
            return out.getvalue()

    data = json.loads(aio_run(main()))
    assert set(data["tenants"]) == {"acme", "globex", "none"} and data["tenants"]["globex"]["messages_per_minute"] > 0
    console = Console(file=io.StringIO(), width=140)
    console.print(snapshot_table(data))
    rendered = console.file.getvalue()  # type: ignore[attr-defined]
    assert "globex" in rendered and "baseline/min" in rendered
    assert monitor_command(f"127.0.0.1:{free_port()}", as_json=True, out=io.StringIO()) == 1


@pytest.mark.slow
def test_two_workers_give_one_view_and_one_surge(aio_run: Run, tmp_path: Path) -> None:
    """`deliverypool relay --workers 2`: each worker counts its own mail and DSNs; /metrics (served
    by worker 0 from the shared state database) sums both, and DSNs spread over both workers
    make one surge."""
    from tests.test_crash import RelayProcess, crash_config

    sink_port, listen, admin = free_port(), free_port(), free_port()
    path = tmp_path / "relay.toml"
    path.write_text(
        crash_config(tmp_path / "spool", listen, sink_port)
        + TENANTS
        + f'[monitor]\nwindow = "2s"\nbaseline = "24s"\nmin_dsns = 10\ninterval = "100ms"\n'
        + admin_toml(tmp_path, admin)
        + '[observe]\nflush_interval = "100ms"\n'
    )
    from deliverypool import config as cfg

    conf = cfg.load(path)
    relay = RelayProcess(path, listen, "asyncio", workers=2)

    async def main() -> None:
        async with sink("127.0.0.20", sink_port, "sink"):
            await relay.start()
            try:
                # Each message on its own connection, until both workers took some (the kernel
                # picks the worker; each writes its relayed Message-IDs to a file of its own).
                seen = tmp_path / "spool" / "seen"
                sent = 0
                while sent < 40 or len({p.name.split("-2")[0] for p in seen.glob("shard-*.bloom")}) < 2:
                    assert sent < 400, "one worker took every connection"
                    await send(conf, message(f"m{sent}", message_id=f"<w{sent}@acme.example>"), source="127.0.1.5")
                    sent += 1
                    if sent % 20 == 0:
                        await asyncio.sleep(0.3)  # the workers write their filters at each flush (100 ms)

                async def all_counted() -> bool:
                    with contextlib.suppress(aiohttp.ClientError, AssertionError):
                        rows = (await scrape(conf)).get("deliverypool_tenant_messages_total", [])
                        return ({"tenant": "acme"}, float(sent)) in rows
                    return False
                await eventually(all_counted, timeout=30, what="both workers' messages in one counter")
                await asyncio.sleep(2.5)  # the learning period of the short window
                rng = random.Random(3)
                for n in range(14):
                    spec, _ = SCENARIOS["directory-harvest"](FACTORY, rng, "acme.example", n)
                    await send_dsn(conf, FACTORY.dsn(spec), source="127.0.1.5", rcpt=spec.original_from)

                async def fired() -> bool:
                    with contextlib.suppress(aiohttp.ClientError, AssertionError):
                        return bool((await get_json(conf, "/api/alerts"))["active"])
                    return False
                await eventually(fired, timeout=30, what="one surge over both workers")
                active = (await get_json(conf, "/api/alerts"))["active"]
            finally:
                relay.stop()
        assert [(a["tenant"], a["cause"]) for a in active] == [("acme", "directory-harvest")]
        assert active[0]["evidence"]["dsns"] >= 10

    aio_run(main())
    # Both workers took part: each wrote relayed Message-IDs of its own.
    assert {p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in (tmp_path / "spool" / "seen").glob("*.bloom")} == {"shard-0", "shard-1"}
