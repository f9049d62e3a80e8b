"""A real rspamd (Debian's package) for the score tests: its own configuration directory
(the package's rules and scores from /etc/rspamd, our top-level file and overrides), one normal
worker on a free loopback port, no controller, no Redis; with `proxy_port`, also a proxy worker
in milter mode (as Debian's configuration has on 11332) scanning through the normal worker, for
the milter chain in front of Postfix (`milter_headers`: its local.d/milter_headers.conf).

Nothing here sends a packet beyond 127.0.0.1: rspamd's DNS goes to a loopback port where
nothing answers, and the modules that fetch maps or ask network services (RBLs, fuzzy
storage, phishing feeds, SPF/DKIM/DMARC, ...) are disabled. Started once per test module: it
loads its rules in a few seconds.

``scripts/install-test-servers.sh`` installs rspamd.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

RSPAMD = "/usr/bin/rspamd"

# Modules that use the network (DNS lists, HTTP maps, fuzzy servers) or Redis.
DISABLED_MODULES = (
    "antivirus arc asn bimi clickhouse dcc dkim dkim_signing dmarc elastic emails external_services "
    "fuzzy_check greylist hfilter history_redis metadata_exporter mid mime_types multimap mx_check "
    "neural once_received p0f phishing ratelimit rbl replies reputation rspamd_update spamassassin "
    "spf surbl url_redirector whitelist"
).split()

CONFIG = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    filters = "chartable,regexp";
    # A short public-suffix list: compiling the full one takes rspamd 20 s.
    url_tld = "$LOCAL_CONFDIR/tld.dat";
    dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 200ms; retransmits = 1; }}
    local_addrs = [];
    hs_cache_dir = "$DBDIR/";
    cache_file = "$DBDIR/symbols.cache";
    dynamic_conf = "$DBDIR/rspamd_dynamic";
    history_file = "$DBDIR/rspamd.history";
    control_socket = "$DBDIR/rspamd.sock mode=0600";
    explicit_modules = ["settings"];
    allow_raw_input = true;
    task_timeout = 8s;
}}
logging {{ type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
"""

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


PROXY = """\
worker "rspamd_proxy" {{
    bind_socket = "127.0.0.1:{proxy_port}";
    milter = yes;
    timeout = 120s;
    upstream "local" {{ default = yes; hosts = "127.0.0.1:{port}"; }}
    count = 1;
}}
"""
# A rule of the chain tests' own (the regexp module, local.d/regexp.conf): a message whose
# subject holds SPAM_MARKER scores 7, above the relay's threshold and rspamd's "add header" (6),
# through rspamd's whole scan (its test patterns, GTUBE's siblings, skip the header routines).
SPAM_MARKER = "deliverypool-chain-spam"
SPAM_RULE = f"""DELIVERYPOOL_CHAIN_SPAM {{
    re = "Subject=/{SPAM_MARKER}/i";
    score = 7.0;
    description = "the chain tests' spam marker";
}}
"""


def rspamd_installed() -> bool:
    return os.access(RSPAMD, os.X_OK)


class RspamdServer:
    def __init__(self, port: int, *, dns_port: int = 9, proxy_port: int | None = None, milter_headers: str | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proxy_port = proxy_port
        self.work = Path(tempfile.mkdtemp(prefix="dp-rspamd-"))
        for name in ("local.d", "db", "run", "log"):
            (self.work / name).mkdir()
        for module in DISABLED_MODULES:
            (self.work / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        (self.work / "tld.dat").write_text("com\nnet\norg\ntest\nexample\n")
        config = CONFIG.format(port=port, dns_port=dns_port)
        if proxy_port is not None:
            config += PROXY.format(proxy_port=proxy_port, port=port)
            (self.work / "local.d" / "regexp.conf").write_text(SPAM_RULE)
        if milter_headers is not None:
            (self.work / "local.d" / "milter_headers.conf").write_text(milter_headers)
        (self.work / "rspamd.conf").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None
        if os.geteuid() == 0:
            # rspamd refuses to run as root; its workers run as the package's user.
            for path in [self.work, *self.work.rglob("*")]:
                shutil.chown(path, "_rspamd", "_rspamd")

    def start(self, seconds: float = 60.0) -> None:
        user = ["-u", "_rspamd", "-g", "_rspamd"] if os.geteuid() == 0 else []
        variables = [f"--var={name}={self.work / sub}" for name, sub in (("DBDIR", "db"), ("RUNDIR", "run"), ("LOGDIR", "log"))]
        self.process = subprocess.Popen(
            [RSPAMD, "-f", *user, "-c", str(self.work / "rspamd.conf"), f"--var=LOCAL_CONFDIR={self.work}", *variables],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + seconds
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = self.log()[-3000:]
                self.stop()
                raise AssertionError(f"rspamd did not start on {self.url}\n{log}")
            time.sleep(0.1)

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=1) as response:
                return bool(response.read().strip() == b"pong")
        except (OSError, urllib.error.URLError):
            return False

    def log(self) -> str:
        try:
            return (self.work / "log" / "rspamd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stops rspamd (its main process and workers) and waits for the port to close."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        deadline = time.monotonic() + 10
        while self.ping() and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)
