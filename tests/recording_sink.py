"""A small SMTP server on loopback that records every read it gets, for tests that count round
trips: it offers PIPELINING and CHUNKING (BDAT, which aiosmtpd lacks) as told, handles every
complete command of a read before it answers, and answers them all in one write, as a
pipelining server does (RFC 2920 §3.2). Messages are kept with their envelope."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Message:
    mail_from: str
    recipients: list[str]
    content: bytes
    mail_args: str
    via: str  # "DATA" or "BDAT"


@dataclass
class Recorder:
    pipelining: bool = True
    chunking: bool = True
    # Address -> reply for RCPT (default 250).
    rcpt_replies: dict[str, str] = field(default_factory=dict)
    # Every read of every connection, in order: (connection number, bytes).
    reads: list[tuple[int, bytes]] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    connections: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # Lines that were no command it knows (bytes a client sent past what it declared, say).
    unknown: list[str] = field(default_factory=list)

    def transaction_reads(self) -> list[list[bytes]]:
        """The reads of each transaction: from the read holding its MAIL to the one that ended
        its body (RSET, QUIT and EHLO reads are not part of one), each within its connection: the
        relay may deliver over two connections at once, and their reads interleave here."""
        transactions: list[list[bytes]] = []
        current: dict[int, list[bytes]] = {}
        for connection, data in self.reads:
            if connection not in current and b"MAIL FROM:" in data:
                current[connection] = []
                transactions.append(current[connection])
            if connection in current:
                current[connection].append(data)
                if data.endswith(b"\r\n.\r\n") or b" LAST\r\n" in data or data == b".\r\n":
                    del current[connection]
        return transactions

    async def wait_for(self, count: int, timeout: float = 20.0) -> list[Message]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.messages) < count:
            self.arrived.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"{len(self.messages)} of {count} messages arrived")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), remaining)
        return self.messages


class _Session(asyncio.Protocol):
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        recorder.connections += 1
        self.number = recorder.connections
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.mail_from = ""
        self.mail_args = ""
        self.recipients: list[str] = []
        self.data: bytearray | None = None  # collecting DATA
        self.chunk_left = 0  # bytes of a BDAT chunk still to come
        self.chunk_last = False
        self.chunks = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(b"220 recording-sink ESMTP\r\n")  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.recorder.reads.append((self.number, data))
        self.buffer += data
        replies: list[bytes] = []
        while self.buffer:
            if self.chunk_left:
                take = self.buffer[: self.chunk_left]
                self.chunks += take
                self.buffer = self.buffer[len(take) :]
                self.chunk_left -= len(take)
                if not self.chunk_left:
                    replies.append(self._chunk_done())
                continue
            if self.data is not None:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0 and self.buffer.startswith(b".\r\n") and not self.data:
                    end = -2  # an empty message
                if end == -1:
                    break
                body = self.buffer[: end + 2] if end >= 0 else b""
                self.buffer = self.buffer[end + 5 :]
                content = b"\r\n".join(line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n"))
                self._deliver(bytes(content), "DATA")
                self.data = None
                replies.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            line_end = self.buffer.find(b"\r\n")
            if line_end < 0:
                break
            line, self.buffer = self.buffer[:line_end].decode("utf-8", "replace"), self.buffer[line_end + 2 :]
            reply = self._command(line)
            if reply:
                replies.append(reply)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))

    def _command(self, line: str) -> bytes:
        verb = line.split(" ", 1)[0].upper()
        recorder = self.recorder
        if verb in ("EHLO", "HELO"):
            extensions = ["recording-sink", "SIZE 10000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
            extensions += ["PIPELINING"] * recorder.pipelining + ["CHUNKING"] * recorder.chunking
            lines = [f"250-{e}" for e in extensions[:-1]] + [f"250 {extensions[-1]}"]
            return ("\r\n".join(lines) + "\r\n").encode()
        if verb == "MAIL":
            address, _, args = line[10:].partition(">")
            self.mail_from, self.mail_args, self.recipients = address.lstrip("<"), args.strip(), []
            return b"250 2.1.0 Ok\r\n"
        if verb == "RCPT":
            address = line[8:].split(">", 1)[0].lstrip("<")
            reply = recorder.rcpt_replies.get(address, "250 2.1.5 Ok")
            if reply.startswith("2"):
                self.recipients.append(address)
            return reply.encode() + b"\r\n"
        if verb == "DATA":
            if not self.recipients:
                return b"554 5.5.1 Error: no valid recipients\r\n"
            self.data = bytearray()
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == "BDAT":
            words = line.split()
            self.chunk_left = int(words[1])
            self.chunk_last = len(words) > 2 and words[2].upper() == "LAST"
            if not self.chunk_left:
                return self._chunk_done()
            return b""
        if verb == "RSET":
            self.recipients, self.chunks = [], bytearray()
            return b"250 2.0.0 Ok\r\n"
        if verb == "QUIT":
            if self.transport is not None:
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
            return b""
        recorder.unknown.append(line)
        return b"502 5.5.2 Error: command not recognized\r\n"

    def _chunk_done(self) -> bytes:
        if not self.chunk_last:
            return b"250 2.0.0 Ok: chunk\r\n"
        content, self.chunks = bytes(self.chunks), bytearray()
        if not self.recipients:
            return b"554 5.5.1 Error: no valid recipients\r\n"
        self._deliver(content, "BDAT")
        return b"250 2.0.0 Ok: queued\r\n"

    def _deliver(self, content: bytes, via: str) -> None:
        self.recorder.messages.append(Message(self.mail_from, list(self.recipients), content, self.mail_args, via))
        self.recipients = []
        self.recorder.arrived.set()


@contextlib.asynccontextmanager
async def recording_sink(host: str, port: int, **options: object) -> AsyncIterator[Recorder]:
    recorder = Recorder(**options)  # type: ignore[arg-type]
    server = await asyncio.get_running_loop().create_server(lambda: _Session(recorder), host, port)
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()
