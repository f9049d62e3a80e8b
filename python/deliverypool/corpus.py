"""The shared test corpus: which messages are DSNs, and the recall and false-positive rates
deliverypool reaches on it.

    python -m deliverypool.corpus [CORPUS_DIR] [-v] [--by-family]

CORPUS_DIR is the sisimai set-of-emails folder (holding maildir/ and mailbox/); without it,
the DELIVERYPOOL_CORPUS environment variable, else ../shared/corpus/sisimai from the current
directory. --by-family adds the leave-one-family-out table: for each MTA family (the lhost-*
and rhost-* file names), the recall on that family's files when the phrase groups introduced
for it (deliverypool.PHRASE_GROUPS entries with no template source) are disabled.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from deliverypool._core import PHRASE_GROUPS, Decision, classify, detect
from deliverypool.mail.sources import read_messages

ENVIRONMENT_VARIABLE = "DELIVERYPOOL_CORPUS"
DEFAULT_RELATIVE = Path("..") / "shared" / "corpus" / "sisimai"

# Per the corpus README: abuse reports and auto-replies are reports but not DSNs; the ordinary
# messages under not/ are not DSNs. rb-issue-368-bug.eml is judged a DSN: it has a null
# Return-Path, comes from postmaster, and tells the sender that delivery failed (mailbox full),
# which is exactly what a non-delivery report is, whatever upstream filed it as.
# lhost-amazonses-11.eml is filed with the bounces, but it is an SES *complaint* notification
# ("notificationType":"Complaint"): abuse feedback, which deliverypool reports as arf.
NOT_DSN_PREFIXES = ("arf-", "rfc3834-", "is-not-bounce-")
NOT_DSN_FILES = ("lhost-amazonses-11.eml",)


class CorpusNotFound(FileNotFoundError):
    """The corpus folder is not where it was looked for."""


def corpus_root(argument: str | Path | None = None) -> Path:
    """The corpus folder: `argument`, else $DELIVERYPOOL_CORPUS, else ../shared/corpus/sisimai
    relative to the current directory. Raises CorpusNotFound, naming where it looked and why
    there, when that is not a folder holding maildir/."""
    if argument is not None:
        path, why = Path(argument), "given"
    elif os.environ.get(ENVIRONMENT_VARIABLE):
        path, why = Path(os.environ[ENVIRONMENT_VARIABLE]), f"from ${ENVIRONMENT_VARIABLE}"
    else:
        path, why = Path.cwd() / DEFAULT_RELATIVE, "the default, relative to the current directory"
    if not (path / "maildir").is_dir():
        raise CorpusNotFound(
            f"no corpus at {path} ({why}): expected a folder holding maildir/ and mailbox/; "
            f"pass its path or set {ENVIRONMENT_VARIABLE}"
        )
    return path


def expected_dsn(path: Path) -> bool:
    return not path.name.startswith(NOT_DSN_PREFIXES) and path.name not in NOT_DSN_FILES


_NUMBERED = re.compile(r"^(.+?)-\d+\.eml$")


def family(path: Path) -> str:
    """The family a corpus file belongs to: `lhost-postfix` for lhost-postfix-01.eml (the MTA
    that wrote it), `rhost-google` for rhost-google-03.eml (the receiving provider), `rfc3464`,
    `make-test` (err/, mbox-0 split into files), `mbox` for the mailbox files."""
    if path.parent.name == "mailbox":
        return "mbox"
    match = _NUMBERED.match(path.name)
    return match.group(1) if match else path.stem


def family_groups() -> dict[str, list[str]]:
    """Family name -> the phrase groups introduced for it (PHRASE_GROUPS without a source)."""
    groups: dict[str, list[str]] = {}
    for name, _kind, source, families, _phrases in PHRASE_GROUPS:
        if source is None:
            for fam in families:
                groups.setdefault(fam, []).append(name)
    return groups


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
        self.count(source, is_dsn, decision.dsn is not None)

    def count(self, source: str, is_dsn: bool, flagged: bool) -> None:
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


def corpus_messages(root: Path) -> Iterator[tuple[Path, str, bytes]]:
    """(file, source, message) for every message of the corpus."""
    for path in corpus_paths(root):
        for source, message in read_messages(str(path)):
            yield path, source, message


def evaluate(root: Path) -> CorpusReport:
    report = CorpusReport()
    for path, source, message in corpus_messages(root):
        report.add(source, expected_dsn(path), classify(message))
    return report


@dataclass
class FamilyRow:
    family: str
    disabled: list[str]
    total: int = 0
    found: int = 0
    found_without: int = 0
    # With every phrase group disabled: how much the family depends on wording at all.
    found_without_phrases: int = 0

    @property
    def recall(self) -> float:
        return self.found / self.total if self.total else 0.0

    @property
    def recall_without(self) -> float:
        return self.found_without / self.total if self.total else 0.0


def by_family(root: Path) -> list[FamilyRow]:
    """Leave-one-family-out: for each family, its DSN files' recall as is and with the phrase
    groups introduced for that family (alone or with others) disabled."""
    groups = family_groups()
    every_group = [g[0] for g in PHRASE_GROUPS]
    rows: dict[str, FamilyRow] = {}
    for path, _source, message in corpus_messages(root):
        if not expected_dsn(path):
            continue
        fam = family(path)
        row = rows.setdefault(fam, FamilyRow(fam, groups.get(fam, [])))
        _kind, verdict = detect(message)
        if verdict is None and _is_not_a_message(message):
            continue
        row.total += 1
        row.found += verdict is not None
        if row.disabled:
            row.found_without += detect(message, disabled_groups=row.disabled)[1] is not None
        else:
            row.found_without += verdict is not None
        row.found_without_phrases += detect(message, disabled_groups=every_group)[1] is not None
    return sorted(rows.values(), key=lambda r: r.family)


def _is_not_a_message(message: bytes) -> bool:
    return "no-header-fields" in classify(message).defects


def format_by_family(rows: Sequence[FamilyRow]) -> str:
    width = max(len(r.family) for r in rows)
    lines = [f"{'family':<{width}}  files  recall   without its own groups  without any phrase  its own groups"]
    for r in rows:
        lines.append(
            f"{r.family:<{width}}  {r.total:>5}  {r.found:>3}/{r.total:<3}  {r.found_without:>10}/{r.total:<3}"
            f"           {r.found_without_phrases:>7}/{r.total:<3}      {', '.join(r.disabled) or '-'}"
        )
    total = sum(r.total for r in rows)
    found = sum(r.found for r in rows)
    without = sum(r.found_without for r in rows)
    bare = sum(r.found_without_phrases for r in rows)
    affected = [r for r in rows if r.disabled]
    lines.append(
        f"leave-one-family-out recall: {without}/{total} = {without / total:.2%} "
        f"(as is: {found}/{total} = {found / total:.2%}); {len(affected)} of {len(rows)} families have groups of their own"
    )
    lines.append(f"without any phrase group: {bare}/{total} = {bare / total:.2%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deliverypool.corpus",
        description="DSN recall and false positives on the shared corpus.",
        epilog=f"Without CORPUS_DIR: ${ENVIRONMENT_VARIABLE}, else {DEFAULT_RELATIVE} from the current directory.",
    )
    parser.add_argument("corpus", nargs="?", metavar="CORPUS_DIR", help="the sisimai corpus folder")
    parser.add_argument("-v", "--verbose", action="store_true", help="list misses and false positives")
    parser.add_argument("--by-family", action="store_true", help="leave-one-family-out recall, per family")
    args = parser.parse_args(argv)
    try:
        root = corpus_root(args.corpus)
    except CorpusNotFound as error:
        parser.error(str(error))
    report = evaluate(root)
    print(f"DSN recall: {report.dsn_found}/{report.dsn_total} = {report.recall:.2%}")
    print(f"non-DSN reports flagged as DSN: {report.other_flagged}/{report.other_total} = {report.false_positive_rate:.2%}")
    print(f"inputs with no header fields (not counted): {len(report.not_messages)}")
    if args.verbose:
        for source in report.missed:
            print(f"missed: {source}")
        for source in report.false_positives:
            print(f"false positive: {source}")
    if args.by_family:
        print()
        print(format_by_family(by_family(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
