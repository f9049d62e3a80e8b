"""Start-up checks: everything a configuration needs, checked once before anything listens.

`deliverypool relay` and `deliverypool milter` run `run_checks` after the file has loaded and
before they bind their listening socket; ``--check`` runs the same checks and exits. Each
problem is one line, ``KEY: PROBLEM AND FIX`` (as a bad key is), and any problem means exit
status 2: a relay that cannot work never listens, so no client connects and waits for a
greeting that never comes, and no supervisor restarts workers in a loop.

The checks are plain functions registered with `check` (one per concern, so that a new kind of
setting adds its own): the optional packages a configuration needs (`extras`), the files it
names (`files`: every path-valued key that is read, found by walking the models, plus whatever
`named_files` providers add), the TLS pair, the admin API's tokens and certificates and the
webhook's secret (`credentials`), the addresses it must bind (the listeners with
their ports, each pool's source addresses with port 0, which proves they are addresses of this
machine), Redis where ``[state] fail = "closed"``, and the spool's folder and free space
(issue 27: `deliverypool.queue.space`).

A check may also warn (printed, not fatal) and, for the spool's space with ``spool.too_small =
"fewer-workers"``, lower the number of workers.
"""

from __future__ import annotations

import errno
import importlib
import ipaddress
import os
import socket
import ssl
import time
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel

from deliverypool.config import RelayConfig
from deliverypool.config.errors import dotted_key
from deliverypool.config.model import Written

__all__ = [
    "CHECKS",
    "FILE_PROVIDERS",
    "Command",
    "NamedFile",
    "Preflight",
    "Problem",
    "bind_error",
    "check",
    "format_problems",
    "named_files",
    "run_checks",
    "unbindable",
]

Command = Literal["relay", "milter"]


@dataclass(frozen=True)
class Problem:
    """One reason the configuration cannot run: the key at fault, what is wrong and the fix."""

    key: str
    problem: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}"


@dataclass
class Preflight:
    """One run of the checks: what they are checking for, and what they found."""

    config: RelayConfig
    command: Command
    workers: int = 1
    # The event loop asked for on the command line (--loop), if any.
    loop: str | None = None
    # `--check`: the listeners' own ports are tried too (at a real start the supervisor binds
    # the relay's, waiting a while for a port a previous process still holds).
    check_only: bool = False
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Facts a check wants `--check` to print when all is well ("spool: 1.2 GiB free, ...").
    notes: list[str] = field(default_factory=list)

    def problem(self, key: str, problem: str) -> None:
        self.problems.append(Problem(key, problem))

    def warn(self, text: str) -> None:
        self.warnings.append(text)


Check = Callable[[Preflight], None]
# (the commands it applies to, the check), in the order they run.
CHECKS: list[tuple[frozenset[str], Check]] = []


def check(*commands: Command) -> Callable[[Check], Check]:
    """Registers a check for `commands` (default: relay and milter)."""

    def register(function: Check) -> Check:
        CHECKS.append((frozenset(commands or ("relay", "milter")), function))
        return function

    return register


def run_checks(
    config: RelayConfig, command: Command, *, workers: int = 1, loop: str | None = None, check_only: bool = False
) -> Preflight:
    """Runs every check registered for `command`; the result lists the problems (none: it may
    start), the warnings, and the number of workers to run (lowered only by
    ``spool.too_small = "fewer-workers"``)."""
    run = Preflight(config, command, workers=workers, loop=loop, check_only=check_only)
    for commands, function in CHECKS:
        if command in commands:
            function(run)
    return run


# --- optional packages ------------------------------------------------------------------------


def _missing(module: str) -> str | None:
    """Why `module` cannot be imported, or None. A real import, not a look-up: a package whose
    C library is gone (pymilter without libmilter) fails here as it would later."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        return str(exc)
    return None


@check()
def extras(run: Preflight) -> None:
    """The packages of the extras a configuration needs."""
    config = run.config
    needed: list[tuple[str, str, str, str]] = []  # key, module, extra, why
    if config.state.redis is not None:
        needed.append(("state.redis", "redis.asyncio", "redis", "the redis package"))
    if run.loop == "uvloop":
        needed.append(("--loop", "uvloop", "uvloop", "uvloop"))
    if run.command == "milter":
        needed.append(("milter", "Milter", "milter", "pymilter (building it needs Debian's libmilter-dev)"))
    for key, module, extra, what in needed:
        error = _missing(module)
        if error is not None:
            run.problem(key, f"needs {what}, which is not installed ({error}): pip install 'deliverypool[{extra}]'")


# --- files --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NamedFile:
    """A file the configuration names and the relay reads: its key and path."""

    key: str
    path: Path


# More files a configuration names, beyond its path-valued keys (a provider yields them).
FILE_PROVIDERS: list[Callable[[RelayConfig], Iterable[NamedFile]]] = []


def _written(annotation: object) -> bool:
    """Whether a field's type is marked `Written` (a folder or a log the relay writes)."""
    if isinstance(annotation, Written):
        return True
    return any(_written(arg) for arg in typing.get_args(annotation))


def _paths(value: object, loc: tuple[str | int, ...]) -> Iterator[NamedFile]:
    if isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            item = getattr(value, name)
            if isinstance(item, Path):
                if not (_written(info.annotation) or any(isinstance(m, Written) for m in info.metadata)):
                    yield NamedFile(dotted_key((*loc, name)), item)
            else:
                yield from _paths(item, (*loc, name))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _paths(item, (*loc, str(key)))
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            yield from _paths(item, (*loc, index))


def named_files(config: RelayConfig) -> list[NamedFile]:
    """Every file the configuration names that the relay reads: each path-valued key not marked
    `Written` (TLS certificate and key, token and key files as they are added), then what
    `FILE_PROVIDERS` add."""
    found = list(_paths(config, ()))
    for provider in FILE_PROVIDERS:
        found.extend(provider(config))
    return found


def _unreadable(path: Path) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except IsADirectoryError:
        return f"{path} is a folder, not a file"
    except FileNotFoundError:
        return f"{path} does not exist" + (f" (relative to the current folder {os.getcwd()})" if not path.is_absolute() else "")
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror} (the relay runs as uid {os.getuid()})"
    return None


@check()
def files(run: Preflight) -> None:
    """Every file the configuration names can be read."""
    for named in named_files(run.config):
        error = _unreadable(named.path)
        if error is not None:
            run.problem(named.key, f"{error}: fix the path or the file's permissions")


@check("relay")
def tls(run: Preflight) -> None:
    """The STARTTLS certificate and key load, and belong together."""
    listener = run.config.listener
    if listener.tls_certificate is None or listener.tls_key is None:
        return
    if _unreadable(listener.tls_certificate) or _unreadable(listener.tls_key):
        return  # `files` said so
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(listener.tls_certificate, listener.tls_key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        run.problem(
            "listener.tls_key",
            f"{listener.tls_certificate} and {listener.tls_key} do not load as a PEM certificate chain and its private key ({reason}): "
            "give the certificate's own key, both in PEM",
        )


@check()
def credentials(run: Preflight) -> None:
    """The admin listener's tokens (token_file, token_env) parse and its TLS certificate, key
    and client CA load; the webhook's secret file holds a secret (config/credentials.py, which
    the listener and the webhook use to read them again at their start)."""
    from deliverypool.config.credentials import check as check_credentials
    from deliverypool.config.errors import ConfigError

    if any(p.key.startswith(("admin.", "alerts.")) for p in run.problems):
        return  # `files` said so
    try:
        check_credentials(run.config, admin=run.command == "relay")
    except ConfigError as exc:
        run.problem(exc.key, exc.problem)


# --- addresses ----------------------------------------------------------------------------------


def bind_error(host: str, port: int) -> OSError | None:
    """The error binding a TCP socket to (host, port), or None (the socket is closed at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
    except OSError as exc:
        return exc
    return None


def unbindable(host: str, port: int, error: OSError) -> str:
    """Why (host, port) cannot be bound, and what to do, in the words of a start-up problem."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"{host} is not an address of this machine: add it to an interface or use one of its addresses"
    if error.errno == errno.EADDRINUSE:
        return f"{where} is in use by another process: stop it or choose another port"
    if error.errno == errno.EACCES:
        return f"cannot bind {where}: ports below 1024 need root or CAP_NET_BIND_SERVICE"
    if isinstance(error, socket.gaierror):
        return f"{host} is not an IP address or a name of this machine ({error.strerror})"
    return f"cannot bind {where}: {error.strerror or error}"


# At a real start, a port in use is tried again for this long: a killed predecessor's workers
# (which the kernel kills too) may hold it for a moment. `--check` says at once.
IN_USE_WAIT: Final = 2.0


def _check_listen(run: Preflight, key: str, host: str, port: int, *, own_port: bool) -> None:
    port = port if own_port else 0
    deadline = time.monotonic() + (0.0 if run.check_only else IN_USE_WAIT)
    error = bind_error(host, port)
    while error is not None and error.errno == errno.EADDRINUSE and time.monotonic() < deadline:
        time.sleep(0.1)
        error = bind_error(host, port)
    if error is not None:
        run.problem(key, unbindable(host, port, error))


@check()
def listen_addresses(run: Preflight) -> None:
    """The listeners' addresses belong to this machine, and their ports are free: the milter's
    (libmilter binds it later), the admin listener's (a worker binds it later), and with
    ``--check`` the relay's own (at a start the supervisor binds it, waiting up to 10 s for a
    port a killed predecessor's workers still hold)."""
    config = run.config
    if run.command == "milter":
        host, port = config.milter.address
        _check_listen(run, "milter.address", host, port, own_port=True)
        return
    host, port = config.listener.address
    _check_listen(run, "listener.address", host, port, own_port=run.check_only)
    if config.admin.address is not None:
        host, port = config.admin.address
        _check_listen(run, "admin.address", host, port, own_port=True)


@check("relay")
def source_addresses(run: Preflight) -> None:
    """Every pool's source addresses are addresses of this machine (a socket binds to each, with
    port 0): a pool that cannot bind its addresses would defer all its mail."""
    for name, pool in run.config.pools.items():
        for index, source in enumerate(pool.source_addresses):
            error = bind_error(str(source.address), 0)
            if error is not None:
                key = dotted_key(("pools", name, "source_addresses", index))
                if error.errno == errno.EADDRNOTAVAIL:
                    family = "/128" if isinstance(source.address, ipaddress.IPv6Address) else "/32"
                    run.problem(
                        key,
                        f"{source.address} is not an address of this machine: add it to an interface "
                        f"(ip address add {source.address}{family} dev IFACE) or remove it from the pool",
                    )
                else:
                    run.problem(key, f"cannot bind {source.address}: {error.strerror or error}")


# --- backends -----------------------------------------------------------------------------------


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urllib.parse.urlunsplit(parts._replace(netloc=user + netloc))


REDIS_TIMEOUT: Final = 2.0


@check()
def redis_reachable(run: Preflight) -> None:
    """With ``[state] fail = "closed"``, Redis answers: otherwise every sender the limits apply
    to would get 451 from the first message on."""
    state = run.config.state
    if state.redis is None or state.fail != "closed" or _missing("redis") is not None:
        return
    import redis

    timeout = max(state.timeout, REDIS_TIMEOUT)
    client = redis.Redis.from_url(state.redis, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        run.problem(
            "state.redis",
            f"{_without_password(state.redis)} does not answer ({exc}); with fail = \"closed\" every limited sender would get "
            '451 4.3.0: start Redis, fix the URL, or set fail = "open"',
        )
    finally:
        client.close()


# --- the spool ----------------------------------------------------------------------------------


@check("relay")
def spool(run: Preflight) -> None:
    """The spool's folder can be created and written, and its file system holds what the
    workers need (`deliverypool.queue.space`): otherwise refused, or with ``spool.too_small =
    "fewer-workers"`` fewer workers, with a warning."""
    from deliverypool.queue.space import existing_folder, plan

    directory = run.config.spool.directory
    # The folder, or (not made yet) the nearest one that is: where the relay will create it.
    existing = existing_folder(directory)
    if not existing.is_dir():
        run.problem("spool.directory", f"{existing} is not a folder: fix the path")
        return
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == directory else f"cannot be created: {existing} is not writable"
        run.problem("spool.directory", f"{directory} {what} by uid {os.getuid()}: fix the permissions or the user the relay runs as")
        return
    decision = plan(run.config, run.workers)
    run.notes.append(decision.summary)
    if decision.workers == 0:
        run.problem("spool.directory", decision.problem)
    elif decision.workers < run.workers:
        run.warn(decision.problem)
        run.workers = decision.workers


def format_problems(run: Preflight) -> Iterator[str]:
    """The lines `deliverypool relay --check` prints (after its prefix)."""
    for warning in run.warnings:
        yield f"warning: {warning}"
    for problem in run.problems:
        yield str(problem)

