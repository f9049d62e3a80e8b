"""The durable queue: SQLite in WAL mode with group commit.

One writer task owns the database connection. Every change (accepting a message, marking
recipients in flight, recording delivery outcomes) is a small function queued for it; it takes
*everything* queued at that moment, runs it inside one transaction and commits once (the
COMMIT and its fsync on an I/O thread), so a hundred messages accepted at the same time share
one fsync. Each caller awaits the
commit of the batch its change went into, so when `Spool.accept` returns the message is on disk
and the relay may answer 250.

Durability: ``journal_mode=WAL`` with ``synchronous=FULL``. In WAL mode NORMAL would already
survive a killed process (the WAL is in the page cache), but not a power cut; FULL syncs the
WAL at every commit, which makes "250" mean "on stable storage" and costs one fsync per batch,
not per message, thanks to group commit.

Each recipient has a state: ``queued`` (waiting for its first attempt), ``in-flight`` (an
attempt has started), ``deferred`` (waiting until ``next_attempt``), ``delivered`` and
``failed``. A message is deleted once every recipient is delivered or failed. On open, every
recipient left ``in-flight`` by a previous process is queued again; the remote server may
already have it, so it is counted as a possible duplicate (at-least-once delivery).

A lock file in the spool directory keeps a second relay from opening the same spool.

The disk: a reserve file (``reserve``) is kept for the state changes of mail already accepted.
A shard that cannot make its reserve, or whose disk has less free than the reserve, is in
*low-space mode*: new mail is refused (:class:`SpoolFull`, 452 4.3.1) while deliveries go on;
with the workers' shared flags (:mod:`deliverypool.queue.space`) every shard refuses while any
one is in it. A transaction that fails as a whole (the disk full even after the reserve is
released, an I/O error) never fails the state changes in it: they are tried again with growing
waits (`RETRY_FIRST` doubling up to `RETRY_MAXIMUM`), their callers waiting, and new mail is
refused meanwhile. Each condition is logged once when it starts and once when it ends, and
reported to `on_condition` (metrics and alerts), never once per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import shutil
import os
import concurrent.futures
import random
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from deliverypool._core import write_body_file
from deliverypool.errors import SpoolError, SpoolFull, SpoolLocked
from deliverypool.queue.space import SpaceFlags
from deliverypool.queue.schema import ACTIVE_STATES_SQL, FINAL_STATES_SQL, State, decode_reasons, encode_reasons, migrate

T = TypeVar("T")

log = logging.getLogger("deliverypool.spool")

DATABASE = "spool.sqlite3"
LOCK = "spool.lock"
# Bodies larger than this are written to a file of their own (BODIES/<queue id of the first
# message written in it>, fsynced before the row that names it is committed) instead of into the
# database: a large message is then written once, off the event loop, and read back without
# SQLite assembling a copy of it.
BODIES = "bodies"
FILE_THRESHOLD = 256 * 1024
# A body file whose message is gone (delivered, bounced) is kept as a spent file, up to this many
# bytes of them in all by default (`spool.spent_files`; the Spool's `spent_files`) and each at
# most SPENT_LARGEST, and the next large body is written over one: its pages are still in the
# page cache and its blocks on disk, where a new file takes fresh pages, new blocks, a journal
# commit for its name and a directory fsync (1 MiB written durably: 0.15-0.19 ms of CPU over a
# spent file, 0.49-0.52 ms in a new file later unlinked; benches/README.md, session 11). A body
# is read by its stored size: a spent file written over by a shorter body keeps the older bytes
# after it. In low-space mode spent files are removed.
SPENT_KEPT_BYTES = 64 * 1024 * 1024
SPENT_LARGEST = 8 * 1024 * 1024
# Space kept back for state changes: when the disk fills, this file is removed so that
# deliveries can still mark recipients in flight and record their outcomes (which is what frees
# space again); new mail gets 452 until there is twice this much free again.
RESERVE = "reserve"
RESERVE_BYTES = 16 * 1024 * 1024
# Upper bound on the changes one transaction takes; more wait for the next commit.
MAX_BATCH = 1024
# A transaction of state changes that failed as a whole is tried again after this, then after
# twice as long each time, up to RETRY_MAXIMUM.
RETRY_FIRST = 0.05
RETRY_MAXIMUM = 5.0
# How often a shard in low-space mode looks at the free space again (commits look too).
SPACE_CHECK_INTERVAL = 1.0

@dataclass(frozen=True, slots=True)
class DsnRequest:
    """What the client asked of the DSNs for a message (RFC 3461): RET ("FULL" or "HDRS"),
    ENVID (decoded from xtext), and per recipient, in the order of the message's recipients,
    NOTIFY ("NEVER", or some of "SUCCESS,FAILURE,DELAY") and ORCPT ("addr-type;address",
    decoded); None where not given."""

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str | None, ...] = ()
    orcpt: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class NewMessage:
    """A message to put in the spool, already routed to a pool (`recipient_pools`: each
    recipient's, when rules routed them apart; empty: all through `pool`)."""

    mail_from: str
    recipients: tuple[str, ...]
    body: bytes
    pool: str
    reasons: tuple[str, ...] = ()
    tenant: str | None = None
    header_message_id: str | None = None
    recipient_pools: tuple[str, ...] = ()
    dsn: DsnRequest | None = None
    # The envelope sender to deliver with (SRS for relay-pool mail); None: `mail_from`, which
    # stays the address the relay's own DSNs go to.
    envelope_from: str | None = None


@dataclass(frozen=True)
class Job:
    """Recipients of one spooled message waiting for a delivery attempt."""

    message: int
    queue_id: str
    mail_from: str
    pool: str
    reasons: tuple[str, ...]
    header_message_id: str | None
    received_at: float
    recipients: tuple[tuple[int, str], ...]  # (recipient id, address)
    attempts: int = 0
    next_attempt: float = 0.0
    tenant: str | None = None
    # Each recipient's pool when they differ (a job just accepted; the scheduler splits it into
    # a job per pool); empty: every recipient goes through `pool`.
    recipient_pools: tuple[str, ...] = ()
    # The envelope sender delivery uses, when not `mail_from` (SRS).
    envelope_from: str | None = None

    @property
    def sender(self) -> str:
        """The MAIL FROM of delivery attempts."""
        return self.mail_from if self.envelope_from is None else self.envelope_from

    def by_pool(self) -> dict[str, tuple[tuple[int, str], ...]]:
        """The recipients grouped by pool, in order."""
        if not self.recipient_pools:
            return {self.pool: self.recipients}
        groups: dict[str, list[tuple[int, str]]] = {}
        for recipient, pool in zip(self.recipients, self.recipient_pools):
            groups.setdefault(pool, []).append(recipient)
        return {pool: tuple(recipients) for pool, recipients in groups.items()}


@dataclass(frozen=True)
class Outcome:
    """The result of an attempt for one recipient. `next_attempt` only for DEFERRED; `host` the
    remote host that gave the reply (None for a local one); `dsn` for a FAILED recipient whose
    sender is to get a DSN."""

    recipient: int
    state: State
    reply: str
    next_attempt: float = 0.0
    attempts: int = 0
    host: str | None = None
    dsn: bool = False
    # The recipient's message, when the caller knows it (saves a look-up per outcome).
    message: int | None = None


@dataclass(frozen=True)
class FailedRecipient:
    """A recipient that a DSN is due for: `action` "failed"; or, as its client asked (RFC 3461
    NOTIFY), "relayed" (delivered, NOTIFY=SUCCESS) or "delayed" (its first deferral,
    NOTIFY=DELAY). `orcpt` is its ORCPT ("addr-type;address") if given."""

    recipient: int
    address: str
    reply: str
    host: str | None
    action: str = "failed"
    orcpt: str | None = None


@dataclass(frozen=True)
class DsnBatch:
    """A message whose failure batch is over: every recipient it lists, for one DSN."""

    message: int
    queue_id: str
    mail_from: str
    received_at: float
    failures: tuple[FailedRecipient, ...]
    tenant: str | None = None
    # RFC 3461: RET ("FULL": the whole message in a failure DSN) and ENVID, as the client gave them.
    ret: str | None = None
    envid: str | None = None


@dataclass(frozen=True)
class BodyFile:
    """A message stored in a body file: its first `size` bytes (the file may be longer: a spent
    file written over keeps what lay past the new body)."""

    path: Path
    size: int


@dataclass(frozen=True)
class Recovery:
    """What `Spool.open` found: unfinished work and how many recipients were interrupted in
    flight (possible duplicates)."""

    pending: tuple[Job, ...]
    requeued_in_flight: int
    dsn_batches: tuple[DsnBatch, ...] = ()


@dataclass
class SpoolStats:
    commits: int = 0
    changes: int = 0
    largest_batch: int = 0
    # New messages refused because the disk is full or the spool cannot write (452/451).
    refused: int = 0
    # Times state changes started failing (a stall), and failed attempts at them in all.
    stalls: int = 0
    failed_attempts: int = 0
    # Times this shard entered low-space mode.
    low_space_entered: int = 0


# A queued change, its caller's future, and whether it may use the reserve (state changes of mail
# already accepted) or not (new mail).
_Request = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", bool]


def bind_bytes_and_none_directly() -> None:
    """Identity adapters for `bytes` and `None`, registered with sqlite3 unless the process has
    its own for either type.

    sqlite3 binds an int, a float, a str or a bytearray as it is, but for a bytes or a None
    parameter it first looks for an adapter, and each miss raises and formats an AttributeError
    inside (``__adapt__`` on its protocol, ``__conform__`` on the type): 1.3-1.7 µs a parameter
    where binding an int takes nothing, and a message binds about ten (its body, and NULLs for
    what it lacks). With an adapter registered the look-up is one dict hit and a C call; what is
    bound does not change. Called once, when this module is imported."""
    if (bytes, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(bytes, bytes)  # bytes(b) is b itself
    if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
        none: dict[object, None] = {}
        sqlite3.register_adapter(type(None), none.get)  # a C call that gives None


bind_bytes_and_none_directly()


class _Connection(sqlite3.Connection):
    """A spool connection. While `tally` is a dict (during `_apply`, the writer's transactions),
    `_bump` adds the spool's counters up in it; otherwise it writes them at once."""

    tally: dict[str, int] | None = None


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the spool database at `path`: rows read by column name; the writer in
    WAL mode with ``synchronous=FULL`` and foreign keys."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False, factory=_Connection)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=_Connection)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 5000")
    if not readonly:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError(f"{path}: cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        # After a checkpoint the WAL file shrinks back to this size, so space freed by delivered
        # mail is given back to the disk rather than kept for the next burst.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        # Freed pages are not zeroed. Debian's SQLite is built with secure delete on, which
        # wrote every page of a delivered body once more (zeros) into the WAL and then into the
        # database: at 100 KiB, 28 of the 56 WAL frames a message cost, and half of the
        # checkpoint's copying. A body in a file of its own is unlinked, not overwritten,
        # either; `_give_back_space` returns free pages. (A larger checkpoint window,
        # wal_autocheckpoint 2048, saved 8 more database writes per 100 KiB message, but on a
        # nearly full disk the larger WAL took back the space delivered mail freed, and the
        # shards went in and out of low-space mode twice as often: test_spool_space.)
        conn.execute("PRAGMA secure_delete = FAST")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


# A spool made before `auto_vacuum = INCREMENTAL` is converted when it is opened (VACUUM rewrites
# it: up to its size again on disk) if it is at most this large and has that room.
_CONVERT_LIMIT: Final = 256 * 1024 * 1024


def _incremental_vacuum(conn: sqlite3.Connection, path: Path) -> None:
    """Makes sure the spool can give freed pages back (`Spool._give_back_space`): a database
    from before it was so is converted once, at open, where that is cheap enough."""
    if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) == 2:
        return
    size = path.stat().st_size
    if size > _CONVERT_LIMIT or shutil.disk_usage(path.parent).free < 2 * size:
        log.info("spool %s: not converted to incremental vacuum (%d bytes, too large or no room): freed pages stay in the file", path, size)
        return
    try:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("VACUUM")
    except sqlite3.Error as exc:
        log.warning("spool %s: conversion to incremental vacuum failed: %s", path, exc)


def new_queue_id(shard: int | None = None) -> str:
    """Upper-case hex digits: six of time (seconds, so ids sort by acceptance), then the shard's
    number in two when the spool is a worker's shard, then six random. Unique per spool by its
    UNIQUE index (a suffix drawn twice is drawn again), so per node with the shard's number: two
    workers never hand out the same id. Twelve digits for a spool of its own, fourteen for a shard.

    The random digits come from `random` (seeded from the OS, and again in a forked child), not
    from `secrets`: a queue id is a name, not a secret (Postfix's are a time and an inode), and
    `secrets` made a getrandom(2) call per message that released the GIL, so a file thread or
    the commit thread could take it and hold up the event loop."""
    tag = "" if shard is None else f"{shard:02X}"
    return f"{int(time.time()) & 0xFFFFFF:06X}{tag}{random.getrandbits(24):06X}"


class Spool:
    """The spool in `directory`. Use ``await spool.open()`` (or ``async with``) before use."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        reserve: int = RESERVE_BYTES,
        space: SpaceFlags | None = None,
        shard: int | None = None,
        spent_files: int = SPENT_KEPT_BYTES,
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / DATABASE
        # A worker's shard number (0-255): in every queue id this spool hands out.
        if shard is not None and not 0 <= shard <= 0xFF:
            raise ValueError(f"a shard number is 0 to 255, not {shard}")
        self.shard = shard
        self.reserve = reserve
        # This shard's low-space mode (see the module); `space`: the flags all shards share.
        self._low_space = False
        self.space = space
        # Since when (time.monotonic) whole transactions keep failing, and the last error.
        self.stalled_since: float | None = None
        self.stall_error: str = ""
        # Told when a condition starts (True) or ends (False): ("low-space" | "stalled",
        # active, details); the relay turns them into metrics and alerts.
        self.on_condition: Callable[[str, bool, dict[str, Any]], None] | None = None
        self._space_watch: asyncio.Task[None] | None = None
        self._retry_wakeup: asyncio.Event | None = None
        self.clock = clock
        self.stats = SpoolStats()
        self._pending: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        # One thread for everything that may wait on the disk: COMMIT (its fsync) and reads.
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        # Body files are written and read on threads of their own, so that a large message
        # never holds up the commits of the others.
        self._files: concurrent.futures.ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # Told how long each commit took, in seconds (observe/: the commit histogram).
        self.on_commit: Callable[[float], None] | None = None
        # Body files by name with their length on disk: those of stored messages (and of
        # bodies being written), and the spent ones kept to be written over (`spent_files`).
        self._body_files: dict[str, int] = {}
        self._spent: dict[str, int] = {}
        self._spent_bytes = 0
        self.spent_files = spent_files

    # --- life cycle ---------------------------------------------------------------------

    async def open(self) -> Recovery:
        """Locks and opens the spool, creates it if needed, and recovers: recipients left in
        flight are queued again and counted. Returns everything unfinished."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(f"{self.directory}: the spool is in use by another process") from None
        self._lock_fd = fd
        self._loop = asyncio.get_running_loop()
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool-io")
        self._files = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="spool-files")
        try:
            try:
                self._conn = await self._loop.run_in_executor(self._io, self._setup)
            except Exception as exc:
                # Started on a full disk: spend the reserve to open, and drain.
                if not (_is_full(exc) and await self._release_reserve()):
                    raise
                self._conn = await self._loop.run_in_executor(self._io, self._setup)
            self._apply_space(*await self._loop.run_in_executor(self._io, self._make_reserve))
            self._reader = await self._loop.run_in_executor(self._io, lambda: connect(self.path, readonly=True))
        except BaseException:
            self._io.shutdown(wait=False)
            self._files.shutdown(wait=False)
            self._unlock()
            raise
        self._closing = False
        self._wakeup = asyncio.Event()
        self._retry_wakeup = asyncio.Event()
        self._writer = asyncio.ensure_future(self._write_loop())
        self._space_watch = asyncio.ensure_future(self._watch_space())
        requeued = await self.run(_recover)
        await self._survey_bodies()
        pending = await self.pending()
        return Recovery(pending=tuple(pending), requeued_in_flight=requeued, dsn_batches=tuple(await self.dsn_batches()))

    def _setup(self) -> sqlite3.Connection:
        conn = connect(self.path)
        try:
            migrate(conn)
            _incremental_vacuum(conn, self.path)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def low_space(self) -> bool:
        """True while new mail is refused for lack of space: this shard cannot keep its reserve,
        or (with shared flags) another shard cannot."""
        return self._low_space or (self.space is not None and self.space.any_low())

    @property
    def refusing(self) -> bool:
        """True while new mail is refused: low space, or state changes failing."""
        return self.low_space or self.stalled_since is not None

    def _make_reserve(self) -> tuple[bool, int]:
        """Keeps the reserve file in place (on the I/O thread); returns (low space, free bytes).
        Low space when the reserve is missing and cannot be made (it is made only while twice
        the reserve is free), or when less than the reserve is free besides it; once in low-space
        mode, until twice the reserve is free besides it. Without room, the database first gives
        back what delivered mail freed."""
        path = self.directory / RESERVE
        free = shutil.disk_usage(self.directory).free
        if not path.exists():
            if free < 2 * self.reserve:
                self._give_back_space()
                free = shutil.disk_usage(self.directory).free
            if free < 2 * self.reserve:
                return True, free
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.reserve)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError:
                path.unlink(missing_ok=True)
                return True, free
            free -= self.reserve
        if not self._low_space:
            return free < self.reserve, free
        # Leaving low-space mode takes twice the reserve free besides it (entering it, less than
        # the reserve): a shard that left as soon as the reserve fitted again filled the disk
        # within a second and flapped, each time log lines and an alert. What delivered mail
        # freed in the database counts: it is given back first.
        if free < 2 * self.reserve:
            self._give_back_space()
            free = shutil.disk_usage(self.directory).free
        return free < 2 * self.reserve, free

    def _give_back_space(self) -> None:
        """Returns to the file system the database pages delivered mail freed and the write-ahead
        log's length (both stay allocated otherwise: a burst's WAL and a drained queue's pages
        would keep the disk "full" after the mail is gone). Best effort, on a connection of its
        own that waits briefly for the writer: an attempt that cannot run now is made again at
        the next space check."""
        try:
            side = sqlite3.connect(self.path, isolation_level=None, timeout=0.2)
        except sqlite3.Error:
            return
        try:
            with contextlib.suppress(sqlite3.Error):
                # Only where auto_vacuum is incremental. executescript steps the statement to its
                # end: execute() steps once, and each step gives back one page.
                side.executescript("PRAGMA incremental_vacuum;")
            with contextlib.suppress(sqlite3.Error):
                side.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            side.close()

    def _give_back_space_if_short(self) -> None:
        if shutil.disk_usage(self.directory).free < 2 * self.reserve:
            self._give_back_space()

    def _apply_space(self, low: bool, free: int) -> None:
        """Enters or leaves low-space mode (on the loop), logging and reporting the change once."""
        if self.space is not None:
            self.space.set(low)
        if low == self._low_space:
            return
        self._low_space = low
        details = {"directory": str(self.directory), "free": free, "reserve": self.reserve}
        if low:
            self.stats.low_space_entered += 1
            self._drop_spent()
            log.error(
                "spool %s: low space (%d bytes free, reserve %d): refusing new mail (452) until twice the reserve is free besides it",
                self.directory, free, self.reserve,
            )
        else:
            log.warning("spool %s: free space is back (%d bytes free, reserve kept): accepting mail again", self.directory, free)
        self._condition("low-space", low, details)

    def _condition(self, name: str, active: bool, details: dict[str, Any]) -> None:
        if self.on_condition is not None:
            try:
                self.on_condition(name, active, details)
            except Exception:
                log.exception("spool %s: reporting %s failed", self.directory, name)

    async def _watch_space(self) -> None:
        """While in low-space mode (or without a reserve), looks at the free space every
        `SPACE_CHECK_INTERVAL`, so that the mode ends when space is back even with no commit."""
        while not self._closing:
            await asyncio.sleep(SPACE_CHECK_INTERVAL)
            if self._io is None or self._closing:
                return
            try:
                if self._low_space or not (self.directory / RESERVE).exists():
                    self._apply_space(*await self._loop_run(self._make_reserve))
                elif self.low_space:
                    # Another shard is short of space on the disk they share: what this shard's
                    # database freed, and its WAL, are space too.
                    await self._loop_run(self._give_back_space_if_short)
            except Exception:  # the disk itself: the next round tries again
                pass

    async def _release_reserve(self) -> bool:
        """Removes the reserve file (entering low-space mode); False when there was none."""
        path = self.directory / RESERVE
        free = shutil.disk_usage(self.directory).free
        if not path.exists():
            self._apply_space(True, free)
            return False
        path.unlink()
        log.error("spool %s: the disk is full; reserve released for the mail already accepted", self.directory)
        self._apply_space(True, free)
        return True

    async def close(self) -> None:
        """Finishes queued changes, then closes. Safe to call twice."""
        if self._writer is not None and self._wakeup is not None:
            self._closing = True
            self._wakeup.set()
            if self._retry_wakeup is not None:
                self._retry_wakeup.set()  # a stalled transaction gives up: its changes fail
            await self._writer
            self._writer = None
        if self._space_watch is not None:
            self._space_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._space_watch
            self._space_watch = None
        if self._io is not None:
            for conn in (self._conn, self._reader):
                if conn is not None:
                    await asyncio.get_running_loop().run_in_executor(self._io, conn.close)
            self._io.shutdown(wait=True)
            self._io = None
        if self._files is not None:
            self._files.shutdown(wait=True)
            self._files = None
        self._conn = self._reader = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def __aenter__(self) -> Spool:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the writer -----------------------------------------------------------------------

    def run(self, change: Callable[[sqlite3.Connection], T], *, essential: bool = True) -> asyncio.Future[T]:
        """Queues `change` for the next transaction; the future resolves once the transaction
        holding it is committed to disk (or with the exception `change` raised: that change
        is rolled back alone, the others in the batch are unaffected). Call it on the loop
        that opened the spool. A change that is not `essential` (new mail) never uses the
        reserve: on a full disk it fails with :class:`SpoolFull`. `change` acts on the database
        alone: it may be run twice (in its batch's second try, when another change of the batch
        failed), and only the second run counts."""
        if self._writer is None or self._closing or self._wakeup is None:
            raise SpoolError("the spool is not open")
        assert self._loop is not None
        future: asyncio.Future[T] = self._loop.create_future()
        self._pending.append((change, future, essential))
        self._wakeup.set()
        return future

    async def _write_loop(self) -> None:
        """Group commit. The changes run on the event loop thread: they only touch SQLite's
        page cache and take microseconds. COMMIT, which writes the WAL and fsyncs it, runs on
        the I/O thread; changes queued meanwhile wait for the next transaction, so under load
        one fsync covers everything that arrived during the previous one. (Running the whole
        transaction on a thread instead hands the GIL back and forth at every statement, and
        each handoff can wait for the busy event loop's switch interval: that made commits
        tens of milliseconds slower.)"""
        assert self._wakeup is not None and self._loop is not None
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            await self._commit(batch)

    async def _commit(self, batch: list[_Request]) -> None:
        results = await self._try_commit(batch)
        if isinstance(results, BaseException):
            failure = results
            # New mail in a failed transaction is refused now (the client keeps it): only the
            # state changes of mail already accepted are worth waiting for.
            refused = SpoolFull(f"the spool's disk is full: {failure}") if _is_full(failure) else SpoolError(f"spool commit failed: {failure}")
            for _, future, essential in batch:
                if not essential:
                    self.stats.refused += 1
                    _settle(future, None, refused)
            batch = [request for request in batch if request[2]]
            results = []
            if not batch and _is_full(failure):
                # New mail alone found the disk full: low-space mode at once (452 before any
                # transaction) until the space watch sees room; the reserve is kept for the
                # state changes of the mail already accepted.
                self._apply_space(True, shutil.disk_usage(self.directory).free)
            if batch and _is_full(failure) and await self._release_reserve():
                # The disk is full: state changes of accepted mail go on in the reserve.
                results = await self._try_commit(batch)
            elif batch:
                results = failure
            if isinstance(results, BaseException):
                results = await self._retry(batch, results)
            if isinstance(results, BaseException):  # closing while still failing
                kind = SpoolFull if _is_full(results) else SpoolError
                results = [(None, kind(f"spool commit failed: {results}"))] * len(batch)
        elif self._low_space:
            self._apply_space(*await self._loop_run(self._make_reserve))
        self.stats.commits += 1
        self.stats.changes += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        for (_, future, _), (value, error) in zip(batch, results):
            _settle(future, value, error)

    async def _retry(self, batch: list[_Request], failure: BaseException) -> list[tuple[Any, BaseException | None]] | BaseException:
        """Tries the transaction of `batch` (state changes only) again with growing waits until it
        commits, or the spool closes (then the last failure). The stall is logged and reported
        once when it starts and once when it ends; new mail is refused meanwhile."""
        assert self._retry_wakeup is not None
        started = time.monotonic()
        attempts = 1
        self.stats.failed_attempts += 1
        fresh = self.stalled_since is None
        if fresh:
            self.stalled_since = started
            self.stats.stalls += 1
            self.stall_error = str(failure)
            log.error(
                "spool %s: state changes fail (%s); trying again with growing waits (up to %gs) and refusing new mail meanwhile",
                self.directory, failure, RETRY_MAXIMUM,
            )
            self._condition("stalled", True, {"directory": str(self.directory), "error": str(failure)})
        wait = RETRY_FIRST
        while not self._closing:
            self._retry_wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._retry_wakeup.wait(), wait)
            if self._closing:
                break
            wait = min(RETRY_MAXIMUM, wait * 2)
            if _is_full(failure) and not (self.directory / RESERVE).exists():
                # Space may be back: the reserve is remade first, so that it is there next time.
                with contextlib.suppress(Exception):
                    self._apply_space(*await self._loop_run(self._make_reserve))
            results = await self._try_commit(batch)
            if not isinstance(results, BaseException):
                seconds = time.monotonic() - started
                self.stalled_since = None
                log.warning("spool %s: state changes succeed again after %.1fs (%d failed attempts)", self.directory, seconds, attempts)
                self._condition("stalled", False, {"directory": str(self.directory), "seconds": round(seconds, 1), "attempts": attempts})
                return results
            failure = results
            attempts += 1
            self.stats.failed_attempts += 1
        return failure

    async def _try_commit(self, batch: list[_Request]) -> list[tuple[Any, BaseException | None]] | BaseException:
        """One transaction for `batch`: every change's result or error, or the exception that
        made the whole transaction fail (then nothing of it is stored)."""
        conn = self._conn
        assert conn is not None and self._loop is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = _apply(conn, batch)
            started = time.perf_counter()
            await self._loop.run_in_executor(self._io, conn.execute, "COMMIT")
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - started)
        except Exception as exc:  # the commit itself failed: nobody's change is durable
            if conn.in_transaction:
                await self._loop.run_in_executor(self._io, conn.execute, "ROLLBACK")
            return exc
        return results

    async def _loop_run(self, work: Callable[[], T]) -> T:
        assert self._loop is not None and self._io is not None
        return await self._loop.run_in_executor(self._io, work)

    # --- changes --------------------------------------------------------------------------

    async def accept(self, message: NewMessage, *, in_flight: bool = False) -> Job:
        """Stores a message with its recipients queued, or in flight when the caller hands it to
        a connection at once (`in_flight`: its first attempt then needs no mark of its own, see
        :meth:`mark_in_flight`). Returns once it is on disk. Raises :class:`SpoolFull` in
        low-space mode (452), :class:`SpoolError` while state changes fail for another reason
        (451)."""
        if self.refusing:
            self.stats.refused += 1
            if self.low_space or _is_full_text(self.stall_error):
                raise SpoolFull("the spool's disk is full")
            raise SpoolError(f"the spool cannot write: {self.stall_error}")
        now = self.clock()
        if len(message.body) <= FILE_THRESHOLD:
            return await self.run(lambda conn: _insert(conn, message, now, shard=self.shard, in_flight=in_flight), essential=False)
        queue_id = new_queue_id(self.shard)
        while queue_id in self._body_files or queue_id in self._spent:  # a file's name is an older queue id
            queue_id = new_queue_id(self.shard)
        name = queue_id
        try:
            name = await self._write_body(queue_id, message.body)
            return await self.run(lambda conn: _insert(conn, message, now, queue_id=queue_id, body_file=name, in_flight=in_flight), essential=False)
        except BaseException as exc:
            self._body_files.pop(name, None)
            (self.directory / BODIES / name).unlink(missing_ok=True)
            if _is_full(exc):
                if not isinstance(exc, SpoolFull):
                    self.stats.refused += 1
                raise SpoolFull(f"the spool's disk is full: {exc}") from None
            raise

    async def _write_body(self, queue_id: str, body: bytes) -> str:
        """Writes a body file durably, over a spent file when one is kept (the one that fits
        best: the shortest as long as `body`, else the longest), else in a new file named
        `queue_id`. Returns the file's name; from then on it is one of this spool's body files."""
        bodies = self.directory / BODIES
        if self._spent:
            longer = [(length, name) for name, length in self._spent.items() if length >= len(body)]
            length, name = min(longer) if longer else max((length, name) for name, length in self._spent.items())
            del self._spent[name]
            self._spent_bytes -= length
            try:
                await self._write_file(bodies / name, body, max(length, len(body)), over=True)
                return name
            except FileNotFoundError:  # removed behind the spool's back: a new file then
                pass
        await self._write_file(bodies / queue_id, body, len(body), over=False)
        return queue_id

    async def _write_file(self, path: Path, body: bytes, length: int, *, over: bool) -> None:
        """Writes one body file (`length`: the file's length then); a file whose write failed
        is no longer this spool's, and is removed."""
        self._body_files[path.name] = length
        try:
            await self._on_file_thread(lambda: write_body_file(path, body, over=over))
        except BaseException:
            del self._body_files[path.name]
            path.unlink(missing_ok=True)
            raise

    async def mark_in_flight(self, recipient_ids: Iterable[int]) -> None:
        """Records that an attempt starts. Awaited before sending, so that a crash during the
        attempt is known at recovery as a possible duplicate. (A message handed to a connection
        as it is accepted is stored in flight instead: :meth:`accept`.)"""
        ids = list(recipient_ids)
        now = self.clock()
        await self.run(lambda conn: _set_in_flight(conn, ids, now))

    async def record(self, outcomes: Sequence[Outcome]) -> list[DsnBatch]:
        """Records attempt outcomes. A failure that is due a DSN is marked pending; when this
        ends a message's failure batch (none of its recipients queued or in flight), the batch
        is returned for one DSN, to be stored with :meth:`store_dsn` (until then the marks keep
        it, across a crash too). Messages whose recipients are all finished are removed."""
        now = self.clock()
        batches, finished_files = await self.run(lambda conn: _record(conn, outcomes, now))
        self._spend_bodies(finished_files)
        return batches

    async def store_dsn(self, batch: DsnBatch, dsn: NewMessage) -> Job:
        """Stores the DSN for a failure batch and clears its marks in one transaction (a crash
        before: the batch is found again at start; after: the DSN is in the spool)."""
        now = self.clock()
        job, finished_files = await self.run(lambda conn: _store_dsn(conn, batch, dsn, now, self.shard))
        self._spend_bodies(finished_files)
        return job

    async def dsn_batches(self) -> list[DsnBatch]:
        """Failure batches that ended without their DSN stored (a crash in between)."""
        return await self._read(lambda conn: [b for m in _pending_dsn_messages(conn) if (b := _batch(conn, m)) is not None])

    def _spend_bodies(self, names: Iterable[str]) -> None:
        """The body files of messages whose removal is committed: kept as spent files while
        there is room for them (`spent_files` bytes), else removed on a file thread. Never one
        still named by a row: a file written over before its message's removal was durable
        would give a recovered message another's text."""
        removed = []
        for name in names:
            length = self._body_files.pop(name, None)
            if length is None or self.low_space or length > SPENT_LARGEST or self._spent_bytes + length > self.spent_files:
                removed.append(name)
            else:
                self._spent[name] = length
                self._spent_bytes += length
        self._remove_files(removed)

    def _drop_spent(self) -> None:
        """Removes every spent file (low-space mode: they are space to give back)."""
        names = list(self._spent)
        self._spent.clear()
        self._spent_bytes = 0
        self._remove_files(names)

    def _remove_files(self, names: list[str]) -> None:
        """Unlinks body files on a file thread, without waiting (close waits for the thread)."""
        if names and self._files is not None:
            bodies = self.directory / BODIES
            self._files.submit(_unlink, [bodies / name for name in names])

    async def pending(self) -> list[Job]:
        """Unfinished recipients, one Job per message and state, oldest first."""
        return await self._read(_pending)

    async def body(self, message: int) -> bytes:
        """The whole stored message (a body file is read on a file thread, not behind the
        commits). Delivery streams large bodies instead: :meth:`stored`."""
        stored = await self.stored(message)
        if isinstance(stored, bytes):
            return stored
        return await self._on_file_thread(lambda: _read_body(stored))

    async def stored(self, message: int) -> bytes | BodyFile:
        """The message as stored: its bytes, or its body file."""

        def read(conn: sqlite3.Connection) -> tuple[bytes, str | None, int]:
            row = conn.execute("SELECT body, body_file, size FROM messages WHERE id = ?", (message,)).fetchone()
            if row is None:
                raise KeyError(f"message {message} is not in the spool")
            return bytes(row["body"]), row["body_file"], row["size"]

        body, body_file, size = await self._read(read)
        return body if body_file is None else BodyFile(self.directory / BODIES / body_file, size)

    async def chunks(self, stored: bytes | BodyFile, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """A stored message in pieces of about `size` bytes that each end at a line break (so
        each can be dot-stuffed alone), read from a body file on a file thread. A body file of
        up to twice `size` is one piece, read in one trip to the thread (open, read, close):
        streamed, a 1 MiB message took five trips and a copy of its first piece."""
        if isinstance(stored, bytes):
            yield stored
            return
        if stored.size <= 2 * size:
            yield await self._on_file_thread(lambda: _read_body(stored))
            return
        handle = await self._on_file_thread(lambda: stored.path.open("rb"))
        left = stored.size
        try:
            carry = b""
            while left:
                block = await self._on_file_thread(lambda: handle.read(min(size, left)))
                if not block:
                    raise _short(stored, left)
                left -= len(block)
                block = carry + block
                cut = len(block) if not left else block.rfind(b"\n") + 1
                carry = block[cut:]
                if cut:
                    yield block[:cut]
        finally:
            await self._on_file_thread(handle.close)

    async def _survey_bodies(self) -> None:
        """At start: the body files rows name, with their lengths; and those no row names
        (spent files kept by the last run, or bodies written by a process that died before
        their row was committed: the client got no 250 for them), kept as spent files while
        there is room, else removed."""
        bodies = self.directory / BODIES
        if not bodies.is_dir():
            return
        named = await self._read(lambda conn: {row[0] for row in conn.execute("SELECT body_file FROM messages WHERE body_file IS NOT NULL")})
        lengths = await self._on_file_thread(lambda: {path.name: path.stat().st_size for path in bodies.iterdir()})
        self._body_files = lengths
        self._spend_bodies(sorted(name for name in lengths if name not in named))

    async def _on_file_thread(self, work: Callable[[], T]) -> T:
        if self._files is None:
            raise SpoolError("the spool is not open")
        return await asyncio.get_running_loop().run_in_executor(self._files, work)

    async def counters(self) -> dict[str, int]:
        return await self._read(counters)

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        """Runs a read on the I/O thread with the read-only connection (WAL: readers see the
        last commit and never block the writer)."""
        reader = self._reader
        if reader is None or self._io is None:
            raise SpoolError("the spool is not open")
        return await asyncio.get_running_loop().run_in_executor(self._io, query, reader)


def _apply(conn: sqlite3.Connection, batch: list[_Request]) -> list[tuple[Any, BaseException | None]]:
    """Runs the changes of `batch` in the open transaction (`_run_changes`); returns each one's
    result or error. The counters they add to are added up meanwhile (`_bump`) and written once
    at the end: one UPDATE per counter per transaction, not one per change."""
    tally: dict[str, int] = {}
    conn.tally = tally  # type: ignore[attr-defined]  # a _Connection
    try:
        results = _run_changes(conn, batch, tally)
    finally:
        conn.tally = None  # type: ignore[attr-defined]
    for name, by in tally.items():
        _bump(conn, name, by)
    return results


def _run_changes(conn: sqlite3.Connection, batch: list[_Request], tally: dict[str, int]) -> list[tuple[Any, BaseException | None]]:
    """The changes of `batch`, one after the other as they are. Should one fail on its own (not
    for want of space: then the whole transaction fails), the transaction is rolled back and run
    again with each change in a savepoint of its own, so that the failed change is undone alone,
    its counts in `tally` with it, and its error goes to its caller. (A savepoint around every
    change, always, was six statements of eighteen per relayed message; a change fails on its
    own only through a bug or a bad argument.)"""
    try:
        return [(change(conn), None) for change, _, _ in batch]
    except Exception as exc:
        if _is_full(exc):
            raise  # not a change's fault: the whole batch waits for space
    conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    tally.clear()
    results: list[tuple[Any, BaseException | None]] = []
    for change, _, _ in batch:
        conn.execute("SAVEPOINT change")
        before = dict(tally)
        try:
            results.append((change(conn), None))
            conn.execute("RELEASE change")
        except Exception as exc:
            if _is_full(exc):
                raise
            # The change's own failure goes to its caller, its counts with it.
            conn.execute("ROLLBACK TO change")
            conn.execute("RELEASE change")
            tally.clear()
            tally.update(before)
            results.append((None, exc))
    return results


def _is_full_text(text: str) -> bool:
    return "disk is full" in text or "No space left" in text


def _is_full(exc: BaseException) -> bool:
    """The disk (or the database's size limit) is full."""
    if isinstance(exc, SpoolFull):
        return True
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _bump(conn: sqlite3.Connection, name: str, by: int = 1) -> None:
    if not by:
        return
    tally: dict[str, int] | None = getattr(conn, "tally", None)
    if tally is not None:
        tally[name] = tally.get(name, 0) + by
    else:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))


def _read_body(stored: BodyFile) -> bytes:
    """A body file's message: its first `size` bytes."""
    with stored.path.open("rb") as handle:
        data = handle.read(stored.size)
    if len(data) != stored.size:
        raise _short(stored, stored.size - len(data))
    return data


def _short(stored: BodyFile, missing: int) -> SpoolError:
    return SpoolError(f"{stored.path}: the body file ends {missing} bytes short of the message")


def _unlink(paths: Iterable[Path]) -> None:
    """Removes files, logging one that cannot be (it is found again at the next start)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("spool: cannot remove %s: %s", path, exc)


_INSERT_MESSAGE: Final = (
    "INSERT INTO messages (queue_id, mail_from, pool, reasons, tenant, header_message_id, received_at, size, body, body_file,"
    " dsn_ret, dsn_envid, envelope_from) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert(
    conn: sqlite3.Connection,
    message: NewMessage,
    now: float,
    *,
    queue_id: str | None = None,
    body_file: str | None = None,
    shard: int | None = None,
    in_flight: bool = False,
) -> Job:
    if not message.recipients:
        raise ValueError("a message needs at least one recipient")
    if message.recipient_pools and len(message.recipient_pools) != len(message.recipients):
        raise ValueError("recipient_pools must name one pool per recipient")
    dsn = message.dsn
    fields = (
        message.mail_from,
        message.pool,
        encode_reasons(message.reasons),
        message.tenant,
        message.header_message_id,
        now,
        len(message.body),
        b"" if body_file is not None else message.body,
        body_file,
        dsn.ret if dsn is not None else None,
        dsn.envid if dsn is not None else None,
        message.envelope_from,
    )
    # A queue id is taken at most once per spool: its UNIQUE index says so, with no look-up
    # before. A random suffix already drawn this second is drawn again (a failed INSERT undoes
    # itself alone; the transaction goes on); a given one (a body file's name) cannot be.
    drawn = queue_id is None
    while True:
        if drawn:
            queue_id = new_queue_id(shard)
        try:
            cursor = conn.execute(_INSERT_MESSAGE, (queue_id, *fields))
            break
        except sqlite3.IntegrityError as exc:
            if not drawn or "messages.queue_id" not in str(exc):
                raise
    assert queue_id is not None
    message_id = cursor.lastrowid
    assert message_id is not None
    recipients = []
    pools = message.recipient_pools or (message.pool,) * len(message.recipients)
    notify = dsn.notify if dsn is not None else ()
    orcpt = dsn.orcpt if dsn is not None else ()
    state = (State.IN_FLIGHT if in_flight else State.QUEUED).value
    for n, (address, pool) in enumerate(zip(message.recipients, pools)):
        rc = conn.execute(
            "INSERT INTO recipients (message, address, state, next_attempt, updated_at, pool, dsn_notify, dsn_orcpt)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                message_id, address, state, now, now, None if pool == message.pool else pool,
                notify[n] if n < len(notify) else None, orcpt[n] if n < len(orcpt) else None,
            ),
        )
        assert rc.lastrowid is not None
        recipients.append((rc.lastrowid, address))
    _bump(conn, "accepted")
    return Job(
        message=message_id,
        queue_id=queue_id,
        mail_from=message.mail_from,
        pool=message.pool,
        reasons=message.reasons,
        header_message_id=message.header_message_id,
        received_at=now,
        recipients=tuple(recipients),
        next_attempt=now,
        tenant=message.tenant,
        recipient_pools=message.recipient_pools if len(set(message.recipient_pools)) > 1 else (),
        envelope_from=message.envelope_from,
    )


def _set_in_flight(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> None:
    # One execute per id rather than executemany: executemany inside the per-change SAVEPOINTs
    # failed under load (CPython 3.11: "bad parameter or other API misuse").
    for rid in ids:
        conn.execute("UPDATE recipients SET state = ?, updated_at = ? WHERE id = ?", (State.IN_FLIGHT.value, now, rid))


def _record(conn: sqlite3.Connection, outcomes: Sequence[Outcome], now: float) -> tuple[list[DsnBatch], list[str]]:
    """Returns the failure batches now over and the body files of messages now finished."""
    messages: set[int] = set()
    rest, finished = _delete_delivered_whole(conn, outcomes)
    for outcome in rest:
        message = outcome.message
        if message is None:
            row = conn.execute("SELECT message FROM recipients WHERE id = ?", (outcome.recipient,)).fetchone()
            if row is None:
                continue
            message = row["message"]
        messages.add(message)
        conn.execute(
            "UPDATE recipients SET state = ?, last_reply = ?, last_host = ?, next_attempt = ?, updated_at = ?,"
            f" attempts = max(attempts, ?), dsn_pending = {_DSN_DUE} WHERE id = ?",
            (
                outcome.state.value,
                outcome.reply,
                outcome.host,
                outcome.next_attempt or now,
                now,
                outcome.attempts,
                int(outcome.dsn and outcome.state is State.FAILED),
                int(outcome.state is State.DELIVERED),
                int(outcome.state is State.DEFERRED),
                outcome.recipient,
            ),
        )
    _bump(conn, "delivered", sum(o.state is State.DELIVERED for o in outcomes))
    _bump(conn, "failed", sum(o.state is State.FAILED for o in outcomes))
    batches, files = _conclude(conn, messages)
    return batches, finished + files


def _delete_delivered_whole(conn: sqlite3.Connection, outcomes: Sequence[Outcome]) -> tuple[list[Outcome], list[str]]:
    """Deletes each message that these outcomes deliver whole (every recipient still in the
    spool is delivered by them, none asked for a success DSN): one statement instead of the
    recipients' updates and the look-up that would find the message finished. Returns the
    outcomes still to record, in order, and the deleted messages' body files."""
    finished: list[str] = []
    by_message: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        if outcome.message is not None:
            by_message.setdefault(outcome.message, []).append(outcome)
    done: set[int] = set()
    for message, group in by_message.items():
        if all(outcome.state is State.DELIVERED for outcome in group):
            ids = [outcome.recipient for outcome in group]
            rows = conn.execute(_DELETE_DELIVERED.format(", ".join("?" * len(ids))), (message, message, *ids)).fetchall()
            if rows:
                done.add(message)
                if rows[0][0] is not None:
                    finished.append(rows[0][0])
    return [outcome for outcome in outcomes if outcome.message not in done], finished


# Deletes a message (its recipients with it: ON DELETE CASCADE) when no recipient of it is left
# but the given ones, and none of those asked for a DSN on success (RFC 3461 NOTIFY=SUCCESS).
_DELETE_DELIVERED: Final = (
    "DELETE FROM messages WHERE id = ? AND NOT EXISTS (SELECT 1 FROM recipients WHERE message = ?"
    " AND (id NOT IN ({}) OR instr(coalesce(dsn_notify, ''), 'SUCCESS') > 0)) RETURNING body_file"
)


def _conclude(conn: sqlite3.Connection, messages: Iterable[int]) -> tuple[list[DsnBatch], list[str]]:
    """For each of `messages`, after a change to its recipients: its DSN batch, when its failure
    batch is over (none of its recipients queued or in flight) with a DSN due; or, when all its
    recipients are delivered or failed with no DSN due, it is deleted and its body file (if any)
    returned. One query per message tells which."""
    batches: list[DsnBatch] = []
    finished: list[str] = []
    for message in messages:
        row = conn.execute(_MESSAGE_STATE, (message,)).fetchone()
        if row is None:
            continue
        if not row["active"] and row["pending"]:
            batch = _batch(conn, message, checked=True)
            if batch is not None:
                batches.append(batch)
        elif not row["unfinished"] and not row["pending"]:
            conn.execute("DELETE FROM messages WHERE id = ?", (message,))
            if row["body_file"] is not None:
                finished.append(row["body_file"])
    return batches, finished


# A message's body file and whether any of its recipients is queued or in flight (active), has a
# DSN due (pending), or is not delivered or failed (unfinished).
_MESSAGE_STATE: Final = (
    "SELECT body_file,"
    f" EXISTS (SELECT 1 FROM recipients WHERE message = messages.id AND state IN {ACTIVE_STATES_SQL}) AS active,"
    " EXISTS (SELECT 1 FROM recipients WHERE message = messages.id AND dsn_pending != 0) AS pending,"
    f" EXISTS (SELECT 1 FROM recipients WHERE message = messages.id AND state NOT IN {FINAL_STATES_SQL}) AS unfinished"
    " FROM messages WHERE id = ?"
)


# Whether an outcome is due a DSN, by the recipient's NOTIFY (RFC 3461 §4.1): a failure (the
# first parameter: its sender gets DSNs) unless NOTIFY was given without FAILURE (NEVER among
# those), 1; a delivery when NOTIFY holds SUCCESS, 2 (a "relayed" report: the next hop is not
# asked for DSNs); the first deferral when NOTIFY holds DELAY, 3 (a "delayed" report; never
# twice: dsn_delayed); the last two only for a sender that is not null; else 0.
_DSN_DUE: Final = (
    "CASE WHEN ? AND (dsn_notify IS NULL OR instr(dsn_notify, 'FAILURE') > 0) THEN 1"
    " WHEN (SELECT mail_from FROM messages WHERE messages.id = recipients.message) = '' THEN 0"
    " WHEN ? AND instr(coalesce(dsn_notify, ''), 'SUCCESS') > 0 THEN 2"
    " WHEN ? AND instr(coalesce(dsn_notify, ''), 'DELAY') > 0 AND dsn_delayed = 0 THEN 3 ELSE 0 END"
)
_ACTIONS: Final = {1: "failed", 2: "relayed", 3: "delayed"}


def _batch(conn: sqlite3.Connection, message: int, *, checked: bool = False) -> DsnBatch | None:
    """The message's DSN batch if its failure batch is over, else None (`checked`: the caller
    knows none of its recipients is queued or in flight)."""
    if not checked:
        active = conn.execute(f"SELECT 1 FROM recipients WHERE message = ? AND state IN {ACTIVE_STATES_SQL}", (message,)).fetchone()
        if active is not None:
            return None
    rows = conn.execute(
        "SELECT id, address, last_reply, last_host, dsn_pending, dsn_orcpt FROM recipients WHERE message = ? AND dsn_pending != 0 ORDER BY id",
        (message,),
    ).fetchall()
    if not rows:
        return None
    head = conn.execute("SELECT queue_id, mail_from, received_at, tenant, dsn_ret, dsn_envid FROM messages WHERE id = ?", (message,)).fetchone()
    return DsnBatch(
        message=message,
        queue_id=head["queue_id"],
        mail_from=head["mail_from"],
        received_at=head["received_at"],
        failures=tuple(
            FailedRecipient(r["id"], r["address"], r["last_reply"] or "", r["last_host"], _ACTIONS.get(r["dsn_pending"], "failed"), r["dsn_orcpt"])
            for r in rows
        ),
        tenant=head["tenant"],
        ret=head["dsn_ret"],
        envid=head["dsn_envid"],
    )


def _pending_dsn_messages(conn: sqlite3.Connection) -> list[int]:
    return [row["message"] for row in conn.execute("SELECT DISTINCT message FROM recipients WHERE dsn_pending != 0")]


def _store_dsn(conn: sqlite3.Connection, batch: DsnBatch, dsn: NewMessage, now: float, shard: int | None) -> tuple[Job, list[str]]:
    conn.execute(
        f"UPDATE recipients SET dsn_delayed = dsn_delayed OR dsn_pending = 3, dsn_pending = 0 WHERE id IN ({', '.join('?' * len(batch.failures))})",
        [f.recipient for f in batch.failures],
    )
    _bump(conn, "bounces")
    job = _insert(conn, dsn, now, shard=shard)
    return job, _conclude(conn, {batch.message})[1]


def _recover(conn: sqlite3.Connection) -> int:
    count = conn.execute(
        "UPDATE recipients SET state = ? WHERE state = ?", (State.QUEUED.value, State.IN_FLIGHT.value)
    ).rowcount
    _bump(conn, "recovered_in_flight", count)
    return count


_PENDING_QUERY = f"""
SELECT m.id AS message, m.queue_id, m.mail_from, coalesce(r.pool, m.pool) AS pool, m.reasons, m.header_message_id, m.received_at,
       m.tenant, m.envelope_from, r.id AS recipient, r.address, r.state, r.attempts, r.next_attempt
FROM recipients r JOIN messages m ON m.id = r.message
WHERE r.state NOT IN {FINAL_STATES_SQL}
ORDER BY m.id, r.state, r.next_attempt, pool, r.id
"""


def _pending(conn: sqlite3.Connection) -> list[Job]:
    """One Job per message, state, next attempt and pool."""
    jobs: list[Job] = []
    group: list[sqlite3.Row] = []

    def flush() -> None:
        if group:
            first = group[0]
            jobs.append(
                Job(
                    message=first["message"],
                    queue_id=first["queue_id"],
                    mail_from=first["mail_from"],
                    pool=first["pool"],
                    reasons=decode_reasons(first["reasons"]),
                    header_message_id=first["header_message_id"],
                    received_at=first["received_at"],
                    recipients=tuple((row["recipient"], row["address"]) for row in group),
                    attempts=max(row["attempts"] for row in group),
                    next_attempt=first["next_attempt"],
                    tenant=first["tenant"],
                    envelope_from=first["envelope_from"],
                )
            )
            group.clear()

    key: tuple[Any, ...] | None = None
    for row in conn.execute(_PENDING_QUERY):
        row_key = (row["message"], row["state"], row["next_attempt"], row["pool"])
        if row_key != key:
            flush()
            key = row_key
        group.append(row)
    flush()
    return jobs


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    return {row["name"]: row["value"] for row in conn.execute("SELECT name, value FROM counters")}
