"""What the users of the shared state database ``SPOOL/state.sqlite3`` have in common: one
connection in WAL mode with ``synchronous=NORMAL`` (observations and watch state, not mail),
the tables created at open, and a lock that lets one thread use it at a time."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

__all__ = ["StateTables", "connect_state"]


def connect_state(path: Path, schema: str, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection to the state database at `path` (WAL, ``synchronous=NORMAL``, waiting up to
    `timeout` seconds for another worker's write lock), with the tables of `schema` made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(None, (s.strip() for s in schema.split(";"))):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


class StateTables:
    """Some tables of one state database (`schema`: their CREATE statements, ``;``-separated),
    on one connection that one thread at a time uses (callers hold `_lock`). Blocking: the
    relay calls these on a thread."""

    schema = ""
    what = "the state database"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def open(self) -> None:
        self._conn = connect_state(self.path, self.schema)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.what} is not open")
        return self._conn
