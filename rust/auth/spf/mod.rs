//! SPF (RFC 7208): `check_host()` for the MAIL FROM and HELO identities, sans-IO.
//!
//! [`check_mail_from`] and [`check_helo`] read DNS answers from a [`DnsSource`]; while some
//! are missing they return [`Step::Need`] with the questions, and the caller runs them again
//! once it has the answers (see [`crate::auth::dns`]). Every mechanism and modifier is
//! evaluated (all, include, a, mx, ptr, ip4, ip6, exists, redirect, exp), macros included,
//! with the limits of §4.6.4: 10 DNS-querying terms, 2 void lookups, 10 MX names per `mx`
//! (more is a `permerror`), 10 PTR names per `ptr` or `%{p}` (the rest ignored). A DNS
//! failure is `temperror`, never a guess.

pub mod macros;
pub mod record;

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::auth::dns::{canonical_ip, query_name, reverse_name, Answer, DnsSource, Query, QueryType, Step};
use crate::labels::closed_set;
use macros::{Context, Letter, MacroString};
use record::{is_spf_record, Mechanism, Qualifier};

/// RFC 7208 §4.6.4: terms that query DNS, per evaluation.
pub const MAX_DNS_TERMS: u32 = 10;
/// RFC 7208 §4.6.4: void lookups (NXDOMAIN or no records), per evaluation.
pub const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 §4.6.4: MX names one `mx` may look up (more is a permerror).
pub const MAX_MX_NAMES: usize = 10;
/// RFC 7208 §4.6.4: PTR names one `ptr` (or `%{p}`) looks at (the rest are ignored).
pub const MAX_PTR_NAMES: usize = 10;

closed_set! {
    /// An SPF result (RFC 7208 §2.6).
    pub enum SpfResult debug_as_name {
        Pass = "pass",
        Fail = "fail",
        SoftFail = "softfail",
        Neutral = "neutral",
        None = "none",
        TempError = "temperror",
        PermError = "permerror",
    }
}

closed_set! {
    /// Why an SPF result is what it is.
    pub enum SpfReason debug_as_name {
        /// A directive matched; its qualifier is the result.
        Mechanism = "mechanism",
        /// Nothing matched and there was no `redirect=`: neutral (§4.7).
        Default = "default",
        /// The domain has no SPF record (none).
        NoRecord = "no-record",
        /// The domain does not exist (none).
        Nxdomain = "nxdomain",
        /// The identity is not a usable domain name: an IP literal, one label, an empty or
        /// over-long label (none, §4.3).
        InvalidDomain = "invalid-domain",
        /// More than one SPF record (permerror, §4.5).
        MultipleRecords = "multiple-records",
        /// A syntax error in the record (permerror, §4.6).
        Syntax = "syntax",
        /// More than 10 terms that query DNS (permerror).
        LookupLimit = "lookup-limit",
        /// More than 2 void lookups (permerror).
        VoidLimit = "void-limit",
        /// An `mx` with more than 10 MX names (permerror).
        MxLimit = "mx-limit",
        /// `include:` of a domain without an SPF record (permerror).
        IncludeNone = "include-none",
        /// `redirect=` to a domain without an SPF record (permerror).
        RedirectNone = "redirect-none",
        /// A domain-spec that expanded to nothing (permerror).
        EmptyDomain = "empty-domain",
        /// A DNS query failed (temperror).
        DnsError = "dns-error",
    }
}

closed_set! {
    /// Which identity was checked (RFC 7208 §2.3, §2.4).
    pub enum Identity debug_as_name {
        MailFrom = "mailfrom",
        Helo = "helo",
    }
}

/// What the evaluation is about.
#[derive(Clone, Debug)]
pub struct SpfRequest<'a> {
    /// The SMTP client's address (an IPv4-mapped IPv6 address counts as IPv4).
    pub ip: IpAddr,
    /// The envelope sender as given in MAIL FROM, without angle brackets; empty for `<>`.
    pub mail_from: &'a str,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The receiving host's domain, `%{r}` in explanations.
    pub receiver: &'a str,
    /// Seconds since the epoch, `%{t}` in explanations.
    pub now: u64,
}

/// The result of one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpfOutcome {
    pub identity: Identity,
    pub result: SpfResult,
    pub reason: SpfReason,
    /// The domain checked (the sender's or the HELO name), as given.
    pub domain: String,
    /// `<sender>`: the mailbox checked (`postmaster@` the HELO name for a null sender).
    pub sender: String,
    /// The directive that matched, as written (`-all`, `include:_spf.example.com`).
    pub mechanism: Option<String>,
    /// The domain's explanation for a `fail` (`exp=`, §6.2), expanded.
    pub explanation: Option<String>,
    /// What went wrong, for errors and `none` (a syntax error, the query that failed, ...).
    pub detail: String,
    /// DNS-querying terms and void lookups counted.
    pub lookups: u32,
    pub void_lookups: u32,
}

/// Evaluates the MAIL FROM identity (postmaster@HELO for a null sender).
pub fn check_mail_from(request: &SpfRequest<'_>, dns: &impl DnsSource) -> Step<SpfOutcome> {
    let (local, domain) = match request.mail_from.rfind('@') {
        _ if request.mail_from.is_empty() => ("postmaster", request.helo),
        Some(at) => (request.mail_from.get(..at).unwrap_or_default(), request.mail_from.get(at + 1..).unwrap_or_default()),
        None => ("postmaster", request.mail_from),
    };
    let local = if local.is_empty() { "postmaster" } else { local };
    check(Identity::MailFrom, request, local, domain, dns)
}

/// Evaluates the HELO identity (§2.3): `postmaster@` the HELO name.
pub fn check_helo(request: &SpfRequest<'_>, dns: &impl DnsSource) -> Step<SpfOutcome> {
    check(Identity::Helo, request, "postmaster", request.helo, dns)
}

fn check(identity: Identity, request: &SpfRequest<'_>, local: &str, domain: &str, dns: &impl DnsSource) -> Step<SpfOutcome> {
    let mut evaluator = Evaluator {
        dns,
        ip: canonical_ip(request.ip),
        request,
        local,
        domain,
        lookups: 0,
        voids: 0,
        missing: Vec::new(),
    };
    let outcome = |result, reason, mechanism, explanation, detail, e: &Evaluator<'_, '_, _>| SpfOutcome {
        identity,
        result,
        reason,
        domain: domain.to_owned(),
        sender: format!("{local}@{domain}"),
        mechanism,
        explanation,
        detail,
        lookups: e.lookups,
        void_lookups: e.voids,
    };
    // §4.3: a malformed or single-label domain is `none` before any DNS.
    let checked = domain.strip_suffix('.').unwrap_or(domain);
    let top_label = checked.rsplit('.').next().unwrap_or_default();
    let Some(name) = query_name(checked).filter(|_| checked.contains('.') && macros::is_toplabel(top_label)) else {
        let detail = format!("{domain:?} is not a domain name SPF can check");
        return Step::Done(outcome(SpfResult::None, SpfReason::InvalidDomain, None, None, detail, &evaluator));
    };
    let verdict = evaluator.check_host(&name, domain, 0).and_then(|host| match host {
        Host::None(reason, detail) => Ok((SpfResult::None, reason, None, None, detail)),
        Host::Verdict(v) => {
            let explanation = match (&v.exp, v.result) {
                (Some((spec, current)), SpfResult::Fail) => evaluator.explanation(spec, current)?,
                _ => None,
            };
            Ok((v.result, v.reason, v.mechanism, explanation, String::new()))
        }
    });
    match verdict {
        Ok((result, reason, mechanism, explanation, detail)) => {
            Step::Done(outcome(result, reason, mechanism, explanation, detail, &evaluator))
        }
        Err(Stop::Need) => Step::Need(std::mem::take(&mut evaluator.missing)),
        Err(Stop::Error(result, reason, detail)) => Step::Done(outcome(result, reason, None, None, detail, &evaluator)),
    }
}

/// Why an evaluation stopped early.
enum Stop {
    /// Answers are missing (listed in `Evaluator::missing`).
    Need,
    /// A temperror or permerror, which ends the whole evaluation.
    Error(SpfResult, SpfReason, String),
}

fn perm(reason: SpfReason, detail: impl Into<String>) -> Stop {
    Stop::Error(SpfResult::PermError, reason, detail.into())
}

/// What `check_host` found for one domain.
enum Host {
    None(SpfReason, String),
    Verdict(Verdict),
}

struct Verdict {
    result: SpfResult,
    reason: SpfReason,
    mechanism: Option<String>,
    /// The `exp=` of the record that decided, with that record's domain.
    exp: Option<(MacroString, String)>,
}

struct Evaluator<'a, 'r, D> {
    dns: &'a D,
    ip: IpAddr,
    request: &'a SpfRequest<'r>,
    local: &'a str,
    domain: &'a str,
    lookups: u32,
    voids: u32,
    missing: Vec<Query>,
}

impl<'a, 'r, D: DnsSource> Evaluator<'a, 'r, D> {
    /// The answer to a question, or None (and the question noted) when it is missing.
    fn try_answer(&mut self, qtype: QueryType, name: &str) -> Option<&'a Answer> {
        match self.dns.answer_for(qtype, name) {
            Some(answer) => Some(answer),
            None => {
                if !self.missing.iter().any(|q| q.qtype == qtype && q.name == name) {
                    self.missing.push(Query::new(qtype, name));
                }
                None
            }
        }
    }

    fn answer(&mut self, qtype: QueryType, name: &str) -> Result<&'a Answer, Stop> {
        self.try_answer(qtype, name).ok_or(Stop::Need)
    }

    /// Counts a void lookup (§4.6.4); a third is a permerror.
    fn void(&mut self, query: &str) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(perm(SpfReason::VoidLimit, format!("more than {MAX_VOID_LOOKUPS} void lookups (the last: {query})")));
        }
        Ok(())
    }

    /// Counts a term that queries DNS (§4.6.4); an eleventh is a permerror.
    fn count_term(&mut self, term: &str) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_DNS_TERMS {
            return Err(perm(SpfReason::LookupLimit, format!("more than {MAX_DNS_TERMS} DNS-querying terms (at {term})")));
        }
        Ok(())
    }

    fn dns_error(qtype: QueryType, name: &str, why: &str) -> Stop {
        Stop::Error(SpfResult::TempError, SpfReason::DnsError, format!("{} {name}: {why}", qtype.as_str()))
    }

    /// `check_host(ip, domain, sender)` (§4) for `name` (a valid query name); `shown` is the
    /// domain as written, for `%{d}`.
    fn check_host(&mut self, name: &str, shown: &str, depth: u32) -> Result<Host, Stop> {
        let answer = self.answer(QueryType::Txt, name)?;
        let records = match answer {
            Answer::Failed(why) => return Err(Self::dns_error(QueryType::Txt, name, why)),
            Answer::NxDomain => {
                self.void(name)?;
                return Ok(Host::None(SpfReason::Nxdomain, format!("{name} does not exist")));
            }
            Answer::Txt(records) => records.iter().filter(|r| is_spf_record(r)).collect::<Vec<_>>(),
            _ => Vec::new(),
        };
        if answer.is_void() {
            self.void(name)?;
        }
        let text = match records.as_slice() {
            [] => return Ok(Host::None(SpfReason::NoRecord, format!("{name} has no SPF record"))),
            [one] => one,
            _ => return Err(perm(SpfReason::MultipleRecords, format!("{name} has {} SPF records", records.len()))),
        };
        let record = record::parse_cached(text);
        let record = record.as_ref().as_ref().map_err(|e| perm(SpfReason::Syntax, format!("{name}: {e}")))?;
        let current = shown.strip_suffix('.').unwrap_or(shown);
        for directive in &record.directives {
            if directive.mechanism.queries_dns() {
                self.count_term(&directive.text)?;
            }
            if self.matches(&directive.mechanism, current, depth)? {
                let result = match directive.qualifier {
                    Qualifier::Pass => SpfResult::Pass,
                    Qualifier::Fail => SpfResult::Fail,
                    Qualifier::SoftFail => SpfResult::SoftFail,
                    Qualifier::Neutral => SpfResult::Neutral,
                };
                let exp = record.exp.clone().map(|spec| (spec, current.to_owned()));
                return Ok(Host::Verdict(Verdict {
                    result,
                    reason: SpfReason::Mechanism,
                    mechanism: Some(directive.text.clone()),
                    exp,
                }));
            }
        }
        if let Some(redirect) = &record.redirect {
            self.count_term("redirect")?;
            let target = self.target(redirect, current)?;
            return match self.follow(&target, depth)? {
                Some(host @ Host::Verdict(_)) => Ok(host),
                _ => Err(perm(SpfReason::RedirectNone, format!("redirect={target}: no SPF record"))),
            };
        }
        Ok(Host::Verdict(Verdict {
            result: SpfResult::Neutral,
            reason: SpfReason::Default,
            mechanism: None,
            exp: None,
        }))
    }

    /// `check_host` for an include or redirect target; None when it is not a valid name.
    fn follow(&mut self, target: &str, depth: u32) -> Result<Option<Host>, Stop> {
        match query_name(target) {
            Some(name) => self.check_host(&name, target, depth + 1).map(Some),
            None => {
                self.void(target)?;
                Ok(None)
            }
        }
    }

    fn matches(&mut self, mechanism: &Mechanism, current: &str, depth: u32) -> Result<bool, Stop> {
        let v4 = self.ip.is_ipv4();
        match mechanism {
            Mechanism::All => Ok(true),
            Mechanism::Ip4 { network, cidr } => Ok(match self.ip {
                IpAddr::V4(ip) => in_network(IpAddr::V4(ip), IpAddr::V4(*network), *cidr),
                IpAddr::V6(_) => false,
            }),
            Mechanism::Ip6 { network, cidr } => Ok(match self.ip {
                IpAddr::V6(ip) => in_network(IpAddr::V6(ip), IpAddr::V6(*network), *cidr),
                IpAddr::V4(_) => false,
            }),
            Mechanism::Include(spec) => {
                let target = self.target(spec, current)?;
                match self.follow(&target, depth)? {
                    Some(Host::Verdict(v)) => Ok(v.result == SpfResult::Pass),
                    _ => Err(perm(SpfReason::IncludeNone, format!("include:{target}: no SPF record"))),
                }
            }
            Mechanism::A { domain, cidr4, cidr6 } => {
                let target = self.optional_target(domain.as_ref(), current)?;
                let cidr = if v4 { *cidr4 } else { *cidr6 };
                self.address_match(&target, cidr)
            }
            Mechanism::Mx { domain, cidr4, cidr6 } => {
                let target = self.optional_target(domain.as_ref(), current)?;
                let cidr = if v4 { *cidr4 } else { *cidr6 };
                self.mx_match(&target, cidr)
            }
            Mechanism::Ptr(domain) => {
                let target = self.optional_target(domain.as_ref(), current)?.to_ascii_lowercase();
                let names = self.validated_names()?;
                Ok(names.iter().any(|n| is_within(n, &target)))
            }
            Mechanism::Exists(spec) => {
                let target = self.target(spec, current)?;
                let Some(name) = query_name(&target) else {
                    self.void(&target)?;
                    return Ok(false);
                };
                match self.answer(QueryType::A, &name)? {
                    Answer::Failed(why) => Err(Self::dns_error(QueryType::A, &name, why)),
                    answer if answer.is_void() => self.void(&name).map(|()| false),
                    _ => Ok(true),
                }
            }
        }
    }

    /// Whether `target`'s A (or AAAA) records hold the client's address.
    fn address_match(&mut self, target: &str, cidr: u8) -> Result<bool, Stop> {
        let Some(name) = query_name(target) else {
            self.void(target)?;
            return Ok(false);
        };
        let qtype = if self.ip.is_ipv4() { QueryType::A } else { QueryType::Aaaa };
        let answer = self.answer(qtype, &name)?;
        self.addresses_match(qtype, &name, answer, cidr)
    }

    fn addresses_match(&mut self, qtype: QueryType, name: &str, answer: &Answer, cidr: u8) -> Result<bool, Stop> {
        match answer {
            Answer::Failed(why) => Err(Self::dns_error(qtype, name, why)),
            answer if answer.is_void() => self.void(name).map(|()| false),
            Answer::A(addresses) => Ok(addresses.iter().any(|a| in_network(self.ip, IpAddr::V4(*a), cidr))),
            Answer::Aaaa(addresses) => Ok(addresses.iter().any(|a| in_network(self.ip, IpAddr::V6(*a), cidr))),
            _ => Ok(false),
        }
    }

    fn mx_match(&mut self, target: &str, cidr: u8) -> Result<bool, Stop> {
        let Some(name) = query_name(target) else {
            self.void(target)?;
            return Ok(false);
        };
        let hosts = match self.answer(QueryType::Mx, &name)? {
            Answer::Failed(why) => return Err(Self::dns_error(QueryType::Mx, &name, why)),
            Answer::Names(hosts) if !hosts.is_empty() => hosts,
            _ => return self.void(&name).map(|()| false),
        };
        if hosts.len() > MAX_MX_NAMES {
            return Err(perm(SpfReason::MxLimit, format!("{name} has {} MX names (at most {MAX_MX_NAMES})", hosts.len())));
        }
        let qtype = if self.ip.is_ipv4() { QueryType::A } else { QueryType::Aaaa };
        // Ask for every host's addresses at once, then judge them in order.
        let names: Vec<Option<String>> = hosts.iter().map(|h| query_name(h)).collect();
        let answers: Vec<Option<&Answer>> =
            names.iter().map(|n| n.as_deref().and_then(|n| self.try_answer(qtype, n))).collect();
        if answers.iter().zip(&names).any(|(a, n)| a.is_none() && n.is_some()) {
            return Err(Stop::Need);
        }
        for (answer, name) in answers.into_iter().zip(&names) {
            if let (Some(answer), Some(name)) = (answer, name) {
                if self.addresses_match(qtype, name, answer, cidr)? {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The client's validated host names (§5.5): its PTR names (the first 10) whose A or
    /// AAAA records hold its address. A DNS error leaves a name out (or all of them).
    fn validated_names(&mut self) -> Result<Vec<String>, Stop> {
        let reverse = reverse_name(self.ip);
        let names = match self.answer(QueryType::Ptr, &reverse)? {
            Answer::Names(names) if !names.is_empty() => names,
            Answer::Failed(_) => return Ok(Vec::new()),
            _ => return self.void(&reverse).map(|()| Vec::new()),
        };
        let qtype = if self.ip.is_ipv4() { QueryType::A } else { QueryType::Aaaa };
        let names: Vec<String> = names.iter().take(MAX_PTR_NAMES).filter_map(|n| query_name(n)).collect();
        let answers: Vec<Option<&Answer>> = names.iter().map(|n| self.try_answer(qtype, n)).collect();
        if answers.iter().any(Option::is_none) {
            return Err(Stop::Need);
        }
        let mut validated = Vec::new();
        for (answer, name) in answers.into_iter().zip(names) {
            let matched = match answer {
                Some(Answer::Failed(_)) | None => false,
                Some(answer) if answer.is_void() => {
                    self.void(&name)?;
                    false
                }
                Some(Answer::A(a)) => a.iter().any(|a| IpAddr::V4(*a) == self.ip),
                Some(Answer::Aaaa(a)) => a.iter().any(|a| IpAddr::V6(*a) == self.ip),
                Some(_) => false,
            };
            if matched {
                validated.push(name);
            }
        }
        Ok(validated)
    }

    /// `%{p}` (§7.3): a validated name that is `current` or under it, else any, else `unknown`.
    fn p_value(&mut self, current: &str) -> Result<String, Stop> {
        let names = self.validated_names()?;
        let current = current.to_ascii_lowercase();
        let chosen = names.iter().find(|n| **n == current).or_else(|| names.iter().find(|n| is_within(n, &current)));
        Ok(chosen.or(names.first()).cloned().unwrap_or_else(|| "unknown".to_owned()))
    }

    fn optional_target(&mut self, spec: Option<&MacroString>, current: &str) -> Result<String, Stop> {
        match spec {
            Some(spec) => self.target(spec, current),
            None => Ok(current.to_owned()),
        }
    }

    /// A domain-spec expanded (§7.3): the trailing dot dropped, labels removed from the left
    /// until it fits 253 octets.
    fn target(&mut self, spec: &MacroString, current: &str) -> Result<String, Stop> {
        let mut expanded = self.expand(spec, current)?;
        if expanded.ends_with('.') {
            expanded.pop();
        }
        while expanded.len() > 253 {
            match expanded.find('.') {
                Some(dot) => expanded.replace_range(..=dot, ""),
                None => break,
            }
        }
        if expanded.is_empty() {
            return Err(perm(SpfReason::EmptyDomain, format!("{spec} expanded to nothing")));
        }
        Ok(expanded)
    }

    fn expand(&mut self, spec: &MacroString, current: &str) -> Result<String, Stop> {
        let p = if spec.uses(Letter::P) { Some(self.p_value(current)?) } else { None };
        let request = self.request;
        let ip = self.ip;
        let (local, domain) = (self.local, self.domain);
        spec.expand(|letter| -> Result<Cow<'_, str>, Stop> {
            Ok(match letter {
                Letter::S => Cow::Owned(format!("{local}@{domain}")),
                Letter::L => Cow::Borrowed(local),
                Letter::O => Cow::Borrowed(domain),
                Letter::D => Cow::Borrowed(current),
                Letter::I => Cow::Owned(dotted_ip(ip)),
                Letter::P => Cow::Owned(p.clone().unwrap_or_default()),
                Letter::V => Cow::Borrowed(if ip.is_ipv4() { "in-addr" } else { "ip6" }),
                Letter::H => Cow::Borrowed(request.helo),
                Letter::C => Cow::Owned(ip.to_string()),
                Letter::R => Cow::Borrowed(if request.receiver.is_empty() { "unknown" } else { request.receiver }),
                Letter::T => Cow::Owned(request.now.to_string()),
            })
        })
    }

    /// The explanation (§6.2) for a fail: any problem with it means none, not an error.
    fn explanation(&mut self, spec: &MacroString, current: &str) -> Result<Option<String>, Stop> {
        let target = match self.target(spec, current) {
            Ok(target) => target,
            Err(Stop::Need) => return Err(Stop::Need),
            Err(Stop::Error(..)) => return Ok(None),
        };
        let Some(name) = query_name(&target) else { return Ok(None) };
        let text = match self.answer(QueryType::Txt, &name)? {
            Answer::Txt(records) if records.len() == 1 => records.first().map(Vec::as_slice).unwrap_or_default(),
            _ => return Ok(None),
        };
        let Ok(text) = std::str::from_utf8(text) else { return Ok(None) };
        let Ok(parsed) = MacroString::parse(text, Context::Explanation) else { return Ok(None) };
        match self.expand(&parsed, current) {
            Ok(expanded) => Ok(Some(expanded)),
            Err(Stop::Need) => Err(Stop::Need),
            Err(Stop::Error(..)) => Ok(None),
        }
    }
}

/// Whether `name` is `domain` or a name under it (both lowercase).
fn is_within(name: &str, domain: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name == domain || (name.len() > domain.len() && name.ends_with(domain) && name.as_bytes().get(name.len() - domain.len() - 1) == Some(&b'.'))
}

/// Whether `ip` is in `network/cidr` (both of one family).
pub fn in_network(ip: IpAddr, network: IpAddr, cidr: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(cidr.min(32))).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(cidr.min(128))).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// `%{i}`: dotted decimal for IPv4, 32 dot-separated nibbles for IPv6 (§7.3).
fn dotted_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(63);
            for byte in v6.octets() {
                for nibble in [byte >> 4, byte & 0xf] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    let _ = write!(out, "{nibble:x}");
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests;
