//! DMARC on zones written here, after RFC 7489 Appendix B; end to end against NSD in
//! tests/test_auth_dns.py.

use super::*;
use crate::auth::dns::Answers;

fn zone(records: &[(&str, &str)]) -> Answers {
    let mut answers = Answers::new();
    for &(name, text) in records {
        answers.insert(Query::new(QueryType::Txt, name), Answer::Txt(vec![text.as_bytes().to_vec()]));
    }
    answers
}

/// Runs to the end: names not in `records` have no TXT record.
fn run(records: &[(&str, &str)], from: &str, dkim: &[(&str, bool)], spf: Option<(&str, SpfResult)>) -> DmarcOutcome {
    let mut answers = zone(records);
    let dkim: Vec<DkimSignature> = dkim.iter().map(|&(d, pass)| DkimSignature { domain: d.into(), pass }).collect();
    let spf = spf.map(|(domain, result)| SpfIdentity { domain: domain.into(), result });
    let request = DmarcRequest { from_domain: from, dkim: &dkim, spf: spf.as_ref() };
    for _ in 0..4 {
        match check(&request, &answers) {
            Step::Done(outcome) => return outcome,
            Step::Need(queries) => {
                for q in queries {
                    answers.insert(q, Answer::NxDomain);
                }
            }
        }
    }
    panic!("no outcome");
}

const EXAMPLE: (&str, &str) = ("_dmarc.example.com", "v=DMARC1; p=none; rua=mailto:dmarc-feedback@example.com");

#[test]
fn appendix_b1_alignment() {
    // B.1.1: SPF, MAIL FROM sender@example.com and From: sender@example.com are aligned;
    // a MAIL FROM under the From domain only relaxed; another organisation's not at all.
    let strict = ("_dmarc.example.com", "v=DMARC1; p=reject; aspf=s; adkim=s");
    let relaxed = ("_dmarc.example.com", "v=DMARC1; p=reject");
    assert_eq!(run(&[strict], "example.com", &[], Some(("example.com", SpfResult::Pass))).result, DmarcResult::Pass);
    assert_eq!(run(&[relaxed], "example.com", &[], Some(("child.example.com", SpfResult::Pass))).result, DmarcResult::Pass);
    assert_eq!(run(&[strict], "example.com", &[], Some(("child.example.com", SpfResult::Pass))).result, DmarcResult::Fail);
    assert_eq!(run(&[relaxed], "example.com", &[], Some(("example.net", SpfResult::Pass))).result, DmarcResult::Fail);
    // B.1.2: DKIM, d=example.com / d=child.example.com / d=example.net.
    let outcome = run(&[relaxed], "example.com", &[("child.example.com", true)], None);
    assert_eq!((outcome.result, outcome.reason, outcome.dkim_aligned.as_deref()), (DmarcResult::Pass, DmarcReason::AlignedDkim, Some("child.example.com")));
    assert_eq!(run(&[strict], "example.com", &[("child.example.com", true)], None).result, DmarcResult::Fail);
    assert_eq!(run(&[strict], "example.com", &[("example.com", true)], None).result, DmarcResult::Pass);
    assert_eq!(run(&[relaxed], "example.com", &[("example.net", true)], None).result, DmarcResult::Fail);
    // A signature that does not verify never counts, aligned or not.
    assert_eq!(run(&[relaxed], "example.com", &[("example.com", false)], None).result, DmarcResult::Fail);
    // B.1.3: the From domain under an organisation, d= the organisation: relaxed aligns.
    assert_eq!(run(&[relaxed], "sub.example.com", &[("example.com", true)], None).result, DmarcResult::Pass);
}

#[test]
fn appendix_b2_domain_owner_policies() {
    // B.2.1: monitoring only.
    let outcome = run(&[EXAMPLE], "example.com", &[], Some(("example.net", SpfResult::Pass)));
    assert_eq!((outcome.result, outcome.policy, outcome.disposition), (DmarcResult::Fail, Some(Policy::None), Policy::None));
    // B.2.3/B.2.4: quarantine, sampled at 25 %: the worst case is quarantine.
    let outcome = run(&[("_dmarc.example.com", "v=DMARC1; p=quarantine; rua=mailto:dmarc-feedback@example.com; pct=25")], "example.com", &[], None);
    assert_eq!((outcome.disposition, outcome.record.as_ref().unwrap().pct), (Policy::Quarantine, 25));
}

#[test]
fn discovery_falls_back_to_the_organisational_domain() {
    let records = [("_dmarc.example.com", "v=DMARC1; p=reject; sp=quarantine")];
    let outcome = run(&records, "mail.example.com", &[], None);
    assert_eq!(outcome.record_domain.as_deref(), Some("example.com"));
    assert_eq!(outcome.organizational_domain, "example.com");
    assert_eq!((outcome.policy, outcome.disposition), (Some(Policy::Quarantine), Policy::Quarantine));
    // The organisation's own mail gets p=.
    assert_eq!(run(&records, "example.com", &[], None).disposition, Policy::Reject);
    // Public-suffix aware: the organisation of a.b.example.co.uk is example.co.uk.
    assert_eq!(organizational_domain("a.b.example.co.uk"), "example.co.uk");
    assert_eq!(organizational_domain("co.uk"), "co.uk");
    // A record at the From domain wins; its p= applies even with sp=.
    let records = [("_dmarc.mail.example.com", "v=DMARC1; p=none; sp=reject"), ("_dmarc.example.com", "v=DMARC1; p=reject")];
    assert_eq!(run(&records, "mail.example.com", &[], None).disposition, Policy::None);
}

#[test]
fn no_record_multiple_records_and_dns_failure() {
    let outcome = run(&[], "example.org", &[], None);
    assert_eq!((outcome.result, outcome.reason), (DmarcResult::None, DmarcReason::NoRecord));
    let mut answers = Answers::new();
    answers.insert(
        Query::new(QueryType::Txt, "_dmarc.example.org"),
        Answer::Txt(vec![b"v=DMARC1; p=reject".to_vec(), b"v=DMARC1; p=none".to_vec()]),
    );
    let request = DmarcRequest { from_domain: "example.org", dkim: &[], spf: None };
    let Step::Done(outcome) = check(&request, &answers) else { panic!() };
    assert_eq!((outcome.result, outcome.reason), (DmarcResult::None, DmarcReason::MultipleRecords));
    let mut answers = Answers::new();
    answers.insert(Query::new(QueryType::Txt, "_dmarc.example.org"), Answer::Failed("timeout".into()));
    let Step::Done(outcome) = check(&request, &answers) else { panic!() };
    assert_eq!((outcome.result, outcome.reason), (DmarcResult::TempError, DmarcReason::DnsError));
    let request = DmarcRequest { from_domain: "localhost", dkim: &[], spf: None };
    let Step::Done(outcome) = check(&request, &answers) else { panic!() };
    assert_eq!(outcome.reason, DmarcReason::InvalidFromDomain);
}

#[test]
fn tables_keep_their_invariants() {
    crate::labels::check_table(Policy::from_name);
    crate::labels::check_table(DmarcResult::from_name);
    crate::labels::check_table(DmarcReason::from_name);
    crate::labels::check_table(Alignment::from_name);
}
