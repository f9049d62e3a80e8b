"""The routing policy: thresholds, tenants, trusted score sources, and the batch path."""

from __future__ import annotations

import gc
import math
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deliverypool import MessageTypeError, Policy, PolicyError, ScoreError, SenderDomainError, classify, classify_many
from tests.messages import GLOBAL_DSN, ORDINARY

finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@given(score=finite, threshold=finite)
def test_high_risk_exactly_when_score_exceeds_threshold(score: float, threshold: float) -> None:
    decision = classify(ORDINARY[0], score=score, policy=Policy(threshold=threshold))
    assert decision.high_risk == (score > threshold)
    assert decision.pool == ("high-risk" if score > threshold else "normal")
    assert ("spam-score" in decision.reasons) == (score > threshold)
    assert (decision.score, decision.threshold, decision.score_source) == (score, threshold, "caller")


@given(score=finite, dsn=st.booleans(), domain=st.sampled_from([None, "has-records", "no-records", "unknown"]))
def test_reasons_combine_in_a_fixed_order(score: float, dsn: bool, domain: str | None) -> None:
    message = GLOBAL_DSN if dsn else ORDINARY[0]
    decision = classify(message, score=score, sender_domain=domain)  # type: ignore[arg-type]
    expected = []
    if dsn:
        expected.append("dsn")
    if score > 5.0:
        expected.append("spam-score")
    if domain == "no-records":
        expected.append("sender-domain-no-records")
    if domain == "unknown":
        expected.append("sender-domain-unknown")
    assert decision.reasons == tuple(expected)
    assert decision.high_risk == bool(expected)
    assert decision == decision or True  # Decision is usable as a plain object
    assert classify(message, score=score, sender_domain=domain).reasons == decision.reasons  # type: ignore[arg-type]


def test_dsn_goes_high_risk_whatever_the_score() -> None:
    decision = classify(GLOBAL_DSN, score=-50.0)
    assert (decision.pool, decision.reasons) == ("high-risk", ("dsn",))


def test_tenant_thresholds_and_pool_names() -> None:
    policy = Policy(normal_pool="clean", high_risk_pool="quarantine", threshold=5.0,
                    tenant_thresholds={"strict": 1.0, "lenient": 9.0})
    assert classify(ORDINARY[0], score=2.0, tenant="strict", policy=policy).pool == "quarantine"
    assert classify(ORDINARY[0], score=8.0, tenant="lenient", policy=policy).pool == "clean"
    assert classify(ORDINARY[0], score=8.0, tenant="unlisted", policy=policy).pool == "quarantine"
    assert classify(ORDINARY[0], score=2.0, tenant="strict", policy=policy).threshold == 1.0
    assert policy.threshold_for("lenient") == 9.0


SPAM = b"X-Spam-Score: 9.9\r\nFrom: spammer@example.com\r\nSubject: win\r\n\r\nbuy\r\n"


def test_header_score_needs_a_configured_header() -> None:
    assert classify(SPAM).score is None
    decision = classify(SPAM, policy=Policy(score_header="X-Spam-Score"))
    assert (decision.score, decision.score_source, decision.pool) == (9.9, "header", "high-risk")


def test_sender_cannot_lower_its_own_score_with_a_second_header() -> None:
    policy = Policy(score_header="X-Spam-Score")
    forged = b"X-Spam-Score: -100\r\n" + SPAM
    decision = classify(forged, policy=policy)
    assert decision.score is None
    assert "score-header-repeated" in decision.defects
    # The relay's own filter score, given by the caller, still applies.
    assert classify(forged, policy=policy, score=9.9).pool == "high-risk"


def test_untrusted_client_headers_are_ignored() -> None:
    policy = Policy(score_header="X-Spam-Score")
    lowered = b"X-Spam-Score: -100\r\nSubject: x\r\n\r\n"
    decision = classify(lowered, policy=policy, untrusted_client=True, score=None)
    assert decision.score is None
    assert "score-header-untrusted" in decision.defects


def test_caller_score_wins_over_header() -> None:
    decision = classify(SPAM, policy=Policy(score_header="X-Spam-Score"), score=0.5)
    assert (decision.score, decision.score_source, decision.pool) == (0.5, "caller", "normal")


def test_bad_values_raise_precise_value_errors() -> None:
    with pytest.raises(ScoreError, match="finite") as score_error:
        classify(ORDINARY[0], score=math.nan)
    assert score_error.value.index is None
    with pytest.raises(ValueError):
        classify(ORDINARY[0], score=math.inf)
    for kwargs in [{"threshold": math.nan}, {"normal_pool": "x", "high_risk_pool": "x"}, {"normal_pool": ""},
                   {"score_header": "Bad Header:"}, {"unknown_domain_pool": "maybe"},
                   {"tenant_thresholds": {"t": math.inf}}]:
        with pytest.raises(PolicyError):
            Policy(**kwargs)  # type: ignore[arg-type]
    assert issubclass(PolicyError, ValueError) and issubclass(ScoreError, ValueError)
    assert issubclass(SenderDomainError, ValueError) and issubclass(MessageTypeError, TypeError)
    with pytest.raises(SenderDomainError, match="sender-domain") as status_error:
        classify(ORDINARY[0], sender_domain="maybe")  # type: ignore[arg-type]
    assert status_error.value.index is None
    # Only the two envelope errors are about a message; the others stay policy errors.
    assert not issubclass(PolicyError, (ScoreError, SenderDomainError))
    assert not issubclass(ScoreError, PolicyError) and not issubclass(SenderDomainError, PolicyError)


def test_unknown_sender_domain_policy_choice() -> None:
    assert classify(ORDINARY[0], sender_domain="unknown").pool == "high-risk"
    lenient = Policy(unknown_domain_pool="normal")
    decision = classify(ORDINARY[0], sender_domain="unknown", policy=lenient)
    assert (decision.pool, decision.reasons) == ("normal", ("sender-domain-unknown",))


@given(st.lists(st.tuples(st.sampled_from(ORDINARY + [GLOBAL_DSN, SPAM]), st.none() | finite,
                          st.none() | st.sampled_from(["", "a@b.example", "<>"])), max_size=40))
def test_batch_equals_one_by_one(items: list[tuple[bytes, float | None, str | None]]) -> None:
    messages = [m for m, _, _ in items]
    scores = [s for _, s, _ in items]
    senders = [f for _, _, f in items]
    batch = classify_many(messages, score=scores, mail_from=senders)
    single = [classify(m, score=s, mail_from=f) for m, s, f in items]
    assert [(d.pool, d.reasons, d.report_kind, d.score) for d in batch] == \
           [(d.pool, d.reasons, d.report_kind, d.score) for d in single]


def test_large_batch_runs_in_parallel_path_and_keeps_order() -> None:
    messages = (ORDINARY + [GLOBAL_DSN]) * 200
    decisions = classify_many(messages)
    assert len(decisions) == len(messages)
    assert [d.pool for d in decisions] == [classify(m).pool for m in messages]


def test_batch_errors_name_the_message() -> None:
    with pytest.raises(ScoreError, match="^message 1 of the batch: score must be a finite number, got NaN$") as score:
        classify_many([b"", b"", b""], score=[1.0, math.nan, math.inf])
    assert score.value.index == 1
    with pytest.raises(SenderDomainError, match="^message 2 of the batch: invalid sender-domain status") as status:
        classify_many([b""] * 3, sender_domain=["unknown", None, "maybe"])  # type: ignore[list-item]
    assert status.value.index == 2
    with pytest.raises(ValueError, match="score has 1 items but there are 2 messages") as mismatch:
        classify_many([b"", b""], score=[1.0])
    assert type(mismatch.value) is ValueError and not hasattr(mismatch.value, "index")
    with pytest.raises(MessageTypeError, match=r"^messages\[1\] must be bytes, not str$") as not_bytes:
        classify_many([b"", "text"])  # type: ignore[list-item]
    assert not_bytes.value.index == 1 and isinstance(not_bytes.value, TypeError)
    # The class keeps index None: one error's index does not leak into the next.
    assert ScoreError.index is None and ScoreError("x").index is None
    assert classify_many(iter([b"Subject: x\n\n"]))[0].pool == "normal"


def test_results_are_outside_the_cycle_collector_and_freed() -> None:
    # They hold no Python objects, so they are untracked (cheaper collections); they must
    # still be freed by reference counting alone.
    decisions = classify_many((ORDINARY + [GLOBAL_DSN]) * 20)
    assert not any(gc.is_tracked(d) for d in decisions)
    assert not gc.is_tracked(classify(ORDINARY[0]))
    before = sys.getallocatedblocks()
    for _ in range(20):
        batch = classify_many([GLOBAL_DSN] * 2_000)
        assert batch[-1].dsn is not None
        del batch
    gc.collect()
    assert sys.getallocatedblocks() - before < 2_000
