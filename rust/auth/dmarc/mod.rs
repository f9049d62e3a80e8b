//! DMARC (RFC 7489): policy discovery, the record, identifier alignment, and the result a
//! destination will reach for a message, sans-IO like SPF (see [`crate::auth::dns`]).
//!
//! The organisational domain (§3.2) comes from the Public Suffix List compiled into the `psl`
//! crate (ICANN and private sections, as the list is published and as OpenDMARC reads it).
//!
//! What is predicted: given the DKIM signatures the destination will see (the relay's own and
//! valid customer signatures, each a `d=` domain and whether it verifies) and the SPF result
//! for the envelope sender from the address the message will leave from, does an aligned
//! identifier pass, and if not, what does the From domain's policy ask for.

mod record;

pub use record::{Alignment, DmarcRecord, RecordError};

use crate::auth::dns::{query_name, Answer, DnsSource, Query, QueryType, Step};
use crate::auth::spf::SpfResult;
use crate::labels::closed_set;

closed_set! {
    /// A policy (`p=`, `sp=`) and so a disposition.
    pub enum Policy debug_as_name {
        None = "none",
        Quarantine = "quarantine",
        Reject = "reject",
    }
}

closed_set! {
    /// The DMARC result (RFC 8601 §2.7.x `dmarc=`).
    pub enum DmarcResult debug_as_name {
        Pass = "pass",
        Fail = "fail",
        None = "none",
        TempError = "temperror",
        PermError = "permerror",
    }
}

closed_set! {
    /// Why the DMARC result is what it is.
    pub enum DmarcReason debug_as_name {
        /// A passing DKIM signature whose `d=` aligns with the From domain.
        AlignedDkim = "aligned-dkim",
        /// SPF passed for a domain aligned with the From domain.
        AlignedSpf = "aligned-spf",
        /// A policy was found and no aligned identifier passed.
        NoAlignedPass = "no-aligned-pass",
        /// Neither the From domain nor its organisational domain publishes a policy.
        NoRecord = "no-record",
        /// More than one DMARC record at the name: no DMARC processing (§6.6.3).
        MultipleRecords = "multiple-records",
        /// A record without a valid `p=` (and no valid `rua=` to fall back to p=none).
        InvalidRecord = "invalid-record",
        /// The From domain is missing or not a domain name (permerror).
        InvalidFromDomain = "invalid-from-domain",
        /// A DNS query failed (temperror).
        DnsError = "dns-error",
    }
}

/// A DKIM signature as the destination will judge it: its `d=` domain and whether it
/// verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimSignature {
    pub domain: String,
    pub pass: bool,
}

/// The SPF result the destination will reach, and for which domain (the envelope sender's,
/// or the HELO name's for a null sender).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfIdentity {
    pub domain: String,
    pub result: SpfResult,
}

/// What DMARC is asked about.
#[derive(Clone, Debug)]
pub struct DmarcRequest<'a> {
    /// The RFC 5322 From domain.
    pub from_domain: &'a str,
    pub dkim: &'a [DkimSignature],
    pub spf: Option<&'a SpfIdentity>,
}

/// The outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct DmarcOutcome {
    pub result: DmarcResult,
    pub reason: DmarcReason,
    pub from_domain: String,
    pub organizational_domain: String,
    /// Where the record was found (`_dmarc.` and this), if one was.
    pub record_domain: Option<String>,
    pub record: Option<DmarcRecord>,
    /// The policy that applies: `p=`, or `sp=` (if given) when the record is the
    /// organisational domain's and the From domain is below it.
    pub policy: Option<Policy>,
    /// What the destination is asked to do: `none` for a pass; the policy for a fail (at
    /// `pct` < 100 that is the worst case: the rest of the mail gets the next milder one).
    pub disposition: Policy,
    /// The `d=` of the aligned passing signature.
    pub dkim_aligned: Option<String>,
    pub spf_aligned: bool,
    /// In words: why, for logs and the Authentication-Results comment.
    pub detail: String,
}

/// The organisational domain (RFC 7489 §3.2) of a lowercase ASCII name: the public suffix
/// and one label more; the name itself when it is a public suffix.
pub fn organizational_domain(domain: &str) -> &str {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    psl::domain_str(domain).unwrap_or(domain)
}

/// Whether two domains align (§3.1): the same (strict) or the same organisational domain
/// (relaxed).
pub fn aligned(a: &str, b: &str, mode: Alignment) -> bool {
    let a = a.strip_suffix('.').unwrap_or(a).to_ascii_lowercase();
    let b = b.strip_suffix('.').unwrap_or(b).to_ascii_lowercase();
    match mode {
        Alignment::Strict => a == b,
        Alignment::Relaxed => organizational_domain(&a) == organizational_domain(&b),
    }
}

enum Lookup {
    Found(DmarcRecord),
    Nothing,
    Done(DmarcReason, String),
}

fn lookup(dns: &impl DnsSource, name: &str, missing: &mut Vec<Query>) -> Option<Result<Lookup, String>> {
    let query = Query::new(QueryType::Txt, format!("_dmarc.{name}"));
    let Some(answer) = dns.answer(&query) else {
        missing.push(query);
        return None;
    };
    Some(match answer {
        Answer::Failed(why) => Err(format!("TXT {}: {why}", query.name)),
        Answer::Txt(records) => {
            let found: Vec<&Vec<u8>> = records.iter().filter(|r| record::is_dmarc_record(r)).collect();
            match found.as_slice() {
                [] => Ok(Lookup::Nothing),
                [one] => Ok(match DmarcRecord::parse(one) {
                    Ok(record) => Lookup::Found(record),
                    Err(error) => Lookup::Done(DmarcReason::InvalidRecord, format!("{}: {error}", query.name)),
                }),
                _ => Ok(Lookup::Done(DmarcReason::MultipleRecords, format!("{} has {} DMARC records", query.name, found.len()))),
            }
        }
        _ => Ok(Lookup::Nothing),
    })
}

/// DMARC for one message.
pub fn check(request: &DmarcRequest<'_>, dns: &impl DnsSource) -> Step<DmarcOutcome> {
    let shown = request.from_domain;
    let Some(from) = query_name(shown).filter(|d| d.contains('.')) else {
        return Step::Done(DmarcOutcome {
            result: DmarcResult::PermError,
            reason: DmarcReason::InvalidFromDomain,
            from_domain: shown.to_owned(),
            organizational_domain: String::new(),
            record_domain: None,
            record: None,
            policy: None,
            disposition: Policy::None,
            dkim_aligned: None,
            spf_aligned: false,
            detail: format!("{shown:?} is not a domain name"),
        });
    };
    let org = organizational_domain(&from).to_owned();
    let mut outcome = DmarcOutcome {
        result: DmarcResult::None,
        reason: DmarcReason::NoRecord,
        from_domain: from.clone(),
        organizational_domain: org.clone(),
        record_domain: None,
        record: None,
        policy: None,
        disposition: Policy::None,
        dkim_aligned: None,
        spf_aligned: false,
        detail: String::new(),
    };
    let mut missing = Vec::new();
    // §6.6.3: the From domain, then (only if it has no record) the organisational domain.
    let mut found = None;
    let names: &[&str] = if org == from { &[from.as_str()] } else { &[from.as_str(), org.as_str()] };
    for &name in names {
        let Some(result) = lookup(dns, name, &mut missing) else { return Step::Need(missing) };
        match result {
            Err(detail) => {
                outcome.result = DmarcResult::TempError;
                outcome.reason = DmarcReason::DnsError;
                outcome.detail = detail;
                return Step::Done(outcome);
            }
            Ok(Lookup::Done(reason, detail)) => {
                outcome.reason = reason;
                outcome.detail = detail;
                outcome.record_domain = Some(name.to_owned());
                return Step::Done(outcome);
            }
            Ok(Lookup::Found(record)) => {
                found = Some((name.to_owned(), record));
                break;
            }
            Ok(Lookup::Nothing) => {}
        }
    }
    let Some((record_domain, record)) = found else {
        outcome.detail = format!("no DMARC record at _dmarc.{from} or _dmarc.{org}");
        return Step::Done(outcome);
    };
    let policy = match record.sp {
        Some(sp) if record_domain != from => sp,
        _ => record.p,
    };
    let dkim = request
        .dkim
        .iter()
        .find(|s| s.pass && aligned(&s.domain, &from, record.adkim))
        .map(|s| s.domain.to_ascii_lowercase());
    let spf_aligned = request.spf.is_some_and(|s| s.result == SpfResult::Pass && aligned(&s.domain, &from, record.aspf));
    outcome.policy = Some(policy);
    outcome.record_domain = Some(record_domain);
    outcome.spf_aligned = spf_aligned;
    if let Some(domain) = dkim {
        outcome.result = DmarcResult::Pass;
        outcome.reason = DmarcReason::AlignedDkim;
        outcome.detail = format!("DKIM d={domain} aligns with {from} ({})", record.adkim.as_str());
        outcome.dkim_aligned = Some(domain);
    } else if spf_aligned {
        outcome.result = DmarcResult::Pass;
        outcome.reason = DmarcReason::AlignedSpf;
        let domain = request.spf.map(|s| s.domain.as_str()).unwrap_or_default();
        outcome.detail = format!("SPF pass for {domain} aligns with {from} ({})", record.aspf.as_str());
    } else {
        outcome.result = DmarcResult::Fail;
        outcome.reason = DmarcReason::NoAlignedPass;
        outcome.disposition = policy;
        outcome.detail = why_not(request, &from, &record);
    }
    outcome.record = Some(record);
    Step::Done(outcome)
}

/// Each identifier and why it does not count, e.g. `DKIM d=esp.example passes but is not
/// aligned (relaxed); SPF softfail for bank.example`.
fn why_not(request: &DmarcRequest<'_>, from: &str, record: &DmarcRecord) -> String {
    let mut parts = Vec::new();
    for signature in request.dkim {
        let state = if !signature.pass {
            "does not verify"
        } else {
            "passes but is not aligned"
        };
        parts.push(format!("DKIM d={} {state} ({})", signature.domain, record.adkim.as_str()));
    }
    if request.dkim.is_empty() {
        parts.push("no DKIM signature".to_owned());
    }
    match request.spf {
        Some(spf) if spf.result == SpfResult::Pass => {
            parts.push(format!("SPF pass for {} is not aligned with {from} ({})", spf.domain, record.aspf.as_str()));
        }
        Some(spf) => parts.push(format!("SPF {} for {}", spf.result, spf.domain)),
        None => parts.push("no SPF result".to_owned()),
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
