"""The relay's SMTP client against real peers on loopback: Postfix's smtp-sink told to offer or
hide extensions (PIPELINING, ESMTP itself) or to close with 421, and a real Postfix as the
next hop with STARTTLS (a certificate from a throwaway CA, tls = "required": verified),
PIPELINING and CHUNKING, relaying on to an aiosmtpd sink where the content is checked."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from deliverypool.cli.demo import common_port
from deliverypool.queue.listing import listing, read_counters
from tests.postfix import POSTFIX, postfix_installed, private_main_cf, private_master_cf, wait_listening
from tests.smtp_sinks import eventually, free_port, message, relay_config, sink
from tests.test_outbound_hardening import submit
from tests.test_relay import running

Run = Callable[[Coroutine[Any, Any, Any]], Any]
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
DESTINATION = "127.0.0.22"


def missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


@contextlib.contextmanager
def smtp_sink(port: int, *flags: str) -> Iterator[Path]:
    """smtp-sink on DESTINATION:`port` with `flags`, dumping each message into a file of the
    folder it yields (-d)."""
    if not os.access(SMTP_SINK, os.X_OK):
        missing("smtp-sink is not installed (Debian's postfix package): run scripts/install-test-servers.sh")
    dumps = Path(tempfile.mkdtemp(prefix="dp-sink-"))
    dumps.chmod(0o777)
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [SMTP_SINK, *user, "-d", f"{dumps}/%M.", *flags, f"{DESTINATION}:{port}", "16"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, lambda: f"smtp-sink {' '.join(flags)} did not start", host=DESTINATION)
        yield dumps
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(dumps, ignore_errors=True)


def dumped(folder: Path) -> list[str]:
    return [path.read_text(errors="replace") for path in sorted(folder.iterdir()) if path.is_file()]


@pytest.mark.parametrize(
    ("flags", "what"),
    [((), "PIPELINING, 8BITMIME, DSN, ENHANCEDSTATUSCODES"), (("-p",), "no PIPELINING"), (("-e",), "no ESMTP: HELO")],
)
def test_smtp_sink_takes_every_message(aio_run: Run, tmp_path: Path, flags: tuple[str, ...], what: str) -> None:
    port = common_port([DESTINATION])
    conf = relay_config(tmp_path / "spool", smarthost=f"{DESTINATION}:{port}")

    async def main() -> None:
        with smtp_sink(port, *flags) as dumps:
            async with running(conf):
                for n in range(3):
                    await submit(conf, message(f"sink {n}", body=f"n\u00e9 {n}\r\n.dot\r\n"), [f"a{n}@dest.test", f"b{n}@dest.test"])
                await eventually(lambda: read_counters(conf.spool.directory)["delivered"] == 6, what=f"delivered ({what})")
                assert read_counters(conf.spool.directory)["failed"] == 0
            await eventually(lambda: len(dumped(dumps)) == 3, what="dumps")
            for text in dumped(dumps):
                n = re.search(r"Subject: sink (\d)", text)
                assert n is not None, text
                rcpts = re.findall(r"^X-Rcpt-Args: <([^>]*)>", text, flags=re.M)
                assert rcpts == [f"a{n[1]}@dest.test", f"b{n[1]}@dest.test"]
                assert "\n.dot\n" in text  # dot-stuffed on the way out, unstuffed by the sink
                mail_args = re.search(r"^X-Mail-Args: (.*)$", text, flags=re.M)
                assert mail_args is not None
                assert ("BODY=8BITMIME" in mail_args[1]) == ("-e" not in flags), mail_args[1]
                assert ("X-Client-Proto: ESMTP" in text) == ("-e" not in flags)

    aio_run(main())


def test_a_421_after_rcpt_defers_with_that_reply(aio_run: Run, tmp_path: Path) -> None:
    port = common_port([DESTINATION])
    conf = relay_config(tmp_path / "spool", smarthost=f"{DESTINATION}:{port}")

    async def main() -> None:
        with smtp_sink(port, "-Q", "RCPT"):
            async with running(conf) as relay:
                await submit(conf, message("421"), ["x@dest.test"])
                await eventually(lambda: any(r.last_reply for r in listing(conf.spool.directory)), what="a recorded deferral")
                (row,) = listing(conf.spool.directory)
                assert row.last_reply is not None and row.last_reply.startswith("421"), row.last_reply

    aio_run(main())


# --- a real Postfix as the next hop -----------------------------------------------------------


class PostfixNextHop:
    """Postfix on 127.0.0.1:`port` offering STARTTLS with `cert`/`key` (and PIPELINING and
    CHUNKING, as it does), relaying everything to 127.0.0.1:`relay_port`; every SMTP command of
    clients from 127.0.0.2 logged (debug_peer_list)."""

    def __init__(self, port: int, relay_port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.work = Path(tempfile.mkdtemp(prefix="dp-postfix-hop-"))
        self.work.chmod(0o755)
        self.config_dir, self.queue_dir, self.data_dir = self.work / "conf", self.work / "queue", self.work / "data"
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir()
        shutil.chown(self.data_dir, "postfix")
        self.log_file = self.work / "postfix.log"
        (self.config_dir / "main.cf").write_text(
            private_main_cf(self.work, relay_port, "postfix.hop.test")
            + f"""smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
debug_peer_list = 127.0.0.2
"""
        )
        (self.config_dir / "master.cf").write_text(private_master_cf(port))

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60)

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        started = self.postfix("start")
        assert started.returncode == 0, f"postfix start: {started.stdout}{started.stderr}{self.log()}"
        wait_listening(self.port, lambda: f"Postfix does not listen on 127.0.0.1:{self.port}\n{self.log()}")

    def close(self) -> None:
        self.postfix("stop")
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.mark.slow
def test_a_real_postfix_next_hop_with_verified_starttls_pipelining_and_chunking(aio_run: Run, tmp_path: Path) -> None:
    """tls = "required": the certificate (issued for 127.0.0.1 by a CA the relay is told to
    trust) is verified; the commands go pipelined and the bodies with BDAT inside TLS; Postfix
    relays them on byte for byte (an 8-bit body and a dot-line included)."""
    if not postfix_installed():
        missing("Postfix is not installed: run scripts/install-test-servers.sh")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(tmp_path / "hop.pem")
    (tmp_path / "hop.pem").chmod(0o644)
    tmp_path.chmod(0o755)
    port, sink_port = free_port(), free_port()
    hop = PostfixNextHop(port, sink_port, tmp_path / "hop.pem", tmp_path / "hop.pem")
    conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.1:{port}", pool_extra='tls = "required"')
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    bodies = [message("plain", message_id="<plain@t>"), message("eight", body="\u00e9t\u00e9\r\n.dot\r\n", message_id="<eight@t>")]

    async def main() -> None:
        async with sink("127.0.0.1", sink_port, "after-postfix") as final:
            hop.start()
            try:
                async with running(conf) as relay:
                    assert relay.engine is not None
                    relay.engine.connector.verify_tls = trusted
                    for body in bodies:
                        await submit(conf, body, ["a@dest.test", "b@dest.test"])
                    delivered = await final.wait_for(2, timeout=60)
                log = hop.log()
            finally:
                hop.close()
        for body in bodies:
            (got,) = [d for d in delivered if body.split(b"Message-ID: ")[1].split(b"\r\n")[0] in d.content]
            assert got.content.endswith(body), got.content
            assert sorted(got.rcpt_tos) == ["a@dest.test", "b@dest.test"]
        assert re.search(r"TLS connection established from \S+\[127\.0\.0\.2\]", log), log
        assert re.search(r"< \S+\[127\.0\.0\.2\]: BDAT \d+ LAST", log), log
        assert "improper command pipelining" not in log

    aio_run(main())


def test_required_tls_with_an_untrusted_certificate_defers(aio_run: Run, tmp_path: Path) -> None:
    """The same Postfix, but the relay does not trust its CA: nothing is sent, the mail waits."""
    if not postfix_installed():
        missing("Postfix is not installed: run scripts/install-test-servers.sh")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(tmp_path / "hop.pem")
    (tmp_path / "hop.pem").chmod(0o644)
    tmp_path.chmod(0o755)
    port, sink_port = free_port(), free_port()
    hop = PostfixNextHop(port, sink_port, tmp_path / "hop.pem", tmp_path / "hop.pem")
    conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.1:{port}", pool_extra='tls = "required"')

    async def main() -> None:
        hop.start()
        try:
            async with running(conf) as relay:
                await submit(conf, message("untrusted"), ["a@dest.test"])
                # (stats.deferred counts before the spool has the reply: wait for the reply.)
                await eventually(lambda: any(r.last_reply for r in listing(conf.spool.directory)), what="a recorded deferral")
                (row,) = listing(conf.spool.directory)
                assert row.last_reply is not None and "CERTIFICATE_VERIFY_FAILED" in row.last_reply, row.last_reply
                assert relay.engine is not None and relay.engine.stats.delivered == 0
        finally:
            hop.close()

    aio_run(main())
