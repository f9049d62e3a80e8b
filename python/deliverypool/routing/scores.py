"""Where a message's spam score comes from, and how it joins the routing decision: the one
place the relay (`deliverypool.app.Relay.accept`) and the milter (`deliverypool.ingress.milter`)
both go through.

Two sources, in this order:

1. **the trusted header** (``policy.score_header``): read by the Rust policy itself, and only
   when the caller says the client is trusted (the relay: ``listener.trusted_score_networks``;
   the milter: ``milter.trust_score_header``) and the field appears once. A client never brings
   its own score: untrusted copies do not count.
2. **rspamd** (``[score] source = "rspamd"``): every message without a trusted score is posted
   to rspamd's ``/checkv2`` with the client address, HELO, envelope and AUTH user, and rspamd's
   score is compared with the (tenant's) threshold like any other. Its action and symbols are
   kept in the :class:`SpamVerdict`.

When rspamd cannot answer (unreachable, slower than ``score.timeout``, an answer that is not a
verdict) nothing is raised: the decision carries the reason ``spam-score-unavailable`` and the
message goes where the policy's ``score_unavailable_pool`` says (``[score] fallback``:
``"no-score"`` routes it as unscored, ``"high-risk"`` through the high-risk pool), and
:class:`ScoreStats` counts the failure by reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

import httpx

from deliverypool._core import AuthFacts, Decision, Policy, classify
from deliverypool.config import RelayConfig, ScoreConfig
from deliverypool.routing.router import Router

if TYPE_CHECKING:
    from deliverypool.auth.dkim import DkimCheck
    from deliverypool.routing.auth import Arrival, AuthRouting, AuthVerdict

__all__ = [
    "FAILURES",
    "SCORE_UNAVAILABLE",
    "RspamdScores",
    "Routed",
    "ScoreSource",
    "ScoreStats",
    "ScoredRouter",
    "SpamVerdict",
    "Submission",
    "scored_router",
]

log = logging.getLogger("deliverypool.scores")

# The reason a decision carries when rspamd was asked and could not score it (one of the Rust
# core's REASONS; high-risk when the policy's score_unavailable_pool says so).
SCORE_UNAVAILABLE: Final = "spam-score-unavailable"
# Why a score source gave no verdict: a closed set (the failure counter's labels).
Failure = Literal["timeout", "unreachable", "bad-response"]
FAILURES: Final[tuple[Failure, ...]] = ("timeout", "unreachable", "bad-response")


@dataclass(frozen=True)
class Submission:
    """What the SMTP client handed over besides the message: what rspamd is told."""

    mail_from: str
    recipients: tuple[str, ...] = ()
    client_address: str | None = None
    client_name: str | None = None
    helo: str | None = None
    login: str | None = None
    queue_id: str | None = None


@dataclass(frozen=True)
class SpamVerdict:
    """A score source's verdict on one message. ``failure`` is set (and ``score`` None) when
    the source was asked and could not answer."""

    source: Literal["header", "rspamd"]
    score: float | None
    action: str | None = None
    required_score: float | None = None
    # Symbol name -> its score, as rspamd lists them.
    symbols: Mapping[str, float] = field(default_factory=dict)
    failure: Failure | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "score": self.score,
            "action": self.action,
            "required_score": self.required_score,
            "symbols": dict(self.symbols),
            "failure": self.failure,
        }

    def summary(self) -> str:
        """One word for log lines: ``rspamd:reject:15``, ``header:3.2``, ``rspamd:timeout``."""
        if self.failure is not None:
            return f"{self.source}:{self.failure}"
        parts = [self.source] + ([self.action.replace(" ", "-")] if self.action else []) + [f"{self.score:g}"]
        return ":".join(parts)


@dataclass
class ScoreStats:
    """Counters of one score source, for the metrics: messages asked about, verdicts, and
    failures by reason (labels from `FAILURES` only)."""

    requests: int = 0
    verdicts: int = 0
    skipped_too_large: int = 0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURES, 0))
    # Messages sent through the high-risk pool because no score could be had.
    fallback_high_risk: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ScoreSource(Protocol):
    """A spam filter asked about each message without a trusted score."""

    stats: ScoreStats

    async def check(self, message: bytes, submission: Submission) -> SpamVerdict | None:
        """The verdict (``failure`` set when the filter could not answer; never raises for
        that), or None when the message is not for this source (too large)."""
        ...

    async def close(self) -> None: ...


class RspamdScores:
    """rspamd's ``/checkv2`` over HTTP (httpx: one pooled client, made on the event loop that
    first uses it)."""

    def __init__(self, url: str, *, timeout: float, max_size: int) -> None:
        self.url = url.rstrip("/") + "/checkv2"
        self.timeout = timeout
        self.max_size = max_size
        self.stats = ScoreStats()
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, config: ScoreConfig) -> RspamdScores:
        return cls(config.url, timeout=config.timeout, max_size=config.max_size)

    async def check(self, message: bytes, submission: Submission) -> SpamVerdict | None:
        if len(message) > self.max_size:
            self.stats.skipped_too_large += 1
            return None
        self.stats.requests += 1
        failure: Failure
        try:
            response = await asyncio.wait_for(self._post(message, submission), self.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException):
            failure = "timeout"
        except httpx.HTTPError as error:
            failure = "unreachable"
            log.debug("rspamd request failed: %r", error)
        else:
            verdict = _parse_checkv2(response)
            if verdict is not None:
                self.stats.verdicts += 1
                return verdict
            failure = "bad-response"
        self.stats.failures[failure] += 1
        log.warning(
            "rspamd gave no verdict (%s) queue_id=%s url=%s failures=%d",
            failure,
            submission.queue_id or "-",
            self.url,
            self.stats.failures[failure],
        )
        return SpamVerdict("rspamd", None, failure=failure)

    async def _post(self, message: bytes, submission: Submission) -> httpx.Response:
        if self._client is None:
            # The overall bound is `timeout` (wait_for above); httpx's own is the same, per phase.
            self._client = httpx.AsyncClient(timeout=self.timeout, trust_env=False)
        return await self._client.post(self.url, content=message, headers=_rspamd_headers(submission))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _rspamd_headers(submission: Submission) -> list[tuple[bytes, bytes]]:
    """rspamd's request headers (its protocol: IP, Helo, Hostname, From, one Rcpt per
    recipient, User, Queue-Id). Values as UTF-8 bytes: SMTPUTF8 addresses are not Latin-1."""
    pairs: list[tuple[str, str | None]] = [
        ("IP", submission.client_address),
        ("Helo", submission.helo),
        ("Hostname", submission.client_name),
        ("From", submission.mail_from or "<>"),
        ("User", submission.login),
        ("Queue-Id", submission.queue_id),
    ]
    pairs += [("Rcpt", rcpt) for rcpt in submission.recipients]
    return [(name.encode(), value.encode("utf-8")) for name, value in pairs if value]


def _parse_checkv2(response: httpx.Response) -> SpamVerdict | None:
    """A verdict from rspamd's JSON answer, or None when the answer is not one."""
    if response.status_code != 200:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    score = _finite(body.get("score"))
    action = body.get("action")
    if score is None or not isinstance(action, str):
        return None
    symbols: dict[str, float] = {}
    raw_symbols = body.get("symbols")
    if isinstance(raw_symbols, dict):
        for name, symbol in raw_symbols.items():
            value = _finite(symbol.get("score")) if isinstance(symbol, dict) else None
            symbols[str(name)] = 0.0 if value is None else value
    return SpamVerdict("rspamd", score, action=action, required_score=_finite(body.get("required_score")), symbols=symbols)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


@dataclass(frozen=True, init=False)
class Routed:
    """The routing of one message: the Rust decision and the spam verdict it used, the checks
    of the DKIM signatures it arrived with (when they were asked for), and what authentication
    found (with ``[auth] enabled``)."""

    decision: Decision
    spam: SpamVerdict | None
    checks: tuple[DkimCheck, ...] = ()
    auth: AuthVerdict | None = None

    def __init__(self, decision: Decision, spam: SpamVerdict | None, checks: tuple[DkimCheck, ...] = (), auth: AuthVerdict | None = None) -> None:
        # Sets only what differs from the class's defaults: a frozen dataclass's own __init__
        # sets every field through object.__setattr__, which cost the relay's routing 5% more
        # instructions per message once the last two fields were added (route_instructions.py).
        setattr_ = object.__setattr__
        setattr_(self, "decision", decision)
        setattr_(self, "spam", spam)
        if checks:
            setattr_(self, "checks", checks)
        if auth is not None:
            setattr_(self, "auth", auth)

    @property
    def pool(self) -> str:
        return self.decision.pool

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(self.decision.reasons)

    @property
    def recipient_pools(self) -> tuple[str, ...]:
        """Each recipient's pool when the rules routed them apart, else empty (all `pool`)."""
        pools = self.decision.recipient_pools
        return pools if any(p != pools[0] for p in pools) else ()


class ScoredRouter:
    """`Router.route` with the score from `source` for messages without a trusted one. What
    a message without a score (the source failed) gets is the router's policy's
    ``score_unavailable_pool``; the decision says ``spam-score-unavailable`` either way. With
    `auth` (``[auth] enabled``), SPF at acceptance runs beside them, and the decision is made
    again with what SPF and DMARC found (:mod:`deliverypool.routing.auth`)."""

    def __init__(self, router: Router, source: ScoreSource | None = None, *, auth: AuthRouting | None = None) -> None:
        self.router = router
        self.source = source
        self.policy = router.policy or Policy()
        self.auth = auth

    def route(
        self,
        message: bytes,
        submission: Submission,
        *,
        tenant: str | None = None,
        untrusted_client: bool = False,
        untrusted_route_header: bool = False,
        checks: Awaitable[tuple[DkimCheck, ...]] | None = None,
        srs_bounce: bool = False,
        predict_signatures: bool = True,
    ) -> Coroutine[Any, Any, Routed]:
        """The routing of `message` (a coroutine). `checks`: the check of the DKIM signatures it
        arrived with, awaited beside the rest (its result goes into DMARC and `Routed.checks`);
        `srs_bounce`: it goes to an SRS address of the relay, reversed;
        `predict_signatures=False`: DMARC without the relay's own signatures (they could not be
        put on). Without any of these and without `auth`, the plain path's coroutine itself
        (no frame more than before authentication: benches/route_instructions.py, mode scored)."""
        if self.auth is None and checks is None and not srs_bounce:
            return self._scored(message, submission, tenant, untrusted_client, untrusted_route_header)
        return self._route(
            message, submission, tenant, untrusted_client, untrusted_route_header, checks, srs_bounce, predict_signatures
        )

    async def _route(
        self,
        message: bytes,
        submission: Submission,
        tenant: str | None,
        untrusted_client: bool,
        untrusted_route_header: bool,
        checks: Awaitable[tuple[DkimCheck, ...]] | None,
        srs_bounce: bool,
        predict_signatures: bool,
    ) -> Routed:
        auth = self.auth
        scored = self._scored(message, submission, tenant, untrusted_client, untrusted_route_header)
        if auth is None:
            if checks is None:
                routed = await scored
            else:
                routed, found = await asyncio.gather(scored, checks)
                routed = dataclasses.replace(routed, checks=found)
            if srs_bounce:  # without [auth] enabled: SRS bounces still leave high-risk
                again = self.router.redecide(
                    message, routed.decision, AuthFacts(srs_bounce=True), mail_from=submission.mail_from, tenant=tenant,
                    untrusted_client=untrusted_client, recipients=submission.recipients, untrusted_route_header=untrusted_route_header,
                )
                routed = dataclasses.replace(routed, decision=again)
            return routed
        # SPF at acceptance beside the score, the sender-domain check and the DKIM check; from
        # the cache without suspending when it can.
        client = auth.client(submission)
        arrival: Arrival | None = None if client is None else auth.authenticator.arrival_cached(*client, with_helo=auth.with_helo)
        work: list[Awaitable[Any]] = [scored]
        if checks is not None:
            work.append(checks)
        if client is not None and arrival is None:
            work.append(auth.authenticator.arrival(*client, with_helo=auth.with_helo))
        found_checks: tuple[DkimCheck, ...] = ()
        if len(work) == 1:
            routed = await scored
        else:
            results = await asyncio.gather(*work)
            routed = results[0]
            if checks is not None:
                found_checks = results[1]
            if client is not None and arrival is None:
                arrival = results[-1]
        first = routed.decision
        recipients = submission.recipients
        decide = functools.partial(
            self.router.redecide, message, first, mail_from=submission.mail_from, tenant=tenant, untrusted_client=untrusted_client,
            recipients=recipients, untrusted_route_header=untrusted_route_header,
        )
        decision, verdict = await auth.route(
            first, decide, submission=submission, tenant=tenant, client=client, arrival=arrival, checks=found_checks, srs_bounce=srs_bounce,
            predict_signatures=predict_signatures,
        )
        return Routed(decision, routed.spam, found_checks, verdict)

    async def _scored(
        self, message: bytes, submission: Submission, tenant: str | None, untrusted_client: bool, untrusted_route_header: bool
    ) -> Routed:
        router = self.router
        mail_from = submission.mail_from
        route: Callable[..., Awaitable[Decision]]
        if router.per_recipient or (untrusted_route_header and self.policy.route_header is not None):
            route = functools.partial(router.route, recipients=submission.recipients, untrusted_route_header=untrusted_route_header)
        else:
            route = router.route
        # The trusted header, if any, is the Rust policy's to read: without a score source the
        # decision reads it; with one, a classification without DNS tells first whether there
        # is one (so that the relay's default path classifies once).
        if self.source is None or classify(message, policy=self.policy, untrusted_client=untrusted_client).score_source == "header":
            decision = await route(message, mail_from=mail_from, tenant=tenant, untrusted_client=untrusted_client)
            return Routed(decision, None if decision.score is None else SpamVerdict("header", decision.score))
        # The sender-domain check and rspamd at the same time; then the decision with what
        # rspamd said, which finds the sender's domain in the DNS cache (no second round of
        # queries).
        decision, spam = await asyncio.gather(
            route(message, mail_from=mail_from, tenant=tenant, untrusted_client=untrusted_client),
            self.source.check(message, submission),
        )
        if spam is not None:
            failed = spam.failure is not None
            decision = await route(
                message, mail_from=mail_from, score=spam.score, tenant=tenant, untrusted_client=untrusted_client, score_unavailable=failed
            )
            if failed and decision.high_risk and self.policy.score_unavailable_pool == "high-risk":
                self.source.stats.fallback_high_risk += 1
        return Routed(decision, spam)

    async def close(self) -> None:
        if self.source is not None:
            await self.source.close()


def scored_router(config: RelayConfig, router: Router, *, auth: AuthRouting | None = None) -> ScoredRouter:
    """The score pipeline `[score]` configures, around `router` (whose policy holds the
    fallback: `deliverypool.app.policy_from_config`), with the authentication steps `auth`."""
    source = RspamdScores.from_config(config.score) if config.score.source == "rspamd" else None
    return ScoredRouter(router, source, auth=auth)
