"""DSN detection against the shared corpus of real bounces, CPython's test messages and
messages written here."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from deliverypool import classify, classify_many
from deliverypool.corpus import corpus_paths, evaluate, expected_dsn
from tests.messages import GLOBAL_DSN, MDN, ORDINARY

# The README states the rates reached; these are the floors below which the suite fails.
MIN_RECALL = 0.99


def test_corpus_recall_and_no_false_positives(corpus: Path) -> None:
    report = evaluate(corpus)
    print(f"recall {report.dsn_found}/{report.dsn_total}, flagged non-DSN {report.other_flagged}/{report.other_total}")
    assert report.dsn_total >= 800, "the corpus shrank: check ../shared/corpus"
    assert report.recall >= MIN_RECALL, report.missed
    assert report.false_positives == []
    # mailbox/size-1 and size-2 (one and three bytes) are the only inputs that are not messages.
    assert len(report.not_messages) == 2


@pytest.mark.parametrize("twin_dir", ["dos", "mac"])
def test_line_ending_twins_get_the_same_verdict(corpus: Path, twin_dir: str) -> None:
    twins = sorted((corpus / "maildir" / twin_dir).glob("*.eml"))
    assert len(twins) == 80
    compared = 0
    for twin in twins:
        other = classify(twin.read_bytes())
        bsd_twin = corpus / "maildir" / "bsd" / twin.name
        if not bsd_twin.exists():
            # A dozen have no LF twin left in bsd/; they are bounces all the same.
            assert (other.dsn is not None) == expected_dsn(twin), twin
            continue
        compared += 1
        original = classify(bsd_twin.read_bytes())
        assert (other.pool, other.reasons, other.report_kind) == (original.pool, original.reasons, original.report_kind), twin
        assert (other.dsn is None) == (original.dsn is None)
        if other.dsn and original.dsn:
            assert (other.dsn.kind, other.dsn.signals) == (original.dsn.kind, original.dsn.signals), twin
    assert compared >= 60


def test_report_kinds_are_told_apart(corpus: Path) -> None:
    bsd = corpus / "maildir" / "bsd"
    for path in sorted(bsd.glob("arf-*.eml")):
        decision = classify(path.read_bytes())
        assert decision.dsn is None, path
    # Every ARF with a feedback-report part or report type is reported as arf.
    assert classify((bsd / "arf-01.eml").read_bytes()).report_kind == "arf"
    for path in sorted(bsd.glob("rfc3834-*.eml")):
        decision = classify(path.read_bytes())
        assert (decision.dsn, decision.report_kind) == (None, "auto-reply"), path
    assert classify(MDN).report_kind == "mdn"
    assert classify(MDN).dsn is None


def test_postfix_bounce_with_auto_replied_is_still_a_dsn(corpus: Path) -> None:
    # Postfix writes Auto-Submitted: auto-replied, the value vacation replies use.
    for path in sorted((corpus / "maildir" / "bsd").glob("lhost-postfix-*.eml")):
        data = path.read_bytes()
        if b"Auto-Submitted: auto-replied" in data:
            decision = classify(data)
            assert decision.report_kind == "dsn", path
            break
    else:
        pytest.fail("no Postfix bounce with Auto-Submitted: auto-replied in the corpus")


def test_bounce_forwarded_as_attachment_is_not_a_dsn(corpus: Path) -> None:
    forwarded = (corpus / "maildir" / "not" / "is-not-bounce-02.eml").read_bytes()
    assert b"message/rfc822" in forwarded
    decision = classify(forwarded)
    assert decision.dsn is None and decision.pool == "normal"
    # The same holds for the one written here, whose attachment is a standard DSN.
    assert classify(ORDINARY[3]).dsn is None


def test_rb_issue_368_is_judged_a_dsn(corpus: Path) -> None:
    # Filed upstream as "not a bounce", but it has Return-Path: <>, comes from postmaster, and
    # tells the sender the message was rejected because the mailbox is full: that is a
    # non-delivery report, and sending it through the normal pool would defeat the purpose.
    decision = classify((corpus / "maildir" / "not" / "rb-issue-368-bug.eml").read_bytes())
    assert decision.dsn is not None
    assert set(decision.dsn.signals) >= {"null-sender", "daemon-sender", "bounce-subject"}


def test_corpus_expectations_follow_the_readme(corpus: Path) -> None:
    paths = corpus_paths(corpus)
    assert not expected_dsn(corpus / "maildir/bsd/arf-01.eml")
    assert not expected_dsn(corpus / "maildir/not/is-not-bounce-01.eml")
    assert expected_dsn(corpus / "maildir/not/rb-issue-368-bug.eml")
    assert sum(expected_dsn(p) for p in paths) > 700


def cpython_email_data() -> Path | None:
    path = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"
    return path if path.is_dir() else None


# CPython's own DSNs among its test messages (checked by reading each one).
CPYTHON_DSNS = {"msg_05.txt", "msg_16.txt", "msg_25.txt", "msg_43.txt"}


@pytest.mark.skipif(cpython_email_data() is None, reason="this Python ships without its test suite")
def test_cpython_test_messages() -> None:
    data = cpython_email_data()
    assert data is not None
    messages = sorted(data.glob("msg_*.txt"))
    assert len(messages) > 40
    decisions = classify_many([p.read_bytes() for p in messages])
    flagged = {p.name for p, d in zip(messages, decisions) if d.dsn is not None}
    assert flagged == CPYTHON_DSNS


def test_ordinary_mail_is_normal() -> None:
    for message in ORDINARY:
        decision = classify(message, mail_from="sender@example.com")
        assert (decision.pool, decision.reasons, decision.dsn) == ("normal", (), None), message[:60]


def test_global_dsn_kind_and_recipients() -> None:
    decision = classify(GLOBAL_DSN)
    assert decision.dsn is not None
    assert decision.dsn.kind == "global-delivery-status"
    assert [r.status for r in decision.dsn.recipients] == ["5.1.1"]


def test_envelope_null_sender_with_daemon_from_is_a_dsn() -> None:
    message = b"From: MAILER-DAEMON@mx.example.com\nSubject: hello\n\nsome text\n"
    assert classify(message, mail_from="").dsn is not None
    assert classify(message, mail_from="<>").dsn is not None
    # A real envelope sender overrides what the message says, and one weak signal is not enough.
    assert classify(message, mail_from="someone@example.com").dsn is None


def test_localised_subjects(corpus: Path) -> None:
    for subject in ["Unzustellbar: Termin", "Non remis : réunion", "Onbestelbaar: test",
                    "Não entregue: teste", "Mancata consegna: prova", "Недоставленное сообщение",
                    "配信エラー", "Undeliverable: Meeting"]:
        header = "=?utf-8?b?" + __import__("base64").b64encode(subject.encode()).decode() + "?="
        message = f"From: postmaster@example.com\nSubject: {header}\n\nx\n".encode()
        decision = classify(message, mail_from="postmaster@example.com")
        assert decision.dsn is not None and "bounce-subject" in decision.dsn.signals, subject
