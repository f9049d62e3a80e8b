"""`deliverypool relay --config PATH [--workers N] [--check]`: runs the relay until SIGINT or
SIGTERM, or with ``--check`` checks that it could start and exits.

Before anything listens, the start-up checks (:mod:`deliverypool.preflight`) look at everything
the configuration needs: a problem is one line naming the key and the fix, and exit status 2.

By default a supervisor runs one worker per core (:mod:`deliverypool.supervisor`); each worker
is started by the supervisor as ``deliverypool relay --worker K --listen-fd FD --workers N
[--client-counts-fd FD] [--space-fd FD] --ready-fd FD`` (internal options: the shard, the shared
socket, the shared connection counts per client and low-space flags of the N workers, and the
pipe the worker writes to once it serves)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from deliverypool.config import ConfigError, RelayConfig, load
from deliverypool.errors import SpoolError
from deliverypool.preflight import format_problems, run_checks, unbindable

if TYPE_CHECKING:
    from deliverypool.app import Relay

# The relay itself (deliverypool.app, the SMTP and HTTP stacks) is imported only once the
# checks have passed: a configuration this machine cannot run is refused within a second.

__all__ = ["relay_command"]


def relay_command(
    config_path: str,
    *,
    loop: str | None = None,
    workers: int | None = None,
    worker: int | None = None,
    listen_fd: int | None = None,
    client_counts_fd: int | None = None,
    space_fd: int | None = None,
    ready_fd: int | None = None,
    check: bool = False,
) -> int:
    """Exit status 2 for a bad configuration or one the machine cannot run (the start-up
    checks), 1 when the relay cannot start otherwise (the spool is locked or unusable, its
    workers keep dying before they serve), 0 after a clean stop or a passed ``--check``."""
    prefix = f"deliverypool relay: {config_path}:"
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    if worker is not None and listen_fd is not None:
        return _worker(
            config, worker, listen_fd, loop=loop, workers=workers, client_counts_fd=client_counts_fd, space_fd=space_fd, ready_fd=ready_fd,
            config_path=Path(config_path),
        )
    from deliverypool.supervisor import default_workers

    count = workers or config.workers or default_workers()
    checked = run_checks(config, "relay", workers=count, loop=loop, check_only=check)
    for line in format_problems(checked):
        print(f"{prefix} {line}", file=sys.stderr)
    if checked.problems:
        return 2
    if check:
        print(f"{prefix} ok: {checked.workers} worker(s) on {config.listener.host}:{config.listener.port}; " + "; ".join(checked.notes))
        return 0
    from deliverypool.app import configure_logging
    from deliverypool.supervisor import Supervisor

    configure_logging()
    try:
        return Supervisor(Path(config_path), config, checked.workers, loop=loop).run()
    except SpoolError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # binding listener.address, after up to 10 s of waiting for it
        host, port = config.listener.address
        print(f"{prefix} listener.address: {unbindable(host, port, exc)}", file=sys.stderr)
        return 2


def _worker(
    config: RelayConfig,
    shard: int,
    listen_fd: int,
    *,
    loop: str | None,
    workers: int | None,
    client_counts_fd: int | None,
    space_fd: int | None,
    ready_fd: int | None,
    config_path: Path | None = None,
) -> int:
    """One worker of the supervisor: its shard, the shared socket, until SIGTERM; SIGHUP reloads
    the DKIM keys from `config_path`."""
    from deliverypool.app import configure_logging, run_relay
    from deliverypool.eventloop import run
    from deliverypool.ingress.client_counts import ClientCounts
    from deliverypool.queue.space import SpaceFlags
    from deliverypool.supervisor import die_with_supervisor, keep_freed_memory, shard_directory

    configure_logging(batched=True)  # a line per message accepted and per attempt: written in batches
    try:
        die_with_supervisor()
        keep_freed_memory()
        sock = socket.socket(fileno=listen_fd)
        counts = ClientCounts(client_counts_fd, workers, shard) if client_counts_fd is not None and workers is not None else None
        space = SpaceFlags(space_fd, workers, shard) if space_fd is not None and workers is not None else None

        def ready(relay: Relay) -> None:
            if ready_fd is not None:
                os.write(ready_fd, b"1")
                os.close(ready_fd)

        directory = shard_directory(config.spool.directory, shard)
        run(run_relay(config, sock=sock, spool_directory=directory, client_counts=counts, space=space, ready=ready, config_path=config_path, shard=shard), loop)
        return 0
    except SpoolError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
