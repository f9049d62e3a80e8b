"""The routing policy of a configuration: its pools with their classes, its rules and its
defaults, as the Rust core's `Policy`, which compiles the rules once and evaluates them as part
of every decision (rust/pools.rs; docs/concepts/pools.md).

What the rules may and may not do is decided there, and refused there with the key at fault:
the configuration (`RelayConfig`) builds this policy while it is validated, so a relay never
starts with rules the core would refuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import idna

from deliverypool._core import Policy

if TYPE_CHECKING:
    from deliverypool._core import _Rule
    from deliverypool.config import RelayConfig

__all__ = ["domain_forms", "policy_from_config"]


def policy_from_config(config: RelayConfig) -> Policy:
    """The core policy of `config` (raises `PolicyError`, with its `key`, for rules it refuses)."""
    p = config.policy
    return Policy(
        normal_pool=p.normal_pool,
        high_risk_pool=p.high_risk_pool,
        threshold=p.threshold,
        tenant_thresholds={name: t.threshold for name, t in config.tenants.items() if t.threshold is not None} or None,
        score_header=p.score_header,
        unknown_domain_pool=p.unknown_domain_pool,
        unscannable_pool=p.unscannable_pool,
        score_unavailable_pool="high-risk" if config.score.fallback == "high-risk" else "normal",
        pools={name: pool.pool_class for name, pool in config.pools.items()},
        pool_tenants={name: pool.tenant for name, pool in config.pools.items() if pool.tenant is not None} or None,
        rules=[cast("_Rule", rule.as_core(domain_forms)) for rule in p.rules] or None,
        relay_pool=p.relay_pool,
        route_header=p.route_header,
        auth_unknown_pool=config.auth.auth_unknown_pool,
    )


def domain_forms(pattern: str) -> tuple[str, ...]:
    """The forms a configured domain pattern (IDNA ASCII, lowercased, maybe ``*.``) is matched
    in: itself, and its Unicode form when it has one, for SMTPUTF8 addresses written in it."""
    wildcard = pattern.startswith("*.")
    name = pattern[2:] if wildcard else pattern
    if "xn--" not in name:
        return (pattern,)
    try:
        unicode = idna.decode(name)
    except (idna.IDNAError, UnicodeError, ValueError):
        return (pattern,)
    return (pattern, f"*.{unicode}" if wildcard else unicode)

