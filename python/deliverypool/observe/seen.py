"""The Message-IDs this relay has sent, per day, in Bloom filters (`MessageIdFilter`, Rust), to
tell a DSN about a message the relay never sent (backscatter).

Each worker adds the Message-ID of every message it accepts to its filter of the day and writes
its filters to ``SPOOL/seen/<worker>-<YYYYMMDD>.bloom`` (atomically, every flush), so they
survive restarts. Asking whether an ID was sent looks in the worker's own filters and in the
other workers' files of the retained days (re-read when they change). Filters older than
``monitor.message_id_days`` are deleted. A filter is sized for ``expected_messages_per_day``
at a 0.1% false-positive rate (about 1.8 MB per million IDs): a false positive makes a
backscatter DSN look like one about a relayed message, never the reverse.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from deliverypool._core import MessageIdFilter

__all__ = ["RelayedIds"]

FP_RATE = 0.001


def _day(at: float) -> str:
    return time.strftime("%Y%m%d", time.gmtime(at))


class RelayedIds:
    def __init__(self, directory: Path, worker: str, *, days: int, expected: int, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.worker = worker
        self.days = days
        self.expected = expected
        self.clock = clock
        self.own: dict[str, MessageIdFilter] = {}
        self._others: dict[str, tuple[float, MessageIdFilter]] = {}
        self._dirty: set[str] = set()
        # The day `add` last wrote to, and the UTC midnight that ends it: a message accepted
        # before then needs no date formatting.
        self._today = ""
        self._today_ends = 0.0

    def _retained(self) -> list[str]:
        now = self.clock()
        return [_day(now - 86400 * i) for i in range(self.days)]

    def load(self) -> None:
        """Reads this worker's filters of the retained days; deletes expired files."""
        self.directory.mkdir(parents=True, exist_ok=True)
        keep = set(self._retained())
        for path in self.directory.glob("*.bloom"):
            day = path.stem.rsplit("-", 1)[-1]
            if day not in keep:
                path.unlink(missing_ok=True)
            elif path.stem == f"{self.worker}-{day}":
                try:
                    self.own[day] = MessageIdFilter.from_bytes(path.read_bytes())
                except (OSError, ValueError):
                    pass

    def add(self, message_id: str) -> None:
        now = self.clock()
        if self._today_ends - 86400 <= now < self._today_ends:
            day = self._today
        else:
            day = self._today = _day(now)
            self._today_ends = (now // 86400 + 1) * 86400
        seen = self.own.get(day)
        if seen is None:
            seen = self.own[day] = MessageIdFilter(self.expected, FP_RATE)
            for old in [d for d in self.own if d not in self._retained()]:
                del self.own[old]
        seen.add(message_id)
        self._dirty.add(day)

    def relayed(self, message_id: str) -> bool:
        """Whether any worker sent a message with this ID in the retained days (probably)."""
        days = self._retained()
        if any(message_id in self.own[d] for d in days if d in self.own):
            return True
        self._refresh(days)
        return any(message_id in seen for _, seen in self._others.values())

    def _refresh(self, days: list[str]) -> None:
        wanted = set(days)
        for path in self.directory.glob("*.bloom"):
            worker, _, day = path.stem.rpartition("-")
            if worker == self.worker or day not in wanted:
                continue
            try:
                mtime = path.stat().st_mtime
                if self._others.get(path.name, (None,))[0] != mtime:
                    self._others[path.name] = (mtime, MessageIdFilter.from_bytes(path.read_bytes()))
            except (OSError, ValueError):
                continue
        for name in [n for n in self._others if n.rsplit("-", 1)[-1].split(".")[0] not in wanted]:
            del self._others[name]

    def flush(self) -> None:
        """Writes the filters that changed (blocking: call it on a thread)."""
        dirty, self._dirty = self._dirty, set()
        for day in dirty:
            seen = self.own.get(day)
            if seen is None:
                continue
            path = self.directory / f"{self.worker}-{day}.bloom"
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(seen.to_bytes())
            os.replace(tmp, path)
