"""What the users of the shared state database ``SPOOL/state.sqlite3`` have in common: one
connection in WAL mode with ``synchronous=NORMAL`` (observations and watch state, not mail),
the tables created at open, and a lock that lets one thread use it at a time."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["StateTables", "connect_state", "write_transaction"]


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, ``ROLLBACK`` when the block raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def connect_state(path: Path, schema: str, *, timeout: float = 10.0) -> sqlite3.Connection:
    """A connection to the state database at `path` (WAL, ``synchronous=NORMAL``, waiting up to
    `timeout` seconds for another worker's write lock), with the tables of `schema` made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        with write_transaction(conn):
            for statement in filter(None, (s.strip() for s in schema.split(";"))):
                conn.execute(statement)
    except BaseException:
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

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction on the connection, holding the lock."""
        with self._lock, write_transaction(self._db()) as conn:
            yield conn

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"{self.what} is not open")
        return self._conn
