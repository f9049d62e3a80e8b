"""Message authentication, one module per mechanism: DKIM (dkim.py); SPF (RFC 7208), DMARC
(RFC 7489) and the Sender Rewriting Scheme (srs.py), with the evaluators in Rust
(``rust/auth/``) and DNS through the one resolver and its cache (dns.py); the
:class:`Authenticator` (authenticator.py) and the Authentication-Results field (results.py)."""

from deliverypool._core import (
    DMARC_POLICIES,
    DMARC_REASONS,
    DMARC_RESULTS,
    SPF_REASONS,
    SPF_RESULTS,
    SRS_ERRORS,
    AuthError,
    DmarcCheck,
    DmarcOutcome,
    SpfCheck,
    SpfOutcome,
    SrsError,
    SrsRewriter,
    is_srs,
    organizational_domain,
)
from deliverypool.auth.authenticator import AuthResult, Authenticator, Departure, DkimIdentity
from deliverypool.auth.results import authentication_results

__all__ = [
    "AuthResult",
    "Authenticator",
    "Departure",
    "DkimIdentity",
    "authentication_results",
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
