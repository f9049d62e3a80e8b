"""The event stream inside the relay: what happened to mail, published once, read by every
subscriber (metrics, the surge monitor's DSN windows, the event log, and later features),
instead of calls added into the engine.

`EventBus.publish` never blocks and never raises: each subscriber has a bounded queue and a
task of its own that hands it the events `latency` seconds (50 ms) after the first of a batch
arrived, or as soon as its queue is half full, and sleeps while there are none: publishing
costs a queue append, not a task switch per event (waking each subscriber for each event cost
14% of the relay's CPU per message; see benches/README.md). When a subscriber falls behind, its
queue fills and further events for it are dropped and counted (``dropped``); when it raises,
the error is logged and counted (``errors``) and it gets the next event. Acceptance is never
held up.

Events are frozen dataclasses with a ``kind`` and the time ``at`` (seconds since the epoch,
from the observer's clock); `as_json` gives the JSON object the event log writes.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Union

from deliverypool.observe.reports import DsnRecipient, DsnReport

if TYPE_CHECKING:
    from deliverypool.auth.dkim import DkimOutcome

__all__ = [
    "ADMIN_REFUSALS",
    "AUTH_PROBLEMS",
    "RELEASE_RESULTS",
    "AdminRefused",
    "AdminRelease",
    "AuthProblem",
    "MessageAuth",
    "SrsChecked",
    "DeliveryAttempt",
    "DsnGenerated",
    "DsnRelayed",
    "Event",
    "EventBus",
    "MessageAccepted",
    "SenderLimitAlert",
    "SenderReleased",
    "SenderRestricted",
    "Subscription",
    "as_json",
]

log = logging.getLogger("deliverypool.observe")


@dataclass(frozen=True, slots=True)
class MessageAuth:
    """What authentication found about a message (``[auth] enabled``), in closed sets: SPF at
    acceptance (``SPF_RESULTS``, None without a client address), DMARC as the destination will
    judge it (``DMARC_RESULTS``, None without a From domain) and what the From domain asks for
    (``DMARC_POLICIES``), whether it leaves with an SRS envelope sender."""

    spf: str | None
    dmarc: str | None
    disposition: str
    srs: bool = False


@dataclass(frozen=True, slots=True)
class MessageAccepted:
    """A message was spooled and routed."""

    kind: ClassVar[str] = "message-accepted"
    at: float
    queue_id: str
    tenant: str | None
    pool: str
    reasons: tuple[str, ...]
    client: str | None
    recipients: int
    message_id: str | None
    # The DSN verdict: its kind (delivery-status, non-standard...) and signals, or None.
    dsn_kind: str | None = None
    dsn_signals: tuple[str, ...] = ()
    # DKIM: the relay's signatures or why there are none, the checks of the client's (None
    # without keys configured and signatures on the message).
    dkim: DkimOutcome | None = None
    # The routing rule that chose `pool` (None: its class's default), and every pool the
    # recipients go through when rules on recipient domains split them (else empty). The event
    # log writes these three only when set.
    rule: str | None = None
    pools: tuple[str, ...] = ()
    # SPF and DMARC (None without [auth] enabled; written only when set).
    auth: MessageAuth | None = None


# What authentication reports about a tenant's own mail (a closed set: the problem label).
AUTH_PROBLEMS: Final = ("own-domain-no-key",)


@dataclass(frozen=True, slots=True)
class AuthProblem:
    """Authentication found something about a tenant's own mail to fix: ``own-domain-no-key``
    (``AUTH_PROBLEMS``: the tenant sends from one of its own domains, the relay has no DKIM key
    for it, and DMARC fails)."""

    kind: ClassVar[str] = "auth-problem"
    at: float
    queue_id: str
    tenant: str | None
    problem: str
    domain: str | None


@dataclass(frozen=True, slots=True)
class SrsChecked:
    """A recipient at the SRS domain checked at RCPT: ``outcome`` ``reversed`` (a valid bounce
    address) or why it was refused (``SRS_ERRORS``)."""

    kind: ClassVar[str] = "srs-checked"
    at: float
    outcome: str
    address: str  # bounded, as the client wrote it
    client: str | None


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One attempt to deliver a message's recipients to one destination."""

    kind: ClassVar[str] = "delivery-attempt"
    at: float
    queue_id: str
    pool: str
    source: str | None  # the source address, None when no connection was made
    destination: str  # the recipient domain or [smarthost]:port
    host: str | None
    reply: str  # the reply that ended the attempt (bounded)
    delivered: int
    deferred: int
    failed: int


@dataclass(frozen=True, slots=True)
class DsnGenerated:
    """The relay wrote a DSN for recipients that failed."""

    kind: ClassVar[str] = "dsn-generated"
    at: float
    queue_id: str  # the original message's
    dsn_queue_id: str
    tenant: str | None
    pool: str
    recipients: tuple[DsnRecipient, ...]


@dataclass(frozen=True, slots=True)
class DsnRelayed:
    """A DSN a client handed the relay (one of its servers bouncing mail), as the scanner read it."""

    kind: ClassVar[str] = "dsn-relayed"
    at: float
    queue_id: str
    tenant: str | None
    pool: str
    client: str | None
    report: DsnReport
    # Whether the original Message-ID is among those the relay sent (None: the DSN names none).
    original_relayed: bool | None = None
    # The original From's domain is one of the tenant's own domains.
    original_from_tenant: bool = False


@dataclass(frozen=True, slots=True)
class SenderRestricted:
    """A sender reached a limit and is refused (550 5.1.8) until `until` (None: until released)."""

    kind: ClassVar[str] = "sender-restricted"
    at: float
    sender: str
    tenant: str | None
    window: str  # the limit reached: LIMIT_NAMES
    count: int
    maximum: int
    action: str
    until: float | None


@dataclass(frozen=True, slots=True)
class SenderLimitAlert:
    """A limit was reached with action "alert" (the mail flows), or the tenant's volume limit
    (`sender` "*"), reported once per window."""

    kind: ClassVar[str] = "sender-limit-alert"
    at: float
    sender: str
    tenant: str | None
    window: str
    count: int
    maximum: int
    action: str
    refused: bool


@dataclass(frozen=True, slots=True)
class SenderReleased:
    """A restriction ended: ``released`` by an administrator or ``expired`` (00:00 UTC)."""

    kind: ClassVar[str] = "sender-released"
    at: float
    sender: str
    tenant: str | None
    window: str
    reason: str
    since: float


# Why the admin listener refused a request (a closed set: the label of
# deliverypool_admin_refused_total): no or an unknown credential (401), a read-only token on a
# change, a browser's cross-site request or a CORS preflight, a Host that is not the loopback
# listener's (DNS rebinding), a change that is not application/json (415), a body over
# admin.max_body (413), a body that is not JSON or lacks what the route needs (400), an unknown
# route (404) or method (405), a client too slow to send its body (408), the connection limit (503).
ADMIN_REFUSALS: Final = (
    "no-credential",
    "bad-credential",
    "read-only",
    "cross-site",
    "preflight",
    "bad-host",
    "content-type",
    "too-large",
    "bad-json",
    "bad-request",
    "not-found",
    "method",
    "timeout",
    "too-many-connections",
)
# What a release through the admin API came to.
RELEASE_RESULTS: Final = ("released", "not-restricted", "unavailable")


@dataclass(frozen=True, slots=True)
class AdminRefused:
    """The admin listener refused a request (the audit log's line, as an event)."""

    kind: ClassVar[str] = "admin-refused"
    at: float
    reason: str  # ADMIN_REFUSALS
    status: int
    method: str  # GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS or "other"
    path: str  # bounded, printable
    client: str | None  # the client's address
    who: str | None  # the credential's name, when one was recognised (never the token)


@dataclass(frozen=True, slots=True)
class AdminRelease:
    """A release asked for through the admin API, by whom (the token's name or the client
    certificate's CN), from where, and what came of it."""

    kind: ClassVar[str] = "admin-release"
    at: float
    sender: str
    result: str  # RELEASE_RESULTS
    who: str
    client: str | None
    tenant: str | None = None
    window: str | None = None


Event = Union[
    MessageAccepted, DeliveryAttempt, DsnGenerated, DsnRelayed, SenderRestricted, SenderLimitAlert, SenderReleased, AdminRefused, AdminRelease,
    AuthProblem, SrsChecked,
]
Handler = Callable[[Event], Union[None, Awaitable[None]]]

_BATCH: Final = 256


def as_json(event: Event) -> dict[str, Any]:
    """The event as a JSON object: its fields, with ``kind`` first; a DSN report's properties
    (failed recipients, first status) spelled out."""
    body: dict[str, Any] = {"kind": event.kind}
    body.update(dataclasses.asdict(event))
    if isinstance(event, MessageAccepted):
        # Written only when set, so that a plain message's line stays as short as it was.
        for key in ("dkim", "rule", "pools", "auth"):
            if not body[key]:
                del body[key]
    if isinstance(event, DsnRelayed):
        body["report"]["failed"] = [r.address for r in event.report.failed]
        body["report"]["original_from_domain"] = event.report.original_from_domain
    return body


@dataclass(eq=False)
class Subscription:
    """One subscriber's queue and counters."""

    name: str
    handler: Handler
    size: int
    queue: collections.deque[Event] = field(default_factory=collections.deque)
    delivered: int = 0
    dropped: int = 0
    errors: int = 0
    latency: float = 0.05
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def offer(self, event: Event) -> None:
        queue = self.queue
        if len(queue) >= self.size:
            self.dropped += 1
            return
        queue.append(event)
        if len(queue) == 1 or len(queue) == self.size // 2:
            self.wakeup.set()

    async def run(self) -> None:
        while True:
            if not self.queue:
                # Idle: asleep until the first event, with no timer (a timer per subscriber woke an
                # idle worker 120 times a second).
                self.wakeup.clear()
                await self.wakeup.wait()
            if len(self.queue) < self.size // 2:
                # The first event waits up to `latency` for others to join it, or until the queue
                # is half full: one task switch per batch, not per event.
                self.wakeup.clear()
                try:
                    await asyncio.wait_for(self.wakeup.wait(), self.latency)
                except asyncio.TimeoutError:
                    pass
            for _ in range(min(_BATCH, len(self.queue))):
                event = self.queue.popleft()
                try:
                    result = self.handler(event)
                    if result is not None and inspect.isawaitable(result):  # most handlers are plain functions
                        await result
                    self.delivered += 1
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.errors += 1
                    if self.errors <= 10 or self.errors % 1000 == 0:
                        log.exception("event subscriber %s failed on a %s event (%d errors)", self.name, event.kind, self.errors)
            # Let the SMTP path run between batches.
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Hands every queued event to the handler (on stop)."""
        while self.queue and self.task is not None and not self.task.done():
            self.wakeup.set()
            await asyncio.sleep(0.01)


class EventBus:
    """Publish/subscribe inside one process; see the module documentation."""

    def __init__(self, queue_size: int = 10000, latency: float = 0.05) -> None:
        self.queue_size = queue_size
        self.latency = latency
        self.subscriptions: list[Subscription] = []
        self.published = 0
        self._running = False

    def subscribe(self, name: str, handler: Handler, *, queue_size: int | None = None) -> Subscription:
        """Adds a subscriber: `handler(event)` (a function or a coroutine function) gets every
        event published from now on, in order, on the event loop."""
        subscription = Subscription(name, handler, queue_size or self.queue_size, latency=self.latency)
        self.subscriptions.append(subscription)
        if self._running:
            subscription.task = asyncio.ensure_future(subscription.run())
        return subscription

    def publish(self, event: Event) -> None:
        """Queues `event` for every subscriber; never blocks, never raises."""
        self.published += 1
        for subscription in self.subscriptions:
            subscription.offer(event)

    async def start(self) -> None:
        self._running = True
        for subscription in self.subscriptions:
            if subscription.task is None:
                subscription.task = asyncio.ensure_future(subscription.run())

    async def stop(self, timeout: float = 2.0) -> None:
        """Gives the subscribers up to `timeout` seconds to take what is queued, then stops them."""
        self._running = False
        try:
            await asyncio.wait_for(asyncio.gather(*(s.drain() for s in self.subscriptions)), timeout)
        except asyncio.TimeoutError:
            pass
        for subscription in self.subscriptions:
            if subscription.task is not None:
                subscription.task.cancel()
                try:
                    await subscription.task
                except (asyncio.CancelledError, Exception):
                    pass
                subscription.task = None

    def stats(self) -> dict[str, dict[str, int]]:
        return {s.name: {"delivered": s.delivered, "dropped": s.dropped, "errors": s.errors, "queued": len(s.queue)} for s in self.subscriptions}
