//! The DNS questions the authentication evaluators ask and the answers they are given.
//!
//! An evaluator never performs I/O: it reads answers from a [`DnsSource`]; a question the
//! source cannot answer yet is recorded, and the evaluation stops with [`Step::Need`] listing
//! every such question. The caller looks them up (from its cache without waiting, or over the
//! network) and runs the evaluation again with the answers added. Evaluations are pure
//! functions of their input and the answers, so running one again repeats the same steps and
//! reaches the first unanswered question again, never a different one.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A record type the evaluators ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QueryType {
    Txt,
    A,
    Aaaa,
    Mx,
    Ptr,
}

impl QueryType {
    pub const ALL: [QueryType; 5] = [QueryType::Txt, QueryType::A, QueryType::Aaaa, QueryType::Mx, QueryType::Ptr];

    /// The record type's name: `TXT`, `A`, `AAAA`, `MX`, `PTR`.
    pub fn as_str(self) -> &'static str {
        match self {
            QueryType::Txt => "TXT",
            QueryType::A => "A",
            QueryType::Aaaa => "AAAA",
            QueryType::Mx => "MX",
            QueryType::Ptr => "PTR",
        }
    }

    /// The type named `name` (any case).
    pub fn from_name(name: &str) -> Option<QueryType> {
        QueryType::ALL.into_iter().find(|t| t.as_str().eq_ignore_ascii_case(name))
    }
}

/// One question: a record type and an ASCII, lowercase name without the trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Query {
    pub qtype: QueryType,
    pub name: String,
}

impl Query {
    pub fn new(qtype: QueryType, name: impl Into<String>) -> Query {
        Query { qtype, name: name.into() }
    }
}

/// The answer to one [`Query`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// TXT records, each record's strings joined.
    Txt(Vec<Vec<u8>>),
    A(Vec<Ipv4Addr>),
    Aaaa(Vec<Ipv6Addr>),
    /// MX exchanges or PTR names (ASCII, any case, with or without the trailing dot).
    Names(Vec<String>),
    /// The name does not exist (RCODE 3).
    NxDomain,
    /// The name exists but has no record of this type.
    NoData,
    /// No answer could be had (timeout, SERVFAIL, ...): the text says which.
    Failed(String),
}

impl Answer {
    /// NXDOMAIN, NODATA, or a positive answer without records: what RFC 7208 §4.6.4 calls a
    /// void lookup.
    pub fn is_void(&self) -> bool {
        match self {
            Answer::NxDomain | Answer::NoData => true,
            Answer::Txt(v) => v.is_empty(),
            Answer::A(v) => v.is_empty(),
            Answer::Aaaa(v) => v.is_empty(),
            Answer::Names(v) => v.is_empty(),
            Answer::Failed(_) => false,
        }
    }
}

/// Where an evaluator reads its answers from.
pub trait DnsSource {
    fn answer(&self, query: &Query) -> Option<&Answer>;

    /// The same by parts, for sources that can look up without building a [`Query`].
    fn answer_for(&self, qtype: QueryType, name: &str) -> Option<&Answer> {
        self.answer(&Query::new(qtype, name))
    }
}

/// Answers collected by the caller: per name, one slot per record type, so that a lookup
/// borrows the name (no allocation on the evaluators' hot path).
#[derive(Clone, Debug, Default)]
pub struct Answers(HashMap<Box<str>, [Option<Answer>; 5], foldhash::fast::RandomState>);

impl Answers {
    pub fn new() -> Answers {
        Answers::default()
    }

    pub fn insert(&mut self, query: Query, answer: Answer) {
        let slots = self.0.entry(query.name.into_boxed_str()).or_default();
        if let Some(slot) = slots.get_mut(query.qtype as usize) {
            *slot = Some(answer);
        }
    }

    /// The answer for `qtype` at `name`, if given.
    pub fn get(&self, qtype: QueryType, name: &str) -> Option<&Answer> {
        self.0.get(name)?.get(qtype as usize)?.as_ref()
    }

    /// How many answers were given.
    pub fn len(&self) -> usize {
        self.0.values().map(|slots| slots.iter().flatten().count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl DnsSource for Answers {
    fn answer(&self, query: &Query) -> Option<&Answer> {
        self.get(query.qtype, &query.name)
    }

    fn answer_for(&self, qtype: QueryType, name: &str) -> Option<&Answer> {
        self.get(qtype, name)
    }
}

/// Where an evaluation stands: finished, or waiting for answers.
#[derive(Clone, Debug, PartialEq)]
pub enum Step<T> {
    Done(T),
    /// The questions to answer before running the evaluation again (no duplicates, in the
    /// order they were met).
    Need(Vec<Query>),
}

/// The name PTR is asked for: `d.c.b.a.in-addr.arpa` or the 32 nibbles under `ip6.arpa`.
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0xf, byte >> 4] {
                    name.push(char::from_digit(nibble.into(), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) as the IPv4 address it stands for (RFC
/// 7208 §5: such a client is an IPv4 client); any other address as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        IpAddr::V4(_) => ip,
    }
}

/// `name` as a DNS name the evaluators may ask about: lowercase, no trailing dot, every label
/// 1-63 octets, 253 octets at most; None otherwise.
pub fn query_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 || !name.is_ascii() {
        return None;
    }
    let mut label = 0usize;
    for &b in name.as_bytes() {
        if b == b'.' {
            if label == 0 {
                return None;
            }
            label = 0;
        } else {
            label += 1;
            if label > 63 {
                return None;
            }
        }
    }
    if label == 0 {
        return None;
    }
    Some(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("192.0.2.1".parse().unwrap()), "1.2.0.192.in-addr.arpa");
        assert_eq!(
            reverse_name("2001:db8::cb01".parse().unwrap()),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn query_names() {
        assert_eq!(query_name("Example.COM."), Some("example.com".into()));
        assert_eq!(query_name("a..b"), None);
        assert_eq!(query_name(&format!("{}.com", "a".repeat(64))), None);
        assert_eq!(query_name(""), None);
        assert_eq!(query_name("."), None);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        assert_eq!(canonical_ip("::ffff:192.0.2.1".parse().unwrap()), "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(canonical_ip("2001:db8::1".parse().unwrap()), "2001:db8::1".parse::<IpAddr>().unwrap());
    }
}
