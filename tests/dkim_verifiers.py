"""DKIM for the tests: keys made at the start of the session and published as TXT records in
NSD's zone ``dkim.test`` (tests/dnsserver.py), and two independent verifiers that find them
there:

* **dkimpy** (``dkim.DKIM.verify``, the library behind its ``dkimverify`` command), its DNS
  function asking NSD directly;
* **OpenDKIM** (``opendkim -t FILE``, its test mode: libopendkim checks the message as the milter
  would and prints the Authentication-Results field), its resolver libunbound forwarding
  ``dkim.test`` to NSD (``ResolverConfiguration``; ``opendkim-testmsg`` has no way to name a
  nameserver, and a resolv.conf cannot name a port).

``scripts/install-test-servers.sh`` installs opendkim and opendkim-tools; pyproject's ``test``
extra dkimpy and pynacl (its Ed25519). Nothing here sends a packet beyond 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.dnsserver import HOST, NsdServer

OPENDKIM = "/usr/sbin/opendkim"
DOMAIN = "dkim.test"
# The selectors of the session's keys, and the kind of each.
KEYS: dict[str, tuple[str, int]] = {
    "rsa2048": ("rsa", 2048),
    "rsa3072": ("rsa", 3072),
    "ed": ("ed25519", 256),
    "ed-next": ("ed25519", 256),  # the rotation tests' next key
    "other": ("ed25519", 256),  # another tenant's
}


def zone_base(serial: int) -> str:
    return (
        f"$ORIGIN {DOMAIN}.\n$TTL 300\n"
        f"@ 3600 IN SOA ns.dp.test. hostmaster.dp.test. {serial} 3600 900 604800 60\n"
        "@ NS ns.dp.test.\n"
        "@ MX 10 mail.other.test.\n"
        "news MX 10 mail.other.test.\n"
        "other MX 10 mail.other.test.\n"
        # Records the verification tests need besides the keys.
        'revoked._domainkey TXT "v=DKIM1; k=ed25519; p="\n'
        'garbage._domainkey TXT "v=DKIM1; k=rsa; p=notbase64!!"\n'
    )


def _txt(text: str) -> str:
    """A TXT record's strings: at most 255 bytes each."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


@dataclass
class SessionKeys:
    """The session's key files (PEM) by selector, and their public records."""

    directory: Path
    files: dict[str, Path] = field(default_factory=dict)
    records: dict[str, str] = field(default_factory=dict)

    def zone(self, serial: int) -> str:
        lines = [zone_base(serial)]
        lines += [f"{selector}._domainkey TXT {_txt(record)}\n" for selector, record in self.records.items()]
        return "".join(lines)


def make_keys(directory: Path) -> SessionKeys:
    keys = SessionKeys(directory)
    for selector, (kind, bits) in KEYS.items():
        if kind == "rsa":
            private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
            public = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        else:
            edkey = ed25519.Ed25519PrivateKey.generate()
            public = edkey.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            pem = edkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        path = directory / f"{selector}.pem"
        path.write_bytes(pem)
        keys.files[selector] = path
        keys.records[selector] = f"v=DKIM1; k={kind}; p={base64.b64encode(public).decode()}"
    return keys


@dataclass(frozen=True)
class Check:
    """One signature as both verifiers saw it."""

    selector: str
    dkimpy: bool
    opendkim: str  # pass, fail, ... as OpenDKIM's Authentication-Results says


class Verifiers:
    """dkimpy and OpenDKIM, both asking NSD for the keys."""

    def __init__(self, nsd: NsdServer, work: Path) -> None:
        self.port = nsd.port
        self.work = work
        (work / "unbound.conf").write_text(
            "server:\n"
            "    do-not-query-localhost: no\n"
            '    local-zone: "test." nodefault\n'
            '    domain-insecure: "test."\n'
            "forward-zone:\n"
            f'    name: "{DOMAIN}"\n'
            f"    forward-addr: {HOST}@{nsd.port}\n"
        )
        (work / "opendkim.conf").write_text(f"Mode v\nResolverConfiguration {work / 'unbound.conf'}\nSyslog no\n")
        self.count = 0

    def _dns(self, name: bytes, timeout: float = 5) -> bytes | None:
        query = dns.message.make_query(name.decode(), dns.rdatatype.TXT, use_edns=0, payload=4096)
        response, _ = dns.query.udp_with_fallback(query, HOST, port=self.port, timeout=timeout)
        for rrset in response.answer:
            if rrset.rdtype == dns.rdatatype.TXT:
                return b"".join(rrset[0].strings)
        return None

    def dkimpy(self, message: bytes) -> list[tuple[str, bool]]:
        """(selector, verified) for each DKIM-Signature field, top down."""
        import dkim

        checker = dkim.DKIM(message)
        header_end = re.search(rb"\r?\n\r?\n", message)
        header = message[: header_end.start() if header_end else len(message)]
        count = len(re.findall(rb"(?im)^dkim-signature\s*:", header))
        results = []
        for index in range(count):
            try:
                ok = bool(checker.verify(idx=index, dnsfunc=self._dns))
            except dkim.DKIMException:  # some failures are raised, not returned
                ok = False
            selector = checker.signature_fields.get(b"s", b"?").decode() if checker.signature_fields else "?"
            results.append((selector, ok))
        return results

    def opendkim(self, message: bytes) -> list[tuple[str, str]]:
        """(selector, result) for each signature, as OpenDKIM's Authentication-Results lists them."""
        self.count += 1
        path = self.work / f"message-{self.count}.eml"
        path.write_bytes(message)
        done = subprocess.run(
            [OPENDKIM, "-x", str(self.work / "opendkim.conf"), "-t", str(path), "-vvv"], capture_output=True, text=True, timeout=60
        )
        path.unlink()
        assert "Authentication-Results" in done.stdout, f"opendkim -t: {done.returncode}\n{done.stdout}\n{done.stderr}"
        return [(selector, result) for result, selector in re.findall(r"dkim=(\w+).*?header\.s=([\w.-]+)", done.stdout)]

    def both(self, message: bytes) -> list[Check]:
        """Each signature's verdicts, in the order of the fields (both list them top down)."""
        ours, theirs = self.dkimpy(message), self.opendkim(message)
        assert [selector for selector, _ in ours] == [selector for selector, _ in theirs], (ours, theirs)
        return [Check(selector, ok, result) for (selector, ok), (_, result) in zip(ours, theirs)]


def opendkim_installed() -> bool:
    return os.access(OPENDKIM, os.X_OK)


# --- pytest fixtures, imported by tests/conftest.py ----------------------------------------------


@pytest.fixture(scope="session")
def dkim_keys(nsd: NsdServer) -> Iterator[SessionKeys]:
    """The session's keys, published in NSD's dkim.test zone."""
    directory = Path(tempfile.mkdtemp(prefix="dp-dkim-"))
    keys = make_keys(directory)
    nsd.reload(DOMAIN, keys.zone(2), 2)
    yield keys
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def verifiers(nsd: NsdServer, dkim_keys: SessionKeys) -> Iterator[Verifiers]:
    if not opendkim_installed():
        message = "opendkim is not installed: run scripts/install-test-servers.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    work = Path(tempfile.mkdtemp(prefix="dp-opendkim-"))
    yield Verifiers(nsd, work)
    shutil.rmtree(work, ignore_errors=True)
