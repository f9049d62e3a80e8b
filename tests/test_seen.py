"""The Rust pieces the monitor reads: the scanner's view of a report (Reporting-MTA, the
original's Message-ID and From) and the Bloom filter of relayed Message-IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from deliverypool._core import MessageIdFilter, scan


def test_a_corpus_dsn_names_its_reporting_mta_and_original(corpus: Path) -> None:
    facts = scan((corpus / "maildir" / "bsd" / "rfc3464-01.eml").read_bytes())
    assert facts.reporting_mta == "dns; smtpgw.example.jp"
    assert facts.original_message_id == "<E1C50F1B-1C83-4820-BC36-AC6FBFBE8568@example.org>"
    assert facts.original_from == '"Kijitora Cat" <kijitora@example.org>'
    assert [r.status for r in facts.recipients] == ["5.1.1"]


def test_headers_only_part_and_no_original() -> None:
    dsn = (
        b"From: MAILER-DAEMON@mx.t\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.t\r\n\r\n"
        b"Final-Recipient: rfc822; x@acme.example\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: <bob@acme.example>\r\nMessage-Id: <m1@acme.example>\r\n\r\n--b--\r\n"
    )
    facts = scan(dsn)
    assert (facts.original_message_id, facts.original_from, facts.message_id) == ("<m1@acme.example>", "<bob@acme.example>", None)
    plain = scan(b"From: a@b.example\r\nMessage-ID: <m@b.example>\r\n\r\nHi\r\n")
    assert (plain.reporting_mta, plain.original_message_id, plain.original_from) == (None, None, None)


def test_filter_membership_persistence_and_union() -> None:
    seen = MessageIdFilter(10_000, 0.001)
    assert seen.add_many([f"<{i}@relay.test>" for i in range(5000)]) == 5000
    assert all(seen.contains_many([f"{i}@relay.test" for i in range(5000)]))
    assert "<never@relay.test>" not in seen
    false = sum(seen.contains_many([f"<{i}@other.test>" for i in range(20_000)]))
    assert false < 60  # about 0.1% at half capacity is far fewer
    restored = MessageIdFilter.from_bytes(seen.to_bytes())
    assert "<42@relay.test>" in restored and restored.added == 5000 and restored.bits == seen.bits
    other = MessageIdFilter(10_000, 0.001)
    other.add("<x@y>")
    both = seen.union(other)
    assert "<x@y>" in both and "<1@relay.test>" in both and "<x@y>" not in seen
    with pytest.raises(ValueError):
        seen.union(MessageIdFilter(10))
    with pytest.raises(ValueError):
        MessageIdFilter.from_bytes(b"not a filter")
    with pytest.raises(ValueError):
        MessageIdFilter(0)


def test_relayed_ids_fall_into_the_day_they_were_accepted_on(tmp_path: Path) -> None:
    """`RelayedIds.add` puts an ID in the filter of its UTC day (the day formatted once, then
    reused until midnight; a clock stepped back is followed), and filters older than the
    retained days are dropped."""
    from deliverypool.observe.seen import RelayedIds

    midnight = 1_764_979_200.0  # 2025-12-06 00:00:00 UTC
    now = [midnight - 1]
    ids = RelayedIds(tmp_path / "seen", "shard-0", days=2, expected=1000, clock=lambda: now[0])
    ids.add("<late@x>")
    now[0] = midnight  # the next day
    ids.add("<early@x>")
    now[0] = midnight - 3600  # stepped back into the day before
    ids.add("<stepped@x>")
    assert sorted(ids.own) == ["20251205", "20251206"]
    assert "<late@x>" in ids.own["20251205"] and "<stepped@x>" in ids.own["20251205"]
    assert "<early@x>" in ids.own["20251206"] and "<late@x>" not in ids.own["20251206"]
    now[0] = midnight + 86400 + 10  # two days retained: the 5th is gone once the 7th starts
    ids.add("<next@x>")
    assert sorted(ids.own) == ["20251206", "20251207"]
    assert ids.relayed("<early@x>") and ids.relayed("<next@x>") and not ids.relayed("<late@x>")
