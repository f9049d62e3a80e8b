"""Read-only views of a spool, for ``deliverypool queue`` and monitoring: they open the database
read-only and work while a relay runs (WAL readers never block the writer).

A spool directory holds one database, or one per worker in ``shard-K/`` folders
(:mod:`deliverypool.supervisor`); the views cover every one of them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deliverypool.queue.schema import COUNTERS, FINAL_STATES, decode_reasons
from deliverypool.queue.spool import DATABASE, connect, counters

__all__ = ["RecipientRow", "databases", "listing", "read_counters"]


@dataclass(frozen=True)
class RecipientRow:
    queue_id: str
    address: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str | None
    mail_from: str
    pool: str  # the recipient's pool
    reasons: tuple[str, ...]
    received_at: float
    size: int
    header_message_id: str | None
    tenant: str | None
    shard: str = ""  # "" for an unsharded spool, else the shard folder's name

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


_LISTING = """
SELECT m.queue_id, r.address, r.state, r.attempts, r.next_attempt, r.last_reply, m.mail_from, coalesce(r.pool, m.pool) AS pool,
       m.reasons, m.received_at, m.size, m.header_message_id, m.tenant
FROM recipients r JOIN messages m ON m.id = r.message ORDER BY m.received_at, m.id, r.id
"""


def databases(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(shard name, database path) of every database in the spool at `directory`."""
    root = Path(directory)
    found = [("", root / DATABASE)] if (root / DATABASE).exists() else []
    shards = sorted((p for p in root.glob("shard-*") if p.is_dir()), key=lambda p: (len(p.name), p.name))
    return found + [(shard.name, shard / DATABASE) for shard in shards if (shard / DATABASE).exists()]


def listing(directory: str | os.PathLike[str]) -> list[RecipientRow]:
    """Every recipient in the spool at `directory` (every shard), oldest message first."""
    rows = [row for shard, path in databases(directory) for row in _rows(shard, path)]
    return sorted(rows, key=lambda r: r.received_at)


def _rows(shard: str, path: Path) -> list[RecipientRow]:
    conn = connect(path, readonly=True)
    try:
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(recipients)")}
        # A spool of an older version, not opened by this one yet: no recipient has a pool of its own.
        query = _LISTING if "pool" in columns else _LISTING.replace("coalesce(r.pool, m.pool)", "m.pool")
        rows = conn.execute(query).fetchall()
    finally:
        conn.close()
    return [
        RecipientRow(
            queue_id=row["queue_id"],
            address=row["address"],
            state=row["state"],
            attempts=row["attempts"],
            next_attempt=row["next_attempt"],
            last_reply=row["last_reply"],
            mail_from=row["mail_from"],
            pool=row["pool"],
            reasons=decode_reasons(row["reasons"]),
            received_at=row["received_at"],
            size=row["size"],
            header_message_id=row["header_message_id"],
            tenant=row["tenant"],
            shard=shard,
        )
        for row in rows
    ]


def read_counters(directory: str | os.PathLike[str]) -> dict[str, int]:
    """The spool's counters, summed over its shards."""
    total = {name: 0 for name in COUNTERS}
    for _, path in databases(directory):
        conn = connect(path, readonly=True)
        try:
            for name, value in counters(conn).items():
                total[name] = total.get(name, 0) + value
        finally:
            conn.close()
    return total
