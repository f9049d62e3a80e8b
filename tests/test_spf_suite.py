"""Every case of the open-spf.org RFC 7208 test suite through the SPF evaluator, its zones
answered from the suite's own zone data (tests/spf_suite.py). The suite is downloaded from the
package index at test time (pyspf's sdist ships it), never stored here."""

from __future__ import annotations

from pathlib import Path

import pytest

from deliverypool.auth import SpfCheck, SpfOutcome
from tests.spf_suite import Case, fetch_suite, load_cases

# Cases read differently from the suite, with why (RFC section). They are still evaluated: the
# result must be the suite's, and the explanation equal to the suite's but for what is noted.
READ_DIFFERENTLY: dict[str, str] = {
    "v-macro-ip6": (
        "RFC 7208 §7.3/§7.4: %{i} of an IPv6 client is written in lowercase nibbles, as the RFC's "
        "own examples are; the suite expects them in the case the client address was written "
        "(CAFE:BABE::1). DNS names compare case-insensitively, so only the explanation text "
        "differs: compared without regard to case."
    ),
}


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return load_cases(fetch_suite(tmp_path_factory.mktemp("pyspf")))


def evaluate(case: Case) -> tuple[SpfOutcome, int]:
    check = SpfCheck(case.host, case.mailfrom, case.helo, receiver="receiver.example")
    for rounds in range(1, 60):
        step = check.step()
        if isinstance(step, SpfOutcome):
            return step, rounds
        assert step, "a step asks for something or has a result"
        for qtype, name in step:
            check.answer(qtype, name, *case.zone.reply(qtype, name))
    raise AssertionError(f"{case.name}: no result after 60 rounds")


def test_the_whole_rfc7208_suite(cases: list[Case]) -> None:
    assert len(cases) >= 200, "the suite (203 cases in pyspf 2.0.14) was loaded"
    failures = []
    for case in cases:
        outcome, _ = evaluate(case)
        problems = []
        if outcome.result not in case.results:
            problems.append(f"result {outcome.result} ({outcome.reason}: {outcome.detail}), expected {case.results}")
        if case.explanation is not None and outcome.result == "fail":
            explanation = outcome.explanation if outcome.explanation is not None else "DEFAULT"
            same = explanation.lower() == case.explanation.lower() if case.name in READ_DIFFERENTLY else explanation == case.explanation
            if not same:
                problems.append(f"explanation {explanation!r}, expected {case.explanation!r}")
        if problems:
            failures.append(f"{case.name} ({case.scenario}, {case.spec}): " + "; ".join(problems))
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)
    # (One test, not two: the suite is downloaded once per test module and xdist worker.)
    assert set(READ_DIFFERENTLY) <= {case.name for case in cases}, "the cases read differently are the suite's"
