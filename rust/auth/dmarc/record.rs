//! The DMARC record (RFC 7489 §6.3, §6.4), read tolerantly as §6.6.3 asks: unknown tags are
//! ignored, an invalid optional tag falls back to its default, a missing or invalid `p=` with
//! a valid `rua=` reads as `p=none`.

use std::fmt;

use super::Policy;
use crate::labels::closed_set;

closed_set! {
    /// Identifier alignment mode (`adkim=`, `aspf=`).
    pub enum Alignment debug_as_name {
        Relaxed = "relaxed",
        Strict = "strict",
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmarcRecord {
    pub p: Policy,
    pub sp: Option<Policy>,
    /// 0 to 100.
    pub pct: u8,
    pub adkim: Alignment,
    pub aspf: Alignment,
    pub rua: Vec<String>,
    pub ruf: Vec<String>,
    pub fo: String,
    pub ri: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The first tag is not `v=DMARC1`.
    NotDmarc,
    /// No valid `p=` and no valid `rua=`.
    NoPolicy,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::NotDmarc => f.write_str("the record does not start with v=DMARC1"),
            RecordError::NoPolicy => f.write_str("no valid p= tag (and no valid rua= to read it as p=none)"),
        }
    }
}

/// The tags of a record: `name=value` pairs separated by `;`, white space around either.
fn tags(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(';').filter_map(|tag| {
        let (name, value) = tag.split_once('=')?;
        Some((name.trim(), value.trim()))
    })
}

/// Whether a TXT record is a DMARC record: its first tag is `v=DMARC1` (§6.6.3 discards the
/// others).
pub fn is_dmarc_record(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(text);
    let first = tags(&text).next();
    matches!(first, Some((name, value)) if name == "v" && value.eq_ignore_ascii_case("DMARC1"))
}

fn policy(value: &str) -> Option<Policy> {
    Policy::ALL.iter().copied().find(|p| p.as_str().eq_ignore_ascii_case(value))
}

fn alignment(value: &str) -> Option<Alignment> {
    match value.to_ascii_lowercase().as_str() {
        "r" => Some(Alignment::Relaxed),
        "s" => Some(Alignment::Strict),
        _ => None,
    }
}

/// `dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]` read loosely: a scheme, a
/// colon and something after it.
fn uris(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|uri| {
            uri.split_once(':').is_some_and(|(scheme, rest)| {
                !rest.is_empty()
                    && scheme.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
            })
        })
        .map(str::to_owned)
        .collect()
}

impl DmarcRecord {
    pub fn parse(text: &[u8]) -> Result<DmarcRecord, RecordError> {
        if !is_dmarc_record(text) {
            return Err(RecordError::NotDmarc);
        }
        let text = String::from_utf8_lossy(text);
        let mut p = None;
        let mut record = DmarcRecord {
            p: Policy::None,
            sp: None,
            pct: 100,
            adkim: Alignment::Relaxed,
            aspf: Alignment::Relaxed,
            rua: Vec::new(),
            ruf: Vec::new(),
            fo: "0".to_owned(),
            ri: 86_400,
        };
        let mut seen = Vec::new();
        for (name, value) in tags(&text).skip(1) {
            let name = name.to_ascii_lowercase();
            if seen.contains(&name) {
                continue; // the first of a repeated tag counts
            }
            seen.push(name.clone());
            match name.as_str() {
                "p" => p = policy(value),
                "sp" => record.sp = policy(value),
                "pct" => record.pct = value.parse::<u8>().ok().filter(|&n| n <= 100).unwrap_or(100),
                "adkim" => record.adkim = alignment(value).unwrap_or(Alignment::Relaxed),
                "aspf" => record.aspf = alignment(value).unwrap_or(Alignment::Relaxed),
                "rua" => record.rua = uris(value),
                "ruf" => record.ruf = uris(value),
                "fo" => value.clone_into(&mut record.fo),
                "ri" => record.ri = value.parse().unwrap_or(86_400),
                _ => {}
            }
        }
        record.p = match p {
            Some(p) => p,
            None if !record.rua.is_empty() => Policy::None,
            None => return Err(RecordError::NoPolicy),
        };
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tolerantly() {
        let r = DmarcRecord::parse(b"v=DMARC1; p=quarantine; sp=reject; pct=20; adkim=s; rua=mailto:d@example.com,mailto:x@example.net!10m; x=y").unwrap();
        assert_eq!((r.p, r.sp, r.pct, r.adkim, r.aspf), (Policy::Quarantine, Some(Policy::Reject), 20, Alignment::Strict, Alignment::Relaxed));
        assert_eq!(r.rua, ["mailto:d@example.com", "mailto:x@example.net!10m"]);
        let r = DmarcRecord::parse(b"v = DMARC1 ;p = Reject ; pct=150; adkim=x;").unwrap();
        assert_eq!((r.p, r.pct, r.adkim), (Policy::Reject, 100, Alignment::Relaxed));
        assert_eq!(DmarcRecord::parse(b"v=DMARC1; rua=mailto:a@example.com").unwrap().p, Policy::None);
        assert_eq!(DmarcRecord::parse(b"v=DMARC1; p=bogus"), Err(RecordError::NoPolicy));
        assert_eq!(DmarcRecord::parse(b"v=DMARC1"), Err(RecordError::NoPolicy));
        assert_eq!(DmarcRecord::parse(b"p=reject; v=DMARC1"), Err(RecordError::NotDmarc));
        assert!(!is_dmarc_record(b"v=spf1 -all"));
        assert!(is_dmarc_record(b"v=DMARC1;p=none"));
    }
}
