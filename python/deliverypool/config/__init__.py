"""The relay's configuration: one TOML file loaded into frozen pydantic models.

Everything is validated when the file is loaded, so a relay never starts with a setting it
cannot honour. Every problem is a `ConfigError` whose message starts with the offending key as
it is written in the file, for example
``pools.high-risk.source_addresses[1]: not an IP address: '10.0.0.300'``. A file with several
problems gets one error listing them all, one ``key: problem`` line each (``.key`` and
``.problem`` are the first; ``.errors`` has them all).

The keys and their meaning are documented in docs/guide/relay-configuration.md and the configuration reference and, for editors, in
``docs/relay.schema.json``, generated from these models by ``python -m
deliverypool.config.schema docs/relay.schema.json``.
"""

from deliverypool.config.errors import ConfigError
from deliverypool.config.loader import from_dict, load, loads
from deliverypool.config.model import (
    DnsConfig,
    IPAddress,
    IPNetwork,
    ListenerConfig,
    MilterConfig,
    PolicyConfig,
    PoolConfig,
    RelayConfig,
    RetryConfig,
    ScoreConfig,
    SourceAddress,
    SpoolConfig,
)
from deliverypool.config.dkim import DkimConfig, DkimKeyConfig
from deliverypool.config.limits import LimitsConfig, StateConfig
from deliverypool.config.observe import NO_TENANT, AdminConfig, AlertsConfig, DnsblConfig, MonitorConfig, ObserveConfig, TenantConfig
from deliverypool.config.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "NO_TENANT",
    "AdminConfig",
    "AlertsConfig",
    "ConfigError",
    "DkimConfig",
    "DkimKeyConfig",
    "DnsConfig",
    "DnsblConfig",
    "IPAddress",
    "IPNetwork",
    "LimitsConfig",
    "ListenerConfig",
    "MilterConfig",
    "MonitorConfig",
    "ObserveConfig",
    "PolicyConfig",
    "PoolConfig",
    "RelayConfig",
    "RetryConfig",
    "ScoreConfig",
    "SourceAddress",
    "SpoolConfig",
    "StateConfig",
    "TenantConfig",
    "format_duration",
    "format_size",
    "from_dict",
    "load",
    "loads",
    "parse_duration",
    "parse_size",
]
