"""`deliverypool milter --config PATH [--check]`: the Postfix milter (:mod:`deliverypool.ingress.milter`)
until SIGTERM or SIGINT, or with ``--check`` a check that it could start.

The file is read as the milter reads it: ``[pools.*].source_addresses`` may be left out, since
Postfix binds each pool's address (``smtp_bind_address`` in ``master.cf``). Before libmilter
opens its socket, the start-up checks (:mod:`deliverypool.preflight`: pymilter, the files the
configuration names, ``milter.address``, Redis with ``fail = "closed"``) run: a problem is one
line naming the key and the fix, and exit status 2."""

from __future__ import annotations

import sys

from deliverypool.app import configure_logging
from deliverypool.config import ConfigError, load
from deliverypool.preflight import format_problems, run_checks

__all__ = ["milter_command"]


def milter_command(config_path: str, *, check: bool = False) -> int:
    """Exit status 2 for a bad configuration or one this machine cannot run (pymilter missing,
    the address unusable), 1 when the milter fails while running, 0 after a clean stop or a
    passed ``--check``."""
    prefix = f"deliverypool milter: {config_path}:"
    try:
        config = load(config_path, command="milter")
    except ConfigError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    checked = run_checks(config, "milter", check_only=check)
    for line in format_problems(checked):
        print(f"{prefix} {line}", file=sys.stderr)
    if checked.problems:
        return 2
    if check:
        host, port = config.milter.address
        print(f"{prefix} ok: the milter can listen on {host}:{port}")
        return 0
    from deliverypool.ingress.milter import run_milter

    configure_logging()
    try:
        run_milter(config)
    except Exception as exc:  # libmilter's errors (the socket in use, ...) are milter.error
        print(f"deliverypool milter: {exc}", file=sys.stderr)
        return 1
    return 0
