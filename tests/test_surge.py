"""The surge monitor's logic on a simulated clock (no sockets, no wall clock): bounce categories,
status classes, cause decisions, firing with min_dsns and factor, hysteresis, learning, and the
event bus's bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool.config import MonitorConfig
from deliverypool.observe.bounce import BOUNCE_CATEGORIES, STATUS_CLASSES, bounce_category, normalize_status, status_class
from deliverypool.observe.events import EventBus, MessageAccepted
from deliverypool.observe.surge import CAUSES, SurgeMonitor, decide_cause


@pytest.mark.parametrize(
    ("status", "text", "category"),
    [
        ("5.1.1", "550 5.1.1 <a@b>: Recipient address rejected: User unknown", "bad-mailbox"),
        ("5.1.10", "550 5.1.10 RESOLVER.ADR.RecipientNotFound", "bad-mailbox"),
        ("5.1.10", "556 5.1.10 Recipient address has null MX", "bad-domain"),
        ("5.1.2", "Host unknown", "bad-domain"),
        ("5.2.1", "mailbox disabled", "inactive-mailbox"),
        ("4.2.2", "452 4.2.2 Mailbox full", "quota"),
        ("5.7.1", "550 5.7.1 Message rejected as spam", "spam-related"),
        ("5.7.1", "554 5.7.1 client host blocked using zen.spamhaus.org", "spam-related"),
        ("5.7.1", "550 5.7.1 Relaying denied", "policy-related"),
        ("5.7.26", "DMARC policy", "policy-related"),
        ("4.4.7", "Delivery time expired", "message-expired"),
        ("5.4.6", "Too many hops", "routing"),
        ("5.5.2", "Syntax error", "protocol"),
        ("5.0.0", "550 No such user here", "bad-mailbox"),
        ("5.0.0", "550 blocked: listed in a DNSBL", "spam-related"),
        (None, "over quota", "quota"),
        (None, None, "other"),
        ("5.3.0", "something", "other"),
    ],
)
def test_bounce_categories(status: str | None, text: str | None, category: str) -> None:
    assert bounce_category(status, text) == category


def test_status_normalisation_and_classes() -> None:
    assert normalize_status("5.1.1 (user unknown)") == "5.1.1"
    assert normalize_status("X-Postfix; 5.01.001") == "5.1.1"
    assert normalize_status("9.9.9") == normalize_status("") == normalize_status(None) == "unknown"
    assert status_class("4.2.2") == "4.2" and status_class("5.77.1") == "unknown" and status_class('5.1.1"} x') == "5.1"


@given(st.text(max_size=60), st.text(max_size=200))
def test_any_input_lands_in_the_closed_sets(status: str, text: str) -> None:
    assert bounce_category(status, text) in BOUNCE_CATEGORIES
    assert status_class(status) in STATUS_CLASSES


def record(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"s": ["5.1.1"], "c": ["bad-mailbox"], "r": [["x", "far.example"]], "own": 0, "m": "mx.far.example",
                            "cl": "10.0.0.1", "k": True, "ft": True, "fp": "", "x": False, "loop": False}
    base.update(fields)
    return base


def test_each_cause_from_its_evidence() -> None:
    harvest = [record(r=[[f"guess{i}", "acme.example"]], own=1, fp=str(i), k=False, ft=False) for i in range(30)]
    assert decide_cause(harvest, own_domains=1)[0] == "directory-harvest"
    scatter = [record(r=[[f"u{i}", f"d{i}.example"]], fp=str(i), k=False, ft=True) for i in range(30)]
    assert decide_cause(scatter)[0] == "backscatter"
    spam = [record(s=["5.7.1"], c=["spam-related"], r=[[f"u{i}", f"d{i % 9}.example"]], fp=str(i)) for i in range(30)]
    assert decide_cause(spam)[0] == "spam-attack"
    repeated = [record(fp="same", s=["5.4.6"], c=["routing"]) for _ in range(30)]
    cause, evidence = decide_cause(repeated)
    assert cause == "rogue-server" and evidence["repeated_dsns"] == 29
    # One new client carrying the surge (not a repeat, no clear content pattern).
    new_client = [record(cl="10.0.0.99", s=["4.4.1"], c=["routing"], r=[[f"u{i}", f"d{i}.example"]], fp=str(i)) for i in range(30)]
    assert decide_cause(new_client, history_clients={"10.0.0.1": 500})[0] == "rogue-server"
    assert decide_cause(new_client, history_clients={"10.0.0.99": 500})[0] == "unknown"
    # Many domains with bad mailboxes is no harvest (a list of stale addresses).
    stale = [record(r=[[f"u{i}", f"d{i}.example"]], fp=str(i)) for i in range(30)]
    assert decide_cause(stale)[0] == "unknown"


CONFIG = MonitorConfig(window=300.0, baseline=6 * 3600.0, min_dsns=20, factor=4.0, interval=30.0)


def feed(monitor: SurgeMonitor, start: float, minutes: int, per_minute: float, *, tenant: str = "acme", rec: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """DSNs spread evenly over `minutes`, evaluated every 30 s; returns the alerts that changed."""
    changes = []
    carry = 0.0
    for tick in range(minutes * 2):
        now = start + tick * 30
        carry += per_minute / 2
        while carry >= 1:
            carry -= 1
            monitor.add(tenant, now, dict(rec or record(fp=str(now) + str(carry))))
        changes += monitor.evaluate(now + 29)
    return changes


def test_fires_once_on_a_surge_and_resolves_once_with_hysteresis() -> None:
    t0 = 1_000_000.0
    monitor = SurgeMonitor(CONFIG, started=t0)
    # 1 DSN a minute for 2 hours: learned, never fires.
    assert feed(monitor, t0, 120, 1.0) == []
    assert monitor.learned and 0.8 < monitor.windows["acme"].baseline < 1.2
    surge = feed(monitor, t0 + 7200, 10, 40.0, rec=record(r=[["a", "acme.example"]]))
    assert [c["state"] for c in surge] == ["firing"]
    assert surge[0]["tenant"] == "acme" and surge[0]["dsns_per_minute"] > 4 * surge[0]["baseline_per_minute"]
    baseline = monitor.windows["acme"].baseline
    # Still high but falling: above factor/2 x baseline it keeps firing (no flapping).
    assert feed(monitor, t0 + 7800, 5, 10.0) == []
    assert monitor.windows["acme"].baseline == baseline  # frozen while firing
    resolved = feed(monitor, t0 + 8100, 10, 1.0)
    assert [c["state"] for c in resolved] == ["resolved"] and resolved[0]["id"] == surge[0]["id"]


def test_a_quiet_tenant_never_fires_below_min_dsns_and_nothing_fires_while_learning() -> None:
    t0 = 2_000_000.0
    monitor = SurgeMonitor(CONFIG, started=t0)
    # Learning (the first 30 min): even a burst does not fire; it becomes the baseline.
    assert feed(monitor, t0, 20, 10.0, tenant="busy") == []
    quiet = feed(monitor, t0 + 1200, 60, 0.0, tenant="quiet")
    # 19 DSNs in one window from nothing: fewer than min_dsns.
    quiet += feed(monitor, t0 + 4800, 5, 3.8, tenant="quiet")
    assert [c for c in quiet if c["tenant"] == "quiet"] == []
    assert [c["tenant"] for c in feed(monitor, t0 + 5100, 5, 8.0, tenant="quiet")] == ["quiet"]


def test_restarted_monitor_keeps_its_baselines() -> None:
    monitor = SurgeMonitor(CONFIG, started=3_000_000.0, baselines={"acme": 10.0})
    assert monitor.learned
    # 10/min is the normal rate for this tenant: no surge right after the restart.
    assert feed(monitor, 3_000_000.0, 15, 10.0) == []
    assert set(CAUSES) == {"directory-harvest", "backscatter", "spam-attack", "rogue-server", "unknown"}


def test_the_bus_drops_for_a_full_subscriber_and_never_blocks() -> None:
    async def main() -> tuple[int, int, int]:
        bus = EventBus(queue_size=10)
        seen: list[object] = []
        bus.subscribe("fast", seen.append)
        slow = bus.subscribe("slow", lambda e: None, queue_size=4)
        event = MessageAccepted(0.0, "Q", None, "normal", (), None, 1, None)
        for _ in range(4 + 6):  # before the tasks run: the slow queue fills at 4
            bus.publish(event)
        await bus.start()
        await asyncio.sleep(0.01)
        await bus.stop()
        return len(seen), slow.dropped, bus.subscriptions[0].dropped

    fast, dropped, fast_dropped = asyncio.run(main())
    assert (fast, dropped, fast_dropped) == (10, 6, 0)


def test_an_idle_subscriber_sleeps_until_an_event_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing published, a subscriber's task waits with no timer (a timer per subscriber
    woke every idle worker 20 times a second per subscriber); the first event wakes it, and
    the events of a batch still reach the handler together, after the bus's latency."""
    from deliverypool.observe import events

    timed_waits = 0
    real_wait_for = asyncio.wait_for

    async def counting_wait_for(awaitable: Any, timeout: float | None) -> Any:
        nonlocal timed_waits
        timed_waits += 1
        return await real_wait_for(awaitable, timeout)

    monkeypatch.setattr(events.asyncio, "wait_for", counting_wait_for)

    async def main() -> None:
        bus = EventBus(latency=0.01)
        seen: list[object] = []
        bus.subscribe("batched", seen.append)
        await bus.start()
        await asyncio.sleep(0.3)  # thirty latencies of nothing
        assert timed_waits == 0 and seen == []
        event = MessageAccepted(0.0, "Q", None, "normal", (), None, 1, None)
        bus.publish(event)
        bus.publish(event)  # within the first one's latency: the same batch
        for _ in range(500):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen == [event, event] and timed_waits == 1
        await asyncio.sleep(0.3)  # idle again: asleep again
        assert timed_waits == 1
        await bus.stop()

    asyncio.run(main())


def test_the_event_log_writes_json_lines_and_rotates(tmp_path: Any) -> None:
    import json

    from deliverypool.observe.service import EventLog

    def event(n: int) -> MessageAccepted:
        return MessageAccepted(float(n), f"Q{n}", "acme", "normal", ("spam-score",), "10.0.0.1", 1, f"<{n}@x>")

    # A file is rotated once it reaches max_bytes: here at its third line, whatever a line's length.
    probe = EventLog(tmp_path / "probe.jsonl", max_bytes=1 << 20, keep=1)
    probe(event(10))
    probe.flush()
    line = (tmp_path / "probe.jsonl").stat().st_size
    (tmp_path / "probe.jsonl").unlink()
    log = EventLog(tmp_path / "events.jsonl", max_bytes=line * 5 // 2, keep=2)
    for n in range(11):  # rotated after events 2, 5 and 8: 9 and 10 are in the current file
        log(event(n))
        log.flush()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]  # keep = 2 rotated files
    lines = {name: [json.loads(text) for text in (tmp_path / name).read_text().splitlines()] for name in files}
    assert all(line["kind"] == "message-accepted" and line["tenant"] == "acme" for kept in lines.values() for line in kept)
    assert [line["at"] for line in lines["events.jsonl"]] == [9.0, 10.0]
    assert [line["at"] for line in lines["events.jsonl.1"]] == [6.0, 7.0, 8.0]
    assert [line["at"] for line in lines["events.jsonl.2"]] == [3.0, 4.0, 5.0]
