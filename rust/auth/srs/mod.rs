//! The Sender Rewriting Scheme, in the format of libsrs2, postsrsd and Mail::SRS (the
//! "shortcut" SRS0 and "guarded" SRS1 forms):
//!
//! * `SRS0=HHHH=TT=orig.example=user@relay.example`: `HHHH` the first `hash_length` base64
//!   characters of HMAC-SHA1(key, lc(TT) lc(orig.example) lc(user)); `TT` the day number
//!   (seconds / 86400) modulo 1024 in two base32 characters.
//! * Forwarding an SRS0 address again: `SRS1=HHHH=first.hop==HHHH=TT=orig.example=user@relay`,
//!   the hash over lc(first.hop) lc(the SRS0 part after `SRS0`).
//!
//! HMAC-SHA1 from ring, the crate DKIM signs with. The first key signs; every key verifies (rotation). A hash is compared without regard to
//! case (the scheme's own allowance for MTAs that lowercase local parts: it leaves ~20 of the
//! 24 bits of a 4-character hash); a timestamp older than `max_age_days` is refused.

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use ring::hmac;

use crate::labels::closed_set;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Timestamps count days modulo 2^10.
const TIME_SLOTS: u64 = 1024;
const DAY: u64 = 86_400;
/// The separators allowed after `SRS0`/`SRS1`.
pub const SEPARATORS: &[u8; 3] = b"=+-";

closed_set! {
    /// Why an address was refused.
    pub enum SrsErrorKind debug_as_name {
        /// Not an SRS0 or SRS1 address.
        NotSrs = "not-srs",
        /// SRS-tagged but missing a part (hash, timestamp, host or user).
        Malformed = "malformed",
        /// The hash does not match under any key: forged, or signed with a retired key.
        BadHash = "bad-hash",
        /// The timestamp is older than the maximum age (or is no timestamp).
        Expired = "expired",
        /// The address to rewrite has no domain.
        NoDomain = "no-domain",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrsError {
    pub kind: SrsErrorKind,
    pub detail: String,
}

impl fmt::Display for SrsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for SrsError {}

fn error(kind: SrsErrorKind, detail: impl Into<String>) -> SrsError {
    SrsError { kind, detail: detail.into() }
}

/// A configuration problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    NoKeys,
    EmptyKey,
    BadDomain(String),
    BadHashLength(usize),
    BadSeparator(char),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NoKeys => f.write_str("at least one SRS key is needed"),
            ConfigError::EmptyKey => f.write_str("an SRS key is empty"),
            ConfigError::BadDomain(d) => write!(f, "invalid SRS domain {d:?}"),
            ConfigError::BadHashLength(n) => write!(f, "SRS hash length must be 4 to 27 characters, got {n}"),
            ConfigError::BadSeparator(c) => write!(f, "SRS separator must be one of '=', '+', '-', got {c:?}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// An SRS rewriter for one domain.
#[derive(Clone)]
pub struct Srs {
    domain: String,
    keys: Vec<Vec<u8>>,
    max_age_days: u64,
    hash_length: usize,
    separator: u8,
}

impl fmt::Debug for Srs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .field("keys", &self.keys.len())
            .field("max_age_days", &self.max_age_days)
            .field("hash_length", &self.hash_length)
            .finish_non_exhaustive()
    }
}

/// The address split at its last `@`.
fn split(address: &str) -> Option<(&str, &str)> {
    let at = address.rfind('@')?;
    Some((address.get(..at)?, address.get(at + 1..)?))
}

/// Whether `local` starts with `tag` (`SRS0`/`SRS1`, any case) and a separator.
fn tagged<'a>(local: &'a str, tag: &str) -> Option<&'a str> {
    let head = local.get(..4)?;
    let sep = local.as_bytes().get(4)?;
    (head.eq_ignore_ascii_case(tag) && SEPARATORS.contains(sep)).then(|| local.get(5..)).flatten()
}

/// Whether an address is an SRS address (SRS0 or SRS1) by its form alone.
pub fn is_srs(address: &str) -> bool {
    let local = split(address).map_or(address, |(local, _)| local);
    tagged(local, "SRS0").is_some() || tagged(local, "SRS1").is_some()
}

impl Srs {
    pub fn new(domain: &str, keys: Vec<Vec<u8>>, max_age_days: u32, hash_length: usize, separator: char) -> Result<Srs, ConfigError> {
        if keys.is_empty() {
            return Err(ConfigError::NoKeys);
        }
        if keys.iter().any(Vec::is_empty) {
            return Err(ConfigError::EmptyKey);
        }
        let domain_ok = !domain.is_empty() && domain.is_ascii() && !domain.contains(['@', ' ', '=']) && domain.contains('.');
        if !domain_ok {
            return Err(ConfigError::BadDomain(domain.to_owned()));
        }
        if !(4..=27).contains(&hash_length) {
            return Err(ConfigError::BadHashLength(hash_length));
        }
        let separator = u8::try_from(separator).ok().filter(|s| SEPARATORS.contains(s)).ok_or(ConfigError::BadSeparator(separator))?;
        Ok(Srs { domain: domain.to_ascii_lowercase(), keys, max_age_days: max_age_days.into(), hash_length, separator })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// base64(HMAC-SHA1(key, lc(parts...))), all 27 characters. SHA-1 is the scheme's (ring
    /// names it "for legacy use"): the hash is truncated to a few characters and lives 21
    /// days, so what it needs is a keyed MAC, which HMAC-SHA1 still is.
    fn hash(key: &[u8], parts: &[&str]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
        let mut context = hmac::Context::with_key(&key);
        for part in parts {
            context.update(part.to_ascii_lowercase().as_bytes());
        }
        STANDARD_NO_PAD.encode(context.sign().as_ref())
    }

    fn sign(&self, parts: &[&str]) -> String {
        let key = self.keys.first().map(Vec::as_slice).unwrap_or_default();
        let mut hash = Self::hash(key, parts);
        hash.truncate(self.hash_length);
        hash
    }

    fn verify(&self, given: &str, parts: &[&str]) -> Result<(), SrsError> {
        if given.len() < self.hash_length {
            return Err(error(SrsErrorKind::BadHash, format!("SRS hash {given:?} is shorter than {} characters", self.hash_length)));
        }
        for key in &self.keys {
            let full = Self::hash(key, parts);
            if full.get(..given.len()).is_some_and(|h| h.eq_ignore_ascii_case(given)) {
                return Ok(());
            }
        }
        Err(error(SrsErrorKind::BadHash, format!("SRS hash {given:?} does not match: forged, or signed with a retired key")))
    }

    /// The day stamp of `now` (seconds since the epoch).
    pub fn timestamp(now: u64) -> String {
        let day = (now / DAY) % TIME_SLOTS;
        let hi = BASE32.get(((day >> 5) & 31) as usize).copied().unwrap_or(b'A');
        let lo = BASE32.get((day & 31) as usize).copied().unwrap_or(b'A');
        String::from_utf8_lossy(&[hi, lo]).into_owned()
    }

    /// Days since `stamp` was made, as of `now`.
    fn age(stamp: &str, now: u64) -> Option<u64> {
        if stamp.len() != 2 {
            return None;
        }
        let mut then = 0u64;
        for c in stamp.bytes() {
            let value = BASE32.iter().position(|&b| b == c.to_ascii_uppercase())?;
            then = (then << 5) | value as u64;
        }
        let today = (now / DAY) % TIME_SLOTS;
        Some((today + TIME_SLOTS - then) % TIME_SLOTS)
    }

    /// The envelope sender to use when relaying mail from `sender`: SRS0 for an ordinary
    /// address, SRS1 for an SRS0 or SRS1 one; unchanged when it is already at our domain.
    pub fn forward(&self, sender: &str, now: u64) -> Result<String, SrsError> {
        let (local, host) = split(sender).filter(|(_, h)| !h.is_empty()).ok_or_else(|| {
            error(SrsErrorKind::NoDomain, format!("{sender:?} has no domain to rewrite"))
        })?;
        if host.eq_ignore_ascii_case(&self.domain) {
            return Ok(sender.to_owned());
        }
        if local.is_empty() {
            // SRS0=HHHH=TT=host=@domain would be refused on the way back.
            return Err(error(SrsErrorKind::Malformed, format!("{sender:?} has no local part to rewrite")));
        }
        if host.contains('=') {
            // The format separates the domain from the local part with '=': such a domain (no
            // valid domain holds one) would come back split elsewhere, its hash not matching.
            return Err(error(SrsErrorKind::Malformed, format!("{sender:?}: a domain with '=' cannot be carried by SRS")));
        }
        let sep = char::from(self.separator);
        let domain = &self.domain;
        if let Some(rest) = tagged(local, "SRS1") {
            // SRS1=hash=first.hop==...: keep the first hop and its part, sign them anew.
            let (_, after) = rest.split_once('=').ok_or_else(|| error(SrsErrorKind::Malformed, "SRS1 address without hash"))?;
            let (first_hop, part) = after.split_once('=').ok_or_else(|| error(SrsErrorKind::Malformed, "SRS1 address without host"))?;
            if first_hop.is_empty() || part.is_empty() {
                return Err(error(SrsErrorKind::Malformed, format!("{sender:?}: an empty SRS1 field")));
            }
            let hash = self.sign(&[first_hop, part]);
            return Ok(format!("SRS1{sep}{hash}={first_hop}={part}@{domain}"));
        }
        if tagged(local, "SRS0").is_some() {
            let part = local.get(4..).unwrap_or_default();
            let hash = self.sign(&[host, part]);
            return Ok(format!("SRS1{sep}{hash}={host}={part}@{domain}"));
        }
        let stamp = Self::timestamp(now);
        let hash = self.sign(&[&stamp, host, local]);
        Ok(format!("SRS0{sep}{hash}={stamp}={host}={local}@{domain}"))
    }

    /// One step back: an SRS0 address to the original sender, an SRS1 address to the SRS0
    /// address of the first hop. Checks the hash (any key) and, for SRS0, the age.
    pub fn reverse(&self, address: &str, now: u64) -> Result<String, SrsError> {
        let (local, _) = split(address).unwrap_or((address, ""));
        if let Some(rest) = tagged(local, "SRS0") {
            let mut fields = rest.splitn(4, '=');
            let (Some(hash), Some(stamp), Some(host), Some(user)) = (fields.next(), fields.next(), fields.next(), fields.next()) else {
                return Err(error(SrsErrorKind::Malformed, format!("{address:?}: SRS0 needs hash, timestamp, host and user")));
            };
            if hash.is_empty() || host.is_empty() || user.is_empty() {
                return Err(error(SrsErrorKind::Malformed, format!("{address:?}: an empty SRS0 field")));
            }
            self.verify(hash, &[stamp, host, user])?;
            match Self::age(stamp, now) {
                Some(age) if age <= self.max_age_days => Ok(format!("{user}@{host}")),
                Some(age) => Err(error(SrsErrorKind::Expired, format!("{address:?} is {age} days old (at most {})", self.max_age_days))),
                None => Err(error(SrsErrorKind::Expired, format!("{address:?}: {stamp:?} is not an SRS timestamp"))),
            }
        } else if let Some(rest) = tagged(local, "SRS1") {
            let mut fields = rest.splitn(3, '=');
            let (Some(hash), Some(host), Some(part)) = (fields.next(), fields.next(), fields.next()) else {
                return Err(error(SrsErrorKind::Malformed, format!("{address:?}: SRS1 needs hash, host and the SRS0 part")));
            };
            if hash.is_empty() || host.is_empty() || part.is_empty() {
                return Err(error(SrsErrorKind::Malformed, format!("{address:?}: an empty SRS1 field")));
            }
            self.verify(hash, &[host, part])?;
            Ok(format!("SRS0{part}@{host}"))
        } else {
            Err(error(SrsErrorKind::NotSrs, format!("{address:?} is not an SRS address")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn srs(keys: &[&str]) -> Srs {
        Srs::new("relay.example", keys.iter().map(|k| k.as_bytes().to_vec()).collect(), 21, 4, '=').unwrap()
    }

    #[test]
    fn srs0_round_trip() {
        let s = srs(&["secret"]);
        let rewritten = s.forward("user@orig.example", NOW).unwrap();
        assert!(rewritten.starts_with("SRS0=") && rewritten.ends_with("=orig.example=user@relay.example"), "{rewritten}");
        assert_eq!(s.reverse(&rewritten, NOW).unwrap(), "user@orig.example");
        // Case-insensitive hash and timestamp, as MTAs may lowercase the local part.
        assert_eq!(s.reverse(&rewritten.to_ascii_lowercase(), NOW).unwrap(), "user@orig.example");
        // Our own domain is left alone.
        assert_eq!(s.forward("bounce@Relay.Example", NOW).unwrap(), "bounce@Relay.Example");
    }

    #[test]
    fn srs1_for_srs0_senders() {
        let first = Srs::new("hop1.example", vec![b"k1".to_vec()], 21, 4, '=').unwrap();
        let second = srs(&["k2"]);
        let srs0 = first.forward("user@orig.example", NOW).unwrap();
        let srs1 = second.forward(&srs0, NOW).unwrap();
        let (local, _) = srs0.split_once('@').unwrap();
        assert_eq!(srs1, format!("SRS1={}=hop1.example=={}@relay.example", second.sign(&["hop1.example", &local[4..]]), &local[5..]));
        // Forwarded once more, it stays SRS1 with the first hop kept.
        let third = Srs::new("hop3.example", vec![b"k3".to_vec()], 21, 4, '=').unwrap();
        let again = third.forward(&srs1, NOW).unwrap();
        assert!(again.starts_with("SRS1=") && again.contains("=hop1.example==") && again.ends_with("@hop3.example"));
        assert_eq!(second.reverse(&srs1, NOW).unwrap(), srs0);
        assert_eq!(first.reverse(&srs0, NOW).unwrap(), "user@orig.example");
    }

    #[test]
    fn forged_expired_and_rotated() {
        let s = srs(&["new", "old"]);
        let old = srs(&["old"]).forward("user@orig.example", NOW).unwrap();
        assert_eq!(s.reverse(&old, NOW).unwrap(), "user@orig.example", "old keys verify");
        let retired = srs(&["retired"]).forward("user@orig.example", NOW).unwrap();
        assert_eq!(s.reverse(&retired, NOW).unwrap_err().kind, SrsErrorKind::BadHash);
        let forged = old.replacen("=user@", "=victim@", 1);
        assert_eq!(s.reverse(&forged, NOW).unwrap_err().kind, SrsErrorKind::BadHash);
        assert_eq!(s.reverse(&old, NOW + 21 * DAY).unwrap(), "user@orig.example");
        assert_eq!(s.reverse(&old, NOW + 22 * DAY).unwrap_err().kind, SrsErrorKind::Expired);
        assert_eq!(s.reverse("user@relay.example", NOW).unwrap_err().kind, SrsErrorKind::NotSrs);
        assert_eq!(s.reverse("SRS0=abcd=AB@relay.example", NOW).unwrap_err().kind, SrsErrorKind::Malformed);
        assert_eq!(s.forward("nodomain", NOW).unwrap_err().kind, SrsErrorKind::NoDomain);
        // Found by fuzz/fuzz_targets/srs.rs: an empty local part made an address reverse() refused.
        assert_eq!(s.forward("@orig.example", NOW).unwrap_err().kind, SrsErrorKind::Malformed);
        assert_eq!(s.forward("user@a=b.example", NOW).unwrap_err().kind, SrsErrorKind::Malformed);
        assert_eq!(s.forward("SRS1=x==@hop.example", NOW).unwrap_err().kind, SrsErrorKind::Malformed);
    }

    #[test]
    fn timestamps_wrap_every_1024_days() {
        assert_eq!(Srs::timestamp(0), "AA");
        assert_eq!(Srs::timestamp(DAY * 33), "BB");
        assert_eq!(Srs::age("BB", DAY * 35), Some(2));
        assert_eq!(Srs::age("bb", DAY * (33 + 1024)), Some(0));
        assert_eq!(Srs::age("B1", 0), None);
    }

    #[test]
    fn configuration_errors() {
        assert_eq!(Srs::new("relay.example", vec![], 21, 4, '=').unwrap_err(), ConfigError::NoKeys);
        assert_eq!(Srs::new("relay", vec![b"k".to_vec()], 21, 4, '=').unwrap_err(), ConfigError::BadDomain("relay".into()));
        assert_eq!(Srs::new("relay.example", vec![b"k".to_vec()], 21, 3, '=').unwrap_err(), ConfigError::BadHashLength(3));
        assert_eq!(Srs::new("relay.example", vec![b"k".to_vec()], 21, 4, '/').unwrap_err(), ConfigError::BadSeparator('/'));
        crate::labels::check_table(SrsErrorKind::from_name);
    }
}
