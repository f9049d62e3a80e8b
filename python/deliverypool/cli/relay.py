"""`deliverypool relay --config PATH [--workers N]`: runs the relay until SIGINT or SIGTERM.

By default a supervisor runs one worker per core (:mod:`deliverypool.supervisor`); each worker
is started by the supervisor as ``deliverypool relay --worker K --listen-fd FD
--client-counts-fd FD --workers N`` (internal options: the shard, the shared listening socket,
and the shared connection counts per client of the N workers)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

from deliverypool.app import configure_logging, run_relay
from deliverypool.config import ConfigError, load
from deliverypool.errors import SpoolError
from deliverypool.eventloop import run
from deliverypool.ingress.client_counts import ClientCounts
from deliverypool.supervisor import Supervisor, default_workers, die_with_supervisor, shard_directory

__all__ = ["relay_command"]


def relay_command(
    config_path: str,
    *,
    loop: str | None = None,
    workers: int | None = None,
    worker: int | None = None,
    listen_fd: int | None = None,
    client_counts_fd: int | None = None,
) -> int:
    """Exit status 2 for a bad configuration, 1 when the relay cannot start (the spool is
    locked or unusable, the listen address is in use), 0 after a clean stop."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"deliverypool relay: {config_path}: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        if worker is not None and listen_fd is not None:
            die_with_supervisor()
            sock = socket.socket(fileno=listen_fd)
            counts = None
            if client_counts_fd is not None and workers is not None:
                counts = ClientCounts(client_counts_fd, workers, worker)
            shard = shard_directory(config.spool.directory, worker)
            run(run_relay(config, sock=sock, spool_directory=shard, client_counts=counts, config_path=Path(config_path)), loop)
            return 0
        count = workers or config.workers or default_workers()
        return Supervisor(Path(config_path), config, count, loop=loop).run()
    except SpoolError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is in use
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
