"""Open connections per client address over all the workers of one ``deliverypool relay``.

The supervisor creates one shared memory region (a memfd) and hands it to every worker
(``--client-counts-fd``): a 16-byte hash key, then one row per worker of `TABLES` tables of
`SLOTS` 32-bit counters. A worker writes only its own row (one writer per counter, so no lock
and no atomic operation), adding 1 to a client's slot in each table when it admits a connection
from it and taking 1 when the connection ends. A client's count is, for each table, its slot
summed over the rows, and the smallest of those (a count-min sketch): another address that
shares a slot can only make the count higher, and only when it shares the client's slot in
every table, which three keyed 16-bit hashes make rare (with 1,000 other clients connected at
once, about 1 in 280,000 for a given client) and which a client cannot aim at: the key is
random per supervisor. When a worker exits, the supervisor zeroes its row as soon as it sees
the exit (before the replacement starts): the kernel closed that worker's connections, so they
stop counting.

The counts are read and written from the worker's event loop, once per connection (a keyed
BLAKE2b of the address and three loads per worker: a few microseconds).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import secrets
from typing import Final

__all__ = ["SLOTS", "TABLES", "ClientCounts"]

SLOTS: Final = 1 << 16
TABLES: Final = 3
_ROW: Final = TABLES * SLOTS
_KEY: Final = 16
_CELL: Final = 4


def _size(workers: int) -> int:
    return _KEY + workers * _ROW * _CELL


class ClientCounts:
    """One process's view of the shared counts: `worker` is the row it writes (None: the
    supervisor, which only creates the region and clears rows)."""

    def __init__(self, fd: int, workers: int, worker: int | None = None) -> None:
        if workers < 1 or (worker is not None and not 0 <= worker < workers):
            raise ValueError(f"worker {worker} of {workers}")
        if os.fstat(fd).st_size != _size(workers):
            raise ValueError(f"the client-counts region has {os.fstat(fd).st_size} bytes, not {_size(workers)} for {workers} workers")
        self.fd = fd
        self.workers = workers
        self._map = mmap.mmap(fd, _size(workers))
        self._hasher = hashlib.blake2b(digest_size=2 * TABLES, key=bytes(self._map[:_KEY]))
        self._cells = memoryview(self._map)[_KEY:].cast("I")
        self._own = None if worker is None else worker * _ROW

    @classmethod
    def create(cls, workers: int) -> ClientCounts:
        """A new zeroed region with a random key (the supervisor's); its `fd` is passed on."""
        fd = os.memfd_create("deliverypool-client-counts", 0)
        try:
            os.ftruncate(fd, _size(workers))
            os.pwrite(fd, secrets.token_bytes(_KEY), 0)
            return cls(fd, workers)
        except BaseException:
            os.close(fd)
            raise

    def _slots(self, client: str) -> tuple[int, int, int]:
        """The client's cell in each table of a row (offsets from the row's start)."""
        hasher = self._hasher.copy()  # keyed once: a copy skips the key block
        hasher.update(client.encode("utf-8", "surrogateescape"))
        h = int.from_bytes(hasher.digest(), "little")  # 16 bits per table (TABLES = 3)
        return h & 0xFFFF, SLOTS + ((h >> 16) & 0xFFFF), 2 * SLOTS + (h >> 32)

    def count(self, client: str) -> int:
        """The connections open from `client` at every worker (never fewer than there are)."""
        cells = self._cells
        # cells[slot::_ROW] is the slot in every worker's row.
        return min(sum(cells[slot::_ROW]) for slot in self._slots(client))

    def add(self, client: str, delta: int) -> None:
        """This worker's connections from `client` change by `delta` (+1 admitted, -1 ended)."""
        if self._own is None:
            raise RuntimeError("the supervisor's view has no row of its own")
        cells = self._cells
        for slot in self._slots(client):
            index = self._own + slot
            cells[index] = max(0, cells[index] + delta)

    def clear(self, worker: int) -> None:
        """Forgets `worker`'s connections (it exited: the kernel closed them)."""
        start = _KEY + worker * _ROW * _CELL
        self._map[start : start + _ROW * _CELL] = bytes(_ROW * _CELL)

    def close(self) -> None:
        self._cells.release()
        self._map.close()
        os.close(self.fd)
