"""Type stubs for the Rust extension. Checked against the built module by
`python -m mypy.stubtest deliverypool._core`."""

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol, TypedDict, final

__all__ = [
    "BUILD_PROFILE",
    "DEFECTS",
    "DSN_KINDS",
    "PHRASE_GROUPS",
    "POOL_CLASSES",
    "REASONS",
    "REPORT_KINDS",
    "SIGNALS",
    "AuthFacts",
    "ContentType",
    "Decision",
    "DsnVerdict",
    "HeaderFacts",
    "MimePart",
    "Policy",
    "MessageTypeError",
    "PolicyError",
    "RecipientStatus",
    "ScoreError",
    "SenderDomainError",
    "__version__",
    "classify",
    "classify_many",
    "detect",
    "header_block",
    "scan",
]

__version__: str
BUILD_PROFILE: str
"""``"release"`` for an optimised build (wheels, ``maturin develop --release``), ``"debug"``
for a plain ``maturin develop``: benchmarks refuse to time a debug build."""

# The closed sets of names deliverypool outputs, each every valid name once, in the order of its
# table in the Rust core (rust/labels.rs explains). Metrics labels and configuration name these.
REASONS: tuple[str, ...]
"""Every `Decision.reasons` name: dsn, spam-score, sender-domain-no-records, sender-domain-unknown, spam-score-unavailable, unscannable."""
SIGNALS: tuple[str, ...]
"""Every `DsnVerdict.signals` name."""
DEFECTS: tuple[str, ...]
"""Every `HeaderFacts.defects` and `Decision.defects` name."""
REPORT_KINDS: tuple[str, ...]
"""Every `Decision.report_kind` value but None: dsn, mdn, arf, auto-reply."""
DSN_KINDS: tuple[str, ...]
"""Every `DsnVerdict.kind`: delivery-status, global-delivery-status, non-standard."""
POOL_CLASSES: tuple[str, ...]
"""Every pool class (`Decision.pool_class`, `Policy.pools` values): normal, high-risk, relay."""

_PoolClass = Literal["normal", "high-risk", "relay"]

class _Rule(TypedDict, total=False):
    """A routing rule for `Policy(rules=...)`: `pool` is required; every other key is a
    condition (absent or empty: none), all of which must hold. See docs/concepts/pools.md."""

    name: str
    pool: str
    tenants: Sequence[str]
    sender_domains: Sequence[str]
    recipient_domains: Sequence[str]
    header_values: Sequence[str]
    min_size: int
    max_size: int
    reasons: Sequence[str]
    report_kinds: Sequence[str]

_DomainStatus = Literal["has-records", "no-records", "unknown"]

class PolicyError(ValueError):
    """A routing policy value is invalid. About pools or rules: `key` is the policy key at
    fault as a tuple (``("rules", 2, "pool")``, ``("normal_pool",)``), `problem` what is wrong;
    else both None."""

    key: tuple[str | int, ...] | None
    problem: str | None

class ScoreError(ValueError):
    """A spam score is NaN or infinite."""

    index: int | None
    """The message's position in a `classify_many` batch; None from `classify`."""

class SenderDomainError(ValueError):
    """A sender_domain status is not has-records, no-records or unknown."""

    index: int | None
    """The message's position in a `classify_many` batch; None from `classify`."""

class MessageTypeError(TypeError):
    """A message of a `classify_many` batch is not bytes (`classify` raises a plain TypeError)."""

    index: int | None
    """The message's position in the batch."""

class CacheError(ValueError):
    """An argument to a DnsCache method is invalid: capacity, TTL limits, seconds, kind,
    outcome, or a missing ttl. (Advancing a cache that runs on the system clock is a
    RuntimeError.)"""

@final
class ContentType:
    @property
    def mime_type(self) -> str: ...
    @property
    def maintype(self) -> str: ...
    @property
    def subtype(self) -> str: ...
    @property
    def params(self) -> dict[str, str]: ...
    def param(self, name: str) -> str | None: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class MimePart:
    @property
    def content_type(self) -> ContentType: ...
    @property
    def depth(self) -> int: ...

@final
class RecipientStatus:
    @property
    def final_recipient(self) -> str | None: ...
    @property
    def action(self) -> str | None: ...
    @property
    def status(self) -> str | None: ...
    @property
    def diagnostic_code(self) -> str | None: ...

@final
class HeaderFacts:
    @property
    def header_start(self) -> int: ...
    @property
    def header_length(self) -> int: ...
    @property
    def field_count(self) -> int: ...
    @property
    def content_type(self) -> ContentType | None: ...
    @property
    def from_(self) -> str | None: ...
    @property
    def sender(self) -> str | None: ...
    @property
    def return_path(self) -> str | None: ...
    @property
    def subject(self) -> str | None: ...
    @property
    def auto_submitted(self) -> str | None: ...
    @property
    def precedence(self) -> str | None: ...
    @property
    def x_failed_recipients(self) -> str | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def score_header_values(self) -> tuple[str, ...]: ...
    @property
    def marker_fields(self) -> tuple[str, ...]: ...
    @property
    def qmail_bounce(self) -> bool: ...
    @property
    def parts(self) -> tuple[MimePart, ...]: ...
    @property
    def recipients(self) -> tuple[RecipientStatus, ...]: ...
    @property
    def reporting_mta(self) -> str | None: ...
    @property
    def original_message_id(self) -> str | None: ...
    @property
    def original_from(self) -> str | None: ...
    @property
    def defects(self) -> tuple[str, ...]: ...

@final
class Policy:
    def __new__(
        cls,
        *,
        normal_pool: str = "normal",
        high_risk_pool: str = "high-risk",
        threshold: float = 5.0,
        tenant_thresholds: Mapping[str, float] | None = None,
        score_header: str | None = None,
        unknown_domain_pool: Literal["high-risk", "normal"] = "high-risk",
        score_unavailable_pool: Literal["high-risk", "normal"] = "normal",
        unscannable_pool: Literal["high-risk", "normal"] = "high-risk",
        pools: Mapping[str, _PoolClass] | None = None,
        pool_tenants: Mapping[str, str] | None = None,
        rules: Iterable[_Rule] | None = None,
        relay_pool: str | None = None,
        route_header: str | None = None,
        auth_unknown_pool: Literal["high-risk", "normal"] = "high-risk",
    ) -> Policy:
        """`pools`: every pool's class by name (default: `normal_pool` normal and
        `high_risk_pool` high-risk); `pool_tenants`: the tenant each dedicated pool belongs to;
        `rules`: the routing rules in order; the three `*_pool` names are each class's default.
        A mistake in them raises `PolicyError` with its `key`."""
    @property
    def normal_pool(self) -> str: ...
    @property
    def high_risk_pool(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def tenant_thresholds(self) -> dict[str, float]: ...
    @property
    def score_header(self) -> str | None: ...
    @property
    def unknown_domain_pool(self) -> Literal["high-risk", "normal"]: ...
    @property
    def score_unavailable_pool(self) -> Literal["high-risk", "normal"]: ...
    @property
    def unscannable_pool(self) -> Literal["high-risk", "normal"]: ...
    @property
    def auth_unknown_pool(self) -> Literal["high-risk", "normal"]: ...
    @property
    def relay_pool(self) -> str | None: ...
    @property
    def pools(self) -> dict[str, _PoolClass]: ...
    @property
    def pool_tenants(self) -> dict[str, str]: ...
    @property
    def rules(self) -> tuple[str, ...]:
        """Every rule's name, in order."""
    @property
    def route_header(self) -> str | None: ...
    @property
    def per_recipient(self) -> bool:
        """A rule names recipient domains: `classify` then needs the recipients, and routes
        each one on its own (`Decision.recipient_pools`)."""
    def threshold_for(self, tenant: str | None = None) -> float: ...

@final
class AuthFacts:
    """What SPF and DMARC found about a message, as routing reads it (`classify(auth=...)`):
    `dmarc-fail` when `dmarc` is fail and `disposition` quarantine or reject (`auth-unknown`
    instead when `unsure`); `relayed-spf-fail` when the sender is not null, not `own_sender`,
    and `spf` is anything but pass (`auth-unknown` for temperror); `auth-unknown` for a DMARC
    temperror; `srs-bounce` when `srs_bounce`. A value outside its set raises `PolicyError`."""

    def __new__(
        cls,
        *,
        spf: str | None = None,
        own_sender: bool = False,
        dmarc: str | None = None,
        disposition: Literal["none", "quarantine", "reject"] = "none",
        unsure: bool = False,
        srs_bounce: bool = False,
    ) -> AuthFacts: ...
    @property
    def spf(self) -> str | None: ...
    @property
    def own_sender(self) -> bool: ...
    @property
    def dmarc(self) -> str | None: ...
    @property
    def disposition(self) -> Literal["none", "quarantine", "reject"]: ...
    @property
    def unsure(self) -> bool: ...
    @property
    def srs_bounce(self) -> bool: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class DsnVerdict:
    @property
    def kind(self) -> Literal["delivery-status", "global-delivery-status", "non-standard"]: ...
    @property
    def signals(self) -> tuple[str, ...]: ...
    @property
    def strength(self) -> float: ...
    @property
    def recipients(self) -> tuple[RecipientStatus, ...]: ...

@final
class Decision:
    """Where a message goes and why, with what callers read from the message afterwards
    (`message_id`, `from_address`, `from_domain`), so that they need not scan it again.

    A Decision holds a reference to its message's bytes (no copy) and reads those fields
    from it when asked: routing does not pay for them, and the message lives as long as the
    Decision does."""

    @property
    def pool(self) -> str:
        """The message's pool (the first recipient's, when rules route recipients apart)."""
    @property
    def pool_class(self) -> _PoolClass: ...
    @property
    def rule(self) -> str | None:
        """The rule that chose `pool`; None when the class's default did."""
    @property
    def recipient_pools(self) -> tuple[str, ...]:
        """Each recipient's pool, in the order given to `classify` (all of `pool_class`)."""
    @property
    def high_risk(self) -> bool: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def dsn(self) -> DsnVerdict | None: ...
    @property
    def report_kind(self) -> Literal["dsn", "mdn", "arf", "auto-reply"] | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def score_source(self) -> Literal["caller", "header"] | None: ...
    @property
    def threshold(self) -> float: ...
    @property
    def sender_domain(self) -> _DomainStatus | None: ...
    @property
    def auth(self) -> AuthFacts | None:
        """What SPF and DMARC found, as given to `classify`; None without."""
    @property
    def defects(self) -> tuple[str, ...]: ...
    @property
    def message_id(self) -> str | None:
        """The header Message-ID, as `scan(message).message_id` reads it; None without one."""
    @property
    def from_address(self) -> str | None:
        """The first address of the header From field, lowercased (`"Doe, J" <J@Example.ORG>`
        gives `j@example.org`); None without a From field or without a usable address in it
        (such as `Mail Delivery System <>`). Groups, comments and quoting are understood, as
        `email.utils.getaddresses` understands them."""
    @property
    def from_domain(self) -> str | None:
        """The domain of `from_address` (lowercased, not IDNA-encoded), or None with it."""

_PhraseKind = Literal["subject-form", "subject-word", "reply-prefix", "body-template", "body-wording"]

# (name, kind, source, families, phrases): `source` is the software that writes the wording,
# None for a group introduced for the corpus `families`.
PHRASE_GROUPS: tuple[tuple[str, _PhraseKind, str | None, tuple[str, ...], tuple[str, ...]], ...]

def scan(message: bytes, *, score_header: str | None = None) -> HeaderFacts: ...
def detect(
    message: bytes, *, mail_from: str | None = None, disabled_groups: Sequence[str] | None = None
) -> tuple[Literal["dsn", "mdn", "arf", "auto-reply"] | None, DsnVerdict | None]:
    """The report kind and DSN verdict of a message, as `classify` finds them, with the phrase
    groups named in `disabled_groups` (`PHRASE_GROUPS` names) ignored: for the corpus tool's
    leave-one-family-out run. An unknown group name is a `ValueError`."""

def header_block(message: bytes) -> tuple[int, int]:
    """Where the header block is, as the scanner reads it: `(start, body)`.

    `start` is the offset of the first header field, `scan(message).header_start`: 0, or past
    what the scanner skips before the first field (a UTF-8 byte-order mark, blank lines, an
    mbox `From ` or `>From ` line, a few lines of junk followed by fields; each reported in
    `defects`). `body` is the offset of the body: just past the blank line that ends the header
    block (CRLF, LF or a bare CR line breaks alike), or `len(message)` when the message ends
    inside the header block. When a line that is neither a field nor a continuation ends the
    block without a blank line, `body` is that line's offset (it belongs to the body). For an
    empty message, `(0, 0)`. `body - start == scan(message).header_length`.
    """

def classify(
    message: bytes,
    *,
    mail_from: str | None = None,
    score: float | None = None,
    tenant: str | None = None,
    policy: Policy | None = None,
    untrusted_client: bool = False,
    sender_domain: _DomainStatus | None = None,
    score_unavailable: bool = False,
    recipients: Sequence[str] | None = None,
    untrusted_route_header: bool = False,
    auth: AuthFacts | None = None,
) -> Decision: ...
def classify_many(
    messages: Iterable[bytes],
    *,
    mail_from: Sequence[str | None] | None = None,
    score: Sequence[float | None] | None = None,
    tenant: Sequence[str | None] | None = None,
    policy: Policy | None = None,
    untrusted_client: bool = False,
    sender_domain: Sequence[_DomainStatus | None] | None = None,
    score_unavailable: Sequence[bool] | None = None,
    recipients: Sequence[Sequence[str] | None] | None = None,
    untrusted_route_header: bool = False,
    auth: Sequence[AuthFacts | None] | None = None,
) -> list[Decision]: ...

# --- DNS cache (rust/python/cache.rs) ---

__all__ += ["CacheError", "CacheStats", "DnsCache"]

_CacheKind = Literal["sender", "MX", "mx", "A", "a", "AAAA", "aaaa", "TXT", "txt", "PTR", "ptr", "dnsbl"]

@final
class CacheStats:
    """A snapshot of a DnsCache's counters."""

    @property
    def hits(self) -> int: ...
    @property
    def misses(self) -> int: ...
    @property
    def expirations(self) -> int: ...
    @property
    def evictions(self) -> int: ...
    @property
    def insertions(self) -> int: ...
    @property
    def len(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    def as_dict(self) -> dict[str, int]: ...
    def __eq__(self, other: object, /) -> bool: ...

@final
class DnsCache:
    """A bounded, thread-safe LRU of DNS outcomes with per-entry expiry.

    Expiry is measured on the coarse monotonic clock on Linux: accurate to one kernel tick
    (1 to 10 ms). `manual_clock=True` gives a clock that moves only by `advance_clock`.
    """

    def __new__(
        cls,
        capacity: int = 10000,
        *,
        min_ttl: float = 5.0,
        max_ttl: float = 86400.0,
        max_negative_ttl: float = 3600.0,
        unknown_ttl: float = 10.0,
        manual_clock: bool = False,
    ) -> DnsCache: ...
    def get(self, kind: _CacheKind, domain: str) -> object | None: ...
    def sender_status(self, domain: str) -> object | None: ...
    def put(
        self,
        kind: _CacheKind,
        domain: str,
        value: object,
        *,
        ttl: int | None = None,
        outcome: Literal["positive", "negative", "unknown"] = "positive",
    ) -> float: ...
    def remaining_ttl(self, kind: _CacheKind, domain: str) -> float | None: ...
    def remove(self, kind: _CacheKind, domain: str) -> object | None: ...
    def clear(self) -> None: ...
    def keys(self) -> list[tuple[str, str]]: ...
    def stats(self) -> CacheStats: ...
    def advance_clock(self, seconds: float) -> None: ...
    @staticmethod
    def negative_ttl(soa_ttl: int, soa_minimum: int) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def min_ttl(self) -> float: ...
    @property
    def max_ttl(self) -> float: ...
    @property
    def max_negative_ttl(self) -> float: ...
    @property
    def unknown_ttl(self) -> float: ...
    def __len__(self) -> int: ...

__all__ += ["DataReader", "dot_stuff", "has_8bit", "write_body_file"]

_DataProblem = Literal["bare-line-ending", "nul", "line-too-long", "too-large"]

@final
class DataReader:
    """The SMTP DATA reader: fed the connection's input as it arrives (any split across reads),
    finds ``<CRLF>.<CRLF>``, removes the transparency dots, and refuses bare CR/LF (SMTP
    smuggling), NUL bytes, over-long lines and oversized data. Stores nothing more once the
    message is refused, but reads on to the end of data."""

    def __new__(cls, *, size_limit: int, line_length_limit: int, expected_size: int | None = None) -> DataReader: ...
    def feed(self, data: bytes | bytearray) -> int:
        """Reads `data`; returns how many of its bytes belong to the DATA section (fewer than
        ``len(data)`` only once the end is found)."""
    @property
    def done(self) -> bool: ...
    @property
    def problem(self) -> _DataProblem | None: ...
    @property
    def received(self) -> int: ...
    def take(self, prefix: bytes | None = None) -> bytes:
        """The message with `prefix` in front, once; RuntimeError before the end of data or
        for a refused message."""

def dot_stuff(message: bytes) -> bytes:
    """The message dot-stuffed for DATA (RFC 5321 §4.5.2); `message` itself when no line
    starts with a dot."""

def has_8bit(message: bytes) -> bool:
    """Whether `message` holds a byte over 0x7F: ``not message.isascii()``, vectorized."""

def write_body_file(path: str | os.PathLike[str], data: bytes, *, over: bool = False) -> None:
    """Writes a spool body file durably: `data` to a new file at `path` (0600, made in its
    directory if that is missing), fsynced, then its directory fsynced; or, with `over`, over
    the start of the existing file at `path` (a spent body file: no create, no truncate, the
    bytes past `data` left as they are), then fdatasync. The GIL is released once for all of
    it. Raises OSError with the errno (FileNotFoundError when `over` finds no file; the caller
    removes the file after a failure)."""

# --- the SMTP server engine (rust/smtp/server.rs, rust/python/smtp_server.rs) ---

__all__ += ["SmtpMessage", "SmtpServer", "SmtpServerConfig"]

@final
class SmtpServerConfig:
    """What a listener offers and enforces, shared by its sessions."""

    def __new__(
        cls,
        hostname: str,
        *,
        ident: str = "deliverypool",
        size_limit: int,
        line_length_limit: int = 1001,
        command_size_limit: int = 512,
        auth: bool = False,
        auth_requires_tls: bool = True,
        tls: bool = False,
        max_unknown_commands: int = 5,
        call_limit: int = 10000,
    ) -> SmtpServerConfig: ...
    @property
    def hostname(self) -> str: ...
    @property
    def size_limit(self) -> int: ...

@final
class SmtpMessage:
    """A whole message with its envelope, as ``on_message`` gets it."""

    @property
    def content(self) -> bytes:
        """The message as received, the relay's ``Received:`` field in front."""
    @property
    def mail_from(self) -> str:
        """The reverse-path ("" for ``<>``), UTF-8 with surrogateescape."""
    @property
    def recipients(self) -> tuple[str, ...]: ...
    @property
    def smtputf8(self) -> bool: ...
    @property
    def body(self) -> Literal["7BIT", "8BITMIME"] | None: ...
    @property
    def ret(self) -> Literal["FULL", "HDRS"] | None: ...
    @property
    def envid(self) -> str | None:
        """ENVID, decoded from xtext."""
    @property
    def notify(self) -> tuple[str | None, ...]:
        """Per recipient: "NEVER", or some of "SUCCESS,FAILURE,DELAY"; None when not given."""
    @property
    def orcpt(self) -> tuple[str | None, ...]:
        """Per recipient: ``addr-type;address`` (decoded), or None."""
    @property
    def chunked(self) -> bool:
        """True when the message came in BDAT chunks."""
    @property
    def helo(self) -> str:
        """The HELO/EHLO name ("unknown" without one)."""

class _SmtpHandler(Protocol):
    """What `SmtpServer.feed` and `answer` call for the decisions; each returns the reply, or
    None to answer later with `SmtpServer.answer`."""

    def on_mail(self, address: str, smtputf8: bool, /) -> str | bytes | None: ...
    def on_rcpt(self, address: str, mail_from: str, smtputf8: bool, accepted: int, /) -> str | bytes | None: ...
    def on_message(self, message: SmtpMessage, /) -> str | bytes | None: ...
    def on_auth(self, mechanism: str | None, login: bytes, password: bytes, failure: str | None, /) -> str | bytes | None: ...
    def on_starttls(self) -> object: ...

@final
class SmtpServer:
    """The SMTP session of one connection (sans-IO): bytes in, replies out, the decisions
    asked of the handler."""

    def __new__(cls, config: SmtpServerConfig, peer: str) -> SmtpServer: ...
    def feed(self, data: bytes, handler: _SmtpHandler) -> bytes | None:
        """Reads `data`, calling `handler` for each decision; the replies to send, or None."""
    def answer(self, reply: str, handler: _SmtpHandler) -> bytes | None:
        """The answer to the pending decision; then reads on as `feed` does."""
    def tls_started(self) -> None: ...
    def shutdown(self, reply: str) -> bytes | None: ...
    def take_output(self) -> bytes | None: ...
    def take_activity(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def waiting(self) -> Literal["mail", "rcpt", "message", "auth", "starttls"] | None: ...
    @property
    def in_message(self) -> bool: ...
    @property
    def helo(self) -> str | None: ...
    @property
    def authenticated(self) -> bool: ...
    @property
    def tls(self) -> bool: ...
    @property
    def buffered(self) -> int: ...

# --- the SMTP client engine (rust/python/smtp_client.rs) ---

__all__ += ["SMTP_CLIENT_EVENTS", "ClientOutcome", "SmtpClient"]

SMTP_CLIENT_EVENTS: tuple[str, ...]

@final
class ClientOutcome:
    """What one transaction gave: per recipient ``(reply, remote)`` or None (not tried: 452 too
    many recipients), the reply that ended it, whether a reused connection was closed before
    anything was attempted (``reconnect``), and why the connection ended (``lost``)."""

    @property
    def replies(self) -> tuple[tuple[str, bool] | None, ...]: ...
    @property
    def last(self) -> str | None: ...
    @property
    def reconnect(self) -> bool: ...
    @property
    def lost(self) -> str | None: ...

@final
class SmtpClient:
    """The SMTP client of one connection without I/O: fed the server's bytes once per read,
    returns ``(event, bytes to write or None)``; the events are indices into
    ``SMTP_CLIENT_EVENTS``."""

    def __new__(cls, *, ehlo_name: str, tls: Literal["opportunistic", "required", "none"], peer: str) -> SmtpClient: ...
    def receive(self, data: bytes) -> tuple[int, bytes | None]: ...
    @property
    def holds_input(self) -> bool: ...
    def begin(
        self,
        mail_from: str,
        recipients: Sequence[str],
        *,
        size: int,
        eight_bit: bool,
        in_memory: bool,
        ends_with_crlf: bool,
        ret: str | None = None,
        envid: str | None = None,
        notify: Sequence[str | None] | None = None,
        orcpt: Sequence[str | None] | None = None,
    ) -> tuple[int, bytes | None]: ...
    def tls_started(self) -> bytes: ...
    def quit(self) -> bytes: ...
    def connection_lost(self, why: str) -> int: ...
    def body_frame(self) -> tuple[bool, bytes] | None: ...
    def outcome(self) -> ClientOutcome | None: ...
    @property
    def greeting(self) -> str | None: ...
    @property
    def refusal(self) -> str | None: ...
    @property
    def refusal_code(self) -> int | None: ...
    @property
    def extensions(self) -> tuple[str, ...]: ...
    @property
    def tls_active(self) -> bool: ...
    @property
    def ready(self) -> bool: ...
    @property
    def transactions(self) -> int: ...
    @property
    def broken(self) -> str | None: ...

# --- relayed Message-IDs (rust/python/seen.rs) ---

__all__ += ["MessageIdFilter"]

@final
class MessageIdFilter:
    """A compact probabilistic set of Message-IDs (a Bloom filter): no false negatives, false
    positives near `fp_rate` up to `expected` IDs. IDs are compared without surrounding white
    space and angle brackets. Thread-safe; `add_many` and `contains_many` release the GIL."""

    def __new__(cls, expected: int, fp_rate: float = 0.001) -> MessageIdFilter: ...
    def add(self, message_id: str) -> bool:
        """Adds `message_id`; returns whether it was (probably) there already."""
    def add_many(self, message_ids: Sequence[str]) -> int:
        """Adds every ID (the GIL released); returns how many were new."""
    def __contains__(self, key: str, /) -> bool: ...
    def contains_many(self, message_ids: Sequence[str]) -> list[bool]:
        """Membership of every ID, in order (the GIL released)."""
    def union(self, other: MessageIdFilter) -> MessageIdFilter:
        """A new filter with the IDs of both; ValueError unless both have the same size."""
    def to_bytes(self) -> bytes: ...
    @staticmethod
    def from_bytes(data: bytes) -> MessageIdFilter: ...
    @property
    def bits(self) -> int: ...
    @property
    def hashes(self) -> int: ...
    @property
    def added(self) -> int:
        """IDs added that were not present before."""
    @property
    def false_positive_rate(self) -> float: ...

# --- DKIM (rust/python/dkim.rs, rust/auth/dkim/) ---

__all__ += [
    "DKIM_ALGORITHMS",
    "DKIM_REASONS",
    "DKIM_RESULTS",
    "DKIM_SIGN_PROBLEMS",
    "DkimKey",
    "DkimKeyError",
    "DkimSigning",
    "DkimVerdict",
    "dkim_key_queries",
    "dkim_sign",
    "dkim_verify",
]

DKIM_ALGORITHMS: tuple[str, ...]
"""rsa-sha256, ed25519-sha256."""
DKIM_RESULTS: tuple[str, ...]
"""Every `DkimVerdict.result`, in RFC 8601's words: pass, fail, neutral, temperror, permerror, policy."""
DKIM_REASONS: tuple[str, ...]
"""Every `DkimVerdict.reason` but None."""
DKIM_SIGN_PROBLEMS: tuple[str, ...]
"""Every `DkimSigning.problem` but None: no-from, multiple-from, malformed-header, crypto-failure."""

class DkimKeyError(ValueError):
    """A DKIM private key or its options cannot be used to sign."""

@final
class DkimKey:
    """A DKIM private key (PKCS#8 DER) and what it signs: ``d=``, ``s=``, the fields (From is
    always signed, and over-signed), the canonicalization, ``x=`` as seconds after ``t=``.
    Thread-safe; made once, used for every message."""

    def __new__(
        cls,
        der: bytes,
        *,
        algorithm: str,
        domain: str,
        selector: str,
        headers: Sequence[str],
        oversign: Sequence[str] = ...,
        canonicalization: str = "relaxed/relaxed",
        expire: int | None = None,
    ) -> DkimKey: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def bits(self) -> int:
        """RSA: the modulus size; Ed25519: 256."""
    @property
    def headers(self) -> tuple[str, ...]:
        """The fields signed, lowercased, From first."""
    @property
    def oversign(self) -> tuple[str, ...]: ...
    @property
    def canonicalization(self) -> str: ...
    @property
    def expire(self) -> int | None: ...

@final
class DkimSigning:
    """What `dkim_sign` did."""

    @property
    def header(self) -> bytes:
        """The DKIM-Signature fields to put in front of the message (empty when unsigned)."""
    @property
    def problem(self) -> str | None:
        """Why the message was not signed (`DKIM_SIGN_PROBLEMS`), or None."""
    @property
    def count(self) -> int: ...

def dkim_sign(message: bytes, keys: Sequence[DkimKey], now: int) -> DkimSigning:
    """Signs `message` with each key (`now`: ``t=``), the GIL released; the body is hashed in
    one pass per canonicalization, without a copy."""

def dkim_key_queries(message: bytes, max: int = 8) -> list[str]:
    """The key records to look up (``SELECTOR._domainkey.DOMAIN``) for the first `max` signatures."""

@final
class DkimVerdict:
    """One signature's check."""

    @property
    def domain(self) -> str: ...
    @property
    def selector(self) -> str: ...
    @property
    def algorithm(self) -> str: ...
    @property
    def result(self) -> str:
        """`DKIM_RESULTS`."""
    @property
    def reason(self) -> str | None:
        """`DKIM_REASONS`, or None for a plain pass."""

def dkim_verify(message: bytes, keys: Mapping[str, Sequence[bytes] | None], now: int, max: int = 8) -> list[DkimVerdict]:
    """Checks the first `max` signatures of `message`, the GIL released. `keys`: each name of
    `dkim_key_queries` -> its TXT records (empty: none), or None when the lookup failed."""
# --- sender authentication (rust/auth/, rust/python/auth.rs) ---------------------------------

__all__ += [
    "DMARC_POLICIES",
    "DMARC_REASONS",
    "DMARC_RESULTS",
    "SPF_REASONS",
    "SPF_RESULTS",
    "SRS_ERRORS",
    "AuthError",
    "DmarcCheck",
    "DmarcOutcome",
    "SpfCheck",
    "SpfOutcome",
    "SrsError",
    "SrsRewriter",
    "is_srs",
    "organizational_domain",
]

SPF_RESULTS: tuple[str, ...]
"""Every `SpfOutcome.result`: pass, fail, softfail, neutral, none, temperror, permerror."""
SPF_REASONS: tuple[str, ...]
"""Every `SpfOutcome.reason`."""
DMARC_RESULTS: tuple[str, ...]
"""Every `DmarcOutcome.result`: pass, fail, none, temperror, permerror."""
DMARC_REASONS: tuple[str, ...]
"""Every `DmarcOutcome.reason`."""
DMARC_POLICIES: tuple[str, ...]
"""Every policy and disposition: none, quarantine, reject."""
SRS_ERRORS: tuple[str, ...]
"""Every `SrsError.reason`: not-srs, malformed, bad-hash, expired, no-domain."""

_Outcome = Literal["positive", "negative", "unknown"]
_QueryType = Literal["TXT", "A", "AAAA", "MX", "PTR"]
_Reply = tuple[str, str, str, Sequence[bytes] | Sequence[str], str]

class AuthError(ValueError):
    """An argument to an SPF, DMARC or SRS call is invalid."""

class SrsError(ValueError):
    """An address an SRS rewriter refuses."""

    reason: str
    """One of SRS_ERRORS."""

@final
class SpfCheck:
    """An SPF check (RFC 7208) of one identity, sans-IO: `step()` returns the outcome or the
    DNS questions still open as (type, name) pairs; `answer()` gives one answer."""

    def __new__(
        cls,
        ip: str,
        mail_from: str,
        helo: str,
        *,
        identity: Literal["mailfrom", "helo"] = "mailfrom",
        receiver: str = "",
        now: int | None = None,
    ) -> SpfCheck: ...
    def step(self, answers: Iterable[_Reply] | None = None) -> SpfOutcome | tuple[tuple[_QueryType, str], ...]:
        """Gives `answers` (as `answer()` takes them: type, name, outcome, records, detail),
        then runs the check."""
    def answer(
        self, qtype: str, name: str, outcome: str, records: Sequence[bytes] | Sequence[str] | None = None, detail: str = ""
    ) -> None:
        """`outcome` positive/negative/unknown; `detail` "nxdomain" for a negative NXDOMAIN,
        the failure for unknown; `records` bytes (TXT), addresses (A, AAAA) or names (MX, PTR)."""
    def run_cached(self, cache: DnsCache) -> SpfOutcome | None:
        """The outcome from the answers `cache` holds (as deliverypool.auth.dns fills it), in one
        call; None when an answer is not cached."""
    @property
    def identity(self) -> str: ...

@final
class SpfOutcome:
    """The result of an SPF check."""

    @property
    def identity(self) -> str: ...
    @property
    def result(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def domain(self) -> str: ...
    @property
    def sender(self) -> str: ...
    @property
    def mechanism(self) -> str | None: ...
    @property
    def explanation(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def lookups(self) -> int: ...
    @property
    def void_lookups(self) -> int: ...

@final
class DmarcCheck:
    """A DMARC check (RFC 7489), sans-IO like SpfCheck: `dkim` is (d=, verifies) pairs, `spf`
    (domain, result) for the envelope sender as the destination will see it."""

    def __new__(
        cls, from_domain: str, *, dkim: Sequence[tuple[str, bool]] = ..., spf: tuple[str, str] | None = None
    ) -> DmarcCheck: ...
    def step(self, answers: Iterable[_Reply] | None = None) -> DmarcOutcome | tuple[tuple[_QueryType, str], ...]: ...
    def run_cached(self, cache: DnsCache) -> DmarcOutcome | None: ...
    def answer(
        self, qtype: str, name: str, outcome: str, records: Sequence[bytes] | Sequence[str] | None = None, detail: str = ""
    ) -> None: ...

@final
class DmarcOutcome:
    """The result of a DMARC check."""

    @property
    def result(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def from_domain(self) -> str: ...
    @property
    def organizational_domain(self) -> str: ...
    @property
    def record_domain(self) -> str | None: ...
    @property
    def policy(self) -> str | None: ...
    @property
    def disposition(self) -> str: ...
    @property
    def p(self) -> str | None: ...
    @property
    def sp(self) -> str | None: ...
    @property
    def pct(self) -> int | None: ...
    @property
    def adkim(self) -> str | None: ...
    @property
    def aspf(self) -> str | None: ...
    @property
    def rua(self) -> list[str]: ...
    @property
    def dkim_aligned(self) -> str | None: ...
    @property
    def spf_aligned(self) -> bool: ...
    @property
    def detail(self) -> str: ...

def organizational_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 §3.2) from the Public Suffix List."""

@final
class SrsRewriter:
    """The Sender Rewriting Scheme for one domain (libsrs2/postsrsd/Mail::SRS format): the
    first key signs, every key verifies."""

    def __new__(
        cls, domain: str, keys: Sequence[bytes], *, max_age_days: int = 21, hash_length: int = 4, separator: str = "="
    ) -> SrsRewriter: ...
    def forward(self, sender: str, *, now: int | None = None) -> str: ...
    def reverse(self, address: str, *, now: int | None = None) -> str: ...
    @property
    def domain(self) -> str: ...

def is_srs(address: str) -> bool:
    """Whether an address is an SRS0 or SRS1 address, by its form alone."""
