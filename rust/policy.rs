//! The routing policy: which pool a message goes through, and why.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use crate::address::{first_address, Address};
use crate::auth::dmarc::{DmarcResult, Policy as DmarcPolicy};
use crate::auth::spf::SpfResult;
use crate::dsn::{detect, Detection};
use crate::labels::{closed_set, Defect};
use crate::pools::{reason_bits, Defaults, Facts, Name, PoolClass, PoolSpec, Routing, RoutingError, RuleSpec};
use crate::scan::{self, HeaderIndex, ValueSpan};

closed_set! {
    /// Why a message goes through a pool other than the normal one (`REASONS` in Python), and
    /// the class of pool each reason sends it to (`escalation`: `PoolClass`, see `pools.rs`).
    /// Public output: keep the names stable. Adding a reason is one row here (its name and
    /// class) plus the code that finds it.
    pub enum Reason debug_as_name, fn escalation() -> Escalation {
        Dsn = "dsn" => Escalation::To(PoolClass::HighRisk),
        SpamScore = "spam-score" => Escalation::To(PoolClass::HighRisk),
        SenderDomainNoRecords = "sender-domain-no-records" => Escalation::To(PoolClass::HighRisk),
        /// Also when the policy keeps such mail on the normal pool.
        SenderDomainUnknown = "sender-domain-unknown" => Escalation::Fallback(Fallback::UnknownDomain),
        /// The caller's spam filter (rspamd) was asked and could not answer; high risk only
        /// when the policy says so (`score_unavailable_pool`).
        SpamScoreUnavailable = "spam-score-unavailable" => Escalation::Fallback(Fallback::ScoreUnavailable),
        /// The scanner could not read the whole header block or MIME structure
        /// (`Defect::unscannable`), so the DSN verdict may be wrong; high risk unless the
        /// policy says otherwise (`unscannable_pool`).
        Unscannable = "unscannable" => Escalation::Fallback(Fallback::Unscannable),
        /// The From domain publishes `p=reject` or `p=quarantine` and no identifier the
        /// destination will see aligns and passes (`AuthFacts`): high risk, no override.
        DmarcFail = "dmarc-fail" => Escalation::To(PoolClass::HighRisk),
        /// Forwarded or relayed mail: the envelope sender is not one of the tenant's domains
        /// and SPF did not pass when it arrived. The relay pool (high-risk without one).
        RelayedSpfFail = "relayed-spf-fail" => Escalation::To(PoolClass::Relay),
        /// SPF or DMARC could not be evaluated where it mattered (a DNS failure: temperror);
        /// never taken for a pass: high risk unless the policy says otherwise
        /// (`auth_unknown_pool`).
        AuthUnknown = "auth-unknown" => Escalation::Fallback(Fallback::AuthUnknown),
        /// A message to an SRS address of the relay (a bounce to forwarded mail), reversed to
        /// the original sender.
        SrsBounce = "srs-bounce" => Escalation::To(PoolClass::HighRisk),
    }
}

/// The class of pool a reason sends a message to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalation {
    /// Always this class.
    To(PoolClass),
    /// High-risk, or normal when the policy's option for it says so.
    Fallback(Fallback),
}

/// The policy options that decide where mail goes whose check could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// `unknown_domain_pool`.
    UnknownDomain,
    /// `score_unavailable_pool`.
    ScoreUnavailable,
    /// `unscannable_pool`.
    Unscannable,
    /// `auth_unknown_pool`.
    AuthUnknown,
}

/// What is wrong with a policy, or with what the caller says about one message.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    // The policy.
    /// A threshold that is NaN or infinite.
    NotFinite { what: &'static str, value: f64 },
    /// A pool name that is empty, or the same for both pools.
    BadPoolName(String),
    /// A header name that is not a valid RFC 5322 field name.
    BadHeaderName(String),
    /// An option value outside its allowed set.
    BadOption { what: &'static str, value: String, allowed: &'static str },
    /// Pools or rules that cannot be used (`pools.rs`), with the key at fault.
    Routing(RoutingError),
    // One message's envelope.
    /// The caller's spam score is NaN or infinite.
    BadScore(f64),
    /// A sender-domain status other than has-records, no-records, unknown.
    BadSenderDomain(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotFinite { what, value } => write!(f, "{what} must be a finite number, got {value}"),
            Error::BadPoolName(why) => write!(f, "invalid pool names: {why}"),
            Error::BadHeaderName(name) => write!(f, "invalid header name {name:?}: expected printable ASCII without ':' or spaces"),
            Error::Routing(error) => error.fmt(f),
            Error::BadOption { what, value, allowed } => write!(f, "invalid {what} {value:?}: expected one of {allowed}"),
            Error::BadScore(value) => write!(f, "score must be a finite number, got {value}"),
            Error::BadSenderDomain(value) => {
                write!(f, "invalid sender-domain status {value:?}: expected one of has-records, no-records, unknown")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<RoutingError> for Error {
    fn from(error: RoutingError) -> Self {
        Error::Routing(error)
    }
}

/// What the sender-domain check found (filled in by the DNS layer; absent when not checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DomainStatus {
    HasRecords,
    NoRecords,
    Unknown,
}

impl DomainStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DomainStatus::HasRecords => "has-records",
            DomainStatus::NoRecords => "no-records",
            DomainStatus::Unknown => "unknown",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Error> {
        match value {
            "has-records" => Ok(DomainStatus::HasRecords),
            "no-records" => Ok(DomainStatus::NoRecords),
            "unknown" => Ok(DomainStatus::Unknown),
            _ => Err(Error::BadSenderDomain(value.into())),
        }
    }
}

/// Which pool a message goes through when something about it could not be checked: its
/// sender domain (a resolver outage) or its spam score (the spam filter did not answer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallbackPool {
    /// Mail not known to be good stays off the normal pool's addresses.
    HighRisk,
    /// Keep deliverability during the outage, at some risk to the normal pool.
    Normal,
}

impl FallbackPool {
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackPool::HighRisk => "high-risk",
            FallbackPool::Normal => "normal",
        }
    }

    /// `what` names the option in the error.
    pub fn parse(what: &'static str, value: &str) -> Result<Self, Error> {
        match value {
            "high-risk" => Ok(FallbackPool::HighRisk),
            "normal" => Ok(FallbackPool::Normal),
            _ => Err(Error::BadOption { what, value: value.into(), allowed: "high-risk, normal" }),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Policy {
    /// The default pool of normal mail (that no rule sends elsewhere).
    pub normal_pool: String,
    /// The default pool of high-risk mail.
    pub high_risk_pool: String,
    /// The default pool of relay-class mail; without pools of that class, such mail goes the
    /// high-risk way.
    pub relay_pool: Option<String>,
    /// Every pool with its class; empty: the two above (normal and high-risk).
    pub pools: Vec<PoolSpec>,
    /// The routing rules, in order (see `pools.rs`).
    pub rules: Vec<RuleSpec>,
    /// Lowercased name of the header rules' `header_values` are matched against (trusted only
    /// when the caller says the client is: `Envelope::untrusted_route_header`).
    pub route_header: Option<String>,
    /// High risk when the score is strictly greater than this.
    pub threshold: f64,
    pub tenant_thresholds: BTreeMap<String, f64>,
    /// Lowercased name of the header only the relay's own spam filter writes; None trusts no header.
    pub score_header: Option<String>,
    /// Default high-risk.
    pub unknown_domain_pool: FallbackPool,
    /// Default normal: the message is routed as unscored.
    pub score_unavailable_pool: FallbackPool,
    /// Where a message goes that the scanner could not fully read (`Reason::Unscannable`).
    pub unscannable_pool: FallbackPool,
    /// Where a message goes whose SPF or DMARC could not be evaluated (`Reason::AuthUnknown`).
    pub auth_unknown_pool: FallbackPool,
    /// `pools` and `rules` compiled: made by `validated`, which every constructor goes through.
    pub routing: Routing,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            normal_pool: "normal".into(),
            high_risk_pool: "high-risk".into(),
            relay_pool: None,
            pools: Vec::new(),
            rules: Vec::new(),
            route_header: None,
            // SpamAssassin's and rspamd's customary "this is spam" score.
            threshold: 5.0,
            tenant_thresholds: BTreeMap::new(),
            score_header: None,
            unknown_domain_pool: FallbackPool::HighRisk,
            score_unavailable_pool: FallbackPool::Normal,
            unscannable_pool: FallbackPool::HighRisk,
            auth_unknown_pool: FallbackPool::HighRisk,
            routing: Routing::two_pools("normal", "high-risk").unwrap_or_else(|_| unreachable!("two distinct pool names")),
        }
    }
}

impl Policy {
    /// Checks a policy built field by field; every constructor goes through here.
    pub fn validated(mut self) -> Result<Self, Error> {
        finite("threshold", self.threshold)?;
        for value in self.tenant_thresholds.values() {
            finite("tenant threshold", *value)?;
        }
        if self.normal_pool.trim().is_empty() || self.high_risk_pool.trim().is_empty() {
            return Err(Error::BadPoolName("pool names must not be empty".into()));
        }
        if self.normal_pool == self.high_risk_pool {
            return Err(Error::BadPoolName(format!("both pools are named {:?}", self.normal_pool)));
        }
        for header in [&mut self.score_header, &mut self.route_header].into_iter().flatten() {
            if header.is_empty() || !header.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(Error::BadHeaderName(header.clone()));
            }
            header.make_ascii_lowercase();
        }
        let two;
        let pools = if self.pools.is_empty() {
            two = [
                PoolSpec { name: self.normal_pool.clone(), class: PoolClass::Normal, tenant: None },
                PoolSpec { name: self.high_risk_pool.clone(), class: PoolClass::HighRisk, tenant: None },
            ];
            &two[..]
        } else {
            &self.pools[..]
        };
        let defaults = Defaults { normal: &self.normal_pool, high_risk: &self.high_risk_pool, relay: self.relay_pool.as_deref() };
        self.routing = Routing::compile(pools, &self.rules, defaults, |reason| self.class_of(reason), self.route_header.is_some())?;
        Ok(self)
    }

    /// The class of pool `reason` sends a message to under this policy.
    pub fn class_of(&self, reason: Reason) -> PoolClass {
        let option = match reason.escalation() {
            Escalation::To(class) => return class,
            Escalation::Fallback(Fallback::UnknownDomain) => self.unknown_domain_pool,
            Escalation::Fallback(Fallback::ScoreUnavailable) => self.score_unavailable_pool,
            Escalation::Fallback(Fallback::Unscannable) => self.unscannable_pool,
            Escalation::Fallback(Fallback::AuthUnknown) => self.auth_unknown_pool,
        };
        match option {
            FallbackPool::HighRisk => PoolClass::HighRisk,
            FallbackPool::Normal => PoolClass::Normal,
        }
    }

    pub fn threshold_for(&self, tenant: Option<&str>) -> f64 {
        tenant.and_then(|t| self.tenant_thresholds.get(t)).copied().unwrap_or(self.threshold)
    }
}

fn finite(what: &'static str, value: f64) -> Result<f64, Error> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(Error::NotFinite { what, value })
    }
}

/// Where the score in a decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoreSource {
    Caller,
    Header,
}

impl ScoreSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ScoreSource::Caller => "caller",
            ScoreSource::Header => "header",
        }
    }
}

/// What the caller knows about a message besides its bytes.
#[derive(Clone, Debug, Default)]
pub struct Envelope<'a> {
    pub mail_from: Option<&'a str>,
    pub score: Option<f64>,
    pub tenant: Option<&'a str>,
    /// The client is not the relay's own trusted filter: no header it wrote is trusted.
    pub untrusted_client: bool,
    pub sender_domain: Option<DomainStatus>,
    /// The caller asked its spam filter and got no score (reason `spam-score-unavailable`
    /// when the message has no score otherwise).
    pub score_unavailable: bool,
    /// The envelope recipients: routed one by one when a rule names recipient domains.
    pub recipients: &'a [&'a str],
    /// The client is not one whose route header (`Policy::route_header`) is trusted.
    pub untrusted_route_header: bool,
    /// What SPF and DMARC found, when they were evaluated.
    pub auth: Option<AuthFacts>,
}

/// What authentication found about a message, as routing reads it (worked out by the caller:
/// `deliverypool.routing.auth`). The reasons it gives (`AuthFacts::reasons`):
///
/// * `dmarc-fail`: DMARC as the destination will judge it fails and the From domain asks for
///   quarantine or reject;
/// * `relayed-spf-fail`: the envelope sender (not null) is not one of the tenant's domains and
///   SPF at acceptance is anything but `pass` (and not `temperror`);
/// * `auth-unknown`: one of those could not be told: SPF at acceptance `temperror` for such a
///   sender, DMARC `temperror`, or a DMARC failure that rests on an identifier whose check
///   failed (`unsure`);
/// * `srs-bounce`: the message is addressed to an SRS address of the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFacts {
    /// SPF of the MAIL FROM identity at acceptance; None: not evaluated (no client address).
    pub spf: Option<SpfResult>,
    /// The envelope sender's (organisational) domain is one of the tenant's own domains.
    pub own_sender: bool,
    /// DMARC as the destination will reach it; None: not evaluated (no From domain).
    pub dmarc: Option<DmarcResult>,
    /// What the From domain asks the destination to do with this message (`none` for a pass).
    pub disposition: DmarcPolicy,
    /// The DMARC failure rests on an identifier that could not be checked (a DKIM or SPF
    /// `temperror`): it may pass at the destination.
    pub unsure: bool,
    /// The message goes to an SRS address of the relay (reversed to the original sender).
    pub srs_bounce: bool,
}

impl Default for AuthFacts {
    fn default() -> Self {
        AuthFacts { spf: None, own_sender: false, dmarc: None, disposition: DmarcPolicy::None, unsure: false, srs_bounce: false }
    }
}

impl AuthFacts {
    /// The reasons these facts give a message from `mail_from` (None or empty: the null sender).
    pub fn reasons(&self, mail_from: Option<&str>, mut push: impl FnMut(Reason)) {
        if self.srs_bounce {
            push(Reason::SrsBounce);
        }
        let mut unknown = false;
        match self.dmarc {
            Some(DmarcResult::Fail) if self.disposition != DmarcPolicy::None => {
                if self.unsure {
                    unknown = true;
                } else {
                    push(Reason::DmarcFail);
                }
            }
            Some(DmarcResult::TempError) => unknown = true,
            _ => {}
        }
        let relayed = !self.own_sender && mail_from.is_some_and(|sender| !sender.is_empty());
        match self.spf {
            Some(SpfResult::Pass) | None => {}
            Some(SpfResult::TempError) => unknown |= relayed,
            Some(_) if relayed => push(Reason::RelayedSpfFail),
            Some(_) => {}
        }
        if unknown {
            push(Reason::AuthUnknown);
        }
    }
}

#[derive(Clone, Debug)]
pub struct Decision {
    /// The message's pool; when rules routed its recipients one by one, the first recipient's
    /// (`recipient_pools` has each one's).
    pub pool: Name,
    /// The class of `pool`.
    pub pool_class: PoolClass,
    /// The rule that chose `pool`; None: the class's default.
    pub rule: Option<Name>,
    /// Each recipient's pool, in the envelope's order, when a rule names recipient domains;
    /// else empty (every recipient goes through `pool`). All of `pool_class`.
    pub recipient_pools: Vec<Name>,
    /// Any reason made the message high risk: it leaves from a high-risk pool.
    pub high_risk: bool,
    /// Every reason that applied, in a fixed order.
    pub reasons: Vec<Reason>,
    pub detection: Detection,
    pub score: Option<f64>,
    pub score_source: Option<ScoreSource>,
    pub threshold: f64,
    pub sender_domain: Option<DomainStatus>,
    /// What authentication found, as the caller gave it.
    pub auth: Option<AuthFacts>,
    /// Scanner defects plus policy notes such as `score-header-repeated`.
    pub defects: Vec<Defect>,
    /// Where the first Message-ID and From fields' values are in the message: what callers ask
    /// after routing (`message_id`, `header_from`), kept so that they need not scan again and
    /// so that routing pays nothing for them until they are read.
    pub message_id_field: Option<ValueSpan>,
    pub from_field: Option<ValueSpan>,
}

impl Decision {
    /// The header Message-ID as `scan` reads it (unfolded, trimmed). `msg` is the message
    /// this decision is about.
    pub fn message_id<'a>(&self, msg: &'a [u8]) -> Option<Cow<'a, str>> {
        Some(self.message_id_field?.in_message(msg)?.text())
    }

    /// The first address of the header From field, lowercased (see `address::first_address`);
    /// None without a From field or a usable address in it. `msg` is the message this
    /// decision is about.
    pub fn header_from(&self, msg: &[u8]) -> Option<Address> {
        first_address(&self.from_field?.in_message(msg)?.text())
    }
}

/// Scans and classifies one message.
pub fn classify(msg: &[u8], envelope: &Envelope, policy: &Policy) -> Result<Decision, Error> {
    if let Some(score) = envelope.score.filter(|s| !s.is_finite()) {
        return Err(Error::BadScore(score));
    }
    let mut index = scan::index_for(msg, policy.score_header.as_deref(), policy.route_header.as_deref());
    // The index ends here: its defects move into the decision instead of being copied.
    let defects = std::mem::take(&mut index.defects);
    Ok(decide_with_defects(&index, defects, msg, envelope, policy))
}

/// Classifies a message already scanned with `policy.score_header` and `policy.route_header`
/// (`scan::index_for`).
pub fn decide(facts: &HeaderIndex, msg: &[u8], envelope: &Envelope, policy: &Policy) -> Decision {
    decide_with_defects(facts, facts.defects.clone(), msg, envelope, policy)
}

/// `decide`, with `defects` standing for `facts.defects`.
fn decide_with_defects(facts: &HeaderIndex, mut defects: Vec<Defect>, msg: &[u8], envelope: &Envelope, policy: &Policy) -> Decision {
    let detection = detect(facts, msg, envelope.mail_from);
    let (score, score_source) = match envelope.score {
        Some(score) => (Some(score), Some(ScoreSource::Caller)),
        None => match header_score(facts, policy, envelope.untrusted_client, &mut defects) {
            Some(score) => (Some(score), Some(ScoreSource::Header)),
            None => (None, None),
        },
    };
    let threshold = policy.threshold_for(envelope.tenant);

    let mut reasons = Vec::new();
    if detection.dsn.is_some() {
        reasons.push(Reason::Dsn);
    }
    if score.is_some_and(|s| s > threshold) {
        reasons.push(Reason::SpamScore);
    }
    match envelope.sender_domain {
        Some(DomainStatus::NoRecords) => reasons.push(Reason::SenderDomainNoRecords),
        Some(DomainStatus::Unknown) => reasons.push(Reason::SenderDomainUnknown),
        _ => {}
    }
    if score.is_none() && envelope.score_unavailable {
        reasons.push(Reason::SpamScoreUnavailable);
    }
    // A padded header or MIME structure must not let a sender pick the normal pool.
    if detection.dsn.is_none() && defects.iter().any(|d| d.unscannable()) {
        reasons.push(Reason::Unscannable);
    }
    if let Some(auth) = &envelope.auth {
        auth.reasons(envelope.mail_from, |reason| reasons.push(reason));
    }
    // The worst class any reason gives; the rules pick a pool of that class only.
    let class = reasons.iter().fold(PoolClass::Normal, |class, reason| class.worst(policy.class_of(*reason)));
    let header = route_header(facts, policy, envelope.untrusted_route_header);
    let routing = &policy.routing;
    let route = Facts {
        class,
        tenant: envelope.tenant,
        mail_from: envelope.mail_from,
        header: header.as_deref(),
        size: msg.len() as u64,
        reasons: reason_bits(&reasons),
        report_kind: detection.report_kind,
    };
    let mut recipient_pools = Vec::new();
    let choice = if routing.per_recipient() && !envelope.recipients.is_empty() {
        recipient_pools.reserve_exact(envelope.recipients.len());
        let mut first = None;
        routing.route_each(&route, envelope.recipients, |choice| {
            first.get_or_insert(choice);
            recipient_pools.push(routing.pool_name(choice.pool).clone());
        });
        first.unwrap_or_else(|| routing.route(&route))
    } else {
        routing.route(&route)
    };
    Decision {
        pool: routing.pool_name(choice.pool).clone(),
        pool_class: routing.pool_class(choice.pool),
        rule: choice.rule.map(|rule| routing.rule_name(rule).clone()),
        recipient_pools,
        high_risk: class == PoolClass::HighRisk,
        reasons,
        detection,
        score,
        score_source,
        threshold,
        sender_domain: envelope.sender_domain,
        auth: envelope.auth,
        defects,
        message_id_field: facts.message_id.map(|v| v.span_in(msg)),
        from_field: facts.from.map(|v| v.span_in(msg)),
    }
}

/// The score from the trusted header, if it may be trusted: configured, present exactly once,
/// parseable, finite, and the client is the relay's own.
fn header_score(facts: &HeaderIndex, policy: &Policy, untrusted_client: bool, defects: &mut Vec<Defect>) -> Option<f64> {
    policy.score_header.as_ref()?;
    if untrusted_client {
        if !facts.score_header_values.is_empty() {
            defects.push(Defect::ScoreHeaderUntrusted);
        }
        return None;
    }
    match facts.score_header_values.as_slice() {
        [] => None,
        [value] => {
            let parsed = parse_score(&value.text());
            if parsed.is_none() {
                defects.push(Defect::ScoreHeaderInvalid);
            }
            parsed
        }
        _ => {
            // A second copy means someone other than our filter wrote one: trust neither.
            defects.push(Defect::ScoreHeaderRepeated);
            None
        }
    }
}

/// The route header's value, if rules may read it: configured, present exactly once, and the
/// client is one whose route header is trusted.
fn route_header<'a>(facts: &HeaderIndex<'a>, policy: &Policy, untrusted: bool) -> Option<Cow<'a, str>> {
    policy.route_header.as_ref()?;
    if untrusted || facts.route_header_repeated {
        return None;
    }
    facts.route_header.map(|value| value.text())
}

/// Reads `5.3`, `-1.2 (required 5)`, or SpamAssassin's `Yes, score=5.3 required=5.0`.
pub fn parse_score(value: &str) -> Option<f64> {
    let lower = value.to_ascii_lowercase();
    let start = lower.find("score=").map_or(0, |i| i + "score=".len());
    let rest = lower[start..].trim_start();
    let end = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || ((c == '-' || c == '+') && i == 0)))
        .map_or(rest.len(), |(i, _)| i);
    rest[..end].parse::<f64>().ok().filter(|s| s.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pools::{PoolSpec, RuleSpec};

    fn policy_with_header() -> Policy {
        Policy { score_header: Some("X-Spam-Score".into()), ..Policy::default() }.validated().unwrap()
    }

    #[test]
    fn score_must_exceed_threshold() {
        let policy = Policy::default();
        let at = Envelope { score: Some(5.0), ..Default::default() };
        let above = Envelope { score: Some(5.0001), ..Default::default() };
        assert_eq!(classify(b"Subject: x\n\n", &at, &policy).unwrap().pool, "normal");
        let d = classify(b"Subject: x\n\n", &above, &policy).unwrap();
        assert_eq!((d.pool.as_str(), d.reasons.as_slice()), ("high-risk", &[Reason::SpamScore][..]));
    }

    #[test]
    fn tenant_threshold_applies() {
        let mut policy = Policy::default();
        policy.tenant_thresholds.insert("strict".into(), 1.0);
        let env = Envelope { score: Some(2.0), tenant: Some("strict"), ..Default::default() };
        let d = classify(b"\n", &env, &policy).unwrap();
        assert_eq!((d.pool.as_str(), d.threshold), ("high-risk", 1.0));
        let env = Envelope { score: Some(2.0), tenant: Some("other"), ..Default::default() };
        assert_eq!(classify(b"\n", &env, &policy).unwrap().pool, "normal");
    }

    #[test]
    fn header_score_trusted_only_once_and_from_trusted_clients() {
        let policy = policy_with_header();
        let once = b"X-Spam-Score: 9.5\nSubject: x\n\n";
        let d = classify(once, &Envelope::default(), &policy).unwrap();
        assert_eq!((d.score, d.score_source), (Some(9.5), Some(ScoreSource::Header)));
        let twice = b"X-Spam-Score: -100\nX-Spam-Score: 9.5\n\n";
        let d = classify(twice, &Envelope::default(), &policy).unwrap();
        assert_eq!(d.score, None);
        assert!(d.defects.contains(&Defect::ScoreHeaderRepeated));
        let untrusted = Envelope { untrusted_client: true, ..Default::default() };
        assert_eq!(classify(once, &untrusted, &policy).unwrap().score, None);
        assert_eq!(classify(once, &Envelope::default(), &Policy::default()).unwrap().score, None);
    }

    #[test]
    fn a_message_the_scanner_could_not_read_is_high_risk_unless_the_policy_says_otherwise() {
        // A bounce from an ordinary sender whose header block is padded past the scanner's limit.
        let mut msg = b"From: Mail Delivery System <MAILER-DAEMON@x.test>\r\n".to_vec();
        for _ in 0..1100 {
            msg.extend_from_slice(b"X-Padding: ");
            msg.extend_from_slice(&[b'p'; 1000]);
            msg.extend_from_slice(b"\r\n");
        }
        msg.extend_from_slice(b"Subject: Undelivered Mail Returned to Sender\r\n\r\nThis is the mail system.\r\n");
        let envelope = Envelope { mail_from: Some("someone@x.test"), ..Envelope::default() };
        let decision = classify(&msg, &envelope, &Policy::default()).unwrap();
        assert!(decision.defects.contains(&Defect::HeaderTooLarge));
        assert_eq!((decision.pool.as_str(), decision.reasons.as_slice()), ("high-risk", &[Reason::Unscannable][..]));
        let lenient = Policy { unscannable_pool: FallbackPool::Normal, ..Policy::default() };
        let decision = classify(&msg, &envelope, &lenient).unwrap();
        assert_eq!((decision.pool.as_str(), decision.reasons.as_slice()), ("normal", &[Reason::Unscannable][..]));
        // An ordinary message is not unscannable.
        let ordinary = classify(b"From: a@x.test\r\nSubject: hi\r\n\r\nhello\r\n", &envelope, &Policy::default()).unwrap();
        assert!(ordinary.reasons.is_empty());
    }

    #[test]
    fn unknown_domain_is_never_no_records() {
        let env = Envelope { sender_domain: Some(DomainStatus::Unknown), ..Default::default() };
        let d = classify(b"\n", &env, &Policy::default()).unwrap();
        assert_eq!(d.reasons, [Reason::SenderDomainUnknown]);
        assert_eq!(d.pool, "high-risk");
        let lenient = Policy { unknown_domain_pool: FallbackPool::Normal, ..Policy::default() };
        assert_eq!(classify(b"\n", &env, &lenient).unwrap().pool, "normal");
    }

    #[test]
    fn an_unavailable_score_routes_by_its_policy_and_a_score_wins_over_it() {
        let env = Envelope { score_unavailable: true, ..Default::default() };
        let d = classify(b"\n", &env, &Policy::default()).unwrap();
        assert_eq!((d.pool.as_str(), d.reasons.as_slice()), ("normal", &[Reason::SpamScoreUnavailable][..]));
        let strict = Policy { score_unavailable_pool: FallbackPool::HighRisk, ..Policy::default() };
        let d = classify(b"\n", &env, &strict).unwrap();
        assert_eq!((d.pool.as_str(), d.reasons.as_slice()), ("high-risk", &[Reason::SpamScoreUnavailable][..]));
        // With a score after all (the trusted header), nothing was unavailable.
        let scored = Envelope { score: Some(1.0), ..env };
        assert!(classify(b"\n", &scored, &strict).unwrap().reasons.is_empty());
        let both = Envelope { sender_domain: Some(DomainStatus::NoRecords), ..env };
        let reasons = classify(b"\n", &both, &Policy::default()).unwrap().reasons;
        assert_eq!(reasons, [Reason::SenderDomainNoRecords, Reason::SpamScoreUnavailable]);
        assert_eq!(FallbackPool::parse("x", "normal"), Ok(FallbackPool::Normal));
        assert!(FallbackPool::parse("x", "low").is_err());
    }

    #[test]
    fn bad_values_are_errors() {
        let nan = classify(b"", &Envelope { score: Some(f64::NAN), ..Default::default() }, &Policy::default());
        assert!(matches!(nan, Err(Error::BadScore(s)) if s.is_nan()));
        assert_eq!(DomainStatus::parse("maybe"), Err(Error::BadSenderDomain("maybe".into())));
        assert_eq!(DomainStatus::parse("no-records"), Ok(DomainStatus::NoRecords));
        assert!(Policy { threshold: f64::INFINITY, ..Policy::default() }.validated().is_err());
        assert!(Policy { high_risk_pool: "normal".into(), ..Policy::default() }.validated().is_err());
        assert!(Policy { score_header: Some("X Bad:".into()), ..Policy::default() }.validated().is_err());
    }

    #[test]
    fn decision_reads_message_id_and_from_without_a_second_scan() {
        for eol in ["\r\n", "\n", "\r"] {
            let msg = format!(
                "From sender Mon Jan  1 00:00:00 2024{eol}Message-ID:{eol} <a.1@Example.org>{eol}From: \"Doe, J\" <J.Doe@Mail.Example.ORG>,{eol} other@x.example{eol}From: second@y.example{eol}{eol}body"
            );
            let msg = msg.as_bytes();
            let d = classify(msg, &Envelope::default(), &Policy::default()).unwrap();
            let facts = scan::scan(msg, None);
            assert_eq!(d.message_id(msg).as_deref(), facts.message_id.as_deref(), "{eol:?}");
            assert_eq!(d.message_id(msg).as_deref(), Some("<a.1@Example.org>"));
            let from = d.header_from(msg).unwrap();
            assert_eq!((from.as_str(), from.domain()), ("j.doe@mail.example.org", "mail.example.org"));
        }
        let bare = b"Subject: x\n\n";
        let d = classify(bare, &Envelope::default(), &Policy::default()).unwrap();
        assert_eq!((d.message_id(bare), d.header_from(bare)), (None, None));
        let unusable = b"From: Mail Delivery System <>\n\n";
        let d = classify(unusable, &Envelope::default(), &Policy::default()).unwrap();
        assert!(d.from_field.is_some() && d.header_from(unusable).is_none());
        // Handed another, shorter message, the decision reads nothing rather than panic.
        let long = b"Subject: a long one\nMessage-ID: <x@y>\nFrom: a@b.example\n\n";
        let d = classify(long, &Envelope::default(), &Policy::default()).unwrap();
        assert_eq!((d.message_id(b"short"), d.header_from(b"short")), (None, None));
    }

    fn routed_policy() -> Policy {
        let pool = |name: &str, class| PoolSpec { name: name.into(), class, tenant: None };
        Policy {
            pools: vec![
                pool("normal", PoolClass::Normal),
                pool("high-risk", PoolClass::HighRisk),
                pool("bulk", PoolClass::Normal),
                pool("gmail", PoolClass::Normal),
            ],
            rules: vec![
                RuleSpec { name: Some("stream".into()), pool: "bulk".into(), header_values: vec!["newsletter".into()], ..RuleSpec::default() },
                RuleSpec { name: Some("gmail".into()), pool: "gmail".into(), recipient_domains: vec!["gmail.com".into()], ..RuleSpec::default() },
            ],
            route_header: Some("X-Stream".into()),
            ..Policy::default()
        }
        .validated()
        .unwrap()
    }

    #[test]
    fn rules_read_the_route_header_only_once_and_from_a_trusted_client() {
        let policy = routed_policy();
        assert_eq!(policy.route_header.as_deref(), Some("x-stream"));
        let once = b"X-Stream: Newsletter\r\nSubject: x\r\n\r\nhi\r\n";
        let d = classify(once, &Envelope::default(), &policy).unwrap();
        assert_eq!((d.pool.as_str(), d.rule.as_deref(), d.pool_class), ("bulk", Some("stream"), PoolClass::Normal));
        let untrusted = Envelope { untrusted_route_header: true, ..Envelope::default() };
        assert_eq!(classify(once, &untrusted, &policy).unwrap().pool, "normal");
        let twice = b"X-Stream: newsletter\r\nX-Stream: newsletter\r\n\r\nhi\r\n";
        assert_eq!(classify(twice, &Envelope::default(), &policy).unwrap().rule, None);
        // Spam with the header stays high-risk: the rule's pool is a normal one.
        let spam = Envelope { score: Some(9.0), ..Envelope::default() };
        let d = classify(once, &spam, &policy).unwrap();
        assert_eq!((d.pool.as_str(), d.rule, d.pool_class, d.high_risk), ("high-risk", None, PoolClass::HighRisk, true));
    }

    #[test]
    fn a_rule_on_recipient_domains_routes_each_recipient() {
        let policy = routed_policy();
        assert!(policy.routing.per_recipient());
        let recipients = ["a@example.org", "b@Gmail.COM", "c@example.net"];
        let envelope = Envelope { recipients: &recipients, ..Envelope::default() };
        let d = classify(b"Subject: x\r\n\r\nhi\r\n", &envelope, &policy).unwrap();
        assert_eq!(d.recipient_pools, ["normal", "gmail", "normal"]);
        assert_eq!((d.pool.as_str(), d.rule), ("normal", None));
        let risky = Envelope { sender_domain: Some(DomainStatus::NoRecords), ..envelope };
        assert_eq!(classify(b"\r\n", &risky, &policy).unwrap().recipient_pools, ["high-risk"; 3]);
        // Without recipients, a recipient rule never matches.
        assert!(classify(b"\r\n", &Envelope::default(), &policy).unwrap().recipient_pools.is_empty());
    }

    #[test]
    fn the_class_of_each_reason_follows_the_policy() {
        let lenient = Policy { unknown_domain_pool: FallbackPool::Normal, ..Policy::default() };
        assert_eq!(lenient.class_of(Reason::SenderDomainUnknown), PoolClass::Normal);
        assert_eq!(Policy::default().class_of(Reason::SenderDomainUnknown), PoolClass::HighRisk);
        assert_eq!(Policy::default().class_of(Reason::SpamScoreUnavailable), PoolClass::Normal);
        for reason in Reason::ALL {
            assert!(matches!(reason.escalation(), Escalation::To(_) | Escalation::Fallback(_)));
        }
        // A rule on a reason the policy keeps normal may name a normal pool; one it makes
        // high-risk may not.
        let rule = |reason: &str| RuleSpec { pool: "normal".into(), reasons: vec![reason.into()], ..RuleSpec::default() };
        assert!(Policy { rules: vec![rule("sender-domain-unknown")], ..lenient }.validated().is_ok());
        let refused = Policy { rules: vec![rule("sender-domain-unknown")], ..Policy::default() }.validated().unwrap_err();
        assert!(matches!(refused, Error::Routing(RoutingError { rule: Some(0), field: "pool", .. })), "{refused}");
    }

    fn auth(spf: Option<SpfResult>, own_sender: bool, dmarc: Option<(DmarcResult, DmarcPolicy)>) -> AuthFacts {
        let (dmarc, disposition) = dmarc.map_or((None, DmarcPolicy::None), |(r, d)| (Some(r), d));
        AuthFacts { spf, own_sender, dmarc, disposition, ..AuthFacts::default() }
    }

    fn with_relay_pool() -> Policy {
        let pool = |name: &str, class| PoolSpec { name: name.into(), class, tenant: None };
        Policy {
            pools: vec![pool("normal", PoolClass::Normal), pool("high-risk", PoolClass::HighRisk), pool("fwd", PoolClass::Relay)],
            relay_pool: Some("fwd".into()),
            ..Policy::default()
        }
        .validated()
        .unwrap()
    }

    #[test]
    fn authentication_gives_its_reasons_and_classes() {
        let policy = with_relay_pool();
        let route = |mail_from: &str, facts: AuthFacts| {
            let envelope = Envelope { mail_from: Some(mail_from), auth: Some(facts), ..Envelope::default() };
            let d = classify(b"Subject: x\r\n\r\nhi\r\n", &envelope, &policy).unwrap();
            (d.pool.to_string(), d.reasons)
        };
        let reject = Some((DmarcResult::Fail, DmarcPolicy::Reject));
        // The customer's own mail that passes DMARC, or whose domain asks for nothing.
        assert_eq!(route("a@own.test", auth(Some(SpfResult::Fail), true, Some((DmarcResult::Pass, DmarcPolicy::None)))), ("normal".into(), vec![]));
        assert_eq!(route("a@own.test", auth(Some(SpfResult::Fail), true, Some((DmarcResult::Fail, DmarcPolicy::None)))), ("normal".into(), vec![]));
        // DMARC would fail at the destination: high risk, whatever else.
        assert_eq!(route("a@own.test", auth(Some(SpfResult::Pass), true, reject)), ("high-risk".into(), vec![Reason::DmarcFail]));
        let quarantine = Some((DmarcResult::Fail, DmarcPolicy::Quarantine));
        assert_eq!(route("a@own.test", auth(None, true, quarantine)).1, [Reason::DmarcFail]);
        // Forwarded mail whose SPF did not pass: the relay pool; with a DMARC failure, high risk wins.
        for spf in [SpfResult::Fail, SpfResult::SoftFail, SpfResult::Neutral, SpfResult::None, SpfResult::PermError] {
            assert_eq!(route("a@else.test", auth(Some(spf), false, None)), ("fwd".into(), vec![Reason::RelayedSpfFail]));
        }
        assert_eq!(route("a@else.test", auth(Some(SpfResult::Fail), false, reject)), ("high-risk".into(), vec![Reason::DmarcFail, Reason::RelayedSpfFail]));
        assert_eq!(route("a@else.test", auth(Some(SpfResult::Pass), false, None)), ("normal".into(), vec![]));
        // The null sender is never relayed mail of this kind.
        assert_eq!(route("", auth(Some(SpfResult::Fail), false, None)).1, []);
        // What could not be told is never a pass: auth-unknown, high risk by default.
        assert_eq!(route("a@else.test", auth(Some(SpfResult::TempError), false, None)), ("high-risk".into(), vec![Reason::AuthUnknown]));
        assert_eq!(route("a@own.test", auth(Some(SpfResult::TempError), true, None)).1, []);
        assert_eq!(route("a@own.test", auth(None, true, Some((DmarcResult::TempError, DmarcPolicy::None)))).1, [Reason::AuthUnknown]);
        let unsure = AuthFacts { unsure: true, ..auth(None, true, reject) };
        assert_eq!(route("a@own.test", unsure), ("high-risk".into(), vec![Reason::AuthUnknown]));
        let lenient = Policy { auth_unknown_pool: FallbackPool::Normal, ..with_relay_pool() };
        let envelope = Envelope { mail_from: Some("a@own.test"), auth: Some(unsure), ..Envelope::default() };
        assert_eq!(classify(b"\r\n", &envelope, &lenient).unwrap().pool, "normal");
        // A bounce to an SRS address: high risk.
        let srs = AuthFacts { srs_bounce: true, ..AuthFacts::default() };
        assert_eq!(route("", srs), ("high-risk".into(), vec![Reason::SrsBounce]));
        // Without relay pools, relayed mail goes the high-risk way, never from a normal pool.
        let envelope = Envelope { mail_from: Some("a@else.test"), auth: Some(auth(Some(SpfResult::Fail), false, None)), ..Envelope::default() };
        let d = classify(b"\r\n", &envelope, &Policy::default()).unwrap();
        assert_eq!((d.pool.as_str(), d.pool_class, d.auth), ("high-risk", PoolClass::HighRisk, envelope.auth));
    }

    #[test]
    fn a_rule_cannot_send_dmarc_failing_mail_to_a_normal_or_relay_pool() {
        let rule = |pool: &str| RuleSpec { pool: pool.into(), reasons: vec!["dmarc-fail".into()], ..RuleSpec::default() };
        for pool in ["normal", "fwd"] {
            let refused = Policy { rules: vec![rule(pool)], ..with_relay_pool() }.validated().unwrap_err();
            assert!(matches!(refused, Error::Routing(RoutingError { rule: Some(0), field: "pool", .. })), "{refused}");
        }
        // A rule on relayed-spf-fail may name the relay pool, not a normal one.
        let relayed = |pool: &str| RuleSpec { pool: pool.into(), reasons: vec!["relayed-spf-fail".into()], ..RuleSpec::default() };
        assert!(Policy { rules: vec![relayed("fwd")], ..with_relay_pool() }.validated().is_ok());
        assert!(Policy { rules: vec![relayed("normal")], ..with_relay_pool() }.validated().is_err());
    }

    #[test]
    fn parses_score_forms() {
        assert_eq!(parse_score("5.3"), Some(5.3));
        assert_eq!(parse_score(" -1.5 (required 5)"), Some(-1.5));
        assert_eq!(parse_score("Yes, score=12.0 required=5.0"), Some(12.0));
        assert_eq!(parse_score("high"), None);
        assert_eq!(parse_score("nan"), None);
    }
}
