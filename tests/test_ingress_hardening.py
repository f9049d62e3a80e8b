"""The SMTP front end under abuse: a flood of idle connections against a low open-file limit,
many simultaneous connections, arbitrary bytes in every command, AUTH brute force, idle clients.

Real relays on loopback (in this process, or `deliverypool relay` as a subprocess with its own
open-file limit), raw asyncio and socket clients and aiosmtplib, both event loops. Where a test
times something it only checks a lower bound (a delay that must have happened), never that
something was fast."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool.config import RelayConfig
from deliverypool.queue.listing import listing
from deliverypool.state.observations import STATE_DATABASE
from tests.smtp_sinks import eventually, free_port, message, sink
from tests.test_crash import RelayProcess, crash_config
from tests.test_relay import config, read_reply, running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SENDER = "alice@sender.test"
OUTSIDE = "127.0.0.9"  # outside the allowed_networks of these tests
ALLOWED = 'allowed_networks = ["127.0.0.1/32"]'


class Client:
    """A raw SMTP connection: sends lines, reads whole (multi-line) replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, source: str = "127.0.0.1") -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(reader, writer)

    async def reply(self, timeout: float = 30.0) -> list[bytes]:
        """The next whole reply; [] when the server closed the connection (or, failing the
        test later, said nothing for `timeout` seconds)."""
        return await read_reply(self.reader, timeout)

    async def command(self, line: bytes, timeout: float = 30.0) -> list[bytes]:
        self.writer.write(line)
        await self.writer.drain()
        return await self.reply(timeout)

    async def closed(self, timeout: float = 30.0) -> bool:
        """True once the server closed the connection (EOF, with nothing more said) within
        `timeout`; the connection is closed on this side too."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout) == b""
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            return True
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


async def greeted(port: int, source: str) -> tuple[Client, list[bytes]]:
    client = await Client.open(port, source)
    return client, await client.reply()


def plain(user: str, password: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()) + b"\r\n"


# --- 1. connection limits: in all, per client address, and the open-file reserve -----------


def test_connection_limits_in_all_and_per_client_address(aio_run: Run, tmp_path: Path) -> None:
    """Over max_connections_per_client (outside allowed_networks) and over max_connections (any
    client) a connection is answered 421 4.7.0 and closed; a closed connection frees its slot."""
    conf = config(tmp_path, f"{ALLOWED}\nmax_connections = 12\nmax_connections_per_client = 4")

    async def main() -> None:
        async with running(conf):
            port = conf.listener.port
            held: list[Client] = []

            async def hold(source: str, count: int) -> None:
                for _ in range(count):
                    client, reply = await greeted(port, source)
                    assert reply == [b"220 relay.test deliverypool\r\n"], (source, reply)
                    held.append(client)

            await hold(OUTSIDE, 4)
            await hold("127.0.0.10", 3)
            await hold("127.0.0.1", 4)
            # A fifth from the same outside address is refused; the allowed network is not
            # counted per address (its fifth is served).
            client, reply = await greeted(port, OUTSIDE)
            assert reply == [b"421 4.7.0 relay.test Too many connections from your address; try again later\r\n"]
            assert await client.closed()
            await hold("127.0.0.1", 1)
            # Twelve open: the thirteenth is refused whoever it is.
            for source in ("127.0.0.1", "127.0.0.11"):
                client, reply = await greeted(port, source)
                assert reply == [b"421 4.7.0 relay.test Too many connections; try again later\r\n"], source
                assert await client.closed()
            # Closing one frees its slot (the server sees the close a moment later).
            held.pop(0).close()

            async def admitted() -> bool:
                client, reply = await greeted(port, OUTSIDE)
                if reply[:1] == [b"220 relay.test deliverypool\r\n"]:
                    held.append(client)
                    return True
                client.close()
                return False

            await eventually(admitted, what="a freed slot")
            for client in held:
                client.close()

    aio_run(main())


FLOOD = 1100
OPEN_FILES = 512  # per process: two workers have 1,024 in all, fewer than the flood


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_flood_of_idle_connections_leaves_room_for_clients_and_delivery(loop: str, tmp_path: Path) -> None:
    """1,100 idle connections from one address outside allowed_networks against two workers
    with 512 open files each. Each worker greets at most max_connections_per_client (50) of
    them and answers the rest 421 4.7.0 at once; meanwhile a client from the allowed network is
    served and its message delivered (delivery needs sockets too); the refusals are logged a
    few times, not once each."""
    listen, sink_port = free_port(), free_port("127.0.0.20")
    path = tmp_path / "relay.toml"
    path.write_text(crash_config(tmp_path / "spool", listen, sink_port).replace("[listener]", f"[listener]\n{ALLOWED}"))
    relay = RelayProcess(path, listen, loop, workers=2, open_files=(OPEN_FILES, OPEN_FILES))

    async def flood_one() -> tuple[Client | None, list[bytes]]:
        try:
            client = await asyncio.wait_for(Client.open(listen, OUTSIDE), 30)
        except (OSError, asyncio.TimeoutError):
            return None, []
        return client, await client.reply(timeout=30)

    async def main() -> None:
        async with sink("127.0.0.20", sink_port, "flood-sink") as destination:
            results: list[tuple[Client | None, list[bytes]]] = []
            try:
                await relay.start()
                results = await asyncio.gather(*(flood_one() for _ in range(FLOOD)))
                greetings = [client for client, reply in results if reply[:1] == [b"220 relay.test deliverypool\r\n"]]
                refused = [
                    client for client, reply in results
                    if reply == [b"421 4.7.0 relay.test Too many connections from your address; try again later\r\n"]
                ]
                others = sorted({repr(reply[:1]) for client, reply in results if client not in greetings and client not in refused})
                assert len(greetings) + len(refused) == FLOOD, f"{FLOOD - len(greetings) - len(refused)} neither greeted nor refused: {others[:5]}"
                assert 50 <= len(greetings) <= 100, len(greetings)
                for client in refused[:50]:
                    assert client is not None and await client.closed()
                # With the flood still holding its connections: a client is served, and its
                # message goes out.
                await aiosmtplib.send(
                    message("during the flood", message_id="<flood@t>"), sender=SENDER, recipients=["sink@dest.test"],
                    hostname="127.0.0.1", port=listen, timeout=30,
                )
                (delivered,) = await destination.wait_for(1, timeout=60)
                assert b"<flood@t>" in delivered.content
            finally:
                for client, _ in results:
                    if client is not None:
                        client.close()
                relay.stop()
        log = relay.log.read_text()
        refusal_lines = [line for line in log.splitlines() if "refused connection" in line]
        assert 1 <= len(refusal_lines) <= 2 * 11, "\n".join(refusal_lines[:30])
        assert "suppressed" in log
        assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def test_out_of_file_descriptors_the_listener_pauses_and_then_serves(aio_run: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """This process (the relay's) is made to run out of descriptors while a client connects:
    accept() fails with EMFILE. The listener says so once and waits (no busy retry, no
    traceback, the queued client not dropped); given descriptors again, it greets the client."""
    import os
    import resource

    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            loop = asyncio.get_running_loop()
            probe = socket.socket()
            probe.setblocking(False)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            # Fill every free descriptor below the highest in use, then forbid any above it.
            fillers: list[int] = []
            highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
            while not fillers or fillers[-1] <= highest:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
            os.close(fillers.pop())
            caplog.clear()
            resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
            try:
                await loop.sock_connect(probe, ("127.0.0.1", conf.listener.port))
                await eventually(lambda: any("cannot accept connections" in r.getMessage() for r in caplog.records), what="the EMFILE line")
                await asyncio.sleep(0.5)
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
                for fd in fillers:
                    os.close(fd)
            reader, writer = await asyncio.open_connection(sock=probe)
            assert await asyncio.wait_for(reader.readline(), 30) == b"220 relay.test deliverypool\r\n"
            writer.close()
            lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
            assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines]
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]

    aio_run(main())


def test_sessions_on_the_supervisors_socket_have_tcp_nodelay(aio_run: Run, tmp_path: Path) -> None:
    """A worker serves the socket the supervisor made with socket.create_server, whose accepted
    sockets have proto 0, so asyncio leaves Nagle's algorithm on for them: each multi-line reply
    then waited for the client's delayed ACK (40 ms; 48 ms per message instead of 5). The socket
    option is read from inside the running relay, from the session's transport (the harness
    used to read it in an aiosmtpd NOOP hook; the relay's listener no longer runs aiosmtpd)."""
    from deliverypool.app import Relay
    from deliverypool.supervisor import listen_socket

    conf = config(tmp_path)
    seen: list[int] = []

    async def main() -> None:
        relay = Relay(conf)
        await relay.start()
        await relay.listen(listen_socket(conf.listener.host, conf.listener.port, conf.listener.backlog))
        try:
            client, _ = await greeted(conf.listener.port, "127.0.0.1")
            assert await client.command(b"NOOP\r\n") == [b"250 OK\r\n"]
            (session,) = relay.server.sessions  # type: ignore[union-attr]
            sock = session.transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            client.close()
        finally:
            await relay.stop()
        assert seen and seen[0] != 0

    aio_run(main())


# --- 2. the listen backlog -----------------------------------------------------------------


def listen_backlog(port: int) -> int:
    """The kernel's accept-queue limit of the socket listening on `port` (`ss`: Send-Q)."""
    ss = shutil.which("ss") or pytest.fail("ss (iproute2) is needed to read a socket's backlog")
    out = subprocess.run([ss, "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    (line,) = out.splitlines()
    return int(line.split()[2])


def test_relay_listen_uses_the_configured_backlog(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, "backlog = 2000")

    async def main() -> None:
        async with running(conf):
            assert listen_backlog(conf.listener.port) == 2000
            client, reply = await greeted(conf.listener.port, "127.0.0.1")
            assert reply == [b"220 relay.test deliverypool\r\n"]
            client.close()

    aio_run(main())


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_supervisors_socket_has_the_configured_backlog_and_500_clients_are_greeted(loop: str, tmp_path: Path) -> None:
    """The supervisor binds the shared socket with listener.backlog, and the workers keep it;
    500 clients connecting at once are all greeted."""
    listen = free_port()
    path = tmp_path / "relay.toml"
    path.write_text(crash_config(tmp_path / "spool", listen, free_port()).replace("[listener]", "[listener]\nbacklog = 3000"))
    relay = RelayProcess(path, listen, loop, workers=2)

    async def main() -> None:
        try:
            await relay.start()
            results = await asyncio.gather(*(greeted(listen, "127.0.0.1") for _ in range(500)))
            for client, _ in results:
                client.close()
            assert [reply for _, reply in results if reply != [b"220 relay.test deliverypool\r\n"]] == []
            assert listen_backlog(listen) == 3000
        finally:
            relay.stop()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# --- 3. 8-bit and UTF-8 addresses; arbitrary bytes in every command ------------------------


def test_8bit_addresses_are_refused_and_utf8_needs_smtputf8(aio_run: Run, tmp_path: Path) -> None:
    """Invalid UTF-8 in MAIL or RCPT gets a 5xx naming it (not 451, not an exception), and the
    session goes on; a UTF-8 local part is taken only in a transaction that announced SMTPUTF8
    (RFC 6531)."""
    conf = config(tmp_path)

    async def main() -> None:
        async with running(conf):
            client, _ = await greeted(conf.listener.port, "127.0.0.1")
            assert (await client.command(b"EHLO client.test\r\n"))[-1] == b"250 HELP\r\n"
            assert await client.command(b"MAIL FROM:<\xff\xfe@sender.test>\r\n") == [
                b"553 5.1.7 Bad sender address syntax: not valid UTF-8 (invalid-utf8)\r\n"
            ]
            assert await client.command(b"MAIL FROM:<j\xc3\xb6rg@sender.test>\r\n") == [
                b"553 5.6.7 Non-ASCII address without the SMTPUTF8 parameter (RFC 6531)\r\n"
            ]
            assert await client.command(b"MAIL FROM:<j\xc3\xb6rg@sender.test> SMTPUTF8\r\n") == [b"250 2.1.0 OK\r\n"]
            assert await client.command(b"RCPT TO:<\x80@example.org>\r\n") == [
                b"501 5.1.3 Bad recipient address syntax: not valid UTF-8 (invalid-utf8)\r\n"
            ]
            assert await client.command(b"RCPT TO:<b\xc3\xa4r@example.org>\r\n") == [b"250 2.1.5 OK\r\n"]
            assert (await client.command(b"DATA\r\n"))[0].startswith(b"354")
            assert (await client.command(message("utf8", message_id="<utf8@t>") + b".\r\n"))[0].startswith(b"250 2.0.0 Ok: queued as ")
            # A new transaction without SMTPUTF8 may not name a UTF-8 recipient.
            assert await client.command(b"MAIL FROM:<a@sender.test>\r\n") == [b"250 2.1.0 OK\r\n"]
            assert await client.command(b"RCPT TO:<b\xc3\xa4r@example.org>\r\n") == [
                b"553 5.6.7 Non-ASCII address without the SMTPUTF8 parameter (RFC 6531)\r\n"
            ]
            assert await client.command(b"NOOP\r\n") == [b"250 OK\r\n"]
            client.close()
            rows = listing(conf.spool.directory)
            assert [(row.mail_from, row.address) for row in rows] == [("j\u00f6rg@sender.test", "b\u00e4r@example.org")]

    aio_run(main())


# Argument bytes: anything but a line feed (which would end the command line early).
_BYTES = st.binary(max_size=60).map(lambda b: b.replace(b"\n", b""))
_ADDRESS = st.one_of(
    st.just(b"a@sender.test"),
    st.just(b"j\xc3\xb6rg@b\xc3\xbccher.test"),
    _BYTES,
    st.tuples(_BYTES, _BYTES).map(lambda parts: parts[0] + b"@" + parts[1]),
)
_PARAMETERS = st.sampled_from([b"", b" SMTPUTF8", b" BODY=8BITMIME", b" SIZE=100", b" SIZE=99999999999", b" X=\xff", b" SMTPUTF8=1"])
_PATH = st.tuples(_ADDRESS, _PARAMETERS).map(lambda p: b"<" + p[0] + b">" + p[1])
_AUTH = st.one_of(
    st.tuples(st.sampled_from([b"PLAIN ", b"LOGIN ", b"CRAM-MD5 ", b""]), _BYTES).map(b"".join),
    st.tuples(_BYTES, _BYTES).map(lambda up: b"PLAIN " + base64.b64encode(b"\0" + up[0] + b"\0" + up[1])),
    st.just(b"PLAIN " + base64.b64encode(b"\0carol\0s3cret")),
)
_COMMAND = st.one_of(
    st.tuples(st.sampled_from([b"EHLO", b"HELO", b"ehlo"]), st.one_of(st.just(b"client.test"), _BYTES)),
    st.tuples(st.sampled_from([b"MAIL", b"mail"]), st.one_of(_PATH.map(lambda p: b"FROM:" + p), _BYTES)),
    st.tuples(st.just(b"RCPT"), st.one_of(st.just(b"TO:<x@example.org>"), _PATH.map(lambda p: b"TO:" + p), _BYTES)),
    st.tuples(st.just(b"DATA"), st.one_of(st.just(b""), _BYTES)),
    st.tuples(st.just(b"AUTH"), _AUTH),
    st.tuples(st.sampled_from([b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"QUIT", b"STARTTLS"]), st.one_of(st.just(b""), _BYTES)),
    st.tuples(st.binary(min_size=1, max_size=12).map(lambda b: b.replace(b"\n", b"?").replace(b" ", b"?")), _BYTES),
)
# A transaction that gets as far as DATA, whose first n commands start some sessions, so that
# the fuzzed commands also meet a session in the middle of a transaction.
_VALID: tuple[tuple[bytes, bytes], ...] = (
    (b"EHLO", b"client.test"), (b"MAIL", b"FROM:<a@sender.test>"), (b"RCPT", b"TO:<x@example.org>"), (b"DATA", b""),
)
_SESSION = st.tuples(st.integers(0, len(_VALID)), st.lists(st.one_of(st.sampled_from(_VALID), _COMMAND), min_size=1, max_size=8)).map(
    lambda pc: [*_VALID[: pc[0]], *pc[1]]
)
_LINE = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
_BODY = st.tuples(st.lists(_LINE, max_size=6), st.sampled_from([b"", b"\n", b"\r", b"\x00"])).map(
    lambda lb: b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lb[0]) + lb[1] + b"\r\n.\r\n"
)
# A reply line: a code, then a space or a hyphen and printable ASCII, then CRLF; or the code alone.
_REPLY_LINE = re.compile(rb"[2-5][0-9]{2}(?:[ -][\x20-\x7e]*)?\r\n\Z")


def _well_formed(reply: list[bytes]) -> bool:
    if not reply or not all(_REPLY_LINE.match(line) for line in reply):
        return False
    code = reply[0][:3]
    return all(line[:3] == code for line in reply) and all(line[3:4] == b"-" for line in reply[:-1]) and reply[-1][3:4] != b"-"


class _Session:
    """One blocking client session of the property test."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")
        self.closed = False

    def reply(self) -> list[bytes]:
        lines: list[bytes] = []
        while True:
            try:
                line = self.file.readline()
            except (ConnectionError, socket.timeout):
                line = b""
            if not line:
                self.closed = True
                return lines
            lines.append(line)
            if line[3:4] != b"-" or not line.endswith(b"\n"):
                return lines

    def send(self, data: bytes) -> list[bytes]:
        try:
            self.sock.sendall(data)
        except ConnectionError:
            self.closed = True
            return []
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class _Problems(logging.Handler):
    """Collects log records that are errors or carry a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@contextlib.contextmanager
def relay_in_a_thread(run: Run, conf: RelayConfig) -> Iterator[None]:
    """The relay on its own event loop (the `aio_run` one) in a thread, for blocking clients."""
    started = threading.Event()
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    failures: list[BaseException] = []

    async def serve() -> None:
        async with running(conf):
            stop = asyncio.Event()
            control.append((asyncio.get_running_loop(), stop))
            started.set()
            await stop.wait()

    def target() -> None:
        try:
            run(serve())
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)
            started.set()

    thread = threading.Thread(target=target, name="relay")
    thread.start()
    assert started.wait(60) and not failures, failures
    try:
        yield
    finally:
        loop, stop = control[0]
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        assert not failures, failures


def test_arbitrary_bytes_in_every_command_get_well_formed_replies(aio_run: Run, tmp_path: Path) -> None:
    """Sessions of arbitrary commands with arbitrary arguments (8-bit, invalid UTF-8, control
    characters, bare CR, NUL) against the running relay: every command gets one well-formed
    reply (never 451 4.3.0 or aiosmtpd's "500 Error: (SomeException)"), nothing is logged as an
    error or with a traceback, the session stays usable (NOOP gets 250) unless the relay closed
    it after a 421 or 221, and the spool holds exactly the messages whose DATA got a 250."""
    conf = config(
        tmp_path,
        'allow_plaintext_auth = true\nauth_users = { carol = "s3cret" }\nauth_failure_delay = "1ms"\nmax_recipients = 3',
    )
    problems = _Problems()
    accepted: list[bytes] = []

    @given(commands=_SESSION, bodies=st.lists(_BODY, min_size=1, max_size=3))
    def check(commands: list[tuple[bytes, bytes]], bodies: list[bytes]) -> None:
        session = _Session(conf.listener.port)
        try:
            greeting = session.reply()
            assert greeting == [b"220 relay.test deliverypool\r\n"], greeting
            last: list[bytes] = greeting
            data = 0
            for verb, argument in commands:
                reply = session.send(verb + (b" " + argument if argument else b"") + b"\r\n")
                if session.closed and not reply:
                    break
                assert _well_formed(reply), (verb, argument, reply)
                assert not reply[0].startswith((b"451 4.3.0", b"500 Error: (")), (verb, argument, reply)
                last = reply
                if reply[0].startswith(b"354"):
                    body = bodies[data % len(bodies)]
                    data += 1
                    reply = session.send(body)
                    assert _well_formed(reply), (body, reply)
                    assert not reply[0].startswith((b"451", b"500 Error: (")), (body, reply)
                    if reply[0].startswith(b"250"):
                        accepted.append(reply[0])
                    last = reply
                if session.closed:
                    break
            if not session.closed and last[-1][:3] == b"334":  # the next line answers the AUTH challenge
                last = session.send(b"*\r\n")
                assert _well_formed(last) and last[0][:1] in (b"4", b"5"), last
            if session.closed or last[-1][:3] in (b"421", b"221"):
                assert last[-1][:3] in (b"421", b"221"), last
                assert session.closed or session.reply() == [] and session.closed, "a 421 or 221 without a close"
            else:
                assert session.send(b"NOOP\r\n") == [b"250 OK\r\n"]
        finally:
            session.close()

    root = logging.getLogger()
    root.addHandler(problems)
    try:
        with relay_in_a_thread(aio_run, conf):
            check()
    finally:
        root.removeHandler(problems)
    assert accepted, "no session got as far as a 250 to DATA: the strategy does not reach the spool"
    assert [problem.getMessage() for problem in problems.records] == []
    queue_ids = {line.split(b" ")[-1].strip().decode() for line in accepted}
    assert {row.queue_id for row in listing(conf.spool.directory)} == queue_ids


# --- 4. AUTH brute force -------------------------------------------------------------------

AUTH = 'allow_plaintext_auth = true\nauth_users = { carol = "s3cret" }'


def test_failed_auth_is_answered_later_each_time_and_the_third_drops_the_connection(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, f'{ALLOWED}\n{AUTH}\nauth_failure_delay = "200ms"')

    async def main() -> None:
        async with running(conf):
            loop = asyncio.get_running_loop()
            client, _ = await greeted(conf.listener.port, OUTSIDE)
            await client.command(b"EHLO client.test\r\n")
            for n in (1, 2):
                start = loop.time()
                assert await client.command(plain("carol", f"wrong{n}")) == [b"535 5.7.8 Authentication credentials invalid\r\n"]
                assert loop.time() - start >= 0.2 * n * 0.95, f"failure {n} answered without its delay"
            start = loop.time()
            assert await client.command(plain("carol", "wrong3")) == [
                b"421 4.7.0 relay.test Too many failed authentication attempts; closing connection\r\n"
            ]
            assert loop.time() - start >= 0.6 * 0.95
            assert await client.closed()

    aio_run(main())


def test_an_address_that_keeps_failing_auth_is_refused_for_a_while(aio_run: Run, tmp_path: Path) -> None:
    """Failures count per client address across connections: at max_auth_failures_per_client
    the address is refused (421 at AUTH, then at the greeting) for auth_failure_window; other
    addresses, and the allowed network, are served."""
    conf = config(tmp_path, f'{ALLOWED}\n{AUTH}\nauth_failure_delay = "10ms"\nmax_auth_failures_per_client = 4')
    refused = b"421 4.7.0 relay.test Too many failed authentication attempts from your address; try again later\r\n"

    async def main() -> None:
        async with running(conf):
            port = conf.listener.port
            first, _ = await greeted(port, OUTSIDE)
            await first.command(b"EHLO client.test\r\n")
            for n in range(2):
                assert (await first.command(plain("carol", "wrong")))[0].startswith(b"535")
            assert (await first.command(plain("carol", "wrong")))[0].startswith(b"421")
            assert await first.closed()
            second, _ = await greeted(port, OUTSIDE)
            await second.command(b"EHLO client.test\r\n")
            assert await second.command(plain("carol", "wrong")) == [refused]
            assert await second.closed()
            third, reply = await greeted(port, OUTSIDE)
            assert reply == [refused]
            assert await third.closed()
            # Even the right password: the address is refused before it can try.
            with pytest.raises(aiosmtplib.SMTPConnectError):
                await aiosmtplib.send(
                    message("x"), sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1", port=port,
                    source_address=(OUTSIDE, 0), username="carol", password="s3cret", start_tls=False,
                )
            # Another address is served.
            await aiosmtplib.send(
                message("ok", message_id="<other@t>"), sender=SENDER, recipients=["x@example.org"], hostname="127.0.0.1",
                port=port, source_address=("127.0.0.10", 0), username="carol", password="s3cret", start_tls=False,
            )
            # The allowed network is dropped after three failures on a connection, never refused.
            for _ in range(2):
                inside, _ = await greeted(port, "127.0.0.1")
                await inside.command(b"EHLO client.test\r\n")
                replies = [await inside.command(plain("carol", "wrong")) for _ in range(3)]
                assert [r[0][:3] for r in replies] == [b"535", b"535", b"421"]
                assert await inside.closed()
            inside, reply = await greeted(port, "127.0.0.1")
            assert reply == [b"220 relay.test deliverypool\r\n"]
            inside.close()
            assert [row.header_message_id for row in listing(conf.spool.directory)] == ["<other@t>"]
            # An embedded relay is one process: its failures are not written for other workers.
            await asyncio.sleep(3 * conf.observe.flush_interval)
            with contextlib.closing(sqlite3.connect(conf.spool.directory / STATE_DATABASE)) as db:
                assert not db.execute("SELECT name FROM sqlite_master WHERE name = 'ingress_auth_failures'").fetchall()

    aio_run(main())


def test_the_shared_auth_failure_counts_add_up_and_expire(tmp_path: Path) -> None:
    """Two workers' stores on one state database: each reads the other's counts (not its own),
    a row's count restarts after its window, and an expired row is gone."""
    from deliverypool.ingress.limits import AuthFailures
    from deliverypool.state.auth_failures import AuthFailureStore

    a, b = AuthFailureStore(tmp_path / "state.sqlite3"), AuthFailureStore(tmp_path / "state.sqlite3")
    a.open()
    b.open()
    try:
        assert a.exchange("a", {"192.0.2.1": 3, "192.0.2.2": 1}, now=1000.0, window=600, limit=10) == {}
        assert b.exchange("b", {"192.0.2.1": 2}, now=1001.0, window=600, limit=10) == {"192.0.2.1": (3, 1600.0), "192.0.2.2": (1, 1600.0)}
        assert a.exchange("a", {"192.0.2.1": 1}, now=1002.0, window=600, limit=1) == {"192.0.2.1": (2, 1601.0)}  # the most failing first
        assert b.exchange("b", {}, now=1700.0, window=600, limit=10) == {}  # expired and deleted
        assert b.exchange("b", {}, now=1000.0, window=600, limit=10) == {}
        a.exchange("a", {"192.0.2.1": 1}, now=2000.0, window=600, limit=10)  # after the window: a fresh count
        assert b.exchange("b", {}, now=2001.0, window=600, limit=10) == {"192.0.2.1": (1, 2600.0)}
    finally:
        a.close()
        b.close()
    clock = [0.0]
    failures = AuthFailures(600, 10, clock=lambda: clock[0])
    failures.others = {"192.0.2.1": (4, 10.0)}
    assert failures.count("192.0.2.1") == 4 and failures.record("192.0.2.1") == 5
    assert dict(failures.pending) == {"192.0.2.1": 1}
    clock[0] = 11.0  # the others' window ended
    assert failures.count("192.0.2.1") == 1


@pytest.mark.slow
def test_failed_auth_counts_across_the_workers(tmp_path: Path) -> None:
    """Two workers, max_auth_failures_per_client = 6: six failures from one address, each on a
    fresh connection (which worker takes it is the kernel's choice), and after the workers have
    exchanged their counts (observe.flush_interval, 1 s) every new connection from the address
    is refused at the greeting, whichever worker takes it. With per-worker counts a worker that
    saw fewer than six would greet it."""
    listen, sink_port = free_port(), free_port("127.0.0.20")
    path = tmp_path / "relay.toml"
    extra = f'{ALLOWED}\n{AUTH}\nauth_failure_delay = "10ms"\nmax_auth_failures_per_client = 6'
    path.write_text(crash_config(tmp_path / "spool", listen, sink_port).replace("[listener]", f"[listener]\n{extra}"))
    relay = RelayProcess(path, listen, "asyncio", workers=2)
    refused = b"421 4.7.0 relay.test Too many failed authentication attempts from your address; try again later\r\n"

    async def main() -> None:
        await relay.start()
        try:
            for n in range(6):
                client, reply = await greeted(listen, OUTSIDE)
                assert reply == [b"220 relay.test deliverypool\r\n"], (n, reply)
                await client.command(b"EHLO client.test\r\n")
                answer = (await client.command(plain("carol", "wrong")))[0]
                assert answer.startswith(b"535") if n < 5 else answer[:3] in (b"535", b"421"), (n, answer)
                client.close()
            await asyncio.sleep(2.5)
            for n in range(8):
                client, reply = await greeted(listen, OUTSIDE)
                assert reply == [refused], (n, reply)
                client.close()
            # Another address is served.
            client, reply = await greeted(listen, "127.0.0.10")
            assert reply == [b"220 relay.test deliverypool\r\n"]
            client.close()
        finally:
            relay.stop()

    asyncio.run(main())


def test_the_auth_failure_memory_is_bounded(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure counts are an LRU of client addresses: with room for three, a refused address
    is forgotten once three others have failed more recently."""
    from deliverypool.ingress import limits

    monkeypatch.setattr(limits, "AUTH_FAILURE_CLIENTS", 3)
    conf = config(tmp_path, f'{ALLOWED}\n{AUTH}\nauth_failure_delay = "10ms"\nmax_auth_failures_per_client = 2')

    async def fail(source: str) -> None:
        client, _ = await greeted(conf.listener.port, source)
        await client.command(b"EHLO client.test\r\n")
        await client.command(plain("carol", "wrong"))
        client.close()

    async def main() -> None:
        async with running(conf):
            port = conf.listener.port
            for _ in range(2):
                await fail(OUTSIDE)
            client, reply = await greeted(port, OUTSIDE)
            assert reply[0].startswith(b"421 4.7.0"), reply
            client.close()
            for source in ("127.0.0.21", "127.0.0.22", "127.0.0.23"):
                await fail(source)
            client, reply = await greeted(port, OUTSIDE)
            assert reply == [b"220 relay.test deliverypool\r\n"]
            client.close()

    aio_run(main())


def test_auth_limits_hold_after_starttls(aio_run: Run, tmp_path: Path) -> None:
    """The usual set-up (AUTH only over TLS): the session after STARTTLS keeps its failure count
    and its delays, and the right password still works on a new connection."""
    import ssl

    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1")
    certificate.cert_chain_pems[0].write_to_path(tmp_path / "relay.crt")
    certificate.private_key_pem.write_to_path(tmp_path / "relay.key")
    conf = config(
        tmp_path,
        f'{ALLOWED}\nauth_users = {{ carol = "s3cret" }}\ntls_certificate = "{tmp_path / "relay.crt"}"\n'
        f'tls_key = "{tmp_path / "relay.key"}"\nauth_failure_delay = "100ms"',
    )
    client_tls = ssl.create_default_context()
    ca.configure_trust(client_tls)

    async def main() -> None:
        async with running(conf):
            loop = asyncio.get_running_loop()
            kwargs: dict[str, Any] = dict(
                hostname="127.0.0.1", port=conf.listener.port, source_address=(OUTSIDE, 0), tls_context=client_tls, start_tls=True,
            )
            smtp = aiosmtplib.SMTP(**kwargs)
            await smtp.connect()
            await smtp.ehlo()  # again, over TLS
            assert "auth" in smtp.esmtp_extensions
            for n in (1, 2):
                start = loop.time()
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                    await smtp.auth_plain("carol", f"wrong{n}")  # login() would try each mechanism
                assert failed.value.code == 535
                assert loop.time() - start >= 0.1 * n * 0.95
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as dropped:
                await smtp.auth_plain("carol", "wrong3")
            assert dropped.value.code == 421
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await smtp.noop()
            smtp.close()
            await aiosmtplib.send(
                message("tls", message_id="<tls@t>"), sender=SENDER, recipients=["x@example.org"], username="carol",
                password="s3cret", **kwargs,
            )
            assert [row.header_message_id for row in listing(conf.spool.directory)] == ["<tls@t>"]

    aio_run(main())


# --- 5. the idle timeout -------------------------------------------------------------------


def test_an_idle_client_gets_421_after_the_configured_idle_timeout(aio_run: Run, tmp_path: Path) -> None:
    conf = config(tmp_path, 'idle_timeout = "1s"')

    async def main() -> None:
        async with running(conf):
            loop = asyncio.get_running_loop()
            client, _ = await greeted(conf.listener.port, "127.0.0.1")
            await client.command(b"EHLO client.test\r\n")
            start = loop.time()
            # aiosmtpd's fixed timeout was 300 s, and it closed without a word.
            assert await client.reply(timeout=60) == [b"421 4.4.2 relay.test Idle for too long; closing connection\r\n"]
            assert loop.time() - start >= 0.95
            assert await client.closed()

    aio_run(main())


def test_a_slow_message_is_not_cut_by_the_idle_timeout(aio_run: Run, tmp_path: Path) -> None:
    """The idle timeout counts from the last bytes received, also during DATA: a message sent in
    pieces for longer than the timeout, but never pausing that long, is accepted."""
    conf = config(tmp_path, 'idle_timeout = "3s"')

    async def main() -> None:
        async with running(conf):
            client, _ = await greeted(conf.listener.port, "127.0.0.1")
            await client.command(b"EHLO client.test\r\n")
            await client.command(b"MAIL FROM:<a@sender.test>\r\n")
            await client.command(b"RCPT TO:<x@example.org>\r\n")
            assert (await client.command(b"DATA\r\n"))[0].startswith(b"354")
            client.writer.write(message("slow", message_id="<slow@t>"))
            for n in range(20):  # 5 s in all
                await asyncio.sleep(0.25)
                client.writer.write(b"line %d\r\n" % n)
            assert (await client.command(b".\r\n"))[0].startswith(b"250 2.0.0")
            client.close()

    aio_run(main())


# --- connections per client address across the workers -----------------------------------

TOO_MANY_FROM_CLIENT = [b"421 4.7.0 relay.test Too many connections from your address; try again later\r\n"]


def test_the_shared_client_counts_never_undercount_and_forget_a_cleared_worker() -> None:
    from deliverypool.ingress.client_counts import ClientCounts

    supervisor = ClientCounts.create(3)
    try:
        # Each worker gets its own descriptor of the region (the supervisor passes it on).
        views = [ClientCounts(os.dup(supervisor.fd), 3, worker) for worker in range(3)]
        with pytest.raises(ValueError, match="not .* for 2 workers"):
            ClientCounts(supervisor.fd, 2, 0)
        with pytest.raises(RuntimeError):
            supervisor.add("192.0.2.1", 1)

        @given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::/64", ""]), st.booleans()), max_size=60))
        def run(operations: list[tuple[int, str, bool]]) -> None:
            model: dict[tuple[int, str], int] = {}
            for worker, client, opening in operations:
                held = model.get((worker, client), 0)
                if opening or held:
                    views[worker].add(client, 1 if opening else -1)
                    model[(worker, client)] = held + (1 if opening else -1)
                for other in range(3):
                    expected = sum(n for (_, c), n in model.items() if c == client)
                    assert views[other].count(client) == expected  # four clients never share all three slots
            # A worker that exits is forgotten: its row cleared, the others' counts stay.
            supervisor.clear(0)
            for client in {c for _, c in model}:
                assert views[1].count(client) == sum(n for (w, c), n in model.items() if c == client and w != 0)
            for (worker, client), n in model.items():
                if worker:
                    views[worker].add(client, -n)
            assert all(views[0].count(c) == 0 for _, c in model)

        run()
        # Many clients at once: a count is never below the truth (collisions only add).
        clients = [f"10.{i // 250}.{i % 250}.1" for i in range(3000)]
        for i, client in enumerate(clients):
            views[i % 3].add(client, 1 + i % 2)
        assert all(views[0].count(client) >= 1 + i % 2 for i, client in enumerate(clients))
        # Expected over-counted: 3000 x (1 - e^(-3000/65536))^3 ≈ 0.27; more than 6 has odds below 1e-7.
        assert sum(views[0].count(client) != 1 + i % 2 for i, client in enumerate(clients)) <= 6
        for view in views:
            view.close()
    finally:
        supervisor.close()


def _worker_of(client: Client, listen: int, pids: list[int]) -> int:
    """The worker process holding the relay's side of `client`'s connection: its socket inode
    in /proc/net/tcp (local 127.0.0.1:listen, remote the client's address), found among the
    workers' open descriptors."""
    host, port = client.writer.get_extra_info("sockname")[:2]
    remote = "".join(f"{int(b):02X}" for b in reversed(host.split("."))) + f":{port:04X}"
    local = f"0100007F:{listen:04X}"
    inode = next(
        fields[9] for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
        if fields[1] == local and fields[2] == remote
    )
    for pid in pids:
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()):
                return pid
    raise AssertionError(f"no worker holds the connection from port {port}")


@pytest.mark.slow
def test_connections_per_client_count_across_the_workers_and_a_dead_workers_are_forgotten(tmp_path: Path) -> None:
    """Two workers, max_connections_per_client = 4: two connections from one address held at
    each worker, then every new connection from it is refused, whichever worker takes it (with
    per-worker counts each would greet it: it holds 2 of 4). One worker is killed: the kernel
    closes its two connections, the supervisor clears its counts, and exactly two new
    connections are greeted again."""
    import signal

    from tests.test_crash import _alive

    listen, sink_port = free_port(), free_port("127.0.0.20")
    path = tmp_path / "relay.toml"
    path.write_text(crash_config(tmp_path / "spool", listen, sink_port).replace("[listener]", f"[listener]\n{ALLOWED}\nmax_connections_per_client = 4"))
    relay = RelayProcess(path, listen, "asyncio", workers=2)
    greeting = [b"220 relay.test deliverypool\r\n"]

    async def hold_two_at_each(pids: list[int], held: dict[int, list[Client]]) -> None:
        for _ in range(400):
            if all(len(held[pid]) >= 2 for pid in pids):
                return
            client, reply = await greeted(listen, OUTSIDE)
            if reply != greeting:  # an extra just closed may not be released yet
                client.close()
                await asyncio.sleep(0.05)
                continue
            pid = _worker_of(client, listen, pids)
            if len(held[pid]) < 2:
                held[pid].append(client)
            else:
                assert await client.command(b"QUIT\r\n")
                client.close()
                await asyncio.sleep(0.05)
        raise AssertionError("the kernel never gave the second worker a connection")

    async def main() -> None:
        await relay.start()
        try:
            pids = relay.workers_pids()
            held: dict[int, list[Client]] = {pid: [] for pid in pids}
            await hold_two_at_each(pids, held)
            await asyncio.sleep(0.3)  # the extras' ends reach their workers
            for n in range(10):
                client, reply = await greeted(listen, OUTSIDE)
                assert reply == TOO_MANY_FROM_CLIENT, (n, reply)
                client.close()
            # Kill one worker: its two connections end, its counts are cleared with it.
            victim = pids[0]
            os.kill(victim, signal.SIGKILL)
            await eventually(lambda: not _alive(victim) and len(relay.workers_pids()) == 2 and victim not in relay.workers_pids(),
                             what="the replacement worker")
            replies = []
            for _ in range(6):
                client, reply = await greeted(listen, OUTSIDE)
                replies.append(reply)
                if reply == greeting:
                    held[victim].append(client)
                else:
                    client.close()
            assert replies.count(greeting) == 2 and replies[2:] == [TOO_MANY_FROM_CLIENT] * 4, replies
            for clients in held.values():
                for client in clients:
                    client.close()
        finally:
            relay.stop()

    asyncio.run(main())


def test_without_a_memfd_the_supervisor_falls_back_to_per_worker_counts(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from deliverypool.supervisor import shared_client_counts

    counts = shared_client_counts(2)
    assert counts is not None and counts.workers == 2
    counts.close()

    def refused(name: str, flags: int = 0) -> int:
        raise PermissionError(1, "Operation not permitted (a sandbox's seccomp filter)")

    monkeypatch.setattr(os, "memfd_create", refused)
    with caplog.at_level(logging.WARNING, logger="deliverypool"):
        assert shared_client_counts(2) is None
    assert any("counted per worker" in r.getMessage() and "not permitted" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6, socket.AF_UNIX])
def test_an_accepted_socket_reports_family_and_type_as_a_standard_socket_does(family: socket.AddressFamily) -> None:
    """The listener's accepted sockets answer `family` and `type` from a table instead of an
    Enum call per look-up (uvloop asks three times per connection): same values, same types."""
    from deliverypool.ingress.listener import _Accepted

    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        plain = socket.socket(family, kind)
        accepted = _Accepted(int(plain.family), int(plain.type), 0, fileno=socket.socket(family, kind).detach())
        try:
            assert (accepted.family, accepted.type) == (plain.family, plain.type)
            assert type(accepted.family) is socket.AddressFamily and type(accepted.type) is socket.SocketKind
        finally:
            plain.close()
            accepted.close()
