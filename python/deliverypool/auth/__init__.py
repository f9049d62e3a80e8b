"""Sender authentication as the relay evaluates it: SPF (RFC 7208), DMARC (RFC 7489) and the
Sender Rewriting Scheme, with the evaluators in Rust (``rust/auth/``) and DNS through the one
resolver and its cache (:mod:`deliverypool.auth.dns`)."""

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
from deliverypool.auth.authenticator import DKIM_RESULTS, AuthResult, Authenticator, Departure, DkimResult, DkimSignature
from deliverypool.auth.results import authentication_results

__all__ = [
    "DKIM_RESULTS",
    "AuthResult",
    "Authenticator",
    "Departure",
    "DkimResult",
    "DkimSignature",
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
