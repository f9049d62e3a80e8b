"""DKIM: the relay's signatures checked by two independent verifiers (dkimpy and OpenDKIM, the
keys in NSD's dkim.test zone: tests/dkim_verifiers.py), RSA 2048/3072 and Ed25519, messages of
2 KB to 1 MB with CRLF or LF, 8-bit, long folded headers; a message altered after signing
fails both. Then the relay end to end (signed before spooling, the outcome on Accepted and in
the event, unsigned mail delivered with its reason, client signatures checked and never
repaired), key rotation (reload), the key files refused at load, sign-then-verify for random
headers and bodies (hypothesis)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from deliverypool import _core
from deliverypool.app import Relay
from deliverypool.auth.dkim import UNSIGNED, DkimOutcome, DkimSigner
from deliverypool.config import ConfigError, RelayConfig, loads
from deliverypool.observe.events import Event, MessageAccepted, as_json
from tests.dkim_verifiers import DOMAIN, SessionKeys, Verifiers
from tests.dnsserver import NsdServer
from tests.smtp_sinks import Sink, free_port, relay_config, sink

Run = Callable[[Coroutine[Any, Any, Any]], Any]

POOLS = '[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n'


def mail(
    size: int,
    *,
    crlf: bool = True,
    eight_bit: bool = False,
    folded: bool = False,
    final_newline: bool = True,
    sender: str = f"alice@{DOMAIN}",
    subject: str = "hello",
    extra: str = "",
) -> bytes:
    """A message of about `size` bytes that canonicalisation has work to do on: runs of spaces
    and tabs, trailing white space, empty lines at the end."""
    headers = [
        f"From: Alice <{sender}>",
        "To: bob@dest.test",
        f"Subject: {subject}" + (" gr\u00fc\u00dfe aus K\u00f6ln \u2013 \u00e9t\u00e9" if eight_bit else ""),
        "Date: Mon, 6 Jan 2025 10:00:00 +0000",
        f"Message-ID: <{time.monotonic_ns()}.{size}@{DOMAIN}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if folded:
        headers.append("References: " + "\n\t".join(f"<ref{i}.{'x' * 40}@{DOMAIN}>" for i in range(40)))
        headers.append("X-Long:   spaced  \t value\n   continued   here\n\tand\t\there  ")
    if extra:
        headers.append(extra)
    line = "Caf\u00e9  cr\u00e8me \t br\u00fbl\u00e9e,   twice  \u00fcber alles. " if eight_bit else "The quick  brown \t fox jumps   over the lazy dog.  "
    lines: list[str] = []
    total = 0
    while total < size:
        text = f"{len(lines):06d} {line}"
        lines.append(text)
        total += len(text.encode()) + 2
    body = "\n".join(lines) + ("\n\n\n" if final_newline else "")
    text = "\n".join(headers) + "\n\n" + body
    data = text.encode("utf-8")
    return data.replace(b"\n", b"\r\n") if crlf else data


def altered_body(message: bytes) -> bytes:
    at = message.index(b"quick") if b"quick" in message else message.index(b"twice")
    return message[:at] + b"Q" + message[at + 1 :]


def key_table(keys: SessionKeys, selector: str, *, extra: str = "") -> str:
    return f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "{selector}"\nkey_file = "{keys.files[selector]}"\n{extra}'


def signer(keys: SessionKeys, *selectors: str) -> DkimSigner:
    config = loads(POOLS + "".join(key_table(keys, s) for s in selectors))
    return DkimSigner(config)


# --- both verifiers accept what the signer makes, and refuse it altered -----------------------------


MESSAGES = {
    "2KB-crlf": dict(size=2048),
    "2KB-lf-folded": dict(size=2048, crlf=False, folded=True),
    "100KB-8bit-folded": dict(size=100 * 1024, eight_bit=True, folded=True),
    "100KB-lf-8bit-no-final-newline": dict(size=100 * 1024, crlf=False, eight_bit=True, final_newline=False),
    "1MB-crlf-8bit-folded": dict(size=1024 * 1024, eight_bit=True, folded=True),
    "1MB-lf": dict(size=1024 * 1024, crlf=False),
}


@pytest.mark.parametrize("kind", MESSAGES)
def test_rsa_2048_rsa_3072_and_ed25519_signatures_pass_both_verifiers_and_fail_altered(kind: str, dkim_keys: SessionKeys, verifiers: Verifiers) -> None:
    message = mail(**MESSAGES[kind])  # type: ignore[arg-type]
    dkim = signer(dkim_keys, "rsa2048", "rsa3072", "ed")
    keys, why = dkim.choose(DOMAIN, None)
    assert why is None and [k.algorithm for k in keys] == ["rsa-sha256", "rsa-sha256", "ed25519-sha256"]
    signed, outcome = dkim.sign_now(message, keys)
    assert [s.selector for s in outcome.signed] == ["rsa2048", "rsa3072", "ed"] and outcome.unsigned is None
    assert signed.endswith(message) and signed.count(b"DKIM-Signature:") == 3
    assert re.search(rb"[;\s]l=", signed[: len(signed) - len(message)]) is None  # never l=
    if not signed.endswith(b"\n"):
        signed += b"\r\n" if MESSAGES[kind].get("crlf", True) else b"\n"  # as SMTP carries it: DATA ends with CRLF
    checks = verifiers.both(signed)
    assert [(c.selector, c.dkimpy, c.opendkim) for c in checks] == [(s, True, "pass") for s in ("rsa2048", "rsa3072", "ed")]
    # One byte of the body changed after signing: every signature fails in both.
    broken = verifiers.both(altered_body(signed))
    assert [(c.dkimpy, c.opendkim) for c in broken] == [(False, "fail")] * 3


def test_a_signed_field_changed_or_a_from_added_fails_both(dkim_keys: SessionKeys, verifiers: Verifiers) -> None:
    dkim = signer(dkim_keys, "ed")
    signed, _ = dkim.sign_now(mail(2048), dkim.choose(DOMAIN, None)[0])
    assert [(c.dkimpy, c.opendkim) for c in verifiers.both(signed)] == [(True, "pass")]
    for changed in (signed.replace(b"Subject: hello", b"Subject: hellO"), signed.replace(b"To: bob", b"From: mallory@evil.test\r\nTo: bob")):
        assert [(c.dkimpy, c.opendkim) for c in verifiers.both(changed)] == [(False, "fail")]


# --- the relay ------------------------------------------------------------------------------------


def relay_with_dkim(
    tmp_path: Path, nsd: NsdServer, keys: SessionKeys, port: int, *, dkim: str = "", tenants: str = '[tenants.other]\nnetworks = ["127.0.0.99/32"]\n'
) -> RelayConfig:
    extra = (
        f"{tenants}\n[dkim]\nexpire = \"7d\"\n{dkim}\n"
        + key_table(keys, "ed")
        + key_table(keys, "rsa2048", extra="subdomains = true\n")
        + f'[[dkim.keys]]\ndomain = "other.{DOMAIN}"\nselector = "other"\nkey_file = "{keys.files["other"]}"\ntenant = "other"\n'
    )
    return relay_config(
        tmp_path / "spool", smarthost=f"127.0.0.20:{port}", nameserver=nsd.address,
        extra=extra + '[observe]\nflush_interval = "1h"\n',  # the counters stay for the test to read
    )


@contextlib.asynccontextmanager
async def running(conf: RelayConfig) -> AsyncIterator[tuple[Relay, list[Event]]]:
    relay = Relay(conf)
    events: list[Event] = []
    relay.observer.bus.subscribe("test", events.append)
    await relay.start()
    await relay.listen()
    try:
        yield relay, events
    finally:
        await relay.stop()


async def send(conf: RelayConfig, content: bytes, sender: str = f"alice@{DOMAIN}") -> None:
    await aiosmtplib.send(content, sender=sender, recipients=["bob@dest.test"], hostname="127.0.0.1", port=conf.listener.port)


def arrived(destination: Sink, message_id: bytes) -> bytes:
    [delivery] = [d for d in destination.deliveries if message_id in d.content]
    return delivery.content


def message_id_of(content: bytes) -> bytes:
    start = content.index(b"Message-ID: ") + 12
    return content[start : content.index(b">", start) + 1]


def test_the_relay_signs_at_acceptance_and_what_arrives_passes_both_verifiers(
    aio_run: Run, tmp_path: Path, nsd: NsdServer, dkim_keys: SessionKeys, verifiers: Verifiers
) -> None:
    """Mail from dkim.test is signed with both of its keys (Ed25519 and RSA: dual signing), mail
    from news.dkim.test with the RSA key only (subdomains = true), before it is spooled; the
    outcome is on what accept returns and in the accepted event, and the metric counts it."""
    port = free_port()
    conf = relay_with_dkim(tmp_path, nsd, dkim_keys, port)
    accepted: list[Any] = []

    async def main() -> None:
        async with sink("127.0.0.20", port, "smarthost") as destination, running(conf) as (relay, events):
            relay.on_accept = lambda result, content: accepted.append((result, content))
            big = mail(100 * 1024, eight_bit=True, folded=True)
            news = mail(4096, sender=f"bob@news.{DOMAIN}")
            await send(conf, big)
            await send(conf, news, sender=f"bob@news.{DOMAIN}")
            await destination.wait_for(2)
            # The spooled copy is the signed one: what went out is what was stored.
            assert [content for _, content in accepted] == [arrived(destination, message_id_of(m)) for m in (big, news)]
            checks = [verifiers.both(arrived(destination, message_id_of(m))) for m in (big, news)]
            assert [[(c.selector, c.dkimpy, c.opendkim) for c in each] for each in checks] == [
                [("ed", True, "pass"), ("rsa2048", True, "pass")],
                [("rsa2048", True, "pass")],
            ]
            first, second = (result.dkim for result, _ in accepted)
            assert [(s.domain, s.selector, s.algorithm) for s in first.signed] == [(DOMAIN, "ed", "ed25519-sha256"), (DOMAIN, "rsa2048", "rsa-sha256")]
            assert [s.domain for s in second.signed] == [DOMAIN] and first.unsigned is None and first.checks == ()
            await asyncio.sleep(0.2)
            [event, _] = [e for e in events if isinstance(e, MessageAccepted)]
            assert event.dkim == first
            assert as_json(event)["dkim"]["signed"][0] == {"domain": DOMAIN, "selector": "ed", "algorithm": "ed25519-sha256"}
            assert relay.observer.metrics.counts[("deliverypool_dkim_signing_total", (("result", "signed"),))] == 2
            # The signature has t= and, with dkim.expire, x= a week later; never l=.
            field = arrived(destination, message_id_of(news)).split(b"\r\n\r\n")[0]
            tags = field.split(b"DKIM-Signature:", 1)[1].split(b"\r\n", 3)[1]
            t, x = (int(tags.split(name)[1].split(b";")[0]) for name in (b"t=", b"x="))
            assert x - t == 7 * 86400 and b" l=" not in field

    aio_run(main())


def test_unsigned_mail_is_delivered_with_its_reason_and_client_signatures_are_checked_never_repaired(
    aio_run: Run, tmp_path: Path, nsd: NsdServer, dkim_keys: SessionKeys, verifiers: Verifiers
) -> None:
    """No From, two From fields, a domain without a key, another tenant's domain: delivered as
    they came, each with its reason. A message the client signed itself (dkimpy, key ed) is
    checked: pass; the same signature broken in transit is reported fail and goes out as it
    came (both verifiers still refuse it), next to the relay's own, which passes."""
    import dkim

    port = free_port()
    conf = relay_with_dkim(tmp_path, nsd, dkim_keys, port)
    accepted: list[Any] = []
    ed_pem = dkim_keys.files["ed"].read_bytes()
    private = serialization.load_pem_private_key(ed_pem, password=None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    seed = base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))

    def client_signed(content: bytes) -> bytes:
        header = dkim.sign(content, b"ed", DOMAIN.encode(), seed, signature_algorithm=b"ed25519-sha256", include_headers=[b"from", b"subject"])
        return header + content

    cases = {
        "no-from": mail(2048).replace(f"From: Alice <alice@{DOMAIN}>\r\n".encode(), b""),
        "multiple-from": mail(2048, extra=f"From: eve@{DOMAIN}"),
        "no-key": mail(2048, sender="carol@other.test"),
        "other-tenant": mail(2048, sender=f"mallory@other.{DOMAIN}"),
    }
    good = client_signed(mail(3000, sender=f"carol@{DOMAIN}", subject="client signed"))
    broken = altered_body(client_signed(mail(3000, sender=f"carol@{DOMAIN}", subject="broken in transit")))

    async def main() -> None:
        async with sink("127.0.0.20", port, "smarthost") as destination, running(conf) as (relay, events):
            relay.on_accept = lambda result, content: accepted.append(result)
            for content in (*cases.values(), good, broken):
                await send(conf, content)
            await destination.wait_for(len(cases) + 2)
            outcomes = [result.dkim for result in accepted]
            assert [o.unsigned for o in outcomes[: len(cases)]] == list(cases)
            for content in cases.values():  # delivered as it came: nothing added
                assert arrived(destination, message_id_of(content)).endswith(content)
                assert b"DKIM-Signature" not in arrived(destination, message_id_of(content))
            good_outcome, broken_outcome = outcomes[len(cases) :]
            assert [(c.domain, c.selector, c.algorithm, c.result, c.reason) for c in good_outcome.checks] == [(DOMAIN, "ed", "ed25519-sha256", "pass", None)]
            assert [(c.result, c.reason) for c in broken_outcome.checks] == [("fail", "body-hash-mismatch")]
            # The relay signed both too; its signature is first, the client's kept as it came.
            out = arrived(destination, message_id_of(broken))
            assert out.endswith(broken)
            assert [(c.selector, c.dkimpy, c.opendkim) for c in verifiers.both(out)] == [("ed", True, "pass"), ("rsa2048", True, "pass"), ("ed", False, "fail")]
            await asyncio.sleep(0.2)
            counted = [e.dkim for e in events if isinstance(e, MessageAccepted)]
            assert counted == outcomes
            assert set(UNSIGNED) >= {o.unsigned for o in outcomes if o.unsigned}

    aio_run(main())


def test_reload_rotates_the_keys_and_a_broken_file_keeps_the_ones_in_use(aio_run: Run, tmp_path: Path, nsd: NsdServer, dkim_keys: SessionKeys, verifiers: Verifiers) -> None:
    port = free_port()
    path = tmp_path / "relay.toml"

    def write(selector: str, key_file: Path) -> None:
        conf = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}", nameserver=nsd.address, listen_port=listen)
        text = f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "{selector}"\nkey_file = "{key_file.name}"\n'
        (tmp_path / key_file.name).write_bytes(key_file.read_bytes()) if key_file.exists() else None
        path.write_text(_toml(conf) + "\n[observe]\nflush_interval = \"1h\"\n" + text)

    listen = free_port()
    write("ed", dkim_keys.files["ed"])

    async def main() -> None:
        from deliverypool.config import load

        conf = load(path)
        async with sink("127.0.0.20", port, "smarthost") as destination, running(conf) as (relay, _):
            first = mail(2048, subject="before")
            await send(conf, first)
            write("ed-next", dkim_keys.files["ed-next"])
            assert await relay.reload(path)
            second = mail(2048, subject="after")
            await send(conf, second)
            # A configuration whose key file has gone: refused, the keys in use stay.
            write("ed", tmp_path / "gone.pem")
            assert not await relay.reload(path)
            third = mail(2048, subject="after a bad reload")
            await send(conf, third)
            await destination.wait_for(3)
            selectors = [[c.selector for c in verifiers.both(arrived(destination, message_id_of(m)))] for m in (first, second, third)]
            assert selectors == [["ed"], ["ed-next"], ["ed-next"]]
            assert relay.observer.metrics.counts[("deliverypool_dkim_reloads_total", (("result", "ok"),))] == 1
            assert relay.observer.metrics.counts[("deliverypool_dkim_reloads_total", (("result", "failed"),))] == 1

    aio_run(main())


def _toml(conf: RelayConfig) -> str:
    """A relay_config() as TOML text again (the tables these tests use)."""
    pools = "".join(
        f'[pools.{name}]\nsource_addresses = ["{pool.source_addresses[0].address}"]\ndelivery = "smarthost"\nsmarthost = "{pool.smarthost[0]}:{pool.smarthost[1]}"\n'
        'idle_timeout = "200ms"\n'
        for name, pool in conf.pools.items()
        if pool.smarthost is not None
    )
    ns = ", ".join(f'"{h}:{p}"' for h, p in conf.dns.nameservers)
    return (
        f'hostname = "relay.test"\n[listener]\naddress = "127.0.0.1:{conf.listener.port}"\n[spool]\ndirectory = "{conf.spool.directory}"\n'
        f"[dns]\nnameservers = [{ns}]\ntimeout = \"1s\"\n{pools}"
    )


# --- key files refused at load ----------------------------------------------------------------------


def test_key_files_are_checked_at_load_one_line_naming_the_key(tmp_path: Path, dkim_keys: SessionKeys) -> None:
    def pem(key: Any, password: bytes | None = None) -> bytes:
        encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))

    files = {
        "short.pem": pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
        "ec.pem": pem(ec.generate_private_key(ec.SECP256R1())),
        "locked.pem": pem(ed25519.Ed25519PrivateKey.generate(), b"secret"),
        "junk.pem": b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "ed.pem").write_bytes(dkim_keys.files["ed"].read_bytes())

    def problem(key: str, extra: str = "") -> str:
        text = POOLS + f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s1"\nkey_file = "{key}"\n{extra}'
        with pytest.raises(ConfigError) as error:
            loads(text, base=tmp_path)
        assert "\n" not in str(error.value)
        return str(error.value)

    assert problem("missing.pem") == f"dkim.keys[0].key_file: cannot read '{tmp_path / 'missing.pem'}': No such file or directory"
    assert problem("short.pem") == "dkim.keys[0].key_file: too short: a 1024-bit RSA key (at least 2048 bits)"
    assert problem("ec.pem") == "dkim.keys[0].key_file: wrong type: an elliptic-curve (EC) key (DKIM signs with RSA or Ed25519)"
    assert problem("locked.pem").startswith("dkim.keys[0].key_file: ") and "is encrypted" in problem("locked.pem")
    assert problem("junk.pem").endswith("is not a PEM private key")
    assert problem("ed.pem", 'algorithm = "rsa-sha256"') == "dkim.keys[0].algorithm: the key file holds an ed25519-sha256 key"
    assert problem("ed.pem", 'tenant = "nobody"') == "dkim.keys[0].tenant: no tenant named 'nobody'"
    # Relative to the configuration file's folder; one good key loads.
    config = loads(POOLS + f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s1"\nkey_file = "ed.pem"\n', base=tmp_path)
    assert config.dkim.keys[0].path == tmp_path / "ed.pem" and config.dkim.keys[0].bits == 256
    twice = POOLS + 2 * f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s1"\nkey_file = "ed.pem"\n'
    with pytest.raises(ConfigError, match=r"^dkim.keys\[1\].selector: s1._domainkey.dkim.test is configured twice$"):
        loads(twice, base=tmp_path)


# --- sign then verify, for random headers and bodies (hypothesis) ---------------------------------


_NAMES = st.sampled_from(["Subject", "To", "Cc", "Date", "Message-ID", "X-Custom", "Reply-To", "List-Id", "Content-Type"])
# Field text: no control characters (RFC 5322 has none but HTAB, which the folding adds; dkimpy
# reads \f and \v as white space, RFC 6376 only SP and HTAB).
_VALUE_CHARS = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs"))
_BODY_LINE = st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=120)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    crlf = draw(st.booleans())
    end = "\r\n" if crlf else "\n"
    fields = [f"From: {draw(st.text(_VALUE_CHARS, max_size=20))} <a@{DOMAIN}>"]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(_NAMES)
        parts = draw(st.lists(st.text(_VALUE_CHARS, min_size=1, max_size=30), min_size=1, max_size=3))
        fold = draw(st.sampled_from([" ", "\t", "  "]))
        fields.append(f"{name}:{draw(st.sampled_from(['', ' ', '  ', chr(9)]))}" + (end + fold).join(parts))
    draw(st.randoms()).shuffle(fields)
    lines = draw(st.lists(_BODY_LINE, max_size=30))
    body = end.join(lines) + draw(st.sampled_from(["", end, end * 3]))
    return (end.join(fields) + end + end + body).encode("utf-8")


@pytest.fixture(scope="module")
def round_trip_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[_core.DkimKey], dict[str, tuple[bytes, ...] | None]]:
    from tests.dkim_verifiers import make_keys

    keys = make_keys(tmp_path_factory.mktemp("keys"))
    signing = [DkimSigner(loads(POOLS + key_table(keys, s, extra=f'headers = ["Subject", "To", "Cc", "Date", "X-Custom", "List-Id"]\n'))).choose(DOMAIN, None)[0][0] for s in ("rsa2048", "ed")]
    canon = ["simple/simple", "relaxed/simple", "simple/relaxed"]
    extra = [
        _core.DkimKey(keys_der(keys.files["ed"]), algorithm="ed25519-sha256", domain=DOMAIN, selector="ed", headers=["subject", "to"], canonicalization=c)
        for c in canon
    ]
    records: dict[str, tuple[bytes, ...] | None] = {f"{s}._domainkey.{DOMAIN}": (keys.records[s].encode(),) for s in ("rsa2048", "ed")}
    return signing + extra, records


def keys_der(path: Path) -> bytes:
    from deliverypool.config.dkim import read_private_key

    return read_private_key(path)[1]


@settings(max_examples=150, deadline=None)
@given(message=messages())
def test_sign_then_verify_round_trips(message: bytes, round_trip_keys: tuple[list[_core.DkimKey], dict[str, tuple[bytes, ...] | None]]) -> None:
    """Every canonicalization pair, RSA and Ed25519: what the signer signs the Rust verifier
    and dkimpy accept, and a changed body byte (when there is one that counts) they refuse."""
    import dkim

    keys, records = round_trip_keys
    signing = _core.dkim_sign(message, keys, int(time.time()))
    assert signing.problem is None, signing
    signed = signing.header + message
    if not signed.endswith(b"\n"):
        signed += b"\n"  # as SMTP carries it: DATA ends with CRLF
    verdicts = _core.dkim_verify(signed, records, int(time.time()))
    assert [(v.result, v.reason) for v in verdicts] == [("pass", None)] * len(keys)
    checker = dkim.DKIM(signed)

    def dns(name: bytes, timeout: float = 5) -> bytes | None:
        found = records.get(name.decode().rstrip("."))
        return found[0] if found else None

    assert all(checker.verify(idx=i, dnsfunc=dns) for i in range(len(keys))), signed
    body_at = signed.find(b"\r\n\r\n" if b"\r\n\r\n" in signed else b"\n\n")
    letters = [i for i in range(body_at + 2, len(signed)) if chr(signed[i]).isalnum()]
    if letters:
        i = letters[0]
        changed = signed[:i] + (b"Z" if signed[i : i + 1] != b"Z" else b"Y") + signed[i + 1 :]
        assert all(v.result == "fail" for v in _core.dkim_verify(changed, records, int(time.time())))


def test_the_outcome_is_json_ready() -> None:
    outcome = DkimOutcome(unsigned="no-key")
    assert dataclasses.asdict(outcome) == {"signed": (), "unsigned": "no-key", "checks": ()}


@pytest.mark.slow
def test_sighup_to_deliverypool_relay_rotates_every_workers_key(tmp_path: Path, nsd: NsdServer, dkim_keys: SessionKeys, verifiers: Verifiers) -> None:
    """`deliverypool relay --workers 2`: SIGHUP to the supervisor reaches both workers, and the
    mail each accepts afterwards is signed with the new selector (both verifiers pass it)."""
    import signal

    from tests.test_crash import RelayProcess

    port, listen = free_port(), free_port()
    config = tmp_path / "relay.toml"
    base = relay_config(tmp_path / "spool", smarthost=f"127.0.0.20:{port}", nameserver=nsd.address, listen_port=listen)

    def write(selector: str) -> None:
        config.write_text(_toml(base) + key_table(dkim_keys, selector))

    write("ed")
    relay = RelayProcess(config, listen, "asyncio", workers=2)

    async def main() -> None:
        async with sink("127.0.0.20", port, "smarthost") as destination:
            await relay.start()
            try:
                before = [mail(2048, subject=f"before {i}") for i in range(4)]
                for content in before:
                    await send(base, content)
                write("ed-next")
                assert relay.process is not None
                relay.process.send_signal(signal.SIGHUP)  # whether or not both workers are ready yet
                log = tmp_path / "relay.log"
                deadline = asyncio.get_running_loop().time() + 30
                while log.read_text().count("SIGHUP: DKIM keys reloaded") < 2:
                    assert asyncio.get_running_loop().time() < deadline, log.read_text()[-3000:]
                    await asyncio.sleep(0.05)
                # Separate connections: the kernel hands them to either worker.
                after = [mail(2048, subject=f"after {i}") for i in range(6)]
                for content in after:
                    await send(base, content)
                await destination.wait_for(len(before) + len(after))
            finally:
                relay.stop()
            assert "exited with" not in (tmp_path / "relay.log").read_text()  # no worker died of the signal
            for contents, selector in ((before, "ed"), (after, "ed-next")):
                for content in contents:
                    checks = verifiers.dkimpy(arrived(destination, message_id_of(content)))
                    assert checks == [(selector, True)]

    asyncio.run(main())  # one event loop: the relay's processes are what is tested


_FIELD_NAMES = [b"DKIM-Signature", b"dkim-signature", b"Dkim-SIGNATURE", b"X-DKIM-Signature", b"DKIM-Signatures", b"Subject", b"Received"]


@settings(max_examples=300)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(_FIELD_NAMES), st.sampled_from([b":", b" :", b"\t:"]), st.binary(max_size=24).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))),
        max_size=6,
    ),
    in_body=st.booleans(),
)
def test_a_signature_field_is_found_in_any_case_and_only_in_the_header(fields: list[tuple[bytes, bytes, bytes]], in_body: bool) -> None:
    """`has_signature` (the cheap look before a DKIM check): a DKIM-Signature field in any case,
    spaces before its colon allowed; not another field whose name holds the words, not a value
    that does, not the body."""
    from deliverypool.auth.dkim import has_signature

    header = b"".join(name + colon + b" " + value + b"\r\n" for name, colon, value in fields)
    body = b"DKIM-Signature: v=1; in the body\r\n" if in_body else b"text\r\n"
    expected = any(name.lower() == b"dkim-signature" for name, _, _ in fields)
    assert has_signature(header + b"From: a@b.test\r\n\r\n" + body) is expected
