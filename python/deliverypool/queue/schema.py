"""The spool's SQLite schema, its version and the migrations between versions.

The version lives in ``PRAGMA user_version``. Opening a spool applies every migration above its
version, in order, in one transaction, so a relay can be upgraded in place; a spool written by a
*newer* deliverypool is refused rather than misread. A migration is appended to
:data:`MIGRATIONS`, never edited once released.

Recipient states are the values of :class:`State`; the SQL uses them through
:data:`STATE_CHECK` and :data:`FINAL_STATES_SQL` so the two cannot drift apart.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from enum import Enum
from typing import Final

from deliverypool.errors import SpoolError

__all__ = [
    "COUNTERS",
    "FINAL_STATES",
    "FINAL_STATES_SQL",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "State",
    "decode_reasons",
    "encode_reasons",
    "migrate",
]


class State(str, Enum):
    """A recipient's state in the spool."""

    QUEUED = "queued"
    IN_FLIGHT = "in-flight"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"


FINAL_STATES: Final = (State.DELIVERED.value, State.FAILED.value)


def _sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"


STATE_CHECK: Final = _sql_list(s.value for s in State)
FINAL_STATES_SQL: Final = _sql_list(FINAL_STATES)
# Recipients whose attempt is under way or about to start: while a message has any, a failure
# batch is not over.
ACTIVE_STATES_SQL: Final = _sql_list((State.QUEUED.value, State.IN_FLIGHT.value))

COUNTERS: Final = ("accepted", "delivered", "failed", "bounces", "recovered_in_flight")

# Version 1: the first schema (spools made before versioning have user_version 0 and exactly
# these tables; the migration's IF NOT EXISTS makes it a no-op for them).
_V1: Final = f"""
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    queue_id TEXT NOT NULL UNIQUE,
    mail_from TEXT NOT NULL,
    pool TEXT NOT NULL,
    reasons TEXT NOT NULL,
    tenant TEXT,
    header_message_id TEXT,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    id INTEGER PRIMARY KEY,
    message INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN {STATE_CHECK}),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply TEXT,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS recipients_by_message ON recipients(message);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Version 2: bodies larger than the spool's file threshold live in files (BODIES/<queue id>); the
# row names the file and its body column is empty.
_V2: Final = """
ALTER TABLE messages ADD COLUMN body_file TEXT
"""

# Version 3: one DSN per message and failure batch. A failed recipient whose sender gets a DSN is
# marked dsn_pending (with the host that failed it) until the batch ends (no recipient of the
# message queued or in flight); then one DSN lists them all, stored with the marks cleared.
_V3: Final = """
ALTER TABLE recipients ADD COLUMN dsn_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE recipients ADD COLUMN last_host TEXT
"""

# Version 4: routing rules may send a message's recipients through different pools (a rule on
# recipient domains): a recipient's own pool, NULL when it is the message's.
_V4: Final = """
ALTER TABLE recipients ADD COLUMN pool TEXT
"""

# Version 5: the DSN parameters of RFC 3461 as the client gave them: RET and ENVID per message,
# NOTIFY and ORCPT per recipient (NULL: not given). dsn_pending = 2 marks a delivered recipient
# whose NOTIFY asked for SUCCESS, 3 a deferred one whose NOTIFY asked for DELAY: its "relayed" or
# "delayed" report goes in the message's next DSN; dsn_delayed says the delay was reported.
_V5: Final = """
ALTER TABLE messages ADD COLUMN dsn_ret TEXT;
ALTER TABLE messages ADD COLUMN dsn_envid TEXT;
ALTER TABLE recipients ADD COLUMN dsn_notify TEXT;
ALTER TABLE recipients ADD COLUMN dsn_orcpt TEXT;
ALTER TABLE recipients ADD COLUMN dsn_delayed INTEGER NOT NULL DEFAULT 0
"""

# Version 6: the envelope sender a message leaves with when it is not the one it came with (the
# SRS rewriting of relay-pool mail, docs/concepts/authentication.md); NULL: mail_from, which
# stays the sender the relay's own DSNs go to.
_V6: Final = """
ALTER TABLE messages ADD COLUMN envelope_from TEXT
"""

# MIGRATIONS[n - 1] takes a spool from version n - 1 to version n.
MIGRATIONS: Final[tuple[str, ...]] = (_V1, _V2, _V3, _V4, _V5, _V6)
SCHEMA_VERSION: Final = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Brings the database to :data:`SCHEMA_VERSION`; returns the version it had. Raises
    :class:`SpoolError` for a spool from a newer deliverypool."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
        # A new spool: pages freed by delivered mail can be given back to the file system
        # (`PRAGMA incremental_vacuum`, in low-space mode). Only possible before the first table.
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"the spool has schema version {version}, newer than this deliverypool's {SCHEMA_VERSION}: upgrade deliverypool"
        )
    if version < SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for script in MIGRATIONS[version:]:
                for statement in _statements(script):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    conn.executemany("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", [(c,) for c in COUNTERS])
    return version


def _statements(script: str) -> list[str]:
    # executescript would COMMIT on its own; the migrations run inside one transaction.
    return [s.strip() for s in script.split(";") if s.strip()]


def encode_reasons(reasons: Iterable[str]) -> str:
    """Reasons as stored: comma-separated (reason names never hold commas)."""
    return ",".join(reasons)


def decode_reasons(text: str) -> tuple[str, ...]:
    return tuple(filter(None, text.split(",")))
