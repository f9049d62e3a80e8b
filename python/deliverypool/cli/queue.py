"""`deliverypool queue`: what the spool holds, one recipient a line, then the counters."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from deliverypool.config import ConfigError, load
from deliverypool.queue.listing import listing, read_counters

__all__ = ["queue_command", "show_queue"]


def show_queue(directory: str, out: TextIO = sys.stdout) -> int:
    """Prints what the spool at `directory` holds, one recipient a line, and the counters.
    Returns the number of unfinished recipients. Works while a relay runs."""
    rows = listing(directory)
    now = time.time()
    pending = 0
    sharded = any(row.shard for row in rows)
    if rows:
        shard = f"{'SHARD':<9}" if sharded else ""
        out.write(f"{shard}{'QUEUE ID':<13} {'STATE':<10} {'POOL':<10} {'TENANT':<10} {'TRIES':>5} {'NEXT':>8}  {'FROM':<28} RECIPIENT / LAST REPLY\n")
    for row in rows:
        if not row.finished:
            pending += 1
        wait = "-" if row.finished else _ago(row.next_attempt - now)
        sender = f"<{row.mail_from}>"
        shard = f"{row.shard:<9}" if sharded else ""
        out.write(f"{shard}{row.queue_id:<13} {row.state:<10} {row.pool:<10} {row.tenant or '-':<10} {row.attempts:>5} {wait:>8}  {sender:<28} {row.address}\n")
        if row.last_reply:
            out.write(f"{'':>13} {row.last_reply[:100]}\n")
    counters = read_counters(directory)
    shards = len({r.shard for r in rows}) if sharded else 1
    out.write(
        f"{pending} recipient(s) pending in {len({r.queue_id for r in rows})} message(s)"
        + (f" across {shards} shard(s)" if sharded else "")
        + "; "
        + ", ".join(f"{k} {v}" for k, v in sorted(counters.items()))
        + "\n"
    )
    return pending


def _ago(seconds: float) -> str:
    if seconds <= 0:
        return "now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def queue_command(config_path: str | None = None, *, spool_directory: str | None = None, out: TextIO = sys.stdout) -> int:
    """`deliverypool queue [--config PATH] [--spool DIR]`: the spool of the configured relay
    (or the directory given, or ./spool). Exit status 0, or 2 for a bad configuration."""
    directory = spool_directory
    if directory is None and config_path is not None:
        try:
            directory = str(load(config_path).spool.directory)
        except ConfigError as exc:
            print(f"deliverypool queue: {config_path}: {exc}", file=sys.stderr)
            return 2
    show_queue(directory or "spool", out)
    return 0
