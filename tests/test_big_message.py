"""A 50 MiB message through a real relay process (one worker): accepted, stored in a body file,
delivered to a sink byte for byte, with the worker's peak memory growing by at most about twice
the message (measured from /proc: VmHWM before and after)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
from pathlib import Path

import pytest

from deliverypool._core import dot_stuff

from deliverypool.queue.listing import read_counters
from tests.smtp_sinks import Sink, free_port, sink
from tests.test_crash import RelayProcess, crash_config

pytestmark = pytest.mark.slow

SIZE = 50 * 1024 * 1024


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def submit(port: int, message: bytes, *, declare_size: bool = False) -> None:
    """One message over SMTP, dot-stuffed and written in one piece: smtplib would run two
    regular expressions over every line of it first, which for millions of lines takes longer
    than the relay does."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock, sock.makefile("rb") as replies:

        def reply() -> bytes:
            while (line := replies.readline())[3:4] == b"-":
                pass
            return line

        assert reply().startswith(b"220")
        size = f" SIZE={len(message)}" if declare_size else ""
        for command, expected in ((b"EHLO client.test", b"250"), (f"MAIL FROM:<big@sender.test>{size}".encode(), b"250"),
                                  (b"RCPT TO:<sink@dest.test>", b"250"), (b"DATA", b"354")):
            sock.sendall(command + b"\r\n")
            answer = reply()
            assert answer.startswith(expected), (command, answer)
        wire = dot_stuff(message)
        sock.sendall(wire if wire.endswith(b"\r\n") else wire + b"\r\n")
        sock.sendall(b".\r\n")
        answer = reply()
        assert answer.startswith(b"250"), answer


async def warmed_up(relay: RelayProcess, port: int, destination: Sink) -> tuple[int, int]:
    """Starts the relay and passes one small message through it, so that the memory baseline is
    a worker that has accepted and delivered mail (everything imported, every pool and buffer
    set up); returns the worker's pid and its peak memory (KiB) then."""
    await relay.start()
    (worker,) = relay.workers_pids()
    await asyncio.to_thread(submit, port, b"Subject: warm-up\r\n\r\nhello\r\n")
    await destination.wait_for(1)
    return worker, peak_kib(worker)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_50_mib_message_costs_about_twice_its_size(loop: str, tmp_path: Path) -> None:
    listen, sink_port = free_port(), free_port("127.0.0.20")
    config = tmp_path / "relay.toml"
    config.write_text(crash_config(tmp_path / "spool", listen, sink_port).replace("[listener]", '[listener]\nsize_limit = "60MB"'))
    line = b"y" * 76 + b"\r\n"
    body = b"From: big@sender.test\r\nSubject: big\r\nMessage-ID: <big@t>\r\n\r\n" + b".dot first\r\n" + line * (SIZE // len(line))
    relay = RelayProcess(config, listen, loop, workers=1)

    def send(message: bytes) -> None:
        submit(listen, message, declare_size=True)

    async def main() -> None:
        async with sink("127.0.0.20", sink_port, "big-sink", data_size_limit=None) as destination:
            try:
                worker, before = await warmed_up(relay, listen, destination)
                await asyncio.to_thread(send, body)
                delivered = (await destination.wait_for(2, timeout=120))[1]
                growth = (peak_kib(worker) - before) * 1024
            finally:
                relay.stop()
            content = delivered.content
            assert content.endswith(body), (len(content), len(body), content[:300], content[-100:])
            ratio = growth / len(body)
            print(f"50 MiB message ({loop}): worker peak memory grew by {growth / 2**20:.0f} MiB = {ratio:.2f}x the message")
            assert ratio < 2.2, f"peak memory grew by {ratio:.2f}x the message"
        bodies = tmp_path / "spool" / "shard-0" / "bodies"
        # Over SPENT_LARGEST: not kept to be written over, removed once delivered.
        assert bodies.is_dir() and not list(bodies.iterdir()), "the body file was removed once delivered"

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_stalled_destination_with_a_long_queue_costs_no_memory_per_message(tmp_path: Path) -> None:
    """300 messages of 100 KiB for a destination that accepts connections and never greets.
    Before: every body up to 256 KiB stayed in memory while it waited (RSS grew by the queue,
    102 MB for 1,000). Now the worker keeps at most its memory budget (4 MiB here) of bodies;
    the rest are read from the spool when their attempt starts."""
    listen, port = free_port(), free_port("127.0.0.20")
    config = tmp_path / "relay.toml"
    config.write_text(crash_config(tmp_path / "spool", listen, port).replace('directory = "', 'memory_budget = "4MB"\ndirectory = "'))
    stalled = socket.create_server(("127.0.0.20", port), backlog=1024)
    relay = RelayProcess(config, listen, "asyncio", workers=1)
    body = b"Subject: queued\r\n\r\n" + (b"z" * 78 + b"\r\n") * (100 * 1024 // 80)

    def send(count: int) -> None:
        with smtplib.SMTP("127.0.0.1", listen, timeout=60) as client:
            for n in range(count):
                client.sendmail("q@sender.test", ["sink@dest.test"], body.replace(b"queued", f"queued {n}".encode()))

    async def main() -> None:
        try:
            await relay.start()
            (worker,) = relay.workers_pids()
            await asyncio.to_thread(send, 20)
            before = rss_kib(worker)
            await asyncio.to_thread(send, 300)
            growth = (rss_kib(worker) - before) * 1024
        finally:
            relay.stop()
            stalled.close()
        queued = 300 * len(body)
        print(f"stalled destination: {queued / 2**20:.0f} MiB queued, worker RSS grew by {growth / 2**20:.1f} MiB")
        assert growth < queued / 3, f"RSS grew by {growth / 2**20:.1f} MiB for {queued / 2**20:.0f} MiB of queued bodies"

    asyncio.run(main())


def test_24_mib_of_empty_lines_costs_about_twice_its_size(tmp_path: Path) -> None:
    """One DATA of 24 MiB of empty lines (under the 25 MiB limit), no SIZE declared. Before: RSS
    112 MB -> 2.1 GB and the event loop blocked for 30-40 s (a line at a time). Now the DATA
    reader takes it in whole buffers: peak memory about twice the message, and a client that
    talks to the same worker meanwhile is served. (The destination is a socket that never
    greets: the point is acceptance, and a test sink reading 12 million lines would take a
    minute.)"""
    listen, sink_port = free_port(), free_port("127.0.0.20")
    stalled = socket.create_server(("127.0.0.20", sink_port), backlog=64)
    config = tmp_path / "relay.toml"
    config.write_text(crash_config(tmp_path / "spool", listen, sink_port))
    relay = RelayProcess(config, listen, "uvloop", workers=1)
    body = b"Subject: empty lines\r\n" + b"\r\n" * (12 * 1024 * 1024)

    def send(message: bytes) -> None:
        submit(listen, message)

    async def main() -> None:
        try:
            await relay.start()
            (worker,) = relay.workers_pids()
            await asyncio.to_thread(send, b"Subject: warm-up\r\n\r\nhello\r\n")
            before = peak_kib(worker)
            big = asyncio.ensure_future(asyncio.to_thread(send, body))
            await asyncio.to_thread(send, b"Subject: meanwhile\r\n\r\nhello\r\n")
            await big
            growth = (peak_kib(worker) - before) * 1024
        finally:
            relay.stop()
            stalled.close()
        assert read_counters(tmp_path / "spool")["accepted"] == 3
        ratio = growth / len(body)
        print(f"24 MiB of empty lines: worker peak memory grew by {growth / 2**20:.0f} MiB = {ratio:.2f}x")
        assert ratio < 2.6

    asyncio.run(main())
