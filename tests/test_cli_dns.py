"""`deliverypool classify` with DNS (--nameserver, --no-dns), against NSD on loopback.
"""

from __future__ import annotations

from pathlib import Path

from tests.dnsserver import NsdServer, SilentServer
from tests.test_cli import json_lines, run

MESSAGE = b"From: someone@a-domain.test\nSubject: hello\n\nhello\n"


def classify(tmp_path: Path, *args: str) -> list[dict[str, object]]:
    path = tmp_path / "msg.eml"
    path.write_bytes(MESSAGE)
    result = run("classify", "--json", *args, str(path))
    assert result.returncode == 0, result.stderr
    return json_lines(result.stdout)


def test_domain_without_records_routes_high_risk(nsd: NsdServer, tmp_path: Path) -> None:
    [record] = classify(tmp_path, "--nameserver", nsd.address, "--mail-from", "user@missing.dp.test")
    assert record["pool"] == "high-risk"
    assert record["reasons"] == ["sender-domain-no-records"]
    assert record["sender_domain"] == {"domain": "missing.dp.test", "status": "no-records", "detail": "nxdomain"}


def test_domain_with_records_routes_normal(nsd: NsdServer, tmp_path: Path) -> None:
    [record] = classify(tmp_path, "--nameserver", nsd.address, "--mail-from", "user@mx-only.dp.test")
    assert (record["pool"], record["reasons"]) == ("normal", [])
    assert record["sender_domain"] == {"domain": "mx-only.dp.test", "status": "has-records", "detail": "mx"}


def test_unreachable_nameserver_is_unknown(silent_nameserver: SilentServer, nsd: NsdServer, tmp_path: Path) -> None:
    [record] = classify(tmp_path, "--nameserver", silent_nameserver.address, "--mail-from", "user@missing.dp.test")
    assert record["reasons"] == ["sender-domain-unknown"]
    assert record["sender_domain"]["status"] == "unknown"  # type: ignore[index]


def test_no_dns(tmp_path: Path) -> None:
    [record] = classify(tmp_path, "--no-dns", "--mail-from", "user@missing.dp.test")
    assert (record["pool"], record["reasons"], record["sender_domain"]) == ("normal", [], None)
