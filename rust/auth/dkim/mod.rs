//! DKIM (RFC 6376) signing and verification, RSA-SHA256 and Ed25519-SHA256 (RFC 8463).
//!
//! * `header` splits a message's header block into fields, as raw spans of the message.
//! * `canon` canonicalises header fields (simple, relaxed) and hashes the body in one pass
//!   over the message's bytes, canonicalising on the fly: the canonical body is never built.
//! * `tags` reads tag=value lists (signatures and key records).
//! * `sign` signs with keys parsed once (`SigningKey`); `verify` checks the signatures a
//!   message carries against key records the caller looked up.
//!
//! The cryptography is `ring`'s (PKCS#1 v1.5 with SHA-256, Ed25519, SHA-256).
//!
//! Every name this module outputs comes from a closed set below (results in RFC 8601's words,
//! the reasons of a verification, the reasons a message is not signed).

pub mod canon;
pub mod header;
pub mod sign;
pub mod tags;
pub mod verify;

use crate::labels::closed_set;

pub use canon::{BodyHasher, Canon};
pub use header::{Field, Header};
pub use sign::{sign, KeyError, SignOptions, Signature, SigningKey};
pub use verify::{key_queries, verify, KeyLookup, Verdict};

closed_set! {
    /// The signing algorithms (the `a=` tag).
    pub enum Algorithm debug_as_name {
        RsaSha256 = "rsa-sha256",
        Ed25519Sha256 = "ed25519-sha256",
    }
}

closed_set! {
    /// The result of one signature's check, in RFC 8601's words.
    pub enum DkimResult debug_as_name {
        Pass = "pass",
        /// The signature or the body hash does not match.
        Fail = "fail",
        /// The signature cannot be read (syntax, unsupported version or algorithm).
        Neutral = "neutral",
        /// The key could not be looked up now (DNS failure): try later.
        Temperror = "temperror",
        /// An error no retry fixes: no key, a revoked or unusable key, From not signed, expired.
        Permerror = "permerror",
        /// Readable and checkable, but refused by policy (rsa-sha1, RFC 8301; too many signatures).
        Policy = "policy",
    }
}

closed_set! {
    /// Why a signature got its result (none for a plain pass).
    pub enum VerifyReason debug_as_name {
        SignatureSyntax = "signature-syntax",
        UnsupportedVersion = "unsupported-version",
        UnsupportedAlgorithm = "unsupported-algorithm",
        RsaSha1 = "rsa-sha1",
        IdentityMismatch = "identity-mismatch",
        FromNotSigned = "from-not-signed",
        Expired = "expired",
        MalformedMessage = "malformed-message",
        KeyNotFound = "key-not-found",
        KeyDnsError = "key-dns-error",
        KeySyntax = "key-syntax",
        KeyRevoked = "key-revoked",
        KeyTypeMismatch = "key-type-mismatch",
        KeyHashNotAllowed = "key-hash-not-allowed",
        KeyNotForEmail = "key-not-for-email",
        KeyTooShort = "key-too-short",
        KeyStrictIdentity = "key-strict-identity",
        BodyHashMismatch = "body-hash-mismatch",
        SignatureMismatch = "signature-mismatch",
        /// Passed, but the body hash covers only the first `l=` bytes of the body.
        PartialBody = "partial-body",
        TooManySignatures = "too-many-signatures",
    }
}

closed_set! {
    /// Why the signer left a message unsigned (the message is sent as it is).
    pub enum SignProblem debug_as_name {
        /// No From field: RFC 6376 requires it signed.
        NoFrom = "no-from",
        /// More than one From field (RFC 5322 allows one).
        MultipleFrom = "multiple-from",
        /// A header line that is neither a field nor a continuation, or a field name that is
        /// not printable ASCII: the next hop could read the fields otherwise.
        MalformedHeader = "malformed-header",
        /// The cryptography failed (ring's RSA signing needs the system's random numbers).
        CryptoFailure = "crypto-failure",
    }
}

/// The base64 alphabet of DKIM tags (standard, padded).
pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::check_table;

    #[test]
    fn tables_keep_their_invariants() {
        check_table(Algorithm::from_name);
        check_table(DkimResult::from_name);
        check_table(VerifyReason::from_name);
        check_table(SignProblem::from_name);
        check_table(Canon::from_name);
    }
}
