//! SPF records, macro strings and the evaluator on arbitrary input: no panic, and
//!
//! * a macro string that parses prints (Display) to a string that parses to the same value;
//! * the evaluator, run on records the input writes for a handful of names (and A/MX/PTR
//!   answers it chooses), finishes within a bounded number of rounds, never asks the same
//!   question twice, and keeps its limits: at most 11 DNS terms and 3 void lookups counted
//!   (the one over the limit ends it).
//!
//! Input: byte 0 picks the client address and identity; the rest, split at `\n`, are the
//! TXT records of a.test, b.test, c.test, d.test (the first is checked), then macro strings.
#![no_main]

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};

use deliverypool::auth::dns::{Answer, Answers, Query, QueryType, Step};
use deliverypool::auth::spf::macros::{Context, Letter, MacroString};
use deliverypool::auth::spf::record::{is_spf_record, Record};
use deliverypool::auth::spf::{check_helo, check_mail_from, SpfRequest, MAX_DNS_TERMS, MAX_VOID_LOOKUPS};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 4] = ["a.test", "b.test", "c.test", "d.test"];

fn answer(query: &Query, records: &[&[u8]], seed: u8) -> Answer {
    let index = NAMES.iter().position(|n| *n == query.name);
    match (query.qtype, index) {
        (QueryType::Txt, Some(i)) => Answer::Txt(records.get(i).map(|r| vec![r.to_vec()]).unwrap_or_default()),
        (QueryType::A, _) if seed & 1 == 1 => Answer::A(vec![Ipv4Addr::new(192, 0, 2, seed)]),
        (QueryType::Mx, Some(_)) => Answer::Names(NAMES.iter().take(usize::from(seed % 5)).map(|n| (*n).to_owned()).collect()),
        (QueryType::Ptr, _) => Answer::Names(vec!["a.test".into(), "b.test".into()]),
        (_, _) if seed & 2 == 2 => Answer::Failed("timeout".into()),
        (_, Some(_)) => Answer::NoData,
        _ => Answer::NxDomain,
    }
}

fn values(letter: Letter) -> Result<Cow<'static, str>, ()> {
    Ok(Cow::Borrowed(match letter {
        Letter::S => "user-name@a.b.example",
        Letter::L => "user-name",
        Letter::I => "192.0.2.1",
        Letter::V => "in-addr",
        _ => "a.b.example",
    }))
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, rest)) = data.split_first() else { return };
    let pieces: Vec<&[u8]> = rest.split(|&b| b == b'\n').collect();

    for piece in &pieces {
        if is_spf_record(piece) {
            let _ = Record::parse(piece);
        }
        let _ = Record::parse(piece);
        let Ok(text) = std::str::from_utf8(piece) else { continue };
        for context in [Context::DomainSpec, Context::Modifier, Context::Explanation] {
            if let Ok(parsed) = MacroString::parse(text, context) {
                let printed = parsed.to_string();
                assert_eq!(MacroString::parse(&printed, context).as_ref(), Ok(&parsed), "{text:?} printed as {printed:?}");
                let _ = parsed.expand(values);
            }
        }
    }

    let records: Vec<&[u8]> = pieces.iter().take(NAMES.len()).copied().collect();
    let ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, seed));
    let request = SpfRequest { ip, mail_from: "user@a.test", helo: "a.test", receiver: "r.test", now: 0 };
    let mut answers = Answers::new();
    let mut asked = std::collections::HashSet::new();
    for _round in 0..200 {
        let step = if seed & 4 == 4 { check_helo(&request, &answers) } else { check_mail_from(&request, &answers) };
        match step {
            Step::Done(outcome) => {
                assert!(outcome.lookups <= MAX_DNS_TERMS + 1);
                assert!(outcome.void_lookups <= MAX_VOID_LOOKUPS + 1);
                return;
            }
            Step::Need(queries) => {
                assert!(!queries.is_empty());
                for query in queries {
                    assert!(asked.insert(query.clone()), "{query:?} asked twice");
                    let reply = answer(&query, &records, seed);
                    answers.insert(query, reply);
                }
            }
        }
    }
    panic!("no result after 200 rounds");
});
