"""Groups `dkim-sign-ALGORITHM-SIZE`: signing one message, RSA-2048 and Ed25519, at 2 KiB,
100 KiB and 1 MiB, relaxed/relaxed, the same fields signed.

* `deliverypool`: `dkim_sign(message, [key], now)` from Python (the Rust core: the body hashed
  in one pass, the GIL released), what `Relay.accept` and the milter call.
* `baseline_dkimpy`: dkimpy's `dkim.sign` (pure Python, the usual Python signer).
* `baseline_opendkim_milter`: OpenDKIM as a signing milter, the way Postfix uses it: one whole
  milter exchange per message (benches/milter_client.py) on a kept connection over a Unix
  socket, the time until the signature comes back. OpenDKIM's own CPU per message is printed too (the exchange's
  round trips are in the wall time, not in its CPU).

The messages are written here: text lines with runs of spaces and tabs (canonicalisation has
work to do), CRLF. Quick mode (`--benchmark-disable`) runs each once.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from benches.milter_client import OPENDKIM, MilterClient, OpenDkimMilter
from deliverypool import _core

SIZES = {"2KiB": 2048, "100KiB": 100 * 1024, "1MiB": 1024 * 1024}
ALGORITHMS = ("rsa", "ed25519")
HEADERS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]
DOMAIN = "bench.test"


def message(size: int) -> bytes:
    head = (
        f"From: Sender <sender@{DOMAIN}>\r\nTo: rcpt@sink.test\r\nSubject: a benchmark message of {size} bytes\r\n"
        f"Date: Mon, 6 Jan 2025 10:00:00 +0000\r\nMessage-ID: <{size}@{DOMAIN}>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = "The quick  brown \t fox jumps over the lazy dog, again and again.  \r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return (head + body.rsplit("\r\n", 1)[0] + "\r\n").encode()


class Key:
    def __init__(self, algorithm: str, directory: Path) -> None:
        private = ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        der = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        self.name = "ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256"
        self.core = _core.DkimKey(der, algorithm=self.name, domain=DOMAIN, selector="bench", headers=HEADERS)
        # dkimpy takes an Ed25519 key as its base64 seed, an RSA key as PEM.
        self.dkimpy = (
            base64.b64encode(private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))
            if isinstance(private, ed25519.Ed25519PrivateKey)
            else private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
        )
        self.file = directory / f"{algorithm}.pem"
        self.file.write_bytes(self.pem)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    directory = tmp_path_factory.mktemp("dkim-keys")
    directory.chmod(0o755)
    return {algorithm: Key(algorithm, directory) for algorithm in ALGORITHMS}


@pytest.fixture(scope="module")
def milters(keys: dict[str, Key]) -> Iterator[dict[str, tuple[OpenDkimMilter, MilterClient]]]:
    if not Path(OPENDKIM).exists():
        pytest.skip("opendkim is not installed: run scripts/install-test-servers.sh")
    running: dict[str, tuple[OpenDkimMilter, MilterClient]] = {}
    try:
        for algorithm, key in keys.items():
            milter = OpenDkimMilter(key.file, domain=DOMAIN, selector="bench", algorithm=key.name)
            running[algorithm] = (milter, MilterClient(milter.path))
        yield running
    finally:
        for milter, client in running.values():
            client.close()
            milter.close()


CASES = [pytest.param(algorithm, size, id=f"{algorithm}-{name}") for algorithm in ALGORITHMS for name, size in SIZES.items()]


def _group(request: pytest.FixtureRequest, benchmark, algorithm: str, size: int) -> None:  # type: ignore[no-untyped-def]
    name = next(n for n, s in SIZES.items() if s == size)
    benchmark.group = f"dkim-sign-{algorithm}-{name}"
    benchmark.extra_info["ops"] = 1


@pytest.mark.parametrize(("algorithm", "size"), CASES)
def test_deliverypool(benchmark, request: pytest.FixtureRequest, keys: dict[str, Key], algorithm: str, size: int) -> None:  # type: ignore[no-untyped-def]
    _group(request, benchmark, algorithm, size)
    content = message(size)
    now = int(time.time())
    signing = benchmark(_core.dkim_sign, content, [keys[algorithm].core], now)
    assert signing.problem is None and signing.header.startswith(b"DKIM-Signature: v=1; a=" + keys[algorithm].name.encode())


@pytest.mark.parametrize(("algorithm", "size"), CASES)
def test_baseline_dkimpy(benchmark, request: pytest.FixtureRequest, keys: dict[str, Key], algorithm: str, size: int) -> None:  # type: ignore[no-untyped-def]
    import dkim

    _group(request, benchmark, algorithm, size)
    content = message(size)
    key = keys[algorithm]
    header = benchmark(
        dkim.sign, content, b"bench", DOMAIN.encode(), key.dkimpy, canonicalize=(b"relaxed", b"relaxed"),
        include_headers=[h.lower().encode() for h in HEADERS], signature_algorithm=key.name.encode(),
    )
    assert header.startswith(b"DKIM-Signature:")


@pytest.mark.parametrize(("algorithm", "size"), CASES)
def test_baseline_opendkim_milter(benchmark, request: pytest.FixtureRequest, milters: dict[str, tuple[OpenDkimMilter, MilterClient]], algorithm: str, size: int) -> None:  # type: ignore[no-untyped-def]
    _group(request, benchmark, algorithm, size)
    content = message(size)
    milter, client = milters[algorithm]
    before = milter.cpu_seconds()
    added = benchmark(client.message, content)
    assert [name for name, _ in added] == [b"DKIM-Signature"], added
    rounds = benchmark.stats.stats.rounds if benchmark.stats is not None else 0
    if rounds:
        benchmark.extra_info["opendkim_cpu_us_per_message"] = round((milter.cpu_seconds() - before) / rounds * 1e6, 1)
