"""The configuration of outbound sender limits and of the state they are counted in:
``[limits]`` (the defaults of every tenant), ``[tenants.NAME.limits]`` (a tenant's overrides)
and ``[state]`` (where counters and restrictions live: the embedded SQLite database, or Redis).

These models use the scalar types of :mod:`deliverypool.config.model`; `TenantConfig` and
`RelayConfig` name them (this module is imported while model.py finishes initialising).
"""

from __future__ import annotations

import urllib.parse
from typing import Annotated, Final, Literal, Optional

from pydantic import Field, PlainValidator, WithJsonSchema

from deliverypool.config.model import Bool, Int, Text, _no_default, _shown_default, _Table, _text
from deliverypool.config.units import Duration

__all__ = ["ACTIONS", "LIMIT_NAMES", "LimitsConfig", "StateConfig"]

# What happens when a limit is reached.
ACTIONS: Final = ("alert", "block-until-tomorrow", "block")
Action = Literal["alert", "block-until-tomorrow", "block"]
# The windows, in the order a recipient is counted against them (metric and alert labels).
LIMIT_NAMES: Final = ("external_per_hour", "internal_per_hour", "per_day", "tenant_per_day")

_LIMIT = "0 lifts a limit [limits] sets, for one tenant; absent: no such limit (or the [limits] value, for a tenant)."


class LimitsConfig(_Table):
    """Recipient limits per sender (and one per tenant), EOP's outbound spam policy: a sender is
    the AUTH identity when there is one, else the envelope sender address. ``[limits]`` holds
    the defaults of every tenant (and of mail without one); ``[tenants.NAME.limits]`` overrides
    them key by key. Null-sender mail (DSNs) never counts and is never refused by a limit."""

    external_per_hour: Optional[Int] = Field(
        None, ge=0, description=f"Per sender: recipients outside the tenant's domains in a sliding hour. {_LIMIT}"
    )
    internal_per_hour: Optional[Int] = Field(
        None, ge=0, description=f"Per sender: recipients in the tenant's own domains in a sliding hour. {_LIMIT}"
    )
    per_day: Optional[Int] = Field(None, ge=0, description=f"Per sender: all recipients in a sliding 24 hours. {_LIMIT}")
    tenant_per_day: Optional[Int] = Field(
        None, ge=0, description=f"Per tenant: all recipients of all its senders in a sliding 24 hours. {_LIMIT}"
    )
    action: Optional[Action] = Field(
        None,
        description=(
            'What reaching a limit does: "alert" (the mail flows, an alert fires once per sender and window), '
            '"block-until-tomorrow" (the sender is refused until 00:00 UTC) or "block" (until an administrator '
            'releases it). Default: "block-until-tomorrow".'
        ),
        json_schema_extra=_shown_default("block-until-tomorrow"),
    )

    def over(self, defaults: LimitsConfig) -> LimitsConfig:
        """These settings with every key they leave out taken from `defaults`."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return LimitsConfig(**{name: value if value is not None else getattr(defaults, name) for name, value in values.items()})

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (above 0)."""
        return any(getattr(self, name) for name in LIMIT_NAMES)


def _redis_url(value: object) -> str:
    text = _text(value).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise ValueError(f"not a redis://host:port/db, rediss:// or unix:// URL: {text!r}")
    try:
        parts.port
    except ValueError:
        raise ValueError(f"bad port in {text!r}") from None
    return text


RedisUrl = Annotated[str, PlainValidator(_redis_url), WithJsonSchema({"type": "string", "pattern": "^(redis|rediss|unix)://"})]


class StateConfig(_Table):
    """Where sender counters and restrictions live, and with redis what makes many nodes one
    fleet. Default: the state database in the spool directory (SPOOL/state.sqlite3), shared by
    the relay's workers; with redis, in Redis, shared by every node that names the same server
    (docs/operations/fleet.md)."""

    redis: Optional[RedisUrl] = Field(
        None, description='Share counters and restrictions among nodes through this Redis, e.g. "redis://127.0.0.1:6379/0".'
    )
    fail: Literal["open", "closed"] = Field(
        "open",
        description=(
            'While Redis is unreachable: "open" counts on this node alone (its state database) and keeps accepting mail; '
            '"closed" answers 451 4.3.0 to every sender the limits apply to. Either way an alert fires.'
        ),
    )
    timeout: Duration = Field(
        0.5, description="Longest wait for one Redis round trip; then Redis counts as unreachable.", json_schema_extra=_shown_default("500ms")
    )
    retry_interval: Duration = Field(
        1.0, description="How often an unreachable Redis is tried again.", json_schema_extra=_shown_default("1s")
    )
    key_prefix: Text = Field("deliverypool:", description="Prefix of every Redis key the relay writes (several relays may share one Redis).")
    lease: Int = Field(
        63, ge=0, le=10000,
        description=(
            "Recipients a worker may count ahead in one check of a sender far from its limits, then accept without asking the "
            "backend, for at most lease_time (at most a 64th of the smallest headroom: near a limit every recipient is checked "
            "on its own; unused ones are handed back). 0: every recipient is checked in the backend."
        ),
    )
    lease_time: Duration = Field(
        1.0, gt=0, le=60, description="How long a lease may be used before what is left of it is handed back.", json_schema_extra=_shown_default("1s")
    )
    fleet: Bool = Field(
        True,
        description=(
            "With redis: every node adds its per-tenant counts and DSN records to Redis, one node at a time runs the surge "
            "monitor and the blocklist watch for all, and every node's admin API shows the fleet. false: Redis holds the "
            "sender limits only and each node observes itself, as without Redis."
        ),
    )
    node: Optional[Text] = Field(
        None,
        description="This node's name in the fleet (leadership, GET /api/tenants). Default: the host name and the listener's port.",
        json_schema_extra=_no_default,
    )
    leader_ttl: Duration = Field(
        10.0, ge=0.3, le=300,
        description=(
            "Lease of the fleet-wide jobs (surge monitor, blocklist watch), renewed every third of it: a leader that dies "
            "loses them within this, and another node has taken them over within 4/3 of it."
        ),
        json_schema_extra=_shown_default("10s"),
    )
    dsns_per_tenant: Int = Field(
        10000, ge=100, le=1_000_000,
        description=(
            "Most DSN records kept in Redis per tenant (besides the time bound, twice monitor.window): what bounds a "
            "tenant's memory there in a flood."
        ),
    )
    backlog: Int = Field(
        20000, ge=0, le=1_000_000,
        description=(
            "DSN records a worker keeps while Redis is unreachable, added when it is back (older than monitor.window "
            "by then: dropped, they no longer count); past this the oldest are dropped and counted."
        ),
    )
