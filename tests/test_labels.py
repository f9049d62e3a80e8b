"""The closed sets of names (REASONS, SIGNALS, DEFECTS, REPORT_KINDS, DSN_KINDS): every name a
decision or a scan produces is in its tuple, and each tuple lists every valid name once."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

import deliverypool
from deliverypool import DEFECTS, DSN_KINDS, REASONS, REPORT_KINDS, SIGNALS, AuthFacts, Decision, Policy, classify, scan
from deliverypool.corpus import corpus_paths
from deliverypool.mail.sources import read_messages
from tests.messages import GLOBAL_DSN, MDN, ORDINARY

TUPLES = {"REASONS": REASONS, "SIGNALS": SIGNALS, "DEFECTS": DEFECTS, "REPORT_KINDS": REPORT_KINDS, "DSN_KINDS": DSN_KINDS}
SCORED = Policy(score_header="X-Spam-Score")
# What authentication can find: a DMARC failure where the domain asks for reject, relayed mail
# whose SPF failed, an SPF temperror, a bounce to an SRS address.
AUTH = AuthFacts(spf="fail", dmarc="fail", disposition="reject")
AUTH_UNKNOWN = AuthFacts(spf="temperror", srs_bounce=True)

# Messages that make every defect fire (the corpus holds only well-formed ones of most).
ODD = [
    b"Subject: " + b"x" * ((1 << 20) + 10) + b"\n\nbody",
    b" stray continuation\nSubject: x\n\n",
    b"Subject: x\nnot a field\n\n",
    b"Subject: caf\xe9\n\n",
    b"\x00",
    b"Content-Type: nonsense\n\n",
    b"Content-Type: multipart/mixed\n\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: garbage\n\n--b--\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n\nx\n" * 70 + b"--b--\n",
    b"Content-Type: multipart/mixed; boundary=b0\n\n"
    + b"".join(f"--b{i}\nContent-Type: multipart/mixed; boundary=b{i + 1}\n\n".encode() for i in range(6)),
    b"Content-Type: multipart/mixed; boundary=b\n\n" + b"x" * (5 << 20),
    b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; x\n",
    b"X-Spam-Score: 1\nX-Spam-Score: 9\n\n",
    b"X-Spam-Score: high\n\n",
    # What the scanner skips before the first field, each reported.
    b"\xef\xbb\xbfSubject: x\n\n",
    b"\r\n\r\nSubject: x\r\n\r\n",
    b"From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\n",
    b">From a@b Mon Jan  1 00:00:00 2024\nSubject: x\n\n",
    b"Microsoft Mail Internet Headers Version 2.0\nSubject: x\nFrom: a@b\n\n",
]


def produced(decision: Decision) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {key: set() for key in TUPLES}
    names["REASONS"].update(decision.reasons)
    names["DEFECTS"].update(decision.defects)
    if decision.report_kind is not None:
        names["REPORT_KINDS"].add(decision.report_kind)
    if decision.dsn is not None:
        names["SIGNALS"].update(decision.dsn.signals)
        names["DSN_KINDS"].add(decision.dsn.kind)
    return names


def everything_about(message: bytes) -> Iterable[dict[str, set[str]]]:
    yield produced(classify(message))
    yield produced(classify(message, mail_from="<>", sender_domain="no-records", score=9.0))
    yield produced(classify(message, policy=SCORED, sender_domain="unknown"))
    yield produced(classify(message, policy=SCORED, untrusted_client=True))
    yield produced(classify(message, policy=SCORED, score_unavailable=True))
    yield produced(classify(message, mail_from="a@b.example", auth=AUTH))
    yield produced(classify(message, mail_from="a@b.example", auth=AUTH_UNKNOWN))
    yield {"DEFECTS": set(scan(message).defects)}


def assert_known(message: bytes, seen: dict[str, set[str]] | None = None) -> None:
    for names in everything_about(message):
        for key, found in names.items():
            unknown = found - set(TUPLES[key])
            assert not unknown, f"{key} lacks {unknown} (from {message[:80]!r})"
            if seen is not None:
                seen.setdefault(key, set()).update(found)


def test_tuples_are_exported_and_hold_each_name_once() -> None:
    for key, names in TUPLES.items():
        assert getattr(deliverypool, key) is getattr(deliverypool._core, key)
        assert key in deliverypool.__all__
        assert isinstance(names, tuple) and names
        assert len(set(names)) == len(names), f"{key} repeats a name"
        # Usable as metrics labels and configuration values as they stand.
        assert all(re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", name) for name in names), key


def test_every_name_the_corpus_and_odd_messages_produce_is_listed(corpus: Path) -> None:
    seen: dict[str, set[str]] = {}
    messages = [m for path in corpus_paths(corpus) for _, m in read_messages(str(path))]
    assert len(messages) > 800
    for message in messages + ORDINARY + [MDN, GLOBAL_DSN] + ODD:
        assert_known(message, seen)
    # And every listed name is reachable: a name no message can produce would be a stale label.
    for key, names in TUPLES.items():
        assert seen[key] == set(names), f"{key}: never produced {set(names) - seen[key]}"


PIECES = [b"\n", b"\r", b"\r\n", b" ", b"\t", b":", b"--b", b"--b--", b"=?", b"?=", b"\xff", b"x", b"From ", b">From ", b"\xef\xbb\xbf",
          b"Content-Type: multipart/report; report-type=delivery-status; boundary=b",
          b"Content-Type: message/delivery-status", b"From: MAILER-DAEMON@x", b"Return-Path: <>",
          b"Subject: Undeliverable", b"X-Spam-Score: 7", b"Action: failed", b"Status: 5.1.1",
          b"X-Failed-Recipients: a@b", b"Auto-Submitted: auto-replied",
          b"Content-Type: message/disposition-notification"]


@given(st.lists(st.sampled_from(PIECES), max_size=120) | st.binary(max_size=2048))
def test_generated_messages_produce_only_listed_names(pieces: list[bytes] | bytes) -> None:
    assert_known(pieces if isinstance(pieces, bytes) else b"".join(pieces))
