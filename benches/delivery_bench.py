"""The delivery client's cost per message, against the client a user would otherwise take
(aiosmtplib, one command per round trip, as the relay used before): N messages over one
connection to Postfix's smtp-sink (another process, so only the client's CPU is counted), on
one event loop. Prints CPU microseconds per message (process time) and messages per second.

    .venv/bin/python benches/delivery_bench.py --client rust --size 2048 --messages 2000
    .venv/bin/python benches/delivery_bench.py --client aiosmtplib --size 2048 --messages 2000

For instruction counts (repeatable on a loaded machine), run it under callgrind twice with two
message counts; the difference divided by the difference of counts is the cost per message,
without start-up:

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python benches/delivery_bench.py --client rust --messages 200
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p .venv/bin/python benches/delivery_bench.py --client rust --messages 400

Needs smtp-sink (Debian's postfix package) and a release build of the extension.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deliverypool import config as cfg  # noqa: E402
from deliverypool.outbound.outcomes import DeliveryStats  # noqa: E402
from deliverypool.outbound.transaction import Connector, send  # noqa: E402
from deliverypool.queue.spool import Spool  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(size: int, n: int) -> bytes:
    head = f"From: a@sender.test\r\nTo: b@dest.test\r\nSubject: bench {n}\r\nMessage-ID: <{n}@bench>\r\n\r\n".encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def rust(port: int, messages: list[bytes]) -> None:
    conf = cfg.loads(
        f"""
[spool]
directory = "/tmp/unused"
[pools.normal]
source_addresses = ["127.0.0.1"]
delivery = "smarthost"
smarthost = "127.0.0.1:{port}"
tls = "none"
[pools.high-risk]
source_addresses = ["127.0.0.3"]
[dns]
check_sender_domain = false
"""
    )
    connector = Connector(None, random.Random(1), DeliveryStats())
    session = await connector.open(conf.pools["normal"], f"[127.0.0.1]:{port}")
    spool = Spool(Path("/tmp/unused"))
    for n, body in enumerate(messages):
        attempt = await send(session, "a@sender.test", [(n, "b@dest.test")], body, spool)
        assert attempt.final.startswith("250"), attempt.final
    await connector.close(session)


async def aiosmtplib_client(port: int, messages: list[bytes]) -> None:
    import aiosmtplib

    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await smtp.connect()
    for body in messages:
        await smtp.sendmail("a@sender.test", ["b@dest.test"], body)
    await smtp.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--client", choices=["rust", "aiosmtplib"], default="rust")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--no-pipelining", action="store_true", help="smtp-sink -p: hide PIPELINING")
    args = parser.parse_args()
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    flags = ["-p"] if args.no_pipelining else []
    process = subprocess.Popen([sink, *user, *flags, f"127.0.0.1:{port}", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        messages = [message(args.size, n) for n in range(args.messages)]
        run = rust if args.client == "rust" else aiosmtplib_client
        start_cpu, start = time.process_time(), time.perf_counter()
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(run(port, messages))
        else:
            asyncio.run(run(port, messages))
        cpu, wall = time.process_time() - start_cpu, time.perf_counter() - start
        print(
            f"client={args.client} loop={args.loop} size={args.size} messages={args.messages}: "
            f"{cpu / args.messages * 1e6:.1f} us CPU per message, {args.messages / wall:.0f} msg/s"
        )
    finally:
        process.terminate()
        process.wait()


if __name__ == "__main__":
    main()
