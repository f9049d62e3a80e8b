"""Real DNS servers on loopback for the tests: NSD (authoritative, from Debian), a nameserver
that never answers, and one that answers every UDP query truncated and refuses TCP.

``scripts/install-test-servers.sh`` installs NSD. Nothing here sends a packet beyond 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

HOST = "127.0.0.1"

# Negative TTL of dp.test: min(SOA TTL 3600, MINIMUM 60) = 60.
DP_TEST = """\
$ORIGIN dp.test.
$TTL 300
@          3600 IN SOA ns hostmaster 1 3600 900 604800 60
@          NS ns
ns         A 127.0.0.1
mx-only    MX 10 mail.other.test.
a-only     120 A 192.0.2.1
aaaa-only  AAAA 2001:db8::1
nullmx     MX 0 .
nullmx-a   MX 0 .
nullmx-a   A 192.0.2.2
nodata     TXT "no mail here"
alias      CNAME target
target     A 192.0.2.3
chain      100 CNAME alias
alias-ext  CNAME host.other.test.
alias-nx   CNAME nothere
loop1      CNAME loop2
loop2      CNAME loop1
multi-mx   MX 20 c.mx
multi-mx   MX 10 a.mx
multi-mx   MX 10 b.mx
mixed-null MX 0 .
mixed-null MX 10 real.mx
txt-multi  TXT "v=spf1 ip4:192.0.2.1" " -all"
txt-multi  TXT "second record"
_dmarc.txt-multi TXT "v=DMARC1; p=reject"
sel._domainkey.txt-multi TXT "v=DKIM1; k=ed25519; p=" "AAAA"
"""

# Negative TTL of other.test: min(SOA TTL 30, MINIMUM 600) = 30.
OTHER_TEST = """\
$ORIGIN other.test.
$TTL 300
@     30 IN SOA ns.dp.test. hostmaster.dp.test. 1 3600 900 604800 600
@     NS ns.dp.test.
host  A 192.0.2.9
mail  A 192.0.2.10
"""

# bücher.test
IDN_TEST = """\
$ORIGIN xn--bcher-kva.test.
$TTL 300
@     IN SOA ns.dp.test. hostmaster.dp.test. 1 3600 900 604800 60
@     NS ns.dp.test.
@     MX 10 mail
mail  A 192.0.2.20
"""


def ttl_zone(serial: int, body: str) -> str:
    """The zone the TTL tests rewrite and reload; negative TTL 60."""
    return (
        "$ORIGIN ttl.test.\n$TTL 300\n"
        f"@ 3600 IN SOA ns.dp.test. hostmaster.dp.test. {serial} 3600 900 604800 60\n"
        "@ NS ns.dp.test.\n" + body
    )


ZONES: dict[str, str | None] = {
    "dp.test": DP_TEST,
    "other.test": OTHER_TEST,
    "xn--bcher-kva.test": IDN_TEST,
    "ttl.test": ttl_zone(1, "www 30 A 192.0.2.30\n"),
    # Configured, but its zone file does not exist: NSD answers SERVFAIL for it.
    "broken.test": None,
    # DKIM keys: tests/dkim_verifiers.py publishes the session's keys in it (serial 2).
    "dkim.test": (
        "$ORIGIN dkim.test.\n$TTL 300\n@ 3600 IN SOA ns.dp.test. hostmaster.dp.test. 1 3600 900 604800 60\n@ NS ns.dp.test.\n"
    ),
}


def nsd_binary() -> str | None:
    return shutil.which("nsd") or next((p for p in ("/usr/sbin/nsd",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (the server binds both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((HOST, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port for UDP and TCP")


def query(port: int, name: str, rdtype: str = "A", timeout: float = 0.5) -> dns.message.Message:
    """One direct UDP query (no resolver, no cache), for readiness checks."""
    return dns.query.udp(dns.message.make_query(name, rdtype), HOST, port=port, timeout=timeout)


class NsdServer:
    """NSD serving ``zones`` on 127.0.0.1 at a free port, controlled over a Unix socket."""

    def __init__(self, zones: dict[str, str | None]) -> None:
        binary = nsd_binary()
        if binary is None:
            raise FileNotFoundError("nsd is not installed: run scripts/install-test-servers.sh")
        self.binary = binary
        self.control = shutil.which("nsd-control") or str(Path(binary).with_name("nsd-control"))
        # A short path: the control socket's name must fit in sun_path (108 bytes).
        self.dir = Path(tempfile.mkdtemp(prefix="dp-nsd-"))
        self.zones = dict(zones)
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _config(self) -> str:
        d = self.dir
        lines = [
            "server:",
            f"    ip-address: {HOST}@{self.port}",
            f"    port: {self.port}",
            '    username: ""',
            '    chroot: ""',
            f'    zonesdir: "{d}"',
            f'    pidfile: "{d}/nsd.pid"',
            '    database: ""',
            f'    zonelistfile: "{d}/zone.list"',
            f'    xfrdfile: "{d}/xfrd.state"',
            f'    xfrdir: "{d}"',
            f'    logfile: "{d}/nsd.log"',
            "    server-count: 1",
            "    do-ip6: no",
            "    verbosity: 1",
            "remote-control:",
            "    control-enable: yes",
            f"    control-interface: {d}/nsd.ctl",
        ]
        for name in self.zones:
            lines += ["zone:", f"    name: {name}", f"    zonefile: {name}.zone"]
        return "\n".join(lines) + "\n"

    def write_zone(self, name: str, text: str) -> None:
        path = self.dir / f"{name}.zone"
        path.write_text(text)
        # NSD reloads a zone when its file's mtime changed: make sure it did, even within
        # the file system's timestamp granularity.
        stamp = time.time() + 1
        os.utime(path, (stamp, stamp))
        self.zones[name] = text

    def start(self, attempts: int = 5) -> None:
        for name, text in self.zones.items():
            if text is not None:
                self.write_zone(name, text)
        for _ in range(attempts):
            self.port = free_port()
            (self.dir / "nsd.conf").write_text(self._config())
            self.process = subprocess.Popen(
                [self.binary, "-d", "-c", str(self.dir / "nsd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return
            self.stop()
        log = (self.dir / "nsd.log").read_text() if (self.dir / "nsd.log").exists() else ""
        raise RuntimeError(f"nsd did not start:\n{log}")

    def _wait_ready(self, seconds: float = 10.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                response = query(self.port, "dp.test", "SOA", timeout=0.2)
                if response.rcode() == dns.rcode.NOERROR and response.answer:
                    return True
            except (dns.exception.Timeout, OSError):
                pass
            time.sleep(0.05)
        return False

    def serial(self, zone: str) -> int | None:
        response = query(self.port, zone, "SOA")
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None

    def reload(self, zone: str, text: str, serial: int, seconds: float = 5.0) -> None:
        """Rewrites a zone, reloads it with nsd-control and waits until NSD serves ``serial``."""
        self.write_zone(zone, text)
        subprocess.run(
            [self.control, "-c", str(self.dir / "nsd.conf"), "reload", zone],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # While NSD reloads, its old server process answers for a moment beside the new one: the
        # new serial counts as served once five answers in a row give it.
        deadline = time.monotonic() + seconds
        seen = 0
        while seen < 5:
            seen = seen + 1 if self.serial(zone) == serial else 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"nsd did not load serial {serial} of {zone}")
            time.sleep(0.02 if seen else 0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class SilentServer:
    """A nameserver that never answers: a bound UDP socket nobody reads, and a TCP listener
    that accepts connections (the kernel completes them) and never replies."""

    def __init__(self) -> None:
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST, self.port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.bind((HOST, self.port))
        self.tcp.listen(64)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()


class TruncatingServer:
    """Answers every UDP query with an empty, truncated (TC) response and has no TCP
    listener: truncation that no retry can fix."""

    def __init__(self) -> None:
        self.port = free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((HOST, self.port))
        self.udp.settimeout(0.1)
        self.queries = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="truncating-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            try:
                response = dns.message.make_response(dns.message.from_wire(data))
            except dns.exception.DNSException:
                continue
            response.flags |= dns.flags.TC
            self.queries += 1
            self.udp.sendto(response.to_wire(), peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.udp.close()


# --- pytest fixtures, imported by tests/conftest.py ----------------------------------------------

_T = TypeVar("_T")


@pytest.fixture(scope="session")
def nsd() -> Iterator[NsdServer]:
    """NSD serving ZONES on 127.0.0.1 at a free port, for the session."""
    if nsd_binary() is None:
        message = "nsd is not installed: run scripts/install-test-servers.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = NsdServer(ZONES)
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def silent_nameserver() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture(scope="session")
def truncating_nameserver() -> Iterator[TruncatingServer]:
    server = TruncatingServer()
    yield server
    server.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def aio_run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, _T]], _T]:
    """Runs a coroutine to completion on the stdlib event loop, then again on uvloop."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        run: Callable[[Coroutine[Any, Any, _T]], _T] = uvloop.run
        return run
    return asyncio.run
