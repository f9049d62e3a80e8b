"""`deliverypool milter --config PATH`: the Postfix milter (:mod:`deliverypool.ingress.milter`)
until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from deliverypool.app import configure_logging
from deliverypool.config import ConfigError, credentials, load

__all__ = ["milter_command"]


def milter_command(config_path: str) -> int:
    """Exit status 2 for a bad configuration, 1 when the milter cannot run (pymilter missing,
    the address in use), 0 after a clean stop."""
    try:
        config = load(config_path)
        credentials.check(config, admin=False)  # the webhook's secret file (the milter has no admin listener)
    except ConfigError as exc:
        print(f"deliverypool milter: {config_path}: {exc}", file=sys.stderr)
        return 2
    try:
        from deliverypool.ingress.milter import run_milter
    except ImportError as exc:
        print(
            f"deliverypool milter: pymilter is not installed ({exc}): pip install 'deliverypool[milter]' "
            "(building it needs Debian's libmilter-dev)",
            file=sys.stderr,
        )
        return 1
    configure_logging()
    try:
        run_milter(config)
    except Exception as exc:  # libmilter's errors (the socket in use, ...) are milter.error
        print(f"deliverypool milter: {exc}", file=sys.stderr)
        return 1
    return 0
