"""`deliverypool relay --config PATH`: runs the relay until SIGINT or SIGTERM."""

from __future__ import annotations

import sys

from deliverypool.app import configure_logging, run_relay
from deliverypool.config import ConfigError, load
from deliverypool.errors import SpoolError
from deliverypool.eventloop import run

__all__ = ["relay_command"]


def relay_command(config_path: str, *, loop: str | None = None) -> int:
    """Exit status 2 for a bad configuration, 1 when the relay cannot start (the spool is
    locked or unusable, the listen address is in use), 0 after a clean stop."""
    try:
        config = load(config_path)
    except ConfigError as exc:
        print(f"deliverypool relay: {config_path}: {exc}", file=sys.stderr)
        return 2
    configure_logging()
    try:
        run(run_relay(config), loop)
    except SpoolError as exc:
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is in use
        print(f"deliverypool relay: {exc}", file=sys.stderr)
        return 1
    return 0
