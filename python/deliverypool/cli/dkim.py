"""`deliverypool dkim keygen` and `deliverypool dkim check`.

``keygen --domain D --selector S [--algorithm ed25519|rsa] [--bits N] --out FILE`` writes a new
private key (PEM, PKCS#8, mode 0600; never over an existing file) and prints the TXT record to
publish at ``S._domainkey.D``, its text cut into strings of at most 255 bytes, and the
``[[dkim.keys]]`` table to add.

``check --config PATH [--json]`` looks every configured key's selector up in DNS (through the
``[dns]`` resolver, as the relay does) and compares the published public key with the private
key file: ``ok``, or ``missing`` (no record), ``dns-error`` (the lookup failed: try again),
``revoked`` (``p=`` empty), ``bad-record`` (not a DKIM key record), ``wrong-type`` (``k=`` is not
the key's algorithm), ``mismatch`` (another key is published). Exit status 0 when every key is
ok, 1 otherwise, 2 for a configuration that cannot be used.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deliverypool import config as cfg

__all__ = ["KeyCheck", "check_command", "keygen_command", "public_record", "txt_strings"]


def public_record(private_pem: bytes) -> tuple[str, str]:
    """The algorithm (``rsa-sha256``, ``ed25519-sha256``) and the key record to publish for a
    PEM private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = serialization.load_pem_private_key(private_pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "ed25519-sha256", f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    if isinstance(key, rsa.RSAPrivateKey):
        spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return "rsa-sha256", f"v=DKIM1; k=rsa; p={base64.b64encode(spki).decode()}"
    raise ValueError("not an RSA or Ed25519 private key")


def txt_strings(record: str) -> str:
    """The record as a zone file writes a TXT value: quoted strings of at most 255 bytes."""
    return " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))


def keygen_command(domain: str, selector: str, *, algorithm: str, bits: int, out: str) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from deliverypool.config.dkim import RSA_MAX_BITS, RSA_MIN_BITS

    if algorithm == "rsa" and not RSA_MIN_BITS <= bits <= RSA_MAX_BITS:
        print(f"deliverypool dkim keygen: --bits must be {RSA_MIN_BITS} to {RSA_MAX_BITS}", file=sys.stderr)
        return 2
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path = Path(out)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        print(f"deliverypool dkim keygen: {path}: {exc.strerror}" + (" (not overwritten)" if path.exists() else ""), file=sys.stderr)
        return 1
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    _, record = public_record(pem)
    name = f"{selector}._domainkey.{domain}."
    print(f"; the private key is in {path}; publish:\n{name} IN TXT ( {txt_strings(record)} )\n")
    print(f'; and add to the configuration:\n[[dkim.keys]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"')
    return 0


@dataclass(frozen=True)
class KeyCheck:
    """One configured key against its published record."""

    domain: str
    selector: str
    algorithm: str
    status: str  # ok, missing, dns-error, revoked, bad-record, wrong-type, mismatch
    detail: str = ""


def _tags(record: bytes) -> dict[str, str] | None:
    tags: dict[str, str] = {}
    for part in record.decode("ascii", "replace").split(";"):
        if part.strip():
            name, equals, value = part.partition("=")
            if not equals:
                return None
            tags[name.strip()] = "".join(value.split())
    return tags


def compare(key: cfg.DkimKeyConfig, records: tuple[bytes, ...]) -> tuple[str, str]:
    """The status of `key` against the TXT `records` found at its name."""
    algorithm, expected = public_record(key.path.read_bytes())
    mine = _tags(expected.encode())
    assert mine is not None
    problems: list[tuple[str, str]] = []
    for record in records:
        tags = _tags(record)
        if tags is None or "p" not in tags or tags.get("v", "DKIM1") != "DKIM1":
            problems.append(("bad-record", record[:80].decode("ascii", "replace")))
            continue
        if not tags["p"]:
            problems.append(("revoked", "p= is empty"))
            continue
        if tags.get("k", "rsa") != mine["k"]:
            problems.append(("wrong-type", f"k={tags.get('k', 'rsa')}, the key file holds an {algorithm} key"))
            continue
        try:
            published = base64.b64decode(tags["p"], validate=True)
        except (binascii.Error, ValueError):
            problems.append(("bad-record", "p= is not base64"))
            continue
        if published == base64.b64decode(mine["p"]) or _same_rsa_key(published, key):
            return "ok", ""
        problems.append(("mismatch", "another public key is published"))
    return problems[0] if problems else ("missing", "no TXT record")


def _same_rsa_key(published: bytes, key: cfg.DkimKeyConfig) -> bool:
    """A bare RSAPublicKey (some publish that instead of a SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    try:
        pkcs1 = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    except (ValueError, TypeError):
        return False
    return bool(published == pkcs1)


async def check_keys(config: cfg.RelayConfig) -> list[KeyCheck]:
    from deliverypool.app import resolver_from_config
    from deliverypool.lookup.txt import TxtLookup

    lookup = TxtLookup(resolver_from_config(config.dns))
    results = []
    for key in config.dkim.keys:
        answer = await lookup.records(f"{key.selector}._domainkey.{key.domain}")
        if answer.outcome == "unknown":
            status, detail = "dns-error", answer.detail
        elif answer.outcome == "negative":
            status, detail = "missing", answer.detail
        else:
            status, detail = compare(key, answer.records)
        results.append(KeyCheck(key.domain, key.selector, key.key_algorithm, status, detail))
    return results


def check_command(config_path: str, *, as_json: bool = False) -> int:
    from deliverypool.eventloop import run

    try:
        config = cfg.load(config_path)
    except cfg.ConfigError as exc:
        print(f"deliverypool dkim check: {config_path}: {exc}", file=sys.stderr)
        return 2
    if not config.dkim.keys:
        print(f"deliverypool dkim check: {config_path}: no [[dkim.keys]] configured", file=sys.stderr)
        return 2
    results: list[KeyCheck] = run(check_keys(config), None)
    if as_json:
        body: dict[str, Any] = {"keys": [asdict(r) for r in results]}
        print(json.dumps(body))
    else:
        for r in results:
            print(f"{r.selector}._domainkey.{r.domain}  {r.algorithm}  {r.status}" + (f"  ({r.detail})" if r.detail else ""))
    return 0 if all(r.status == "ok" for r in results) else 1
