"""The `deliverypool` command."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from deliverypool._core import Decision, Policy, PolicyError, classify_many
from deliverypool.dns import Nameserver, SenderDomainCheck, check_sender_domains
from deliverypool.eventloop import run as run_async
from deliverypool.sources import read_messages

# Messages classified per call: large enough to use every core, small enough to stream.
BATCH_SIZE = 4096


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _nameserver(text: str) -> str:
    try:
        Nameserver.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def decision_record(source: str, decision: Decision, sender_check: SenderDomainCheck | None = None) -> dict[str, Any]:
    """The JSON object `classify --json` prints for one message."""
    dsn = decision.dsn
    return {
        "source": source,
        "pool": decision.pool,
        "reasons": list(decision.reasons),
        "dsn": None if dsn is None else {"kind": dsn.kind, "signals": list(dsn.signals)},
        "report_kind": decision.report_kind,
        "score": decision.score,
        "threshold": decision.threshold,
        "sender_domain": None if sender_check is None else sender_check.as_json(),
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
            record = decision_record(source, decision, sender_check)
            if writer is None:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                writer.write(record)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deliverypool",
        description="Route outbound mail to the normal or the high-risk delivery pool.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    classify = commands.add_parser(
        "classify",
        help="classify messages and print the pool each one goes through",
        description="Classify messages. PATH is a message file, an mbox file, a Maildir "
        "(or any folder of message files), or - for standard input.",
    )
    classify.add_argument("paths", nargs="+", metavar="PATH")
    classify.add_argument("--threshold", type=_finite_float, default=5.0, metavar="T",
                          help="spam score above which mail is high-risk (default 5.0)")
    classify.add_argument("--score", type=_finite_float, metavar="S",
                          help="spam score given by your filter, for every message")
    classify.add_argument("--score-header", metavar="NAME",
                          help="trust the score in this header (written only by your own filter)")
    classify.add_argument("--mail-from", metavar="ADDR",
                          help="envelope sender (MAIL FROM) for every message; '' or '<>' is the null sender")
    classify.add_argument("--tenant", metavar="ID", help="tenant whose threshold applies")
    classify.add_argument("--nameserver", action="append", default=[], type=_nameserver, metavar="HOST[:PORT]",
                          help="check the --mail-from domain with this nameserver (repeatable; default: the system's)")
    classify.add_argument("--no-dns", action="store_true", help="do not check the sender domain in DNS")
    classify.add_argument("--json", action="store_true", help="print one JSON object per message")
    classify.set_defaults(handler=run_classify)

    relay = commands.add_parser("relay", help="run the relay: accept over SMTP, spool, deliver from each pool",
                                description="Run the relay with the configuration in a TOML file.")
    relay.add_argument("--config", required=True, metavar="PATH", help="the relay's TOML configuration")
    relay.add_argument("--loop", choices=["asyncio", "uvloop"], help="event loop (default: uvloop when installed)")
    relay.set_defaults(handler=lambda args: _relay().relay_command(args.config, loop=args.loop))

    queue = commands.add_parser("queue", help="show what is in the spool",
                                description="List the messages and recipients in the relay's spool.")
    queue.add_argument("--config", metavar="PATH", help="the relay's TOML configuration (for its spool directory)")
    queue.add_argument("--spool", metavar="DIR", help="the spool directory (default: the config's, else ./spool)")
    queue.set_defaults(handler=lambda args: _relay().queue_command(args.config, spool_directory=args.spool))

    demo = commands.add_parser("demo", help="run the relay on loopback with a mixed workload and show the routing",
                               description="Start the relay with two loopback pools (normal from 127.0.0.2, "
                               "high-risk from 127.0.0.3), loopback sinks and a local DNS server, send ordinary "
                               "mail, spam, DSNs and mail from a domain without records, and show where each went.")
    demo.add_argument("--scale", type=int, default=10, metavar="N", help="workload size: N x (40 ordinary, 10 spam, 8 DSN, 5 no-records, ...) messages (default 10)")
    demo.set_defaults(handler=lambda args: _demo().demo_command(scale=args.scale))
    return parser


def _relay() -> Any:
    # Imported on use: `classify` should not pay for loading the SMTP stack.
    from deliverypool import relay

    return relay


def _demo() -> Any:
    from deliverypool import demo

    return demo


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `deliverypool classify ... | head` is normal use, not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
