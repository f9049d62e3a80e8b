"""Group `smtp-session`: the relay's SMTP front end per message, without the network, the
routing and the spool: one connection receiving messages of 2 KiB (EHLO once, then for each
message MAIL, RCPT and DATA in one read and the data in a second, as a client that waits for
354 sends them), every decision made by the real `RoutingHandler` over a relay whose `accept`
stores nothing.

* `deliverypool`: `ingress/session.py` (`SmtpSession`) driving the Rust engine.
* `baseline`: the aiosmtpd protocol the relay's listener used before (`ingress/smtp.py`,
  `RelaySMTP`, with the same Rust DATA reader), over the same fake transport.

Both run on one event loop; a message is done when its `250 2.0.0` has been written."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliverypool import config as cfg
from deliverypool.ingress.handler import Accepted, RoutingHandler
from deliverypool.ingress.session import SessionFactory
from deliverypool.ingress.smtp import protocol_factory

pytestmark = pytest.mark.benchmark(group="smtp-session")

BODY = b"From: a@sender.test\r\nTo: x@example.org\r\nSubject: bench\r\nMessage-ID: <b@t>\r\n\r\n" + b"x" * 76 + b"\r\n"
BODY = BODY + (b"y" * 78 + b"\r\n") * ((2048 - len(BODY)) // 80) + b".\r\n"
ENVELOPE = b"MAIL FROM:<a@sender.test>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n"


class NullRelay:
    """What RoutingHandler needs of a relay: a config, no limits, no delivery engine (so no flow
    control), an accept that stores nothing."""

    def __init__(self, conf: cfg.RelayConfig) -> None:
        self.config = conf
        self.engine = None
        self.limits = None
        self.srs_bounces = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.accepted = 0

    async def accept(self, **kwargs: Any) -> Accepted:
        self.accepted += 1
        return Accepted("QUEUEID", "normal", ())


class Transport(asyncio.Transport):
    """Collects what is written; `replies` counts the 250 2.0.0 lines."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.done = asyncio.Event()
        self.protocol: Any = None
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data).count(b"250 2.0.0 Ok")
        self.done.set()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 25)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.done.set()

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory) -> RoutingHandler:
    spool = tmp_path_factory.mktemp("spool")
    conf = cfg.loads(
        f'hostname = "relay.test"\n[listener]\nallowed_networks = ["127.0.0.0/8"]\n[spool]\ndirectory = "{spool}"\n'
        '[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n'
    )
    return RoutingHandler(NullRelay(conf))  # type: ignore[arg-type]


async def session(make: Callable[[], asyncio.Protocol], messages: int) -> int:
    transport = Transport()
    protocol = make()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.data_received(b"EHLO client.test\r\n")
    for n in range(messages):
        protocol.data_received(ENVELOPE)
        await asyncio.sleep(0)  # the 354 (aiosmtpd answers from its task)
        protocol.data_received(BODY)
        while transport.written <= n:
            if transport.closing:
                raise AssertionError(f"the session closed the connection after {transport.written} messages (its log says why)")
            transport.done.clear()
            await transport.done.wait()
    protocol.connection_lost(None)
    return transport.written


def test_deliverypool(benchmark, loop, handler, quick_mode) -> None:  # noqa: ANN001
    messages = 10 if quick_mode else 2000

    async def run() -> int:
        return await session(SessionFactory(handler.config, handler), messages)

    benchmark.extra_info["ops"] = messages
    assert benchmark(lambda: loop.run_until_complete(run())) == messages


def test_baseline(benchmark, loop, handler, quick_mode) -> None:  # noqa: ANN001
    messages = 10 if quick_mode else 2000

    async def run() -> int:
        return await session(protocol_factory(handler.config, handler), messages)

    benchmark.extra_info["ops"] = messages
    assert benchmark(lambda: loop.run_until_complete(run())) == messages
