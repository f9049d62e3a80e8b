"""The relay's configuration as frozen pydantic models, one per TOML table.

Each field's ``description`` is the documentation of its key: it is what `python -m
deliverypool.config.schema` writes into ``docs/relay.schema.json`` for editors to show. The
scalar types check TOML's types strictly (``"5"`` is not an integer, ``1`` is not ``true``),
as the hand-written validator this replaces did.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Optional, TypeVar, Union

from pydantic import (
    AfterValidator,
    GetJsonSchemaHandler,
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from deliverypool._core import POOL_CLASSES, REASONS, REPORT_KINDS
from deliverypool.config.errors import Invalid, toml_kind
from deliverypool.config.units import Delay, Duration, Size, format_duration, format_size
from deliverypool.mail.address import AddressError, normalize_domain, parse_host_port

__all__ = [
    "DnsConfig",
    "IPAddress",
    "IPNetwork",
    "ListenerConfig",
    "MilterConfig",
    "PolicyConfig",
    "PoolConfig",
    "RelayConfig",
    "RetryConfig",
    "RuleConfig",
    "ScoreConfig",
    "SourceAddress",
    "SpoolConfig",
    "TenantConfig",
    "WarmupConfig",
    "Written",
]

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_LISTEN: Final = ("127.0.0.1", 2525)
DEFAULT_MILTER_LISTEN: Final = ("127.0.0.1", 8893)
DEFAULT_MAX_AGE: Final = 5 * 24 * 3600.0
DEFAULT_SIZE_LIMIT: Final = 25 * 1024 * 1024

# A name for EHLO and Received: labels of letters, digits and inner hyphens, up to 63
# characters, 253 in all; a single label (the default, "localhost") is allowed. No look-around,
# so that every JSON Schema regex engine takes it too.
HOSTNAME_PATTERN: Final = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
HOSTNAME_LENGTH: Final = 253
# RFC 5322 field name: printable ASCII but the colon.
HEADER_NAME_PATTERN: Final = r"^[!-9;-~]+$"
_HOSTNAME: Final = re.compile(HOSTNAME_PATTERN)
_HEADER_NAME: Final = re.compile(HEADER_NAME_PATTERN)


# --- scalar types ------------------------------------------------------------------------
# Each is a plain validator (so the message is ours and names what the key wants) with the
# JSON Schema of what the file may hold.

def _as_text(value: object) -> str:
    """The serializer of addresses, networks and paths: the string the file writes."""
    return str(value)


def _host_port_text(host_port: tuple[str, int]) -> str:
    """The serializer of (host, port): ``host:port``, ``[v6]:port``, read back the same."""
    host, port = host_port
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# Each type below dumps (model_dump(mode="json")) to what the file would write, so that a dump
# loads back into an equal configuration.
AsText = PlainSerializer(_as_text, return_type=str)
AsHostPort = PlainSerializer(_host_port_text, return_type=str)

Int = Annotated[int, Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {toml_kind(value) if not isinstance(value, str) else 'an empty one'}")
    return value


Text = Annotated[str, PlainValidator(_text), WithJsonSchema({"type": "string", "minLength": 1})]


def _host_name(value: object) -> str:
    text = _text(value)
    if not _is_host_name(text):
        raise ValueError(f"not a host name: {text!r}")
    return text


def _is_host_name(text: str) -> bool:
    return len(text) <= HOSTNAME_LENGTH and _HOSTNAME.fullmatch(text) is not None


HostName = Annotated[
    str, PlainValidator(_host_name), WithJsonSchema({"type": "string", "maxLength": HOSTNAME_LENGTH, "pattern": HOSTNAME_PATTERN})
]


def _full_match(pattern: re.Pattern[str], what: str) -> Callable[[object], str]:
    """A validator of strings that `pattern` matches whole; others are "not `what`"."""

    def check(value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"not {what}: {value!r}")
        return value

    return check


HeaderName = Annotated[
    str, PlainValidator(_full_match(_HEADER_NAME, "a header field name")), WithJsonSchema({"type": "string", "pattern": HEADER_NAME_PATTERN})
]


def _password(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("password must be a non-empty string")
    return value


Password = Annotated[str, PlainValidator(_password), WithJsonSchema({"type": "string", "minLength": 1})]


def _path(value: object) -> Path:
    return value if isinstance(value, Path) else Path(_text(value))


FilePath = Annotated[Path, PlainValidator(_path), AsText, WithJsonSchema({"type": "string", "minLength": 1})]


class Written:
    """Marks a path-valued key the relay writes (a folder it creates, a log) rather than reads:
    the start-up checks (deliverypool.preflight) read every other path a configuration names."""

    def __repr__(self) -> str:
        return "Written()"


# A folder or file the relay creates or writes.
OutputPath = Annotated[FilePath, Written()]


def _ip_address(value: object) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an IP address string, got {toml_kind(value)}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ValueError(f"not an IP address: {value!r}") from None


_IP_SCHEMA: Final = {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}
IPAddressField = Annotated[IPAddress, PlainValidator(_ip_address), AsText, WithJsonSchema(_IP_SCHEMA)]


def _ip_network(value: object) -> IPNetwork:
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be a network string like 192.0.2.0/24, got {toml_kind(value)}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network: {value!r}") from None


IPNetworkField = Annotated[
    IPNetwork,
    PlainValidator(_ip_network),
    AsText,
    WithJsonSchema({"type": "string", "description": "an address with a prefix length, like 192.0.2.0/24 or 2001:db8::/32"}),
]


def _host_port(value: object, default_port: int | None) -> tuple[str, int]:
    """``host:port`` read by the project's one parser (`deliverypool.mail.address`); from
    Python, a ``(host, port)`` tuple too."""
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and host and isinstance(port, int) and 0 < port < 65536:
            return host, port
        raise ValueError(f"must be (host, port) with a port in 1-65535, got {value!r}")
    if not isinstance(value, str):
        raise ValueError(f"must be a string like host:port, got {toml_kind(value)}")
    try:
        return parse_host_port(value, default_port)
    except AddressError as exc:
        raise ValueError(str(exc)) from None


# host:port or [v6]:port, as parse_host_port reads them without a default port.
_HOST_PORT_SCHEMA: Final = {"type": "string", "pattern": r"^\s*(\[[^\]]*\]|[^:\[\]]+):[0-9]+\s*$"}


def _listen_address(value: object) -> tuple[str, int]:
    return _host_port(value, None)


ListenAddress = Annotated[tuple[str, int], PlainValidator(_listen_address), AsHostPort, WithJsonSchema(_HOST_PORT_SCHEMA)]


def _smarthost(value: object) -> tuple[str, int]:
    host, port = _host_port(value, 25)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = "localhost" if host.lower() == "localhost" else normalize_domain(host)
        if name is None:
            raise ValueError(f"not a host name or IP address: {host!r}") from None
        host = name
    return host, port


SmartHost = Annotated[tuple[str, int], PlainValidator(_smarthost), AsHostPort, WithJsonSchema({"type": "string", "minLength": 1})]


def _nameserver(value: object) -> tuple[str, int]:
    host, port = _host_port(value, 53)
    _ip_address(host)
    return host, port


NameServer = Annotated[tuple[str, int], PlainValidator(_nameserver), AsHostPort, WithJsonSchema({"type": "string", "minLength": 1})]

# A master.cf service name, as the milter writes it into its header.
TRANSPORT_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_TRANSPORT: Final = re.compile(TRANSPORT_PATTERN)

PostfixTransport = Annotated[
    str,
    PlainValidator(_full_match(_TRANSPORT, "a master.cf transport name (letters, digits, '.', '_', '-')")),
    WithJsonSchema({"type": "string", "pattern": TRANSPORT_PATTERN}),
]


def _http_url(value: object) -> str:
    """An http:// or https:// base URL with a host (no query or fragment); kept as written,
    without a trailing slash."""
    text = _text(value).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(f"not an http:// or https:// URL with a host: {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return text.rstrip("/")


HttpUrl = Annotated[str, PlainValidator(_http_url), WithJsonSchema({"type": "string", "pattern": "^https?://"})]

V = TypeVar("V")


def _thaw(mapping: Mapping[str, V]) -> dict[str, V]:
    return dict(mapping)


# A table of names to values that stays read-only inside a frozen model.
ReadOnlyTable = Annotated[Mapping[str, V], AfterValidator(MappingProxyType), PlainSerializer(_thaw)]


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


def _shown_default(value: object) -> dict[str, Any]:
    """For `Field(json_schema_extra=...)`: the default as the file would write it."""
    return {"default": value}


def _no_default(schema: dict[str, Any]) -> None:
    """For `Field(json_schema_extra=...)`: a default that depends on another key (the top-level
    hostname) is described, not stated."""
    schema.pop("default", None)


class _Table(BaseModel):
    """A TOML table: unknown keys are errors (they are usually typos), values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- the tables --------------------------------------------------------------------------


def _date(value: object) -> datetime.date:
    if isinstance(value, datetime.datetime):
        raise ValueError(f"must be a date without a time (like 2025-06-01), got {value.isoformat()!r}")
    if isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        try:
            return datetime.date.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"must be a date like 2025-06-01, got {value!r}")


Date = Annotated[datetime.date, PlainValidator(_date), PlainSerializer(lambda d: d.isoformat(), return_type=str), WithJsonSchema({"type": "string", "format": "date"})]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
# Longest warm-up schedule: a year of days.
MAX_WARMUP_DAYS: Final = 366


class WarmupConfig(_Table):
    """A source address's warm-up: the most messages it sends per day (UTC), rising day by day
    from ``start``; over it, its share goes to the pool's other addresses (never to another
    pool's). Counted over every worker of the relay (the state database, or [state] redis)."""

    start: Date = Field(description="The first day of the warm-up (UTC), e.g. 2025-06-01; before it the address sends nothing.")
    per_day: tuple[PositiveInt, ...] = Field(
        min_length=1,
        max_length=MAX_WARMUP_DAYS,
        description="Most messages per day: the first number on start's day, the second the day after, ...; after the last day, no limit.",
    )

    @field_validator("per_day")
    @classmethod
    def _rising(cls, per_day: tuple[int, ...]) -> tuple[int, ...]:
        for i in range(1, len(per_day)):
            if per_day[i] < per_day[i - 1]:
                raise Invalid(f"must not be below the day before ({per_day[i - 1]}): a warm-up rises", i)
        return per_day

    def cap(self, day: datetime.date) -> int | None:
        """The most messages the address may send on `day`: 0 before the start, None (no limit)
        once the schedule is over."""
        index = (day - self.start).days
        if index < 0:
            return 0
        return self.per_day[index] if index < len(self.per_day) else None


class SourceAddress(_Table):
    """One address a pool sends from: an IP address, or a table with the address, a weight and
    a warm-up schedule. Weights share the pool's connections of the family the destination
    needs among its addresses (weighted rotation)."""

    address: IPAddressField = Field(description="The IPv4 or IPv6 address to bind outgoing connections to.")
    weight: Int = Field(1, ge=1, description="Relative share of this pool's connections of this address family (weighted rotation).")
    warmup: Optional[WarmupConfig] = Field(
        None, description="Most messages per day while the address warms up (docs/concepts/pools.md); absent: no limit."
    )

    @model_validator(mode="before")
    @classmethod
    def _plain_address(cls, data: Any) -> Any:
        if isinstance(data, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return {"address": _ip_address(data)}
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"anyOf": [_IP_SCHEMA, handler(core_schema)]}


class RetryConfig(_Table):
    """Exponential backoff after a 4xx reply or a connection error: the n-th retry waits
    min(maximum, initial * factor^(n-1)), multiplied by a random factor between 1 - jitter
    and 1 + jitter."""

    initial: Duration = Field(60.0, description="Wait before the first retry.", json_schema_extra=_shown_default("1m"))
    maximum: Duration = Field(4 * 3600.0, description="Longest wait between retries; not shorter than initial.", json_schema_extra=_shown_default("4h"))
    factor: Number = Field(2.0, ge=1.0, description="Each wait is this many times the previous one (at least 1).")
    jitter: Number = Field(0.2, ge=0.0, lt=1.0, description="Random spread of each wait, as a fraction (0 to below 1).")

    @model_validator(mode="after")
    def _maximum_not_below_initial(self) -> RetryConfig:
        if self.maximum < self.initial:
            raise Invalid("must not be shorter than initial", "maximum")
        return self

    def delay(self, attempts: int, unit_random: float) -> float:
        """Seconds to wait after the `attempts`-th failed attempt; `unit_random` in [0, 1)."""
        exponent = max(0, attempts - 1)
        # Capping the exponent first keeps factor**exponent finite for huge attempt counts.
        base = self.initial * self.factor ** min(exponent, 64)
        base = min(self.maximum, base)
        return base * (1.0 - self.jitter + 2.0 * self.jitter * unit_random)


PoolClass = Literal["normal", "high-risk", "relay"]
assert POOL_CLASSES == ("normal", "high-risk", "relay")


def _sources_required(schema: dict[str, Any]) -> None:
    """The JSON Schema is the relay's: there a pool needs its source addresses (the milter's
    reading, config.loader's command="milter", does not)."""
    schema.setdefault("required", []).append("source_addresses")
    schema["properties"]["source_addresses"].pop("default", None)


class PoolConfig(_Table):
    """A delivery pool: its class, the source addresses its mail leaves from and how it delivers."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, serialize_by_alias=True, json_schema_extra=_sources_required
    )

    # The pool's key in [pools] (see `name`) and its class when not written, set when a
    # RelayConfig is validated.
    _name: str = PrivateAttr(default="")
    _class: PoolClass = PrivateAttr(default="normal")
    class_: Optional[PoolClass] = Field(
        None,
        alias="class",
        description=(
            '"normal" (mail known to be good only), "high-risk" or "relay" (docs/concepts/pools.md). Default: '
            '"high-risk" for policy.high_risk_pool, "relay" for policy.relay_pool, else "normal".'
        ),
        json_schema_extra=_no_default,
    )
    tenant: Optional[Text] = Field(
        None, description="The tenant this pool is dedicated to: only rules that match this tenant alone may name it."
    )
    source_addresses: tuple[SourceAddress, ...] = Field(
        (),
        min_length=1,
        description=(
            "IPv4/IPv6 addresses this pool binds, plain or { address, weight, warmup }. A destination's address family "
            "picks among them by weight. No address belongs to two pools. "
            "Required by deliverypool relay; deliverypool milter does not use them (Postfix binds each pool's "
            "address: smtp_bind_address in master.cf)."
        ),
    )
    ehlo_name: HostName = Field(
        "localhost", description="Name this pool gives in EHLO. Default: the top-level hostname.", json_schema_extra=_no_default
    )
    max_connections_per_destination: Int = Field(
        4, ge=1, description="Connections open at once to one destination: a recipient domain in MX mode, the smarthost otherwise."
    )
    delivery: Literal["mx", "smarthost"] = Field(
        "mx",
        description=(
            '"mx": MX hosts by preference (RFC 5321 §5.1), the domain\'s A/AAAA as implicit MX, a null MX fails at once, '
            'a DNS error defers. "smarthost": everything to smarthost.'
        ),
    )
    smarthost: Optional[SmartHost] = Field(
        None,
        description=(
            'Where delivery = "smarthost" sends everything: "host:port" or "host" (port 25); the host is a host name '
            "with a dot, localhost, or an IP address ([v6]:port). Required with, and only with, that delivery."
        ),
    )
    mx_port: Int = Field(25, ge=1, le=65535, description="TCP port of MX hosts (the demo and tests use unprivileged ports).")
    tls: Literal["opportunistic", "required", "none"] = Field(
        "opportunistic",
        description=(
            '"opportunistic": STARTTLS when offered, certificate not checked; "required": STARTTLS with a verified '
            'certificate, else deferred; "none": never STARTTLS.'
        ),
    )
    max_age: Duration = Field(
        DEFAULT_MAX_AGE,
        description="How long deferred mail is retried; a last attempt is made then, after which the recipient fails with a DSN.",
        json_schema_extra=_shown_default(format_duration(DEFAULT_MAX_AGE)),
    )
    retry: RetryConfig = Field(default_factory=RetryConfig, description="Backoff after a 4xx reply or a connection error.")
    max_messages_per_connection: Int = Field(100, ge=1, description="Messages sent over one connection before it is closed and a new one opened.")
    idle_timeout: Duration = Field(
        2.0, description="How long an idle connection to a destination stays open waiting for more mail.", json_schema_extra=_shown_default("2s")
    )
    connect_timeout: Duration = Field(30.0, description="Time allowed to connect and read the greeting.", json_schema_extra=_shown_default("30s"))
    command_timeout: Duration = Field(300.0, description="Time allowed for each SMTP command's reply.", json_schema_extra=_shown_default("5m"))

    @property
    def name(self) -> str:
        """The pool's name: its key in ``[pools]``."""
        # (From pydantic's dict of private values: `self._name` goes through the model's
        # __getattr__, which builds and drops an AttributeError on the way; delivery reads the
        # name a few times per message.)
        private = self.__pydantic_private__
        return self._name if private is None else str(private["_name"])

    @property
    def pool_class(self) -> PoolClass:
        """normal, high-risk or relay: as written, else as the policy's defaults imply."""
        return self.class_ or self._class

    @field_validator("source_addresses")
    @classmethod
    def _listed_once(cls, sources: tuple[SourceAddress, ...]) -> tuple[SourceAddress, ...]:
        seen: set[IPAddress] = set()
        for i, source in enumerate(sources):
            if source.address in seen:
                raise Invalid(f"{source.address} is listed twice", i)
            seen.add(source.address)
        return sources

    @model_validator(mode="after")
    def _sources_for_the_relay(self, info: ValidationInfo) -> PoolConfig:
        """Only the milter may leave source_addresses out (config.loader's `command`)."""
        if not self.source_addresses and (info.context or {}).get("command", "relay") != "milter":
            raise Invalid("required: the addresses this pool sends from", "source_addresses")
        return self

    @model_validator(mode="after")
    def _smarthost_iff_delivery(self) -> PoolConfig:
        if self.delivery == "smarthost" and self.smarthost is None:
            raise Invalid('required when delivery = "smarthost"', "smarthost")
        if self.delivery == "mx" and self.smarthost is not None:
            raise Invalid('set, but delivery is "mx": add delivery = "smarthost" or remove it', "smarthost")
        return self


class ListenerConfig(_Table):
    """The SMTP listener that applications (or a content filter) hand mail to."""

    address: ListenAddress = Field(
        DEFAULT_LISTEN,
        description='"host:port" to listen on; "[::1]:2525" for IPv6.',
        json_schema_extra=_shown_default(_host_port_text(DEFAULT_LISTEN)),
    )
    allowed_networks: tuple[IPNetworkField, ...] = Field(
        (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        description="Clients that may relay without AUTH.",
        json_schema_extra=_shown_default(["127.0.0.0/8", "::1/128"]),
    )
    trusted_score_networks: tuple[IPNetworkField, ...] = Field(
        (),
        description="Clients whose copy of policy.score_header counts (a content filter). Everyone else's copies are removed before scoring.",
    )
    trusted_route_networks: tuple[IPNetworkField, ...] = Field(
        (),
        description="Clients whose copy of policy.route_header the routing rules read (a campaign platform of your own). Everyone else's copies are removed.",
    )
    auth_users: ReadOnlyTable[Password] = Field(
        default_factory=_empty,
        description=(
            "User name -> password for AUTH PLAIN/LOGIN, which lets clients outside allowed_networks relay. Needs "
            "tls_certificate and tls_key unless allow_plaintext_auth. The user name is the tenant. Empty: no AUTH."
        ),
    )
    allow_plaintext_auth: Bool = Field(False, description="Offer AUTH without STARTTLS (passwords in clear text).")
    tls_certificate: Optional[FilePath] = Field(None, description="PEM certificate (chain) for STARTTLS; goes with tls_key.")
    tls_key: Optional[FilePath] = Field(None, description="PEM private key for STARTTLS; goes with tls_certificate.")
    size_limit: Size = Field(
        DEFAULT_SIZE_LIMIT,
        description=(
            'Largest message accepted (SIZE extension); larger mail gets 552. Bytes, or a string like "25MB" or "512k": '
            "k, M and G are powers of 1024 (25MB = 26,214,400 bytes)."
        ),
        json_schema_extra=_shown_default(format_size(DEFAULT_SIZE_LIMIT)),
    )
    line_length_limit: Int = Field(1001, ge=100, description="Longest line accepted, in bytes with CRLF; longer lines get 500.")
    command_size_limit: Int = Field(512, ge=100, description="Longest SMTP command line accepted, in bytes.")
    max_recipients: Int = Field(1000, ge=1, description="Recipients accepted per message.")
    max_hops: Int = Field(
        50,
        ge=1,
        description=(
            "A message whose header already holds more Received: fields than this is refused with 554 5.4.6 "
            "(a routing loop; Postfix's hopcount_limit). The sending relay then bounces it."
        ),
    )
    hostname: HostName = Field(
        "localhost", description="Name in the greeting and Received: headers. Default: the top-level hostname.", json_schema_extra=_no_default
    )
    # Limits (docs/operations/limits.md). Each worker is a process with its own open files: the
    # connection limits and failure counts are per worker.
    backlog: Int = Field(
        1024, ge=1, le=65535,
        description="Connections the kernel queues until a worker accepts them (listen backlog; Linux caps it at net.core.somaxconn).",
    )
    max_connections: Optional[Int] = Field(
        None,
        ge=1,
        description=(
            "Connections one worker serves at once; more are answered 421 4.7.0 and closed. Default: the worker's "
            "open-file limit minus fd_reserve, at most 10000; never more than that limit minus fd_reserve."
        ),
        json_schema_extra=_no_default,
    )
    max_connections_per_client: Int = Field(
        50,
        ge=1,
        description=(
            "Connections one client address (IPv6: one /64) outside allowed_networks holds, over all the workers of "
            "deliverypool relay; more are answered 421 4.7.0 and closed."
        ),
    )
    fd_reserve: Optional[Int] = Field(
        None,
        ge=16,
        description=(
            "File descriptors of each worker that incoming connections never take: kept for delivery, the spool and DNS. "
            "Default: a quarter of the open-file limit, at least 128 and at most half of it."
        ),
        json_schema_extra=_no_default,
    )
    idle_timeout: Duration = Field(
        300.0,
        description="A client that sends nothing for this long (in DATA too) gets 421 4.4.2 and is disconnected.",
        json_schema_extra=_shown_default("5m"),
    )
    in_flow_delay: Delay = Field(
        1.0,
        description=(
            "Flow control, as Postfix's in_flow_delay: while delivery is behind (the bodies of mail waiting for a "
            "delivery connection, in memory or not, pass an eighth of spool.memory_budget, not counting destinations "
            "whose connections took nothing for a second), a worker answers each MAIL when a body leaves or the "
            "destination it waits on stalls, after at most this long, so that mail is not taken in faster than it "
            "leaves. 0 turns it off."
        ),
        json_schema_extra=_shown_default("1s"),
    )
    max_auth_failures: Int = Field(
        3, ge=1, description="Failed AUTH attempts on one connection; the last one is answered 421 4.7.0 and the connection closed."
    )
    auth_failure_delay: Duration = Field(
        1.0, description="The n-th failed AUTH on a connection is answered after n times this.", json_schema_extra=_shown_default("1s")
    )
    max_auth_failures_per_client: Int = Field(
        10,
        ge=1,
        description=(
            "Failed AUTH attempts from one client address outside allowed_networks, over all its connections, after "
            "which it is refused (421 4.7.0) until auth_failure_window has passed since its last failure."
        ),
    )
    auth_failure_window: Duration = Field(
        600.0,
        description="How long a failed AUTH counts against its client address.",
        json_schema_extra=_shown_default("10m"),
    )

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @model_validator(mode="after")
    def _auth_needs_tls(self) -> ListenerConfig:
        if (self.tls_certificate is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_certificate"
            raise Invalid("tls_certificate and tls_key go together", missing)
        if self.auth_users and self.tls_certificate is None and not self.allow_plaintext_auth:
            raise Invalid("AUTH sends passwords: set tls_certificate and tls_key, or allow_plaintext_auth = true", "auth_users")
        return self


def _name_from(names: tuple[str, ...], what: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or value not in names:
            raise ValueError(f"not a {what}: {value!r} (expected one of {', '.join(names)})")
        return value

    return check


ReasonName = Annotated[str, PlainValidator(_name_from(REASONS, "reason")), WithJsonSchema({"enum": list(REASONS)})]
ReportKindName = Annotated[str, PlainValidator(_name_from(REPORT_KINDS, "report kind")), WithJsonSchema({"enum": list(REPORT_KINDS)})]
DOMAIN_PATTERN: Final = r"^(\*\.)?[^*\s]+$"


def _domain_pattern(value: object) -> str:
    text = _text(value).strip()
    wildcard = text.startswith("*.")
    name = normalize_domain(text[2:] if wildcard else text)
    if name is None:
        raise ValueError(f"not a domain or *.domain: {text!r}")
    return f"*.{name}" if wildcard else name


DomainPattern = Annotated[str, PlainValidator(_domain_pattern), WithJsonSchema({"type": "string", "pattern": DOMAIN_PATTERN})]
# Rule names are metric labels, as tenant names are.
RULE_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
RuleName = Annotated[
    str,
    PlainValidator(_full_match(re.compile(RULE_NAME_PATTERN), "a rule name (1-63 letters, digits, '_', '.' or '-')")),
    WithJsonSchema({"type": "string", "pattern": RULE_NAME_PATTERN}),
]


class RuleConfig(_Table):
    """A routing rule (docs/concepts/pools.md): the pool for mail of that pool's class whose
    every condition holds (a condition not written always holds; within a list, one item is
    enough). The first rule that matches wins; mail no rule matches goes to its class's
    default pool."""

    name: Optional[RuleName] = Field(None, description="Its name in decisions, events, logs and metrics. Default: rules[N].", json_schema_extra=_no_default)
    pool: Text = Field(description="The pool: mail of its class only can match the rule.")
    tenants: tuple[Text, ...] = Field((), description="Mail of one of these tenants.")
    sender_domains: tuple[DomainPattern, ...] = Field(
        (), description='Envelope senders in one of these domains: "example.com", or "*.example.com" for every domain below it.'
    )
    recipient_domains: tuple[DomainPattern, ...] = Field(
        (), description="Recipients in one of these domains (as sender_domains): the rule is then decided per recipient, so a message's recipients may leave through different pools."
    )
    header_values: tuple[Text, ...] = Field(
        (),
        description="policy.route_header holds one of these values (compared without case), written once by a client of listener.trusted_route_networks.",
    )
    min_size: Optional[Size] = Field(None, description="Messages of at least this size.")
    max_size: Optional[Size] = Field(None, description="Messages of at most this size.")
    reasons: tuple[ReasonName, ...] = Field((), description="Decisions with one of these reasons (a rule on reasons that are always high-risk must name a high-risk pool).")
    report_kinds: tuple[ReportKindName, ...] = Field((), description="Reports of one of these kinds: dsn, mdn, arf, auto-reply.")

    def as_core(self, domain_forms: Callable[[str], tuple[str, ...]]) -> dict[str, Any]:
        """The rule as `deliverypool.Policy(rules=...)` takes it; `domain_forms` gives every
        form a domain pattern is matched in."""
        rule: dict[str, Any] = {"pool": self.pool}
        if self.name is not None:
            rule["name"] = self.name
        for key in ("tenants", "header_values", "reasons", "report_kinds"):
            if getattr(self, key):
                rule[key] = list(getattr(self, key))
        for key in ("sender_domains", "recipient_domains"):
            patterns: tuple[str, ...] = getattr(self, key)
            if patterns:
                rule[key] = [form for pattern in patterns for form in domain_forms(pattern)]
        for key in ("min_size", "max_size"):
            if getattr(self, key) is not None:
                rule[key] = getattr(self, key)
        return rule


class PolicyConfig(_Table):
    """Routing: the class each message gets from its reasons, and the rules that choose its pool
    within that class (docs/concepts/pools.md)."""

    threshold: Number = Field(5.0, description="Spam score above which (strictly) mail goes high-risk.")
    score_header: Optional[HeaderName] = Field(
        None, description="Header field holding the spam score; trusted only from listener.trusted_score_networks, and only once."
    )
    unknown_domain_pool: Literal["high-risk", "normal"] = Field(
        "high-risk", description="Where mail goes when the sender domain's DNS lookup fails."
    )
    unscannable_pool: Literal["high-risk", "normal"] = Field(
        "high-risk",
        description=(
            "Where mail goes that the scanner could not fully read (a header block over 1 MiB, more MIME parts or "
            "deeper nesting than it walks: reason unscannable), so that padding cannot hide a DSN."
        ),
    )
    normal_pool: Text = Field("normal", description="Default pool of normal mail (mail known to be good) that no rule sends elsewhere.")
    high_risk_pool: Text = Field(
        "high-risk", description="Default pool of high-risk mail (DSNs, spam, mail from domains without records) that no rule sends elsewhere."
    )
    relay_pool: Optional[Text] = Field(
        None, description="Default pool of relay-class mail; without pools of class relay, such mail goes the high-risk way."
    )
    rules: tuple[RuleConfig, ...] = Field(
        (), description="Routing rules, in order: [[policy.rules]] tables; the first that matches a message (or a recipient) chooses its pool."
    )
    route_header: Optional[HeaderName] = Field(
        None,
        description="Header field whose value rules match (header_values), e.g. a stream or campaign name; trusted only from listener.trusted_route_networks, and only once.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tenants_moved(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "tenants" in data:
            names = list(data["tenants"]) if isinstance(data["tenants"], Mapping) else []
            example = f"[tenants.{names[0]}]" if names else "[tenants.NAME]"
            raise Invalid(f"per-tenant thresholds moved: write {example} threshold = ... (with the tenant's auth_users, networks and domains)", "tenants")
        return data


class DnsConfig(_Table):
    """The resolver for MX lookups and the sender-domain check."""

    nameservers: tuple[NameServer, ...] = Field(
        (), description='Nameservers as "IP" or "IP:port" ("[v6]:port"); empty or absent: the system\'s resolvers.'
    )
    timeout: Duration = Field(2.0, description="Time allowed for one query to one nameserver.", json_schema_extra=_shown_default("2s"))
    check_sender_domain: Bool = Field(True, description="Route mail from sender domains without MX, A or AAAA records high-risk.")


class SpoolConfig(_Table):
    """Where accepted mail is stored until delivered."""

    directory: OutputPath = Field(
        Path("spool"), description="Folder of the spool database; a relative path is relative to the configuration file.",
        json_schema_extra=_shown_default("spool"),
    )
    reserve: Size = Field(
        16 * 1024 * 1024,
        description=(
            "Disk space kept back (a file in the spool) for the state changes of mail already accepted. When the "
            "disk fills, it is released: deliveries go on (and free space), new mail gets 452 4.3.1 until twice this "
            "much is free again."
        ),
        json_schema_extra=_shown_default("16MB"),
    )
    margin: Size = Field(
        16 * 1024 * 1024,
        description=(
            "Free space each worker needs beyond its reserve when the relay starts. The spool's file system must have "
            "workers x (reserve + margin) free, and never less than (workers + 1) x reserve "
            "(docs/operations/durability.md); otherwise spool.too_small decides."
        ),
        json_schema_extra=_shown_default("16MB"),
    )
    too_small: Literal["refuse", "fewer-workers"] = Field(
        "refuse",
        description=(
            'When the spool\'s file system has less free space than the workers need at start: "refuse" to start (exit '
            'status 2, one line saying what is free and what is needed); "fewer-workers": start as many workers as '
            "fit, with a warning (the shards of the others wait)."
        ),
    )
    memory_budget: Size = Field(
        64 * 1024 * 1024,
        description=(
            "Bodies of queued mail each worker keeps in memory, in all, so that delivery need not read them back "
            "(each at most 4 MiB; a larger one is always read from its body file). Past it, a body is read from the "
            "spool when its attempt starts: a long queue (a destination that stalls) costs no memory per message."
        ),
        json_schema_extra=_shown_default("64MB"),
    )
    spent_files: Size = Field(
        64 * 1024 * 1024,
        description=(
            "Body files of finished messages each worker keeps, in all, for later large bodies (over 256 KiB) to be "
            "written over: cheaper than a new file (pages and blocks already there, no new name to sync). Each kept "
            "file is at most 8 MiB and holds an older message's text past the new one until written over; they are "
            'removed in low-space mode. "256k" keeps none (a body file is larger): every body file is then new, and '
            "removed once its message is done."
        ),
        json_schema_extra=_shown_default("64MB"),
    )


class ScoreConfig(_Table):
    """Where the spam score comes from, for the relay and the milter alike: a trusted header
    (policy.score_header) always counts; with source = "rspamd", every message without one is
    checked by rspamd."""

    source: Literal["header", "rspamd"] = Field(
        "header",
        description=(
            '"header": only a trusted policy.score_header (or no score); "rspamd": ask rspamd\'s /checkv2 for '
            "every message without a trusted score."
        ),
    )
    url: HttpUrl = Field(
        "http://127.0.0.1:11333", description="Base URL of rspamd's normal worker (its /checkv2 endpoint is used)."
    )
    timeout: Duration = Field(
        2.0, description="Time allowed for rspamd's answer, connecting included.", json_schema_extra=_shown_default("2s")
    )
    fallback: Literal["no-score", "high-risk"] = Field(
        "no-score",
        description=(
            'When rspamd is unreachable, slow or answers nonsense (reason spam-score-unavailable): "no-score" routes '
            'the message as unscored; "high-risk" sends it through the high-risk pool.'
        ),
    )
    max_size: Size = Field(
        DEFAULT_SIZE_LIMIT,
        description="Larger messages are not sent to rspamd (they are routed as unscored, not as a failure).",
        json_schema_extra=_shown_default(format_size(DEFAULT_SIZE_LIMIT)),
    )


class MilterConfig(_Table):
    """`deliverypool milter`: the milter Postfix calls before it queues a message."""

    address: ListenAddress = Field(
        DEFAULT_MILTER_LISTEN,
        description='"host:port" the milter listens on (Postfix: smtpd_milters = inet:host:port).',
        json_schema_extra=_shown_default(_host_port_text(DEFAULT_MILTER_LISTEN)),
    )
    header: HeaderName = Field(
        "X-Deliverypool-Transport",
        description="Header field the milter adds with the transport of the message's pool; Postfix's milter_header_checks turns it into FILTER.",
    )
    transports: ReadOnlyTable[PostfixTransport] = Field(
        default_factory=_empty,
        description="Pool name -> the master.cf transport that sends from that pool's addresses; a pool not listed uses dp-NAME.",
    )
    timeout: Duration = Field(
        30.0,
        description="Longest a message's classification may take; after it the milter tempfails the message (4xx), so nothing is lost.",
        json_schema_extra=_shown_default("30s"),
    )
    trust_score_header: Bool = Field(
        False,
        description=(
            "Believe policy.score_header (once) in the mail the milter sees: only when an earlier milter writes it and "
            "Postfix's header_checks remove the clients' own copies (docs/guide/milter.md). Otherwise rspamd or no score."
        ),
    )
    trust_route_header: Bool = Field(
        False,
        description=(
            "Let the routing rules read policy.route_header in the mail the milter sees: only when Postfix's header_checks "
            "remove the copies of clients that may not choose it (docs/guide/milter.md)."
        ),
    )


# The tables of tenants and of observability (config/observe.py) use the types above (this
# module is partly initialised when it imports them); the relay's model below names them.
from deliverypool.config.observe import (  # noqa: E402
    AdminConfig,
    AlertsConfig,
    DnsblConfig,
    MonitorConfig,
    ObserveConfig,
    TenantConfig,
    check_tenant_name,
)
from deliverypool.config.limits import LimitsConfig, StateConfig  # noqa: E402
from deliverypool.config.dkim import DkimConfig  # noqa: E402
from deliverypool.config.auth import AuthConfig  # noqa: E402


class RelayConfig(_Table):
    """The configuration of `deliverypool relay`."""

    hostname: HostName = Field("localhost", description="Name of this relay: Reporting-MTA in DSNs, default EHLO name, Received: headers.")
    workers: Optional[Int] = Field(
        None,
        ge=1,
        le=256,
        description=(
            "Worker processes of `deliverypool relay`, each a whole relay with a spool shard of its own, all "
            "accepting on the one listening socket. Default: one per core."
        ),
        json_schema_extra=_no_default,
    )
    listener: ListenerConfig = Field(default_factory=ListenerConfig, description="The SMTP listener.")
    spool: SpoolConfig = Field(default_factory=SpoolConfig, description="The spool.")
    policy: PolicyConfig = Field(default_factory=PolicyConfig, description="The routing policy.")
    dns: DnsConfig = Field(default_factory=DnsConfig, description="DNS resolution.")
    score: ScoreConfig = Field(default_factory=ScoreConfig, description="Where the spam score comes from (trusted header, rspamd).")
    milter: MilterConfig = Field(default_factory=MilterConfig, description="The Postfix milter (deliverypool milter).")
    pools: ReadOnlyTable[PoolConfig] = Field(
        min_length=1,
        description="The delivery pools by name: at least a default for normal and for high-risk mail (policy.normal_pool, policy.high_risk_pool).",
    )
    tenants: ReadOnlyTable[TenantConfig] = Field(
        default_factory=_empty, description="The relay's customers by name: who they are (AUTH users, networks), their domains and threshold."
    )
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="The DSN surge monitor.")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="The admin HTTP listener (metrics, health, JSON API).")
    alerts: AlertsConfig = Field(default_factory=AlertsConfig, description="Where surge alerts are sent.")
    observe: ObserveConfig = Field(default_factory=ObserveConfig, description="The event stream and its log.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Sender limits: the defaults of every tenant (docs/operations/sender-limits.md).")
    state: StateConfig = Field(default_factory=StateConfig, description="Where sender counters and restrictions live (embedded SQLite, or Redis).")
    dnsbl: DnsblConfig = Field(default_factory=DnsblConfig, description="The blocklist watch of the pools' own source addresses.")
    dkim: DkimConfig = Field(default_factory=DkimConfig, description="DKIM: the keys mail is signed with, and the check of clients' signatures (docs/guide/dkim.md).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Sender authentication: SPF, DMARC, SRS and the routing on them (docs/concepts/authentication.md).")

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """The top-level hostname is the default EHLO name of every pool and the listener's
        name."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        hostname = data.get("hostname")
        # An invalid hostname is reported once, at its own key, not again at each inheritor.
        inherits = isinstance(hostname, str) and _is_host_name(hostname)
        listener = data.get("listener", {})
        if inherits and isinstance(listener, Mapping):
            data["listener"] = {"hostname": hostname, **listener}
        pools = data.get("pools")
        if inherits and isinstance(pools, Mapping):
            data["pools"] = {name: {"ehlo_name": hostname, **pool} if isinstance(pool, Mapping) else pool for name, pool in pools.items()}
        return data

    @field_validator("pools")
    @classmethod
    def _named(cls, pools: Mapping[str, PoolConfig], info: ValidationInfo) -> Mapping[str, PoolConfig]:
        """Each pool is named by its key; a pool without a class written has the class its role
        in the policy implies (the high-risk default: high-risk; the relay default: relay;
        others normal), as every pool had before pools had classes."""
        policy = info.data.get("policy")
        high_risk, relay = (policy.high_risk_pool, policy.relay_pool) if isinstance(policy, PolicyConfig) else ("high-risk", None)
        named = {}
        for name, pool in pools.items():
            implied: PoolClass = "high-risk" if name == high_risk else "relay" if name == relay else "normal"
            if pool.name != name or pool._class != implied:
                pool = pool.model_copy()
                pool._name = name
                pool._class = implied
            named[name] = pool
        return MappingProxyType(named)

    @field_validator("tenants")
    @classmethod
    def _tenants_apart(cls, tenants: Mapping[str, TenantConfig]) -> Mapping[str, TenantConfig]:
        """Tenant names are metric labels; an AUTH user or a network names one tenant only."""
        users: dict[str, str] = {}
        networks: dict[IPNetwork, str] = {}
        for name, tenant in tenants.items():
            try:
                check_tenant_name(name)
            except ValueError as exc:
                raise Invalid(str(exc), name) from None
            for i, user in enumerate(tenant.auth_users):
                if users.setdefault(user, name) != name:
                    raise Invalid(f"{user!r} is also an AUTH user of tenant {users[user]!r}", name, "auth_users", i)
            for i, network in enumerate(tenant.networks):
                if networks.setdefault(network, name) != name:
                    raise Invalid(f"{network} is also a network of tenant {networks[network]!r}", name, "networks", i)
        return MappingProxyType(dict(tenants))

    @model_validator(mode="after")
    def _pools_apart(self) -> RelayConfig:
        policy = self.policy
        if policy.normal_pool == policy.high_risk_pool:
            raise Invalid("must differ from normal_pool", "policy", "high_risk_pool")
        # A default written out must name a pool (one left at its default may be replaced by a
        # rule without conditions: the core says so).
        for role in ("normal_pool", "high_risk_pool", "relay_pool"):
            name = getattr(policy, role)
            if role in policy.model_fields_set and name is not None and name not in self.pools:
                raise Invalid(f"no pool named {name!r} (defined: {', '.join(self.pools)})", "policy", role)
        # The whole point of pools: no address sends two pools' mail, so high-risk mail never
        # leaves from an address of a pool meant for good mail.
        owners: dict[IPAddress, PoolConfig] = {}
        for name, pool in self.pools.items():
            for i, source in enumerate(pool.source_addresses):
                other = owners.setdefault(source.address, pool)
                if other is not pool:
                    raise Invalid(
                        f"{source.address} is also a source address of the {other.pool_class} pool {other.name!r}: no address belongs to two pools",
                        "pools",
                        name,
                        "source_addresses",
                        i,
                    )
        for name, pool in self.pools.items():
            if pool.tenant is not None and pool.tenant not in self.tenants:
                raise Invalid(f"no tenant named {pool.tenant!r} (defined: {', '.join(self.tenants) or 'none'})", "pools", name, "tenant")
        for index, rule in enumerate(policy.rules):
            for j, tenant in enumerate(rule.tenants):
                if tenant not in self.tenants:
                    raise Invalid(f"no tenant named {tenant!r} (defined: {', '.join(self.tenants) or 'none'})", "policy", "rules", index, "tenants", j)
        # The rules as the core compiles them: what it refuses is refused here, at its key.
        from deliverypool._core import PolicyError
        from deliverypool.routing.pools import policy_from_config

        try:
            policy_from_config(self)
        except PolicyError as error:
            if error.key is None or error.problem is None:
                raise
            raise Invalid(error.problem, "policy", *error.key) from None
        return self

    @property
    def normal_pool(self) -> PoolConfig:
        return self.pools[self.policy.normal_pool]

    @property
    def high_risk_pool(self) -> PoolConfig:
        return self.pools[self.policy.high_risk_pool]

    @model_validator(mode="after")
    def _transports_of_pools(self) -> RelayConfig:
        for name in self.milter.transports:
            if name not in self.pools:
                raise Invalid(f"no pool named {name!r} (defined: {', '.join(self.pools)})", "milter", "transports", name)
        return self

    @model_validator(mode="after")
    def _dkim_tenants(self) -> RelayConfig:
        for i, key in enumerate(self.dkim.keys):
            if key.tenant is not None and key.tenant not in self.tenants:
                raise Invalid(f"no tenant named {key.tenant!r}", "dkim", "keys", i, "tenant")
        return self

    def transport_for(self, pool: str) -> str:
        """The master.cf transport of `pool` (milter.transports, else dp-NAME)."""
        return self.milter.transports.get(pool) or f"dp-{pool}"
