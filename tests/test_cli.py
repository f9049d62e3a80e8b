"""The `deliverypool classify` command, run as users run it: the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deliverypool.mail.sources import split_mbox
from tests.messages import GLOBAL_DSN, ORDINARY


def deliverypool_command() -> list[str]:
    script = Path(sys.executable).parent / "deliverypool"
    if script.exists():
        return [str(script)]
    found = shutil.which("deliverypool")
    return [found] if found else [sys.executable, "-m", "deliverypool.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*deliverypool_command(), *args], input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=120)


def json_lines(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_json_reports_every_corpus_message(corpus: Path) -> None:
    maildirs = sorted(str(p) for p in (corpus / "maildir").iterdir())
    mailboxes = sorted(str(p) for p in (corpus / "mailbox").iterdir())
    result = run("classify", "--json", *maildirs, *mailboxes)
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stdout)
    expected = sum(len(list((corpus / "maildir" / Path(d).name).glob("*.eml"))) for d in maildirs)
    expected += sum(len(split_mbox(Path(m).read_bytes())) for m in mailboxes)
    assert len(records) == expected
    assert set(records[0]) == {"source", "pool", "reasons", "dsn", "report_kind", "score", "threshold", "sender_domain", "spam"}
    mbox_sources = [r["source"] for r in records if str(r["source"]).startswith(str(corpus / "mailbox" / "mbox-0"))]
    assert mbox_sources[:2] == [f"{corpus}/mailbox/mbox-0#1", f"{corpus}/mailbox/mbox-0#2"]
    bounces = [r for r in records if "/lhost-" in str(r["source"])]
    assert sum(r["pool"] == "high-risk" for r in bounces) / len(bounces) > 0.99
    for record in bounces:
        if record["dsn"] is not None:
            assert record["reasons"] == ["dsn"] and record["report_kind"] == "dsn"


def test_unreadable_path_is_reported_and_others_still_processed(tmp_path: Path) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(ORDINARY[0])
    result = run("classify", "--json", str(tmp_path / "missing.eml"), str(good))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "missing.eml" in result.stderr
    (record,) = json_lines(result.stdout)
    assert record["source"] == str(good) and record["pool"] == "normal"


def test_stdin_score_threshold_and_table(tmp_path: Path) -> None:
    result = run("classify", "--json", "--score", "6", "--threshold", "5.5", "-", stdin=ORDINARY[0])
    (record,) = json_lines(result.stdout)
    assert (record["source"], record["pool"], record["reasons"], record["score"], record["threshold"]) == \
           ("-", "high-risk", ["spam-score"], 6.0, 5.5)
    (tmp_path / "dsn.eml").write_bytes(GLOBAL_DSN)
    table = run("classify", str(tmp_path / "dsn.eml"))
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split()[:2] == ["POOL", "REASONS"]
    assert row.split()[:3] == ["high-risk", "dsn", "dsn/global-delivery-status"]


def test_maildir_and_mail_from(tmp_path: Path) -> None:
    for sub in ("cur", "new", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1").write_bytes(b"From: MAILER-DAEMON@x.example\nSubject: hi\n\nhello\n")
    (tmp_path / "tmp" / "ignored").write_bytes(ORDINARY[0])
    null = json_lines(run("classify", "--json", "--no-dns", "--mail-from", "<>", str(tmp_path)).stdout)
    assert [r["pool"] for r in null] == ["high-risk"]
    named = json_lines(run("classify", "--json", "--no-dns", "--mail-from", "a@b.example", str(tmp_path)).stdout)
    assert [r["pool"] for r in named] == ["normal"]


@pytest.mark.parametrize("bad", [["--threshold", "nan"], ["--score", "inf"], ["--score-header", "Bad Name:"]])
def test_bad_options_fail_clearly(bad: list[str]) -> None:
    result = run("classify", *bad, "-", stdin=b"Subject: x\n\n")
    assert result.returncode == 2
    assert result.stderr.strip()
    assert result.stdout == ""
