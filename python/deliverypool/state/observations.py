"""The relay's one view of what its workers saw, in the shared state database
``SPOOL/state.sqlite3``: metric counters, the DSNs of the surge windows, per-minute message and
DSN counts per tenant, the monitor's baselines and its alerts.

Every worker process adds to it: each one counts in memory and, every ``observe.flush_interval``,
adds its counts (deltas, so a restarted worker loses nothing already written) and appends its
DSN records in one transaction, on a thread. The admin listener and the surge monitor, which run
in one process (worker 0, or the embedded relay), read it: so ``/metrics`` and the surge
decisions cover every worker. The tables are prefixed ``observe_``: other state (sender
counters, restrictions) may share the file.

WAL mode and ``synchronous=NORMAL``: these are observations, not mail. A power cut may lose
the last second of counts; it never loses or delays a message. The functions here are
blocking; the relay calls them on a thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from deliverypool.state.tables import StateTables

__all__ = ["STATE_DATABASE", "DsnRow", "ObservationStore", "encode_labels"]

STATE_DATABASE: Final = "state.sqlite3"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS observe_counters (
    name TEXT NOT NULL, labels TEXT NOT NULL, value REAL NOT NULL, PRIMARY KEY (name, labels)
);
CREATE TABLE IF NOT EXISTS observe_dsns (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, tenant TEXT NOT NULL, worker TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS observe_dsns_at ON observe_dsns(at);
CREATE TABLE IF NOT EXISTS observe_rates (
    minute INTEGER NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (minute, tenant, kind)
);
CREATE TABLE IF NOT EXISTS observe_baselines (
    tenant TEXT PRIMARY KEY, rate REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS observe_alerts (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, cause TEXT NOT NULL, state TEXT NOT NULL,
    since REAL NOT NULL, resolved REAL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS observe_meta (
    name TEXT PRIMARY KEY, value REAL NOT NULL
)
"""

Labels = tuple[tuple[str, str], ...]


def encode_labels(labels: Labels) -> str:
    return json.dumps(labels, separators=(",", ":"))


@dataclass(frozen=True)
class DsnRow:
    id: int
    at: float
    tenant: str
    worker: str
    record: dict[str, Any]


class ObservationStore(StateTables):
    """The ``observe_`` tables of one state database. One connection, used by one thread at a
    time (a lock serialises the callers)."""

    schema = _SCHEMA
    what = "the observation store"

    # --- writes (every worker) ---------------------------------------------------------

    def add(
        self,
        counters: Mapping[tuple[str, Labels], float],
        dsns: Sequence[tuple[float, str, str, dict[str, Any]]] = (),
        rates: Mapping[tuple[int, str, str], int] | None = None,
    ) -> None:
        """Adds counter deltas, appends DSN records ``(at, tenant, worker, record)`` and adds to
        the per-minute counts, in one transaction."""
        if not counters and not dsns and not rates:
            return
        with self._writing() as conn:
            conn.executemany(
                "INSERT INTO observe_counters (name, labels, value) VALUES (?, ?, ?)"
                " ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
                [(name, encode_labels(labels), value) for (name, labels), value in counters.items()],
            )
            conn.executemany(
                "INSERT INTO observe_dsns (at, tenant, worker, record) VALUES (?, ?, ?, ?)",
                [(at, tenant, worker, json.dumps(record, separators=(",", ":"))) for at, tenant, worker, record in dsns],
            )
            conn.executemany(
                "INSERT INTO observe_rates (minute, tenant, kind, count) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (minute, tenant, kind) DO UPDATE SET count = count + excluded.count",
                [(minute, tenant, kind, count) for (minute, tenant, kind), count in (rates or {}).items()],
            )

    # --- reads and the monitor's own writes (the leader) --------------------------------

    def counters(self) -> list[tuple[str, Labels, float]]:
        with self._lock:
            rows = self._db().execute("SELECT name, labels, value FROM observe_counters ORDER BY name, labels").fetchall()
        return [(name, tuple(tuple(pair) for pair in json.loads(labels)), value) for name, labels, value in rows]

    def dsns_after(self, last_id: int, since: float) -> list[DsnRow]:
        """DSN records with an id above `last_id` and a time after `since`, in id order."""
        with self._lock:
            rows = self._db().execute(
                "SELECT id, at, tenant, worker, record FROM observe_dsns WHERE id > ? AND at > ? ORDER BY id", (last_id, since)
            ).fetchall()
        return [DsnRow(i, at, tenant, worker, json.loads(record)) for i, at, tenant, worker, record in rows]

    def last_dsn_id(self) -> int:
        with self._lock:
            row = self._db().execute("SELECT max(id) FROM observe_dsns").fetchone()
        return int(row[0] or 0)

    def rates(self, since_minute: int) -> dict[tuple[str, str], int]:
        """(tenant, kind) -> count over the minutes from `since_minute` on."""
        with self._lock:
            rows = self._db().execute(
                "SELECT tenant, kind, sum(count) FROM observe_rates WHERE minute >= ? GROUP BY tenant, kind", (since_minute,)
            ).fetchall()
        return {(tenant, kind): int(count) for tenant, kind, count in rows}

    def prune(self, dsns_before: float, minutes_before: int) -> None:
        with self._lock:
            conn = self._db()
            conn.execute("DELETE FROM observe_dsns WHERE at < ?", (dsns_before,))
            conn.execute("DELETE FROM observe_rates WHERE minute < ?", (minutes_before,))

    def baselines(self) -> dict[str, tuple[float, float]]:
        with self._lock:
            rows = self._db().execute("SELECT tenant, rate, updated FROM observe_baselines").fetchall()
        return {tenant: (rate, updated) for tenant, rate, updated in rows}

    def save_baselines(self, baselines: Iterable[tuple[str, float, float]]) -> None:
        with self._lock:
            self._db().executemany(
                "INSERT INTO observe_baselines (tenant, rate, updated) VALUES (?, ?, ?)"
                " ON CONFLICT (tenant) DO UPDATE SET rate = excluded.rate, updated = excluded.updated",
                list(baselines),
            )

    def meta(self, name: str) -> float | None:
        with self._lock:
            row = self._db().execute("SELECT value FROM observe_meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else float(row[0])

    def set_meta(self, name: str, value: float) -> None:
        with self._lock:
            self._db().execute(
                "INSERT INTO observe_meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value", (name, value)
            )

    def save_alert(self, alert: Mapping[str, Any], since: float, resolved: float | None, keep_resolved: int) -> None:
        """Stores an alert (firing or resolved) and forgets resolved ones beyond the last `keep_resolved`."""
        with self._lock:
            conn = self._db()
            conn.execute(
                "INSERT INTO observe_alerts (id, tenant, cause, state, since, resolved, body) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state, resolved = excluded.resolved, body = excluded.body",
                # A blocklist alert has no tenant or cause: its type stands in for the cause.
                (alert["id"], alert.get("tenant", ""), alert.get("cause", alert["type"]), alert["state"], since, resolved, json.dumps(alert)),
            )
            conn.execute(
                "DELETE FROM observe_alerts WHERE state = 'resolved' AND id NOT IN"
                " (SELECT id FROM observe_alerts WHERE state = 'resolved' ORDER BY resolved DESC LIMIT ?)",
                (keep_resolved,),
            )

    def fire_alert(self, alert: Mapping[str, Any], since: float) -> bool:
        """Stores `alert` as firing unless an alert of its id fires already; True when stored.
        Workers that see the same condition raise it once: the first to store it."""
        with self._lock:
            cursor = self._db().execute(
                "INSERT INTO observe_alerts (id, tenant, cause, state, since, resolved, body) VALUES (?, ?, ?, 'firing', ?, NULL, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = 'firing', since = excluded.since, resolved = NULL, body = excluded.body"
                " WHERE observe_alerts.state != 'firing'",
                (alert["id"], alert["tenant"], alert["cause"], since, json.dumps(alert)),
            )
            return cursor.rowcount == 1

    def resolve_alert(self, alert_id: str, update: Mapping[str, Any], resolved: float, keep_resolved: int) -> dict[str, Any] | None:
        """Marks the firing alert `alert_id` resolved, its body updated with `update`; returns the
        new body, or None when no such alert fires (another worker resolved it first)."""
        with self._writing() as conn:
            row = conn.execute("SELECT body FROM observe_alerts WHERE id = ? AND state = 'firing'", (alert_id,)).fetchone()
            body = None
            if row is not None:
                body = {**json.loads(row[0]), **update, "state": "resolved"}
                conn.execute(
                    "UPDATE observe_alerts SET state = 'resolved', resolved = ?, body = ? WHERE id = ?", (resolved, json.dumps(body), alert_id)
                )
                conn.execute(
                    "DELETE FROM observe_alerts WHERE state = 'resolved' AND id NOT IN"
                    " (SELECT id FROM observe_alerts WHERE state = 'resolved' ORDER BY resolved DESC LIMIT ?)",
                    (keep_resolved,),
                )
        return body

    def forget_alert(self, alert_id: str) -> None:
        """Removes an alert (handed over to a fleet's Redis)."""
        with self._lock:
            self._db().execute("DELETE FROM observe_alerts WHERE id = ?", (alert_id,))

    def firing(self, id_prefix: str) -> list[dict[str, Any]]:
        """The firing alerts whose id starts with `id_prefix`, oldest first."""
        with self._lock:
            rows = self._db().execute(
                "SELECT body FROM observe_alerts WHERE state = 'firing' AND substr(id, 1, ?) = ? ORDER BY since", (len(id_prefix), id_prefix)
            ).fetchall()
        return [json.loads(body) for (body,) in rows]

    def alerts(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(active, resolved): active oldest first, resolved newest first."""
        with self._lock:
            rows = self._db().execute("SELECT state, body FROM observe_alerts ORDER BY since").fetchall()
        active = [json.loads(body) for state, body in rows if state == "firing"]
        resolved = [json.loads(body) for state, body in rows if state == "resolved"]
        resolved.sort(key=lambda a: a.get("resolved_at") or "", reverse=True)
        return active, resolved
