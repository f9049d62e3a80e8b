"""rspamd as the score source, with a real rspamd (tests/rspamd.py) on loopback: GTUBE is spam
and an ordinary message ham, rspamd's verdict goes into the routing, the relay and `classify
--json`; rspamd stopped, silent or talking nonsense gives the configured fallback, counted, and
never an error to the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiosmtplib
import pytest

from deliverypool import Policy
from deliverypool.app import Relay
from deliverypool.ingress.handler import Accepted
from deliverypool.routing.router import Router
from deliverypool.routing.scores import SCORE_UNAVAILABLE, RspamdScores, ScoredRouter, Submission
from tests.rspamd import GTUBE, RspamdServer, rspamd_installed
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, eventually, free_port, message, relay_config, sink

_T = TypeVar("_T")
Run = Callable[[Coroutine[Any, Any, _T]], _T]

SPAM = message("cheap watches", body=GTUBE + "\r\n", message_id="<gtube@sender.test>")
HAM = message("lunch tomorrow", body="Shall we meet at noon?\r\n", message_id="<ham@sender.test>")
SUBMISSION = Submission("alice@sender.test", ("bob@dest.test",), client_address="127.0.0.9", helo="client.sender.test", login="app1")


@pytest.fixture(scope="module")
def rspamd() -> Iterator[RspamdServer]:
    if not rspamd_installed():
        if os.environ.get("CI"):
            pytest.fail("rspamd is not installed: run scripts/install-test-servers.sh")
        pytest.skip("rspamd is not installed: run scripts/install-test-servers.sh")
    server = RspamdServer(free_port())
    server.start()
    yield server
    server.close()


@pytest.fixture
def stopped_rspamd(rspamd: RspamdServer) -> Iterator[RspamdServer]:
    """The module's rspamd, stopped for one test and started again after it."""
    rspamd.stop()
    yield rspamd
    rspamd.start()


def scored(url: str, *, fallback: Any = "normal", timeout: float = 5.0) -> ScoredRouter:
    """rspamd at `url`; `fallback` is the policy's score_unavailable_pool."""
    policy = Policy(threshold=5.0, score_header="X-Spam-Score", score_unavailable_pool=fallback)
    return ScoredRouter(Router(policy=policy), RspamdScores(url, timeout=timeout, max_size=2**20))


def test_gtube_is_spam_and_an_ordinary_message_ham(rspamd: RspamdServer, aio_run: Run[Any]) -> None:
    async def main() -> tuple[Any, Any, dict[str, Any]]:
        scores = scored(rspamd.url)
        try:
            spam = await scores.route(SPAM, SUBMISSION)
            ham = await scores.route(HAM, SUBMISSION)
        finally:
            await scores.close()
        assert scores.source is not None
        return spam, ham, scores.source.stats.as_dict()

    spam, ham, stats = aio_run(main())
    assert (spam.pool, spam.reasons) == ("high-risk", ("spam-score",))
    assert spam.decision.score == 15.0 and spam.decision.score_source == "caller"
    assert spam.spam.source == "rspamd" and spam.spam.action == "reject" and "GTUBE" in spam.spam.symbols
    assert (ham.pool, ham.reasons) == ("normal", ())
    assert ham.spam.action == "no action" and ham.spam.score is not None and ham.spam.score <= 5.0
    assert ham.spam.symbols and "GTUBE" not in ham.spam.symbols
    assert stats == {"requests": 2, "verdicts": 2, "skipped_too_large": 0, "failures": dict.fromkeys(("timeout", "unreachable", "bad-response"), 0), "fallback_high_risk": 0}


def test_rspamd_is_told_the_client_the_envelope_and_the_user(rspamd: RspamdServer) -> None:
    submission = Submission("carol@sender.test", ("dan@dest.test", "erin@dest.test"), client_address="127.0.0.9", helo="helo.sender.test", login="app7", queue_id="4F3A21B9C0DE")
    scores = scored(rspamd.url)
    routed = asyncio.run(scores.route(message("envelope", message_id="<envelope@sender.test>"), submission))
    asyncio.run(scores.close())
    assert routed.spam is not None and routed.spam.symbols
    [line] = [line for line in rspamd.log().splitlines() if "rspamd_task_write_log" in line and "envelope@sender.test" in line]
    assert "ip: 127.0.0.9" in line and "from: <carol@sender.test>" in line and "user: app7" in line and "qid: <4F3A21B9C0DE>" in line
    assert "rcpts: <dan@dest.test,erin@dest.test>" in line  # one Rcpt header each
    # The envelope sender differs from the From: field, and rspamd says so.
    assert "FORGED_SENDER" in routed.spam.symbols


def test_a_trusted_score_header_wins_and_rspamd_is_not_asked(rspamd: RspamdServer) -> None:
    scores = scored(rspamd.url)
    trusted = message("scored upstream", extra_headers="X-Spam-Score: 1.5\r\n", body=GTUBE + "\r\n")
    routed = asyncio.run(scores.route(trusted, SUBMISSION))
    # The same message from a client whose header is not believed: rspamd decides.
    untrusted = asyncio.run(scores.route(trusted, SUBMISSION, untrusted_client=True))
    asyncio.run(scores.close())
    assert (routed.pool, routed.decision.score, routed.decision.score_source) == ("normal", 1.5, "header")
    assert routed.spam is not None and routed.spam.source == "header"
    assert (untrusted.pool, untrusted.decision.score, untrusted.reasons) == ("high-risk", 15.0, ("spam-score",))
    assert scores.source is not None and scores.source.stats.requests == 1


def test_the_tenant_threshold_applies_to_rspamd_scores(rspamd: RspamdServer) -> None:
    router = Router(policy=Policy(threshold=20.0, tenant_thresholds={"strict": 10.0}))
    scores = ScoredRouter(router, RspamdScores(rspamd.url, timeout=5.0, max_size=2**20))
    lenient = asyncio.run(scores.route(SPAM, SUBMISSION, tenant="app1"))
    strict = asyncio.run(scores.route(SPAM, SUBMISSION, tenant="strict"))
    asyncio.run(scores.close())
    assert (lenient.pool, lenient.decision.threshold) == ("normal", 20.0)
    assert (strict.pool, strict.decision.threshold, strict.reasons) == ("high-risk", 10.0, ("spam-score",))


def test_classify_json_records_rspamds_verdict(rspamd: RspamdServer, tmp_path: Path) -> None:
    (tmp_path / "gtube.eml").write_bytes(SPAM)
    (tmp_path / "ham.eml").write_bytes(HAM)
    out = subprocess.run(
        [sys.executable, "-m", "deliverypool.cli", "classify", "--json", "--rspamd", rspamd.url, str(tmp_path / "gtube.eml"), str(tmp_path / "ham.eml")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout
    spam, ham = (json.loads(line) for line in out.splitlines())
    assert (spam["pool"], spam["reasons"], spam["score"]) == ("high-risk", ["spam-score"], 15.0)
    assert spam["spam"]["source"] == "rspamd" and spam["spam"]["action"] == "reject" and "GTUBE" in spam["spam"]["symbols"]
    assert (ham["pool"], ham["spam"]["action"], ham["spam"]["failure"]) == ("normal", "no action", None)


# --- rspamd down, slow, talking nonsense ---------------------------------------------------


def test_rspamd_stopped_no_score_fallback(stopped_rspamd: RspamdServer, aio_run: Run[Any]) -> None:
    async def main() -> tuple[Any, Any, dict[str, Any]]:
        scores = scored(stopped_rspamd.url)
        try:
            spam, ham = await scores.route(SPAM, SUBMISSION), await scores.route(HAM, Submission(""))
        finally:
            await scores.close()
        assert scores.source is not None
        return spam, ham, scores.source.stats.as_dict()

    spam, ham, stats = aio_run(main())
    # Unscored: the GTUBE message is not known to be spam, so it is routed on its other facts;
    # the decision says why it has no score.
    assert (spam.pool, spam.reasons, spam.decision.score) == ("normal", (SCORE_UNAVAILABLE,), None)
    assert spam.spam is not None and (spam.spam.failure, spam.spam.score) == ("unreachable", None)
    assert (ham.pool, ham.reasons) == ("normal", (SCORE_UNAVAILABLE,))
    assert stats["failures"] == {"timeout": 0, "unreachable": 2, "bad-response": 0}
    assert (stats["requests"], stats["verdicts"], stats["fallback_high_risk"]) == (2, 0, 0)


def test_rspamd_stopped_high_risk_fallback(stopped_rspamd: RspamdServer) -> None:
    scores = scored(stopped_rspamd.url, fallback="high-risk")
    routed = asyncio.run(scores.route(HAM, SUBMISSION))
    asyncio.run(scores.close())
    assert (routed.pool, routed.reasons) == ("high-risk", (SCORE_UNAVAILABLE,))
    assert routed.decision.high_risk and routed.decision.score is None
    assert scores.source is not None and scores.source.stats.fallback_high_risk == 1


@contextlib.contextmanager
def tcp_server(reply: bytes | None) -> Iterator[str]:
    """A loopback TCP server that reads a request and answers `reply` (None: never answers)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        held = []
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            held.append(conn)
            if reply is not None:
                conn.recv(65536)
                conn.sendall(reply)
                conn.close()
        for conn in held:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        (None, "timeout"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello", "bad-response"),
        (b'HTTP/1.1 200 OK\r\nContent-Length: 15\r\nConnection: close\r\n\r\n{"score": "x"}\n', "bad-response"),
        (b'HTTP/1.1 500 Internal\r\nContent-Length: 17\r\nConnection: close\r\n\r\n{"error": "boom"}', "bad-response"),
    ],
)
def test_a_silent_or_nonsensical_rspamd_is_a_counted_failure(reply: bytes | None, failure: str) -> None:
    with tcp_server(reply) as url:
        # A short timeout only where the server stays silent: a loaded machine may take longer
        # than that to answer, which would read as a timeout.
        scores = scored(url, timeout=0.3 if reply is None else 10.0, fallback="high-risk")
        routed = asyncio.run(scores.route(HAM, SUBMISSION))
        asyncio.run(scores.close())
    assert routed.spam is not None and routed.spam.failure == failure
    assert (routed.pool, routed.reasons) == ("high-risk", (SCORE_UNAVAILABLE,))
    assert scores.source is not None and scores.source.stats.failures[failure] == 1


# --- the relay ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scored_relay(tmp_path: Path, url: str, fallback: str) -> AsyncIterator[tuple[Relay, list[Accepted], Any, Any]]:
    async with sink("127.0.0.1", free_port(), "dest") as dest:
        config = relay_config(
            tmp_path / "spool",
            smarthost=f"127.0.0.1:{dest.port}",
            policy=f'\n[score]\nsource = "rspamd"\nurl = "{url}"\ntimeout = "2s"\nfallback = "{fallback}"\n',
        )
        relay = Relay(config)
        accepted: list[Accepted] = []
        relay.on_accept = lambda result, content: accepted.append(result)
        await relay.start()
        await relay.listen()
        try:
            yield relay, accepted, dest, config
        finally:
            await relay.stop()


def test_the_relay_routes_by_rspamds_score_and_keeps_accepting_when_rspamd_stops(rspamd: RspamdServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with scored_relay(tmp_path, rspamd.url, "no-score") as (relay, accepted, dest, config):
            port = config.listener.port
            await aiosmtplib.send(SPAM, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=port)
            await aiosmtplib.send(HAM, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=port)
            rspamd.stop()  # mid-run
            try:
                late = message("while rspamd is down", body=GTUBE + "\r\n", message_id="<late@sender.test>")
                errors, reply = await aiosmtplib.send(late, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=port)
            finally:
                rspamd.start()
            assert errors == {} and reply.startswith("2.0.0 Ok: queued")
            await dest.wait_for(3)
            by_id = {d.content.split(b"Message-ID: ")[1].split(b"\r\n")[0]: d.peer for d in dest.deliveries}
            assert by_id == {b"<gtube@sender.test>": HIGH_RISK_SOURCE, b"<ham@sender.test>": NORMAL_SOURCE, b"<late@sender.test>": NORMAL_SOURCE}
            spam, ham, late_result = accepted
            assert (spam.pool, spam.reasons) == ("high-risk", ("spam-score",)) and spam.spam is not None and spam.spam.action == "reject"
            assert (ham.pool, ham.reasons) == ("normal", ()) and ham.spam is not None and ham.spam.action == "no action"
            assert (late_result.pool, late_result.reasons) == ("normal", (SCORE_UNAVAILABLE,))
            assert late_result.spam is not None and late_result.spam.failure == "unreachable"
            assert relay.scores is not None and relay.scores.source is not None
            assert relay.scores.source.stats.failures["unreachable"] == 1

    asyncio.run(main())


def test_the_relay_high_risk_fallback_sends_unscored_mail_from_the_high_risk_pool(stopped_rspamd: RspamdServer, tmp_path: Path) -> None:
    async def main() -> None:
        async with scored_relay(tmp_path, stopped_rspamd.url, "high-risk") as (relay, accepted, dest, config):
            errors, reply = await aiosmtplib.send(HAM, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=config.listener.port)
            assert errors == {} and reply.startswith("2.0.0 Ok: queued")
            [delivery] = await dest.wait_for(1)
            assert delivery.peer == HIGH_RISK_SOURCE
            assert (accepted[0].pool, accepted[0].reasons) == ("high-risk", (SCORE_UNAVAILABLE,))
            rows = await eventually_rows(relay)
            assert rows == [("high-risk", SCORE_UNAVAILABLE)]

    asyncio.run(main())


async def eventually_rows(relay: Relay) -> list[tuple[str, str]]:
    """The pool and reasons the spool stored for each message."""
    rows: list[tuple[str, str]] = []

    def read() -> bool:
        import sqlite3

        with contextlib.closing(sqlite3.connect(relay.spool.directory / "spool.sqlite3")) as db:
            rows[:] = db.execute("SELECT pool, reasons FROM messages").fetchall()
        return bool(rows)

    await eventually(read, what="the spool's rows")
    return rows


def test_the_score_sources_counts_are_metrics(stopped_rspamd: RspamdServer, tmp_path: Path) -> None:
    """rspamd unreachable with fallback = "high-risk": the scrape counts the failed check by its
    reason and the message sent high-risk for want of a score."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    async def main() -> dict[str, float]:
        async with scored_relay(tmp_path, stopped_rspamd.url, "high-risk") as (relay, accepted, dest, config):
            for _ in range(2):
                await aiosmtplib.send(HAM, sender="alice@sender.test", recipients=["bob@dest.test"], hostname="127.0.0.1", port=config.listener.port)
            await dest.wait_for(2)
            await relay.observer.flush()
            text = generate_latest(relay.observer.registry).decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("deliverypool_score_"):
                    found[sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items()))] = sample.value
        return found

    assert asyncio.run(main()) == {
        "deliverypool_score_checks_total{result=unreachable}": 2.0,
        "deliverypool_score_fallbacks_total": 2.0,
    }
