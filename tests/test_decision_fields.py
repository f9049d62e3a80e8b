"""What a Decision carries for callers besides the route: the header Message-ID and the header
From address and domain, read from the one scan classify made."""

from __future__ import annotations

import gc
import string
from email.utils import getaddresses
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool import classify, classify_many, scan
from deliverypool.corpus import corpus_paths
from deliverypool.mail.sources import read_messages
from tests.messages import GLOBAL_DSN, MDN, ORDINARY


def getaddresses_first(value: str | None) -> str | None:
    """What the router did before: the first address email.utils finds, if it has an @."""
    if value is None:
        return None
    addresses = [address for _, address in getaddresses([value]) if address]
    return addresses[0].lower() if addresses and "@" in addresses[0] else None


def test_corpus_fields_match_scan_and_the_stdlib(corpus: Path) -> None:
    messages = [m for path in corpus_paths(corpus) for _, m in read_messages(str(path))]
    messages += ORDINARY + [MDN, GLOBAL_DSN]
    with_from = 0
    for message, batched in zip(messages, classify_many(messages)):
        decision, facts = classify(message), scan(message)
        assert decision.message_id == batched.message_id == facts.message_id
        expected = getaddresses_first(facts.from_)
        assert decision.from_address == batched.from_address == expected, facts.from_
        assert decision.from_domain == (None if expected is None else expected.rpartition("@")[2])
        with_from += expected is not None
    assert with_from > 700


atom = st.text(alphabet=string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=8)
label = st.text(alphabet=string.ascii_letters + string.digits, min_size=1, max_size=8)
local_parts = st.one_of(
    st.lists(atom, min_size=1, max_size=3).map(".".join),
    st.text(alphabet=string.ascii_letters + " ,@.<>:;", min_size=1, max_size=10).map(lambda s: f'"{s}"'),
)
domains = st.lists(label, min_size=2, max_size=4).map(".".join)
names = st.one_of(
    st.lists(atom, min_size=1, max_size=3).map(" ".join),
    st.text(alphabet=string.ascii_letters + " ,.:;<>@()", min_size=1, max_size=12).map(lambda s: f'"{s}"'),
)


@st.composite
def mailboxes(draw: st.DrawFn) -> tuple[str, str]:
    """(as written in the field, the address it holds)."""
    address = f"{draw(local_parts)}@{draw(domains)}"
    form = draw(st.sampled_from(["bare", "angle", "named", "commented"]))
    written = {
        "bare": address,
        "angle": f"<{address}>",
        "named": f"{draw(names)} <{address}>",
        "commented": f"{address} (a comment, with: specials)",
    }[form]
    return written, address


@given(st.lists(mailboxes(), min_size=1, max_size=3), st.booleans(), st.sampled_from(["\r\n", "\n", "\r"]),
       st.booleans())
def test_first_address_of_generated_from_fields(
    boxes: list[tuple[str, str]], group: bool, eol: str, fold: bool
) -> None:
    value = ", ".join(written for written, _ in boxes)
    if group:
        value = f"Team: {value};"
    # Folded after every comma (inside quotes and comments too: unfolding gives them back).
    field = value.replace(", ", f",{eol} ") if fold else value
    message = f"Subject: x{eol}From: {field}{eol}Message-ID: <m@x>{eol}{eol}body".encode()
    decision = classify(message)
    expected = boxes[0][1].lower()
    assert decision.from_address == expected
    assert decision.from_domain == expected.rpartition("@")[2]
    assert decision.message_id == "<m@x>"
    # The stdlib reads the same address from the same field.
    assert getaddresses_first(scan(message).from_) == expected


@pytest.mark.parametrize(
    "header",
    [b"", b"From: \r\n", b"From: Mail Delivery System <>\r\n", b"From: MAILER-DAEMON\r\n",
     b"From: undisclosed-recipients:;\r\n", b"From: user@\r\n", b"From: (only a comment)\r\n"],
)
def test_absent_or_unusable_from_is_none(header: bytes) -> None:
    decision = classify(b"Subject: x\r\n" + header + b"\r\nbody")
    assert (decision.from_address, decision.from_domain, decision.message_id) == (None, None, None)


def test_first_usable_mailbox_and_first_from_field_win() -> None:
    message = b"From: Mail Delivery System <>, Postmaster@MX.Example.NET\nFrom: other@y.example\n\n"
    decision = classify(message)
    assert (decision.from_address, decision.from_domain) == ("postmaster@mx.example.net", "mx.example.net")
    assert classify("From: Jörg <Jörg@Bücher.Example>\n\n".encode()).from_address == "jörg@bücher.example"


def test_fields_are_read_from_the_message_the_decision_keeps() -> None:
    message = b"".join([b"Message-ID: <", str(id(object())).encode(), b"@x>\nFrom: a@B.example\n\n"])
    expected = scan(message).message_id
    decision = classify(message)
    del message
    gc.collect()
    assert (decision.message_id, decision.from_domain) == (expected, "b.example")
    # A bytearray in a batch is copied when extracted: changing it later changes nothing.
    mutable = bytearray(b"From: a@b.example\n\n")
    (batched,) = classify_many([mutable])  # type: ignore[list-item]
    mutable[6:7] = b"z"
    assert batched.from_address == "a@b.example"
