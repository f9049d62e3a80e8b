"""The shared test corpus: which messages are DSNs, and the recall and false-positive rates
deliverypool reaches on it (`python -m deliverypool.corpus [CORPUS_DIR]`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from deliverypool._core import Decision, classify
from deliverypool.mail.sources import read_messages

DEFAULT_CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "sisimai"

# Per the corpus README: abuse reports and auto-replies are reports but not DSNs; the ordinary
# messages under not/ are not DSNs. rb-issue-368-bug.eml is judged a DSN: it has a null
# Return-Path, comes from postmaster, and tells the sender that delivery failed (mailbox full),
# which is exactly what a non-delivery report is, whatever upstream filed it as.
# lhost-amazonses-11.eml is filed with the bounces, but it is an SES *complaint* notification
# ("notificationType":"Complaint"): abuse feedback, which deliverypool reports as arf.
NOT_DSN_PREFIXES = ("arf-", "rfc3834-", "is-not-bounce-")
NOT_DSN_FILES = ("lhost-amazonses-11.eml",)


def expected_dsn(path: Path) -> bool:
    return not path.name.startswith(NOT_DSN_PREFIXES) and path.name not in NOT_DSN_FILES


@dataclass
class CorpusReport:
    dsn_total: int = 0
    dsn_found: int = 0
    other_total: int = 0
    other_flagged: int = 0
    not_messages: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    false_positives: list[str] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.dsn_found / self.dsn_total if self.dsn_total else 0.0

    @property
    def false_positive_rate(self) -> float:
        return self.other_flagged / self.other_total if self.other_total else 0.0

    def add(self, source: str, is_dsn: bool, decision: Decision) -> None:
        if "no-header-fields" in decision.defects:
            # mailbox/size-1 and size-2 hold one and three bytes: not messages at all.
            self.not_messages.append(source)
            return
        flagged = decision.dsn is not None
        if is_dsn:
            self.dsn_total += 1
            self.dsn_found += flagged
            if not flagged:
                self.missed.append(source)
        else:
            self.other_total += 1
            self.other_flagged += flagged
            if flagged:
                self.false_positives.append(source)


def corpus_paths(root: Path) -> list[Path]:
    maildir = sorted((root / "maildir").glob("*/*.eml"))
    mailbox = sorted(p for p in (root / "mailbox").iterdir() if p.stat().st_size > 0)
    return maildir + mailbox


def evaluate(root: Path = DEFAULT_CORPUS) -> CorpusReport:
    report = CorpusReport()
    for path in corpus_paths(root):
        for source, message in read_messages(str(path)):
            report.add(source, expected_dsn(path), classify(message))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("-v", "--verbose", action="store_true", help="list misses and false positives")
    args = parser.parse_args(argv)
    report = evaluate(args.corpus)
    print(f"DSN recall: {report.dsn_found}/{report.dsn_total} = {report.recall:.2%}")
    print(f"non-DSN reports flagged as DSN: {report.other_flagged}/{report.other_total} = {report.false_positive_rate:.2%}")
    print(f"inputs with no header fields (not counted): {len(report.not_messages)}")
    if args.verbose:
        for source in report.missed:
            print(f"missed: {source}")
        for source in report.false_positives:
            print(f"false positive: {source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
