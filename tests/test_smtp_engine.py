"""The relay's SMTP engine (rust/smtp/server.rs through deliverypool._core.SmtpServer and
ingress/session.py): against a line-by-line reference for any session split across reads at any
points, and with real peers on loopback: Python's smtplib (PIPELINING and BDAT written by hand),
Postfix's smtp-source, and a real Postfix relaying into the relay over STARTTLS with
PIPELINING. And the RFC 3461 parameters from RCPT to the DSN the relay writes."""

from __future__ import annotations

import asyncio
import contextlib
import email
import re
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool._core import SmtpMessage, SmtpServer, SmtpServerConfig
from deliverypool.queue.listing import listing, read_counters
from deliverypool.queue.schema import MIGRATIONS
from deliverypool.queue.spool import Spool
from tests.postfix import PostfixInstance
from tests.smtp_sinks import eventually, free_port, message, relay_config, sink
from tests.test_data_path import model
from tests.test_ingress_hardening import relay_in_a_thread
from tests.test_relay import config, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SENDER = "alice@sender.test"
SIZE = 300
LINE = 100


# --- the engine against a line-by-line reference ---------------------------------------------


class Decider:
    """The handler the engine calls: a sender holding "x" and a recipient holding "q" are
    refused, every message is taken."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_mail(self, address: str, smtputf8: bool) -> str:
        self.seen.append(f"MAIL {address}")
        return "550 5.7.1 no" if "x" in address else "250 2.1.0 OK"

    def on_rcpt(self, address: str, mail_from: str, smtputf8: bool, accepted: int) -> str:
        self.seen.append(f"RCPT {address} {mail_from} {accepted}")
        return "550 5.1.1 no" if "q" in address else "250 2.1.5 OK"

    def on_message(self, message: SmtpMessage) -> str:
        body = message.content.split(b"\r\n", 2)[2]  # after the two lines of the Received: field
        self.seen.append(f"MESSAGE {message.mail_from} {','.join(message.recipients)} {body!r} {message.chunked}")
        return "250 2.0.0 queued"

    def on_auth(self, mechanism: str | None, login: bytes, password: bytes, failure: str | None) -> str:
        raise AssertionError("no AUTH in these sessions")

    def on_starttls(self) -> None:
        raise AssertionError("no STARTTLS in these sessions")


def reference(stream: bytes) -> tuple[list[str], list[str]]:
    """What the engine must answer, reading `stream` a line at a time (the DATA section with
    the model of tests/test_data_path.py): the reply lines and the decisions asked for."""
    replies = ["220 relay.test deliverypool"]
    seen: list[str] = []
    decider = Decider()
    helo = esmtp = False
    mail: str | None = None
    rcpts: list[str] = []
    chunks: bytes | None = None
    unknown = 0
    at = 0
    while True:
        end = stream.find(b"\n", at)
        if end < 0:
            break
        line = stream[at:end].rstrip(b"\r\n")
        at = end + 1
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if not line or not verb.isascii():
            replies.append("500 5.5.2 Error: bad syntax")
        elif verb in (b"HELO", b"EHLO"):
            helo, esmtp, mail, rcpts, chunks = True, verb == b"EHLO", None, [], None
            if esmtp:
                replies += ["250-relay.test", f"250-SIZE {SIZE}", "250-8BITMIME", "250-SMTPUTF8", "250-PIPELINING", "250-CHUNKING",
                            "250-ENHANCEDSTATUSCODES", "250-DSN", "250 HELP"]
            else:
                replies.append("250 relay.test")
        elif verb == b"MAIL":
            if not helo:
                replies.append("503 5.5.1 Error: send HELO first")
            elif mail is not None:
                replies.append("503 5.5.1 Error: nested MAIL command")
            else:
                address = arg[len(b"FROM:<"):-1].decode()
                reply = decider.on_mail(address, False)
                replies.append(reply)
                mail = address if reply.startswith("2") else None
        elif verb == b"RCPT":
            if not helo:
                replies.append("503 5.5.1 Error: send HELO first")
            elif mail is None:
                replies.append("503 5.5.1 Error: need MAIL command")
            else:
                address = arg[len(b"TO:<"):-1].decode()
                reply = decider.on_rcpt(address, mail, False, len(rcpts))
                replies.append(reply)
                if reply.startswith("2"):
                    rcpts.append(address)
        elif verb == b"DATA":
            if not helo:
                replies.append("503 5.5.1 Error: send HELO first")
            elif chunks is not None:
                replies.append("503 5.5.1 Error: DATA after BDAT")
            elif not rcpts:
                replies.append("503 5.5.1 Error: need RCPT command")
            else:
                replies.append("354 End data with <CR><LF>.<CR><LF>")
                used, content, problems = model(stream[at:], SIZE, LINE)
                if used is None:
                    break
                at += used
                if content is None:
                    replies.append(_refusal(problems))
                else:
                    replies.append(_message(decider, mail, rcpts, content, False))
                mail, rcpts = None, []
        elif verb == b"BDAT":
            size_text, _, last = arg.partition(b" ")
            size = int(size_text)
            if len(stream) - at < size:
                break
            chunk, at = stream[at:at + size], at + size
            if not helo:
                replies.append("503 5.5.1 Error: send HELO first")
            elif mail is None:
                replies.append("503 5.5.1 Error: need MAIL command")
            elif not rcpts:
                replies.append("503 5.5.1 Error: need RCPT command")
            else:
                chunks = (chunks or b"") + chunk
                content, problems = _chunked(chunks, final=bool(last))
                if problems:
                    replies.append(_refusal(problems))
                    mail, rcpts, chunks = None, [], None
                elif not last:
                    replies.append(f"250 2.0.0 {size} octets received")
                else:
                    assert content is not None
                    replies.append(_message(decider, mail, rcpts, content, True))
                    mail, rcpts, chunks = None, [], None
        elif verb == b"RSET":
            mail, rcpts, chunks = None, [], None
            replies.append("250 2.0.0 OK")
        elif verb == b"NOOP":
            replies.append("250 OK")
        elif verb == b"QUIT":
            replies.append("221 2.0.0 Bye")
            break
        else:
            unknown += 1
            if unknown >= 5:
                replies.append("421 4.7.0 relay.test Too many unrecognized commands; closing connection")
                break
            shown = "".join(chr(b) if 0x20 <= b < 0x7F else "?" for b in verb)
            replies.append(f'500 5.5.1 Error: command "{shown}" not recognized')
    seen = decider.seen
    return replies, seen


def _message(decider: Decider, mail: str | None, rcpts: list[str], content: bytes, chunked: bool) -> str:
    decider.seen.append(f"MESSAGE {mail} {','.join(rcpts)} {content!r} {chunked}")
    return "250 2.0.0 queued"


def _chunked(data: bytes, final: bool) -> tuple[bytes | None, set[str]]:
    """The BDAT chunks so far, line by line: (the message once `final`, the problems seen by
    now). A CR at the very end of a chunk waits for the next one to say whether it is bare."""
    problems = set()
    lines = data.split(b"\r\n")
    last = lines.pop()
    for line in lines:
        if b"\r" in line or b"\n" in line:
            problems.add("bare-line-ending")
        if b"\0" in line:
            problems.add("nul")
        if len(line) + 2 > LINE:
            problems.add("line-too-long")
    open_line = last[:-1] if last.endswith(b"\r") else last
    if b"\0" in last:
        problems.add("nul")
    if b"\n" in last or b"\r" in open_line or (final and last.endswith(b"\r")):
        problems.add("bare-line-ending")
    if len(open_line) + 2 > LINE:
        problems.add("line-too-long")
    if (len(data) > SIZE) if final else (len(data) - len(last) > SIZE + 3):
        problems.add("too-large")
    if problems or not final:
        return None, problems
    return data + (b"\r\n" if last else b""), problems


_REFUSALS = {
    "too-large": "552 5.3.4 Error: too much mail data",
    "line-too-long": "500 5.5.2 Line too long (see RFC 5321 4.5.3.1.6)",
    "bare-line-ending": "554 5.6.0 Message contains a bare LF or CR; use CRLF line endings (SMTP smuggling)",
    "nul": "554 5.6.0 Message contains a NUL character (RFC 5321 4.5.2)",
}


def _refusal(problems: set[str]) -> str:
    # Which problem is named when there are several is the reader's (tests/test_data_path.py
    # checks that it is one of them); the reference names the one a single problem would get.
    return _REFUSALS["too-large"] if "too-large" in problems else "5xx"


_LINES = st.sampled_from([b"a", b"", b".", b"..x", b".x", b"Subject: s", b"x" * 120, b"a\nb", b"a\rb", b"\0", b"\xff\xfe"])
_BODY = st.lists(_LINES, max_size=6).map(lambda lines: b"".join(line + b"\r\n" for line in lines) + b".\r\n")
_CHUNK = st.lists(_LINES, max_size=3).map(lambda lines: b"".join(line + b"\r\n" for line in lines))
_COMMAND = st.one_of(
    st.sampled_from([b"EHLO c\r\n", b"HELO c\r\n", b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<x@b.test>\r\n", b"RCPT TO:<r@d.test>\r\n",
                     b"RCPT TO:<q@d.test>\r\n", b"RSET\r\n", b"NOOP\r\n", b"XYZZY\r\n", b"\r\n", b"noop\n"]),
    _BODY.map(lambda body: b"DATA\r\n" + body),
    st.tuples(_CHUNK, st.booleans(), st.sampled_from([b"", b"tail", b"\r"])).map(
        lambda c: b"BDAT %d%s\r\n" % (len(c[0] + c[2]), b" LAST" if c[1] else b"") + c[0] + c[2]
    ),
)
_SESSION = st.tuples(st.integers(0, 2), st.lists(_COMMAND, max_size=12)).map(
    lambda p: [b"EHLO c\r\n", b"MAIL FROM:<a@b.test>\r\n", b"RCPT TO:<r@d.test>\r\n"][: p[0] * 3 // 2] + p[1]
)


def run_engine(stream: bytes, cuts: list[int]) -> tuple[list[str], list[str]]:
    engine = SmtpServer(SmtpServerConfig("relay.test", size_limit=SIZE, line_length_limit=LINE, command_size_limit=512), "192.0.2.1")
    decider = Decider()
    out = engine.take_output() or b""
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        out += engine.feed(stream[start:end], decider) or b""
        if engine.closed:
            break
    return out.decode("ascii").split("\r\n")[:-1], decider.seen


@given(_SESSION, st.lists(st.integers(0, 2000), max_size=8))
def test_the_engine_answers_as_the_line_by_line_reference_for_any_reads(session: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(session)
    points = sorted({min(c, len(stream)) for c in cuts})
    replies, seen = run_engine(stream, points)
    want_replies, want_seen = reference(stream)
    assert seen == want_seen
    assert len(replies) == len(want_replies), (replies, want_replies)
    for got, want in zip(replies, want_replies):
        if want == "5xx":  # a refused message: one of the refusals of its problems
            assert got in _REFUSALS.values(), got
        else:
            assert got == want
    assert run_engine(stream, []) == (replies, seen), "one read or many: the same session"


# --- real clients: smtplib (PIPELINING and BDAT by hand) --------------------------------------


def _replies(sock: socket.socket, count: int) -> list[bytes]:
    """`count` whole replies (multi-line ones joined) from `sock`."""
    data = b""
    while True:
        lines = data.split(b"\r\n")[:-1]
        finished = [line for line in lines if line[3:4] != b"-"]
        if len(finished) >= count:
            return [line for line in lines if line[3:4] != b"-"][:count]
        chunk = sock.recv(65536)
        if not chunk:
            return finished
        data += chunk


def test_smtplib_pipelining_bdat_and_extensions(aio_run: Run, tmp_path: Path) -> None:
    """smtplib sees every extension the engine offers; a whole pipelined transaction with BDAT
    chunks in one write gets its replies in order and stores the message as sent (a line that
    starts with a dot is text in BDAT); DATA with dot-stuffing and SMTPUTF8 through smtplib's
    own sendmail; BDAT without a transaction is read and refused, and the session goes on."""
    conf = config(tmp_path, 'size_limit = "100k"')
    stored: list[bytes] = []

    async def main() -> None:
        async with running(conf) as relay:
            relay.on_accept = lambda accepted, content: stored.append(content)
            port = conf.listener.port

            def client() -> None:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                    code, _ = smtp.ehlo("client.test")
                    assert code == 250
                    for feature in ("pipelining", "chunking", "dsn", "8bitmime", "smtputf8", "enhancedstatuscodes", "size"):
                        assert smtp.has_extn(feature), feature
                    assert smtp.esmtp_features["size"] == "102400"
                    errors = smtp.sendmail(
                        SENDER, ["x@example.org"], message("dots", message_id="<dots@t>", body=".leading dot\r\n..two\r\n"),
                        mail_options=["BODY=8BITMIME", "SMTPUTF8"],
                    )
                    assert errors == {}
                    body = b"Subject: chunked\r\nMessage-ID: <bdat@t>\r\n\r\n.not stuffed\r\n"
                    first, second = body[:20], body[20:]
                    pipelined = (
                        b"MAIL FROM:<" + SENDER.encode() + b"> BODY=8BITMIME SIZE=%d\r\nRCPT TO:<y@example.org>\r\nRCPT TO:<z@example.org>\r\n"
                        % len(body)
                        + b"BDAT %d\r\n" % len(first) + first + b"BDAT %d LAST\r\n" % len(second) + second
                        + b"BDAT 5 LAST\r\nabcde" + b"NOOP\r\n"
                    )
                    assert smtp.sock is not None
                    smtp.sock.sendall(pipelined)
                    replies = _replies(smtp.sock, 7)
                    assert [r[:3] for r in replies] == [b"250", b"250", b"250", b"250", b"250", b"503", b"250"], replies
                    assert replies[3] == b"250 2.0.0 20 octets received"
                    assert replies[4].startswith(b"250 2.0.0 Ok: queued as ")
                    assert replies[5] == b"503 5.5.1 Error: need MAIL command"

            await asyncio.to_thread(client)
            assert relay.sessions is not None and relay.sessions.stats.chunked == 1
            rows = {row.header_message_id: row for row in listing(conf.spool.directory)}
            assert set(rows) == {"<dots@t>", "<bdat@t>"}
            assert sorted(row.address for row in listing(conf.spool.directory) if row.header_message_id == "<bdat@t>") == [
                "y@example.org", "z@example.org"
            ]

    aio_run(main())
    by_id = {re.search(rb"Message-ID: (<[^>]+>)", content).group(1): content for content in stored}  # type: ignore[union-attr]
    assert by_id[b"<bdat@t>"].endswith(b"\r\n\r\n.not stuffed\r\n")
    assert by_id[b"<dots@t>"].endswith(b"\r\n.leading dot\r\n..two\r\n")
    assert all(content.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test (deliverypool) with ESMTP; ") for content in stored)


# --- RFC 3461: from RCPT to the DSN --------------------------------------------------------------

DESTINATION = "127.0.0.20"


def test_dsn_parameters_are_kept_and_honoured(aio_run: Run, tmp_path: Path) -> None:
    """NOTIFY, RET, ENVID and ORCPT given at MAIL and RCPT reach the DSN: the failed recipient is
    reported with its Original-Recipient and the whole message (RET=FULL), the one that asked
    NOTIFY=SUCCESS is reported relayed, the one that asked NOTIFY=NEVER is not in it, and the
    report carries Original-Envelope-Id. A message whose only failure asked NEVER gets no DSN."""
    port = free_port(DESTINATION)
    conf = relay_config(tmp_path / "spool", smarthost=f"{DESTINATION}:{port}")
    rejected = {"bad@dest.test": "550 5.1.1 no such user", "never@dest.test": "550 5.1.1 no such user"}

    def client() -> None:
        with smtplib.SMTP(conf.listener.host, conf.listener.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail(SENDER, ["RET=FULL", "ENVID=QQ+2B1"])
            assert smtp.rcpt("good@dest.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;good+2Bx@dest.test"])[0] == 250
            assert smtp.rcpt("bad@dest.test", ["ORCPT=rfc822;bad@dest.test"])[0] == 250
            assert smtp.rcpt("never@dest.test", ["NOTIFY=NEVER"])[0] == 250
            assert smtp.data(message("dsn please", message_id="<dsn@t>", body="the whole body\r\n"))[0] == 250
            assert smtp.rcpt("x@dest.test", ["NOTIFY=SOMETIMES"])[0] == 503  # no transaction
            smtp.mail(SENDER)
            assert smtp.rcpt("x@dest.test", ["NOTIFY=SOMETIMES"])[0] == 501
            assert smtp.rcpt("x@dest.test", ["ORCPT=rfc822"])[0] == 501
            assert smtp.rcpt("never@dest.test", ["NOTIFY=NEVER"])[0] == 250
            assert smtp.data(message("no dsn", message_id="<quiet@t>"))[0] == 250

    async def main() -> None:
        async with sink(DESTINATION, port, "destination", reject_rcpt=rejected) as destination:
            async with running(conf) as relay:
                await asyncio.to_thread(client)
                # The two messages to good@ (bad@ and never@ are refused), then the one DSN.
                await destination.wait_for(2, timeout=30)
                await eventually(lambda: read_counters(conf.spool.directory)["bounces"] == 1 and not listing(conf.spool.directory),
                                 what="the DSN stored and everything delivered")
                (dsn,) = [d for d in destination.deliveries if d.mail_from in ("", "<>")]
                assert dsn.rcpt_tos == [SENDER]
                assert relay.engine is not None and relay.engine.stats.bounces == 1
        report = email.message_from_bytes(dsn.content)
        parts = list(report.walk())
        status = next(p for p in parts if p.get_content_type() == "message/delivery-status")
        groups = [dict(g.items()) for g in status.get_payload()]  # type: ignore[union-attr]
        assert groups[0]["Original-Envelope-Id"] == "QQ+1"
        recipients = {g["Final-Recipient"]: g for g in groups[1:]}
        assert set(recipients) == {"rfc822; good@dest.test", "rfc822; bad@dest.test"}
        assert recipients["rfc822; good@dest.test"]["Action"] == "relayed"
        assert recipients["rfc822; good@dest.test"]["Original-Recipient"] == "rfc822;good+x@dest.test"
        assert recipients["rfc822; bad@dest.test"]["Action"] == "failed"
        assert recipients["rfc822; bad@dest.test"]["Original-Recipient"] == "rfc822;bad@dest.test"
        (returned,) = [p for p in parts if p.get_content_type() == "message/rfc822"]
        assert b"the whole body" in dsn.content and b"<dsn@t>" in dsn.content and b"<quiet@t>" not in dsn.content

    aio_run(main())


def test_notify_delay_gets_one_delayed_report(aio_run: Run, tmp_path: Path) -> None:
    """A recipient that asked NOTIFY=DELAY and is deferred twice gets one "delayed" report
    (Action: delayed, the 4.x.x of the reply), not one per deferral; once the destination takes
    it, it is delivered and nothing more is sent (no SUCCESS asked). A recipient deferred
    without asking for DELAY gets no report."""
    port = free_port(DESTINATION)
    conf = relay_config(tmp_path / "spool", smarthost=f"{DESTINATION}:{port}")
    busy = "451 4.2.1 mailbox busy"

    def client() -> None:
        with smtplib.SMTP(conf.listener.host, conf.listener.port, timeout=30) as smtp:
            smtp.ehlo("client.test")
            smtp.mail(SENDER, ["ENVID=slow-1"])
            assert smtp.rcpt("slow@dest.test", ["NOTIFY=DELAY,FAILURE"])[0] == 250
            assert smtp.rcpt("quiet@dest.test")[0] == 250
            assert smtp.data(message("slow", message_id="<slow@t>"))[0] == 250

    async def main() -> None:
        async with sink(DESTINATION, port, "destination", reject_rcpt={"slow@dest.test": busy, "quiet@dest.test": busy}) as destination:
            async with running(conf) as relay:
                await asyncio.to_thread(client)
                engine = relay.engine
                assert engine is not None
                await eventually(lambda: engine.stats.deferred >= 4, what="two deferrals of each")
                (report,) = await destination.wait_for(1, timeout=30)
                destination.handler.reject_rcpt.clear()
                await eventually(lambda: not listing(conf.spool.directory), what="both delivered")
                assert [d.mail_from for d in destination.deliveries].count("") + [d.mail_from for d in destination.deliveries].count("<>") == 1
                assert read_counters(conf.spool.directory)["bounces"] == 1
        assert report.rcpt_tos == [SENDER]
        assert b"Subject: Delayed Mail (still being retried)" in report.content
        status = next(p for p in email.message_from_bytes(report.content).walk() if p.get_content_type() == "message/delivery-status")
        groups = [dict(g.items()) for g in status.get_payload()]  # type: ignore[union-attr]
        assert groups[0]["Original-Envelope-Id"] == "slow-1"
        assert [(g["Final-Recipient"], g["Action"], g["Status"]) for g in groups[1:]] == [("rfc822; slow@dest.test", "delayed", "4.2.1")]

    aio_run(main())


def test_a_spool_of_schema_3_gains_the_pool_and_dsn_columns(aio_run: Run, tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    with contextlib.closing(sqlite3.connect(directory / "spool.sqlite3")) as db:
        for script in MIGRATIONS[:3]:
            for statement in filter(None, (s.strip() for s in script.split(";"))):
                db.execute(statement)
        db.execute("INSERT INTO messages (queue_id, mail_from, pool, reasons, received_at, size, body) VALUES ('Q1', 'a@b.test', 'normal', '', 0, 1, x'41')")
        db.execute("INSERT INTO recipients (message, address, state, next_attempt, updated_at) VALUES (1, 'r@d.test', 'queued', 0, 0)")
        db.execute("PRAGMA user_version = 3")
        db.commit()

    async def main() -> None:
        spool = Spool(directory)
        recovery = await spool.open()
        try:
            assert [job.queue_id for job in recovery.pending] == ["Q1"]
        finally:
            await spool.close()

    aio_run(main())
    with contextlib.closing(sqlite3.connect(directory / "spool.sqlite3")) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT dsn_ret, dsn_envid FROM messages").fetchall() == [(None, None)]
        assert db.execute("SELECT dsn_notify, dsn_orcpt FROM recipients").fetchall() == [(None, None)]


# --- Postfix as the client: smtp-source, and Postfix relaying into the relay ---------------------


def _needs(program: str) -> str:
    path = shutil.which(program) or (f"/usr/sbin/{program}" if Path(f"/usr/sbin/{program}").exists() else None)
    if path is None:
        pytest.fail(f"{program} is missing: scripts/install-test-servers.sh installs Postfix")
    return path


def test_smtp_source_sessions_are_all_stored(aio_run: Run, tmp_path: Path) -> None:
    """Postfix's load generator (the benches' client), 10 sessions of 2 KB messages: every
    message it sent is in the spool, each session's messages on one connection."""
    smtp_source = _needs("smtp-source")
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf) as relay:
            process = await asyncio.create_subprocess_exec(
                smtp_source, "-s", "10", "-m", "60", "-l", "2000", "-f", SENDER, "-t", "x@example.org", f"127.0.0.1:{conf.listener.port}",
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode == 0, out
            assert relay.sessions is not None and relay.sessions.stats.messages == 60
        assert read_counters(conf.spool.directory)["accepted"] == 60

    aio_run(main())


@contextlib.contextmanager
def relaying_postfix(relay_port: int, ca_file: Path) -> Iterator[PostfixInstance]:
    """A private Postfix (no milter) whose relayhost is the relay, over STARTTLS (required,
    the relay's certificate verified against `ca_file`)."""
    _needs("postfix")
    postfix = PostfixInstance(
        port=free_port(),
        relay_port=relay_port,
        readme=False,
        extra_main=f"smtp_tls_security_level = verify\nsmtp_tls_CAfile = {ca_file}\nsmtp_tls_verify_cert_match = 127.0.0.1\nsmtp_tls_loglevel = 1\n",
    )
    try:
        postfix.start()
        yield postfix
    finally:
        postfix.close()


def tls_listener(tmp_path: Path) -> tuple[str, Path]:
    """The [listener] lines for STARTTLS with a certificate for 127.0.0.1, and its CA's file."""
    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(tmp_path / "relay.crt")
    certificate.private_key_pem.write_to_path(tmp_path / "relay.key")
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")
    return f'tls_certificate = "{tmp_path / "relay.crt"}"\ntls_key = "{tmp_path / "relay.key"}"', tmp_path / "ca.pem"


@pytest.mark.slow
def test_postfix_relays_many_pipelined_messages_over_starttls(aio_run: Run, tmp_path: Path) -> None:
    """A real Postfix as the relay's client, twelve messages of two recipients: it takes STARTTLS
    (its TLS level is "verify": no message goes in plain text) and pipelines MAIL, RCPT and
    DATA. Every message it accepted arrives in the relay's spool. (Postfix's SMTP client does
    not send BDAT, whatever the server offers: only its server takes it; BDAT is tested with
    smtplib above.)"""
    listener, ca_file = tls_listener(tmp_path)
    conf = config(tmp_path, listener)
    count = 12

    with relay_in_a_thread(aio_run, conf), relaying_postfix(conf.listener.port, ca_file) as postfix:
        try:
            with smtplib.SMTP("127.0.0.1", postfix.port, timeout=60) as smtp:
                for n in range(count):
                    body = message(f"via postfix {n}", message_id=f"<pf-{n}@t>", body=f"line {n}\r\n.dot line\r\n" * 50)
                    smtp.sendmail(SENDER, [f"r{n}@example.org", f"s{n}@example.org"], body)
        except (OSError, smtplib.SMTPException) as error:  # what Postfix was doing, to tell why
            raise AssertionError(f"{error!r} from Postfix's smtpd\n{postfix.log()[-3000:]}") from error
        deadline = time.monotonic() + 90
        while len({row.header_message_id for row in listing(conf.spool.directory)}) < count and time.monotonic() < deadline:
            time.sleep(0.3)
        ids = {row.header_message_id for row in listing(conf.spool.directory)}
        log = postfix.log()
    assert ids == {f"<pf-{n}@t>" for n in range(count)}, log[-3000:]
    assert "Verified TLS connection established to 127.0.0.1" in log, log[-3000:]
    assert "status=sent" in log


def test_postfix_relays_over_starttls(tmp_path: Path) -> None:
    """The same as the slow test with one message, on asyncio's loop only (the STARTTLS
    hand-off on uvloop is tested with aiosmtplib in tests/test_ingress_hardening.py): the
    relay's counts show it came over TLS (and in DATA: Postfix's client sends no BDAT)."""
    listener, ca_file = tls_listener(tmp_path)
    conf = config(tmp_path, listener)

    async def main() -> None:
        async with running(conf) as relay:
            with relaying_postfix(conf.listener.port, ca_file) as postfix:
                await asyncio.to_thread(_send_through, postfix.port)
                await eventually(lambda: bool(listing(conf.spool.directory)), timeout=60, what=f"the message via Postfix\n{postfix.log()[-2000:]}")
                log = postfix.log()
            stats = relay.sessions.stats if relay.sessions is not None else None
            assert stats is not None and stats.tls >= 1 and stats.messages == 1 and stats.chunked == 0, (stats, log[-2000:])
            assert "Verified TLS connection established to 127.0.0.1" in log, log[-2000:]
        (row,) = listing(conf.spool.directory)
        assert row.header_message_id == "<pf@t>"

    asyncio.run(main())


def _send_through(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(SENDER, ["r@example.org"], message("via postfix", message_id="<pf@t>"))


# --- logging off the hot path ------------------------------------------------------------------


def test_log_lines_are_written_in_batches_and_warnings_at_once() -> None:
    import io
    import logging

    from deliverypool.observe.logs import BatchedStreamHandler

    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.2)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.Logger("batched")
    logger.addHandler(handler)
    logger.info("accepted %d", 1)
    logger.info("accepted %d", 2)
    assert stream.getvalue() == "", "INFO lines wait for the batch"
    logger.warning("refused")
    assert stream.getvalue() == "INFO accepted 1\nINFO accepted 2\nWARNING refused\n", "a warning writes the batch at once, in order"
    logger.info("accepted %d", 3)
    deadline = time.monotonic() + 10
    while "accepted 3" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stream.getvalue().endswith("INFO accepted 3\n"), "the timer writes what waits"
    logger.info("accepted %d", 4)
    handler.close()
    assert stream.getvalue().endswith("INFO accepted 4\n"), "closing (logging.shutdown at exit) writes the rest"


@given(
    created=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    text=st.text(max_size=40),
    args=st.lists(st.integers(), max_size=2),
    with_exception=st.booleans(),
    with_stack=st.booleans(),
)
def test_the_line_formatter_writes_what_the_stock_formatter_writes(
    created: float, text: str, args: list[int], with_exception: bool, with_stack: bool
) -> None:
    """LineFormatter (the relay's: the time formatted once per second, the line put together
    directly) against `logging.Formatter("%(asctime)s %(name)s %(message)s")`, the format it
    replaced: the same text for any time, message, arguments, exception and stack, and again for
    a second record within the same second."""
    import logging
    import sys

    from deliverypool.observe.logs import LineFormatter

    exc_info = None
    if with_exception:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    message_text = text.replace("%", "%%") + " %d" * len(args)
    ours, stock = LineFormatter(), logging.Formatter("%(asctime)s %(name)s %(message)s")
    for later in (0.0, 0.0004):
        record = logging.LogRecord("deliverypool.relay", logging.INFO, __file__, 1, message_text, tuple(args), exc_info, sinfo="Stack (most recent call last):\n  x" if with_stack else None)
        record.created = created + later
        record.msecs = (record.created - int(record.created)) * 1000
        twin = logging.makeLogRecord(record.__dict__)
        expected = stock.format(twin)
        assert ours.format(record) == expected
        if not with_exception and not with_stack:
            # info_line's path: the same line from the time, the name and the message alone.
            assert ours.line(record.created, record.name, record.getMessage()) == expected


_INFO_LINE_SCRIPT = """
import logging, sys
from deliverypool.app import configure_logging
from deliverypool.observe import logs
configure_logging(batched=True)
log = logging.getLogger("deliverypool.relay")
handler = logging.getLogger().handlers[0]
print("takes", handler._takes(log), file=sys.stdout, flush=True)
for n in range(3):
    logs.info_line(log, "accepted queue_id=%s recipients=%d note=%r", f"Q{n}", n, "50%", extra={"event": "accepted"})
    log.info("accepted queue_id=%s recipients=%d note=%r", f"Q{n}", n, "50%", extra={"event": "accepted"})
logs.info_line(log, "no arguments, 100%")
log.setLevel(logging.WARNING)
logs.info_line(log, "not written: the logger's level is WARNING")
log.setLevel(logging.NOTSET)
log.warning("then a warning")
"""


def test_info_line_writes_what_logger_info_writes_into_the_same_batches() -> None:
    """The relay's per-message lines (`info_line`) skip the LogRecord when the relay's batched
    handler is the only one: the lines are the same as ``logger.info``'s, in order, in the same
    batches, and a level that drops INFO drops them too. (A process of its own: pytest's own
    logging handlers would send every line the long way.)"""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _INFO_LINE_SCRIPT], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "takes True", "the direct path was taken"
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
    lines = done.stderr.splitlines()
    assert all(re.match(stamp, line) for line in lines), lines
    texts = [line[24:] for line in lines]
    expected = []
    for n in range(3):
        expected += [f"deliverypool.relay accepted queue_id=Q{n} recipients={n} note='50%'"] * 2
    assert texts == [*expected, "deliverypool.relay no arguments, 100%", "deliverypool.relay then a warning"]


def test_info_line_goes_the_long_way_when_another_handler_listens(caplog: pytest.LogCaptureFixture) -> None:
    """With another handler (here pytest's), `info_line` is ``logger.info``: the record reaches
    it with its `extra` fields."""
    import logging

    from deliverypool.observe.logs import info_line

    with caplog.at_level(logging.INFO, logger="deliverypool.relay"):
        info_line(logging.getLogger("deliverypool.relay"), "accepted queue_id=%s", "Q1", extra={"event": "accepted"})
    (record,) = [r for r in caplog.records if r.name == "deliverypool.relay"]
    assert record.getMessage() == "accepted queue_id=Q1" and record.event == "accepted"
