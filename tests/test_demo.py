"""`deliverypool demo` end to end: every kind of mail reaches the sinks from its pool's address."""

from __future__ import annotations

import io
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from deliverypool.cli.demo import HIGH_RISK_SOURCE, NORMAL_SOURCE, check, demo, demo_logging

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def test_demo_routes_every_kind_to_its_pool(aio_run: Run, capfd: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    with demo_logging() as held:
        stats = aio_run(demo(out, scale=2, clients=4))
    assert check(stats) == []
    # The report reads cleanly: no log line on the terminal cuts into it, and each alert is
    # shown once, as the demo's own line (before: the log record too, on stderr).
    assert capfd.readouterr().err == ""
    assert held is not None and any(r.name == "deliverypool.alerts" for r in held.records)
    assert "deliverypool.alerts" not in out.getvalue() and out.getvalue().count("ALERT dsn-surge firing") == 1
    assert set(stats["ordinary"].peers) == {NORMAL_SOURCE}
    for kind in ("scored", "dsn", "ghost", "bounce"):
        assert set(stats[kind].peers) == {HIGH_RISK_SOURCE}, kind
    assert stats["ghost"].reasons["sender-domain-no-records"] == stats["ghost"].sent
    assert stats["bounce"].delivered == stats["nullmx"].sent > 0
    report = out.getvalue()
    assert "sender domain without records" in report and "delivered after" in report
    # Act 2: the compromised customer's harvest raised the alert, printed with its evidence.
    assert "ALERT dsn-surge firing: tenant=acme cause=directory-harvest" in report and "/metrics" in report
    # Act 3: the compromised account runs past its limit: 20 taken, 10 refused, the alert, the release.
    assert "20 recipients accepted, 10 refused: 550 5.1.8 Access denied, bad outbound sender" in report
    assert "ALERT sender-restricted firing: tenant=initech sender=initech-app limit=per_day 20/20 action=block" in report
    assert ": released\n" in report and "after the release: 1 accepted, 0 refused" in report
    # Act 4: a normal address listed part-way through is drained, the other carries the mail,
    # and it comes back once delisted (check() holds the act's own checks).
    assert "ALERT dnsbl-listed firing (critical): 127.0.0.6 of pool normal in bl.demo.test" in report
    assert set(stats["watch-drained"].peers) == {"127.0.0.7"} and stats["watch-drained"].delivered == 20
    assert "delisted: in rotation again: 127.0.0.6, 127.0.0.7" in report and "/api/dnsbl" in report


def test_generated_bounces_stand_in_for_the_corpus() -> None:
    """On a clone without ../shared/corpus the demo writes its own bounces: they must be DSNs."""
    from deliverypool import classify
    from deliverypool.cli.demo import generated_bounces

    bounces = generated_bounces(3)
    assert len(bounces) == 3
    for bounce in bounces:
        decision = classify(bounce, mail_from="")
        assert "dsn" in decision.reasons and decision.pool == "high-risk"


def test_demo_verbose_shows_the_log_as_it_happens(capfd: pytest.CaptureFixture[str]) -> None:
    """-v: the relay's log lines (INFO and up) on stderr, the report on stdout."""
    import asyncio

    out = io.StringIO()
    with demo_logging(verbose=True) as held:
        stats = asyncio.run(demo(out, scale=1, clients=2))
    assert held is None and check(stats) == []
    err = capfd.readouterr().err
    assert " deliverypool.relay accepted queue_id=" in err and " deliverypool.delivery attempt queue_id=" in err
    assert " deliverypool.alerts dsn-surge firing tenant=acme cause=directory-harvest" in err
    assert "deliverypool.relay" not in out.getvalue()
