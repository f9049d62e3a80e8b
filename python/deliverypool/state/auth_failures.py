"""Failed AUTH per client address, shared by the relay's workers through ``SPOOL/state.sqlite3``.

Each worker counts failures itself (`deliverypool.ingress.limits.AuthFailures`) and, every
``observe.flush_interval``, adds what it counted since to its own row per client and reads the
other workers' rows: a client is refused once the failures of all workers reach
``max_auth_failures_per_client``, one flush after the last of them at the latest. A row lives
``auth_failure_window`` after the latest failure it counts (wall-clock times, as every worker
shares them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from deliverypool.state.tables import StateTables

__all__ = ["AuthFailureStore"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS ingress_auth_failures (
    client TEXT NOT NULL, worker TEXT NOT NULL, count INTEGER NOT NULL, until REAL NOT NULL,
    PRIMARY KEY (client, worker)
) WITHOUT ROWID
"""


class AuthFailureStore(StateTables):
    schema = _SCHEMA
    what = "the shared AUTH failure counts"

    def exchange(self, worker: str, failures: Mapping[str, int], *, now: float, window: float, limit: int) -> dict[str, tuple[int, float]]:
        """Adds `worker`'s new `failures` per client (each row then lives until ``now +
        window``) and returns the other workers' counts per client with the end of their
        window: at most `limit` clients, the most failing first. Blocking."""
        with self._writing() as conn:
            conn.executemany(
                "INSERT INTO ingress_auth_failures VALUES (?, ?, ?, ?) ON CONFLICT (client, worker) DO UPDATE SET"
                " count = CASE WHEN until <= ? THEN excluded.count ELSE count + excluded.count END, until = excluded.until",
                [(client, worker, count, now + window, now) for client, count in failures.items()],
            )
            conn.execute("DELETE FROM ingress_auth_failures WHERE until <= ?", (now,))
            rows = conn.execute(
                "SELECT client, sum(count), max(until) FROM ingress_auth_failures WHERE worker != ?"
                " GROUP BY client ORDER BY sum(count) DESC LIMIT ?",
                (worker, limit),
            ).fetchall()
        return {str(client): (int(count), float(until)) for client, count, until in rows}
