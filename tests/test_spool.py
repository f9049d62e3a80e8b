"""The SQLite spool: group commit, per-recipient state, recovery, the lock, and the DSN stored
in the same transaction as the failure."""

from __future__ import annotations

import asyncio
import contextlib
import re
import random
import sqlite3
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliverypool.errors import SpoolLocked
from deliverypool.queue.listing import listing, read_counters
from deliverypool.queue.spool import BODIES, DsnRequest, Job, NewMessage, Outcome, Spool, State

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def new(n: int = 0, recipients: tuple[str, ...] = ("a@x.test",), pool: str = "normal") -> NewMessage:
    return NewMessage("s@y.test", recipients, f"Subject: {n}\r\n\r\nbody\r\n".encode(), pool, ("dsn",) if pool != "normal" else (), None, f"<{n}@y>")


def test_concurrent_accepts_share_commits(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Spool(tmp_path) as spool:
            jobs = await asyncio.gather(*(spool.accept(new(n)) for n in range(300)))
            assert len({job.queue_id for job in jobs}) == 300
            # 300 accepts, one transaction each if there were no group commit.
            assert spool.stats.changes >= 300
            assert spool.stats.commits < 100
            assert spool.stats.largest_batch > 3
            assert len(await spool.pending()) == 300

    aio_run(main())


def test_settings_make_a_250_durable(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Spool(tmp_path) as spool:
            assert spool._conn is not None
            assert spool._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    aio_run(main())


def test_a_delivered_body_is_not_written_again(aio_run: Run, tmp_path: Path) -> None:
    """Removing a delivered message frees its body's pages without zeroing them
    (``secure_delete = FAST``; this SQLite is built with secure delete on, which wrote every
    freed page into the WAL once more and then into the database at the checkpoint: a second
    copy of every body). Accepting three 100 KiB messages takes ~75 WAL frames; removing them
    must take a handful, not ~75 more."""

    def frames() -> int:
        wal = tmp_path / "spool.sqlite3-wal"
        return (wal.stat().st_size - 32) // (4096 + 24) if wal.exists() else 0

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            body = b"Subject: big\r\n\r\n" + b"x" * 78 * 1300 + b"\r\n"
            before = frames()
            jobs = [await spool.accept(NewMessage("s@y.test", ("a@x.test",), body + bytes([n]), "normal", (), None, None)) for n in range(3)]
            grown = frames() - before
            assert grown >= 3 * len(body) // 4096
            ids = [rid for job in jobs for rid, _ in job.recipients]
            await spool.mark_in_flight(ids)
            before = frames()
            await spool.record([Outcome(rid, State.DELIVERED, "250 ok", attempts=1) for rid in ids])
            assert not listing(tmp_path)
            assert frames() - before < grown // 4, (frames() - before, grown)

    aio_run(main())


def test_recipient_states_and_cleanup(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Spool(tmp_path) as spool:
            job = await spool.accept(new(1, ("a@x.test", "b@x.test", "c@x.test")))
            (a, _), (b, _), (c, _) = job.recipients
            await spool.mark_in_flight([a, b, c])
            states = {row.address: row.state for row in listing(tmp_path)}
            assert set(states.values()) == {"in-flight"}
            await spool.record(
                [
                    Outcome(a, State.DELIVERED, "250 ok", attempts=1),
                    Outcome(b, State.DEFERRED, "451 later", next_attempt=1e12, attempts=1),
                    Outcome(c, State.FAILED, "550 no", attempts=1),
                ]
            )
            rows = {row.address: row for row in listing(tmp_path)}
            assert rows["a@x.test"].state == "delivered"
            assert rows["b@x.test"].state == "deferred" and rows["b@x.test"].next_attempt == 1e12
            assert rows["b@x.test"].last_reply == "451 later" and rows["b@x.test"].attempts == 1
            assert rows["c@x.test"].state == "failed"
            (pending,) = await spool.pending()
            assert pending.recipients == ((b, "b@x.test"),) and pending.next_attempt == 1e12
            # The last recipient finishes: the message leaves the spool.
            await spool.record([Outcome(b, State.DELIVERED, "250 ok", attempts=2)])
            assert listing(tmp_path) == []
            assert await spool.pending() == []
            counters = await spool.counters()
            assert counters["delivered"] == 2 and counters["failed"] == 1 and counters["accepted"] == 1

    aio_run(main())


def test_a_message_delivered_whole_leaves_at_once_unless_a_success_dsn_is_due(aio_run: Run, tmp_path: Path) -> None:
    """Outcomes that deliver every recipient a message has left delete it in one statement (its
    body file too); not when other recipients remain, and not when one asked NOTIFY=SUCCESS:
    that message stays until its "relayed" DSN is stored."""

    def delivered(job: Job) -> list[Outcome]:
        return [Outcome(rid, State.DELIVERED, "250 ok", attempts=1, message=job.message) for rid, _ in job.recipients]

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            whole = await spool.accept(new(1, ("a@x.test", "b@x.test")))
            assert await spool.record(delivered(whole)) == []
            assert listing(tmp_path) == []
            big = NewMessage("s@y.test", ("a@x.test",), b"Subject: big\r\n\r\n" + b"x" * 78 * 4000 + b"\r\n", "normal")
            filed = await spool.accept(big)
            assert len(list((tmp_path / BODIES).iterdir())) == 1
            await spool.record(delivered(filed))
            # Its file is kept, spent, for the next large body to be written over.
            assert listing(tmp_path) == [] and len(list((tmp_path / BODIES).iterdir())) == 1
            # One recipient of two: the other stays queued; the second finishes the message.
            split = await spool.accept(new(3, ("a@x.test", "b@x.test")))
            first, second = delivered(split)
            await spool.record([first])
            assert [(row.address, row.state) for row in listing(tmp_path)] == [("a@x.test", "delivered"), ("b@x.test", "queued")]
            await spool.record([second])
            assert listing(tmp_path) == []
            # A success DSN asked: the message waits for its DSN.
            asked = NewMessage("s@y.test", ("a@x.test", "b@x.test"), b"Subject: 4\r\n\r\nbody\r\n", "normal", dsn=DsnRequest(notify=("SUCCESS", None)))
            job = await spool.accept(asked)
            (batch,) = await spool.record(delivered(job))
            assert [(f.address, f.action) for f in batch.failures] == [("a@x.test", "relayed")]
            assert {row.state for row in listing(tmp_path)} == {"delivered"}
            counters = await spool.counters()
            assert counters["delivered"] == 7 and counters["accepted"] == 4

    aio_run(main())


def test_recovery_requeues_in_flight_and_counts_them(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        spool = Spool(tmp_path)
        await spool.open()
        first = await spool.accept(new(1))
        second = await spool.accept(new(2))
        await spool.mark_in_flight([rid for rid, _ in first.recipients])
        await spool.close()
        # The first was being sent when the process stopped: it may already have arrived.
        spool = Spool(tmp_path)
        recovery = await spool.open()
        assert recovery.requeued_in_flight == 1
        assert sorted(job.queue_id for job in recovery.pending) == sorted([first.queue_id, second.queue_id])
        assert {row.state for row in listing(tmp_path)} == {"queued"}
        await spool.close()
        assert read_counters(tmp_path)["recovered_in_flight"] == 1

    aio_run(main())


def test_a_second_process_cannot_open_the_spool(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Spool(tmp_path):
            with pytest.raises(SpoolLocked):
                await Spool(tmp_path).open()
        # Closed: free again.
        async with Spool(tmp_path):
            pass

    aio_run(main())


def test_failures_are_kept_until_their_dsn_is_stored(aio_run: Run, tmp_path: Path) -> None:
    """A failure due a DSN is marked in the spool; the batch ends when no recipient of the
    message is queued or in flight; the DSN is stored with the marks cleared, and only then is
    the message removed. A restart in between finds the batch again."""

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            job = await spool.accept(NewMessage("s@y.test", ("a@x.test", "b@x.test", "c@x.test"), b"Subject: s\r\n\r\n", "normal"))
            (a, _), (b, _), (c, _) = job.recipients
            # One failure while two recipients are still queued: the batch is not over.
            assert await spool.record([Outcome(a, State.FAILED, "550 no such user", attempts=1, host="mx.x.test", dsn=True)]) == []
            # One deferred, one failed: nothing queued or in flight any more, the batch is over.
            (batch,) = await spool.record(
                [
                    Outcome(b, State.FAILED, "550 5.1.1 unknown", attempts=1, dsn=True),
                    Outcome(c, State.DEFERRED, "451 later", next_attempt=9e9, attempts=1),
                ]
            )
            assert [(f.address, f.reply, f.host) for f in batch.failures] == [
                ("a@x.test", "550 no such user", "mx.x.test"),
                ("b@x.test", "550 5.1.1 unknown", None),
            ]
        async with Spool(tmp_path) as spool:
            assert [len(b.failures) for b in await spool.dsn_batches()] == [2], "found again after a restart"
            dsn = await spool.store_dsn(batch, NewMessage("", ("s@y.test",), b"Subject: bounce\r\n\r\n", "high-risk", ("dsn",)))
            assert dsn.pool == "high-risk" and dsn.mail_from == ""
            assert await spool.dsn_batches() == []
            assert (await spool.counters())["bounces"] == 1
            # c is still deferred: the original stays; c failing later makes a batch of its own.
            (again,) = await spool.record([Outcome(c, State.FAILED, "451 later", attempts=2, dsn=True)])
            assert [f.address for f in again.failures] == ["c@x.test"]
            await spool.store_dsn(again, NewMessage("", ("s@y.test",), b"Subject: bounce 2\r\n\r\n", "high-risk", ("dsn",)))
            rows = listing(tmp_path)
            assert sorted((r.mail_from, r.state) for r in rows) == [("", "queued"), ("", "queued")], "original removed"
            # A change that fails rolls back alone; the others in its batch still commit.
            bad = spool.accept(NewMessage("s@y.test", (), b"x", "normal"))
            good = spool.accept(new(3))
            results = await asyncio.gather(bad, good, return_exceptions=True)
            assert isinstance(results[0], ValueError)
            assert len(listing(tmp_path)) == 3

    aio_run(main())


def test_a_change_that_fails_after_writing_is_undone_alone(aio_run: Run, tmp_path: Path) -> None:
    """The changes of a batch run without savepoints; when one fails, the batch runs again with a
    savepoint per change: what the failed one wrote is gone, the others commit once each."""

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            calls: list[str] = []

            def half_done(conn: sqlite3.Connection) -> None:
                calls.append("bad")
                conn.execute("UPDATE counters SET value = value + 100 WHERE name = 'accepted'")
                raise RuntimeError("half done")

            before = spool.run(lambda conn: calls.append("before") or conn.execute("UPDATE counters SET value = value + 1 WHERE name = 'failed'"))
            bad = spool.run(half_done)
            after = spool.accept(new(1))
            results = await asyncio.gather(before, bad, after, return_exceptions=True)
            assert isinstance(results[1], RuntimeError) and str(results[1]) == "half done"
            assert not isinstance(results[2], BaseException) and results[2].queue_id
            counters = await spool.counters()
            assert counters["accepted"] == 1, "the failed change's write was undone, the accept counted once"
            assert counters["failed"] == 1, "the change before it counted once, though it ran twice"
            assert calls == ["before", "bad", "before", "bad"]
            assert len(listing(tmp_path)) == 1
            assert spool.stats.commits >= 1
            # The next batch takes the fast path again.
            await spool.accept(new(2))
            assert len(listing(tmp_path)) == 2

    aio_run(main())


def test_counts_of_a_failed_change_are_undone_with_it(aio_run: Run, tmp_path: Path) -> None:
    """The counters are added up per transaction and written once before COMMIT: a change that
    counts and then fails takes its counts with it, a batch's counts are each written once."""
    from deliverypool.queue import spool as spool_module

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            def counts_then_fails(conn: sqlite3.Connection) -> None:
                spool_module._bump(conn, "accepted", 100)
                spool_module._bump(conn, "bounces", 7)
                raise RuntimeError("after counting")

            results = await asyncio.gather(
                spool.accept(new(1)), spool.run(counts_then_fails), spool.accept(new(2)), return_exceptions=True
            )
            assert isinstance(results[1], RuntimeError)
            counters = await spool.counters()
            assert counters["accepted"] == 2 and counters["bounces"] == 0
            # Outside the writer's transactions (recovery at open) a count is written at once.
            jobs = [await spool.accept(new(n)) for n in range(3, 6)]
            await spool.mark_in_flight(rid for job in jobs for rid, _ in job.recipients)
        async with Spool(tmp_path) as spool:
            counters = await spool.counters()
            assert counters["accepted"] == 5 and counters["recovered_in_flight"] == 3

    aio_run(main())


def test_a_queue_id_drawn_twice_is_drawn_again(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Queue ids are unique per spool by the table's index, not by a look-up before each insert:
    a random suffix that comes up again in the same second is drawn again."""
    from deliverypool.queue import spool as spool_module

    drawn = iter(["00000000AAAA", "00000000AAAA", "00000000AAAA", "00000000BBBB"])
    monkeypatch.setattr(spool_module, "new_queue_id", lambda shard=None: next(drawn))

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            first = await spool.accept(new(1))
            second = await spool.accept(new(2))
            assert (first.queue_id, second.queue_id) == ("00000000AAAA", "00000000BBBB")
            assert {row.queue_id for row in listing(tmp_path)} == {"00000000AAAA", "00000000BBBB"}
            assert (await spool.counters())["accepted"] == 2

    aio_run(main())


def test_queue_ids_name_the_shard(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers' shards drawing the same random digits in the same second still hand out
    different queue ids: the shard's number is in them (a spool of its own has none)."""
    monkeypatch.setattr(random, "getrandbits", lambda bits: 0xABABAB)

    async def main() -> None:
        ids = []
        for shard in (0, 1, 0x2A, None):
            async with Spool(tmp_path / f"shard-{shard}", shard=shard) as spool:
                job = await spool.accept(new(1))
                ids.append(job.queue_id)
                assert [row.queue_id for row in listing(tmp_path / f"shard-{shard}")] == [job.queue_id]
        assert [queue_id[6:] for queue_id in ids] == ["00ABABAB", "01ABABAB", "2AABABAB", "ABABAB"]
        assert all(re.fullmatch(r"[0-9A-F]{6}", queue_id[:6]) for queue_id in ids)

    aio_run(main())
    with pytest.raises(ValueError, match="0 to 255"):
        Spool(tmp_path, shard=256)


def test_a_message_accepted_in_flight_is_a_possible_duplicate_after_a_crash(aio_run: Run, tmp_path: Path) -> None:
    """`accept(in_flight=True)` (a connection takes the message at once) stores its recipients in
    flight in the same transaction; recovery requeues and counts them, as it does those marked by
    `mark_in_flight`."""

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            await spool.accept(new(1, ("a@x.test", "b@x.test")), in_flight=True)
            await spool.accept(new(2))
            assert sorted((row.address, row.state) for row in listing(tmp_path)) == [
                ("a@x.test", "in-flight"), ("a@x.test", "queued"), ("b@x.test", "in-flight"),
            ]
        async with Spool(tmp_path) as spool:
            assert {row.state for row in listing(tmp_path)} == {"queued"}
            assert (await spool.counters())["recovered_in_flight"] == 2

    aio_run(main())


def test_listing_reads_while_the_writer_holds_the_database(aio_run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Spool(tmp_path) as spool:
            await spool.accept(new(1))
            # `deliverypool queue` opens the file read-only from another connection.
            conn = sqlite3.connect(f"file:{tmp_path / 'spool.sqlite3'}?mode=ro", uri=True)
            assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
            conn.close()
            assert len(listing(tmp_path)) == 1

    aio_run(main())


def test_delivered_mail_gives_its_space_back_to_the_file_system(aio_run: Run, tmp_path: Path) -> None:
    """A burst's pages and write-ahead log stay allocated after the mail is delivered unless the
    spool gives them back; in low-space mode it does (the full-disk scenario stayed "full"
    forever without it: its two shards held 17 MB of freed pages and WAL on a 32 MB disk)."""
    body = b"Subject: big\r\n\r\n" + b"x" * 60_000 + b"\r\n"

    async def main() -> tuple[int, int, int]:
        async with Spool(tmp_path) as spool:
            assert spool._conn is not None
            assert spool._conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
            jobs = await asyncio.gather(*(spool.accept(NewMessage("s@y.test", ("a@x.test",), body, "normal", (), None, None)) for _ in range(200)))
            await spool.record([Outcome(job.recipients[0][0], State.DELIVERED, "250 ok", attempts=1) for job in jobs])
            before = spool.path.stat().st_size + spool.path.with_name(spool.path.name + "-wal").stat().st_size
            free_pages = spool._conn.execute("PRAGMA freelist_count").fetchone()[0]
            await spool._loop_run(spool._give_back_space)
            after = spool.path.stat().st_size + spool.path.with_name(spool.path.name + "-wal").stat().st_size
            return before, after, free_pages

    before, after, free_pages = aio_run(main())
    assert free_pages > 2000  # 200 bodies of 60 KB in 4 KiB pages
    assert before > 12_000_000 and after < 1_000_000, (before, after)


def test_a_spool_from_before_incremental_vacuum_is_converted_at_open(aio_run: Run, tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "spool.sqlite3")
    old.execute("CREATE TABLE placeholder (x)")  # a database made without auto_vacuum
    old.execute("DROP TABLE placeholder")
    old.close()

    async def main() -> int:
        async with Spool(tmp_path) as spool:
            assert spool._conn is not None
            return int(spool._conn.execute("PRAGMA auto_vacuum").fetchone()[0])

    assert aio_run(main()) == 2


def test_bytes_and_none_are_bound_through_adapters_that_change_nothing() -> None:
    """The spool registers identity adapters for bytes and None (sqlite3 otherwise raises and
    formats two AttributeErrors inside each such parameter): a body is still stored as a blob,
    a None as NULL, and an adapter the application registered first is kept."""
    from deliverypool.queue import spool

    protocol = sqlite3.PrepareProtocol
    assert sqlite3.adapters[(bytes, protocol)](b"x") == b"x"
    assert sqlite3.adapters[(type(None), protocol)](None) is None
    conn = sqlite3.connect(":memory:")
    row = conn.execute("SELECT typeof(?), typeof(?), ?", (b"\x00\xff", None, b"\x00\xff")).fetchone()
    assert row == ("blob", "null", b"\x00\xff")

    def ours(value: bytes) -> str:
        return "theirs"

    # The registry is the module's own dict (register_adapter writes to it, not to an attribute
    # put in its place): emptied and filled back in place.
    saved = dict(sqlite3.adapters)
    try:
        sqlite3.adapters.clear()
        sqlite3.register_adapter(bytes, ours)
        spool.bind_bytes_and_none_directly()
        assert sqlite3.adapters[(bytes, protocol)] is ours
        assert sqlite3.adapters[(type(None), protocol)](None) is None
    finally:
        sqlite3.adapters.clear()
        sqlite3.adapters.update(saved)


# --- spent body files, written over ----------------------------------------------------------


def _large(tag: bytes, length: int) -> bytes:
    """A message over FILE_THRESHOLD (a body file), `length` bytes, every line naming `tag`."""
    head = b"Subject: " + tag + b"\r\n\r\n"
    line = tag * (76 // len(tag)) + b"\r\n"
    lines = line * ((length - len(head)) // len(line) + 1)
    return head + lines[: length - len(head) - 2] + b"\r\n"


def _delivered(job: Job) -> list[Outcome]:
    return [Outcome(rid, State.DELIVERED, "250 ok", attempts=1, message=job.message) for rid, _ in job.recipients]


def _lengths(directory: Path) -> list[int]:
    """The lengths of the files in `directory` (one being removed meanwhile left out)."""
    lengths = []
    for path in directory.iterdir():
        with contextlib.suppress(FileNotFoundError):
            lengths.append(path.stat().st_size)
    return sorted(lengths)


async def _read_back(spool: Spool, job: Job) -> tuple[bytes, bytes]:
    """A message's text as delivery reads it (chunks of the stored body) and as body() does."""
    stored = await spool.stored(job.message)
    pieces = [piece async for piece in spool.chunks(stored, size=64 * 1024)]
    # Each piece ends a line (dot-stuffed alone, a piece must not split one), and is about the
    # size asked for.
    assert all(piece.endswith(b"\n") and 0 < len(piece) <= 64 * 1024 + 100 for piece in pieces)
    return b"".join(pieces), await spool.body(job.message)


def test_a_spent_body_file_is_written_over_and_read_by_the_stored_size(aio_run: Run, tmp_path: Path) -> None:
    """A delivered message's body file is kept and the next large body is written over it (the
    same file: no new one), read back by its own size even when shorter than what the file
    held; never while a row still names it; the best fit is taken; spent files found at start
    are kept; low-space mode removes them."""
    from deliverypool.queue.spool import FILE_THRESHOLD, BodyFile

    bodies = tmp_path / BODIES
    a_text, b_text = _large(b"a", 3 * FILE_THRESHOLD), _large(b"b", 2 * FILE_THRESHOLD)

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            a = await spool.accept(NewMessage("s@y.test", ("r@x.test", "q@x.test"), a_text, "normal"))
            (a_file,) = bodies.iterdir()
            inode = a_file.stat().st_ino
            first, second = _delivered(a)
            await spool.record([first])
            # One recipient still queued: the row names the file, which is not spent.
            b = await spool.accept(NewMessage("s@y.test", ("r@x.test",), b_text, "normal"))
            assert len(list(bodies.iterdir())) == 2
            await spool.record([second])
            await spool.record(_delivered(b))
            assert listing(tmp_path) == [] and len(list(bodies.iterdir())) == 2
            # The shortest spent file as long as the body: B's, for a body of B's length less one
            # line; A's for one longer than B.
            short = await spool.accept(NewMessage("s@y.test", ("r@x.test",), _large(b"c", 2 * FILE_THRESHOLD - 78), "normal"))
            stored = await spool.stored(short.message)
            assert isinstance(stored, BodyFile) and stored.path.name != a_file.name
            assert stored.path.stat().st_size == len(b_text) > stored.size  # B's tail is still there
            assert await _read_back(spool, short) == (_large(b"c", 2 * FILE_THRESHOLD - 78),) * 2
            longer = await spool.accept(NewMessage("s@y.test", ("r@x.test",), _large(b"d", 2 * FILE_THRESHOLD + 78), "normal"))
            stored = await spool.stored(longer.message)
            assert isinstance(stored, BodyFile) and stored.path == a_file and a_file.stat().st_ino == inode
            assert await _read_back(spool, longer) == (_large(b"d", 2 * FILE_THRESHOLD + 78),) * 2
            # None spent now: a new file, named by its queue id.
            new = await spool.accept(NewMessage("s@y.test", ("r@x.test",), a_text, "normal"))
            assert len(list(bodies.iterdir())) == 3
            await spool.record(_delivered(short) + _delivered(longer) + _delivered(new))
            assert len(list(bodies.iterdir())) == 3
        # At start, files no row names are spent files again, and written over.
        async with Spool(tmp_path) as spool:
            again = await spool.accept(NewMessage("s@y.test", ("r@x.test",), b_text, "normal"))
            assert len(list(bodies.iterdir())) == 3
            assert await _read_back(spool, again) == (b_text, b_text)
            # Low space: the spent files are space to give back.
            spool._apply_space(True, 0)
            await asyncio.sleep(0.1)
            for _ in range(100):
                if len(list(bodies.iterdir())) == 1:
                    break
                await asyncio.sleep(0.05)
            assert [path.name for path in bodies.iterdir()] == [(await spool.stored(again.message)).path.name]  # type: ignore[union-attr]

    aio_run(main())


def test_spent_body_files_stay_within_their_budget(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spent files are kept up to `spent_files` bytes in all (`spool.spent_files`), each at most
    SPENT_LARGEST; the others are removed as their messages leave. Less than any body file keeps
    none."""
    from deliverypool.queue import spool as spool_module
    from deliverypool.queue.spool import FILE_THRESHOLD

    monkeypatch.setattr(spool_module, "SPENT_LARGEST", 3 * FILE_THRESHOLD)
    bodies = tmp_path / BODIES

    async def kept_after(spent_files: int, expected: list[int]) -> None:
        async with Spool(tmp_path, spent_files=spent_files) as spool:
            sizes = (4 * FILE_THRESHOLD, 2 * FILE_THRESHOLD, 2 * FILE_THRESHOLD, 2 * FILE_THRESHOLD)
            jobs = [await spool.accept(NewMessage("s@y.test", ("r@x.test",), _large(b"%d" % n, size), "normal")) for n, size in enumerate(sizes)]
            await spool.record([outcome for job in jobs for outcome in _delivered(job)])
            for _ in range(100):  # removals go on a file thread
                kept = _lengths(bodies)
                if kept == expected:
                    break
                await asyncio.sleep(0.05)
            assert kept == expected

    async def main() -> None:
        await kept_after(5 * FILE_THRESHOLD, [2 * FILE_THRESHOLD] * 2)
        # The spent files found at start count too: with room for none, they go.
        await kept_after(FILE_THRESHOLD, [])

    aio_run(main())


_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("accept"), st.integers(1, 4)),  # that many FILE_THRESHOLDs, about
        st.tuples(st.just("deliver"), st.integers(0, 7)),  # the live message at that index (modulo)
        st.tuples(st.just("restart"), st.just(0)),
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=25, deadline=None)
@given(steps=_STEPS, jitter=st.integers(0, 4000))
def test_any_run_of_accepts_deliveries_and_restarts_reads_every_message_back(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, int]], jitter: int
) -> None:
    """Whatever the order of large messages accepted, delivered and the spool reopened, every
    message still stored reads back as it was accepted (delivery's chunks and body()), no row's
    file is written over, and the spent files stay within their budget."""
    from deliverypool.queue.spool import FILE_THRESHOLD

    directory = tmp_path_factory.mktemp("spent")
    bodies = directory / BODIES

    async def main() -> None:
        live: list[tuple[Job, bytes]] = []
        spool = Spool(directory, spent_files=6 * FILE_THRESHOLD)
        await spool.open()
        try:
            for n, (step, value) in enumerate(steps):
                if step == "accept":
                    text = _large(b"%d" % n, value * FILE_THRESHOLD + 1 + jitter * n % 997)
                    live.append((await spool.accept(NewMessage("s@y.test", ("r@x.test",), text, "normal")), text))
                elif step == "deliver" and live:
                    job, _ = live.pop(value % len(live))
                    await spool.record(_delivered(job))
                elif step == "restart":
                    await spool.close()
                    spool = Spool(directory, spent_files=6 * FILE_THRESHOLD)
                    await spool.open()
                for job, text in live:
                    assert await _read_back(spool, job) == (text, text)
                assert spool._spent_bytes == sum(spool._spent.values()) <= 6 * FILE_THRESHOLD
                named = {(await spool.stored(job.message)).path.name for job, _ in live}  # type: ignore[union-attr]
                assert len(named) == len(live) and not named & set(spool._spent)
                assert named <= ({path.name for path in bodies.iterdir()} if bodies.is_dir() else set())
        finally:
            await spool.close()

    asyncio.run(main())


def test_a_spent_file_whose_write_fails_is_removed_and_forgotten(aio_run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written over, a spent file can fail like a new one (a full disk as it grows): the message
    is refused as a full disk, and the file, no longer the spool's, is removed."""
    import errno

    from deliverypool.errors import SpoolFull
    from deliverypool.queue import spool as spool_module
    from deliverypool.queue.spool import FILE_THRESHOLD

    bodies = tmp_path / BODIES
    written = spool_module.write_body_file

    def full_when_over(path: Path, data: bytes, *, over: bool = False) -> None:
        if over:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written(path, data, over=over)

    async def main() -> None:
        async with Spool(tmp_path) as spool:
            first = await spool.accept(NewMessage("s@y.test", ("r@x.test",), _large(b"a", 2 * FILE_THRESHOLD), "normal"))
            await spool.record(_delivered(first))
            (spent,) = spool._spent
            monkeypatch.setattr(spool_module, "write_body_file", full_when_over)
            with pytest.raises(SpoolFull):
                await spool.accept(NewMessage("s@y.test", ("r@x.test",), _large(b"b", 3 * FILE_THRESHOLD), "normal"))
            assert spent not in spool._body_files and not spool._spent and not (bodies / spent).exists()

    aio_run(main())
