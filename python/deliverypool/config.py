"""The relay's configuration: one TOML file loaded into frozen dataclasses.

Everything is validated when the file is loaded, so a relay never starts with a setting it
cannot honour. Errors name the offending key the way it is written in the file, for example
``pools.high-risk.source_addresses[1]: not an IP address: '10.0.0.300'``.
"""

from __future__ import annotations

import ipaddress
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT_LISTEN = "127.0.0.1:2525"
DEFAULT_MAX_AGE = 5 * 24 * 3600.0
DEFAULT_SIZE_LIMIT = 25 * 1024 * 1024


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type, or out of range. The message
    starts with the dotted key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class SourceAddress:
    """One address a pool sends from. Weights pick among the pool's addresses of the family
    the destination needs."""

    address: IPAddress
    weight: int = 1


@dataclass(frozen=True)
class RetryConfig:
    """Exponential backoff: the n-th retry waits ``min(maximum, initial * factor**(n-1))``,
    multiplied by a random factor in ``[1 - jitter, 1 + jitter]``."""

    initial: float = 60.0
    maximum: float = 4 * 3600.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempts: int, unit_random: float) -> float:
        """Seconds to wait after the `attempts`-th failed attempt; `unit_random` in [0, 1)."""
        exponent = max(0, attempts - 1)
        # Capping the exponent first keeps factor**exponent finite for huge attempt counts.
        base = self.initial * self.factor ** min(exponent, 64)
        base = min(self.maximum, base)
        return base * (1.0 - self.jitter + 2.0 * self.jitter * unit_random)


@dataclass(frozen=True)
class PoolConfig:
    name: str
    source_addresses: tuple[SourceAddress, ...]
    ehlo_name: str
    # Connections open at once from this pool to one destination (a recipient domain in MX
    # mode, the smarthost otherwise).
    max_connections_per_destination: int = 4
    delivery: Literal["mx", "smarthost"] = "mx"
    smarthost: tuple[str, int] | None = None
    # TCP port of MX hosts. 25 on the Internet; tests and the demo use unprivileged ports.
    mx_port: int = 25
    tls: Literal["opportunistic", "required", "none"] = "opportunistic"
    max_age: float = DEFAULT_MAX_AGE
    retry: RetryConfig = field(default_factory=RetryConfig)
    connect_timeout: float = 30.0
    command_timeout: float = 300.0
    # Messages sent over one connection before it is closed and a new one opened.
    max_messages_per_connection: int = 100
    # How long an idle connection to a destination stays open waiting for more mail.
    idle_timeout: float = 2.0


@dataclass(frozen=True)
class ListenerConfig:
    host: str = "127.0.0.1"
    port: int = 2525
    # Clients that may relay without authenticating.
    allowed_networks: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    # Clients whose copy of the score header is trusted (a content filter in front of the
    # relay). Every other client's copies are removed before scoring.
    trusted_score_networks: tuple[IPNetwork, ...] = ()
    # user -> password. Empty: no AUTH.
    auth_users: Mapping[str, str] = field(default_factory=dict)
    allow_plaintext_auth: bool = False
    tls_certificate: Path | None = None
    tls_key: Path | None = None
    size_limit: int = DEFAULT_SIZE_LIMIT
    line_length_limit: int = 1001
    command_size_limit: int = 512
    max_recipients: int = 1000
    hostname: str = "localhost"


@dataclass(frozen=True)
class PolicyConfig:
    threshold: float = 5.0
    tenants: Mapping[str, float] = field(default_factory=dict)
    score_header: str | None = None
    unknown_domain_pool: Literal["high-risk", "normal"] = "high-risk"
    normal_pool: str = "normal"
    high_risk_pool: str = "high-risk"


@dataclass(frozen=True)
class DnsConfig:
    # (host, port); empty means the system resolver configuration.
    nameservers: tuple[tuple[str, int], ...] = ()
    timeout: float = 2.0
    # Check the envelope sender's domain for records (issue 3). Off: no sender-domain reason.
    check_sender_domain: bool = True


@dataclass(frozen=True)
class SpoolConfig:
    directory: Path = Path("spool")


@dataclass(frozen=True)
class RelayConfig:
    pools: Mapping[str, PoolConfig]
    listener: ListenerConfig = field(default_factory=ListenerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    # Reporting-MTA in DSNs.
    hostname: str = "localhost"

    @property
    def normal_pool(self) -> PoolConfig:
        return self.pools[self.policy.normal_pool]

    @property
    def high_risk_pool(self) -> PoolConfig:
        return self.pools[self.policy.high_risk_pool]


# --- loading -----------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")


class _Table:
    """A TOML table being read: remembers its dotted path and which keys were used, so that
    unknown keys (usually typos) are errors rather than silently ignored."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path or "<top>", f"must be a table, got {_kind(data)}")
        self.data: dict[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, default: Any = None) -> Any:
        self.used.add(name)
        return self.data.get(name, default)

    def has(self, name: str) -> bool:
        return name in self.data

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.key(name))

    def finish(self) -> None:
        for name in self.data:
            if name not in self.used:
                raise ConfigError(self.key(name), "unknown key")


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _str(t: _Table, name: str, default: str | None = None, *, required: bool = False) -> str:
    value = t.get(name)
    if value is None:
        if required or default is None:
            raise ConfigError(t.key(name), "required")
        return default
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(t.key(name), f"must be a non-empty string, got {_kind(value)}")
    return value


def _bool(t: _Table, name: str, default: bool) -> bool:
    value = t.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(t.key(name), f"must be true or false, got {_kind(value)}")
    return value


def _number(key: str, value: Any, *, minimum: float = 0.0, allow_equal: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number, got {_kind(value)}")
    if value < minimum or (not allow_equal and value == minimum):
        raise ConfigError(key, f"must be {'at least' if allow_equal else 'greater than'} {minimum:g}, got {value:g}")
    return float(value)


def _int(t: _Table, name: str, default: int, *, minimum: int = 1, maximum: int | None = None) -> int:
    value = t.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(t.key(name), f"must be an integer, got {_kind(value)}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(t.key(name), f"must be {bound}, got {value}")
    return value


def parse_duration(key: str, value: Any) -> float:
    """Seconds from a number of seconds or a string like "90s", "15m", "4h", "5d"."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise ConfigError(key, f"not a duration (like 30s, 15m, 4h, 5d): {value!r}")
        return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
    return _number(key, value)


def _duration(t: _Table, name: str, default: float, *, positive: bool = True) -> float:
    if not t.has(name):
        t.used.add(name)
        return default
    seconds = parse_duration(t.key(name), t.get(name))
    if positive and seconds <= 0:
        raise ConfigError(t.key(name), "must be longer than zero")
    return seconds


def parse_size(key: str, value: Any) -> int:
    """Bytes from an integer or a string like "25MB", "512k"."""
    if isinstance(value, str):
        match = _SIZE.match(value)
        if not match:
            raise ConfigError(key, f"not a size (like 25MB or 512k): {value!r}")
        unit = (match.group(2) or "b").lower()[0]
        return int(match.group(1)) * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(key, f"must be a positive size, got {value!r}")
    return value


def parse_ip(key: str, value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be an IP address string, got {_kind(value)}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise ConfigError(key, f"not an IP address: {value!r}") from None


def parse_network(key: str, value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a network string like 192.0.2.0/24, got {_kind(value)}")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(key, f"not an IP network: {value!r}") from None


def parse_host_port(key: str, value: Any, default_port: int | None = None) -> tuple[str, int]:
    """"host:port", "[v6]:port", or a bare host when `default_port` is given."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a string like host:port, got {_kind(value)}")
    text = value.strip()
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(key, f"unclosed '[' in {value!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(key, f"expected ':port' after ']' in {value!r}")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        # A bare IPv6 address.
        host = text
    if port_text is None:
        if default_port is None:
            raise ConfigError(key, f"needs a port (host:port): {value!r}")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(key, f"bad port {port_text!r} in {value!r}")
    if not host:
        raise ConfigError(key, f"missing host in {value!r}")
    return host, int(port_text)


def _hostname(t: _Table, name: str, default: str) -> str:
    value = _str(t, name, default)
    if not _HOSTNAME.match(value):
        raise ConfigError(t.key(name), f"not a host name: {value!r}")
    return value


def _networks(t: _Table, name: str, default: tuple[IPNetwork, ...]) -> tuple[IPNetwork, ...]:
    value = t.get(name)
    if value is None:
        return default
    if not isinstance(value, list):
        raise ConfigError(t.key(name), f"must be an array of networks, got {_kind(value)}")
    return tuple(parse_network(f"{t.key(name)}[{i}]", item) for i, item in enumerate(value))


def _source_addresses(t: _Table) -> tuple[SourceAddress, ...]:
    key = t.key("source_addresses")
    value = t.get("source_addresses")
    if value is None:
        raise ConfigError(key, "required: the addresses this pool sends from")
    if not isinstance(value, list) or not value:
        raise ConfigError(key, "must be a non-empty array of addresses")
    result: list[SourceAddress] = []
    for i, item in enumerate(value):
        item_key = f"{key}[{i}]"
        if isinstance(item, dict):
            entry = _Table(item, item_key)
            address = parse_ip(entry.key("address"), entry.get("address"))
            weight = _int(entry, "weight", 1, minimum=1)
            entry.finish()
        else:
            address, weight = parse_ip(item_key, item), 1
        if any(existing.address == address for existing in result):
            raise ConfigError(item_key, f"{address} is listed twice")
        result.append(SourceAddress(address, weight))
    return tuple(result)


def _retry(t: _Table) -> RetryConfig:
    defaults = RetryConfig()
    retry = RetryConfig(
        initial=_duration(t, "initial", defaults.initial),
        maximum=_duration(t, "maximum", defaults.maximum),
        factor=_number(t.key("factor"), t.get("factor", defaults.factor), minimum=1.0),
        jitter=_number(t.key("jitter"), t.get("jitter", defaults.jitter)),
    )
    if retry.jitter >= 1.0:
        raise ConfigError(t.key("jitter"), f"must be below 1, got {retry.jitter:g}")
    if retry.maximum < retry.initial:
        raise ConfigError(t.key("maximum"), "must not be shorter than initial")
    t.finish()
    return retry


def _pool(name: str, t: _Table, default_ehlo: str) -> PoolConfig:
    defaults = PoolConfig(name=name, source_addresses=(), ehlo_name=default_ehlo)
    delivery = _str(t, "delivery", "mx")
    if delivery not in ("mx", "smarthost"):
        raise ConfigError(t.key("delivery"), f"must be \"mx\" or \"smarthost\", got {delivery!r}")
    smarthost = None
    if t.has("smarthost"):
        smarthost = parse_host_port(t.key("smarthost"), t.get("smarthost"), 25)
    if delivery == "smarthost" and smarthost is None:
        raise ConfigError(t.key("smarthost"), "required when delivery = \"smarthost\"")
    if delivery == "mx" and smarthost is not None:
        raise ConfigError(t.key("smarthost"), "set, but delivery is \"mx\": add delivery = \"smarthost\" or remove it")
    tls = _str(t, "tls", "opportunistic")
    if tls not in ("opportunistic", "required", "none"):
        raise ConfigError(t.key("tls"), f"must be opportunistic, required or none, got {tls!r}")
    pool = PoolConfig(
        name=name,
        source_addresses=_source_addresses(t),
        ehlo_name=_hostname(t, "ehlo_name", default_ehlo),
        max_connections_per_destination=_int(t, "max_connections_per_destination", defaults.max_connections_per_destination),
        delivery=delivery,  # type: ignore[arg-type]
        smarthost=smarthost,
        mx_port=_int(t, "mx_port", defaults.mx_port, maximum=65535),
        tls=tls,  # type: ignore[arg-type]
        max_age=_duration(t, "max_age", defaults.max_age),
        retry=_retry(t.table("retry")),
        connect_timeout=_duration(t, "connect_timeout", defaults.connect_timeout),
        command_timeout=_duration(t, "command_timeout", defaults.command_timeout),
        max_messages_per_connection=_int(t, "max_messages_per_connection", defaults.max_messages_per_connection),
        idle_timeout=_duration(t, "idle_timeout", defaults.idle_timeout),
    )
    t.finish()
    return pool


def _listener(t: _Table, default_hostname: str) -> ListenerConfig:
    defaults = ListenerConfig()
    host, port = parse_host_port(t.key("address"), t.get("address", DEFAULT_LISTEN))
    users_table = t.table("auth_users")
    users: dict[str, str] = {}
    for user, password in users_table.data.items():
        users_table.used.add(user)
        if not isinstance(password, str) or not password:
            raise ConfigError(users_table.key(user), "password must be a non-empty string")
        users[user] = password
    cert = t.get("tls_certificate")
    key = t.get("tls_key")
    if (cert is None) != (key is None):
        missing = "tls_key" if key is None else "tls_certificate"
        raise ConfigError(t.key(missing), "tls_certificate and tls_key go together")
    listener = ListenerConfig(
        host=host,
        port=port,
        allowed_networks=_networks(t, "allowed_networks", defaults.allowed_networks),
        trusted_score_networks=_networks(t, "trusted_score_networks", ()),
        auth_users=users,
        allow_plaintext_auth=_bool(t, "allow_plaintext_auth", False),
        tls_certificate=Path(_str(t, "tls_certificate")) if cert is not None else None,
        tls_key=Path(_str(t, "tls_key")) if key is not None else None,
        size_limit=parse_size(t.key("size_limit"), t.get("size_limit", defaults.size_limit)),
        line_length_limit=_int(t, "line_length_limit", defaults.line_length_limit, minimum=100),
        command_size_limit=_int(t, "command_size_limit", defaults.command_size_limit, minimum=100),
        max_recipients=_int(t, "max_recipients", defaults.max_recipients),
        hostname=_hostname(t, "hostname", default_hostname),
    )
    if users and listener.tls_certificate is None and not listener.allow_plaintext_auth:
        raise ConfigError(
            t.key("auth_users"),
            "AUTH sends passwords: set tls_certificate and tls_key, or allow_plaintext_auth = true",
        )
    t.finish()
    return listener


def _policy(t: _Table) -> PolicyConfig:
    tenants_table = t.table("tenants")
    tenants: dict[str, float] = {}
    for tenant, threshold in tenants_table.data.items():
        tenants_table.used.add(tenant)
        tenants[tenant] = _number(tenants_table.key(tenant), threshold, minimum=-math.inf)
    unknown = _str(t, "unknown_domain_pool", "high-risk")
    if unknown not in ("high-risk", "normal"):
        raise ConfigError(t.key("unknown_domain_pool"), f"must be \"high-risk\" or \"normal\", got {unknown!r}")
    header = t.get("score_header")
    if header is not None and (not isinstance(header, str) or not re.fullmatch(r"[!-9;-~]+", header)):
        raise ConfigError(t.key("score_header"), f"not a header field name: {header!r}")
    policy = PolicyConfig(
        threshold=_number(t.key("threshold"), t.get("threshold", 5.0), minimum=-math.inf),
        tenants=tenants,
        score_header=header,
        unknown_domain_pool=unknown,  # type: ignore[arg-type]
        normal_pool=_str(t, "normal_pool", "normal"),
        high_risk_pool=_str(t, "high_risk_pool", "high-risk"),
    )
    t.finish()
    return policy


def _dns(t: _Table) -> DnsConfig:
    value = t.get("nameservers", [])
    if not isinstance(value, list):
        raise ConfigError(t.key("nameservers"), f"must be an array of host[:port], got {_kind(value)}")
    nameservers = []
    for i, item in enumerate(value):
        key = f"{t.key('nameservers')}[{i}]"
        host, port = parse_host_port(key, item, 53)
        parse_ip(key, host)
        nameservers.append((host, port))
    dns = DnsConfig(
        nameservers=tuple(nameservers),
        timeout=_duration(t, "timeout", 2.0),
        check_sender_domain=_bool(t, "check_sender_domain", True),
    )
    t.finish()
    return dns


def from_dict(data: Mapping[str, Any], *, base: Path | None = None) -> RelayConfig:
    """Builds and validates a configuration from parsed TOML. Relative paths are taken
    relative to `base` (the configuration file's folder)."""
    top = _Table(dict(data), "")
    hostname = _hostname(top, "hostname", "localhost")
    listener = _listener(top.table("listener"), hostname)
    policy = _policy(top.table("policy"))
    dns = _dns(top.table("dns"))
    spool_table = top.table("spool")
    directory = Path(_str(spool_table, "directory", "spool"))
    spool_table.finish()
    if base is not None and not directory.is_absolute():
        directory = base / directory
    pools_table = top.table("pools")
    if not pools_table.data:
        raise ConfigError("pools", "required: define at least [pools.normal] and [pools.high-risk]")
    pools: dict[str, PoolConfig] = {}
    for name in pools_table.data:
        pools[name] = _pool(name, pools_table.table(name), hostname)
    for role, name in (("normal_pool", policy.normal_pool), ("high_risk_pool", policy.high_risk_pool)):
        if name not in pools:
            raise ConfigError(f"policy.{role}", f"no pool named {name!r} (defined: {', '.join(pools)})")
    if policy.normal_pool == policy.high_risk_pool:
        raise ConfigError("policy.high_risk_pool", "must differ from normal_pool")
    # The whole point of the high-risk pool: its mail never leaves from a normal address.
    normal_addresses = {s.address for s in pools[policy.normal_pool].source_addresses}
    for i, source in enumerate(pools[policy.high_risk_pool].source_addresses):
        if source.address in normal_addresses:
            raise ConfigError(
                f"pools.{policy.high_risk_pool}.source_addresses[{i}]",
                f"{source.address} is also a source address of the normal pool {policy.normal_pool!r}",
            )
    top.finish()
    return RelayConfig(pools=pools, listener=listener, policy=policy, dns=dns, spool=SpoolConfig(directory), hostname=hostname)


def loads(text: str, *, base: Path | None = None) -> RelayConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"not valid TOML: {exc}") from None
    return from_dict(data, base=base)


def load(path: str | Path) -> RelayConfig:
    """Reads and validates a relay configuration file."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(file), "not UTF-8 text") from None
    return loads(text, base=file.resolve().parent)
