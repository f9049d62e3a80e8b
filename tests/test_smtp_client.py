"""The Rust SMTP client engine (rust/smtp/client.rs) through its binding, and the relay's
delivery over it: a hypothesis model of what every recipient must get for any server replies,
with or without PIPELINING and CHUNKING, in any split of the server's bytes; and the relay
against a server that records its reads, to show the round trips: with PIPELINING and CHUNKING
a message is one read (MAIL, RCPT, BDAT and the body), with PIPELINING alone two (the
commands to DATA, then the body)."""

from __future__ import annotations

import email
import itertools
import string
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool._core import SMTP_CLIENT_EVENTS, SmtpClient, dot_stuff
from deliverypool.cli.demo import common_port
from deliverypool.outbound.client import DONE, EVENT_NAMES, READY, SEND_BODY
from deliverypool.outbound.scheduler import MAX_HELD_BODY
from deliverypool.outbound.transaction import WITH_COMMANDS
from deliverypool.queue.listing import listing
from deliverypool.queue.spool import BODIES, FILE_THRESHOLD, BodyFile
from tests.recording_sink import recording_sink
from tests.smtp_sinks import eventually, message, relay_config
from tests.test_outbound_hardening import submit
from tests.test_relay import running

Run = Callable[[Coroutine[Any, Any, Any]], Any]


def test_event_names_match_the_engine() -> None:
    assert SMTP_CLIENT_EVENTS == EVENT_NAMES


# --- the engine against a reference model -------------------------------------------------


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    def wire(self) -> bytes:
        *head, last = self.lines
        return b"".join(f"{self.code}-{line}\r\n".encode() for line in head) + f"{self.code} {last}\r\n".encode()

    @property
    def text(self) -> str:
        return f"{self.code} " + "\n".join(self.lines)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def too_many(self) -> bool:
        return self.code == 452 and (self.lines[0].startswith("4.5.3 ") or "too many recipients" in self.text.lower())


TEXT = st.text(alphabet=string.ascii_letters + string.digits + " .:-<>@", min_size=0, max_size=12)


def replies(codes: list[int]) -> st.SearchStrategy[Reply]:
    return st.builds(Reply, st.sampled_from(codes), st.lists(TEXT, min_size=1, max_size=3).map(tuple))


TOO_MANY = Reply(452, ("4.5.3 Too many recipients",))
RCPT_REPLIES = st.one_of(replies([250, 251]), replies([450, 451, 550, 553]), st.just(TOO_MANY))


def reference(pipelining: bool, chunking: bool, mail: Reply, rcpts: list[Reply], data: Reply, final: Reply) -> list[str | None]:
    """What each recipient must get (RFC 5321, 2920, 3030), None for untried: MAIL refused is
    everyone's; a 452 too-many after the first recipient (or after one was accepted) leaves it
    for the next transaction (and, without PIPELINING, every one after it: no RCPT is sent
    after it); accepted ones get DATA's refusal, or the reply to the body."""
    if not mail.ok:
        return [mail.text] * len(rcpts)
    out: list[str | None] = []
    accepted = False
    stopped = False
    for index, reply in enumerate(rcpts):
        if stopped:
            out.append(None)
        elif reply.ok:
            out.append("accepted")
            accepted = True
        elif reply.too_many and (index > 0 or accepted):
            out.append(None)
            stopped = not pipelining
        else:
            out.append(reply.text)
    if accepted:
        end = final if chunking or data.code == 354 else data
        out = [end.text if r == "accepted" else r for r in out]
    return out


class ScriptedServer:
    """Answers the client's byte stream from a script, one reply per command, as it comes."""

    def __init__(self, mail: Reply, rcpts: list[Reply], data: Reply, final: Reply) -> None:
        self.mail, self.rcpts, self.data, self.final = mail, rcpts, data, final
        self.buffer = b""
        self.rcpt_index = 0
        self.in_data = False
        self.chunk = 0
        self.commands: list[list[bytes]] = []  # the command lines of each client write

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        self.commands.append([])
        out = b""
        while self.buffer:
            if self.chunk:
                taken = min(self.chunk, len(self.buffer))
                self.chunk -= taken
                self.buffer = self.buffer[taken:]
                if not self.chunk:
                    out += self.final.wire()
                continue
            if self.in_data:
                end = 0 if self.buffer.startswith(b".\r\n") else self.buffer.find(b"\r\n.\r\n") + 2
                if end == 1:
                    break
                self.buffer = self.buffer[end + 3 :]
                self.in_data = False
                out += self.final.wire()
                continue
            line, sep, rest = self.buffer.partition(b"\r\n")
            if not sep:
                break
            self.buffer = rest
            self.commands[-1].append(line)
            verb = line.split(b" ", 1)[0]
            if verb == b"MAIL":
                out += self.mail.wire()
            elif verb == b"RCPT":
                out += self.rcpts[self.rcpt_index].wire()
                self.rcpt_index += 1
            elif verb == b"DATA":
                out += self.data.wire()
                self.in_data = self.data.code == 354
            elif verb == b"BDAT":
                self.chunk = int(line.split()[1])
            else:
                out += b"500 what\r\n"
        return out


@given(
    pipelining=st.booleans(),
    chunking=st.booleans(),
    mail=st.one_of(replies([250]), replies([250]), replies([451, 550])),
    rcpts=st.lists(RCPT_REPLIES, min_size=1, max_size=6),
    data=st.one_of(st.just(Reply(354, ("go",))), replies([451, 554])),
    final=replies([250, 451, 552, 554]),
    splits=st.lists(st.integers(1, 40), min_size=1, max_size=30),
)
def test_every_recipient_gets_what_the_rfcs_say_in_any_split(
    pipelining: bool, chunking: bool, mail: Reply, rcpts: list[Reply], data: Reply, final: Reply, splits: list[int]
) -> None:
    client = SmtpClient(ehlo_name="relay.test", tls="none", peer="mx.test[192.0.2.1]:25")
    extensions = ["mx.test", "8BITMIME"] + ["PIPELINING"] * pipelining + ["CHUNKING"] * chunking
    assert client.receive(b"220 mx.test\r\n" + Reply(250, tuple(extensions)).wire())[0] == READY
    server = ScriptedServer(mail, rcpts, data, final)
    body = b"Subject: x\r\n\r\n.hi\r\n"
    recipients = [f"r{i}@x.test" for i in range(len(rcpts))]
    event, output = client.begin("s@x.test", recipients, size=len(body), eight_bit=False, in_memory=True, ends_with_crlf=True)
    pending = b""

    def act(event: int, output: bytes | None) -> int:
        """Writes what the client wrote (and the body when due); the server's answer waits."""
        nonlocal pending
        wire = output or b""
        if event == SEND_BODY:
            frame = client.body_frame()
            assert frame is not None
            stuff, suffix = frame
            wire += (dot_stuff(body) if stuff else body) + suffix
        if wire:
            pending += server.feed(wire)
        if client.holds_input:
            return act(*client.receive(b""))
        return event

    event = act(event, output)
    cuts = itertools.cycle(splits)
    while event != DONE and pending:
        size = next(cuts)
        piece, pending = pending[:size], pending[size:]
        event = act(*client.receive(piece))
    assert event == DONE, (EVENT_NAMES[event], pending)
    outcome = client.outcome()
    assert outcome is not None and not outcome.reconnect
    got = [entry[0] if entry is not None else None for entry in outcome.replies]
    assert got == reference(pipelining, chunking, mail, rcpts, data, final)
    assert all(entry is None or entry[1] for entry in outcome.replies), "every reply is the server's"
    # Without PIPELINING one command per write; with it, everything to DATA (or BDAT) in the first.
    first, *_ = [c for c in server.commands if c]
    if pipelining:
        assert first[0].startswith(b"MAIL") and first[-1] in (b"DATA", f"BDAT {len(body)} LAST".encode())
        assert len(first) == len(rcpts) + 2
    else:
        assert all(len(c) <= 1 for c in server.commands)
    assert client.ready  # in step with the server: the connection can carry the next message


# --- the relay's delivery, counted in reads --------------------------------------------------


@pytest.mark.parametrize(("pipelining", "chunking", "reads"), [(True, True, 1), (True, False, 2), (False, True, 4), (False, False, 5)])
def test_round_trips_per_message(aio_run: Run, tmp_path: Path, pipelining: bool, chunking: bool, reads: int) -> None:
    """Three messages to one destination. With PIPELINING and CHUNKING each
    is one read at the server (MAIL, both RCPTs, BDAT and the body in one write: one round
    trip); with PIPELINING alone two (the commands to DATA, then the body after 354); without
    PIPELINING one per command (aiosmtplib's way, before: five for two recipients). The bodies
    arrive byte for byte, 8-bit text declared as such; no RSET between messages that went well."""
    destination = "127.0.0.21"
    port = common_port([destination])
    conf = relay_config(tmp_path / "spool", smarthost=f"{destination}:{port}")
    bodies = [message(f"m{n}", body=f"line {n}\r\n.dot\r\n\u00e9t\u00e9\r\n" if n == 1 else f"line {n}\r\n") for n in range(3)]

    async def main() -> None:
        async with recording_sink(destination, port, pipelining=pipelining, chunking=chunking) as sink, running(conf):
            for body in bodies:
                await submit(conf, body, ["a@dest.test", "b@dest.test"])
            delivered = await sink.wait_for(3)
            await eventually(lambda: all(r.finished for r in listing(conf.spool.directory)), what="finished")
            by_subject = {email.message_from_bytes(m.content)["Subject"]: m for m in delivered}
            for n, body in enumerate(bodies):
                got = by_subject[f"m{n}"]
                assert got.content.endswith(body) and got.content.startswith(b"Received: ")
                assert got.recipients == ["a@dest.test", "b@dest.test"]
                assert got.via == ("BDAT" if chunking else "DATA")
                assert ("BODY=8BITMIME" in got.mail_args) == (n == 1)
                assert f"SIZE={len(got.content)}" in got.mail_args
            transactions = sink.transaction_reads()
            assert len(transactions) == 3
            assert [len(t) for t in transactions] == [reads] * 3, transactions
            assert not any(b"RSET" in data for _, data in sink.reads)

    aio_run(main())


@pytest.mark.parametrize("held", [True, False], ids=["held", "from-file"])
def test_a_body_file_goes_with_bdat(aio_run: Run, tmp_path: Path, held: bool) -> None:
    """A message over 256 KiB is stored in a file and sent with BDAT after the RCPT replies,
    byte for byte, dots and all: from memory when the scheduler holds it (within its memory
    budget), else from the file (sendfile(2) on the stdlib loop, in pieces on uvloop)."""
    destination = "127.0.0.21"
    port = common_port([destination])
    conf = relay_config(tmp_path / "spool", smarthost=f"{destination}:{port}")
    if not held:
        conf = conf.model_copy(update={"spool": conf.spool.model_copy(update={"memory_budget": 1})})
    body = message("big", body="".join(f".line {n:06d} " + "x" * 60 + "\r\n" for n in range(6000)))

    async def main() -> None:
        async with recording_sink(destination, port) as sink, running(conf) as relay:
            read_back: list[int] = []
            stored = relay.spool.stored

            async def spy(message_id: int) -> bytes | BodyFile:
                read_back.append(message_id)
                return await stored(message_id)

            relay.spool.stored = spy  # type: ignore[method-assign]
            await submit(conf, body, ["a@dest.test"])
            (got,) = await sink.wait_for(1)
            assert got.via == "BDAT" and got.content.endswith(body)
            assert any(b"BDAT" in data and b"RCPT" not in data for _, data in sink.reads), "BDAT after the RCPT replies"
            assert bool(read_back) is not held, read_back
            # A shorter one is written over the first one's spent file, whose tail stays: it is
            # sent by its own size (sendfile's count, the pieces' end), not the file's.
            await eventually(lambda: bool(relay.spool._spent), what="the first body file kept, spent")
            (spent,) = relay.spool._spent
            shorter = message("big2", body="".join(f"line {n:06d} " + "y" * 60 + "\r\n" for n in range(4000)))
            await submit(conf, shorter, ["a@dest.test"])
            got = (await sink.wait_for(2))[1]
            assert got.via == "BDAT" and got.content.endswith(shorter), got.content[-200:]
            assert [path.name for path in (relay.spool.directory / BODIES).iterdir()] == [spent], "written over, no new file"
            assert not sink.unknown, sink.unknown[:3]

    aio_run(main())


def test_bodies_around_the_size_thresholds_arrive_as_accepted(aio_run: Run, tmp_path: Path) -> None:
    """Stored sizes one byte under, at and over the spool's file threshold (which is also the
    largest body sent with the commands) and the scheduler's MAX_HELD_BODY: every body is
    delivered byte for byte as the relay accepted it (its Received field included); one sent
    with the commands is in the read that holds MAIL, a larger one follows the RCPT replies."""
    destination = "127.0.0.21"
    port = common_port([destination])
    conf = relay_config(tmp_path / "spool", smarthost=f"{destination}:{port}")
    assert FILE_THRESHOLD == WITH_COMMANDS

    def sized(subject: str, size: int) -> bytes:
        head = message(subject, body="")
        line = b".x" + b"y" * 76 + b"\r\n"
        filler = line * ((size - len(head)) // len(line) + 1)
        cut = filler[: size - len(head) - 2].rstrip(b"\r") + b"\r\n"
        return head + b"z" * (size - len(head) - len(cut)) + cut

    async def main() -> None:
        async with recording_sink(destination, port) as sink, running(conf) as relay:
            accepted: dict[str, bytes] = {}
            relay.on_accept = lambda _, content: accepted.__setitem__(email.message_from_bytes(content)["Subject"], content)
            await submit(conf, message("probe"), ["a@dest.test"])
            await sink.wait_for(1)
            trace = len(accepted["probe"]) - len(message("probe"))
            sizes = {f"s{n}": size for n, size in enumerate(t + d for t in (FILE_THRESHOLD, MAX_HELD_BODY) for d in (-1, 0, 1))}
            for subject, size in sizes.items():
                await submit(conf, sized(subject, size - trace), ["a@dest.test"])
            delivered = {email.message_from_bytes(m.content)["Subject"]: m for m in await sink.wait_for(1 + len(sizes), timeout=60)}
            for subject, size in sizes.items():
                assert len(accepted[subject]) == size, (subject, len(accepted[subject]), size)
                assert delivered[subject].content == accepted[subject], subject
            for reads in sink.transaction_reads()[1:]:
                size = int(reads[0].split(b"SIZE=")[1].split()[0])
                assert (b"BDAT" in reads[0]) is (size <= WITH_COMMANDS), (size, reads[0][:200])

    aio_run(main())


def test_refused_recipients_and_a_refused_sender(aio_run: Run, tmp_path: Path) -> None:
    """Per-recipient replies over PIPELINING and CHUNKING: the refused one fails with a DSN (its
    own reply in it), the others are delivered in the same transaction."""
    destination = "127.0.0.21"
    port = common_port([destination])
    conf = relay_config(tmp_path / "spool", smarthost=f"{destination}:{port}")

    async def main() -> None:
        async with recording_sink(destination, port, rcpt_replies={"no@dest.test": "550 5.1.1 <no@dest.test>: unknown"}) as sink, running(conf):
            await submit(conf, message("mixed", message_id="<mixed@t>"), ["a@dest.test", "no@dest.test", "b@dest.test"])
            first, dsn = await sink.wait_for(2)
            assert first.recipients == ["a@dest.test", "b@dest.test"]
            assert dsn.mail_from == "" and b"Status: 5.1.1" in dsn.content and b"550 5.1.1 <no@dest.test>: unknown" in dsn.content

    aio_run(main())
