"""The spool's file system: how much room the workers need, and the low-space mode they share.

**Sizing.** Each worker's shard keeps a reserve file (``spool.reserve``) for the state changes
of mail already accepted, and needs room beyond it for the mail it accepts (``spool.margin``).
At start the file system must have ``workers x (reserve + margin)`` free, and never less than
``(workers + 1) x reserve`` (a shard makes its reserve only while twice the reserve is free).
Reserve files already there count as free: they are the relay's own. `plan` says whether the
workers fit; with ``spool.too_small = "fewer-workers"`` it gives as many as fit.

**Low-space mode for all shards.** When one shard cannot make its reserve, or the free space
falls below it, that shard refuses new mail (452 4.3.1); the others must too, or they would
fill the disk that shard needs to deliver. The supervisor creates a small shared memory region
(`SpaceFlags`, one byte per worker, a memfd passed as ``--space-fd``); each shard writes its
own byte and refuses new mail while any byte is set. Without memfd each shard decides alone.
"""

from __future__ import annotations

import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from deliverypool.config import RelayConfig
from deliverypool.config.units import format_size

__all__ = ["SpaceFlags", "SpacePlan", "available", "existing_folder", "need", "plan"]

RESERVE_FILE = "reserve"  # the spool's reserve file in each shard (queue/spool.py RESERVE)


def need(config: RelayConfig, workers: int) -> int:
    """Bytes the spool's file system must have free for `workers` workers at start."""
    spool = config.spool
    return max(workers * (spool.reserve + spool.margin), (workers + 1) * spool.reserve)


def existing_folder(directory: Path) -> Path:
    """`directory`, or its nearest ancestor that exists (the file system it will be on)."""
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def available(directory: Path) -> tuple[int, int]:
    """(free bytes for an unprivileged writer, bytes of the reserve files already in the spool)."""
    free = shutil.disk_usage(existing_folder(directory)).free
    reserves = 0
    for reserve in [directory / RESERVE_FILE, *directory.glob(f"shard-*/{RESERVE_FILE}")]:
        try:
            reserves += reserve.stat().st_blocks * 512
        except OSError:
            pass
    return free, reserves


@dataclass(frozen=True)
class SpacePlan:
    """What the spool's file system allows: `workers` to run (0: none fit), the one-line
    `problem` when fewer than asked fit, and a `summary` for ``--check``."""

    workers: int
    problem: str
    summary: str


def plan(config: RelayConfig, workers: int) -> SpacePlan:
    directory = config.spool.directory
    free, reserves = available(directory)
    usable = free + reserves
    wanted = need(config, workers)
    spool = config.spool
    rule = f"{format_size(spool.reserve)} reserve + {format_size(spool.margin)} margin each"
    summary = f"spool {directory}: {format_size(usable)} free, {workers} worker(s) need {format_size(wanted)} ({rule})"
    if usable >= wanted:
        return SpacePlan(workers, "", summary)
    fit = workers
    while fit > 0 and need(config, fit) > usable:
        fit -= 1
    text = (
        f"{directory} has {format_size(usable)} free, {workers} worker(s) need {format_size(wanted)} ({rule}, "
        f"docs/operations/durability.md)"
    )
    if spool.too_small == "fewer-workers" and fit > 0:
        return SpacePlan(fit, f"{text}: running {fit} worker(s) instead (spool.too_small = \"fewer-workers\")", summary)
    fix = "free space, give the spool a larger file system, or lower workers or spool.reserve/spool.margin"
    if spool.too_small == "refuse" and fit > 0:
        fix += f', or set spool.too_small = "fewer-workers" (would run {fit})'
    return SpacePlan(0, f"{text}: {fix}", summary)


class SpaceFlags:
    """One byte per worker in shared memory: set while that worker's shard is in low-space mode.
    `shard` is the byte this process writes (None: the supervisor, which creates the region)."""

    def __init__(self, fd: int, workers: int, shard: int | None = None) -> None:
        if workers < 1 or (shard is not None and not 0 <= shard < workers):
            raise ValueError(f"shard {shard} of {workers}")
        if os.fstat(fd).st_size != workers:
            raise ValueError(f"the space flags region has {os.fstat(fd).st_size} bytes, not {workers}")
        self.fd = fd
        self.workers = workers
        self.shard = shard
        self._map = mmap.mmap(fd, workers)

    @classmethod
    def create(cls, workers: int) -> SpaceFlags:
        fd = os.memfd_create("deliverypool-space-flags", 0)
        try:
            os.ftruncate(fd, workers)
            return cls(fd, workers)
        except BaseException:
            os.close(fd)
            raise

    def set(self, low: bool) -> None:
        """This shard is (or is no longer) in low-space mode."""
        if self.shard is None:
            raise RuntimeError("the supervisor's view has no shard of its own")
        self._map[self.shard] = 1 if low else 0

    def low(self) -> list[int]:
        """The shards in low-space mode now."""
        return [shard for shard, flag in enumerate(self._map[: self.workers]) if flag]

    def any_low(self) -> bool:
        return any(self._map[: self.workers])

    def clear(self, shard: int) -> None:
        """Forgets a shard's flag (its worker exited; the next one decides again)."""
        self._map[shard] = 0

    def close(self) -> None:
        self._map.close()
        os.close(self.fd)
