//! SPF records (RFC 7208 §4.5, §4.6, §12): selecting the record among a name's TXT records,
//! and parsing it into directives and modifiers. A syntax error anywhere makes the whole
//! record invalid (§4.6: `permerror` before anything is evaluated).

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::macros::{Context, MacroError, MacroString};

/// A directive's qualifier: what a match means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

/// A mechanism (RFC 7208 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    /// `a[:domain][/cidr4][//cidr6]`; no domain means the current one.
    A { domain: Option<MacroString>, cidr4: u8, cidr6: u8 },
    Mx { domain: Option<MacroString>, cidr4: u8, cidr6: u8 },
    Ptr(Option<MacroString>),
    Ip4 { network: Ipv4Addr, cidr: u8 },
    Ip6 { network: Ipv6Addr, cidr: u8 },
    Exists(MacroString),
}

impl Mechanism {
    /// Whether evaluating it asks DNS (and so counts against the limit of 10, §4.6.4).
    pub fn queries_dns(&self) -> bool {
        !matches!(self, Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// The term as written, for the result's `mechanism`.
    pub text: String,
}

/// A parsed record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

/// Why a record is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyntaxError {
    /// Bytes outside ASCII, or control characters (§3.1, §4.6.1: terms are separated by
    /// spaces only).
    NotAscii,
    UnknownMechanism(String),
    /// A known mechanism written wrongly (`all:x`, `ip4:1.2.3.4/33`, `include` without domain).
    BadMechanism(String),
    /// `redirect=` or `exp=` given twice (§6).
    DuplicateModifier(String),
    /// A modifier name that is not `name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )`.
    BadModifier(String),
    Macro { term: String, error: MacroError },
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyntaxError::NotAscii => f.write_str("the record holds non-ASCII or control characters"),
            SyntaxError::UnknownMechanism(term) => write!(f, "unknown mechanism {term:?}"),
            SyntaxError::BadMechanism(term) => write!(f, "invalid mechanism {term:?}"),
            SyntaxError::DuplicateModifier(name) => write!(f, "{name}= given more than once"),
            SyntaxError::BadModifier(term) => write!(f, "invalid modifier {term:?}"),
            SyntaxError::Macro { term, error } => write!(f, "invalid macro in {term:?}: {error}"),
        }
    }
}

/// Whether a TXT record is an SPF record: `v=spf1` (any case) alone or followed by a space
/// (§4.5).
pub fn is_spf_record(text: &[u8]) -> bool {
    let version = b"v=spf1";
    text.len() >= version.len()
        && text.get(..version.len()).is_some_and(|v| v.eq_ignore_ascii_case(version))
        && matches!(text.get(version.len()), None | Some(b' '))
}

impl Record {
    /// Parses a selected record (one that [`is_spf_record`]).
    pub fn parse(text: &[u8]) -> Result<Record, SyntaxError> {
        if !text.iter().all(|&b| (0x20..0x7f).contains(&b)) {
            return Err(SyntaxError::NotAscii);
        }
        let text = std::str::from_utf8(text).map_err(|_| SyntaxError::NotAscii)?;
        let mut record = Record::default();
        for term in text.split(' ').skip(1).filter(|t| !t.is_empty()) {
            record.add_term(term)?;
        }
        Ok(record)
    }

    fn add_term(&mut self, term: &str) -> Result<(), SyntaxError> {
        // A modifier is `name=value`, where the name holds no ':' or '/' (a mechanism's
        // argument may hold '=' only after one of those).
        let name_end = term.find(['=', ':', '/']);
        if let Some(eq) = name_end.filter(|&i| term.as_bytes().get(i) == Some(&b'=')) {
            let (name, value) = (term.get(..eq).unwrap_or_default(), term.get(eq + 1..).unwrap_or_default());
            return self.add_modifier(term, name, value);
        }
        let (qualifier, rest) = match term.as_bytes().first() {
            Some(b'+') => (Qualifier::Pass, term.get(1..)),
            Some(b'-') => (Qualifier::Fail, term.get(1..)),
            Some(b'~') => (Qualifier::SoftFail, term.get(1..)),
            Some(b'?') => (Qualifier::Neutral, term.get(1..)),
            _ => (Qualifier::Pass, Some(term)),
        };
        let rest = rest.unwrap_or_default();
        let name_len = rest.find([':', '/']).unwrap_or(rest.len());
        let (name, argument) = rest.split_at(name_len);
        let mechanism = parse_mechanism(term, &name.to_ascii_lowercase(), argument)?;
        self.directives.push(Directive { qualifier, mechanism, text: term.to_owned() });
        Ok(())
    }

    fn add_modifier(&mut self, term: &str, name: &str, value: &str) -> Result<(), SyntaxError> {
        let valid_name = name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid_name {
            return Err(SyntaxError::BadModifier(term.to_owned()));
        }
        let macro_error = |error| SyntaxError::Macro { term: term.to_owned(), error };
        let slot = if name.eq_ignore_ascii_case("redirect") {
            &mut self.redirect
        } else if name.eq_ignore_ascii_case("exp") {
            &mut self.exp
        } else {
            // §6: unknown modifiers are ignored, but must be valid macro strings.
            MacroString::parse(value, Context::Modifier).map_err(macro_error)?;
            return Ok(());
        };
        if slot.is_some() {
            return Err(SyntaxError::DuplicateModifier(name.to_ascii_lowercase()));
        }
        *slot = Some(MacroString::parse(value, Context::DomainSpec).map_err(macro_error)?);
        Ok(())
    }
}

/// Records parsed before, by their text: the same records (a provider's include, a tenant's
/// own) come back message after message, and an evaluation that waited for DNS runs again
/// from its start. Parsing is a pure function of the text, so a cached parse is the parse.
/// Bounded: emptied when full (a new record costs one parse again).
type ParseCache = HashMap<Box<[u8]>, Arc<Result<Record, SyntaxError>>, foldhash::fast::RandomState>;

const PARSE_CACHE_CAPACITY: usize = 4096;

fn parse_cache() -> &'static Mutex<ParseCache> {
    static CACHE: OnceLock<Mutex<ParseCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(ParseCache::default()))
}

/// [`Record::parse`], through a process-wide cache of parsed records.
pub fn parse_cached(text: &[u8]) -> Arc<Result<Record, SyntaxError>> {
    if let Some(parsed) = parse_cache().lock().unwrap_or_else(PoisonError::into_inner).get(text) {
        return Arc::clone(parsed);
    }
    let parsed = Arc::new(Record::parse(text));
    let mut cache = parse_cache().lock().unwrap_or_else(PoisonError::into_inner);
    if cache.len() >= PARSE_CACHE_CAPACITY {
        cache.clear();
    }
    cache.insert(text.into(), Arc::clone(&parsed));
    parsed
}

fn parse_mechanism(term: &str, name: &str, argument: &str) -> Result<Mechanism, SyntaxError> {
    let bad = || SyntaxError::BadMechanism(term.to_owned());
    let domain = |spec: &str| {
        MacroString::parse(spec, Context::DomainSpec).map_err(|error| SyntaxError::Macro { term: term.to_owned(), error })
    };
    // `:domain-spec`, required or optional.
    let required_domain = |argument: &str| match argument.strip_prefix(':') {
        Some(spec) => domain(spec),
        None => Err(bad()),
    };
    match name {
        "all" if argument.is_empty() => Ok(Mechanism::All),
        "include" => required_domain(argument).map(Mechanism::Include),
        "exists" => required_domain(argument).map(Mechanism::Exists),
        "ptr" => match argument {
            "" => Ok(Mechanism::Ptr(None)),
            _ => required_domain(argument).map(|d| Mechanism::Ptr(Some(d))),
        },
        "a" | "mx" => {
            let (spec, cidr4, cidr6) = split_dual_cidr(argument).ok_or_else(bad)?;
            let domain = match spec {
                "" => None,
                _ => Some(required_domain(spec)?),
            };
            Ok(if name == "a" { Mechanism::A { domain, cidr4, cidr6 } } else { Mechanism::Mx { domain, cidr4, cidr6 } })
        }
        "ip4" => {
            let network = argument.strip_prefix(':').ok_or_else(bad)?;
            let (address, cidr) = split_cidr(network, 32).ok_or_else(bad)?;
            Ok(Mechanism::Ip4 { network: address.parse().map_err(|_| bad())?, cidr })
        }
        "ip6" => {
            let network = argument.strip_prefix(':').ok_or_else(bad)?;
            let (address, cidr) = split_cidr(network, 128).ok_or_else(bad)?;
            // `ip6-network = <as per [RFC4291], Section 2.2>`: no zone, no brackets.
            Ok(Mechanism::Ip6 { network: address.parse().map_err(|_| bad())?, cidr })
        }
        "all" => Err(bad()),
        _ => Err(SyntaxError::UnknownMechanism(term.to_owned())),
    }
}

/// A CIDR length: `"0" / %x31-39 *DIGIT` up to `max`.
fn cidr_length(digits: &str, max: u8) -> Option<u8> {
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 1 && digits.starts_with('0') {
        return None;
    }
    digits.parse::<u8>().ok().filter(|&n| n <= max)
}

/// `network[/length]` of ip4/ip6.
fn split_cidr(network: &str, max: u8) -> Option<(&str, u8)> {
    match network.split_once('/') {
        None => Some((network, max)),
        Some((address, length)) => Some((address, cidr_length(length, max)?)),
    }
}

/// `[:domain-spec][/cidr4][//cidr6]` of a and mx, the lengths read from the end (a
/// domain-spec may itself hold `/`).
fn split_dual_cidr(argument: &str) -> Option<(&str, u8, u8)> {
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut rest = argument;
    let mut cidr6 = 128;
    if let Some(at) = rest.rfind("//") {
        let digits = rest.get(at + 2..).unwrap_or_default();
        if is_number(digits) {
            cidr6 = cidr_length(digits, 128)?;
            rest = rest.get(..at).unwrap_or_default();
        }
    }
    let mut cidr4 = 32;
    if let Some(at) = rest.rfind('/') {
        let digits = rest.get(at + 1..).unwrap_or_default();
        if is_number(digits) {
            cidr4 = cidr_length(digits, 32)?;
            rest = rest.get(..at).unwrap_or_default();
        }
    }
    Some((rest, cidr4, cidr6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Record, SyntaxError> {
        Record::parse(text.as_bytes())
    }

    #[test]
    fn selects_spf_records() {
        assert!(is_spf_record(b"v=spf1"));
        assert!(is_spf_record(b"V=SPF1 -all"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"v=spf1\t-all"));
        assert!(!is_spf_record(b"spf1"));
    }

    #[test]
    fn parses_every_mechanism() {
        let record = parse("v=spf1 +all -include:_spf.example.com ~a ?a:x.example.com/24//64 mx/16 ptr ptr:example.org ip4:192.0.2.0/24 ip6:2001:db8::/32 exists:%{i}.bl.example.org redirect=_spf.example.net exp=why.example.com x-foo=%{d}").unwrap();
        let mechanisms: Vec<_> = record.directives.iter().map(|d| (d.qualifier, d.mechanism.clone())).collect();
        assert_eq!(mechanisms.len(), 10);
        assert_eq!(mechanisms[0], (Qualifier::Pass, Mechanism::All));
        assert!(matches!(&mechanisms[1], (Qualifier::Fail, Mechanism::Include(_))));
        assert_eq!(mechanisms[2], (Qualifier::SoftFail, Mechanism::A { domain: None, cidr4: 32, cidr6: 128 }));
        assert!(matches!(&mechanisms[3], (Qualifier::Neutral, Mechanism::A { domain: Some(_), cidr4: 24, cidr6: 64 })));
        assert_eq!(mechanisms[4].1, Mechanism::Mx { domain: None, cidr4: 16, cidr6: 128 });
        assert_eq!(mechanisms[5].1, Mechanism::Ptr(None));
        assert_eq!(mechanisms[7].1, Mechanism::Ip4 { network: "192.0.2.0".parse().unwrap(), cidr: 24 });
        assert_eq!(mechanisms[8].1, Mechanism::Ip6 { network: "2001:db8::".parse().unwrap(), cidr: 32 });
        assert!(record.redirect.is_some() && record.exp.is_some());
    }

    #[test]
    fn parsed_records_are_cached_by_text() {
        let a = parse_cached(b"v=spf1 ip4:192.0.2.0/24 -all");
        let b = parse_cached(b"v=spf1 ip4:192.0.2.0/24 -all");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, Record::parse(b"v=spf1 ip4:192.0.2.0/24 -all"));
        assert!(parse_cached(b"v=spf1 bogus").is_err(), "errors are cached as errors");
    }

    #[test]
    fn dual_cidr() {
        assert_eq!(split_dual_cidr(""), Some(("", 32, 128)));
        assert_eq!(split_dual_cidr("/24"), Some(("", 24, 128)));
        assert_eq!(split_dual_cidr("//64"), Some(("", 32, 64)));
        assert_eq!(split_dual_cidr("/24//64"), Some(("", 24, 64)));
        assert_eq!(split_dual_cidr(":x.example.com/24//64"), Some((":x.example.com", 24, 64)));
        assert_eq!(split_dual_cidr(":%%%_/.Clara.de/27"), Some((":%%%_/.Clara.de", 27, 128)));
        assert_eq!(split_dual_cidr("/33"), None);
        assert_eq!(split_dual_cidr("//129"), None);
        assert_eq!(split_dual_cidr("/024"), None);
    }

    #[test]
    fn syntax_errors() {
        for text in [
            "v=spf1 all:x",
            "v=spf1 ip4:192.0.2.1/33",
            "v=spf1 ip4:192.0.2",
            "v=spf1 ip6:::1/129",
            "v=spf1 include",
            "v=spf1 include:",
            "v=spf1 exists",
            "v=spf1 foo",
            "v=spf1 a:1.2.3.4",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 exp=a.example exp=b.example",
            "v=spf1 1x=foo",
            "v=spf1 a:example.com\r-all",
            "v=spf1 \u{80}a",
            "v=spf1 ip4:1.2.3.4//24",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
        assert!(parse("v=spf1  a  -all ").is_ok());
        assert!(parse("v=spf1 x-unknown=%{d}.x").is_ok());
    }
}
