"""The milter's routing adapter without Postfix: `MilterService.route` from a libmilter-like
callback thread, on the service's own event loop (tests/test_postfix_milter.py runs the whole
milter behind a real Postfix)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from deliverypool import config as cfg
from deliverypool.routing.scores import Routed, Submission
from deliverypool.state.limits import REFUSED, UNAVAILABLE
from tests.smtp_sinks import free_port, message

pytest.importorskip("Milter", reason="pymilter is not installed (the milter extra)")

from deliverypool.ingress.milter import MilterService, milter_socket  # noqa: E402

POOLS = '[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n'
SCORED = message("scored upstream", extra_headers="X-Spam-Score: 9.5\r\n")


def service(trust: bool) -> Iterator[MilterService]:
    text = f'[policy]\nscore_header = "X-Spam-Score"\n[dns]\ncheck_sender_domain = false\n[milter]\ntrust_score_header = {str(trust).lower()}\n'
    running = MilterService(cfg.loads(text + POOLS))
    yield running
    running.close()


@pytest.fixture
def trusting() -> Iterator[MilterService]:
    yield from service(True)


@pytest.fixture
def distrusting() -> Iterator[MilterService]:
    yield from service(False)


def route_from_a_thread(running: MilterService, content: bytes, submission: Submission) -> Routed:
    """As libmilter calls it: from a thread that is not the service's loop."""
    results: list[Routed] = []
    thread = threading.Thread(target=lambda: results.append(running.route(content, submission)))
    thread.start()
    thread.join(30)
    [routed] = results
    return routed


def test_the_score_header_counts_only_with_trust_score_header(trusting: MilterService, distrusting: MilterService) -> None:
    submission = Submission("alice@sender.test", ("bob@dest.test",), client_address="127.0.0.1", helo="client")
    trusted = route_from_a_thread(trusting, SCORED, submission)
    assert (trusted.pool, trusted.reasons, trusted.decision.score_source) == ("high-risk", ("spam-score",), "header")
    assert trusted.spam is not None and (trusted.spam.source, trusted.spam.score) == ("header", 9.5)
    distrusted = route_from_a_thread(distrusting, SCORED, submission)
    assert (distrusted.pool, distrusted.reasons, distrusted.decision.score) == ("normal", (), None)


def test_the_auth_user_is_the_tenant() -> None:
    text = '[policy]\nscore_header = "X-Spam-Score"\n[tenants.lenient]\nauth_users = ["lenient"]\nthreshold = 20.0\n[dns]\ncheck_sender_domain = false\n[milter]\ntrust_score_header = true\n'
    running = MilterService(cfg.loads(text + POOLS))
    try:
        routed = route_from_a_thread(running, SCORED, Submission("alice@sender.test", login="lenient"))
    finally:
        running.close()
    assert (routed.pool, routed.decision.threshold) == ("normal", 20.0)


def test_a_null_sender_dsn_is_high_risk(distrusting: MilterService) -> None:
    dsn = message("Undelivered Mail Returned to Sender", sender="MAILER-DAEMON@relay.test", extra_headers="Auto-Submitted: auto-replied\r\n",
                  body="This is the mail system at host relay.test.\r\n\r\nI'm sorry to have to inform you that your message could not\r\nbe delivered to one or more recipients.\r\n")
    routed = route_from_a_thread(distrusting, dsn, Submission(""))
    assert routed.pool == "high-risk" and "dsn" in routed.reasons


def test_libmilter_socket_names() -> None:
    assert milter_socket("127.0.0.1", 8893) == "inet:8893@127.0.0.1"
    assert milter_socket("::1", 8893) == "inet6:8893@::1"


def check_from_a_thread(running: MilterService, recipient: str, *, mail_from: str = "app@acme.test", login: str | None = None) -> str | None:
    """As libmilter calls it at RCPT: from a thread that is not the service's loop."""
    results: list[str | None] = []
    thread = threading.Thread(
        target=lambda: results.append(running.check_recipient(login=login, mail_from=mail_from, recipient=recipient, client_address="127.0.0.1"))
    )
    thread.start()
    thread.join(30)
    [reply] = results
    return reply


def test_sender_limits_refuse_at_rcpt_and_null_senders_pass(tmp_path: Path) -> None:
    text = f'[limits]\nper_day = 3\naction = "block"\n[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
    running = MilterService(cfg.loads(text + POOLS))
    try:
        replies = [check_from_a_thread(running, f"r{i}@far.test") for i in range(5)]
        other = check_from_a_thread(running, "r@far.test", mail_from="other@acme.test")
        by_login = [check_from_a_thread(running, f"l{i}@far.test", mail_from="any@acme.test", login=login)
                    for i, login in enumerate(["Mailer@Acme.TEST"] * 3 + [None, "mailer@acme.test"])]
        bounce = check_from_a_thread(running, "r@far.test", mail_from="")
    finally:
        running.close()
    assert replies == [None, None, None, REFUSED, REFUSED]
    assert other is None and bounce is None
    assert by_login == [None, None, None, None, REFUSED]  # the SASL login is the sender (one sender in any case), not the envelope
    # The state is the relay's: a restart (a new service on the same spool) keeps the restriction.
    again = MilterService(cfg.loads(text + POOLS))
    try:
        assert check_from_a_thread(again, "later@far.test") == REFUSED
    finally:
        again.close()


def test_sender_limits_with_redis_unreachable_and_fail_closed_tempfail_the_recipient(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    text = (
        f'[limits]\nper_day = 3\n[state]\nredis = "redis://127.0.0.1:{dead}/0"\nfail = "closed"\ntimeout = "2s"\n'
        f'[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
    )
    running = MilterService(cfg.loads(text + POOLS))
    try:
        assert check_from_a_thread(running, "r@far.test") == UNAVAILABLE
        assert check_from_a_thread(running, "r@far.test", mail_from="") is None
    finally:
        running.close()


def test_without_sender_limits_the_mta_is_told_not_to_wait_for_rcpt_replies(tmp_path: Path) -> None:
    """Negotiation as libmilter runs it, offered every protocol step: with sender limits the
    milter answers each RCPT (to refuse one); without them, P_NR_RCPT tells the MTA that no
    reply comes. The other steps' no-reply bits are the same for both."""
    import Milter

    from deliverypool.ingress.milter import PoolMilter, PoolMilterWithoutLimits, milter_class

    def negotiated(klass: type[PoolMilter]) -> int:
        offered = [Milter.ADDHDRS | Milter.CHGHDRS, 0x1FFFFF, 0, 0]
        assert klass().negotiate(offered) == Milter.CONTINUE
        return offered[1]

    base = f'[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
    for limits, expected in (("[limits]\nper_day = 3\n", PoolMilter), ("", PoolMilterWithoutLimits)):
        running = MilterService(cfg.loads(limits + base + POOLS))
        try:
            assert milter_class(running) is expected
        finally:
            running.close()
    with_limits, without = negotiated(PoolMilter), negotiated(PoolMilterWithoutLimits)
    assert not with_limits & Milter.P_NR_RCPT and without & Milter.P_NR_RCPT
    assert with_limits | Milter.P_NR_RCPT == without
    assert with_limits & Milter.P_NR_MAIL and with_limits & Milter.P_NR_HDR


def test_a_restriction_made_through_the_milter_is_posted_to_the_webhook_and_its_release_too(tmp_path: Path) -> None:
    """The milter reports what its sender limits do as a relay worker does: the restriction
    as a firing sender-restricted alert on the webhook (and in the state database, where the
    CLI sees it), and a release made by `deliverypool senders release` as its resolution."""
    import asyncio

    from deliverypool.cli.senders import senders_command
    from tests.smtp_sinks import eventually, webhook_receiver

    hook_port = free_port()
    text = (
        f'[limits]\nper_day = 2\naction = "block"\n[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
        f'[alerts]\nwebhook = "http://127.0.0.1:{hook_port}/hook"\n[observe]\nflush_interval = "100ms"\n'
    )
    path = tmp_path / "milter.toml"
    path.write_text(text + POOLS)

    async def main() -> tuple[list[str | None], list[dict[str, object]]]:
        async with webhook_receiver(hook_port) as received:
            running = await asyncio.to_thread(MilterService, cfg.load(path))
            try:
                replies = [await asyncio.to_thread(check_from_a_thread, running, f"r{i}@far.test") for i in range(3)]
                await eventually(lambda: any(h["type"] == "sender-restricted" for h in received), what="the firing alert")
                assert await asyncio.to_thread(senders_command, "release", str(path), address="app@acme.test") == 0
                await eventually(lambda: any(h["state"] == "resolved" for h in received), timeout=30, what="the resolution")
            finally:
                await asyncio.to_thread(running.close)
            return replies, received

    replies, received = asyncio.run(main())
    assert replies == [None, None, REFUSED]
    assert [(h["type"], h["state"]) for h in received] == [("sender-restricted", "firing"), ("sender-released", "resolved")]
    assert received[0]["sender"] == "app@acme.test" and received[0]["window"] == "per_day" and received[1]["id"] == received[0]["id"]


def test_with_the_webhook_down_the_milter_still_limits_and_stops_promptly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens on the webhook's port: the recipients are still counted and refused at
    the exact limit, the alert is logged and kept in the state database, and close() returns
    (the unsent alert does not hold the milter up)."""
    import logging
    import sqlite3

    dead = free_port()
    text = (
        f'[limits]\nper_day = 2\naction = "block"\n[spool]\ndirectory = "{tmp_path / "spool"}"\n[dns]\ncheck_sender_domain = false\n'
        f'[alerts]\nwebhook = "http://127.0.0.1:{dead}/hook"\n'
    )
    with caplog.at_level(logging.WARNING, logger="deliverypool.alerts"):
        running = MilterService(cfg.loads(text + POOLS))
        try:
            replies = [check_from_a_thread(running, f"r{i}@far.test") for i in range(4)]
        finally:
            running.close()
    assert replies == [None, None, REFUSED, REFUSED]
    assert any("sender-restricted firing" in r.getMessage() for r in caplog.records)
    with sqlite3.connect(tmp_path / "spool" / "state.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM observe_alerts WHERE id LIKE 'sr-%'").fetchone()[0] == 1
