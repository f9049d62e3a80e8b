"""A private Postfix instance on loopback for the milter tests: its own configuration, queue
and data directories, unprivileged ports, nothing chrooted (as benches/relay_vs_postfix.sh),
with the milter guide's deliverypool lines (docs/guide/milter.md, "Postfix configuration (tested)") added to its
main.cf and master.cf, the pool addresses and ports replaced by the test's.

``scripts/install-test-servers.sh`` installs Postfix. Nothing here sends a packet beyond
127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTFIX = "/usr/sbin/postfix"
MASTER_CF_DIST = Path("/usr/share/postfix/master.cf.dist")

# The milter guide's example values and what the tests use instead.
README_NORMAL_SOURCE = "192.0.2.10"
README_HIGH_RISK_SOURCE = "198.51.100.7"
README_MILTER = "inet:127.0.0.1:8893"


def wait_listening(port: int, failure: Callable[[], str], seconds: float = 30.0, host: str = "127.0.0.1") -> None:
    """Waits until something accepts connections on `host`:`port`; fails with `failure()`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), 1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(failure()) from None
            time.sleep(0.05)


def private_main_cf(work: Path, relay_port: int, hostname: str) -> str:
    """main.cf of a private instance in `work` (its conf/, queue/, data/ and postfix.log):
    loopback only, relaying from 127.0.0.0/8 to 127.0.0.1:`relay_port`, no DNS, no TLS out."""
    return f"""compatibility_level = 3.6
queue_directory = {work / "queue"}
data_directory = {work / "data"}
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
maillog_file = {work / "postfix.log"}
maillog_file_prefixes = {work}
"""


def later_wins(main_cf: str) -> str:
    """`main_cf` with each parameter set once, to the value of its last setting (at the place of
    its first). Postfix takes the last setting too, but every one of its processes then logs
    "overriding earlier entry" when it starts: a dozen processes starting at once put more lines
    in postlogd's socket than its queue holds (net.unix.max_dgram_qlen, 10), and postlogd, which
    logs the same warning to that socket, blocks on it for good, and every process behind it."""
    entries: dict[str, list[str]] = {}
    order: list[str | list[str]] = []
    current: list[str] | None = None
    for line in main_cf.splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)\s*=", line)
        if match:
            current = [line]
            if match.group(1) not in entries:
                order.append(match.group(1))
            entries[match.group(1)] = current
        elif line[:1].isspace() and line.strip() and current is not None:
            current.append(line)  # a continuation line
        else:
            current = None
            order.append([line])  # comments and blank lines stay where they are
    lines: list[str] = []
    for item in order:
        lines += entries[item] if isinstance(item, str) else item
    return "\n".join(lines) + "\n"


def private_master_cf(port: int) -> str:
    """The stock master.cf with the SMTP listener moved to 127.0.0.1:`port` and nothing chrooted
    (and postlogd for maillog_file)."""
    master = MASTER_CF_DIST.read_text()
    master = re.sub(r"^smtp      inet", f"127.0.0.1:{port} inet", master, flags=re.M)
    master = re.sub(r"^([a-z0-9.:-]+ +[a-z-]+ +[-ny] +[-ny] +)[-y]", r"\1n", master, flags=re.M)
    if not re.search(r"^postlog", master, flags=re.M):
        master += "postlog   unix-dgram n  -       n       -       1       postlogd\n"
    return master


def postfix_installed() -> bool:
    return os.access(POSTFIX, os.X_OK) and MASTER_CF_DIST.is_file()


def guide_blocks(heading: str, name: str, fence: str = "") -> dict[str, str]:
    """The code blocks (fenced ```` ```FENCE ````) of one section of the milter guide
    (docs/guide/milter.md), by the name their first line's comment gives (`name`: a regex whose
    first group is that name)."""
    text = (REPO / "docs" / "guide" / "milter.md").read_text(encoding="utf-8")
    start = text.index(heading)
    following = text.find("\n## ", start + 1)
    section = text[start : following if following >= 0 else len(text)]
    blocks: dict[str, str] = {}
    for body in re.findall(rf"^```{fence}\n(.*?)^```$", section, flags=re.S | re.M):
        match = re.fullmatch(name, body.splitlines()[0])
        if match:
            blocks[match.group(1)] = body
    return blocks


def readme_blocks() -> dict[str, str]:
    """The code blocks of the milter guide's tested Postfix section, by their first line's name:
    ``main.cf``, ``master.cf`` and the ``deliverypool_*.regexp`` tables."""
    return guide_blocks("## Postfix configuration (tested)", r"# (main\.cf|master\.cf|deliverypool_[a-z_]+\.regexp)(?:: deliverypool)?")


CHAIN_SECTION = "## A scoring milter before deliverypool's (tested)"
README_RSPAMD_MILTER = "inet:127.0.0.1:11332"


AUTH_SECTION = "## Routing by authentication (tested)"


def auth_blocks() -> dict[str, str]:
    """The blocks of the milter guide's authentication section, by their first line's name:
    ``master.cf``, ``main.cf`` and ``relay.toml``."""
    return guide_blocks(AUTH_SECTION, r"# (master\.cf|main\.cf|relay\.toml)(?:: .*)?", "(?:toml)?")


def chain_blocks() -> dict[str, str]:
    """The blocks of the milter guide's scoring-milter section, by their first line's name:
    ``main.cf`` (the smtpd_milters chain), ``milter_headers.conf`` (rspamd's) and ``relay.toml``
    (deliverypool's)."""
    return guide_blocks(CHAIN_SECTION, r"# (?:rspamd: local\.d/)?(main\.cf|milter_headers\.conf|relay\.toml)(?:: .*)?", "(?:toml)?")


class PostfixInstance:
    """Postfix listening on 127.0.0.1:`port`, relaying to 127.0.0.1:`relay_port`, with the
    milter guide's configuration pointing at 127.0.0.1:`milter_port`."""

    def __init__(
        self,
        *,
        port: int,
        relay_port: int,
        milter_port: int = 0,
        normal_source: str = README_NORMAL_SOURCE,
        high_risk_source: str = README_HIGH_RISK_SOURCE,
        extra_main: str = "",
        extra_master: str = "",
        rspamd_milter_port: int | None = None,
        readme: bool = True,
        substitute: dict[str, str] | None = None,
    ) -> None:
        """With `readme` False, a plain Postfix relaying to the relay, without the milter
        guide's lines; `extra_main` is added to main.cf last (a later setting wins),
        `extra_master` to master.cf; `substitute`: more of the guide's values and the test's."""
        self.port = port
        self.work = Path(tempfile.mkdtemp(prefix="dp-postfix-"))
        self.work.chmod(0o755)
        self.config_dir = self.work / "conf"
        self.queue_dir = self.work / "queue"
        self.data_dir = self.work / "data"
        self.log_file = self.work / "postfix.log"
        for folder in (self.config_dir, self.queue_dir, self.data_dir):
            folder.mkdir()
        shutil.chown(self.data_dir, "postfix")
        blocks = readme_blocks() if readme else {"main.cf": "", "master.cf": ""}
        missing = {"main.cf", "master.cf"} - set(blocks)
        assert not missing, f"the milter guide's Postfix section lacks {missing}"
        replace = {
            README_NORMAL_SOURCE: normal_source,
            README_HIGH_RISK_SOURCE: high_risk_source,
            README_MILTER: f"inet:127.0.0.1:{milter_port}",
        }
        if rspamd_milter_port is not None:
            replace[README_RSPAMD_MILTER] = f"inet:127.0.0.1:{rspamd_milter_port}"
        replace.update(substitute or {})

        def ours(text: str) -> str:
            for old, new in replace.items():
                text = text.replace(old, new)
            return text

        # The instance's own settings first, then the guide's lines, as a user appends them.
        (self.config_dir / "main.cf").write_text(
            later_wins(
                private_main_cf(self.work, relay_port, "postfix.milter.test")
                + """mydomain = milter.test
myorigin = $myhostname
# Quick retries, so that a test sees deferred mail leave soon after its cause is gone.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
bounce_queue_lifetime = 0
delay_warning_time = 0
"""
                + ours(blocks["main.cf"])
                # Lines added after the guide's (a later setting wins: the milter chain).
                + ours(extra_main)
            )
        )
        (self.config_dir / "master.cf").write_text(private_master_cf(port) + ours(blocks["master.cf"]) + ours(extra_master))
        for name, body in blocks.items():
            if name.endswith(".regexp"):
                (self.config_dir / name).write_text(body)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", str(self.config_dir), *args], capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        check = self.postfix("check")
        assert check.returncode == 0, f"postfix check: {check.stdout}{check.stderr}{self.log()}"
        started = self.postfix("start")
        assert started.returncode == 0, f"postfix start: {started.stdout}{started.stderr}{self.log()}"
        wait_listening(self.port, lambda: f"Postfix does not listen on 127.0.0.1:{self.port}\n{self.log()}")

    def flush(self) -> None:
        """Asks the queue manager to retry deferred mail now."""
        self.postfix("flush")

    def queue(self) -> list[dict[str, object]]:
        """The queue as postqueue -j lists it (one dict per message)."""
        out = subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.config_dir), "-j"], capture_output=True, text=True, timeout=30
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        self.postfix("stop")
        # `postfix stop` returns before the master has exited; wait for its pid file to go.
        pid_file = self.queue_dir / "pid" / "master.pid"
        deadline = time.monotonic() + 10
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, 0)
            except (OSError, ValueError, IndexError):
                break
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
