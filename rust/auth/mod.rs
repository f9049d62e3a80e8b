//! Sender authentication, one folder per mechanism: SPF (RFC 7208), DMARC (RFC 7489) and the
//! Sender Rewriting Scheme. Each evaluator is sans-IO: it names the DNS answers it needs
//! ([`dns::Query`]) and is run again once the caller has them ([`dns::Answers`]); the caller
//! (Python's resolver and its cache) is the one place that talks to DNS.

pub mod dmarc;
pub mod dns;
pub mod spf;
pub mod srs;
