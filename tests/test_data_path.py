"""The relay's DATA path: the Rust `DataReader` against a model of RFC 5321 §4.1.1.4/§4.5.2, and
the running relay fed every smuggling variant near the terminator with the input split across
TCP reads at every byte offset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool._core import DataReader, dot_stuff
from deliverypool.queue.listing import listing
from tests.test_relay import SENDER, config, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def model(data: bytes, size_limit: int, line_limit: int) -> tuple[int | None, bytes | None, set[str]]:
    """What the reader must answer: (bytes used or None while the end is not in `data`, the
    unstuffed message or None when refused, the problems present)."""
    prefixed = b"\r\n" + data
    end = prefixed.find(b"\r\n.\r\n")
    if end < 0:
        return None, None, set()
    raw = data[:end]
    problems = set()
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        problems.add("bare-line-ending")
    if b"\0" in raw:
        problems.add("nul")
    lines = raw.split(b"\r\n")[:-1] if raw else []
    if any(len(line) + 2 > line_limit for line in lines):
        problems.add("line-too-long")
    if len(raw) > size_limit:
        problems.add("too-large")
    message = b"".join(line[1:] + b"\r\n" if line.startswith(b".") else line + b"\r\n" for line in lines)
    return end + 3, None if problems else message, problems


def read(chunks: list[bytes], size_limit: int, line_limit: int) -> tuple[int | None, bytes | None, str | None]:
    reader = DataReader(size_limit=size_limit, line_length_limit=line_limit)
    used = 0
    for chunk in chunks:
        n = reader.feed(bytearray(chunk))
        used += n
        if reader.done:
            assert n <= len(chunk)
            break
        assert n == len(chunk), "before the end, every byte belongs to the data"
    if not reader.done:
        return None, None, reader.problem
    message = reader.take() if reader.problem is None else None
    return used, message, reader.problem


_BYTES = st.lists(st.sampled_from([b".", b"\r", b"\n", b"\r\n", b"a", b"\0", b"..", b"\r\n.\r\n", b"xyz" * 7]), max_size=40).map(b"".join)


@given(_BYTES, st.lists(st.integers(0, 400), max_size=6), st.integers(1, 120), st.integers(3, 40))
def test_reader_matches_the_model_for_any_input_and_split(data: bytes, cuts: list[int], size_limit: int, line_limit: int) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    used, message, problem = read(chunks, size_limit, line_limit)
    want_used, want_message, problems = model(data, size_limit, line_limit)
    assert used == want_used
    if want_used is None:
        return
    assert message == want_message
    if not problems:
        assert problem is None
    elif "too-large" in problems:
        assert problem == "too-large", "an oversized message is reported as such"
    else:
        assert problem in problems


@given(st.lists(st.sampled_from([b"", b".", b"..", b".x", b"x.", b"Subject: a", b"  .", b"\xff\xfe"]), max_size=30))
def test_dot_stuffing_round_trips_through_the_reader(lines: list[bytes]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = dot_stuff(message)
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in wire.split(b"\r\n")[:-1])
    if b"\r\n." not in b"\r\n" + message:
        assert wire is message, "nothing to stuff: no copy"
    assert read([wire + b".\r\n"], 1 << 20, 1001) == (len(wire) + 3, message, None)


def test_take_puts_the_prefix_in_front_and_releases_the_message() -> None:
    reader = DataReader(size_limit=100, line_length_limit=1001)
    with pytest.raises(RuntimeError):
        reader.take()
    reader.feed(b"a\r\n.\r\n")
    assert reader.take(b"Received: x\r\n") == b"Received: x\r\na\r\n"
    with pytest.raises(RuntimeError):
        reader.take()


# The variants of SMTP smuggling: an end of data that some server might honour, followed by a
# smuggled transaction, before the real <CRLF>.<CRLF>.
SMUGGLING = [b"\n.\r\n", b"\r\n.\n", b"\r.\r\n", b"\n.\n", b"\r\n.\r", b"\r.\r", b"\n.\r"]
SMUGGLED = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n"


async def session(port: int, chunks: list[bytes]) -> list[bytes]:
    """One SMTP session to the relay, the DATA section written in `chunks` (each its own
    segment: TCP_NODELAY and a pause between writes); returns the reply to the DATA section."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await reader.readline()
        for command in (b"EHLO client.test\r\n", f"MAIL FROM:<{SENDER}>\r\n".encode(), b"RCPT TO:<x@example.org>\r\n", b"DATA\r\n"):
            writer.write(command)
            while (line := await reader.readline())[3:4] == b"-":
                pass
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.002)
        reply = await asyncio.wait_for(reader.readline(), 5)
        writer.write(b"QUIT\r\n")
        return [reply, await asyncio.wait_for(reader.readline(), 5)]
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def test_smuggling_is_refused_whatever_the_tcp_segments(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            for trick in SMUGGLING:
                data = b"Subject: one\r\n\r\nhello" + trick + SMUGGLED + b".\r\n"
                for cut in range(len(b"Subject: one\r\n\r\nhello") - 2, len(data)):
                    reply, bye = await session(conf.listener.port, [data[:cut], data[cut:]])
                    assert reply.startswith(b"554 5.6.0"), (trick, cut, reply)
                    assert bye.startswith(b"221"), "the session goes on after the refusal"
            assert listing(conf.spool.directory) == [], "nothing smuggled, nothing stored"

    aio_run(main())


def test_a_clean_message_split_at_every_offset_is_stored_unstuffed(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path)
    data = b"Subject: split\r\nMessage-ID: <split@t>\r\n\r\n..one dot\r\n.\r\n"
    wanted = b"Subject: split\r\nMessage-ID: <split@t>\r\n\r\n.one dot\r\n"

    async def main() -> None:
        async with running(conf) as relay:
            stored: list[bytes] = []
            relay.on_accept = lambda accepted, content: stored.append(content)
            for cut in range(1, len(data)):
                reply, _ = await session(conf.listener.port, [data[:cut], data[cut:]])
                assert reply.startswith(b"250 2.0.0 Ok: queued as"), (cut, reply)
            assert len(stored) == len(data) - 1
            assert all(content.endswith(wanted) and content.startswith(b"Received: ") for content in stored)

    aio_run(main())


def test_nul_bytes_and_oversized_data_are_refused(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'size_limit = 1500')

    async def main() -> None:
        async with running(conf):
            (reply, _) = await session(conf.listener.port, [b"Subject: nul\r\n\r\na\0b\r\n.\r\n"])
            assert reply.startswith(b"554 5.6.0") and b"NUL" in reply
            (reply, _) = await session(conf.listener.port, [b"Subject: big\r\n\r\n" + b"x" * 60 + b"\r\n"] * 30 + [b".\r\n"])
            assert reply.startswith(b"552")
            (reply, _) = await session(conf.listener.port, [b"Subject: long\r\n\r\n" + b"y" * 1100 + b"\r\n.\r\n"])
            assert reply.startswith(b"500")
            assert listing(conf.spool.directory) == []

    aio_run(main())
