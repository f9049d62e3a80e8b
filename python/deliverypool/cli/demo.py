"""`deliverypool demo`: the relay on loopback, end to end, with no configuration.

It starts, in one process:

* a tiny authoritative DNS server on 127.0.0.1 (`deliverypool.testing.zoneserver`) for the ``.test``
  demo domains: ``shop.test`` with two MX hosts, ``sender.test`` (the senders' domain, with
  its own MX), ``nullmx.test`` with a null MX, and nothing at all for ``ghost.test``;
* SMTP sinks (aiosmtpd) as the MX hosts, on 127.0.0.10, 127.0.0.11 and 127.0.0.12, which
  record the source address of every connection;
* the relay: a normal pool sending from 127.0.0.2, a high-risk pool sending from 127.0.0.3,
  MX delivery through that DNS server, a spool in a temporary directory.

Then it sends a mixed workload over SMTP (ordinary mail, mail a content filter scored above
the threshold, real bounces from the shared corpus when it is there, else generated ones, mail
from a domain without DNS records, and mail to a domain with a null MX, which the relay bounces
itself) and prints where each kind went, which source addresses the sinks saw, and the
throughput. Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import logging
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from deliverypool import classify
from deliverypool import config as cfg
from deliverypool.mail.dsn import Failure, build_dsn
from deliverypool.mail.headers import crlf, header_block, header_section
from deliverypool.eventloop import run
from deliverypool.app import Accepted, Relay
from deliverypool.config.credentials import new_token
from deliverypool.cli.demo_limits import LIMITS_LISTENER, LIMITS_TENANTS, compromised_account
from deliverypool.cli.demo_dnsbl import act_config, listed_address
from deliverypool.cli.demo_monitor import MONITOR_SETTINGS, compromised_customer, print_alert
from deliverypool.testing.scenarios import corpus_folder
from deliverypool.testing.zoneserver import ZoneServer

NORMAL_SOURCE = "127.0.0.2"
HIGH_RISK_SOURCE = "127.0.0.3"
SINKS = {"mx1.shop.test": "127.0.0.10", "mx2.shop.test": "127.0.0.11", "mx.sender.test": "127.0.0.12"}

ZONE = """\
$ORIGIN test.
$TTL 300
@               IN SOA ns.test. hostmaster.test. 1 3600 900 604800 60
@               NS ns
ns              A 127.0.0.1
shop            MX 10 mx1.shop
shop            MX 10 mx2.shop
mx1.shop        A 127.0.0.10
mx2.shop        A 127.0.0.11
sender          MX 10 mx.sender
mx.sender       A 127.0.0.12
nullmx          MX 0 .
nullmx          A 192.0.2.1
"""

KINDS = {
    "ordinary": "ordinary mail",
    "scored": "spam score 8.5 (threshold 5)",
    "dsn": "bounces (DSNs) from the corpus",
    "ghost": "sender domain without records",
    "nullmx": "to a null-MX domain (bounced)",
    "bounce": "DSNs the relay wrote",
}
KIND_HEADER = "X-Demo-Kind"
# The relay's log format (app.configure_logging), for -v and the lines held back.
LOG_FORMAT = "%(asctime)s %(name)s %(message)s"


@dataclass
class KindStats:
    sent: int = 0
    refused: list[str] = field(default_factory=list)
    pools: collections.Counter[str] = field(default_factory=collections.Counter)
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    delivered: int = 0
    peers: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)


class _Sink:
    def __init__(self, name: str, stats: dict[str, KindStats], arrived: asyncio.Event) -> None:
        self.name = name
        self.stats = stats
        self.arrived = arrived

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        kind = _kind_of(content)
        if kind is None and envelope.mail_from in ("<>", "") and b"report-type=delivery-status" in content:
            kind = "bounce"
        entry = self.stats[kind or "other"]
        if kind == "bounce" and not entry.reasons:
            entry.reasons.update(classify(content, mail_from="").reasons)
        entry.delivered += 1
        assert isinstance(session.peer, tuple)
        entry.peers[session.peer[0]] += 1
        self.arrived.set()
        return "250 2.0.0 Ok: stored by demo sink"


def _kind_of(content: bytes) -> str | None:
    """The demo's kind marker, from the message's own header section only (a DSN quotes the
    original's headers in its body)."""
    marker = f"\r\n{KIND_HEADER}: ".encode()
    header = b"\r\n" + header_section(content)
    start = header.find(marker)
    if start < 0:
        return None
    end = header.find(b"\r", start + len(marker))
    return header[start + len(marker) : end].decode("ascii", "replace")


def corpus_bounces(limit: int) -> list[bytes]:
    """Real bounces from ../shared/corpus when it is there (a source checkout beside the shared
    folder): the standard RFC 3464 ones first, then those of common servers. Only those the
    engine recognises as DSNs with a null sender are used, so the demo shows routing, not the
    detector's few misses (docs/concepts/dsn-detection.md gives its measured recall)."""
    folder = corpus_folder()
    if folder is None:
        return []
    files = sorted(folder.glob("rfc3464-*.eml")) + sorted(folder.glob("lhost-*.eml"))
    found = []
    for file in files:
        message = crlf(file.read_bytes())
        message = message[header_block(message)[0] :]  # without an mbox From_ line (or other lead-in)
        fits = max(map(len, message.split(b"\r\n"))) <= 998  # RFC 5321 line limit
        if fits and "dsn" in classify(message, mail_from="").reasons:
            found.append(message)
        if len(found) == limit:
            break
    return found


def generated_bounces(count: int) -> list[bytes]:
    now = time.time()
    return [
        build_dsn(
            reporting_mta="mx.elsewhere.test",
            original_sender=f"user{i}@shop.test",
            failures=[Failure(f"gone{i}@elsewhere.test", "550 5.1.1 User unknown", "mx.elsewhere.test")],
            original=f"From: user{i}@shop.test\r\nSubject: order {i}\r\n\r\n".encode(),
            queue_id=f"DEMO{i:04d}",
            arrival=now,
            now=now,
        )
        for i in range(count)
    ]


def _message(kind: str, n: int, sender: str, extra: str = "") -> bytes:
    return (
        f"From: {sender}\r\nTo: customer{n}@shop.test\r\nSubject: demo {kind} {n}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{kind}-{n}@demo.test>\r\n{extra}\r\n"
        f"This is demo message {n}.\r\n"
    ).encode()


def _with_kind(message: bytes, kind: str) -> bytes:
    return f"{KIND_HEADER}: {kind}\r\n".encode() + message


def workload(scale: int) -> list[tuple[str, str, list[str], bytes]]:
    """(kind, envelope sender, recipients, message) for the demo."""
    items: list[tuple[str, str, list[str], bytes]] = []
    for n in range(40 * scale):
        items.append(("ordinary", "news@sender.test", [f"customer{n}@shop.test"], _message("ordinary", n, "news@sender.test")))
    for n in range(10 * scale):
        spam = _message("scored", n, "promo@sender.test", "X-Spam-Score: 8.5\r\n")
        items.append(("scored", "promo@sender.test", [f"customer{n}@shop.test"], spam))
    bounces = corpus_bounces(8 * scale) or generated_bounces(8 * scale)
    for n, bounce in enumerate(bounces):
        items.append(("dsn", "", [f"customer{n}@shop.test"], bounce))
    for n in range(5 * scale):
        items.append(("ghost", "someone@ghost.test", [f"customer{n}@shop.test"], _message("ghost", n, "someone@ghost.test")))
    for n in range(scale):
        items.append(("nullmx", "billing@sender.test", [f"nobody{n}@nullmx.test"], _message("nullmx", n, "billing@sender.test")))
    # Interleave the kinds, as real traffic would be.
    return [item for _, item in sorted(enumerate(items), key=lambda pair: (pair[0] * 7919) % len(items))]


def demo_config(
    spool: Path, listen_port: int, mx_port: int, dns: tuple[str, int], admin_port: int | None = None, token_file: Path | None = None
) -> cfg.RelayConfig:
    pool = {"delivery": "mx", "mx_port": mx_port, "idle_timeout": "1s", "max_connections_per_destination": 4, "retry": {"initial": "1s", "maximum": "5s"}}
    return cfg.from_dict(
        {
            "hostname": "relay.demo.test",
            "listener": {"address": f"127.0.0.1:{listen_port}", "trusted_score_networks": ["127.0.0.1/32"], **LIMITS_LISTENER},
            "spool": {"directory": str(spool)},
            "policy": {"threshold": 5.0, "score_header": "X-Spam-Score"},
            "dns": {"nameservers": [f"{dns[0]}:{dns[1]}"], "timeout": "1s"},
            "pools": {
                "normal": {"source_addresses": [NORMAL_SOURCE], "ehlo_name": "out.demo.test", **pool},
                "high-risk": {"source_addresses": [HIGH_RISK_SOURCE], "ehlo_name": "bulk.demo.test", **pool},
            },
            # The compromised-customer act (cli/demo_monitor.py): a tenant, a short monitor window.
            **MONITOR_SETTINGS,
            # The compromised-account act (cli/demo_limits.py): a tenant with a sender limit.
            "tenants": {**MONITOR_SETTINGS["tenants"], **LIMITS_TENANTS},
            # The admin API with a token the demo generated; /metrics open for a browser.
            **({"admin": {"address": f"127.0.0.1:{admin_port}", "open_metrics": True, **({"token_file": str(token_file)} if token_file else {})}} if admin_port else {}),
        }
    )


def common_port(hosts: Sequence[str]) -> int:
    """A TCP port free on every one of `hosts` (loopback addresses)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port on the demo's loopback addresses")


async def _send_all(port: int, items: list[tuple[str, str, list[str], bytes]], clients: int, stats: dict[str, KindStats]) -> None:
    queue = collections.deque(items)

    async def client() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        async with smtp:
            while queue:
                kind, sender, recipients, message = queue.popleft()
                try:
                    await smtp.sendmail(sender, recipients, _with_kind(message, kind))
                except aiosmtplib.SMTPResponseException as exc:
                    stats[kind].refused.append(f"{exc.code} {exc.message}")

    await asyncio.gather(*(client() for _ in range(clients)))


async def demo(
    out: TextIO = sys.stdout, *, scale: int = 10, clients: int = 8, timeout: float = 45.0, keep_running: bool = False
) -> dict[str, KindStats]:
    """Runs the demo and prints its report to `out`. Returns the statistics per kind."""
    stats: dict[str, KindStats] = collections.defaultdict(KindStats)
    arrived = asyncio.Event()
    loop = asyncio.get_running_loop()
    zones = ZoneServer({"test.": ZONE})
    dns_address = await zones.start()
    mx_port = common_port(list(SINKS.values()))
    servers = []
    with tempfile.TemporaryDirectory(prefix="deliverypool-demo-") as tmp:
        try:
            for name, host in SINKS.items():
                handler = _Sink(name, stats, arrived)
                servers.append(await loop.create_server(lambda h=handler: SMTP(h, hostname=name, loop=loop), host, mx_port))  # type: ignore[misc]
            listen_port = common_port(["127.0.0.1"])
            admin_port = common_port(["127.0.0.1"])
            token_file = Path(tmp) / "admin-tokens"
            token_file.write_text(f"demo:{new_token()}\n")
            token_file.chmod(0o600)
            config = demo_config(Path(tmp) / "spool", listen_port, mx_port, dns_address, admin_port, token_file)
            relay = Relay(config)

            def accepted(result: Accepted, content: bytes) -> None:
                entry = stats[_kind_of(content) or "bounce"]
                entry.pools[result.pool] += 1
                entry.reasons.update(result.reasons or ("-",))

            relay.on_accept = accepted
            await relay.start()
            await relay.listen()
            items = workload(scale)
            for kind, *_ in items:
                stats[kind].sent += 1
            out.write(
                f"deliverypool demo: relay on 127.0.0.1:{listen_port}; pools normal from {NORMAL_SOURCE}, "
                f"high-risk from {HIGH_RISK_SOURCE}; DNS for *.test from {dns_address[0]}:{dns_address[1]}; "
                f"MX sinks on {', '.join(SINKS.values())}; admin (metrics) on http://127.0.0.1:{admin_port}/metrics, its API's token in {token_file}\n"
                f"sending {len(items)} messages over {clients} connections...\n"
            )
            started = time.perf_counter()
            await _send_all(listen_port, items, clients, stats)
            accepted_after = time.perf_counter() - started
            # Everything arrives but the null-MX mail, which comes back as one DSN each.
            expected = len(items) - sum(len(s.refused) for s in stats.values())
            deadline = loop.time() + timeout
            while sum(s.delivered for s in stats.values()) < expected and loop.time() < deadline:
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), max(0.01, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            delivered_after = time.perf_counter() - started
            assert relay.engine is not None
            failed = relay.engine.stats.failed
            _report(out, stats, len(items), accepted_after, sum(s.delivered for s in stats.values()), delivered_after, failed)
            alert = await compromised_customer(relay, listen_port, out, mark=lambda dsn: _with_kind(dsn, "harvest"))
            print_alert(out, alert, f"127.0.0.1:{admin_port}")
            stats["alert"].reasons.update([alert["cause"]] if alert else [])
            limits_act = await compromised_account(relay, listen_port, out, content=_with_kind(_message("ordinary", 0, "newsletter@sender.test"), "limits"), admin=f"127.0.0.1:{admin_port}", token_file=token_file)
            act3 = stats["limits-act"]
            act3.sent, act3.refused = limits_act.accepted, limits_act.refused
            act3.reasons.update({"released": int(limits_act.released), "alert": int(limits_act.alert is not None), "after": limits_act.after_release})
            # Act 4 (cli/demo_dnsbl.py): a second relay's normal address gets listed and drained.
            act4_config = act_config(Path(tmp) / "spool-act4", common_port(["127.0.0.1"]), mx_port, dns_address, common_port(["127.0.0.1"]), token_file)
            act4 = await listed_address(
                zones, act4_config, out, peers=lambda kind: collections.Counter(stats[kind].peers), mark=lambda m, kind: _with_kind(m, kind)
            )
            stats["watch"].problems.extend(act4.problems())
            if keep_running:
                out.write("running until Ctrl-C (--keep-running)\n")
                out.flush()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
            await act4.relay.stop()
            await relay.stop()
        finally:
            for server in servers:
                server.close()
            zones.close()
    return stats


def _report(out: TextIO, stats: dict[str, KindStats], sent: int, accepted_after: float, delivered: int, delivered_after: float, failed: int) -> None:
    pool_of = {NORMAL_SOURCE: "normal", HIGH_RISK_SOURCE: "high-risk"}
    out.write(f"\n{'KIND':<33} {'SENT':>5} {'POOL':<16} {'REASONS':<26} {'DELIVERED':>9}  SOURCE ADDRESS SEEN BY THE SINKS\n")
    for kind, title in KINDS.items():
        entry = stats.get(kind)
        if entry is None:
            continue
        if not entry.pools:  # the relay's own DSNs: the pool is the one whose address sent them
            entry.pools.update({pool_of.get(ip, "?"): n for ip, n in entry.peers.items()})
        pools = ", ".join(f"{p}" if n == sum(entry.pools.values()) else f"{p} {n}" for p, n in entry.pools.most_common()) or "-"
        reasons = ",".join(r for r, _ in entry.reasons.most_common(2)) or "-"
        peers = ", ".join(f"{ip} ({pool_of.get(ip, '?')})" + ("" if n == entry.delivered else f" x{n}") for ip, n in entry.peers.most_common()) or "-"
        sent_text = str(entry.sent) if kind != "bounce" else "-"
        out.write(f"{title:<33} {sent_text:>5} {pools:<16} {reasons:<26} {entry.delivered:>9}  {peers}\n")
    out.write(
        f"\n{sent} messages accepted in {accepted_after:.2f} s ({sent / accepted_after:.0f}/s, each one on disk before its 250); "
        f"{delivered} delivered after {delivered_after:.2f} s ({delivered / delivered_after:.0f}/s end to end); "
        f"{failed} recipient(s) failed permanently and were bounced.\n"
    )


def check(stats: dict[str, KindStats]) -> list[str]:
    """What went wrong, if anything: every kind delivered, and only from its pool's address."""
    problems = list(stats.get("watch", KindStats()).problems)
    if stats.get("alert", KindStats()).reasons.get("directory-harvest") != 1:
        problems.append("the compromised customer's directory harvest raised no directory-harvest alert")
    act = stats.get("limits-act", KindStats())
    if act.sent != 20 or len(act.refused) != 10 or set(act.refused) != {"550 5.1.8 Access denied, bad outbound sender"}:
        problems.append(f"the compromised account: {act.sent} accepted and {len(act.refused)} refused, expected 20 and 10 (550 5.1.8)")
    if act.reasons != {"released": 1, "alert": 1, "after": 1}:
        problems.append(f"the compromised account: alert, release and the mail after it: {dict(act.reasons)}")
    for kind in KINDS:
        entry = stats.get(kind, KindStats())
        want = {NORMAL_SOURCE} if kind == "ordinary" else {HIGH_RISK_SOURCE}
        expected = {"nullmx": 0, "bounce": stats.get("nullmx", KindStats()).sent}.get(kind, entry.sent)
        expected -= len(entry.refused)
        for reply in entry.refused[:3]:
            problems.append(f"{KINDS[kind]}: the relay refused a message: {reply}")
        if entry.delivered != expected:
            problems.append(f"{KINDS[kind]}: {entry.delivered} delivered, expected {expected}")
        if expected and set(entry.peers) != want:
            problems.append(f"{KINDS[kind]}: sent from {sorted(entry.peers)}, expected {sorted(want)}")
    return problems


class _HeldLogs(logging.Handler):
    """Keeps the relay's log records (WARNING and up) while the demo prints its report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter(LOG_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(record) for record in self.records]


@contextlib.contextmanager
def demo_logging(verbose: bool = False) -> Iterator[_HeldLogs | None]:
    """The demo's logging: with `verbose`, every record from INFO up on stderr as it happens
    (the relay's own format); otherwise none is printed while the report is written: WARNING
    and up are held (yielded) for the end, where the demo shows them only if something went
    wrong. The alerts the report prints (deliverypool.alerts) are never shown twice."""
    root = logging.getLogger()
    quiet = {"mail.log": logging.ERROR, "httpx": logging.WARNING}
    if not verbose:
        # Act 4's 250 ms interval would be far over a real list's query terms: the warning says
        # so, which the demo does not need to (its list is its own).
        quiet["deliverypool.dnsbl"] = logging.ERROR
    saved = {name: logging.getLogger(name).level for name in (*quiet, "")}
    for name, level in quiet.items():
        logging.getLogger(name).setLevel(level)
    handler: logging.Handler
    held: _HeldLogs | None = None
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        root.setLevel(logging.INFO)
    else:
        handler = held = _HeldLogs()
        root.setLevel(logging.WARNING)
    root.addHandler(handler)
    try:
        yield held
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name or None).setLevel(level)


def demo_command(*, scale: int = 10, out: TextIO = sys.stdout, keep_running: bool = False, verbose: bool = False) -> int:
    """`deliverypool demo`: exit status 0 when every kind was delivered from its pool. Its log
    lines: see `demo_logging`."""
    with demo_logging(verbose) as held:
        stats: dict[str, KindStats] = run(demo(out, scale=scale, keep_running=keep_running))
    problems = check(stats)
    for problem in problems:
        out.write(f"PROBLEM: {problem}\n")
    if held is not None:
        errors = [r for r in held.records if r.levelno >= logging.ERROR and r.name != "deliverypool.alerts"]
        if problems or errors:
            lines = [held.format(r) for r in held.records if r.name != "deliverypool.alerts"]
            out.write(f"\nthe relay's warnings and errors ({len(lines)}; -v shows every log line as it happens):\n")
            out.writelines(f"  {line}\n" for line in lines)
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    return demo_command()


if __name__ == "__main__":
    sys.exit(main())

