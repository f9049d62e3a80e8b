//! Message and sender authentication, one folder per mechanism: `dkim` (RFC 6376, RFC 8463),
//! SPF (RFC 7208), DMARC (RFC 7489) and the Sender Rewriting Scheme. No DNS here: DKIM's
//! callers hand in the records they looked up; SPF and DMARC are sans-IO, naming the answers
//! they need ([`dns::Query`]) and run again once the caller has them ([`dns::Answers`]). In
//! Python, `lookup/` (the resolver and its cache) is the one DNS path.

pub mod dkim;
pub mod dmarc;
pub mod dns;
pub mod spf;
pub mod srs;
