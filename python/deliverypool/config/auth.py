"""``[auth]``: sender authentication (SPF, DMARC, SRS; docs/concepts/authentication.md).

With ``enabled``, every message's SPF (at acceptance) and DMARC (as the destination will judge
it) go into its routing: ``dmarc-fail`` (high-risk), ``relayed-spf-fail`` (the relay pool),
``auth-unknown`` (``auth_unknown_pool``). ``[auth.srs]`` rewrites the envelope sender of the
relay pools' mail and takes the bounces to it back. The SRS key file is read and checked when
the configuration loads (at start), so a missing or empty file is one line naming
``auth.srs.key_file``; a relative path is relative to the configuration file.

These models use the scalar types of :mod:`deliverypool.config.model`, and `RelayConfig`
names them (this module is imported while model.py finishes initialising).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, PrivateAttr, ValidationInfo, model_validator

from deliverypool.config.errors import Invalid
from deliverypool.config.model import Bool, FilePath, HostName, Int, _Table

__all__ = ["AuthConfig", "SrsConfig"]


class SrsConfig(_Table):
    """The Sender Rewriting Scheme for relayed mail (libsrs2/postsrsd/Mail::SRS format)."""

    domain: HostName = Field(
        description=(
            "Domain the SRS addresses are written at: its SPF record must authorise the relay pool's source "
            "addresses, and its MX must lead bounces back to the relay (which accepts mail for it from anyone)."
        )
    )
    key_file: FilePath = Field(
        description=(
            "File of SRS keys, one per line: the first signs, every one verifies (rotation). Readable by the relay only; "
            "relative to the configuration file. Read at start and on SIGHUP (the relay; the milter needs a restart)."
        )
    )
    max_age_days: Int = Field(21, ge=1, le=1000, description="Days an SRS address is accepted back (a bounce to an older one is refused).")
    hash_length: Int = Field(4, ge=4, le=27, description="Characters of the keyed hash written into each address.")
    separator: Literal["=", "+", "-"] = Field("=", description="Character after SRS0/SRS1 in the addresses written.")

    _keys: tuple[bytes, ...] = PrivateAttr(default=())

    @model_validator(mode="after")
    def _read_keys(self, info: ValidationInfo) -> SrsConfig:
        from deliverypool._core import SrsRewriter
        from deliverypool.auth.srs import load_keys

        base = (info.context or {}).get("base") if isinstance(info.context, dict) else None
        path = self.key_file if self.key_file.is_absolute() or base is None else Path(base) / self.key_file
        try:
            keys = tuple(load_keys(path))
            SrsRewriter(self.domain, keys, max_age_days=self.max_age_days, hash_length=self.hash_length, separator=self.separator)
        except ValueError as exc:
            raise Invalid(str(exc), "key_file") from None
        self._keys = keys
        return self

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys as read at load, the signing key first."""
        return self._keys


class AuthConfig(_Table):
    """SPF and DMARC for each message, and what the routing does with them."""

    enabled: Bool = Field(
        False,
        description=(
            "Evaluate SPF (at acceptance) and DMARC (as the destination will judge it) for each message and route on them: "
            "dmarc-fail through the high-risk pool, relayed-spf-fail through the relay pool (policy.relay_pool; without a "
            "pool of class relay, the high-risk way)."
        ),
    )
    auth_unknown_pool: Literal["high-risk", "normal"] = Field(
        "high-risk",
        description="Where mail goes when SPF or DMARC could not be evaluated (a DNS failure: temperror; reason auth-unknown); never treated as a pass.",
    )
    add_authentication_results: Bool = Field(
        False,
        description=(
            "Add an RFC 8601 Authentication-Results field (SPF, the client's DKIM signatures, DMARC as the message arrived) "
            "at the top of each message, before it is signed: DKIM covers it only when dkim.headers names it."
        ),
    )
    authserv_id: Optional[HostName] = Field(
        None, description="The authserv-id of that field. Default: the relay's hostname.", json_schema_extra={"default": None}
    )
    srs: Optional[SrsConfig] = Field(
        None, description="SRS for mail leaving through a relay pool, and its bounces taken back; absent: no rewriting."
    )
