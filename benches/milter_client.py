"""A minimal milter-protocol client (the MTA side, as Postfix speaks it) and OpenDKIM run as a
signing milter, for the DKIM benchmark (benches/test_dkim.py): each message goes through the
whole exchange Postfix makes with a milter (MAIL, RCPT, the header fields one by one, end of
header, the body in chunks of 64 KiB, end of message), on one connection, and the signature
OpenDKIM asks to insert is returned.

The protocol: each packet is a 4-byte length (network order, counting the command byte), one
command byte and its data; every command but a few the milter may skip gets one reply.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

OPENDKIM = "/usr/sbin/opendkim"
_CHUNK = 65535
# SMFIC_OPTNEG: version 6, every action, every protocol step with its reply.
_VERSION = 6
_ACTIONS = 0x1FF
_PROTOCOL = 0


class MilterClient:
    """One connection to a milter; `message` runs one message through it."""

    def __init__(self, path: Path) -> None:
        # A Unix socket, as Postfix and OpenDKIM are usually connected: over loopback TCP,
        # libmilter's replies at the end of a message (the header to insert, then the verdict,
        # two writes) meet Nagle and the delayed ACK, 40 ms per message whatever the milter does.
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(str(path))
        self._send(b"O", struct.pack("!III", _VERSION, _ACTIONS, _PROTOCOL))
        command, _ = self._read()
        assert command == b"O", command
        self._send(b"C", b"client.bench.test\0" + b"4" + struct.pack("!H", 40000) + b"127.0.0.1\0")
        self._expect_continue()
        self._send(b"H", b"client.bench.test\0")
        self._expect_continue()

    def _send(self, command: bytes, data: bytes = b"") -> None:
        self.sock.sendall(struct.pack("!I", len(data) + 1) + command + data)

    def _read(self) -> tuple[bytes, bytes]:
        header = self._exactly(5)
        length = struct.unpack("!I", header[:4])[0]
        return header[4:5], self._exactly(length - 1)

    def _exactly(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("the milter closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _expect_continue(self) -> None:
        command, data = self._read()
        if command != b"c":
            raise RuntimeError(f"milter replied {command!r} {data[:80]!r}")

    def message(self, content: bytes, sender: str = "sender@bench.test", recipient: str = "rcpt@sink.test") -> list[tuple[bytes, bytes]]:
        """Runs `content` through the milter; returns the header fields it added (name, value)."""
        # The macro Postfix sends with MAIL: the queue id, which OpenDKIM logs.
        self._send(b"D", b"M" + b"i\0" + b"4ABCDE\0")
        self._send(b"M", f"<{sender}>\0".encode())
        self._expect_continue()
        self._send(b"R", f"<{recipient}>\0".encode())
        self._expect_continue()
        split = re.search(rb"\r?\n\r?\n", content)
        head, body = (content[: split.start()], content[split.end() :]) if split else (content, b"")
        for field in re.split(rb"\r?\n(?![ \t])", head):
            name, _, value = field.partition(b":")
            self._send(b"L", name + b"\0" + value.lstrip(b" ").replace(b"\r\n", b"\n") + b"\0")
            self._expect_continue()
        self._send(b"N")
        self._expect_continue()
        for at in range(0, len(body), _CHUNK):
            self._send(b"B", body[at : at + _CHUNK])
            self._expect_continue()
        self._send(b"E")
        added = []
        while True:
            command, data = self._read()
            if command in (b"h", b"i"):
                if command == b"i":
                    data = data[4:]  # the index
                name, value, _ = data.split(b"\0", 2)
                added.append((name, value))
            elif command in (b"a", b"c"):
                return added
            elif command not in (b"p",):  # progress
                raise RuntimeError(f"milter replied {command!r} at end of message")

    def close(self) -> None:
        try:
            self._send(b"Q")
        finally:
            self.sock.close()


class OpenDkimMilter:
    """OpenDKIM signing for `domain` with `key_file` on a Unix socket (`path`)."""

    def __init__(self, key_file: Path, *, domain: str, selector: str, algorithm: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="dp-odkim-"))
        self.path = self.work / "milter.sock"
        config = self.work / "opendkim.conf"
        config.write_text(
            f"Mode s\nDomain {domain}\nSelector {selector}\nKeyFile {key_file}\nSignatureAlgorithm {algorithm}\n"
            f"Canonicalization relaxed/relaxed\nInternalHosts 127.0.0.0/8\nSocket local:{self.path}\nSyslog no\n"
            "RequireSafeKeys false\n"
        )
        os.chmod(self.work, 0o755)
        self.process = subprocess.Popen([OPENDKIM, "-f", "-x", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                    probe.connect(str(self.path))
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"opendkim did not start: {self.process.stderr.read().decode() if self.process.stderr else ''}") from None
                time.sleep(0.05)

    def cpu_seconds(self) -> float:
        """The milter's CPU time so far (user and system)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.process.kill()  # a benchmark's milter: nothing to finish (SIGTERM takes seconds)
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.work, ignore_errors=True)
