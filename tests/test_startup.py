"""Failing at start, not in a loop (issue 20): `deliverypool relay` and `deliverypool milter`
run as operators run them, with configurations this machine cannot run. Each exits with status
2 and one line naming the key and the fix, and while it starts a client that keeps trying to
connect is never accepted. A supervisor whose worker keeps dying before it serves never listens
and gives up. `--check` runs the same checks and exits."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trustme

from deliverypool import config as cfg
from deliverypool.preflight import named_files, run_checks
from deliverypool.supervisor import MAX_START_FAILURES
from tests.admin_api import token_file
from tests.smtp_sinks import HIGH_RISK_SOURCE, NORMAL_SOURCE, free_port

NOT_LOCAL = "192.0.2.10"  # TEST-NET-1: never an address of this machine


def relay_toml(spool: Path, port: int, extra: str = "", *, normal: str = NORMAL_SOURCE, workers: int = 1) -> str:
    return f"""
workers = {workers}
[listener]
address = "127.0.0.1:{port}"
[spool]
directory = "{spool}"
reserve = "1MB"
margin = "1MB"
[dns]
check_sender_domain = false
[pools.normal]
source_addresses = ["{normal}"]
[pools.high-risk]
source_addresses = ["{HIGH_RISK_SOURCE}"]
{extra}
"""


@dataclass
class Knocker:
    """Tries to connect to 127.0.0.1:`port` again and again, from before the command starts
    until it ends; `accepted` counts the connections that were accepted."""

    port: int
    accepted: int = 0
    tries: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Knocker:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tries += 1
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    self.accepted += 1
            except OSError:
                pass
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(5)


def deliverypool(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "deliverypool.cli", *args], capture_output=True, text=True, timeout=timeout, env=environment)


def start_refused(tmp_path: Path, extra: str = "", *, env: dict[str, str] | None = None, normal: str = NORMAL_SOURCE) -> tuple[str, Knocker]:
    """Starts `deliverypool relay` with the configuration: it must exit 2 with exactly one
    line on stderr, start no worker, and accept no connection meanwhile. Returns the line."""
    port = free_port()
    conf = tmp_path / "relay.toml"
    conf.write_text(relay_toml(tmp_path / "spool", port, extra, normal=normal))
    with Knocker(port) as knocker:
        done = deliverypool("relay", "--config", str(conf), env=env)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert knocker.tries > 0 and knocker.accepted == 0
    assert "worker 0 started" not in done.stderr
    prefix = f"deliverypool relay: {conf}: "
    assert lines[0].startswith(prefix)
    return lines[0].removeprefix(prefix), knocker


def hide_module(tmp_path: Path, name: str) -> dict[str, str]:
    """An environment in which `import name` fails as it does when the package is not installed
    (a module of that name earlier on the path that raises ModuleNotFoundError)."""
    folder = tmp_path / "hidden"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(f"raise ModuleNotFoundError(\"No module named '{name}'\", name={name!r})\n")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH", "")]))}


def test_a_missing_extra_exits_2_with_one_line_before_listening(tmp_path: Path) -> None:
    """Before: each worker died with a ModuleNotFoundError traceback, ten restarts in ten
    seconds, the port open and clients waiting 30 s for a greeting."""
    line, _ = start_refused(tmp_path, '[state]\nredis = "redis://127.0.0.1:1/0"\n', env=hide_module(tmp_path, "redis"))
    assert line.startswith("state.redis: needs the redis package, which is not installed")
    assert line.endswith("pip install 'deliverypool[redis]'")


def test_a_missing_key_file_exits_2_with_one_line(tmp_path: Path) -> None:
    ca = trustme.CA()
    certificate = tmp_path / "cert.pem"
    ca.issue_cert("relay.test").cert_chain_pems[0].write_to_path(str(certificate))
    line, _ = start_refused_with_listener(tmp_path, f'tls_certificate = "{certificate}"\ntls_key = "{tmp_path / "missing-key.pem"}"\n')
    assert line == f"listener.tls_key: {tmp_path / 'missing-key.pem'} does not exist: fix the path or the file's permissions"


def start_refused_with_listener(tmp_path: Path, listener: str) -> tuple[str, Knocker]:
    port = free_port()
    conf = tmp_path / "relay.toml"
    conf.write_text(relay_toml(tmp_path / "spool", port).replace(f'address = "127.0.0.1:{port}"\n', f'address = "127.0.0.1:{port}"\n{listener}'))
    with Knocker(port) as knocker:
        done = deliverypool("relay", "--config", str(conf))
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and knocker.tries > 0 and knocker.accepted == 0, done.stderr
    return lines[0].removeprefix(f"deliverypool relay: {conf}: "), knocker


def test_a_certificate_and_key_that_do_not_match_exit_2(tmp_path: Path) -> None:
    ca = trustme.CA()
    mine, other = ca.issue_cert("relay.test"), ca.issue_cert("other.test")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    mine.cert_chain_pems[0].write_to_path(str(certificate))
    other.private_key_pem.write_to_path(str(key))
    line, _ = start_refused_with_listener(tmp_path, f'tls_certificate = "{certificate}"\ntls_key = "{key}"\n')
    assert line.startswith("listener.tls_key: ") and "do not load as a PEM certificate chain and its private key" in line


def test_a_source_address_of_another_machine_exits_2_with_one_line(tmp_path: Path) -> None:
    line, _ = start_refused(tmp_path, normal=NOT_LOCAL)
    assert line.startswith(f"pools.normal.source_addresses[0]: {NOT_LOCAL} is not an address of this machine: add it to an interface")


def test_an_unbindable_listener_or_admin_address_exits_2(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "relay.toml"
    conf.write_text(relay_toml(tmp_path / "spool", port).replace("127.0.0.1:", f"{NOT_LOCAL}:", 1))
    done = deliverypool("relay", "--config", str(conf))
    assert done.returncode == 2 and done.stderr.splitlines() == [
        f"deliverypool relay: {conf}: listener.address: {NOT_LOCAL} is not an address of this machine: add it to an interface or use one of its addresses"
    ]
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin = taken.getsockname()[1]
        line, _ = start_refused(tmp_path, f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    assert line == f"admin.address: 127.0.0.1:{admin} is in use by another process: stop it or choose another port"


def test_redis_unreachable_with_fail_closed_exits_2_and_fail_open_starts_checks(tmp_path: Path) -> None:
    pytest.importorskip("redis")
    dead = free_port()
    line, _ = start_refused(tmp_path, f'[state]\nredis = "redis://:secret@127.0.0.1:{dead}/0"\nfail = "closed"\n')
    assert line.startswith(f"state.redis: redis://:***@127.0.0.1:{dead}/0 does not answer (") and 'set fail = "open"' in line
    assert "secret" not in line
    # With fail = "open" the relay runs without Redis (and says so by an alert): --check passes.
    conf = tmp_path / "open.toml"
    conf.write_text(relay_toml(tmp_path / "spool", free_port(), f'[state]\nredis = "redis://127.0.0.1:{dead}/0"\nfail = "open"\n'))
    done = deliverypool("relay", "--check", "--config", str(conf))
    assert done.returncode == 0, done.stderr


def test_check_reports_every_problem_and_passes_a_good_file(tmp_path: Path) -> None:
    port = free_port()
    good = tmp_path / "good.toml"
    good.write_text(relay_toml(tmp_path / "spool", port, workers=2))
    done = deliverypool("relay", "--check", "--config", str(good))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"deliverypool relay: {good}: ok: 2 worker(s) on 127.0.0.1:{port}; spool {tmp_path / 'spool'}: ")
    # --check tries the listener's own port too.
    with socket.create_server(("127.0.0.1", port)):
        busy = deliverypool("relay", "--check", "--config", str(good))
    assert busy.returncode == 2 and f"listener.address: 127.0.0.1:{port} is in use" in busy.stderr
    bad = tmp_path / "bad.toml"
    # (An admin address other than loopback needs a credential: tests/admin_api.py's token file.)
    admin = f'[admin]\naddress = "{NOT_LOCAL}:9425"\ntoken_file = "{token_file(tmp_path)}"\n'
    bad.write_text(relay_toml(tmp_path / "spool", port, admin, normal=NOT_LOCAL))
    done = deliverypool("relay", "--check", "--config", str(bad))
    keys = [line.removeprefix(f"deliverypool relay: {bad}: ").split(":")[0] for line in done.stderr.splitlines()]
    assert done.returncode == 2 and keys == ["admin.address", "pools.normal.source_addresses[0]"], done.stderr


@pytest.mark.slow
def test_a_worker_that_keeps_dying_at_start_never_gets_a_listening_socket_and_the_supervisor_gives_up(tmp_path: Path) -> None:
    """Something the checks cannot see (here: another process holds the shard's spool lock)
    kills the worker at every start. Before: restarts forever (pauses up to 30 s) behind an
    open port whose clients wait for a greeting. Now: the socket never listens (each try is
    refused at once), and after MAX_START_FAILURES starts the supervisor exits 1."""
    port = free_port()
    conf = tmp_path / "relay.toml"
    spool = tmp_path / "spool"
    conf.write_text(relay_toml(spool, port))
    shard = spool / "shard-0"
    shard.mkdir(parents=True)
    with open(shard / "spool.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with Knocker(port) as knocker:
            done = deliverypool("relay", "--config", str(conf), timeout=120)
    assert done.returncode == 1, done.stderr
    assert knocker.tries > 0 and knocker.accepted == 0
    assert done.stderr.count("the spool is in use by another process") == MAX_START_FAILURES
    assert f"worker 0 exited before it was ready {MAX_START_FAILURES} times in a row (last exit status 1)" in done.stderr


# --- the milter ---------------------------------------------------------------------------------


def milter_toml(port: int, extra: str = "") -> str:
    # No source addresses: Postfix binds each pool's address (master.cf), the milter never does.
    return f'[milter]\naddress = "127.0.0.1:{port}"\n[dns]\ncheck_sender_domain = false\n[pools.normal]\n[pools.high-risk]\n{extra}'


def test_the_milter_reads_pools_without_source_addresses_and_checks_its_own_address(tmp_path: Path) -> None:
    pytest.importorskip("Milter")
    conf = tmp_path / "milter.toml"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        conf.write_text(milter_toml(port))
        done = deliverypool("milter", "--config", str(conf))
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"deliverypool milter: {conf}: milter.address: 127.0.0.1:{port} is in use by another process: stop it or choose another port"]
    checked = deliverypool("milter", "--check", "--config", str(conf))
    assert checked.returncode == 0 and checked.stdout == f"deliverypool milter: {conf}: ok: the milter can listen on 127.0.0.1:{port}\n", checked.stderr
    # The relay still needs them.
    relay = deliverypool("relay", "--check", "--config", str(conf))
    assert relay.returncode == 2 and "pools.normal.source_addresses: required: the addresses this pool sends from" in relay.stderr


def test_the_milter_without_pymilter_exits_2_with_one_line(tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "milter.toml"
    conf.write_text(milter_toml(port))
    with Knocker(port) as knocker:
        done = deliverypool("milter", "--config", str(conf), env=hide_module(tmp_path, "Milter"))
    assert done.returncode == 2 and knocker.accepted == 0
    [line] = done.stderr.splitlines()
    assert line.startswith(f"deliverypool milter: {conf}: milter: needs pymilter (building it needs Debian's libmilter-dev), which is not installed")
    assert line.endswith("pip install 'deliverypool[milter]'")


# --- the checks as a library ---------------------------------------------------------------------


def test_every_path_valued_key_that_is_read_is_a_named_file(tmp_path: Path) -> None:
    """The generic walk finds the TLS pair (and any path key added later that is not marked
    Written), not the spool folder or the event log, which the relay writes."""
    text = relay_toml(tmp_path / "spool", 2525) + '[observe]\nevent_log = "events.jsonl"\n'
    text = text.replace('address = "127.0.0.1:2525"\n', 'address = "127.0.0.1:2525"\ntls_certificate = "c.pem"\ntls_key = "k.pem"\n')
    config = cfg.loads(text)
    assert [(f.key, str(f.path)) for f in named_files(config)] == [("listener.tls_certificate", "c.pem"), ("listener.tls_key", "k.pem")]
    run = run_checks(config, "relay")
    assert [p.key for p in run.problems] == ["listener.tls_certificate", "listener.tls_key"]

