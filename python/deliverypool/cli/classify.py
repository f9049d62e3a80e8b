"""`deliverypool classify`: the pool of each message in files, mboxes, Maildirs or stdin."""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from deliverypool._core import Decision, Policy, PolicyError, classify_many
from deliverypool.eventloop import run as run_async
from deliverypool.lookup.resolver import Nameserver
from deliverypool.lookup.sender import SenderDomainCheck, check_sender_domains
from deliverypool.mail.sources import read_messages
from deliverypool.routing.router import Router
from deliverypool.routing.scores import RspamdScores, Routed, ScoredRouter, Submission

__all__ = ["decision_record", "finite_float", "nameserver_argument", "run_classify"]

# Messages classified per call: large enough to use every core, small enough to stream.
BATCH_SIZE = 4096
# Messages rspamd is asked about at once (--rspamd).
RSPAMD_CONCURRENCY = 16


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nameserver_argument(text: str) -> str:
    try:
        Nameserver.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def decision_record(
    source: str, decision: Decision, sender_check: SenderDomainCheck | None = None, routed: Routed | None = None
) -> dict[str, Any]:
    """The JSON object `classify --json` prints for one message; with `routed` (--rspamd), its
    pool and reasons (the fallback may change them) and the spam verdict."""
    dsn = decision.dsn
    return {
        "source": source,
        "pool": decision.pool if routed is None else routed.pool,
        "reasons": list(decision.reasons if routed is None else routed.reasons),
        "dsn": None if dsn is None else {"kind": dsn.kind, "signals": list(dsn.signals)},
        "report_kind": decision.report_kind,
        "score": decision.score,
        "threshold": decision.threshold,
        "sender_domain": None if sender_check is None else sender_check.as_json(),
        "spam": None if routed is None or routed.spam is None else routed.spam.as_json(),
    }


class TableWriter:
    """Readable output: one aligned row per message."""

    HEADER = ("POOL", "REASONS", "REPORT", "SCORE", "SOURCE")

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.wrote_header = False

    def write(self, record: dict[str, Any]) -> None:
        if not self.wrote_header:
            self._row(self.HEADER)
            self.wrote_header = True
        score = "-" if record["score"] is None else f"{record['score']:g}"
        kind = record["report_kind"] or "-"
        if record["dsn"]:
            kind = f"dsn/{record['dsn']['kind']}"
        self._row((record["pool"], ",".join(record["reasons"]) or "-", kind, score, record["source"]))

    def _row(self, cells: Sequence[str]) -> None:
        self.out.write(f"{cells[0]:<10} {cells[1]:<28} {cells[2]:<28} {cells[3]:>6}  {cells[4]}\n")


def _batches(paths: Sequence[str], errors: TextIO) -> Iterator[tuple[list[str], list[bytes]] | None]:
    """Yields batches of (sources, messages); None marks a path that could not be read."""
    sources: list[str] = []
    messages: list[bytes] = []
    for path in paths:
        try:
            for source, message in read_messages(path):
                sources.append(source)
                messages.append(message)
                if len(messages) >= BATCH_SIZE:
                    yield sources, messages
                    sources, messages = [], []
        except OSError as error:
            reason = error.strerror or str(error)
            errors.write(f"deliverypool: cannot read {path}: {reason}\n")
            yield None
    if messages:
        yield sources, messages


def run_classify(args: argparse.Namespace, out: TextIO = sys.stdout, errors: TextIO = sys.stderr) -> int:
    try:
        policy = Policy(
            threshold=args.threshold,
            score_header=args.score_header,
        )
    except PolicyError as error:
        errors.write(f"deliverypool: {error}\n")
        return 2
    # The sender domain is the envelope sender's: without --mail-from there is none to check.
    sender_check: SenderDomainCheck | None = None
    if args.mail_from is not None and not args.no_dns:
        [sender_check] = run_async(check_sender_domains([args.mail_from], args.nameserver))
    writer = TableWriter(out) if not args.json else None
    status = 0
    for batch in _batches(args.paths, errors):
        if batch is None:
            status = 1
            continue
        sources, messages = batch
        if args.rspamd is not None and args.score is None:
            for source, routed in zip(sources, run_async(_route_with_rspamd(args, policy, messages))):
                _write(decision_record(source, routed.decision, sender_check, routed), out, writer)
            continue
        count = len(messages)
        decisions = classify_many(
            messages,
            mail_from=[args.mail_from] * count if args.mail_from is not None else None,
            score=[args.score] * count if args.score is not None else None,
            tenant=[args.tenant] * count if args.tenant is not None else None,
            policy=policy,
            sender_domain=[sender_check.status] * count if sender_check is not None else None,
        )
        for source, decision in zip(sources, decisions):
            _write(decision_record(source, decision, sender_check), out, writer)
    return status


def _write(record: dict[str, Any], out: TextIO, writer: TableWriter | None) -> None:
    if writer is None:
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        writer.write(record)


async def _route_with_rspamd(args: argparse.Namespace, policy: Policy, messages: list[bytes]) -> list[Routed]:
    """Each message routed as the relay routes it with `[score] source = "rspamd"`: the score
    header named by --score-header if it is there, else rspamd's (`--rspamd URL`)."""
    router = Router.from_nameservers(args.nameserver, policy=policy) if args.mail_from is not None and not args.no_dns else Router(policy=policy)
    scores = ScoredRouter(router, RspamdScores(args.rspamd, timeout=args.rspamd_timeout, max_size=2**31))
    submission = Submission(args.mail_from or "")
    limit = asyncio.Semaphore(RSPAMD_CONCURRENCY)

    async def route(message: bytes) -> Routed:
        async with limit:
            return await scores.route(message, submission, tenant=args.tenant)

    try:
        return await asyncio.gather(*(route(message) for message in messages))
    finally:
        await scores.close()
