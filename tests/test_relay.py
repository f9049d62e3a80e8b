"""The SMTP front end: relay control, limits, smuggling, the score header, 250-after-spool, and
mounting RoutingHandler in a user's own aiosmtpd Controller. Delivery goes to a smarthost
port where nothing listens, so accepted mail stays in the spool for inspection."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st
from aiosmtpd.controller import Controller

from deliverypool.config import RelayConfig
from deliverypool.app import Relay
from deliverypool.lookup.mx import MxLookup
from deliverypool.cli.queue import queue_command
from deliverypool.cli.relay import relay_command
from deliverypool.mail.headers import has_bare_line_ending, strip_header
from deliverypool.queue.listing import listing
from tests.smtp_sinks import free_port, message, relay_config

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SENDER = "alice@sender.test"


def config(tmp_path: Path, listener: str = "") -> RelayConfig:
    # Nothing listens on the smarthost port: accepted mail waits in the spool.
    return relay_config(tmp_path / "spool", smarthost=f"127.0.0.1:{free_port()}", listener=listener)


@contextlib.asynccontextmanager
async def running(conf: RelayConfig, mx: MxLookup | None = None) -> AsyncIterator[Relay]:
    relay = Relay(conf, mx=mx)
    await relay.start()
    await relay.listen()
    try:
        yield relay
    finally:
        await relay.stop()


async def dialogue(conf: RelayConfig, lines: list[bytes], source: str = "127.0.0.1") -> list[bytes]:
    """Speaks raw SMTP: sends each line (a command or a chunk of data) and collects every
    reply line the server writes, until it closes or stays silent."""
    reader, writer = await asyncio.open_connection(conf.listener.host, conf.listener.port, local_addr=(source, 0))
    replies = [await reader.readline()]
    for line in lines:
        writer.write(line)
        await writer.drain()
        if line.endswith(b"\r\n"):
            replies += await read_reply(reader)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return replies


async def read_reply(reader: asyncio.StreamReader, timeout: float = 0.5) -> list[bytes]:
    """One whole (multi-line) reply; what was read so far when the server closes the
    connection or says nothing for `timeout` seconds."""
    lines: list[bytes] = []
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), timeout)
        except (asyncio.TimeoutError, ConnectionError):
            return lines
        if not line:
            return lines
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def queued(conf: RelayConfig) -> list[str]:
    return [row.header_message_id or "" for row in listing(conf.spool.directory)]


def test_client_outside_allowed_networks_cannot_relay(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'allowed_networks = ["127.0.0.1/32"]')

    async def main() -> None:
        async with running(conf):
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=conf.listener.port, source_address=("127.0.0.9", 0), start_tls=False)
            async with client:
                await client.mail(SENDER)
                with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                    await client.rcpt("victim@example.org")
                assert refused.value.code == 554
                assert "Relay access denied" in refused.value.message
            # The same client from an allowed address is served.
            await aiosmtplib.send(message("ok"), sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=conf.listener.port)
            assert len(listing(conf.spool.directory)) == 1

    aio_run(main())


def test_authenticated_client_may_relay_from_anywhere(aio_run: Run, tmp_path: Path) -> None:
    conf = config(
        tmp_path, 'allowed_networks = ["127.0.0.1/32"]\nallow_plaintext_auth = true\nauth_users = { carol = "s3cret" }'
    )

    async def main() -> None:
        async with running(conf):
            kwargs: dict[str, Any] = dict(hostname="127.0.0.1", port=conf.listener.port, source_address=("127.0.0.9", 0), start_tls=False)
            with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                await aiosmtplib.send(message("bad"), sender=SENDER, recipients=["x@example.org"], username="carol", password="wrong", **kwargs)
            await aiosmtplib.send(message("good", message_id="<auth@t>"), sender=SENDER, recipients=["x@example.org"], username="carol", password="s3cret", **kwargs)
            assert queued(conf) == ["<auth@t>"]
            # The authenticated user is the tenant.
            relay_rows = listing(conf.spool.directory)
            assert relay_rows[0].mail_from == SENDER

    aio_run(main())


def test_oversized_message_is_refused(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'size_limit = "10k"')

    async def main() -> None:
        async with running(conf):
            big = message("big", body="x" * 70 + "\r\n") * 1  # header + one line
            big = big + (b"y" * 70 + b"\r\n") * 200  # ~14 KB
            with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
                await aiosmtplib.send(big, sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=conf.listener.port)
            assert refused.value.code == 552
            # Declared up front with SIZE=, it is refused at MAIL.
            replies = await dialogue(conf, [b"EHLO c\r\n", b"MAIL FROM:<a@b.test> SIZE=20000\r\n"])
            assert any(r.startswith(b"250-SIZE 10240") for r in replies)
            assert replies[-1].startswith(b"552")
            assert listing(conf.spool.directory) == []

    aio_run(main())


def test_overlong_line_and_command_are_refused(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            replies = await dialogue(conf, [b"EHLO c\r\n", b"MAIL FROM:<" + b"a" * 600 + b"@b.test>\r\n"])
            assert replies[-1].startswith(b"500")
            long_line = message("long").replace(b"Hi.", b"z" * 2000)
            with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
                await aiosmtplib.send(long_line, sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=conf.listener.port)
            assert refused.value.code == 500
            assert listing(conf.spool.directory) == []

    aio_run(main())


@pytest.mark.parametrize(
    "payload",
    [
        # The classic: <LF>.<CR><LF> ends DATA for lenient servers, smuggling a second message.
        b"Subject: one\r\n\r\nhello\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n.\r\n",
        # <CR>.<CR> variants and a lone bare LF in a header.
        b"Subject: two\r\n\r\nhello\r.\r\nMAIL FROM:<evil@x.test>\r\n.\r\n",
        b"Subject: three\nX-Other: y\r\n\r\nbody\r\n.\r\n",
    ],
)
def test_smtp_smuggling_is_refused(aio_run: Run, tmp_path: Path, payload: bytes) -> None:
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            replies = await dialogue(
                conf, [b"EHLO c\r\n", b"MAIL FROM:<a@sender.test>\r\n", b"RCPT TO:<v@example.org>\r\n", b"DATA\r\n", payload]
            )
            text = b"".join(replies)
            assert b"554 5.6.0" in text
            assert b"smuggled" not in text
            assert listing(conf.spool.directory) == []

    aio_run(main())


def test_bare_line_ending_detection() -> None:
    assert not has_bare_line_ending(b"a\r\nb\r\n")
    assert has_bare_line_ending(b"a\r\nb\n.\r\n")
    assert has_bare_line_ending(b"a\rb\r\n")
    assert has_bare_line_ending(b"a\n\rb")


@given(
    st.lists(
        st.sampled_from([b"Received", b"received", b"RECEIVED", b"X-Received", b"Receivedx", b":", b" ", b"\t", b"\r\n", b"\n", b"\r",
                         b"From: a@b", b"Subject: s", b"\xef\xbb\xbf", b"From x Mon", b"\r\n\r\n", b"body received: x", b"a"]),
        max_size=30,
    )
)
def test_count_received_counts_what_the_reference_expression_finds(parts: list[bytes]) -> None:
    """count_received (a find loop on the lowered header block) against the regular expression
    it replaced, run on the header block alone, on messages made of the pieces that matter (fields, folds, line endings, a
    byte-order mark and an mbox line the scanner skips, the word in a body)."""
    from deliverypool.mail.headers import _RECEIVED, count_received, header_block

    message = b"".join(parts)
    start, body = header_block(message)
    assert count_received(message) == len(_RECEIVED.findall(message[start:body]))


def test_count_received_examples() -> None:
    from deliverypool.mail.headers import count_received

    assert count_received(b"Received: a\r\nreceived \t: b\r\n\tReceived: folded\r\nX-Received: no\r\n\r\nReceived: body\r\n") == 2
    assert count_received(b"From: a\r\n\r\n") == 0
    # A field at the start of the block counts after a skipped byte-order mark or mbox line too.
    assert count_received(b"\xef\xbb\xbfReceived: a\r\nReceived: b\r\n\r\n") == 2
    assert count_received(b"From someone Mon Jan  1 00:00:00 2024\nReceived: a\nFrom: x\n\n") == 1


def test_strip_header_removes_every_copy_with_continuations() -> None:
    msg = b"X-Spam-Score: 1\r\nFrom: a@b\r\nx-spam-score: 2\r\n  continued\r\nSubject: s\r\n\r\nX-Spam-Score: in body\r\n"
    stripped, removed = strip_header(msg, "X-Spam-Score")
    assert removed == 2
    assert stripped == b"From: a@b\r\nSubject: s\r\n\r\nX-Spam-Score: in body\r\n"
    assert strip_header(b"From: a\r\n\r\nbody", "X-Spam-Score") == (b"From: a\r\n\r\nbody", 0)


def test_strip_header_never_touches_the_body_of_an_lf_only_message(aio_run: Run, tmp_path: Path) -> None:
    """An LF-only message through the public Relay.accept: only header fields are removed."""
    msg = b"X-Spam-Score: 1\nFrom: a@sender.test\nSubject: s\n\nX-Spam-Score: a body line\nbye\n"
    assert strip_header(msg, "X-Spam-Score") == (b"From: a@sender.test\nSubject: s\n\nX-Spam-Score: a body line\nbye\n", 1)
    assert strip_header(b"Subject: s\r\rX-Spam-Score: 9\r", "X-Spam-Score") == (b"Subject: s\r\rX-Spam-Score: 9\r", 0)
    mbox = b"From sender Mon Jan  1 00:00:00 2026\nX-Spam-Score: 1\nSubject: s\n\nX-Spam-Score: 2\n"
    assert strip_header(mbox, "X-Spam-Score") == (b"From sender Mon Jan  1 00:00:00 2026\nSubject: s\n\nX-Spam-Score: 2\n", 1)
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf) as relay:
            stored: list[bytes] = []
            relay.on_accept = lambda accepted, content: stored.append(content)
            await relay.accept(mail_from=SENDER, recipients=("x@example.org",), content=msg, peer="192.0.2.1", helo="client.test")
            (content,) = stored
            assert content.endswith(b"From: a@sender.test\nSubject: s\n\nX-Spam-Score: a body line\nbye\n")
            assert content.count(b"X-Spam-Score") == 1

    aio_run(main())


def test_a_failing_on_accept_hook_does_not_turn_the_250_into_451(aio_run: Run, tmp_path: Path) -> None:
    """After the spool commit the answer is 250, whatever a hook does: a 451 would make the
    client send the stored message again, and it would be delivered twice."""
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf) as relay:

            def broken(accepted: Any, content: bytes) -> None:
                raise RuntimeError("a hook with a bug")

            relay.on_accept = broken
            errors, reply = await aiosmtplib.send(
                message("hooked", message_id="<hooked@t>"), sender=SENDER, recipients=["x@example.org"],
                hostname="127.0.0.1", port=conf.listener.port,
            )
            assert not errors and reply.startswith("2.0.0 Ok: queued as ")
            assert queued(conf) == ["<hooked@t>"]

    aio_run(main())


def test_score_header_only_trusted_from_the_content_filter(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'trusted_score_networks = ["127.0.0.1/32"]')

    async def main() -> None:
        async with running(conf):
            spam = message("spam", extra_headers="X-Spam-Score: 12\r\n")
            await aiosmtplib.send(spam, sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=conf.listener.port)
            await aiosmtplib.send(
                spam, sender=SENDER, recipients=["y@example.org"], hostname="127.0.0.1", port=conf.listener.port, source_address=("127.0.0.7", 0)
            )
            rows = {row.address: row for row in listing(conf.spool.directory)}
            assert rows["x@example.org"].pool == "high-risk"
            assert "spam-score" in rows["x@example.org"].reasons
            assert rows["y@example.org"].pool == "normal"

    aio_run(main())


def test_250_means_the_message_is_in_the_spool(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf) as relay:
            for n in range(20):
                _, reply = await aiosmtplib.send(
                    message(f"m{n}", message_id=f"<m{n}@t>"), sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=conf.listener.port
                )
                queue_id = reply.rsplit(" ", 1)[-1]
                # Read from a separate connection to the database file: committed, not cached.
                assert queue_id in {row.queue_id for row in listing(conf.spool.directory)}
            assert relay.spool.stats.commits >= 1

    aio_run(main())


def test_handler_mounted_in_a_users_controller(aio_run: Run, tmp_path: Path) -> None:
    """Embedding: RoutingHandler in aiosmtpd's Controller, which runs its own loop in a thread."""
    conf = config(tmp_path)
    port = free_port()

    async def main() -> None:
        relay = Relay(conf)
        await relay.start()
        controller = Controller(relay.handler, hostname="127.0.0.1", port=port, data_size_limit=conf.listener.size_limit)
        await asyncio.to_thread(controller.start)
        try:
            assert threading.current_thread() is threading.main_thread()
            _, reply = await aiosmtplib.send(message("embedded", message_id="<emb@t>"), sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=port)
            assert reply.startswith("2.0.0 Ok: queued as ")
            assert queued(conf) == ["<emb@t>"]
        finally:
            await asyncio.to_thread(controller.stop)
            await relay.stop()

    aio_run(main())


def test_queue_command_lists_the_spool(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            await aiosmtplib.send(message("listed"), sender=SENDER, recipients=["x@example.org", "y@example.org"], hostname="127.0.0.1", port=conf.listener.port)

    aio_run(main())
    out = io.StringIO()
    path = tmp_path / "relay.toml"
    path.write_text(f'[spool]\ndirectory = "{conf.spool.directory}"\n[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n')
    assert queue_command(str(path), out=out) == 0
    text = out.getvalue()
    assert "x@example.org" in text and "y@example.org" in text and "<alice@sender.test>" in text
    assert "2 recipient(s) pending in 1 message(s)" in text


def test_relay_command_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "relay.toml"
    path.write_text('[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3", "nope"]\n')
    assert relay_command(str(path)) == 2
    assert "pools.high-risk.source_addresses[1]: not an IP address: 'nope'" in capsys.readouterr().err


_FIELD_NAMES = st.sampled_from(["X-Spam-Score", "x-spam-score", "Subject", "From", "X-Spam-Scorer", "Received"])
_VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)


@given(
    fields=st.lists(st.tuples(_FIELD_NAMES, _VALUES, st.lists(_VALUES, max_size=2)), max_size=8),
    body=st.binary(max_size=50).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"\r\n")),
)
def test_strip_header_property(fields: list[tuple[str, str, list[str]]], body: bytes) -> None:
    header = "".join(f"{name}: {value}\r\n" + "".join(f"\t{c}\r\n" for c in cont) for name, value, cont in fields)
    message = header.encode() + b"\r\n" + body
    stripped, removed = strip_header(message, "X-Spam-Score")
    assert removed == sum(name.lower() == "x-spam-score" for name, _, _ in fields)
    kept = [(n, v, c) for n, v, c in fields if n.lower() != "x-spam-score"]
    expected = "".join(f"{n}: {v}\r\n" + "".join(f"\t{c}\r\n" for c in cont) for n, v, cont in kept).encode()
    assert stripped == expected + b"\r\n" + body


@given(st.binary(max_size=60).map(lambda b: bytes(c if c % 3 else (10, 13)[c % 2] for c in b)))
def test_bare_line_ending_matches_a_regex(data: bytes) -> None:
    assert has_bare_line_ending(data) == bool(re.search(rb"(?<!\r)\n|\r(?!\n)", data))


# --- RelaySMTP: the per-connection set-up done once, the fast address parse -------------------


def test_prototype_connection_matches_a_fully_built_one(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'allow_plaintext_auth = true\nauth_users = { carol = "s3cret" }')

    async def main() -> None:
        relay = Relay(conf)
        factory = relay.smtp_factory()
        first, second, third = factory(), factory(), factory()
        cls = type(first)
        assert cls._prototype is not None, "the prototype was not usable: every connection runs SMTP.__init__"
        for conn in (second, third):
            assert set(vars(conn)) == set(vars(first))
            for key, value in vars(first).items():
                other = vars(conn)[key]
                if key in ("_stream_reader_wr", "_strong_reader", "_closed"):  # StreamReaderProtocol's own
                    assert other is not value
                elif key == "_client_connected_cb":
                    assert other.__self__ is conn and other.__func__ is value.__func__
                elif key == "_smtp_methods":
                    assert other.keys() == value.keys()
                    assert all(m.__self__ is conn and m.__func__ is value[n].__func__ for n, m in other.items())
                elif key == "_auth_methods":
                    assert other.keys() == value.keys() == {"LOGIN", "PLAIN"}
                    for name, attr in other.items():
                        assert attr.is_builtin == value[name].is_builtin
                        assert attr.method.__self__ is (conn if attr.is_builtin else value[name].method.__self__)
                else:
                    assert other == value, key
                    if isinstance(value, (dict, list, set)):
                        assert other is not value, f"{key} is shared between connections"
        # Each connection has its own command size limits (aiosmtpd keeps one dict on the class).
        second.command_size_limits["MAIL"] += 26
        assert third.command_size_limits["MAIL"] == conf.listener.command_size_limit
        assert second.command_size_limits["MAIL"] == conf.listener.command_size_limit + 26

    aio_run(main())


def _addresses() -> st.SearchStrategy[str]:
    atoms = st.text("ab.-+@<>()[]\" \t:,;\\é=X", max_size=12)
    plain = st.from_regex(r"\A<[a-z]{1,3}(\.[a-z]{1,3})?@[a-z]{1,3}(\.[a-z]{1,3})?>\Z")
    return st.one_of(atoms.map(lambda s: "<" + s), st.tuples(plain, atoms).map("".join), st.tuples(plain, atoms, atoms).map(" ".join))


@given(_addresses())
def test_fast_address_parse_agrees_with_aiosmtpd(arg: str) -> None:
    from aiosmtpd.smtp import SMTP

    from deliverypool.ingress.smtp import RelaySMTP

    def outcome(parse: Callable[[str], Any], text: str) -> Any:
        try:
            return parse(text)
        except Exception as exc:  # aiosmtpd's parser raises IndexError on some inputs
            return type(exc)

    conn = RelaySMTP.__new__(RelaySMTP)
    for text in (arg, "<" + arg, arg + " "):
        theirs = outcome(lambda t: SMTP._getaddr(conn, t), text)
        # Where aiosmtpd's parser raises, ours says "malformed" (553) instead of a 500 and a traceback.
        assert outcome(conn._getaddr, text) == ((None, None) if isinstance(theirs, type) else theirs)


def test_fast_address_parse_keeps_the_local_part_limit() -> None:
    from deliverypool.ingress.smtp import RelaySMTP

    limited = type("Limited", (RelaySMTP,), {"local_part_limit": 5})
    conn = limited.__new__(limited)
    assert conn._getaddr("<abcde@x.test> SIZE=10") == ("abcde@x.test", "SIZE=10")
    assert conn._getaddr("<abcdef@x.test>") == (None, None)
