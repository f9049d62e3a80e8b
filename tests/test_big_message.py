"""A 50 MiB message through a real relay process (one worker): accepted, stored in a body file,
delivered to a sink byte for byte, with the worker's peak memory growing by at most about twice
the message (measured from /proc: VmHWM before and after)."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest

from tests.smtp_sinks import free_port, sink
from tests.test_crash import RelayProcess, crash_config

SIZE = 50 * 1024 * 1024


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_50_mib_message_costs_about_twice_its_size(loop: str, tmp_path: Path) -> None:
    listen, sink_port = free_port(), free_port("127.0.0.20")
    config = tmp_path / "relay.toml"
    config.write_text(crash_config(tmp_path / "spool", listen, sink_port).replace("[listener]", '[listener]\nsize_limit = "60MB"'))
    line = b"y" * 76 + b"\r\n"
    body = b"From: big@sender.test\r\nSubject: big\r\nMessage-ID: <big@t>\r\n\r\n" + b".dot first\r\n" + line * (SIZE // len(line))
    relay = RelayProcess(config, listen, loop, workers=1)

    def send(message: bytes) -> None:
        with smtplib.SMTP("127.0.0.1", listen, timeout=60) as client:
            client.ehlo()
            client.sendmail("big@sender.test", ["sink@dest.test"], message, mail_options=[f"SIZE={len(message)}"])

    async def main() -> None:
        async with sink("127.0.0.20", sink_port, "big-sink", data_size_limit=None) as destination:
            try:
                await relay.start()
                (worker,) = relay.workers_pids()
                # A small message first, so that the baseline is a worker that has accepted and
                # delivered mail (everything imported, every pool and buffer set up).
                await asyncio.to_thread(send, b"Subject: warm-up\r\n\r\nhello\r\n")
                await destination.wait_for(1)
                before = peak_kib(worker)
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
        assert bodies.is_dir() and not list(bodies.iterdir()), "the body file was removed once delivered"

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
