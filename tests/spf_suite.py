"""The open-spf.org RFC 7208 test suite, as pyspf's source distribution ships it: fetched
from the package index at test time (never copied into this repository) and turned into
zones answered without a network (the point is the evaluator; the NSD tests in
test_auth_dns.py cover the wire).

The zone semantics are those of the suite's reference driver (pyspf's ``test/testspf.py``):
``SPF`` records are also served as ``TXT`` unless the name has ``TXT`` records of its own
(``TXT: NONE`` suppresses them); ``TIMEOUT`` alone times out the queries for the name that
find no record of their type, as the value of a type every query of that type; a name absent from the zone does not exist,
except names under ``error.`` which time out; CNAMEs are followed.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PYSPF = "pyspf==2.0.14"
SUITE_MEMBER = "test/rfc7208-tests.yml"

Reply = tuple[str, tuple[Any, ...], str]


def fetch_suite(directory: Path) -> Path:
    """Downloads pyspf's sdist into `directory` and extracts the suite; returns its path."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "--dest", str(directory), PYSPF],
        check=True,
        timeout=300,
    )
    (archive,) = directory.glob("pyspf-*.tar.gz")
    with tarfile.open(archive) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(SUITE_MEMBER))
        extracted = tar.extractfile(member)
        assert extracted is not None
        target = directory / "rfc7208-tests.yml"
        target.write_bytes(extracted.read())
    return target


@dataclass
class Zone:
    records: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    timeouts: set[str] = field(default_factory=set)

    @classmethod
    def from_yaml(cls, zonedata: dict[str, list[Any]]) -> Zone:
        zone = cls()
        for name, entries in zonedata.items():
            key = name.lower().rstrip(".")
            rows: list[tuple[str, Any]] = []
            generated: list[tuple[str, Any]] = []
            has_txt = False
            for entry in entries:
                if entry == "TIMEOUT":
                    zone.timeouts.add(key)
                    continue
                ((rtype, value),) = entry.items()
                if rtype in ("TXT", "SPF") and not isinstance(value, list):
                    value = [value]
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF":
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    rows.append((rtype, value))
            if not has_txt:
                rows.extend(generated)
            zone.records[key] = rows
        return zone

    def reply(self, qtype: str, name: str, depth: int = 0) -> Reply:
        name = name.lower().rstrip(".")
        rows = self.records.get(name)
        if rows is None:
            return ("unknown", (), "timeout") if name.startswith("error.") else ("negative", (), "nxdomain")
        values = [value for rtype, value in rows if rtype == qtype]
        # A TIMEOUT entry times out the queries that find no record of their type (the
        # reference driver stops at it once it has yielded records of the type).
        if "TIMEOUT" in values or (name in self.timeouts and not values):
            return ("unknown", (), "timeout")
        if not values:
            cnames = [value for rtype, value in rows if rtype == "CNAME"]
            if cnames and depth < 8:
                return self.reply(qtype, cnames[0], depth + 1)
            return ("negative", (), "nodata")
        if qtype == "TXT":
            return ("positive", tuple("".join(v).encode("utf-8") for v in values), "records")
        if qtype == "MX":
            return ("positive", tuple(str(v[1]) for v in values), "records")
        return ("positive", tuple(str(v) for v in values), "records")


@dataclass(frozen=True)
class Case:
    scenario: str
    name: str
    spec: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None
    zone: Zone


def load_cases(path: Path) -> list[Case]:
    import yaml

    cases = []
    with path.open("rb") as f:
        for scenario in yaml.safe_load_all(f):
            zone = Zone.from_yaml(scenario.get("zonedata") or {})
            for name, test in scenario["tests"].items():
                result = test["result"]
                cases.append(
                    Case(
                        scenario=scenario["description"],
                        name=name,
                        spec=str(test.get("spec", "")),
                        helo=str(test["helo"]),
                        host=str(test["host"]),
                        mailfrom=str(test["mailfrom"]),
                        results=tuple(result) if isinstance(result, list) else (result,),
                        explanation=test.get("explanation"),
                        zone=zone,
                    )
                )
    return cases
