"""The configuration of tenants and of what operators see: ``[tenants.NAME]``, ``[monitor]``,
``[admin]``, ``[alerts]``, ``[observe]`` and ``[dnsbl]``.

These models use the scalar types of :mod:`deliverypool.config.model` and are fields of its
`RelayConfig` (which imports this module at its end, once those types exist).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal, Optional

from pydantic import Field, PlainValidator, WithJsonSchema, field_validator, model_validator

from deliverypool.config.errors import Invalid
from deliverypool.config.limits import LimitsConfig
from deliverypool.config.model import (
    Bool,
    FilePath,
    Int,
    IPNetworkField,
    ListenAddress,
    NameServer,
    Number,
    OutputPath,
    Text,
    _full_match,
    _shown_default,
    _Table,
    _text,
)
from deliverypool.config.units import Duration, Size
from deliverypool.mail.address import normalize_domain

__all__ = ["AdminConfig", "ENV_NAME_PATTERN", "is_loopback_host", "AlertsConfig", "DnsblConfig", "MonitorConfig", "NO_TENANT", "ObserveConfig", "TENANT_NAME_PATTERN", "TenantConfig"]

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


# The name of an environment variable (POSIX: letters, digits, underscores, not starting with a digit).
ENV_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"

EnvName = Annotated[
    str, PlainValidator(_full_match(re.compile(ENV_NAME_PATTERN), "an environment variable name")),
    WithJsonSchema({"type": "string", "pattern": ENV_NAME_PATTERN}),
]


def is_loopback_host(host: str) -> bool:
    """Whether a listen host is only reachable from this machine: ``localhost`` or a loopback
    IP address (``0.0.0.0``, ``::`` and host names are not)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminConfig(_Table):
    """The admin HTTP listener: /metrics (Prometheus), /healthz and the JSON API. Off unless an
    address is set. Who may use it: bearer tokens (token_file, token_env) and/or client
    certificates (client_ca); see docs/operations/admin-api.md."""

    address: Optional[ListenAddress] = Field(
        None,
        description=(
            '"host:port" of the admin HTTP listener, e.g. "127.0.0.1:9425"; absent: no listener. An address other than '
            "loopback needs a credential (token_file, token_env or client_ca)."
        ),
    )
    token_file: Optional[FilePath] = Field(
        None,
        description=(
            "File of the bearer tokens the API accepts, one NAME:TOKEN line each (NAME:TOKEN:read for a token that only "
            "reads); a relative path is relative to the configuration file. Read at start and again whenever it changes."
        ),
    )
    token_env: Optional[EnvName] = Field(
        None, description="Name of an environment variable holding tokens in token_file's format, entries separated by commas or newlines."
    )
    open_metrics: Bool = Field(False, description="/metrics and /healthz answer without a credential (a Prometheus scraper without one).")
    open_reads: Bool = Field(False, description="GET /api/* answers without a credential; a change (POST) always needs one.")
    tls_certificate: Optional[FilePath] = Field(None, description="PEM certificate (chain): the listener speaks HTTPS; goes with tls_key.")
    tls_key: Optional[FilePath] = Field(None, description="PEM private key of tls_certificate.")
    client_ca: Optional[FilePath] = Field(
        None,
        description=(
            "PEM CA certificate(s): every client must present a certificate they signed (mutual TLS; needs tls_certificate). "
            "The certificate's subject CN names the client in the audit log."
        ),
    )
    max_body: Size = Field(64 * 1024, description="Largest request body (at least 1k); a larger one gets 413.", json_schema_extra=_shown_default("64k"))
    timeout: Duration = Field(
        10.0,
        description="A client that takes longer to send a request's header or body, or stays idle this long, is disconnected.",
        json_schema_extra=_shown_default("10s"),
    )
    max_connections: Int = Field(64, ge=1, le=10000, description="Connections served at once; more are answered 503 and closed.")

    @property
    def has_credential(self) -> bool:
        return self.token_file is not None or self.token_env is not None or self.client_ca is not None

    @model_validator(mode="after")
    def _credentials(self) -> AdminConfig:
        if self.max_body < 1024:
            raise Invalid(f"must be at least 1k (1024 bytes), got {self.max_body}", "max_body")
        if (self.tls_certificate is None) != (self.tls_key is None):
            raise Invalid("tls_certificate and tls_key go together", "tls_key" if self.tls_key is None else "tls_certificate")
        if self.client_ca is not None and self.tls_certificate is None:
            raise Invalid("client certificates need TLS: set tls_certificate and tls_key", "client_ca")
        if self.address is not None and not is_loopback_host(self.address[0]) and not self.has_credential:
            raise Invalid(
                f"{self.address[0]} is not a loopback address and the admin API has no credential: set admin.token_file "
                "(or admin.token_env, or admin.client_ca)",
                "address",
            )
        return self


class AlertsConfig(_Table):
    """Where surge alerts go besides the log (deliverypool.alerts) and GET /api/alerts."""

    webhook: Optional[WebhookUrl] = Field(None, description="URL each alert is POSTed to as JSON (firing, then resolved); retried with backoff.")
    queue_size: Int = Field(1000, ge=1, description="Alerts waiting for the webhook; when full the oldest is dropped (and counted).")
    timeout: Duration = Field(10.0, description="Time allowed for one POST.", json_schema_extra=_shown_default("10s"))
    retry_initial: Duration = Field(1.0, description="Wait before the first retry of a failed POST.", json_schema_extra=_shown_default("1s"))
    retry_maximum: Duration = Field(300.0, description="Longest wait between retries (doubling from retry_initial).", json_schema_extra=_shown_default("5m"))
    max_attempts: Int = Field(20, ge=1, description="POSTs of one alert before it is given up (logged).")
    secret_file: Optional[FilePath] = Field(
        None,
        description=(
            "File of the webhook's signing secret(s), whsec_<base64> (Standard Webhooks), one a line: every POST is signed "
            "with each. Relative: to the configuration file. Absent: a secret generated at first start in the spool "
            "directory (webhook-secret)."
        ),
    )


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
