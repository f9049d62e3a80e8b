"""``[auth]``: sender authentication (SPF, DMARC, SRS; docs/concepts/authentication.md).

A draft for phase 2 of "Routing by authentication": the relay does not read this table yet.
These models use the scalar types of :mod:`deliverypool.config.model`, and `RelayConfig`
names them (this module is imported while model.py finishes initialising).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from deliverypool.config.model import Bool, FilePath, HostName, Int, _Table

__all__ = ["AuthConfig", "SrsConfig"]


class SrsConfig(_Table):
    """The Sender Rewriting Scheme for relayed mail (libsrs2/postsrsd/Mail::SRS format)."""

    domain: HostName = Field(
        description=(
            "Domain the SRS addresses are written at: its SPF record must authorise the relay pool's source "
            "addresses, and its MX must lead bounces back to the relay."
        )
    )
    key_file: FilePath = Field(
        description="File of SRS keys, one per line: the first signs, every one verifies (rotation). Readable by the relay only."
    )
    max_age_days: Int = Field(21, ge=1, le=1000, description="Days an SRS address is accepted back (a bounce to an older one is refused).")
    hash_length: Int = Field(4, ge=4, le=27, description="Characters of the keyed hash written into each address.")
    separator: Literal["=", "+", "-"] = Field("=", description="Character after SRS0/SRS1 in the addresses written.")


class AuthConfig(_Table):
    """SPF and DMARC for each message, and what the routing does with them (phase 2)."""

    enabled: Bool = Field(False, description="Evaluate SPF (MAIL FROM and HELO) and DMARC for each message accepted.")
    auth_unknown_pool: Literal["high-risk", "normal"] = Field(
        "high-risk",
        description="Where mail goes when SPF or DMARC could not be evaluated (a DNS failure: temperror); never treated as a pass.",
    )
    add_authentication_results: Bool = Field(False, description="Add an RFC 8601 Authentication-Results field to relayed mail.")
    authserv_id: Optional[HostName] = Field(
        None, description="The authserv-id of that field. Default: the relay's hostname.", json_schema_extra={"default": None}
    )
    srs: Optional[SrsConfig] = Field(None, description="SRS for mail leaving through the relay pool; absent: no rewriting.")
