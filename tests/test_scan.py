"""The header scanner: total on any input, independent of line endings and header-name case."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

import deliverypool
from deliverypool import HeaderFacts, header_block, scan
from tests.messages import GLOBAL_DSN


def facts_key(facts: HeaderFacts) -> tuple[object, ...]:
    """Everything the scanner reports except byte offsets, which depend on the line ending."""
    ct = facts.content_type
    return (
        facts.field_count,
        None if ct is None else (ct.mime_type, tuple(ct.params.items())),
        facts.from_,
        facts.sender,
        facts.return_path,
        facts.subject,
        facts.auto_submitted,
        facts.precedence,
        facts.x_failed_recipients,
        facts.message_id,
        facts.score_header_values,
        facts.marker_fields,
        facts.qmail_bounce,
        tuple((p.content_type.mime_type, tuple(p.content_type.params.items()), p.depth) for p in facts.parts),
        tuple((r.final_recipient, r.action, r.status, r.diagnostic_code) for r in facts.recipients),
        facts.defects,
    )


@given(st.binary(max_size=4096))
def test_any_bytes_scan_without_error(data: bytes) -> None:
    facts = scan(data, score_header="X-Spam-Score")
    assert 0 <= facts.header_start <= facts.header_start + facts.header_length <= len(data)
    assert isinstance(facts.defects, tuple)


@given(st.lists(st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b":", b"--b", b"=?", b"?=",
                                 b"Content-Type: multipart/mixed; boundary=b", b"From ", b"\xff", b"x"]),
                max_size=200))
def test_structured_garbage_scans_without_error(pieces: list[bytes]) -> None:
    scan(b"".join(pieces))


def test_ten_megabyte_header_block_without_blank_line() -> None:
    block = b"X-Filler: " + b"a" * 70 + b"\r\n"
    message = block * (10 * 1024 * 1024 // len(block) + 1)
    facts = scan(message)
    assert "header-too-large" in facts.defects
    # Reading stopped at the limit: far fewer fields than the input holds.
    assert facts.field_count < len(message) // len(block)


def test_huge_single_line_and_deep_nesting_are_bounded() -> None:
    for endless in (b"Subject: " + b"x" * (3 << 20) + b"\n\nbody", b"Subject: " + b"x" * (10 << 20)):
        facts = scan(endless)
        assert "header-too-large" in facts.defects
        assert facts.subject is None
    # Text full of "=?" that never closes an encoded word, and a bogus boundary per nested part.
    assert scan(b"Subject: " + b"=?a?b?" * 100_000 + b"\n\n").field_count == 1
    bogus = b"Content-Type: multipart/mixed; boundary=b0\n\n" + b"".join(
        f"--b0\nContent-Type: multipart/mixed; boundary=zz{i}\n\n".encode() for i in range(70)) + b"x" * (1 << 20)
    # Each nested part would search the whole remaining megabyte: the search budget stops that.
    facts = scan(bogus)
    assert "body-scan-truncated" in facts.defects
    assert 0 < len(facts.parts) < 70
    nested = b"Content-Type: multipart/mixed; boundary=b0\n\n"
    for depth in range(1, 50):
        nested += f"--b{depth - 1}\nContent-Type: multipart/mixed; boundary=b{depth}\n\n".encode()
    facts = scan(nested)
    assert "multipart-too-deep" in facts.defects
    assert len(facts.parts) <= 64


field_names = st.sampled_from(["From", "Sender", "Return-Path", "Subject", "Auto-Submitted", "Precedence",
                               "X-Failed-Recipients", "Message-ID", "X-Spam-Score", "Content-Type", "X-Other"])
field_words = st.text(alphabet=string.ascii_letters + string.digits + "@.<>=;/-_\"", min_size=1, max_size=12)


@st.composite
def header_blocks(draw: st.DrawFn) -> list[tuple[str, list[str]]]:
    """Fields as (name, words); each field may be folded between any of its words."""
    return draw(st.lists(st.tuples(field_names, st.lists(field_words, min_size=1, max_size=5)), max_size=12))


def render(fields: list[tuple[str, list[str]]], eol: str, fold: bool, name_case: str = "asis") -> bytes:
    lines = []
    for name, words in fields:
        if name_case == "upper":
            name = name.upper()
        elif name_case == "lower":
            name = name.lower()
        separator = eol + "\t" if fold else " "
        lines.append(f"{name}: " + separator.join(words))
    multipart = (
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=zz{eol}{eol}"
        f"--zz{eol}Content-Type: message/delivery-status{eol}{eol}"
        f"Reporting-MTA: dns; x{eol}{eol}Final-Recipient: rfc822; a@b{eol}Action: failed{eol}Status: 5.1.1{eol}{eol}"
        f"--zz--{eol}"
    )
    return (eol.join(lines) + eol + multipart).encode()


@given(header_blocks(), st.booleans())
def test_result_does_not_depend_on_line_endings(fields: list[tuple[str, list[str]]], fold: bool) -> None:
    results = {facts_key(scan(render(fields, eol, fold), score_header="x-spam-score")) for eol in ("\n", "\r\n", "\r")}
    assert len(results) == 1


@given(header_blocks())
def test_result_does_not_depend_on_header_name_case(fields: list[tuple[str, list[str]]]) -> None:
    keys = {facts_key(scan(render(fields, "\r\n", False, case), score_header="X-SPAM-SCORE"))
            for case in ("asis", "upper", "lower")}
    assert len(keys) == 1


@given(st.lists(field_words, min_size=2, max_size=6))
def test_folded_subject_is_unfolded(words: list[str]) -> None:
    folded = scan(("Subject: " + "\r\n ".join(words) + "\r\n\r\n").encode())
    assert folded.subject == " ".join(words)


@pytest.mark.parametrize(
    ("value", "mime_type", "report_type"),
    [
        ('multipart/report; report-type=delivery-status; boundary="x"', "multipart/report", "delivery-status"),
        ('Multipart/Report; REPORT-TYPE="Delivery-Status"; boundary=x', "multipart/report", "Delivery-Status"),
        ("multipart/report;\r\n\treport-type=global-delivery-status;\r\n\tboundary=x", "multipart/report",
         "global-delivery-status"),
        ("multipart/report (a comment); report-type = delivery-status", "multipart/report", "delivery-status"),
    ],
)
def test_content_type_parameters(value: str, mime_type: str, report_type: str) -> None:
    facts = scan(f"Content-Type: {value}\r\n\r\n".encode())
    assert facts.content_type is not None
    assert facts.content_type.mime_type == mime_type
    assert facts.content_type.param("Report-Type") == report_type


def test_encoded_and_raw_8bit_subjects_are_decoded_for_matching() -> None:
    assert scan(b"Subject: =?ISO-2022-JP?B?GyRCRnxLXDhsGyhC?=\n\n").subject == "日本語"
    assert scan(b"Subject: =?windows-1251?B?zeUg5O7x8uDi6+Xt7g==?=\n\n").subject == "Не доставлено"
    assert scan("Subject: Non remis : réunion\n\n".encode()).subject == "Non remis : réunion"
    facts = scan(b"Subject: caf\xe9 \xff\xfe\n\n")
    assert facts.subject is not None and facts.subject.startswith("café")
    assert "8bit-header" in facts.defects


def test_delivery_status_fields_are_read() -> None:
    facts = scan(GLOBAL_DSN)
    assert [p.content_type.mime_type for p in facts.parts] == [
        "text/plain", "message/global-delivery-status", "message/global-headers"]
    (recipient,) = facts.recipients
    assert (recipient.action, recipient.status) == ("failed", "5.1.1")
    assert recipient.final_recipient == "utf-8; пользователь@пример.рф"


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        scan("a str is not a message")  # type: ignore[arg-type]
    assert deliverypool.scan(b"").field_count == 0


@pytest.mark.parametrize("eol", ["\r\n", "\n", "\r"])
def test_header_block_with_each_line_ending(eol: str) -> None:
    fields = f"From: a@b.example{eol}Subject: one{eol}\ttwo{eol}"
    message = f"{fields}{eol}body{eol}{eol}more{eol}".encode()
    assert header_block(message) == (0, len(fields) + len(eol))
    assert message[header_block(message)[1]:] == f"body{eol}{eol}more{eol}".encode()
    mbox_line = f"From a@b.example Sat Oct  4 08:00:09 2025{eol}"
    mbox = mbox_line.encode() + message
    assert header_block(mbox) == (len(mbox_line), len(mbox_line) + len(fields) + len(eol))
    # No blank line: the message ends in the header block.
    assert header_block(fields.encode()) == (0, len(fields))
    # A line that is not a field ends the block; it is the first line of the body.
    assert header_block(f"{fields}no colon here{eol}".encode()) == (0, len(fields))


def test_header_block_edge_cases() -> None:
    assert header_block(b"") == (0, 0)
    assert header_block(b"\r\nbody") == (2, 2)  # leading blank lines are skipped (leading-blank-lines)
    assert header_block(b"From only-an-mbox-line") == (22, 22)
    assert header_block(b"From: a@b\n\nx") == (0, 11)  # "From:" is a field, not an mbox line
    with pytest.raises(TypeError):
        header_block("text")  # type: ignore[arg-type]


@given(st.binary(max_size=2048) | st.builds(lambda f, eol, fold: render(f, eol, fold), header_blocks(),
                                             st.sampled_from(["\n", "\r\n", "\r"]), st.booleans()))
def test_header_block_is_the_scanners_answer(message: bytes) -> None:
    start, body = header_block(message)
    facts = scan(message)
    assert 0 <= start <= body <= len(message)
    assert (start, body - start) == (facts.header_start, facts.header_length)
    skipped = {"leading-bom", "leading-blank-lines", "mbox-from-line", "escaped-from-line", "junk-before-header"}
    assert (start > 0) == bool(skipped & set(facts.defects))


_PREFIXES = {
    b"\xef\xbb\xbf": ("leading-bom",),
    b"\r\n": ("leading-blank-lines",),
    b"\n\n\n": ("leading-blank-lines",),
    b"From MAILER-DAEMON Mon Jan  1 10:00:00 2024\n": ("mbox-from-line",),
    b">From MAILER-DAEMON Mon Jan  1 10:00:00 2024\r\n": ("escaped-from-line",),
    b"Microsoft Mail Internet Headers Version 2.0\r\n": ("junk-before-header",),
}


@given(header_blocks(), st.sampled_from(sorted(_PREFIXES)))
def test_what_precedes_the_header_block_changes_only_the_defects(fields: list[tuple[str, list[str]]], prefix: bytes) -> None:
    message = render(fields, "\n", False)
    plain = scan(message, score_header="x-spam-score")
    prefixed = scan(prefix + message, score_header="x-spam-score")
    if plain.field_count < 2:
        # Junk is skipped only before a header block of two lines or more.
        return
    assert prefixed.header_start == len(prefix)
    assert header_block(prefix + message) == (len(prefix), len(prefix) + plain.header_length)
    assert prefixed.header_length == plain.header_length
    assert prefixed.defects == _PREFIXES[prefix] + plain.defects
    assert facts_key(prefixed)[:-1] == facts_key(plain)[:-1]
