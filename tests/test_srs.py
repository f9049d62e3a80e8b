"""SRS: round trips and refusals (hypothesis), key files and rotation, and compatibility with
the reference implementation, Perl's Mail::SRS (Debian's libmail-srs-perl): each side reverses
what the other wrote, and both write the same address for the same sender, key and day."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool.auth import SRS_ERRORS, AuthError, SrsError, SrsRewriter, is_srs
from deliverypool.auth.srs import load_keys, rewriter_from_key_file

NOW = 1_700_000_000
DAY = 86_400

local_parts = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=40)
labels = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz0123456789-"), min_size=1, max_size=12).filter(lambda s: not s.startswith("-"))
domains = st.lists(labels, min_size=2, max_size=4).map(".".join)
keys = st.binary(min_size=1, max_size=40).filter(lambda k: b"\n" not in k)


@given(local=local_parts, domain=domains, key=keys, age=st.integers(0, 21), separator=st.sampled_from("=+-"))
def test_srs0_round_trips_within_its_age(local: str, domain: str, key: bytes, age: int, separator: str) -> None:
    srs = SrsRewriter("relay.example", [key], separator=separator)
    sender = f"{local}@{domain}"
    rewritten = srs.forward(sender, now=NOW)
    assert is_srs(rewritten) and rewritten.endswith("@relay.example")
    assert srs.reverse(rewritten, now=NOW + age * DAY) == sender
    # MTAs may change the case of a local part: the hash and timestamp are read without case.
    assert srs.reverse(rewritten.lower(), now=NOW).lower() == sender.lower()


@given(local=local_parts, domain=domains, age=st.integers(22, 1000))
def test_expired_addresses_are_refused(local: str, domain: str, age: int) -> None:
    srs = SrsRewriter("relay.example", [b"k"])
    rewritten = srs.forward(f"{local}@{domain}", now=NOW)
    with pytest.raises(SrsError) as caught:
        srs.reverse(rewritten, now=NOW + age * DAY)
    assert caught.value.reason == "expired"


@given(local=local_parts, domain=domains, other=local_parts)
def test_forged_addresses_are_refused(local: str, domain: str, other: str) -> None:
    srs = SrsRewriter("relay.example", [b"secret"])
    rewritten = srs.forward(f"{local}@{domain}", now=NOW)
    head, _, _ = rewritten.rpartition("=")
    forged = f"{head}={other}@relay.example"
    if forged.lower() == rewritten.lower():
        return
    with pytest.raises(SrsError) as caught:
        srs.reverse(forged, now=NOW)
    assert caught.value.reason in ("bad-hash", "malformed")


@given(local=local_parts, domain=domains)
def test_srs1_chain_reverses_hop_by_hop(local: str, domain: str) -> None:
    first = SrsRewriter("hop1.example", [b"one"])
    second = SrsRewriter("hop2.example", [b"two"])
    srs0 = first.forward(f"{local}@{domain}", now=NOW)
    srs1 = second.forward(srs0, now=NOW)
    assert srs1.startswith("SRS1=") and "=hop1.example==" in srs1
    assert second.reverse(srs1, now=NOW) == srs0
    assert first.reverse(srs0, now=NOW) == f"{local}@{domain}"


@given(text=st.text(max_size=80))
def test_reverse_never_crashes(text: str) -> None:
    srs = SrsRewriter("relay.example", [b"k"])
    try:
        srs.reverse(text, now=NOW)
    except SrsError as error:
        assert error.reason in SRS_ERRORS


def test_rotation_and_key_files(tmp_path: Path) -> None:
    old = SrsRewriter("relay.example", [b"old-key"]).forward("user@orig.example", now=NOW)
    key_file = tmp_path / "srs.keys"
    key_file.write_bytes(b"# rotated on 2026-12-01\nnew-key\n\nold-key\n")
    assert load_keys(key_file) == [b"new-key", b"old-key"]
    srs = rewriter_from_key_file("relay.example", key_file)
    assert srs.reverse(old, now=NOW) == "user@orig.example"
    assert srs.forward("user@orig.example", now=NOW) != old, "the first key signs"
    retired = rewriter_from_key_file("relay.example", _write(tmp_path / "new.keys", b"new-key\n"))
    with pytest.raises(SrsError, match="does not match") as caught:
        retired.reverse(old, now=NOW)
    assert caught.value.reason == "bad-hash"
    with pytest.raises(ValueError, match="holds no key"):
        load_keys(_write(tmp_path / "empty.keys", b"\n# nothing\n"))
    with pytest.raises(ValueError, match="missing.keys"):
        load_keys(tmp_path / "missing.keys")
    with pytest.raises(AuthError, match="SRS domain"):
        SrsRewriter("relay", [b"k"])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _perl(script: str, *args: str) -> str:
    return subprocess.run(["perl", "-MMail::SRS", "-e", script, *args], check=True, capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def mail_srs() -> None:
    if shutil.which("perl") is None or subprocess.run(["perl", "-MMail::SRS", "-e", "1"], capture_output=True).returncode:
        message = "Mail::SRS is not installed: run scripts/install-test-servers.sh (libmail-srs-perl)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def test_compatible_with_mail_srs(mail_srs: None) -> None:
    ours = SrsRewriter("relay.example", [b"secret"])
    now = int(time.time())
    perl_forward = "my $s = Mail::SRS->new(Secret => [$ARGV[0]], AlwaysRewrite => 1); print $s->forward($ARGV[1], $ARGV[2]);"
    theirs = _perl(perl_forward, "secret", "user@orig.example", "relay.example")
    if srs_day(now) == srs_day(int(time.time())):  # not across midnight
        assert ours.forward("user@orig.example", now=now) == theirs
    assert ours.reverse(theirs) == "user@orig.example"
    # Theirs reverses ours, SRS0 and SRS1 alike.
    perl_reverse = "my $s = Mail::SRS->new(Secret => [$ARGV[0]]); print $s->reverse($ARGV[1]);"
    assert _perl(perl_reverse, "secret", ours.forward("Some.One@Orig.Example")) == "Some.One@Orig.Example"
    srs1 = ours.forward(SrsRewriter("hop1.example", [b"k1"]).forward("user@orig.example"))
    assert srs1.startswith("SRS1=")
    assert _perl(perl_reverse, "secret", srs1) == ours.reverse(srs1)
    # An SRS1 address written by Mail::SRS reverses here to the same SRS0 address.
    theirs1 = _perl(perl_forward, "secret", SrsRewriter("hop1.example", [b"k1"]).forward("user@orig.example"), "relay.example")
    assert ours.reverse(theirs1) == _perl(perl_reverse, "secret", theirs1)


def srs_day(now: int) -> int:
    return now // DAY
