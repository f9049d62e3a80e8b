"""`deliverypool dkim keygen` and `deliverypool dkim check` against NSD's dkim.test zone
(tests/dkim_verifiers.py publishes the session's keys there)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from deliverypool.cli import main
from deliverypool.config import load
from tests.dkim_verifiers import DOMAIN, SessionKeys
from tests.dnsserver import NsdServer, SilentServer

POOLS = '[pools.normal]\nsource_addresses = ["127.0.0.2"]\n[pools.high-risk]\nsource_addresses = ["127.0.0.3"]\n'


@pytest.mark.parametrize("algorithm", ["ed25519", "rsa"])
def test_keygen_writes_a_private_key_and_prints_the_record_to_publish(algorithm: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "key.pem"
    assert main(["dkim", "keygen", "--domain", "example.test", "--selector", "s2025", "--algorithm", algorithm, "--out", str(out)]) == 0
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    printed = capsys.readouterr().out
    assert f"s2025._domainkey.example.test. IN TXT ( \"v=DKIM1; k={algorithm};" in printed
    strings = printed.split("( ", 1)[1].split(" )", 1)[0]
    assert all(len(s) <= 255 for s in strings.strip('"').split('" "'))
    # The table it prints loads: the key is usable as it was written.
    table = printed.split("add to the configuration:\n", 1)[1]
    config_file = tmp_path / "relay.toml"
    config_file.write_text(POOLS + table)
    [key] = load(config_file).dkim.keys
    assert key.key_algorithm == ("ed25519-sha256" if algorithm == "ed25519" else "rsa-sha256") and key.bits in (256, 2048)
    # Never over an existing file.
    assert main(["dkim", "keygen", "--domain", "example.test", "--selector", "s2", "--out", str(out)]) == 1
    assert "File exists (not overwritten)" in capsys.readouterr().err
    assert main(["dkim", "keygen", "--domain", "example.test", "--selector", "s2", "--bits", "1024", "--out", str(tmp_path / "k2")]) == 2


def test_check_compares_each_selector_in_dns_with_its_key(tmp_path: Path, nsd: NsdServer, dkim_keys: SessionKeys, capsys: pytest.CaptureFixture[str]) -> None:
    files = dkim_keys.files
    keys = [
        ("ed", files["ed"]),  # published: ok
        ("rsa2048", files["rsa3072"]),  # another key is published there
        ("revoked", files["ed"]),
        ("garbage", files["rsa2048"]),
        ("absent", files["ed"]),
        ("rsa3072", files["ed"]),  # k=rsa published, an Ed25519 key file
    ]
    tables = "".join(f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "{s}"\nkey_file = "{f}"\n' for s, f in keys)
    config = tmp_path / "relay.toml"
    config.write_text(f'[dns]\nnameservers = ["{nsd.address}"]\ntimeout = "1s"\n' + POOLS + tables)
    assert main(["dkim", "check", "--config", str(config), "--json"]) == 1
    found = {k["selector"]: k["status"] for k in json.loads(capsys.readouterr().out)["keys"]}
    assert found == {"ed": "ok", "rsa2048": "mismatch", "revoked": "revoked", "garbage": "bad-record", "absent": "missing", "rsa3072": "wrong-type"}
    config.write_text(f'[dns]\nnameservers = ["{nsd.address}"]\n' + POOLS + tables.split("[[dkim.keys]]")[0] + "[[dkim.keys]]" + tables.split("[[dkim.keys]]")[1])
    assert main(["dkim", "check", "--config", str(config)]) == 0
    assert capsys.readouterr().out.strip() == f"ed._domainkey.{DOMAIN}  ed25519-sha256  ok"


def test_check_says_dns_error_when_the_lookup_fails(tmp_path: Path, dkim_keys: SessionKeys, capsys: pytest.CaptureFixture[str]) -> None:
    silent = SilentServer()
    try:
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[dns]\nnameservers = ["{silent.address}"]\ntimeout = "200ms"\n' + POOLS
            + f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "ed"\nkey_file = "{dkim_keys.files["ed"]}"\n'
        )
        assert main(["dkim", "check", "--config", str(config)]) == 1
        assert "ed._domainkey.dkim.test  ed25519-sha256  dns-error  (timeout)" in capsys.readouterr().out
    finally:
        silent.close()
