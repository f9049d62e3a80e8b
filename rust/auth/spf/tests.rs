//! The evaluator on zones written here; the RFC 7208 test suite runs in
//! tests/test_spf_suite.py through the Python binding, and end to end against NSD in
//! tests/test_auth_dns.py.

use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use crate::auth::dns::Answers;

/// A zone: name -> records of each type. Names not in it do not exist.
#[derive(Default)]
struct Zone(HashMap<(String, QueryType), Answer>, Vec<String>);

impl Zone {
    fn txt(mut self, name: &str, text: &str) -> Self {
        self.add(name, QueryType::Txt, |a| match a {
            Answer::Txt(v) => v.push(text.as_bytes().to_vec()),
            _ => unreachable!(),
        });
        self
    }
    fn a(mut self, name: &str, ip: &str) -> Self {
        match ip.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => self.add(name, QueryType::A, |a| match a {
                Answer::A(v) => v.push(v4),
                _ => unreachable!(),
            }),
            IpAddr::V6(v6) => self.add(name, QueryType::Aaaa, |a| match a {
                Answer::Aaaa(v) => v.push(v6),
                _ => unreachable!(),
            }),
        }
        self
    }
    fn names(mut self, name: &str, qtype: QueryType, target: &str) -> Self {
        self.add(name, qtype, |a| match a {
            Answer::Names(v) => v.push(target.to_owned()),
            _ => unreachable!(),
        });
        self
    }
    fn fail(mut self, name: &str, qtype: QueryType) -> Self {
        self.0.insert((name.to_owned(), qtype), Answer::Failed("timeout".into()));
        self.1.push(name.to_owned());
        self
    }
    fn add(&mut self, name: &str, qtype: QueryType, push: impl FnOnce(&mut Answer)) {
        let empty = match qtype {
            QueryType::Txt => Answer::Txt(vec![]),
            QueryType::A => Answer::A(vec![]),
            QueryType::Aaaa => Answer::Aaaa(vec![]),
            QueryType::Mx | QueryType::Ptr => Answer::Names(vec![]),
        };
        push(self.0.entry((name.to_owned(), qtype)).or_insert(empty));
        self.1.push(name.to_owned());
    }
    fn lookup(&self, query: &Query) -> Answer {
        match self.0.get(&(query.name.clone(), query.qtype)) {
            Some(answer) => answer.clone(),
            None if self.1.contains(&query.name) => Answer::NoData,
            None => Answer::NxDomain,
        }
    }
}

/// Runs an evaluation to the end, answering from `zone`; also returns the rounds it took.
fn run(zone: &Zone, ip: &str, mail_from: &str, helo: &str) -> (SpfOutcome, usize, Vec<Query>) {
    let request = SpfRequest { ip: ip.parse().unwrap(), mail_from, helo, receiver: "relay.example", now: 1_000 };
    let mut answers = Answers::new();
    let mut asked = Vec::new();
    for round in 1..100 {
        match check_mail_from(&request, &answers) {
            Step::Done(outcome) => return (outcome, round, asked),
            Step::Need(queries) => {
                assert!(!queries.is_empty());
                for query in queries {
                    assert!(!asked.contains(&query), "{query:?} asked twice");
                    answers.insert(query.clone(), zone.lookup(&query));
                    asked.push(query);
                }
            }
        }
    }
    panic!("no result after 100 rounds");
}

fn result(zone: &Zone, ip: &str, mail_from: &str) -> (SpfResult, SpfReason) {
    let (outcome, _, _) = run(zone, ip, mail_from, "mx.example.org");
    (outcome.result, outcome.reason)
}

#[test]
fn simple_results() {
    let zone = Zone::default()
        .txt("example.com", "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 a:mail.example.com ~all")
        .txt("example.com", "unrelated text")
        .a("mail.example.com", "198.51.100.7");
    assert_eq!(result(&zone, "192.0.2.9", "a@example.com").0, SpfResult::Pass);
    assert_eq!(result(&zone, "2001:db8::5", "a@example.com").0, SpfResult::Pass);
    assert_eq!(result(&zone, "::ffff:192.0.2.9", "a@example.com").0, SpfResult::Pass);
    assert_eq!(result(&zone, "198.51.100.7", "a@example.com").0, SpfResult::Pass);
    assert_eq!(result(&zone, "203.0.113.1", "a@example.com").0, SpfResult::SoftFail);
    assert_eq!(result(&zone, "203.0.113.1", "a@nowhere.example"), (SpfResult::None, SpfReason::Nxdomain));
    assert_eq!(result(&zone, "203.0.113.1", "a@localhost"), (SpfResult::None, SpfReason::InvalidDomain));
}

#[test]
fn includes_redirects_and_their_results() {
    let zone = Zone::default()
        .txt("example.com", "v=spf1 include:_spf.example.net -all")
        .txt("_spf.example.net", "v=spf1 ip4:192.0.2.1 ?ip4:192.0.2.2 -all")
        .txt("redirected.example", "v=spf1 redirect=example.com")
        .txt("dangling.example", "v=spf1 include:nothing.example -all")
        .txt("broken.example", "v=spf1 include:down.example -all")
        .fail("down.example", QueryType::Txt);
    assert_eq!(result(&zone, "192.0.2.1", "x@example.com").0, SpfResult::Pass);
    // A neutral include does not match: the next directive decides.
    assert_eq!(result(&zone, "192.0.2.2", "x@example.com").0, SpfResult::Fail);
    assert_eq!(result(&zone, "192.0.2.1", "x@redirected.example").0, SpfResult::Pass);
    assert_eq!(result(&zone, "192.0.2.1", "x@dangling.example"), (SpfResult::PermError, SpfReason::IncludeNone));
    assert_eq!(result(&zone, "192.0.2.1", "x@broken.example"), (SpfResult::TempError, SpfReason::DnsError));
}

#[test]
fn dns_failure_is_temperror_never_a_pass() {
    let zone = Zone::default().fail("example.com", QueryType::Txt);
    assert_eq!(result(&zone, "192.0.2.1", "x@example.com"), (SpfResult::TempError, SpfReason::DnsError));
    let zone = Zone::default().txt("example.com", "v=spf1 a:down.example +all").fail("down.example", QueryType::A);
    assert_eq!(result(&zone, "192.0.2.1", "x@example.com"), (SpfResult::TempError, SpfReason::DnsError));
}

#[test]
fn the_limit_of_ten_dns_terms() {
    let mut zone = Zone::default();
    let chain: Vec<String> = (0..12).map(|i| format!("l{i}.example")).collect();
    for (i, name) in chain.iter().enumerate() {
        let next = chain.get(i + 1).cloned().unwrap_or_else(|| "end.example".into());
        zone = zone.txt(name, &format!("v=spf1 include:{next} -all"));
    }
    zone = zone.txt("end.example", "v=spf1 +all");
    let (outcome, _, _) = run(&zone, "192.0.2.1", "x@l0.example", "h.example");
    assert_eq!((outcome.result, outcome.reason), (SpfResult::PermError, SpfReason::LookupLimit));
    assert_eq!(outcome.lookups, 11);
    // Ten are allowed.
    let (outcome, _, _) = run(&zone, "192.0.2.1", "x@l2.example", "h.example");
    assert_eq!(outcome.result, SpfResult::Pass);
    assert_eq!(outcome.lookups, 10);
    // A loop ends at the limit too.
    let zone = Zone::default().txt("loop.example", "v=spf1 include:loop.example -all");
    assert_eq!(result(&zone, "192.0.2.1", "x@loop.example"), (SpfResult::PermError, SpfReason::LookupLimit));
}

#[test]
fn void_lookups() {
    let zone = Zone::default()
        .txt("two.example", "v=spf1 a:n1.example a:n2.example +all")
        .txt("three.example", "v=spf1 a:n1.example a:n2.example a:n3.example +all");
    assert_eq!(result(&zone, "192.0.2.1", "x@two.example").0, SpfResult::Pass);
    assert_eq!(result(&zone, "192.0.2.1", "x@three.example"), (SpfResult::PermError, SpfReason::VoidLimit));
}

#[test]
fn mx_and_ptr() {
    let mut zone = Zone::default()
        .txt("example.com", "v=spf1 mx -all")
        .names("example.com", QueryType::Mx, "mx1.example.com")
        .names("example.com", QueryType::Mx, "mx2.example.com")
        .a("mx1.example.com", "192.0.2.1")
        .a("mx2.example.com", "192.0.2.2")
        .txt("ptr.example", "v=spf1 ptr -all")
        .names("3.2.0.192.in-addr.arpa", QueryType::Ptr, "host.ptr.example")
        .names("3.2.0.192.in-addr.arpa", QueryType::Ptr, "liar.ptr.example")
        .a("host.ptr.example", "192.0.2.3")
        .txt("many.example", "v=spf1 mx -all");
    for i in 0..11 {
        zone = zone.names("many.example", QueryType::Mx, &format!("mx{i}.many.example"));
    }
    let (outcome, rounds, _) = run(&zone, "192.0.2.2", "x@example.com", "h.example");
    assert_eq!(outcome.result, SpfResult::Pass);
    assert_eq!(rounds, 4, "TXT, MX, then both hosts' A records in one round");
    assert_eq!(result(&zone, "192.0.2.9", "x@example.com").0, SpfResult::Fail);
    assert_eq!(result(&zone, "192.0.2.3", "x@ptr.example").0, SpfResult::Pass);
    assert_eq!(result(&zone, "192.0.2.1", "x@many.example"), (SpfResult::PermError, SpfReason::MxLimit));
}

#[test]
fn exists_macros_and_explanation() {
    let zone = Zone::default()
        .txt("example.com", "v=spf1 exists:%{ir}.%{l1r+-}._spf.%{d} -all exp=why.example.com")
        .a("1.2.0.192.bob._spf.example.com", "127.0.0.2")
        .txt("why.example.com", "%{l} may not send from %{c} for %{d} (%{r}, %{t})");
    assert_eq!(result(&zone, "192.0.2.1", "bob@example.com").0, SpfResult::Pass);
    assert_eq!(result(&zone, "192.0.2.1", "carol+tag@example.com").0, SpfResult::Fail);
    let (outcome, _, _) = run(&zone, "192.0.2.7", "carol@example.com", "h.example");
    assert_eq!(outcome.explanation.as_deref(), Some("carol may not send from 192.0.2.7 for example.com (relay.example, 1000)"));
    assert_eq!(outcome.mechanism.as_deref(), Some("-all"));
}

#[test]
fn helo_identity_and_null_sender() {
    let zone = Zone::default().txt("mx.example.org", "v=spf1 ip4:192.0.2.1 -all");
    let request = SpfRequest { ip: "192.0.2.1".parse().unwrap(), mail_from: "", helo: "mx.example.org", receiver: "", now: 0 };
    let mut answers = Answers::new();
    answers.insert(Query::new(QueryType::Txt, "mx.example.org"), zone.lookup(&Query::new(QueryType::Txt, "mx.example.org")));
    let Step::Done(helo) = check_helo(&request, &answers) else { panic!() };
    assert_eq!((helo.identity, helo.result, helo.sender.as_str()), (Identity::Helo, SpfResult::Pass, "postmaster@mx.example.org"));
    let Step::Done(from) = check_mail_from(&request, &answers) else { panic!() };
    assert_eq!((from.identity, from.result), (Identity::MailFrom, SpfResult::Pass));
    let literal = SpfRequest { helo: "[192.0.2.1]", ..request };
    let Step::Done(helo) = check_helo(&literal, &answers) else { panic!() };
    assert_eq!((helo.result, helo.reason), (SpfResult::None, SpfReason::InvalidDomain));
}

#[test]
fn tables_keep_their_invariants() {
    crate::labels::check_table(SpfResult::from_name);
    crate::labels::check_table(SpfReason::from_name);
    crate::labels::check_table(Identity::from_name);
}

#[test]
fn networks_and_names() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert!(in_network(ip("192.0.2.1"), ip("10.0.0.0"), 0));
    assert!(in_network(ip("192.0.2.1"), ip("192.0.2.0"), 24));
    assert!(!in_network(ip("192.0.3.1"), ip("192.0.2.0"), 24));
    assert!(in_network(ip("2001:db8::1"), ip("::"), 0));
    assert!(!in_network(ip("2001:db8::1"), ip("2001:db8::"), 128));
    assert!(!in_network(ip("192.0.2.1"), ip("::ffff:192.0.2.1"), 128), "families never mix");
    assert!(is_within("mail.example.com", "example.com"));
    assert!(is_within("example.com.", "example.com"));
    assert!(!is_within("badexample.com", "example.com"));
    assert_eq!(dotted_ip(ip("2001:db8::cb01")), "2.0.0.1.0.d.b.8.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.c.b.0.1");
}
