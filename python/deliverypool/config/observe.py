"""The configuration of tenants and of what operators see: ``[tenants.NAME]``, ``[monitor]``,
``[admin]``, ``[alerts]``, ``[observe]`` and ``[dnsbl]``.

These models use the scalar types of :mod:`deliverypool.config.model` and are fields of its
`RelayConfig` (which imports this module at its end, once those types exist).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal, Optional

from pydantic import Field, PlainValidator, WithJsonSchema, field_validator, model_validator

from deliverypool.config.errors import Invalid
from deliverypool.config.limits import LimitsConfig
from deliverypool.config.model import (
    Bool,
    Int,
    IPNetworkField,
    ListenAddress,
    NameServer,
    Number,
    OutputPath,
    Text,
    _shown_default,
    _Table,
    _text,
)
from deliverypool.config.units import Duration, Size
from deliverypool.mail.address import normalize_domain

__all__ = ["AdminConfig", "AlertsConfig", "DnsblConfig", "MonitorConfig", "NO_TENANT", "ObserveConfig", "TENANT_NAME_PATTERN", "TenantConfig"]

# The label of mail that belongs to no tenant, in metrics, events and alerts; no tenant may be
# named so.
NO_TENANT: Final = "none"
# Tenant names are label values of metrics: short, printable, no quoting needed.
TENANT_NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
_TENANT_NAME: Final = re.compile(TENANT_NAME_PATTERN)


def _domain(value: object) -> str:
    text = _text(value)
    name = normalize_domain(text)
    if name is None:
        raise ValueError(f"not a domain name: {text!r}")
    return name


DomainName = Annotated[str, PlainValidator(_domain), WithJsonSchema({"type": "string", "minLength": 1})]


def _webhook_url(value: object) -> str:
    # Not model.HttpUrl (a base URL): a webhook's path and query (often a token) are kept as written.
    text = _text(value)
    if not re.match(r"^https?://[^\s/?#]+([/?]\S*)?$", text):
        raise ValueError(f"not an http:// or https:// URL: {text!r}")
    return text


WebhookUrl = Annotated[str, PlainValidator(_webhook_url), WithJsonSchema({"type": "string", "pattern": "^https?://"})]


def check_tenant_name(name: str) -> None:
    """Raises ValueError unless `name` can name a tenant."""
    if not _TENANT_NAME.fullmatch(name):
        raise ValueError(f"a tenant name is 1-63 letters, digits, '_', '.' or '-' starting with a letter or digit, got {name!r}")
    if name == NO_TENANT:
        raise ValueError(f"{NO_TENANT!r} is the label of mail without a tenant; name the tenant otherwise")


class TenantConfig(_Table):
    """A customer of the relay: who it is (AUTH identities, client networks), which domains are
    its own, and its spam threshold."""

    auth_users: tuple[Text, ...] = Field((), description="AUTH identities of this tenant: mail from a client logged in as one of them is the tenant's.")
    networks: tuple[IPNetworkField, ...] = Field(
        (), description="Client networks of this tenant (mail from an unauthenticated client in one of them is the tenant's; the longest prefix wins)."
    )
    domains: tuple[DomainName, ...] = Field(
        (), description="The tenant's own domains: its senders, and the 'internal' recipients of the DSNs its servers write."
    )
    threshold: Optional[Number] = Field(None, description="The tenant's spam threshold (default: policy.threshold).")
    limits: Optional[LimitsConfig] = Field(None, description="The tenant's sender limits: each key set here overrides [limits].")


class MonitorConfig(_Table):
    """The DSN surge monitor: per tenant, a sliding-window DSN rate against a learned baseline."""

    enabled: Bool = Field(True, description="Run the surge monitor (DSN windows, causes, alerts).")
    window: Duration = Field(300.0, description="The sliding window the DSN rate is measured over.", json_schema_extra=_shown_default("5m"))
    baseline: Duration = Field(
        6 * 3600.0, description="Time constant of the baseline rate (an EWMA): how slowly it follows the rate.", json_schema_extra=_shown_default("6h")
    )
    min_dsns: Int = Field(20, ge=1, description="A window with fewer DSNs than this never fires.")
    factor: Number = Field(4.0, gt=1.0, description="Fire when the window's rate exceeds factor x baseline.")
    resolve_factor: Optional[Number] = Field(
        None,
        gt=0.0,
        description="Hysteresis: a surge resolves when the rate falls below resolve_factor x baseline or the window holds fewer than min_dsns / 2 DSNs (default: factor / 2).",
    )
    interval: Optional[Duration] = Field(None, description="How often the windows are evaluated (default: window / 10, at most 30s).")
    resolved_alerts: Int = Field(50, ge=0, description="Resolved alerts kept for GET /api/alerts.")
    message_id_days: Int = Field(7, ge=1, le=366, description="Days of relayed Message-IDs kept (in daily Bloom filters) to tell backscatter.")
    expected_messages_per_day: Int = Field(
        1_000_000, ge=1000, description="Messages per day and worker the Bloom filters are sized for (false positives stay near 0.1% up to this)."
    )

    @model_validator(mode="after")
    def _resolve_below_factor(self) -> MonitorConfig:
        if self.resolve_factor is not None and self.resolve_factor >= self.factor:
            raise Invalid("must be below factor (hysteresis)", "resolve_factor")
        return self

    @property
    def resolve_at(self) -> float:
        return self.resolve_factor if self.resolve_factor is not None else self.factor / 2

    @property
    def tick(self) -> float:
        return self.interval if self.interval is not None else min(self.window / 10, 30.0)


class AdminConfig(_Table):
    """The admin HTTP listener: /metrics (Prometheus), /healthz and the JSON API. Off unless an
    address is set."""

    address: Optional[ListenAddress] = Field(None, description='"host:port" of the admin HTTP listener, e.g. "127.0.0.1:9425"; absent: no listener.')


class AlertsConfig(_Table):
    """Where surge alerts go besides the log (deliverypool.alerts) and GET /api/alerts."""

    webhook: Optional[WebhookUrl] = Field(None, description="URL each alert is POSTed to as JSON (firing, then resolved); retried with backoff.")
    queue_size: Int = Field(1000, ge=1, description="Alerts waiting for the webhook; when full the oldest is dropped (and counted).")
    timeout: Duration = Field(10.0, description="Time allowed for one POST.", json_schema_extra=_shown_default("10s"))
    retry_initial: Duration = Field(1.0, description="Wait before the first retry of a failed POST.", json_schema_extra=_shown_default("1s"))
    retry_maximum: Duration = Field(300.0, description="Longest wait between retries (doubling from retry_initial).", json_schema_extra=_shown_default("5m"))
    max_attempts: Int = Field(20, ge=1, description="POSTs of one alert before it is given up (logged).")


class ObserveConfig(_Table):
    """The event stream inside the relay."""

    enabled: Bool = Field(True, description="Publish events (metrics, the surge monitor and the event log read them); false: none of those.")
    event_log: Optional[OutputPath] = Field(
        None, description="Write every event as a JSON line to this file (relative: in the spool directory); absent: no event log."
    )
    event_log_size: Size = Field(100 * 1024 * 1024, description="Rotate the event log at this size.", json_schema_extra=_shown_default("100MB"))
    event_log_keep: Int = Field(5, ge=1, description="Rotated event logs kept (events.jsonl.1 ... .N).")
    queue_size: Int = Field(10000, ge=10, description="Events waiting for one subscriber; past that its events are dropped and counted.")
    flush_interval: Duration = Field(
        1.0, description="How often each worker writes its counters and DSNs to the shared state database.", json_schema_extra=_shown_default("1s")
    )


class DnsblConfig(_Table):
    """The blocklist watch of the pools' own source addresses (docs/operations/blocklist-watch.md)."""

    zones: tuple[DomainName, ...] = Field(
        (), description='DNSBL zones every source address of every pool is looked up in, e.g. ["zen.spamhaus.org", "bl.spamcop.net"]; empty: no watch.'
    )
    interval: Duration = Field(
        900.0,
        description="How often each address is checked in each zone (and each zone's RFC 5782 test points).",
        json_schema_extra=_shown_default("15m"),
    )
    nameservers: tuple[NameServer, ...] = Field(
        (),
        description=(
            'Nameservers for the blocklist queries, as "IP" or "IP:port"; empty: the [dns] resolver. Lists refuse '
            "queries through public resolvers: use your own."
        ),
    )
    normal_listed: Literal["drain", "alert"] = Field(
        "drain",
        description=(
            '"drain": a listed address of any pool but the high-risk one leaves its pool\'s rotation until it is delisted '
            '(with a critical alert); "alert": the alert only.'
        ),
    )

    @field_validator("zones")
    @classmethod
    def _zones_once(cls, zones: tuple[str, ...]) -> tuple[str, ...]:
        seen: set[str] = set()
        for i, zone in enumerate(zones):
            if zone in seen:
                raise Invalid(f"{zone!r} is listed twice", i)
            seen.add(zone)
        return zones
