//! DMARC records and discovery on arbitrary input: no panic; a parsed record's pct is at most
//! 100; the check finishes in at most three rounds (the From domain, then its organisation)
//! and its disposition is none unless it failed.
//!
//! Input: the first line is the From domain, the rest the TXT records of `_dmarc.` it and of
//! its organisational domain.
#![no_main]

use deliverypool::auth::dmarc::{check, DkimSignature, DmarcRecord, DmarcRequest, DmarcResult, Policy, SpfIdentity};
use deliverypool::auth::dns::{Answer, Answers, Step};
use deliverypool::auth::spf::SpfResult;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let from = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let records: Vec<Vec<u8>> = lines.map(<[u8]>::to_vec).collect();
    for record in &records {
        if let Ok(parsed) = DmarcRecord::parse(record) {
            assert!(parsed.pct <= 100);
        }
    }
    let dkim = [DkimSignature { domain: from.clone(), pass: data.len() % 2 == 0 }];
    let spf = SpfIdentity { domain: "other.example".into(), result: SpfResult::Pass };
    let request = DmarcRequest { from_domain: &from, dkim: &dkim, spf: Some(&spf) };
    let mut answers = Answers::new();
    for round in 0..3 {
        match check(&request, &answers) {
            Step::Done(outcome) => {
                if outcome.result != DmarcResult::Fail {
                    assert_eq!(outcome.disposition, Policy::None);
                }
                return;
            }
            Step::Need(queries) => {
                for query in queries {
                    let half = records.len() / 2;
                    let part = if round == 0 { &records[..half] } else { &records[half..] };
                    answers.insert(query, Answer::Txt(part.to_vec()));
                }
            }
        }
    }
    panic!("DMARC took more than two lookups");
});
