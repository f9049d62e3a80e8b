"""The blocklist watch's state in the shared state database ``SPOOL/state.sqlite3``: the state of
every source address in every zone, each zone's test points, and the *drained* addresses.

One process writes it: the watcher, in the process that leads (worker 0 of ``deliverypool
relay``, or an embedded relay), after each cycle, in one transaction. Every worker reads the
drained set from it every ``observe.flush_interval`` (and once when it starts), so all workers
stop sending from a drained address within that time of each other, and a restarted relay
keeps its drained addresses drained. The tables are prefixed ``dnsbl_``.

WAL mode, ``synchronous=NORMAL``, like the observations: a power cut may lose the last cycle,
which the next cycle writes again. The functions here are blocking; the relay calls them on a
thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from deliverypool.state.tables import StateTables

__all__ = ["CellRow", "DnsblStore", "ZoneRow"]

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS dnsbl_cells (
    address TEXT NOT NULL, zone TEXT NOT NULL, state TEXT NOT NULL, listed INTEGER NOT NULL,
    codes TEXT NOT NULL, reason TEXT, detail TEXT NOT NULL, since REAL, checked REAL, changed REAL,
    PRIMARY KEY (address, zone)
);
CREATE TABLE IF NOT EXISTS dnsbl_zones (
    zone TEXT NOT NULL, family INTEGER NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL,
    since REAL, checked REAL, PRIMARY KEY (zone, family)
);
CREATE TABLE IF NOT EXISTS dnsbl_drained (
    pool TEXT NOT NULL, address TEXT NOT NULL, since REAL NOT NULL, zones TEXT NOT NULL,
    PRIMARY KEY (pool, address)
)
"""


@dataclass
class CellRow:
    """One address in one zone. ``state`` is the last verdict that counts (listed, not-listed,
    refused; unknown until the first); ``listed`` the last *trusted* verdict (a listed or
    not-listed answer from a zone whose test points passed): what drains and what the metric
    shows. ``since`` is when the current listing began, ``checked`` the last lookup, ``changed``
    the last change of ``state``."""

    address: str
    zone: str
    state: str = "unknown"
    listed: bool = False
    codes: tuple[str, ...] = ()
    reason: str | None = None
    detail: str = ""
    since: float | None = None
    checked: float | None = None
    changed: float | None = None


@dataclass
class ZoneRow:
    """A zone's test points for one address family; ``since`` is when ``state`` began."""

    zone: str
    family: int
    state: str = "unknown"
    detail: str = "not checked yet"
    since: float | None = None
    checked: float | None = None


class DnsblStore(StateTables):
    """The ``dnsbl_`` tables of one state database. One connection, used by one thread at a
    time (a lock serialises the callers)."""

    schema = _SCHEMA
    what = "the blocklist store"

    # --- the watcher (the leader) ----------------------------------------------------------

    def load(self) -> tuple[list[CellRow], list[ZoneRow]]:
        with self._lock:
            conn = self._db()
            cells = conn.execute(
                "SELECT address, zone, state, listed, codes, reason, detail, since, checked, changed FROM dnsbl_cells"
            ).fetchall()
            zones = conn.execute("SELECT zone, family, state, detail, since, checked FROM dnsbl_zones").fetchall()
        return (
            [CellRow(a, z, s, bool(listed), tuple(json.loads(codes)), reason, detail, since, checked, changed)
             for a, z, s, listed, codes, reason, detail, since, checked, changed in cells],
            [ZoneRow(*row) for row in zones],
        )

    def save(self, cells: Iterable[CellRow], zones: Iterable[ZoneRow], drained: Mapping[tuple[str, str], tuple[float, list[str]]]) -> None:
        """Replaces the whole state (addresses and zones no longer configured are forgotten)
        and the drained set ``(pool, address) -> (since, zones)``, in one transaction."""
        with self._writing() as conn:
            for table in ("dnsbl_cells", "dnsbl_zones", "dnsbl_drained"):
                conn.execute(f"DELETE FROM {table}")
            conn.executemany(
                "INSERT INTO dnsbl_cells (address, zone, state, listed, codes, reason, detail, since, checked, changed)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.address, c.zone, c.state, int(c.listed), json.dumps(list(c.codes)), c.reason, c.detail, c.since, c.checked, c.changed) for c in cells],
            )
            conn.executemany(
                "INSERT INTO dnsbl_zones (zone, family, state, detail, since, checked) VALUES (?, ?, ?, ?, ?, ?)",
                [(z.zone, z.family, z.state, z.detail, z.since, z.checked) for z in zones],
            )
            conn.executemany(
                "INSERT INTO dnsbl_drained (pool, address, since, zones) VALUES (?, ?, ?, ?)",
                [(pool, address, since, json.dumps(listed_in)) for (pool, address), (since, listed_in) in drained.items()],
            )

    # --- every worker ----------------------------------------------------------------------

    def drained(self) -> dict[str, frozenset[str]]:
        """The drained addresses by pool."""
        with self._lock:
            rows = self._db().execute("SELECT pool, address FROM dnsbl_drained").fetchall()
        found: dict[str, set[str]] = {}
        for pool, address in rows:
            found.setdefault(pool, set()).add(address)
        return {pool: frozenset(addresses) for pool, addresses in found.items()}
