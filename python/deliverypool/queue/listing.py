"""Read-only views of a spool, for ``deliverypool queue`` and monitoring: they open the database
read-only and work while a relay runs (WAL readers never block the writer)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deliverypool.queue.schema import COUNTERS, FINAL_STATES, decode_reasons
from deliverypool.queue.spool import DATABASE, connect, counters

__all__ = ["RecipientRow", "listing", "read_counters"]


@dataclass(frozen=True)
class RecipientRow:
    queue_id: str
    address: str
    state: str
    attempts: int
    next_attempt: float
    last_reply: str | None
    mail_from: str
    pool: str
    reasons: tuple[str, ...]
    received_at: float
    size: int
    header_message_id: str | None
    tenant: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES


_LISTING = """
SELECT m.queue_id, r.address, r.state, r.attempts, r.next_attempt, r.last_reply, m.mail_from, m.pool,
       m.reasons, m.received_at, m.size, m.header_message_id, m.tenant
FROM recipients r JOIN messages m ON m.id = r.message ORDER BY m.received_at, m.id, r.id
"""


def listing(directory: str | os.PathLike[str]) -> list[RecipientRow]:
    """Every recipient in the spool at `directory`."""
    path = Path(directory) / DATABASE
    if not path.exists():
        return []
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute(_LISTING).fetchall()
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
        )
        for row in rows
    ]


def read_counters(directory: str | os.PathLike[str]) -> dict[str, int]:
    path = Path(directory) / DATABASE
    if not path.exists():
        return {name: 0 for name in COUNTERS}
    conn = connect(path, readonly=True)
    try:
        return counters(conn)
    finally:
        conn.close()
